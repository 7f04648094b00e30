"""A run's params and metrics are written behind, in a background thread
(tracking.runs.RunLog), and still a FINISHED run holds all of them, and a write that failed
fails the run. A real SQLite store."""

import pytest
from mlflow.exceptions import MlflowException

from tracking.store import Store


@pytest.fixture
def store(tmp_path):
    return Store(f"sqlite:///{tmp_path}/mlflow.db", "tailbench/x/runlog")


def test_a_finished_run_holds_every_async_write(store):
    with store.cell_run("cell", {}) as run:
        run.log_params({"lr": 0.1})
        for epoch in range(1, 21):
            run.log_metrics({"train_loss": 1 / epoch, "test_acc": epoch / 20}, step=epoch)
        run.log_curves([{"curve": float(i)} for i in range(5)])
        run_id = run.run_id
    got = store.client.get_run(run_id)
    assert got.info.status == "FINISHED" and got.data.params == {"lr": "0.1"}
    assert [m.step for m in store.client.get_metric_history(run_id, "train_loss")] == \
        list(range(1, 21))
    assert [m.value for m in store.client.get_metric_history(run_id, "curve")] == \
        [0.0, 1.0, 2.0, 3.0, 4.0]


def test_a_failed_async_write_fails_the_run_with_its_error(store):
    """MLflow refuses a param changed after it was logged; written behind, the
    refusal comes back when the run is flushed, and the run ends FAILED with it, not
    FINISHED without the value."""
    with pytest.raises(MlflowException, match="Changing param values is not allowed"):
        with store.cell_run("cell", {}) as run:
            run.log_params({"lr": 0.1})
            run.log_params({"lr": 0.2})
            run_id = run.run_id
    got = store.client.get_run(run_id)
    assert got.info.status == "FAILED"
    assert "lr" in got.data.tags["error"] and got.data.params == {"lr": "0.1"}


def test_a_run_ended_failed_ends_so_even_when_a_write_failed(store):
    with store.cell_run("cell", {}) as run:
        run.log_params({"lr": 0.1})
        run.log_params({"lr": 0.2})
        run.end("FAILED")  # the body's own ending, as a repetition that did not learn
    assert store.client.get_run(run.run_id).info.status == "FAILED"


def test_writes_close_together_go_as_one_batch_and_a_late_one_at_once(store, monkeypatch):
    """A trial's epochs come a fraction of a second apart: they wait and go together (a store
    write costs ~5 ms of Python whatever it holds); a write WRITE_EVERY seconds after the last
    goes at once, so a long epoch still shows while the run trains."""
    from tracking import runs

    batches = []
    real = store.client.log_batch
    monkeypatch.setattr(store.client, "log_batch",
                        lambda run_id, **kw: (batches.append(kw), real(run_id, **kw))[1])
    clock = [100.0]
    monkeypatch.setattr(runs, "_clock", lambda: clock[0])
    with store.cell_run("cell", {}) as run:
        run.log_params({"lr": 0.1})  # waits: the run was created just now
        for epoch in range(1, 6):
            clock[0] += runs.WRITE_EVERY / 4
            run.log_metrics({"train_loss": 1 / epoch}, step=epoch)
        # epochs 1-3 waited; epoch 4 came WRITE_EVERY after the run's creation: all went
        clock[0] += runs.WRITE_EVERY
        run.log_metrics({"train_loss": 0.1}, step=6)  # late: at once, with epoch 5
        run_id = run.run_id
    sent = [([p.key for p in b["params"]], [m.step for m in b["metrics"]]) for b in batches]
    assert sent == [(["lr"], [1, 2, 3, 4]), ([], [5, 6])]
    assert [m.step for m in store.client.get_metric_history(run_id, "train_loss")] == \
        [1, 2, 3, 4, 5, 6]


def test_a_tag_takes_the_waiting_params_and_metrics_along_in_one_write(store, monkeypatch):
    """A trial ends with its value and its state tag: one store write, not a tag's and then
    the flush's; what went with the tag is in the FINISHED run."""
    from tracking import runs

    batches = []
    real = store.client.log_batch
    monkeypatch.setattr(store.client, "log_batch",
                        lambda run_id, **kw: (batches.append(kw), real(run_id, **kw))[1])
    monkeypatch.setattr(runs, "_clock", lambda: 100.0)  # nothing is due: it all waits
    with store.cell_run("cell", {}) as run:
        run.log_params({"lr": 0.1})
        run.log_metrics({"value": 0.5})
        run.set_tags({"state": "COMPLETE"})
        run_id = run.run_id
    sent = [([p.key for p in b["params"]], [m.key for m in b["metrics"]],
             [t.key for t in b["tags"]]) for b in batches]
    assert sent == [(["lr"], ["value"], ["state"])]
    got = store.client.get_run(run_id)
    assert got.info.status == "FINISHED" and got.data.params == {"lr": "0.1"}
    assert got.data.metrics == {"value": 0.5} and got.data.tags["state"] == "COMPLETE"


def test_an_artifact_the_store_holds_short_fails_the_run(store, tmp_path, monkeypatch):
    """log_artifacts checks what the store holds against what was written (a copy cut short
    by a full disk): files in two folders land whole; one cut short fails the run, named."""
    from pathlib import Path

    from mlflow import MlflowClient

    def write(folder: Path) -> None:
        (folder / "figures").mkdir()
        (folder / "figures" / "a.svg").write_text("<svg/>" * 100)
        (folder / "reports").mkdir()
        (folder / "reports" / "b.txt").write_text("b" * 300)

    with store.cell_run("cell", {}) as run:
        run.log_files(write)
        whole = run.run_id
    assert {a.path for a in store.client.list_artifacts(whole, "figures")} == {"figures/a.svg"}

    upload = MlflowClient.log_artifacts

    def cut_short(self, run_id, local_dir, artifact_path=None):
        upload(self, run_id, local_dir, artifact_path)
        root = Path(self.get_run(run_id).info.artifact_uri.removeprefix("file://"))
        (root / "reports" / "b.txt").write_text("b" * 10)  # what a full disk leaves

    monkeypatch.setattr(MlflowClient, "log_artifacts", cut_short)
    with pytest.raises(OSError, match=r"holds artifacts short: reports/b\.txt \(10 of 300"):
        with store.cell_run("cell", {}) as run:
            short = run.run_id
            run.log_files(write)
    assert store.client.get_run(short).info.status == "FAILED"
    assert store.client.get_run(whole).info.status == "FINISHED"
