"""The grid runner against a real MLflow SQLite store: one run per cell, skip, force, FAILED,
KILLED, and bad input refused before anything is trained."""

import json

import mlflow
import pytest
import torch
from conftest import CIFAR_CLASSES, learnable_images

from benchmark import runner
from benchmark.cells import Cell, GridEntry
from benchmark.cli import main
from benchmark.data import Dataset
from tracking.store import Store

CELLS = [Cell("cnn", "long-tail", "none", epochs=2, batch_size=64, lr=0.05, dataset="synthetic",
              profile="quick", tail_fraction=0.2),
         Cell("rnn", "long-tail", "flip+noise", epochs=1, batch_size=64, lr=0.05,
              dataset="synthetic", profile="quick", tail_fraction=0.2)]


@pytest.fixture(scope="module")
def data():
    x, y = learnable_images(250, seed=1)
    tx, ty = learnable_images(60, seed=2)
    return Dataset(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(tx),
                   torch.from_numpy(ty), CIFAR_CLASSES, "synthetic", "ab" * 32, "/tmp/synthetic")


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """One SQLite file for the module (creating its tables takes seconds), an experiment a test."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


@pytest.fixture
def store(db, request):
    return Store(db, f"tailbench/synthetic/{request.node.name}")


def run(store, data, cells=CELLS, **kw):
    journal = store.uri.removeprefix("sqlite:///").replace("mlflow.db", "optuna.journal")
    return runner.run_grid([GridEntry(c, {}) for c in cells], data, store,
                           device=torch.device("cpu"), tuning={"storage": journal}, **kw)


def cell_runs(store):
    mlflow.set_tracking_uri(store.uri)
    return mlflow.search_runs(experiment_names=[store.experiment_name],
                              filter_string="tags.tailbench_kind = 'cell'")


def test_two_cells_are_two_nested_runs_with_params_tags_curves_and_artifacts(store, data):
    outcomes = run(store, data)
    assert [o.status for o in outcomes] == ["finished", "finished"]
    runs = cell_runs(store)
    assert len(runs) == 2 and set(runs["status"]) == {"FINISHED"}
    parents = mlflow.search_runs(experiment_names=[store.experiment_name],
                                 filter_string="tags.tailbench_kind = 'invocation'")
    assert len(parents) == 1
    assert set(runs["tags.mlflow.parentRunId"]) == {parents["run_id"][0]}
    cnn = runs[runs["tags.model"] == "cnn"].iloc[0]
    assert cnn["tags.cell_key"] == CELLS[0].key and cnn["params.epochs"] == "2"
    assert cnn["tags.variant"] == "long-tail" and cnn["tags.dataset"] == "synthetic"
    assert json.loads(cnn["tags.class_counts"])["airplane"] == 5  # 25 cut to 20%
    for key in ("final_train_acc", "final_test_acc", "head_acc", "tail_acc", "balanced_acc",
                "macro_f1", "acc_airplane"):
        assert 0 <= cnn[f"metrics.{key}"] <= 1, key
    client = mlflow.MlflowClient(store.uri)
    curve = client.get_metric_history(cnn["run_id"], "test_acc")
    assert [m.step for m in curve] == [1, 2]
    full = client.get_run(cnn["run_id"])
    assert full.inputs.dataset_inputs[0].dataset.digest == ("ab" * 32)[:36]
    files = {a.path for a in client.list_artifacts(cnn["run_id"])}
    assert {"model", "figures", "reports"} <= files
    weights = client.list_artifacts(cnn["run_id"], "model")
    assert [a.path for a in weights] == ["model/state_dict.pt"] and weights[0].file_size > 1000
    flip = runs[runs["tags.augment"] == "flip+noise"].iloc[0]
    assert "adds" in flip["tags.augment_note"]


def test_rerun_skips_finished_cells_and_force_reruns(store, data, monkeypatch):
    run(store, data)
    trained = []
    monkeypatch.setattr(runner, "fit", lambda *a, **k: trained.append(1) or [])
    outcomes = run(store, data)
    assert [o.status for o in outcomes] == ["skipped", "skipped"] and not trained
    assert outcomes[0].metrics["final_test_acc"] > 0  # shown from the finished run
    monkeypatch.undo()
    outcomes = run(store, data, cells=CELLS[:1], force=True)
    assert [o.status for o in outcomes] == ["finished"]
    assert len(cell_runs(store)) == 3


def test_a_failing_cell_is_failed_with_its_error_and_the_next_still_runs(store, data,
                                                                         monkeypatch):
    real = runner.build_model

    def broken(name, *a, **k):
        if name == "cnn":
            raise RuntimeError("out of memory on purpose")
        return real(name, *a, **k)

    monkeypatch.setattr(runner, "build_model", broken)
    outcomes = run(store, data)
    assert [o.status for o in outcomes] == ["failed", "finished"]
    runs = cell_runs(store).set_index("tags.model")
    assert runs.loc["cnn", "status"] == "FAILED"
    assert "out of memory on purpose" in runs.loc["cnn", "tags.error"]
    monkeypatch.undo()
    # a failed run is never taken as done: the next invocation trains it
    assert [o.status for o in run(store, data)] == ["finished", "skipped"]


def test_ctrl_c_ends_the_cell_killed_and_stops(store, data, monkeypatch):

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "fit", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run(store, data)
    runs = cell_runs(store)
    assert list(runs["status"]) == ["KILLED"]  # the second cell never started
    monkeypatch.undo()
    assert [o.status for o in run(store, data, cells=CELLS[:1])] == ["finished"]


def test_cli_refuses_a_bad_grid_before_loading_any_data(tmp_path, monkeypatch, capsys):
    import benchmark.data as data_pkg

    monkeypatch.setattr(data_pkg, "load_dataset", lambda *a, **k: pytest.fail("data was read"))
    grid = tmp_path / "bad.toml"
    grid.write_text('[[cell]]\nmodel = "vgg16"\nvariant = "balanced"\naugment = "none"\n'
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
    import dataclasses

    from benchmark.train import Diverged

    cell = CELLS[0]
    ranked = [dataclasses.replace(cell, lr=99.0), dataclasses.replace(cell, lr=0.05)]
    monkeypatch.setattr(runner, "_tune", lambda *a, **k: ranked)
    real_fit = runner.fit

    def fit(*args, lr, **kw):
        if lr == 99.0:
            raise Diverged(1, float("nan"))
        return real_fit(*args, lr=lr, **kw)

    monkeypatch.setattr(runner, "fit", fit)
    assert [o.status for o in run(store, data, cells=[cell])] == ["finished"]
    row = cell_runs(store).iloc[0]
    assert row["params.final_lr"] == "0.05" and row["params.final_attempt"] == "2"
    assert "lr 99" in row["tags.final_diverged_1"]
    history = mlflow.MlflowClient(store.uri).get_metric_history(row["run_id"], "train_loss")
    assert [m.step for m in history] == [1, 2]  # only the fit that went through
