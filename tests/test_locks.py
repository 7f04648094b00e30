"""Locks the OS lets go of when their holder dies, and a journal study's trials run exactly once
by racing worker processes, dead workers' trials failed and tried again (studies/trials.py).
Real journal files, real processes, real kill -9. The PostgreSQL side is in test_scale.py."""

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from studies.locks import FileLocks, open_locks
from studies.storage import open_studies
from studies.trials import WORKER, Workers

HOLD = ("import sys, time\nfrom studies.locks import FileLocks\n"
        "held = FileLocks(sys.argv[1]).hold('cell abc')\nprint('held', flush=True)\n"
        "time.sleep(600)\n")


def test_a_file_lock_excludes_a_second_holder_until_released(tmp_path):
    locks = FileLocks(tmp_path / "locks")
    held = locks.try_hold("cell abc")
    assert held is not None
    assert locks.try_hold("cell abc") is None  # the same process, a second holder: refused
    assert locks.try_hold("cell xyz") is not None  # another name is another lock
    held.release()
    held.release()  # idempotent
    assert locks.try_hold("cell abc") is not None


def test_a_killed_holders_file_lock_is_free_again(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "locks")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert FileLocks(tmp_path / "locks").try_hold("cell abc") is None
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert FileLocks(tmp_path / "locks").try_hold("cell abc") is not None


def test_locks_live_next_to_a_local_store_and_mysql_is_refused(tmp_path):
    journal = tmp_path / "optuna.journal"
    assert open_locks(journal).folder == tmp_path / "optuna.journal.locks"
    assert open_locks(f"sqlite:///{tmp_path}/o.db").folder == tmp_path / "o.db.locks"
    with pytest.raises(ValueError, match="unknown scheme 'mysql'"):
        open_locks("mysql://u:p@host/db")


def _objective(trial: optuna.Trial) -> float:
    time.sleep(0.1)
    return trial.suggest_float("x", 0, 1)


def _work(journal: str, wanted: int, start) -> None:
    study = optuna.load_study(study_name="s", storage=open_studies(journal))
    start.wait()  # all at once: on a loaded machine a process can take seconds to start
    Workers(study, open_locks(journal), True, wanted).run(lambda: _objective, jobs=2)


def test_racing_workers_run_exactly_n_trials_of_a_journal_study(tmp_path):
    journal = str(tmp_path / "optuna.journal")
    optuna.create_study(study_name="s", storage=open_studies(journal))
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(3)
    procs = [ctx.Process(target=_work, args=(journal, 12, start)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    trials = optuna.load_study(study_name="s", storage=open_studies(journal)).trials
    # twelve, all complete: none surplus, none failed for bookkeeping
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 12
    assert len({t.user_attrs[WORKER].rsplit(":", 1)[0] for t in trials}) >= 2  # shared out


def _study_with_running_trial(journal: str, worker: str | None) -> optuna.Study:
    study = optuna.create_study(study_name="s", storage=open_studies(journal))
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    if worker:
        trial.set_user_attr(WORKER, worker)
    return study


@pytest.mark.parametrize("worker", ["ghost:1:dead", None])
def test_a_dead_or_unmarked_workers_trial_is_failed_and_tried_again(tmp_path, worker):
    journal = str(tmp_path / "optuna.journal")
    study = _study_with_running_trial(journal, worker)
    x = study.trials[0].params["x"]
    dead = Workers(study, open_locks(journal), True, 2).run(lambda: _objective)
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert [t.number for t in dead] == [0]
    retry = study.trials[1]
    assert retry.user_attrs["retry_of"] == 0 and retry.params["x"] == x  # the same point


def test_a_live_workers_trial_is_waited_for_not_failed(tmp_path):
    journal = str(tmp_path / "optuna.journal")
    study = _study_with_running_trial(journal, "elsewhere:1:live")
    alive = open_locks(journal).hold("worker elsewhere:1:live")  # its worker is alive
    try:
        workers = Workers(study, open_locks(journal), True, 1, deadline=time.monotonic() + 2)
        assert workers.run(lambda: _objective) == []
    finally:
        alive.release()
    # finished + running already make 1: nothing asked, nothing failed, still waiting
    assert [t.state for t in study.trials] == [TrialState.RUNNING]


def test_a_helper_leaves_the_last_trial_to_the_owner_and_does_not_wait_for_its_trials(tmp_path):
    journal = str(tmp_path / "optuna.journal")
    study = _study_with_running_trial(journal, "owner:1:live")
    alive = open_locks(journal).hold("worker owner:1:live")  # the cell's owner, training
    try:
        # no deadline: a helper that waited for the owner's trial would wait until it ends
        helper = Workers(study, open_locks(journal), True, 4, wait=False)
        dead = []
        thread = threading.Thread(target=lambda: dead.extend(helper.run(lambda: _objective)))
        thread.start()
        thread.join(timeout=60)  # two trials of an instant objective take well under a second
        assert not thread.is_alive(), "the helper waited for the owner's running trial"
        assert dead == []
    finally:
        alive.release()
    # of the three left it ran two, and left the last one and the running one to the owner
    assert [t.state for t in study.trials] == [TrialState.RUNNING, TrialState.COMPLETE,
                                               TrialState.COMPLETE]
