"""Optuna studies: the search space, the objective, storage and pruning. The only package
that imports optuna; it records trials through the RunLog it is handed (no mlflow here) and
returns plain data that tracking.study_plots draws. `python -m studies.dashboard` opens
optuna-dashboard on the storage."""

import logging

import optuna

from benchmark.errors import UserError
from studies.space import SPACE, Param, searched
from studies.storage import open_studies, storage_url
from studies.summary import StudySummary, TrialRecord
from studies.tune import TuneOptions, TuneResult, help_tune, study_name, tune_cell


def _said_elsewhere(record: logging.LogRecord) -> bool:
    """False for Optuna's warning (with its traceback) about a trial that failed on an error
    tailbench reports itself in one line (a UserError such as a full disk, or Ctrl-C), and
    for the "failed with value None" line after any failed trial; a bug keeps its traceback."""
    error = record.exc_info[1] if record.exc_info else None
    if isinstance(error, UserError | KeyboardInterrupt):
        return False
    return "failed with value None" not in record.getMessage()


def quiet_logs() -> None:
    """Optuna's INFO line for every study and trial off: tailbench says what happened."""
    optuna.logging.set_verbosity(logging.WARNING)  # also installs Optuna's own handler
    # on the handlers of Optuna's library logger (public: "optuna"), which every optuna.*
    # module's records reach, rather than on the logger of one of its private modules
    for handler in logging.getLogger("optuna").handlers:
        if _said_elsewhere not in handler.filters:
            handler.addFilter(_said_elsewhere)


__all__ = ["SPACE", "Param", "StudySummary", "TrialRecord", "TuneOptions", "TuneResult",
           "help_tune", "open_studies", "quiet_logs", "searched", "storage_url", "study_name",
           "tune_cell"]
