"""A cell's repetitions shared between workers: a worker with no cell of its own left trains
the repetitions that a live owner's cell still needs, under the owner's run, last first; the
owner waits for the ones it took, and trains again one whose worker died. A real SQLite store,
real file locks held by real processes, and a real kill -9."""

import dataclasses
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import learnable_dataset

from benchmark.app import runner, safety
from benchmark.cells import Cell, GridEntry
from studies import TuneOptions
from studies.locks import cell_lock, locks_place, open_locks, repetition_lock
from tracking import results
from tracking.store import KIND, Store, tag_json

ROOT = Path(__file__).resolve().parents[1]
CELL = Cell("cnn", "long-tail", "none", epochs=2, batch_size=8, lr=0.05, dataset="synthetic",
            profile="quick", imbalance_ratio=5, seeds=2)
HOLD = ("import sys, time\nfrom studies.locks import open_locks\nlocks = open_locks(sys.argv[1])\n"
        "held = [locks.hold(name) for name in sys.argv[2:]]\nprint('held', flush=True)\n"
        "time.sleep(600)\n")


@pytest.fixture(scope="module")
def data():
    return learnable_dataset(250, 60, seed=1, digest="ab" * 32, path="/tmp/synthetic")


@pytest.fixture
def store(tmp_path):
    return Store(f"sqlite:///{tmp_path}/mlflow.db", "tailbench/synthetic/sharing")


def hold(journal: str, *names: str) -> subprocess.Popen:
    """Another live worker: a process holding these locks until it is killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, journal, *names], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def reps(store, run_id):
    return sorted(store.children(run_id, "repetition"), key=lambda r: r.info.start_time)


def test_a_worker_with_no_cell_left_trains_a_live_owners_missing_repetitions(
        tmp_path, store, data):
    journal = str(tmp_path / "optuna.journal")
    owner = hold(journal, cell_lock(CELL.key))  # the owner lives, and is still tuning
    try:
        cell_run = store.client.create_run(store.experiment_id, tags={
            KIND: "cell", "cell_key": CELL.key, "seeds": "2",
            "locks": locks_place(journal)}).info.run_id
        # its tuning ends a second later: the helper waits for the parameters it publishes
        tuned = threading.Timer(1.0, store.client.set_tag,
                                (cell_run, runner.TUNED, tag_json([{"lr": 0.05}])))
        tuned.start()
        said = []
        # its own invocation asks for 3 (seeds is no part of the key): it trains the owner's 2
        more = dataclasses.replace(CELL, seeds=3)
        assert more.key == CELL.key
        trained = runner._help_repetitions(more, data, store, open_locks(journal),
                                           runner.Invocation(), said.append,
                                           device=torch.device("cpu"), progress=False)
        tuned.join()
    finally:
        owner.kill()
        owner.wait()
    assert trained == 2
    got = reps(store, cell_run)
    # last first (the owner starts from the first), each once, nested under the owner's run
    assert [r.data.tags["repetition"] for r in got] == ["1", "0"]
    assert all(results.is_done(r) and results.outcome_of(r) == results.OK for r in got)
    assert [r.data.params["final_lr"] for r in got] == ["0.05"] * 2  # the published ones
    assert said[0] == "repetition 2 of 2 (helping its owner) ..."
    # the cell run is its owner's: still RUNNING, for it to summarize
    assert store.client.get_run(cell_run).info.status == "RUNNING"
    # an owner that is gone (its lock free) gets no help: the next run trains what is missing
    assert runner._help_repetitions(CELL, data, store, open_locks(journal), runner.Invocation(),
                                    said.append, device=torch.device("cpu"),
                                    progress=False) == 0


def test_the_owner_waits_for_a_helpers_repetition_and_trains_it_again_when_the_helper_dies(
        tmp_path, store, data, capsys):
    journal = str(tmp_path / "optuna.journal")
    helper = hold(journal, repetition_lock(CELL.key, 0))  # a live helper trains repetition 0
    lost = []

    def helpers_run() -> None:  # the helper's run of repetition 0, opened under the cell's
        while not (cells := store.search(f"tags.{KIND} = 'cell'")):
            time.sleep(0.1)
        lost.append(store.client.create_run(store.experiment_id, tags={
            KIND: "repetition", "mlflow.parentRunId": cells[0].info.run_id,
            "cell_key": CELL.key, "repetition": "0"}).info.run_id)
        # the sweep leaves it: its repetition's lock is held
        assert safety.sweep_orphans(store, open_locks(journal), journal) == 0
        while not [r for r in reps(store, cells[0].info.run_id) if results.is_done(r)]:
            time.sleep(0.1)
        helper.kill()  # kill -9, with the owner waiting for its repetition

    killer = threading.Thread(target=helpers_run)
    killer.start()
    try:
        outcomes = runner.run_grid([GridEntry(CELL, {})], data, store,
                                   device=torch.device("cpu"), tuning=TuneOptions(journal))
    finally:
        killer.join(timeout=120)
        helper.kill()
        helper.wait()
    assert [o.status for o in outcomes] == ["finished"]
    said = capsys.readouterr()
    out = said.out + said.err
    assert "repetition 1 of 2: another worker trains it, waiting" in out
    assert "repetition 1 of 2: its worker died; training it here" in out
    cell = store.search(f"tags.{KIND} = 'cell'")[0]
    assert cell.info.status == "FINISHED" and cell.data.metrics["repetitions_ok"] == 2
    got = {r.info.run_id: r for r in reps(store, cell.info.run_id)}
    assert got[lost[0]].info.status == "FAILED"
    assert got[lost[0]].data.tags["error"] == safety.LOST_WORKER
    done = sorted(r.data.tags["repetition"] for r in got.values() if results.is_done(r))
    assert done == ["0", "1"]  # each once: the owner's, and the dead helper's trained again
    assert not any(r.info.status == "RUNNING" for r in got.values())


def test_two_workers_train_each_repetition_once_and_the_second_helps_at_the_end(
        tmp_path, store, data, monkeypatch):
    """Two in-process workers on one cell with no trials: the first owns it, the second has
    nothing else to do and takes repetitions from the end; every repetition is trained once."""
    journal = str(tmp_path / "optuna.journal")
    cell = Cell("cnn", "long-tail", "none", epochs=4, batch_size=8, lr=0.05,
                dataset="synthetic", profile="quick", imbalance_ratio=5, seeds=4)
    monkeypatch.setattr(runner, "settle_heap", lambda: None)  # not in a test's process
    outcomes = {}

    def worker(name: str) -> None:
        outcomes[name] = runner.run_grid(
            [GridEntry(cell, {})], data, Store(store.uri, store.experiment_name),
            device=torch.device("cpu"), tuning=TuneOptions(journal),
            invocation=runner.Invocation(id="same"))

    first = threading.Thread(target=worker, args=("first",))
    first.start()
    while not store.search(f"tags.{KIND} = 'repetition'"):  # the first owns it, and trains
        time.sleep(0.05)
    worker("second")
    first.join(timeout=300)
    (run,) = store.search(f"tags.{KIND} = 'cell'")
    assert run.info.status == "FINISHED" and run.data.metrics["repetitions_ok"] == 4
    got = reps(store, run.info.run_id)
    assert sorted(r.data.tags["repetition"] for r in got) == ["0", "1", "2", "3"]
    assert all(r.info.status == "FINISHED" for r in got)
    assert [o.status for o in outcomes["first"]] == ["finished"]
    (second,) = outcomes["second"]
    assert second.status == "helped" and second.trained >= 1
    assert got[-1].data.tags["repetition"] != "3"  # the helper took the last one first
