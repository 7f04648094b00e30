"""Each repetition's model as an MLflow 3 logged model: loaded back in a fresh Python process
that imports nothing of tailbench, by MLflow's own loaders, it scores the logged test
accuracy exactly; `tailbench register` puts it in the model registry."""

import json
import os
import subprocess
import sys

import mlflow
import numpy as np
import pytest
import torch
from conftest import learnable_dataset

from benchmark.app import runner
from benchmark.app.cli import main
from benchmark.cells import Cell, GridEntry
from studies import TuneOptions
from tracking.models import registered_name
from tracking.store import Store

CELL = Cell("cnn", "long-tail", "none", epochs=2, batch_size=8, lr=0.05, dataset="synthetic",
            profile="quick", imbalance_ratio=5, seeds=2)

# no tailbench on the path: only MLflow, torch and numpy, as a user elsewhere would have
LOAD = """
import json, sys
import mlflow, numpy as np, torch
assert not any(m.split('.')[0] in ('benchmark', 'studies', 'tracking') for m in sys.modules)
uri, model, x, y = sys.argv[1:5]
mlflow.set_tracking_uri(uri)
x, y = np.load(x), np.load(y)
net = mlflow.pytorch.load_model(model)
with torch.inference_mode():
    pred = net(torch.from_numpy(x)).argmax(1).numpy()
pyfunc = mlflow.pyfunc.load_model(model).predict(x).argmax(1)
print(json.dumps({"acc": float((pred == y).mean()), "same": bool((pyfunc == pred).all()),
                  "tailbench": [m for m in sys.modules if m.split('.')[0] == 'benchmark']}))
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("logged")
    data = learnable_dataset(250, 60, seed=1, digest="ab" * 32, path="/tmp/synthetic")
    store = Store(f"sqlite:///{folder}/mlflow.db", "tailbench/synthetic/quick")
    before = os.environ.get("MLFLOW_TRACKING_URI")
    runner.run_grid([GridEntry(CELL, {})], data, store, device=torch.device("cpu"),
                    tuning=TuneOptions(folder / "optuna.journal"))
    # logging the models set the process's tracking URI for MLflow's fluent calls, and put
    # it back: a later store lookup of the process (make perf's grid rows did) is not led here
    assert os.environ.get("MLFLOW_TRACKING_URI") == before
    test = runner.cut(CELL, data)  # the cell's test images, the same for every repetition
    np.save(folder / "x.npy", test.test_x.numpy())
    np.save(folder / "y.npy", test.test_y.numpy())
    return store, folder


def load_elsewhere(store, folder, model_uri: str) -> dict:
    out = subprocess.run([sys.executable, "-c", LOAD, store.uri, model_uri,
                          str(folder / "x.npy"), str(folder / "y.npy")],
                         capture_output=True, text=True, cwd=folder, timeout=300,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(folder)})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def repetitions(store):
    mlflow.set_tracking_uri(store.uri)
    return store.search("tags.tailbench_kind = 'repetition'")


def test_each_repetition_logs_a_model_linked_to_its_test_metrics(trained):
    store, _ = trained
    reps = repetitions(store)
    assert len(reps) == 2
    for rep in reps:
        (output,) = rep.outputs.model_outputs
        model = store.client.get_logged_model(output.model_id)
        assert model.source_run_id == rep.info.run_id and model.name == "model"
        # in the run's experiment: the runs table's Models column and the Models tab list it
        assert model.experiment_id == store.experiment_id
        assert str(model.status) .endswith("READY")
        linked = {m.key: m.value for m in model.metrics}
        assert linked["final_test_acc"] == rep.data.metrics["final_test_acc"]
        # its test metrics, each once, at step 0; not the curves (epochs 1..N)
        assert {"final_train_acc", "final_test_loss", "balanced_acc", "tail_acc", "ece"} \
            <= set(linked) and "test_loss" not in linked
        assert len(model.metrics) == len(linked) and {m.step for m in model.metrics} == {0}
        assert all(rep.data.metrics[k] == v for k, v in linked.items())
        assert model.tags["cell_key"] == CELL.key
        info = mlflow.models.get_model_info(f"models:/{output.model_id}")
        assert info.signature.inputs.to_dict()[0]["tensor-spec"]["dtype"] == "uint8"
        files = {f.path for f in mlflow.artifacts.list_artifacts(
            artifact_uri=f"{model.artifact_location}/data")}
        assert files == {"data/model.pt2"}, files  # exported by torch.export: no pickle


def test_a_fresh_process_without_tailbench_reproduces_the_logged_test_accuracy(trained):
    store, folder = trained
    for rep in repetitions(store):
        got = load_elsewhere(store, folder, f"models:/{rep.outputs.model_outputs[0].model_id}")
        assert got["acc"] == rep.data.metrics["final_test_acc"]  # exactly, not approximately
        assert got["same"] and got["tailbench"] == []


def test_register_puts_a_cells_model_in_the_registry(trained, capsys):
    store, folder = trained
    args = ["register", CELL.name, "--tracking-uri", store.uri, "--repetition", "1"]
    assert main(args) == 0
    name = registered_name(CELL.name)
    assert name == "tailbench-cnn-long-tail-none"
    assert f"registered {name} version 1" in capsys.readouterr().err
    version = store.client.get_model_version(name, "1")
    rep = next(r for r in repetitions(store) if r.data.tags["repetition"] == "1")
    assert version.tags["cell_key"] == CELL.key and version.tags["repetition"] == "1"
    assert float(version.tags["final_test_acc"]) == pytest.approx(
        rep.data.metrics["final_test_acc"], abs=1e-4)
    got = load_elsewhere(store, folder, f"models:/{name}/1")
    assert got["acc"] == rep.data.metrics["final_test_acc"]
    assert main(["register", "nope · none · none", "--tracking-uri", store.uri]) == 2
    assert "has no cell 'nope · none · none'" in capsys.readouterr().err
