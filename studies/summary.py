"""A study as plain data (numbers, strings, dicts), for tracking.study_plots and for JSON:
whoever draws or stores it needs neither Optuna nor this package."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import optuna
from optuna.trial import TrialState

from studies.space import Param

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what counts toward a cell's trials


@dataclass
class TrialRecord:
    number: int
    state: str  # "COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"
    params: dict[str, float]
    value: float | None  # the objective (validation balanced accuracy); None unless COMPLETE
    intermediate: dict[int, float]  # epoch -> validation balanced accuracy
    epochs: int  # epochs actually trained
    note: str = ""  # why it was pruned (e.g. "diverged: ...")


@dataclass
class StudySummary:
    name: str
    objective: str  # what `value` measures, for axis labels
    space: dict[str, dict]  # searched parameter -> {"low", "high", "log", "unit"}
    trials: list[TrialRecord] = field(default_factory=list)
    importances: dict[str, float] = field(default_factory=dict)  # param -> share, sums to 1
    best_number: int | None = None
    best_value: float | None = None
    best_params: dict[str, float] = field(default_factory=dict)

    def count(self, state: str) -> int:
        return sum(t.state == state for t in self.trials)

    @property
    def epochs_trained(self) -> int:
        return sum(t.epochs for t in self.trials)


def _record(t: optuna.trial.FrozenTrial) -> TrialRecord:
    value = t.value if t.state == TrialState.COMPLETE else None
    return TrialRecord(t.number, t.state.name, dict(t.params), value,
                       {int(k): float(v) for k, v in sorted(t.intermediate_values.items())},
                       int(t.user_attrs.get("epochs", 0)),
                       str(t.user_attrs.get("pruned_reason", "")))


def importances(study: optuna.Study, names: list[str], seed: int = 0) -> dict[str, float]:
    """fANOVA importances of the searched parameters, or {} when they cannot be told apart:
    fewer than two complete trials, a single parameter, or an evaluator error."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2 or len(names) < 2:
        return {}
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fANOVA on a handful of trials warns; we guard
            found = optuna.importance.get_param_importances(study, evaluator=evaluator,
                                                            params=names)
    except (ValueError, RuntimeError, ZeroDivisionError):
        return {}
    return {k: float(v) for k, v in found.items() if math.isfinite(v)}


def summarize(study: optuna.Study, space: list[Param], objective: str, seed: int = 0
              ) -> StudySummary:
    trials = [_record(t) for t in study.get_trials(deepcopy=False)]
    s = StudySummary(study.study_name, objective,
                     {p.name: {"low": p.low, "high": p.high, "log": p.log, "unit": p.unit}
                      for p in space}, trials,
                     importances(study, [p.name for p in space], seed))
    complete = [t for t in trials if t.state == "COMPLETE" and t.value is not None]
    if complete:
        best = max(complete, key=lambda t: (t.value, -t.number))  # earliest of equals
        s.best_number, s.best_value, s.best_params = best.number, best.value, dict(best.params)
    return s
