"""What the core, the studies and the runner need of a run that records: the Recorder
protocol. tracking.store.RunLog implements it on MLflow; NullRunLog, here, records nothing
(`make perf` times a cell without tracking). The core and `studies` type against this
protocol and never import a tracking library."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch
    from torch import nn


class Recorder(Protocol):
    run_id: str

    def log_params(self, params: dict[str, object]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None: ...

    def log_curves(self, history: list[dict[str, float]]) -> None: ...

    def set_tags(self, tags: dict[str, object]) -> None: ...

    def log_dataset(self, name: str, digest: str, path: str, context: str,
                    tags: dict[str, str] | None = None) -> None: ...

    def log_artifacts(self, folder: Path, path: str | None = None) -> None: ...

    def log_files(self, write: Callable[[Path], object], path: str | None = None) -> None:
        """`write(folder)` into an empty temporary folder, then what it wrote logged as by
        log_artifacts. A recorder that keeps no files does not call `write`: figures that
        nobody keeps are not drawn (they are recording's cost, not the computation's)."""
        ...

    def log_model(self, model: nn.Module, example: torch.Tensor, tags: dict[str, object],
                  metrics: dict[str, float]) -> None:
        """The run's model (fed `example`), then `metrics` logged at step 0 of the run and
        linked to the model: the numbers it is judged by."""
        ...

    def flush(self) -> None:
        """Wait until what was logged so far is in the store (writes may be asynchronous);
        raise what failed. Ending a run flushes it."""
        ...

    def end(self, status: str) -> None: ...

    def end_lost(self, run_ids: list[str], reason: str) -> None: ...

    def child(self, name: str, kind: str, tags: dict[str, object] | None = None
              ) -> AbstractContextManager[Recorder]:
        """A nested run, ended FINISHED, FAILED (with the error) or KILLED (Ctrl-C)."""
        ...


class NullRunLog:
    """A Recorder that records nothing, and draws no figure: the same cell without tracking,
    for `make perf`."""

    run_id = "untracked"

    def log_params(self, params: dict[str, object]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        pass

    def log_curves(self, history: list[dict[str, float]]) -> None:
        pass

    def set_tags(self, tags: dict[str, object]) -> None:
        pass

    def log_dataset(self, name: str, digest: str, path: str, context: str,
                    tags: dict[str, str] | None = None) -> None:
        pass

    def log_artifacts(self, folder: Path, path: str | None = None) -> None:
        pass

    def log_files(self, write: Callable[[Path], object], path: str | None = None) -> None:
        pass  # nothing kept, so nothing written

    def log_model(self, model: nn.Module, example: torch.Tensor, tags: dict[str, object],
                  metrics: dict[str, float]) -> None:
        pass

    def flush(self) -> None:
        pass

    def end(self, status: str) -> None:
        pass

    def end_lost(self, run_ids: list[str], reason: str) -> None:
        pass

    @contextmanager
    def child(self, name: str, kind: str, tags: dict | None = None) -> Iterator[NullRunLog]:
        yield NullRunLog()
