"""Exactly-once work across workers, on the Optuna storage they already share.

A claim on some work (a cell's final training) is a trial of a small study named after it:
trial numbers are handed out atomically by every Optuna storage, so when several workers ask
at once, the lowest-numbered live trial owns the work and the others step back (their trial
ends FAIL at once, training nothing). A trial is live while its worker is: on the same host
its process must exist (this works for the journal file, which has no heartbeat), and on an
RDB storage with heartbeats a worker that misses them is failed by Optuna itself. The owner
ends its trial COMPLETE when the work is done; a dead owner's claim can be taken again.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import warnings

import optuna
from optuna.storages._heartbeat import is_heartbeat_enabled  # public in optuna.storages < 5
from optuna.trial import TrialState

HOST = socket.gethostname()
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def mark_worker(trial: optuna.Trial | optuna.trial.FrozenTrial, study: optuna.Study) -> None:
    """Record who runs `trial`, so a trial left RUNNING by a dead process can be told apart."""
    study._storage.set_trial_user_attr(trial._trial_id, "worker", f"{HOST}:{os.getpid()}")


def is_live(trial: optuna.trial.FrozenTrial) -> bool:
    """A RUNNING trial whose worker still exists (as far as this host can tell)."""
    if trial.state != TrialState.RUNNING:
        return False
    host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
    return host != HOST or not pid.isdigit() or _pid_alive(int(pid))


def fail_dead_trials(study: optuna.Study, retry: bool = False) -> list[optuna.trial.FrozenTrial]:
    """End as FAIL every RUNNING trial whose worker was on this host and is gone (kill -9),
    and, with `retry`, queue its parameters again (RDB storages with heartbeats do both for
    any host through Optuna's RetryHeartbeatStaleTrialCallback). Returns the trials it ended."""
    storage = study._storage
    running = {t.number: t for t in study.get_trials(deepcopy=False,
                                                      states=(TrialState.RUNNING,))}
    stale = []
    if is_heartbeat_enabled(storage):
        with warnings.catch_warnings():  # "experimental" since v2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # failed and retried by Optuna itself
        now = {t.number: t.state for t in study.get_trials(deepcopy=False)}
        stale = [t for n, t in running.items() if now.get(n) == TrialState.FAIL]
    dead = [t for t in running.values() if t not in stale and not is_live(t)]
    for t in dead:
        storage.set_trial_user_attr(t._trial_id, "ended", "its worker died")
        if storage.set_trial_state_values(t._trial_id, TrialState.FAIL) and retry and t.params:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
    return stale + dead


def wait_for_running(study: optuna.Study, poll_s: float = 1.0) -> list:
    """Until no trial of the study is running in a live worker; dead workers' trials are
    failed and queued again on the way. Returns those."""
    dead = []
    while True:
        dead += fail_dead_trials(study, retry=True)
        if not any(is_live(t) for t in study.get_trials(deepcopy=False,
                                                         states=(TrialState.RUNNING,))):
            return dead
        time.sleep(poll_s)


class Surplus(Exception):
    """A trial asked for after its study already had enough trials finished or under way."""


def check_not_surplus(trial: optuna.Trial, wanted: int) -> None:
    """Mark the trial as this worker's; raise Surplus (and stop this worker's loop) when
    `wanted` trials of lower number are already finished or running live: workers that ask
    at the same moment then still run each of the study's `wanted` trials exactly once."""
    study = trial.study
    mark_worker(trial, study)
    ahead = sum(t.number < trial.number and (t.state in FINISHED or is_live(t))
                for t in study.get_trials(deepcopy=False))
    if ahead >= wanted:
        study._storage.set_trial_user_attr(trial._trial_id, "ended", "surplus: not run")
        study.stop()
        raise Surplus(f"trial {trial.number}: the study already has {wanted} trials")


class Claim:
    """Ownership of one piece of work; keeps its heartbeat (where the storage has one)."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial, stale: list[str]):
        self.study, self.trial = study, trial
        self.stale_runs = stale  # tracking run ids that dead owners of this work left open
        self._stop = threading.Event()
        self._beat = None
        storage = study._storage
        if is_heartbeat_enabled(storage):
            storage.record_heartbeat(trial._trial_id)
            self._beat = threading.Thread(target=self._beating, daemon=True)
            self._beat.start()

    def _beating(self) -> None:
        interval = self.study._storage.get_heartbeat_interval() or 60
        while not self._stop.wait(interval):
            self.study._storage.record_heartbeat(self.trial._trial_id)

    def publish(self, run_id: str) -> None:
        """Tell the other workers which tracking run this work records into."""
        self.trial.set_user_attr("run_id", run_id)

    def release(self, done: bool) -> None:
        """COMPLETE when the work is done (nobody takes it again), FAIL to hand it back."""
        self._stop.set()
        self.study.tell(self.trial, 1.0 if done else None,
                        state=TrialState.COMPLETE if done else TrialState.FAIL)


def claim_study(storage, name: str) -> optuna.Study:
    return optuna.create_study(storage=storage, study_name=f"{name} · final-training claim",
                               load_if_exists=True)


def try_claim(storage, name: str) -> Claim | None:
    """The claim on `name` if this worker gets it; None if a live worker has it."""
    study = claim_study(storage, name)
    stale = [t.user_attrs["run_id"] for t in fail_dead_trials(study) if "run_id" in t.user_attrs]
    # A COMPLETE claim does not block: whether the work is done is the tracking store's to say
    # (the caller checks it again once it holds the claim), so a store that lost the result,
    # or a new one, gets the work redone.
    trial = study.ask()
    mark_worker(trial, study)
    live = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if is_live(t) or t.number == trial.number]
    if min(t.number for t in live) != trial.number:
        study.tell(trial, state=TrialState.FAIL)  # another worker was first: step back
        return None
    return Claim(study, trial, stale)


def published_run(storage, name: str) -> str | None:
    """The tracking run id the live owner of `name` records into, once it has said."""
    live = [t for t in claim_study(storage, name).get_trials(
        deepcopy=False, states=(TrialState.RUNNING,)) if is_live(t)]
    return min(live, key=lambda t: t.number).user_attrs.get("run_id") if live else None
