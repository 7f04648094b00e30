"""A study's trials run by any number of workers, each trial exactly once, through public Optuna
APIs only.

- **Exactly N.** A worker asks for a trial only while it holds the study's *gate* lock
  (studies/locks.py), and only when the study's finished plus running trials are fewer than
  N. It marks the new trial as its own (`worker` user attribute) and lets go of the gate as
  the objective starts, so no two workers can see the same count and both ask: the study
  ends with N finished trials, none surplus, none failed for bookkeeping.
- **A dead worker's trial** is failed and its parameters are tried again:
  - on an RDB storage (SQLite, PostgreSQL) by Optuna itself: the storage records heartbeats,
    a trial without one for the grace period is failed and re-queued by
    `RetryHeartbeatStaleTrialCallback` (`optuna.storages.fail_stale_trials`, also called
    by `study.optimize` before every trial);
  - on a journal file, which has no heartbeats: every worker holds a lock named after itself
    while it runs trials; a RUNNING trial whose worker's lock is free has lost its worker
    (kill -9 included). It is failed with `study.tell(number, state=FAIL)` and queued
    again with `study.enqueue_trial(params, user_attrs={"retry_of": number})`.
  Both happen under the gate, where a RUNNING trial with no `worker` mark can only be one
  whose worker died between asking and marking: it is failed the same way.
- The worker waits until the last trials of the study, run by others, have ended (one may
  die and need running again), so the best trial it reads is the study's final one. A
  helper (`wait=False`: a worker that runs trials of a cell another worker owns) leaves the
  last trial to the owner and goes on to its next cell: the owner would otherwise sit idle
  waiting for the helper's last trial (seen: 9 to 11 s a study), where now it trains it; it
  also runs again a trial whose worker died.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from studies.locks import Held, Locks, is_free, worker_lock
from studies.summary import FINISHED

POLL_S = 1.0  # how often a worker waiting for other workers' trials looks again
WORKER = "worker"  # the trial's user attribute: who runs it


def _gate(study: optuna.Study) -> str:
    return f"trials of {study.study_name}"


class Workers:
    """The study's trials, run by this process's workers (threads: `jobs`) and any others on
    the same storage, until the study holds `wanted` finished ones (`wait`; else until one is
    left that nobody has started, for the study's owner) or `deadline` passes."""

    def __init__(self, study: optuna.Study, locks: Locks, journal: bool, wanted: int,
                 deadline: float | None = None, progress: bool = False,
                 wait: bool = True) -> None:
        self.study, self.locks, self.journal = study, locks, journal
        self.wanted, self.deadline, self.wait = wanted, deadline, wait
        self.dead: list[FrozenTrial] = []  # trials of dead workers this process failed
        self._bar = tqdm(total=wanted, initial=min(wanted, self._counts()[0]), desc="trials",
                         unit="trial", disable=not progress, leave=False)

    def run(self, objective: Callable[[], Callable], jobs: int = 1) -> list[FrozenTrial]:
        """Run trials with the objective `objective()` makes (made once, when a trial is
        first needed) in `jobs` threads; returns the dead workers' trials found on the way."""
        made: list = []
        lock = threading.Lock()

        def make():
            with lock:
                made[:] = made or [objective()]
            return made[0]

        threads = [threading.Thread(target=self._loop, args=(make,)) for _ in range(jobs - 1)]
        for t in threads:
            t.start()
        try:
            self._loop(make)
        finally:
            for t in threads:
                t.join()
            self._bar.close()
        return self.dead

    def _loop(self, make) -> None:
        me = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        alive = self.locks.hold(worker_lock(me))  # free again when this worker dies
        try:
            while self.deadline is None or time.monotonic() < self.deadline:
                gate = self.locks.hold(_gate(self.study))
                try:
                    self._fail_dead()
                    finished, running = self._counts()
                    left = self.wanted - finished - running  # nobody has started them
                    if finished >= self.wanted or (not self.wait and left <= 1):
                        return
                    if left > 0:
                        self.study.optimize(_Marked(make(), gate, me), n_trials=1)
                        self._bar.update(1)
                        continue
                finally:
                    gate.release()
                time.sleep(POLL_S)  # the last trials run elsewhere: wait for them to end
        finally:
            alive.release()

    def _counts(self) -> tuple[int, int]:
        trials = self.study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
        finished = sum(t.state in FINISHED for t in trials)
        return finished, len(trials) - finished

    def _fail_dead(self) -> None:
        """Under the gate: fail (and queue again) the RUNNING trials whose worker is gone."""
        if not self.journal:
            before = set(self._running())
            with warnings.catch_warnings():  # "experimental" since Optuna 2.9; public
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(self.study)  # failed and re-queued by Optuna
            self.dead += [t for t in self.study.get_trials(deepcopy=False, states=(
                TrialState.FAIL,)) if t.number in before]
        for t in self._running().values():
            if not self._alive(t):
                self.study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
                if t.params:
                    self.study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
                self.dead.append(t)

    def _running(self) -> dict[int, FrozenTrial]:
        return {t.number: t for t in self.study.get_trials(deepcopy=False,
                                                            states=(TrialState.RUNNING,))}

    def _alive(self, trial: FrozenTrial) -> bool:
        worker = trial.user_attrs.get(WORKER)
        if worker is None:  # asked under the gate, never marked: its worker died in between
            return False
        if not self.journal:  # heartbeats judge it (fail_stale_trials above)
            return True
        return not is_free(self.locks, worker_lock(worker))


class _Marked:
    """The objective, after marking the trial as this worker's and opening the gate."""

    def __init__(self, objective: Callable, gate: Held, worker: str) -> None:
        self.objective, self.gate, self.worker = objective, gate, worker

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER, self.worker)
        self.gate.release()
        return self.objective(trial)
