"""The grid runner against a real MLflow SQLite store: a top-level run per cell with its
repetitions nested, statistics over them, skip, more seeds, force, FAILED, KILLED, a fit that
did not learn, and bad input refused before anything is trained."""

import dataclasses
import json
import math

import mlflow
import pandas as pd
import pytest
import torch
from conftest import learnable_dataset
from torch import nn

from benchmark.app import repetitions, runner
from benchmark.app.cli import main
from benchmark.cells import Cell, GridEntry
from benchmark.models import MODELS
from studies import TuneOptions
from tracking import results
from tracking.results import load_results, write_results
from tracking.store import Store

# batch 8: the learnable images are learnt in two epochs (a fit that learns nothing is now
# rejected, so these cells must learn)
CELLS = [Cell("cnn", "long-tail", "none", epochs=2, batch_size=8, lr=0.05, dataset="synthetic",
              profile="quick", imbalance_ratio=5, seeds=2),
         Cell("cnn", "long-tail", "flip+noise", epochs=2, batch_size=8, lr=0.05,
              dataset="synthetic", profile="quick", imbalance_ratio=5)]



@pytest.fixture(scope="module")
def data():
    return learnable_dataset(250, 60, seed=1, digest="ab" * 32, path="/tmp/synthetic")


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """One SQLite file for the module (creating its tables takes seconds), an experiment a test."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


@pytest.fixture
def store(db, request):
    return Store(db, f"tailbench/synthetic/{request.node.name}")


def run(store, data, cells=CELLS, force=False):
    journal = store.uri.removeprefix("sqlite:///").replace("mlflow.db", "optuna.journal")
    return runner.run_grid([GridEntry(c, {}) for c in cells], data, store,
                           device=torch.device("cpu"), tuning=TuneOptions(journal),
                           invocation=runner.Invocation(force=force))


def cell_runs(store):
    mlflow.set_tracking_uri(store.uri)
    return mlflow.search_runs(experiment_names=[store.experiment_name],
                              filter_string="tags.tailbench_kind = 'cell'")


def runs_of(store, kind):
    mlflow.set_tracking_uri(store.uri)
    return mlflow.search_runs(experiment_names=[store.experiment_name],
                              filter_string=f"tags.tailbench_kind = '{kind}'")


def test_a_cell_is_a_top_level_run_with_its_repetitions_nested(store, data, monkeypatch):
    settled = []  # counted, not done: freezing would keep this test process's heap for good
    monkeypatch.setattr(runner, "settle_heap", lambda: settled.append(1))
    outcomes = run(store, data)
    assert [o.status for o in outcomes] == ["finished", "finished"]
    assert len(settled) == 2  # before each cell
    cells = cell_runs(store)
    assert len(cells) == 2 and set(cells["status"]) == {"FINISHED"}
    # one row per cell in the runs table: no parent above the cells, no invocation runs
    assert "tags.mlflow.parentRunId" not in cells or cells["tags.mlflow.parentRunId"].isna().all()
    assert not len(runs_of(store, "invocation"))
    cnn = cells[cells["tags.remedy"] == "none"].iloc[0]
    assert cnn["tags.cell_key"] == CELLS[0].key and cnn["params.epochs"] == "2"
    assert cnn["tags.invocation"] and cnn["tags.seeds"] == "2" and "params.seeds" not in cnn
    # the tail classes are a param of the cell (a Cell field), no longer a tag beside it
    assert cnn["params.tail_classes"] == "[0, 1, 2, 3, 4]" and "tags.tail_classes" not in cnn
    assert cnn["metrics.repetitions"] == 2 and cnn["metrics.repetitions_ok"] == 2
    reps = runs_of(store, "repetition")
    mine = reps[reps["tags.mlflow.parentRunId"] == cnn["run_id"]].sort_values("tags.repetition")
    assert list(mine["tags.repetition"]) == ["0", "1"] and set(mine["tags.outcome"]) == {"ok"}
    assert mine["tags.rep_seed"].nunique() == 2
    # the cell's statistics are those of its repetitions
    accs = mine["metrics.final_test_acc"]
    assert cnn["metrics.test_acc_mean"] == pytest.approx(accs.mean())
    assert cnn["metrics.test_acc_std"] == pytest.approx(accs.std(ddof=1))
    assert cnn["metrics.test_acc_ci95"] == pytest.approx(12.7062 * accs.std(ddof=1) / 2 ** 0.5,
                                                         rel=1e-4)  # t(0.975, 1) = 12.7062
    rep = mine.iloc[0]
    assert json.loads(rep["tags.class_counts"])["airplane"] == 5  # 25 cut to 20%
    for key in ("final_train_acc", "final_test_acc", "head_acc", "tail_acc", "balanced_acc",
                "macro_f1", "acc_airplane", "ece", "many_acc", "few_acc"):
        assert 0 <= rep[f"metrics.{key}"] <= 1, key
    # a step cut: head many-shot, tail few-shot, no medium; the calibration bins as a tag
    assert rep["metrics.few_acc"] == rep["metrics.tail_acc"]
    assert "metrics.medium_acc" not in rep or math.isnan(rep["metrics.medium_acc"])
    assert sum(json.loads(rep["tags.calibration"])["count"]) == len(data.test_y)
    assert 0 <= cnn["metrics.ece_mean"] <= 1
    client = mlflow.MlflowClient(store.uri)
    assert [m.step for m in client.get_metric_history(rep["run_id"], "test_acc")] == [1, 2]
    assert client.get_run(rep["run_id"]).inputs.dataset_inputs[0].dataset.digest == \
        ("ab" * 32)[:36]
    # a repetition's reports; its figures are the cell's, drawn once over its repetitions
    assert {a.path for a in client.list_artifacts(rep["run_id"])} == {"reports"}
    assert len(json.loads(rep["tags.confusion"])) == 10
    assert len(client.get_run(rep["run_id"]).outputs.model_outputs) == 1  # its logged model
    figures = {a.path for a in client.list_artifacts(cnn["run_id"], "figures")}
    assert {"figures/mean_accuracy.svg", "figures/mean_loss.svg",
            "figures/per_class_accuracy_mean.svg", "figures/reliability.svg",
            "figures/confusion_normalized.svg"} <= figures
    per_class = client.download_artifacts(cnn["run_id"], "figures/per_class_accuracy_mean.svg")
    assert "tail class (cut)" in open(per_class).read()  # a long-tail cell cuts its tail
    oversampled = cells[cells["tags.remedy"] == "flip+noise"].iloc[0]
    flip = reps[reps["tags.mlflow.parentRunId"] == oversampled["run_id"]].iloc[0]
    assert "adds" in flip["tags.remedy_note"]


def test_settling_the_heap_collects_the_garbage_then_freezes_what_is_left():
    import gc
    import weakref

    class Node:
        pass

    dead, live = Node(), Node()
    dead.me, live.me = dead, live  # cycles: only the collector frees the dead one
    gone = weakref.ref(dead)
    del dead
    try:
        runner.settle_heap()
        assert gone() is None  # collected, not frozen for good
        assert gc.get_freeze_count() > 0
        assert all(o is not live for o in gc.get_objects())  # frozen: no longer walked
    finally:
        gc.unfreeze()
    assert any(o is live for o in gc.get_objects())


def test_a_loss_remedy_cell_runs_and_its_repetition_names_the_loss(store, data):
    # the weighted loss learns slower than plain cross-entropy: 2 epochs collapse (seen)
    cell = dataclasses.replace(CELLS[1], remedy="reweight", epochs=4)
    assert [o.status for o in run(store, data, cells=[cell])] == ["finished"]
    reps = runs_of(store, "repetition")
    assert len(reps) == 1 and reps.iloc[0]["tags.remedy_note"] == \
        "no oversampling; loss class-balanced (beta 0.9999)"
    assert cell_runs(store).iloc[0]["params.remedy"] == "reweight"
    assert cell_runs(store).iloc[0]["params.cb_beta"] == "0.9999"
    assert reps.iloc[0]["params.final_cb_beta"] == "0.9999"  # tuned nothing: the cell's own


def test_a_rerun_trains_only_missing_repetitions_and_force_starts_a_new_cell_run(
        store, data, monkeypatch):
    run(store, data, cells=CELLS[:1])
    first = cell_runs(store).iloc[0]
    trained = []
    real_fit = repetitions.fit
    monkeypatch.setattr(repetitions, "fit", lambda *a, **k: trained.append(k["seed"]) or
                        real_fit(*a, **k))
    assert [o.status for o in run(store, data, cells=CELLS[:1])] == ["skipped"]
    assert not trained
    more = dataclasses.replace(CELLS[0], seeds=3)
    assert more.key == CELLS[0].key  # more repetitions: the same cell
    [outcome] = run(store, data, cells=[more])
    assert outcome.status == "finished" and outcome.trained == 1
    assert trained == [more.repetition_seed(2)]  # only the missing repetition 2
    again = cell_runs(store)
    assert len(again) == 1 and again.iloc[0]["run_id"] == first["run_id"]
    assert again.iloc[0]["metrics.repetitions_ok"] == 3 and again.iloc[0]["tags.seeds"] == "3"
    assert len(runs_of(store, "repetition")) == 3
    trained.clear()
    assert [o.status for o in run(store, data, cells=[more], force=True)] == ["finished"]
    assert len(trained) == 3 and len(cell_runs(store)) == 2
    df = load_results(store)  # the newest cell run's three repetitions
    assert list(df["repetition"]) == [0, 1, 2] and df["cell_run_id"].nunique() == 1
    assert df["cell_run_id"].iloc[0] != first["run_id"]


def test_a_failing_cell_is_failed_with_its_error_and_the_next_still_runs(store, data,
                                                                         monkeypatch):
    real = repetitions.build_model

    def broken(name, *a, **k):
        if name == "rnn":
            raise RuntimeError("out of memory on purpose")
        return real(name, *a, **k)

    monkeypatch.setattr(repetitions, "build_model", broken)
    cells = [dataclasses.replace(CELLS[0], model="rnn", epochs=1), CELLS[1]]
    outcomes = run(store, data, cells=cells)
    assert [o.status for o in outcomes] == ["failed", "finished"]
    runs = cell_runs(store).set_index("tags.model")
    assert runs.loc["rnn", "status"] == "FAILED"
    assert "out of memory on purpose" in runs.loc["rnn", "tags.error"]
    reps = runs_of(store, "repetition")
    [rep] = [r for _, r in reps.iterrows()
             if r["tags.mlflow.parentRunId"] == runs.loc["rnn", "run_id"]]
    assert rep["status"] == "FAILED" and "out of memory" in rep["tags.error"]
    assert rep["tags.outcome"] if "tags.outcome" in rep and rep["tags.outcome"] else True
    monkeypatch.undo()
    # a crashed repetition is never taken as done: the next invocation trains it again, in
    # the same cell run (the rnn learns nothing in one epoch here, which is then its outcome)
    assert [o.status for o in run(store, data, cells=cells)] == ["failed", "skipped"]
    runs = cell_runs(store).set_index("tags.model")
    assert len(runs) == 2 and "out of memory" not in runs.loc["rnn", "tags.error"]
    df = load_results(store)
    assert list(df[df["model"] == "rnn"]["outcome"]) == ["did-not-learn"] * 2


def test_ctrl_c_ends_the_cell_killed_and_stops(store, data, monkeypatch):

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(repetitions, "fit", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run(store, data)
    runs = cell_runs(store)
    assert list(runs["status"]) == ["KILLED"]  # the second cell never started
    assert list(runs_of(store, "repetition")["status"]) == ["KILLED"]
    monkeypatch.undo()
    assert [o.status for o in run(store, data, cells=CELLS[:1])] == ["finished"]
    assert cell_runs(store).iloc[0]["status"] == "FINISHED"


class Constant(nn.Module):
    """A model that ignores its input: SGD can only learn the class prior, so it ends up
    predicting one class for every image, with a finite loss (a collapse, not a NaN)."""

    def __init__(self, num_classes: int = 10, in_shape=(3, 32, 32)):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(len(x), -1)  # (B, C): the same logits for every image


def test_a_collapsed_fit_is_caught_and_never_a_result(store, data, monkeypatch):
    monkeypatch.setitem(MODELS, "constant", Constant)
    cell = dataclasses.replace(CELLS[0], model="constant", lr=0.5, epochs=3)
    [outcome] = run(store, data, cells=[cell])
    assert outcome.status == "failed" and "none of 2 repetitions learned" in outcome.error
    reps = runs_of(store, "repetition")
    assert list(reps["status"]) == ["FAILED", "FAILED"]
    assert set(reps["tags.outcome"]) == {"did-not-learn"}
    assert all(r.startswith("collapsed: predicts class") for r in reps["tags.reason"])
    assert "metrics.final_test_acc" not in reps or reps["metrics.final_test_acc"].isna().all()
    [cell_run] = [r for _, r in cell_runs(store).iterrows()]
    assert cell_run["status"] == "FAILED" and "no repetition learned" in cell_run["tags.error"]
    assert cell_run["metrics.repetitions_ok"] == 0
    df = load_results(store)
    assert list(df["outcome"]) == ["did-not-learn"] * 2 and df["reason"].str.len().min() > 0
    # a collapse is an outcome, not a crash: a re-run does not train it again
    assert [o.status for o in run(store, data, cells=[cell])] == ["skipped"]


def test_a_collapsed_final_fit_falls_back_to_the_runner_up(store, data, monkeypatch):
    monkeypatch.setitem(MODELS, "constant", Constant)
    cell = dataclasses.replace(CELLS[0], seeds=1)
    ranked = [dataclasses.replace(cell, model="constant"), dataclasses.replace(cell, lr=0.05)]
    monkeypatch.setattr(runner, "tune_candidates", lambda *a, **k: ranked)
    assert [o.status for o in run(store, data, cells=[cell])] == ["finished"]
    rep = runs_of(store, "repetition").iloc[0]
    assert rep["tags.outcome"] == "ok" and rep["params.final_attempt"] == "2"
    assert "collapsed" in rep["tags.final_rejected_1"]


def test_the_results_table_round_trips_through_parquet(store, data, tmp_path):
    run(store, data)
    df = load_results(store)
    assert len(df) == 3 and list(df.columns[:3]) == ["model", "variant", "remedy"]
    row = df[(df["model"] == "cnn") & (df["repetition"] == 1)].iloc[0]
    assert row["seeds"] == 2 and row["epochs"] == 2 and row["lr"] == 0.05
    assert row["rep_seed"] == CELLS[0].repetition_seed(1) and row["outcome"] == "ok"
    assert row["status"] == "FINISHED" and 0 <= row["final_test_acc"] <= 1
    assert list(df.columns).count("tail_classes") == 1  # one column: the Cell field's
    assert row["tail_classes"] == "[0, 1, 2, 3, 4]" and row["classes"].startswith('["airplane"')
    # a cell run from before tail_classes was a field (no param) trained with the reference's
    assert results._typed("tail_classes", None) == "[0, 1, 2, 3, 4]"
    path = write_results(df, tmp_path / "out" / "results.parquet")
    back = pd.read_parquet(path)
    pd.testing.assert_frame_equal(back, df)


def test_cli_refuses_a_bad_grid_before_loading_any_data(tmp_path, monkeypatch, capsys):
    import benchmark.data as data_pkg

    monkeypatch.setattr(data_pkg, "load_dataset", lambda *a, **k: pytest.fail("data was read"))
    grid = tmp_path / "bad.toml"
    grid.write_text('[[cell]]\nmodel = "vgg16"\nvariant = "balanced"\nremedy = "none"\n'
                    'epochs = 1\n')
    assert main(["run", "--grid", str(grid), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
    err = capsys.readouterr().err
    assert str(grid) in err and "model 'vgg16'" in err
    assert not (tmp_path / "m.db").exists()


def test_cli_refuses_a_malformed_tracking_uri_before_reading_data(tmp_path, monkeypatch,
                                                                  capsys):
    import benchmark.data as data_pkg

    monkeypatch.setattr(data_pkg, "load_dataset", lambda *a, **k: pytest.fail("data was read"))
    code = main(["run", "--model", "cnn", "--no-tune", "--dataset", "fashion-mnist",
                 "--tracking-uri", "not-a-uri", "--storage", str(tmp_path / "optuna.journal")])
    assert code == 2 and "not-a-uri" in capsys.readouterr().err


def test_a_diverging_final_fit_falls_back_to_the_runner_up(store, data, monkeypatch):
    from benchmark.train import Diverged

    cell = dataclasses.replace(CELLS[0], seeds=1)
    ranked = [dataclasses.replace(cell, lr=99.0), dataclasses.replace(cell, lr=0.05)]
    monkeypatch.setattr(runner, "tune_candidates", lambda *a, **k: ranked)
    real_fit = repetitions.fit

    def fit(*args, lr, **kw):
        if lr == 99.0:
            raise Diverged(1, float("nan"))
        return real_fit(*args, lr=lr, **kw)

    monkeypatch.setattr(repetitions, "fit", fit)
    assert [o.status for o in run(store, data, cells=[cell])] == ["finished"]
    row = runs_of(store, "repetition").iloc[0]
    assert row["params.final_lr"] == "0.05" and row["params.final_attempt"] == "2"
    assert "lr 99" in row["tags.final_rejected_1"] and "diverged" in row["tags.final_rejected_1"]
    assert row["metrics.rejected_fit_seconds"] > 0  # the timeline counts it as training
    history = mlflow.MlflowClient(store.uri).get_metric_history(row["run_id"], "train_loss")
    assert [m.step for m in history] == [1, 2]  # only the fit that went through
    assert cell_runs(store).iloc[0]["metrics.repetitions_runner_up"] == 1
    assert list(load_results(store)["final_attempt"]) == [2]
