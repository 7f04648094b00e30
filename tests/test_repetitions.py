"""Repetitions vary every source of randomness: the training subsample, the long-tail cut, the
validation split, the initial weights, the batch order and the oversampling draws; the test
images stay the same. Checked on the real data path (cut, prepare, fit's generator)."""

import dataclasses
import json

import pytest
import torch
from conftest import CIFAR_CLASSES, learnable_dataset

from benchmark.app import repetitions, runner
from benchmark.cells import Cell, GridEntry
from benchmark.metrics import class_metric_names
from benchmark.train import build_model
from studies import TuneOptions
from studies.objective import tuning_data
from tracking.results import load_results
from tracking.store import Store

CPU = torch.device("cpu")
CELL = Cell("cnn", "long-tail", "flip+noise", epochs=1, batch_size=16, train_limit=300,
            test_limit=40, imbalance_ratio=3, seeds=3)


@pytest.fixture(scope="module")
def data():
    return learnable_dataset(500, 100, seed=5, digest="ef" * 32)


def images(x: torch.Tensor) -> set[bytes]:
    """Each image's bytes: the learnable images carry random noise, so equal bytes mean the
    same image."""
    return {bytes(img.numpy()) for img in x}


def test_the_subsample_and_the_cut_change_the_test_images_do_not(data):
    a, b = repetitions.cut(CELL, data, 0), repetitions.cut(CELL, data, 1)
    assert images(a.train_x) != images(b.train_x)
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.test_y, b.test_y)
    assert torch.equal(repetitions.cut(CELL, data, 1).train_x, b.train_x)  # and is reproducible
    # without the subsample, the long-tail cut alone: the head classes are kept whole, the
    # tail classes keep other images
    full = dataclasses.replace(CELL, train_limit=0)
    a, b = repetitions.cut(full, data, 0), repetitions.cut(full, data, 1)
    for c in range(10):
        ia, ib = images(a.train_x[a.train_y == c]), images(b.train_x[b.train_y == c])
        assert len(ia) == len(ib)
        assert (ia == ib) == (c >= 5), c  # classes 0-4 are the tail


def test_the_validation_split_comes_from_the_repetition_seed(data):
    cut = repetitions.cut(CELL, data, 0)
    a = tuning_data(cut, CELL.repetition_seed(0), CPU)
    b = tuning_data(cut, CELL.repetition_seed(1), CPU)
    assert images(a.val.x) != images(b.val.x)


def test_the_study_tunes_on_repetition_0(data, monkeypatch, tmp_path):
    from studies import tune as tune_mod

    seen = {}

    def spy(d, seed, device):
        seen["seed"], seen["train"] = seed, images(d.train_x)
        raise RuntimeError("stop here")

    monkeypatch.setattr(tune_mod, "tuning_data", spy)
    from benchmark.recording import NullRunLog

    with pytest.raises(RuntimeError, match="stop here"):
        runner.tune_candidates(dataclasses.replace(CELL, trials=2), data, NullRunLog(), CPU,
                     TuneOptions(str(tmp_path / "optuna.journal")))
    assert seen["seed"] == CELL.repetition_seed(0)
    assert seen["train"] == images(repetitions.cut(CELL, data, 0).train_x)


def test_weights_batch_order_and_oversampling_draws_follow_the_repetition(data, monkeypatch):
    from benchmark.recording import NullRunLog

    calls = {"build": [], "fit": []}
    real_build, real_fit = repetitions.build_model, repetitions.fit
    monkeypatch.setattr(repetitions, "build_model", lambda name, c, seed, device, *cosine: (
        calls["build"].append(seed) or real_build(name, c, seed, device, *cosine)))
    monkeypatch.setattr(repetitions, "fit", lambda *a, seed, **k: (
        calls["fit"].append(seed) or real_fit(*a, seed=seed, **k)))
    for r in range(3):
        repetitions.run_repetition(CELL, [CELL], data, NullRunLog(), r, CPU)
    expected = [CELL.repetition_seed(r) for r in range(3)]
    assert calls["build"] == expected and calls["fit"] == expected and len(set(expected)) == 3
    # what those seeds change: the initial weights ...
    w = [next(build_model("cnn", 10, s, CPU).parameters()) for s in expected[:2]]
    assert not torch.equal(*w)
    # ... and fit's generator, which draws the batch order and the oversampling
    prep = repetitions.prepare(CELL, data, CPU, 0)
    plans = [prep.remedy.plan(torch.Generator().manual_seed(s)) for s in expected[:2]]
    assert plans[0].synthetic.sum() > 0
    assert not torch.equal(plans[0].index, plans[1].index)  # other tail images copied
    orders = [torch.randperm(100, generator=torch.Generator().manual_seed(s))
              for s in expected[:2]]
    assert not torch.equal(*orders)


def test_a_recorder_that_keeps_no_files_gets_no_reports_written(data, monkeypatch):
    """NullRunLog is asked for the repetition's files and writes none (make perf counts the
    files as recording); the repetition learned, so its reports were due."""
    from benchmark.recording import NullRunLog

    drawn, asked = [], []
    monkeypatch.setattr(repetitions, "write_repetition_reports", lambda *a: drawn.append(a))

    class Spy(NullRunLog):
        def log_files(self, write, path=None):
            asked.append(path)
            super().log_files(write, path)

    cell = dataclasses.replace(CELL, variant="balanced", remedy="none", epochs=2,
                               batch_size=8, lr=0.05)  # learns in two epochs (test_train)
    assert repetitions.run_repetition(cell, [cell], data, Spy(), 0, CPU)
    assert asked == [None] and drawn == []


def test_the_tail_is_the_cells_tail_classes(tmp_path):
    """A cell with tail_classes (7, 9), run by the runner on a real store: the cut keeps one
    image of horse and truck each (25 / rho 25) and all of the others, and its head/tail
    accuracy pool classes 0-6, 8 and classes 7, 9, as its param and results column say."""
    cell = Cell("cnn", "long-tail", "none", epochs=2, batch_size=8, lr=0.05, dataset="synthetic",
                profile="quick", imbalance_ratio=25, tail_classes=(7, 9))
    data = learnable_dataset(250, 60, seed=1)  # 25 training and 6 test images a class
    store = Store(f"sqlite:///{tmp_path}/mlflow.db", "tailbench/synthetic/tail")
    [outcome] = runner.run_grid([GridEntry(cell, {})], data, store, device=CPU,
                                tuning=TuneOptions(str(tmp_path / "optuna.journal")))
    assert outcome.status == "finished"
    [row] = load_results(store).to_dict("records")
    assert row["outcome"] == "ok" and row["tail_classes"] == "[7, 9]"
    cell_run = store.client.get_run(row["cell_run_id"]).data
    assert cell_run.params["tail_classes"] == "[7, 9]" and "tail_classes" not in cell_run.tags
    counts = json.loads(store.client.get_run(row["run_id"]).data.tags["class_counts"])
    assert [counts[c] for c in CIFAR_CLASSES] == [25] * 7 + [1, 25, 1]
    acc = [row[n] for n in class_metric_names(CIFAR_CLASSES)]  # 6 test images each: pooled
    tail, head = [acc[c] for c in (7, 9)], [a for c, a in enumerate(acc) if c not in (7, 9)]
    assert row["tail_acc"] == pytest.approx(sum(tail) / 2)
    assert row["head_acc"] == pytest.approx(sum(head) / 8)
    # the check means something: the reference's tail (0-4) would have scored otherwise
    assert row["tail_acc"] != pytest.approx(sum(acc[:5]) / 5)


def test_an_exp_cell_cuts_by_its_protocol_and_oversamples_its_own_tail(data):
    """The real data path of an exp cell: 50 training images a class at rho 10 keep
    floor(50 * 10^(-i/9)) = 50, 38, 29, 23, 17, 13, 10, 8, 6, 5 (199 in all), each repetition
    its own draw of them; its tail is classes 1-9, each filled by oversampling to 50."""
    cell = Cell("cnn", "exp", "oversample", epochs=1, dataset="synthetic", imbalance_ratio=10)
    assert cell.tail_classes == tuple(range(1, 10))
    preps = [repetitions.prepare(cell, data, CPU, r) for r in (0, 1)]
    assert [p.counts for p in preps] == [[50, 38, 29, 23, 17, 13, 10, 8, 6, 5]] * 2
    assert not torch.equal(preps[0].data.train_x, preps[1].data.train_x)
    assert preps[0].remedy.added == 500 - 199
