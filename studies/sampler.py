"""A sampler whose proposal for a trial depends only on the trials before it that did not
fail, so that a study stopped anywhere (kill -9, Ctrl-C, a lost machine) and resumed proposes
exactly the points it would have proposed without the stop.

A sampler seeded once per process (Optuna's usual way) draws its random numbers in the order
the process asks for them: a resumed process starts that sequence again, or (seeding it with
the number of trials so far, as tailbench did) starts another one, counting the dead trial.
Here every trial gets a fresh sampler, seeded from its *index*: how many trials before it did
not fail. A dead or interrupted trial is failed and its parameters are queued again
(studies/trials.py, studies/objective.py), so the retry takes its index and its place, and the
trials after it see the same index and the same history (TPE reads only COMPLETE and PRUNED
trials) as in a study that was never stopped. Built from Optuna's public `BaseSampler`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState


class IndexedSampler(optuna.samplers.BaseSampler):
    """`make(index)`'s sampler for each trial (see the module docstring)."""

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler]) -> None:
        self._make = make
        self._by_trial: dict[int, optuna.samplers.BaseSampler] = {}
        self._lock = threading.Lock()  # trials of one study in several threads (--jobs)

    @staticmethod
    def index(study: optuna.Study, number: int) -> int:
        """How many trials numbered below `number` did not fail."""
        return sum(t.number < number and t.state != TrialState.FAIL
                   for t in study.get_trials(deepcopy=False))

    def _of(self, study: optuna.Study, trial: FrozenTrial) -> optuna.samplers.BaseSampler:
        with self._lock:
            if trial.number not in self._by_trial:
                self._by_trial[trial.number] = self._make(self.index(study, trial.number))
            return self._by_trial[trial.number]

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial
                                    ) -> dict[str, BaseDistribution]:
        return self._of(study, trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._of(study, trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._of(study, trial).sample_independent(study, trial, param_name,
                                                         param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._of(study, trial).before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._of(study, trial).after_trial(study, trial, state, values)
        with self._lock:
            self._by_trial.pop(trial.number, None)
