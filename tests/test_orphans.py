"""No orphans: runs that dead processes left RUNNING are ended FAILED, with the reason, by the
next invocation that opens the store, and runs a live worker (another real process holding
the locks) is still running are left alone. A real SQLite store, real file locks."""

import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.app import safety
from studies.locks import cell_lock, locks_place, open_locks, repetition_lock, worker_lock
from tracking.store import KIND, Store

ROOT = Path(__file__).resolve().parents[1]
HOLD = ("import sys, time\nfrom studies.locks import open_locks\nlocks = open_locks(sys.argv[1])\n"
        "held = [locks.hold(name) for name in sys.argv[2:]]\nprint('held', flush=True)\n"
        "time.sleep(600)\n")


@pytest.fixture
def holder(tmp_path):
    """A live worker: another process holding the locks of cell 'live', of its repetition 0
    and of worker 'w-live'."""
    journal = str(tmp_path / "optuna.journal")
    proc = subprocess.Popen([sys.executable, "-c", HOLD, journal, cell_lock("live"),
                             repetition_lock("live", 0), worker_lock("w-live")], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield journal
    finally:
        proc.kill()
        proc.wait()


def test_runs_without_a_live_owner_are_ended_failed_and_live_ones_are_left(tmp_path, holder):
    store = Store(f"sqlite:///{tmp_path}/mlflow.db", "tailbench/x/orphans")
    place = locks_place(holder)

    def run(kind, parent=None, **tags):
        extra = {"mlflow.parentRunId": parent} if parent else {}
        return store.client.create_run(store.experiment_id, tags={
            KIND: kind, **extra, **tags}).info.run_id

    live = run("cell", cell_key="live", locks=place)
    live_rep = run("repetition", live, cell_key="live", repetition="0")
    # a repetition of the live cell that nobody trains: its trainer died (a helper, say)
    dead_rep_of_live_cell = run("repetition", live, cell_key="live", repetition="1")
    live_trial = run("trial", live, worker="w-live", locks=place)
    dead_trial_of_live_cell = run("trial", live, worker="w-dead", locks=place)
    dead = run("cell", cell_key="dead", locks=place)  # a cell this invocation does not run
    dead_rep = run("repetition", dead, cell_key="dead", repetition="0")
    dead_trial = run("trial", dead, worker="w-gone", locks=place)
    elsewhere = run("cell", cell_key="other", locks="/another/optuna.journal")
    done = run("cell", cell_key="done", locks=place)
    store.client.set_terminated(done, "FINISHED")

    assert safety.sweep_orphans(store, open_locks(holder), holder) == 5
    status = {r: store.client.get_run(r).info for r in
              (live, live_rep, live_trial, dead_trial_of_live_cell, dead, dead_rep, dead_trial,
               elsewhere, done, dead_rep_of_live_cell)}
    assert [status[r].status for r in (live, live_rep, live_trial, elsewhere)] == ["RUNNING"] * 4
    assert status[done].status == "FINISHED"
    for r, why in ((dead, safety.LOST_WORKER), (dead_rep, safety.LOST_WORKER),
                   (dead_rep_of_live_cell, safety.LOST_WORKER),
                   (dead_trial, safety.LOST_TRIAL), (dead_trial_of_live_cell, safety.LOST_TRIAL)):
        assert status[r].status == "FAILED" and status[r].end_time
        assert store.client.get_run(r).data.tags["error"] == why
    # the locks the sweep took are given back: the dead cell can be owned again at once
    assert open_locks(holder).try_hold(cell_lock("dead")) is not None
    assert safety.sweep_orphans(store, open_locks(holder), holder) == 0  # nothing left to end
