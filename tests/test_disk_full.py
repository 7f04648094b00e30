"""A disk that fills up in the middle of a cell, for real: the store on a tmpfs of its own,
filled to the last byte right after a final fit. The cell ends FAILED with "no space left on
<the mount>", nothing stays RUNNING, the next cell is not started (too little room for it),
and once there is room again a re-run trains the cell and finishes it whole."""

import errno
import os

import pytest
import torch
from conftest import learnable_dataset, mounted_tmpfs

from benchmark.app import repetitions, runner
from benchmark.cells import Cell, GridEntry
from studies import TuneOptions
from tracking.store import Store

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs (root only)")
CELLS = [Cell("cnn", "long-tail", "none", epochs=2, batch_size=8, lr=0.05, dataset="synthetic",
              profile="quick", imbalance_ratio=5, trials=0, seeds=1),
         Cell("cnn", "balanced", "none", epochs=2, batch_size=8, lr=0.05, dataset="synthetic",
              profile="quick", trials=0, seeds=1)]


@pytest.fixture
def disk(tmp_path):
    with mounted_tmpfs(tmp_path / "disk", 96) as mnt:
        yield mnt


def fill(folder) -> None:
    with (folder / "filler").open("wb") as f:
        try:
            while True:
                f.write(b"\xff" * 2**20)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC


def test_a_disk_full_mid_cell_ends_it_failed_and_a_rerun_finishes_it(disk, monkeypatch):
    store = Store(f"sqlite:///{disk}/mlflow.db", "tailbench/synthetic/disk-full")
    data = learnable_dataset(250, 60, seed=1)
    real_fit = repetitions.fit

    def fit_then_fill(*args, **kwargs):
        history = real_fit(*args, **kwargs)
        fill(disk)
        return history

    def run():
        return runner.run_grid([GridEntry(c, {}) for c in CELLS], data, store,
                               device=torch.device("cpu"),
                               tuning=TuneOptions(str(disk / "optuna.journal")))

    monkeypatch.setattr(repetitions, "fit", fit_then_fill)
    first, second = run()
    assert first.status == "failed" and first.error.startswith(f"no space left on {disk}"), first
    assert "\n" not in first.error
    assert second.status == "failed" and "not started" not in second.error  # said by the runner
    assert "free on" in second.error and str(disk) in second.error, second.error
    runs = store.search("")
    assert {r.info.status for r in runs} == {"FAILED"}, [(r.info.run_name, r.info.status)
                                                          for r in runs]
    cell = next(r for r in runs if r.data.tags["tailbench_kind"] == "cell")
    assert cell.data.tags["error"].startswith(f"no space left on {disk}")
    assert len(runs) == 2  # the second cell never opened a run

    monkeypatch.setattr(repetitions, "fit", real_fit)
    (disk / "filler").unlink()
    assert [o.status for o in run()] == ["finished", "finished"]
    runs = store.search("attributes.status = 'FINISHED'")
    reps = [r for r in runs if r.data.tags["tailbench_kind"] == "repetition"]
    assert len(runs) == 4 and len(reps) == 2
    assert not store.search("attributes.status = 'RUNNING'")
