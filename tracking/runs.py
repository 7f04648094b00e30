"""One MLflow run, open: what a cell, a repetition or a trial records through (a
benchmark.recording.Recorder), and how it ends: FINISHED, FAILED with its error, KILLED on
Ctrl-C, and on a full disk FAILED with "no space left on ..." (the store's reserve given back
so that this can still be written)."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag

from benchmark.localfs import no_space
from tracking import access
from tracking.access import NoSpace
from tracking.models import log_model

KIND = "tailbench_kind"  # tag: "cell" (top level), "repetition" or "trial" (nested under it)
WRITE_EVERY = 5.0  # seconds: a run's params and metrics logged sooner after its last write wait
BATCH_PARAMS, BATCH_ENTITIES = 100, 1000  # what one MLflow log_batch takes at most
_clock = time.monotonic


def now_ms() -> int:
    return int(time.time() * 1000)


_WRITERS: dict[int, ThreadPoolExecutor] = {}  # per process: a forked worker makes its own


def _writer() -> ThreadPoolExecutor:
    """The process's one thread that writes params and metrics behind (one: in order)."""
    pid = os.getpid()
    if pid not in _WRITERS:
        _WRITERS[pid] = ThreadPoolExecutor(1, thread_name_prefix="tailbench-mlflow-writer")
    return _WRITERS[pid]


class RunLog:
    """One open MLflow run, addressed by id (safe to use from several threads); a
    benchmark.recording.Recorder.

    Params and metrics are written behind, and in batches: a run's writes that come within
    WRITE_EVERY seconds of its last one (or of its creation) wait to go with the next (a quick
    trial's epochs take under a second, its whole training a few: it goes in one or two writes;
    an epoch that takes longer still shows in the UI at once), and each batch is one `log_batch`
    in one background thread per process, in order, while training goes on. A store write costs
    about 5 ms of Python whatever it holds, taken from the thread that runs the training loop's
    Python. `flush` sends what waits, waits for it, and raises what failed. A run is flushed
    before it ends, so a FINISHED run holds all of its params and metrics, and a failed write (a
    full disk) fails the run, as a synchronous one did; a worker killed with SIGKILL loses those
    still waiting (its run is ended FAILED by the next `tailbench run`). Tags stay synchronous:
    they say what a run is (its cell key, its outcome), which other workers and re-runs look up
    at once; what waits goes with them. (MLflow's own `log_batch(synchronous=False)` was
    measured and not taken: ending a run shuts its queue down, which waits up to a second for
    the queue's thread.)"""

    def __init__(self, client: MlflowClient, run_id: str, experiment_id: str):
        self.client, self.run_id, self.experiment_id = client, run_id, experiment_id
        self.status: str | None = None  # set once this process ends the run
        self._pending: list[Future] = []  # the writes behind not yet waited for
        self._params: dict[str, Param] = {}  # logged, not yet sent: the next batch
        self._metrics: list[Metric] = []
        self._sent = _clock()  # of the last batch sent (its creation wrote the run)
        self._lock = threading.Lock()  # trials in threads share their cell's run

    def _write(self, params: list[Param] = (), metrics: list[Metric] = ()) -> None:
        with self._lock:
            if any(p.key in self._params for p in params):
                self._send()  # a param logged again goes in a batch of its own: MLflow judges it
            self._params |= {p.key: p for p in params}
            self._metrics += metrics
            if _clock() - self._sent >= WRITE_EVERY:
                self._send()

    def _send(self) -> None:
        """What waits, as batches of MLflow's size (100 params, 1000 entities a call); with
        the lock held."""
        params, metrics = list(self._params.values()), self._metrics
        if not params and not metrics:
            return
        self._params, self._metrics = {}, []
        self._sent = _clock()
        while params or metrics:
            room = BATCH_ENTITIES - len(params[:BATCH_PARAMS])
            self._pending.append(_writer().submit(
                self.client.log_batch, self.run_id, params=params[:BATCH_PARAMS],
                metrics=metrics[:room]))
            params, metrics = params[BATCH_PARAMS:], metrics[room:]

    def flush(self) -> None:
        """Send this run's waiting writes and wait for its writes behind; raise the first
        that failed, if one did."""
        with self._lock:
            self._send()
            pending, self._pending = self._pending, []
        for write in pending:
            write.result()

    def log_params(self, params: dict[str, object]) -> None:
        self._write(params=[Param(k, str(v)) for k, v in params.items()])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        """Every metric of one step in one call."""
        t = now_ms()
        self._write(metrics=[Metric(k, float(v), t, step) for k, v in metrics.items()])

    def log_curves(self, history: list[dict[str, float]]) -> None:
        """Per-epoch metrics (epoch i+1 = history[i]), in as few calls as MLflow allows."""
        t = now_ms()
        self._write(metrics=[Metric(k, float(v), t, epoch) for epoch, m in enumerate(history, 1)
                             for k, v in m.items()])

    def set_tags(self, tags: dict[str, object]) -> None:
        """At once, and with the run's params and metrics that wait when they fit in the same
        call (one store write instead of two: a trial's last tag and its last epochs)."""
        tags = [RunTag(k, str(v)) for k, v in tags.items()]
        params, metrics = [], []
        with self._lock:
            waiting = list(self._params.values())
            if len(waiting) <= BATCH_PARAMS and \
                    len(waiting) + len(self._metrics) + len(tags) <= BATCH_ENTITIES:
                params, metrics = waiting, self._metrics
                self._params, self._metrics, self._sent = {}, [], _clock()
        self.client.log_batch(self.run_id, params=params, metrics=metrics, tags=tags)

    def log_dataset(self, name: str, digest: str, path: str, context: str,
                    tags: dict[str, str] | None = None) -> None:
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource

        ds = MetaDataset(LocalArtifactDatasetSource(path or name), name=name, digest=digest[:36])
        in_tags = [InputTag("mlflow.data.context", context)]
        in_tags += [InputTag(k, v) for k, v in (tags or {}).items()]
        self.client.log_inputs(self.run_id, [DatasetInput(ds._to_mlflow_entity(), in_tags)])

    def log_artifacts(self, folder: Path, path: str | None = None) -> None:
        """Upload `folder`'s files, then check that the store holds each at its full size (a
        FINISHED run always has all of its artifacts)."""
        self.client.log_artifacts(self.run_id, str(folder), path)
        wrote = {str(Path(path or "", f.relative_to(folder))): f.stat().st_size
                 for f in Path(folder).rglob("*") if f.is_file()}
        held = {info.path: info.file_size  # the folders written to, each listed once
                for where in {str(Path(k).parent) for k in wrote}
                for info in self.client.list_artifacts(self.run_id, None if where == "." else where)
                if not info.is_dir}
        short = [f"{k} ({held.get(k, 0)} of {n} bytes)" for k, n in wrote.items()
                 if held.get(k) != n]
        if short:
            raise OSError(f"run {self.run_id}: the store holds artifacts short: "
                          + ", ".join(short[:5]))

    def log_files(self, write: Callable[[Path], object], path: str | None = None) -> None:
        """`write(folder)` into a temporary folder (gone once logged), then log_artifacts of
        what it wrote; nothing when it wrote nothing."""
        with tempfile.TemporaryDirectory() as tmp:
            write(Path(tmp))
            if any(Path(tmp).iterdir()):
                self.log_artifacts(Path(tmp), path)

    def log_model(self, model, example, tags: dict[str, object],
                  metrics: dict[str, float]) -> None:
        """The run's logged model (tracking/models.py), then `metrics` logged at step 0 of
        the run and linked to the model, in the run's next batch. The run's waiting metrics
        go in that batch too, after the model: MLflow links to a model it logs every step-0
        metric the run already holds, reading each metric's whole history to find them (29
        reads for a repetition, a fifth of its model's logging); a metric that carries the
        model's id is linked as it is written."""
        with self._lock:
            waiting, self._metrics = self._metrics, []
        self.flush()  # its params are in the store: the logged model copies them
        model_id = log_model(self.client, self.run_id, model, example, tags)
        t = now_ms()
        self._write(metrics=waiting + [Metric(k, float(v), t, 0, model_id=model_id)
                                       for k, v in metrics.items()])

    def end(self, status: str) -> None:
        """Flush, then end the run with `status`. A run whose writes failed does not end
        FINISHED (the failure is raised); FAILED or KILLED, it ends so anyway: it already
        stopped for a reason of its own."""
        try:
            self.flush()
        except Exception:
            if status == "FINISHED":
                raise
        self.client.set_terminated(self.run_id, status=status, end_time=now_ms())
        self.status = status

    def end_lost(self, run_ids: list[str], reason: str) -> int:
        """End runs that a dead worker left RUNNING as FAILED, with the reason; how many
        were still RUNNING (each is read again first)."""
        ended = 0
        for run_id in run_ids:
            if self.client.get_run(run_id).info.status == "RUNNING":
                lost = RunLog(self.client, run_id, self.experiment_id)
                lost.set_tags({"error": reason})
                lost.end("FAILED")
                ended += 1
        return ended

    @contextmanager
    def child(self, name: str, kind: str, tags: dict[str, object] | None = None
              ) -> Iterator[RunLog]:
        """A nested run that ends FINISHED, or FAILED with the error, or KILLED on Ctrl-C."""
        with self._lock:  # the parent goes quiet while its child works: what waits shows now
            self._send()
        run = self.client.create_run(self.experiment_id, run_name=name, tags={
            "mlflow.parentRunId": self.run_id, KIND: kind, **{k: str(v) for k, v in
                                                              (tags or {}).items()}})
        with ended_run(RunLog(self.client, run.info.run_id, self.experiment_id)) as log:
            yield log


@contextmanager
def ended_run(log: RunLog) -> Iterator[RunLog]:
    try:
        yield log
        log.flush()  # its writes have landed, or their failure is the run's, as below
    except KeyboardInterrupt:
        _end_anyway(log, "KILLED", "interrupted (Ctrl-C)")
        raise
    except BaseException as e:
        full = no_space(e) and not isinstance(e, NoSpace)
        if full:  # the reserve's space lets this run, and its parents, end FAILED
            access.release_reserve(log.client.tracking_uri)
            lines = str(e).strip().splitlines() or [""]
            first = next((line for line in lines if no_space(Exception(line))), lines[0])[:200]
            why = f"no space left on {access.where_full(log.client.tracking_uri, e)} " \
                  f"({type(e).__name__}: {first}); free some space, then run again"
        else:
            why = str(e) if isinstance(e, NoSpace) else f"{type(e).__name__}: {e}"
        if log.status is None:  # not already ended on purpose (a pruned trial is KILLED)
            _end_anyway(log, "FAILED", why)
        if full:
            raise NoSpace(why) from e
        raise
    else:
        if log.status is None:  # the body may end it itself (FAILED, with its reason)
            log.end("FINISHED")


def _end_anyway(log: RunLog, status: str, error: str) -> None:
    """End the run with its reason, unless the store itself fails now (gone, still full):
    then the error that got here is the one to report, and the next `tailbench run` ends
    the run FAILED (benchmark/app/safety.py)."""
    try:
        log.set_tags({"error": error[:4000]})
        log.end(status)
    except Exception:  # noqa: BLE001 - the original error is re-raised by the caller
        pass
