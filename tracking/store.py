"""MLflow runs: one experiment per dataset and profile, a top-level run per cell (one row of
the runs table), and nested under it a run per repetition and per Optuna trial. The only
module that writes to MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

from benchmark.errors import UserError  # noqa: E402
from tracking.models import log_model  # noqa: E402

DEFAULT_URI = "sqlite:///runs/mlflow.db"
KIND = "tailbench_kind"  # tag: "cell" (top level), "repetition" or "trial" (nested under it)
# MLflow 3's UI opens an experiment on its GenAI (traces) pages unless told it trains models
KIND_TAG = {"mlflow.experimentKind": "custom_model_development"}


LAST_INVOCATION = "tailbench.last_invocation"  # experiment tags: the latest `tailbench run`
LAST_INVOCATION_MS = "tailbench.last_invocation_ms"  # ... and when it started


class TrackingError(UserError, ValueError):
    """The tracking store cannot be used; the message says which and how to fix it."""


def tracking_uri(uri: str | None = None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _now() -> int:
    return int(time.time() * 1000)


class RunLog:
    """One open MLflow run, addressed by id (safe to use from several threads); a
    benchmark.recording.Recorder."""

    def __init__(self, client: MlflowClient, run_id: str, experiment_id: str):
        self.client, self.run_id, self.experiment_id = client, run_id, experiment_id
        self.status: str | None = None  # set once this process ends the run

    def log_params(self, params: dict[str, object]) -> None:
        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        """Every metric of one step in one call."""
        t = _now()
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), t, step)
                                                    for k, v in metrics.items()])

    def log_curves(self, history: list[dict[str, float]]) -> None:
        """Per-epoch metrics (epoch i+1 = history[i]) in as few calls as MLflow allows."""
        t = _now()
        metrics = [Metric(k, float(v), t, epoch) for epoch, m in enumerate(history, 1)
                   for k, v in m.items()]
        for start in range(0, len(metrics), 1000):  # MLflow takes 1000 metrics a batch
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])

    def set_tags(self, tags: dict[str, object]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_dataset(self, name: str, digest: str, path: str, context: str,
                    tags: dict[str, str] | None = None) -> None:
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource

        ds = MetaDataset(LocalArtifactDatasetSource(path or name), name=name, digest=digest[:36])
        in_tags = [InputTag("mlflow.data.context", context)]
        in_tags += [InputTag(k, v) for k, v in (tags or {}).items()]
        self.client.log_inputs(self.run_id, [DatasetInput(ds._to_mlflow_entity(), in_tags)])

    def log_artifacts(self, folder: Path, path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(folder), path)

    def log_model(self, model, example, tags: dict[str, object]) -> None:
        """The run's logged model (tracking/models.py), linked to its step-0 metrics."""
        log_model(self.client, self.run_id, model, example, tags)

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status, end_time=_now())
        self.status = status

    def end_lost(self, run_ids: list[str], reason: str) -> None:
        """End runs that a dead worker left RUNNING as FAILED, with the reason."""
        for run_id in run_ids:
            if self.client.get_run(run_id).info.status == "RUNNING":
                RunLog(self.client, run_id, self.experiment_id).set_tags({"error": reason})
                self.client.set_terminated(run_id, status="FAILED", end_time=_now())

    @contextmanager
    def child(self, name: str, kind: str, tags: dict[str, object] | None = None
              ) -> Iterator[RunLog]:
        """A nested run that ends FINISHED, or FAILED with the error, or KILLED on Ctrl-C."""
        run = self.client.create_run(self.experiment_id, run_name=name, tags={
            "mlflow.parentRunId": self.run_id, KIND: kind, **{k: str(v) for k, v in
                                                              (tags or {}).items()}})
        with _ended(RunLog(self.client, run.info.run_id, self.experiment_id)) as log:
            yield log


@contextmanager
def _ended(log: RunLog) -> Iterator[RunLog]:
    try:
        yield log
    except KeyboardInterrupt:
        log.set_tags({"error": "interrupted (Ctrl-C)"})
        log.end("KILLED")
        raise
    except BaseException as e:
        if log.status is None:  # not already ended on purpose (a pruned trial is KILLED)
            log.set_tags({"error": f"{type(e).__name__}: {e}"[:4000]})
            log.end("FAILED")
        raise
    else:
        if log.status is None:  # the body may end it itself (FAILED, with its reason)
            log.end("FINISHED")


class Store:
    """An MLflow experiment on a tracking URI; checked for reachability when opened."""

    def __init__(self, uri: str | None, experiment: str):
        self.uri = tracking_uri(uri)
        self._prepare_local(self.uri)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment_name = experiment
        self.experiment_id = self._experiment(experiment)

    @staticmethod
    def _prepare_local(uri: str) -> None:
        if uri.startswith("sqlite:///"):
            db = Path(uri.removeprefix("sqlite:///"))
            try:
                db.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise TrackingError(
                    f"tracking store {uri}: cannot create {db.parent} ({e})") from None
        elif "://" not in uri:
            raise TrackingError(f"tracking URI {uri!r} is not a URI: use sqlite:///path/mlflow.db, "
                                "http://host:5000 or postgresql://user@host/db")

    def _artifact_location(self) -> str | None:
        # keep a local store's artifacts next to its database, not in ./mlruns
        if self.uri.startswith("sqlite:///"):
            db = Path(self.uri.removeprefix("sqlite:///")).resolve()
            return (db.parent / "artifacts").as_uri()
        return None

    def _experiment(self, name: str) -> str:
        try:
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                return self.client.create_experiment(name, self._artifact_location(), tags=KIND_TAG)
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            if exp.tags.get("mlflow.experimentKind") != KIND_TAG["mlflow.experimentKind"]:
                self.client.set_experiment_tag(exp.experiment_id, *next(iter(KIND_TAG.items())))
            return exp.experiment_id
        except MlflowException as e:
            raise TrackingError(f"tracking store {self.uri} cannot be used: {e.message}. "
                                "Check the URI, that the server is up and the credentials "
                                "(MLFLOW_TRACKING_USERNAME/PASSWORD in the environment).") from None
        except Exception as e:  # connection errors come through requests/sqlalchemy
            raise TrackingError(f"tracking store {self.uri} cannot be reached: "
                                f"{type(e).__name__}: {e}") from None

    def search(self, filter_string: str, order_by: list[str] | None = None) -> list:
        """Every run of the experiment that matches, all pages."""
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string,
                                           max_results=1000, order_by=order_by,
                                           page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def start_invocation(self, invocation: str) -> None:
        """Mark `invocation` as the experiment's latest: the report shows its cells."""
        self.client.set_experiment_tag(self.experiment_id, LAST_INVOCATION, invocation)
        self.client.set_experiment_tag(self.experiment_id, LAST_INVOCATION_MS, str(_now()))

    def invocation(self, invocation: str | None = None) -> str | None:
        """The id asked for, or the experiment's latest invocation (None before any run)."""
        if invocation:
            return invocation
        exp = self.client.get_experiment(self.experiment_id)
        return exp.tags.get(LAST_INVOCATION)

    def latest_cell_run(self, key: str):
        """The newest top-level run of the cell with this key, whatever its status, or None:
        the run a re-run adds its missing repetitions to."""
        runs = self.client.search_runs(
            [self.experiment_id], f"tags.{KIND} = 'cell' and tags.cell_key = '{key}'",
            max_results=1, order_by=["attributes.start_time DESC"])
        return runs[0] if runs else None

    def children(self, run_id: str, kind: str) -> list:
        """The runs of one kind nested under a run (repetitions or trials of a cell)."""
        return self.search(f"tags.{KIND} = '{kind}' and tags.mlflow.parentRunId = '{run_id}'")

    def run_log(self, run_id: str) -> RunLog:
        """An existing run (another worker's cell run, to nest trials under)."""
        return RunLog(self.client, run_id, self.experiment_id)

    def end_lost(self, run_ids: list[str], reason: str) -> None:
        """End runs that a dead worker left RUNNING as FAILED, with the reason."""
        RunLog(self.client, "", self.experiment_id).end_lost(run_ids, reason)

    @contextmanager
    def cell_run(self, name: str, tags: dict[str, object], reopen: str | None = None
                 ) -> Iterator[RunLog]:
        """A cell's top-level run: the run `reopen` (an earlier invocation's run of the same
        cell, set RUNNING again to take more repetitions), or a new one. Ends FINISHED, or
        FAILED / KILLED as `_ended` says, unless the body ends it itself."""
        tags = {k: str(v) for k, v in tags.items()}
        if reopen:
            self.client.update_run(reopen, status="RUNNING")
            run_id = reopen
            error = self.client.get_run(run_id).data.tags.get("error")
            if error:  # why it stopped last time; the run goes on, so it is no longer its error
                tags["previous_error"] = error
                self.client.delete_tag(run_id, "error")
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        else:
            run_id = self.client.create_run(self.experiment_id, run_name=name,
                                            tags={KIND: "cell", **tags}).info.run_id
        with _ended(RunLog(self.client, run_id, self.experiment_id)) as log:
            yield log

    def metric_histories(self, run_id: str, keys: list[str]) -> list[dict[str, float]]:
        """A run's per-epoch curves back as fit's history: [{key: value} for each epoch]."""
        epochs: dict[int, dict[str, float]] = {}
        for key in keys:
            for m in self.client.get_metric_history(run_id, key):
                epochs.setdefault(m.step, {})[key] = m.value
        return [epochs[step] for step in sorted(epochs)]


def latest_experiment(uri: str | None) -> str:
    """The name of the tailbench experiment that the latest `tailbench run` on this tracking
    store wrote to (the report's default)."""
    uri = tracking_uri(uri)
    Store._prepare_local(uri)
    try:
        exps = [e for e in MlflowClient(tracking_uri=uri).search_experiments(max_results=1000)
                if e.name.startswith("tailbench/") and LAST_INVOCATION_MS in e.tags]
    except Exception as e:  # a database that is not one, a server that is down
        raise TrackingError(f"tracking store {uri} cannot be read: "
                            f"{type(e).__name__}: {e}") from None
    if not exps:
        raise TrackingError(f"tracking store {uri} holds no tailbench run yet: run "
                            "`make benchmark` (or `tailbench run`) first, or pass --tracking-uri")
    return max(exps, key=lambda e: int(e.tags[LAST_INVOCATION_MS])).name


def tag_json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


