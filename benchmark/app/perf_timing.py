"""The timing machinery of `make perf`: a Row per comparison, the Context every comparison
gets, and `alternate`, which runs two contenders A, B, A, B, ... in one process."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from benchmark.data import Dataset


@dataclass
class Row:
    measure: str
    unit: str  # of the tailbench and baseline columns
    tailbench: float
    baseline: float
    ratio: float  # tailbench / baseline
    target: float | None = None  # the least acceptable ratio, None where there is none
    percent: bool = False  # show the ratio as a share (of a limit) rather than a speedup
    note: str = ""
    runs: list[tuple[float, float]] = field(default_factory=list)  # (tailbench, baseline) a round

    upper: bool = False  # the target is a most (an overhead), not a least (a speedup)

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        return self.ratio <= self.target if self.upper else self.ratio >= self.target

    def to_dict(self) -> dict:
        return asdict(self) | {"met": self.met}


@dataclass
class Context:
    """What every comparison needs: where to run, how long, on which images."""

    device: torch.device
    data: Dataset  # uint8 images on the CPU; each contender moves what it needs
    sizes: dict[str, int]
    reps: int
    workers: int = 2  # the tutorial DataLoader's worker processes
    seed: int = 0
    tracking_uri: str | None = None  # the store of the benchmark whose time shares to show
    cache: dict[str, list[float]] = field(default_factory=dict)  # per-round rates, for reuse


Comparison = Callable[[Context], "Row | list[Row]"]  # one row, or a few side by side


def alternate(*fns: Callable[[], object], reps: int, device: torch.device,
              warmup: int = 1) -> list[list[float]]:
    """Seconds per call of each fn, called a, b, then b, a, and so on (a drift of the machine
    over the rounds, or a cost one call leaves to the next, falls on both alike); the warm-up
    rounds are not kept."""
    sync = {"cuda": torch.cuda.synchronize, "mps": torch.mps.synchronize}.get(device.type,
                                                                              lambda: None)
    times: list[list[float]] = [[] for _ in fns]
    for i in range(warmup + reps):
        pairs = list(zip(fns, times, strict=True))
        for fn, kept in pairs if i % 2 == 0 else reversed(pairs):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            if i >= warmup:
                kept.append(time.perf_counter() - start)
    return times


def paired(measure: str, unit: str, a: list[float], b: list[float], **kw) -> Row:
    """The row of two alternated series: their medians, their ratio, and every round."""
    ma, mb = statistics.median(a), statistics.median(b)
    return Row(measure, unit, ma, mb, ma / mb, runs=list(zip(a, b, strict=True)), **kw)
