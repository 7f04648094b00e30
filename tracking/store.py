"""MLflow runs: one experiment per dataset and profile, a top-level run per cell (one row of
the runs table), and nested under it a run per repetition and per Optuna trial. The only
module that writes to MLflow."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import RunTag

from tracking import access
from tracking.access import NoSpace, TrackingError  # noqa: F401 - callers catch them
from tracking.runs import KIND, RunLog, ended_run, now_ms

DEFAULT_URI = "sqlite:///runs/mlflow.db"
# MLflow 3's UI opens an experiment on its GenAI (traces) pages unless told it trains models
KIND_TAG = {"mlflow.experimentKind": "custom_model_development"}


LAST_INVOCATION = "tailbench.last_invocation"  # experiment tags: the latest `tailbench run`
LAST_INVOCATION_MS = "tailbench.last_invocation_ms"  # ... and when it started


def tracking_uri(uri: str | None = None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Store:
    """An MLflow experiment on a tracking URI; checked for reachability when opened."""

    def __init__(self, uri: str | None, experiment: str, write: bool = True):
        """`write`: the command writes runs (checked now: a read-only or full store is refused
        before any data is read); else it only reads them."""
        self.uri = tracking_uri(uri)
        self.experiment_name = experiment
        access.check(self.uri, write)
        try:
            with access.first_open(self.uri):
                self.client = MlflowClient(tracking_uri=self.uri)
                self.experiment_id = self._experiment(experiment, write)
        except TrackingError:
            raise
        except Exception as e:  # sqlalchemy's, requests' and MLflow's own errors
            raise access.explain(self.uri, e) from None

    def local_folder(self) -> Path | None:
        """The folder of a local store's database and artifacts; None for a server's."""
        db = access.local_db(self.uri)
        return db.parent if db else None

    def _artifact_location(self) -> str | None:
        # keep a local store's artifacts next to its database, not in ./mlruns
        if self.uri.startswith("sqlite:///"):
            db = Path(self.uri.removeprefix("sqlite:///")).resolve()
            return (db.parent / "artifacts").as_uri()
        return None

    def _experiment(self, name: str, write: bool) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            return self.client.create_experiment(name, self._artifact_location(), tags=KIND_TAG)
        if exp.lifecycle_stage == "deleted":
            self.client.restore_experiment(exp.experiment_id)
        if write:  # written even when it is there: a store that takes no writes (read-only,
            # locked, a server's permissions) is found out now, before any data is read
            self.client.set_experiment_tag(exp.experiment_id, *next(iter(KIND_TAG.items())))
        return exp.experiment_id

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
        self.client.set_experiment_tag(self.experiment_id, LAST_INVOCATION_MS, str(now_ms()))

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

    def end_lost(self, run_ids: list[str], reason: str) -> int:
        """End runs that a dead worker left RUNNING as FAILED, with the reason; how many."""
        return RunLog(self.client, "", self.experiment_id).end_lost(run_ids, reason)

    @contextmanager
    def cell_run(self, name: str, tags: dict[str, object], reopen: str | None = None,
                 forget: tuple[str, ...] = ()) -> Iterator[RunLog]:
        """A cell's top-level run: the run `reopen` (an earlier invocation's run of the same
        cell, set RUNNING again to take more repetitions, its tags `forget` deleted before),
        or a new one. Ends FINISHED, or FAILED / KILLED as `ended_run` says, unless the body
        ends it itself."""
        tags = {k: str(v) for k, v in tags.items()}
        if reopen:
            run_id = reopen
            before = self.client.get_run(run_id).data.tags
            for key in forget:
                if key in before:
                    self.client.delete_tag(run_id, key)
            self.client.update_run(reopen, status="RUNNING")
            error = before.get("error")
            if error:  # why it stopped last time; the run goes on, so it is no longer its error
                tags["previous_error"] = error
                self.client.delete_tag(run_id, "error")
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        else:
            run_id = self.client.create_run(self.experiment_id, run_name=name,
                                            tags={KIND: "cell", **tags}).info.run_id
        with ended_run(RunLog(self.client, run_id, self.experiment_id)) as log:
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
    access.check(uri, write=False)
    try:
        with access.first_open(uri):
            exps = [e for e in MlflowClient(tracking_uri=uri).search_experiments(
                max_results=1000) if e.name.startswith("tailbench/")
                and LAST_INVOCATION_MS in e.tags]
    except Exception as e:  # a database that is not one, a server that is down
        raise access.explain(uri, e) from None
    if not exps:
        raise TrackingError(f"tracking store {uri} holds no tailbench run yet: run "
                            "`make benchmark` (or `tailbench run`) first, or pass --tracking-uri")
    return max(exps, key=lambda e: int(e.tags[LAST_INVOCATION_MS])).name


def tag_json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


