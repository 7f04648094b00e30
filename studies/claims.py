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

import optuna
from optuna.trial import TrialState

HOST = socket.gethostname()


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


def fail_dead_trials(study: optuna.Study) -> int:
    """End as FAIL every RUNNING trial whose worker was on this host and is gone (kill -9);
    with heartbeats on, also those Optuna finds stale. Returns how many were ended."""
    if isinstance(study._storage, optuna.storages._heartbeat.BaseHeartbeat) and \
            study._storage.is_heartbeat_enabled():
        optuna.storages.fail_stale_trials(study)
    dead = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if not is_live(t)]
    for t in dead:
        study._storage.set_trial_user_attr(t._trial_id, "ended", "worker died")
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    return len(dead)


class Claim:
    """Ownership of one piece of work; keeps its heartbeat (where the storage has one)."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial):
        self.study, self.trial = study, trial
        self._stop = threading.Event()
        self._beat = None
        storage = study._storage
        if isinstance(storage, optuna.storages._heartbeat.BaseHeartbeat) and \
                storage.is_heartbeat_enabled():
            storage.record_heartbeat(trial._trial_id)
            self._beat = threading.Thread(target=self._beating, daemon=True)
            self._beat.start()

    def _beating(self) -> None:
        interval = self.study._storage.get_heartbeat_interval() or 60
        while not self._stop.wait(interval):
            self.study._storage.record_heartbeat(self.trial._trial_id)

    def release(self, done: bool) -> None:
        """COMPLETE when the work is done (nobody takes it again), FAIL to hand it back."""
        self._stop.set()
        self.study.tell(self.trial, 1.0 if done else None,
                        state=TrialState.COMPLETE if done else TrialState.FAIL)


def claim_study(storage, name: str) -> optuna.Study:
    return optuna.create_study(storage=storage, study_name=f"claim: {name}", load_if_exists=True)


def try_claim(storage, name: str) -> Claim | None:
    """The claim on `name` if this worker gets it; None if it is done or a live worker has it."""
    study = claim_study(storage, name)
    fail_dead_trials(study)
    if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    trial = study.ask()
    mark_worker(trial, study)
    live = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if is_live(t) or t.number == trial.number]
    if min(t.number for t in live) != trial.number:
        study.tell(trial, state=TrialState.FAIL)  # another worker was first: step back
        return None
    return Claim(study, trial)


def claimed_elsewhere(storage, name: str) -> bool:
    """Whether a live worker other than this process holds the claim on `name`."""
    study = claim_study(storage, name)
    me = f"{HOST}:{os.getpid()}"
    return any(is_live(t) and t.user_attrs.get("worker") != me
               for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
