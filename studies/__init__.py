"""Optuna studies: the search space, the objective, storage and pruning. The only package
that imports optuna; it records trials through the RunLog it is handed (no mlflow here) and
returns plain data that tracking.study_plots draws. `python -m studies.dashboard` opens
optuna-dashboard on the storage."""

import logging

import optuna

from studies.space import SPACE, Param, searched
from studies.storage import open_studies, storage_url
from studies.summary import StudySummary, TrialRecord
from studies.tune import TuneOptions, TuneResult, study_name, tune_cell


def quiet_logs() -> None:
    """Optuna's INFO line for every study and trial off: tailbench says what happened."""
    optuna.logging.set_verbosity(logging.WARNING)


__all__ = ["SPACE", "Param", "StudySummary", "TrialRecord", "TuneOptions", "TuneResult",
           "open_studies", "quiet_logs", "searched", "storage_url", "study_name", "tune_cell"]
