"""`make perf` items 4 and 5: whole cells, timed through the runner.

4. Tracking overhead: a quick cell (the quick profile's cnn long-tail cell, its study
   included) with MLflow tracking (a real SQLite store) and without it (a Recorder that
   records nothing and draws no figure), alternated in one process, each at the torch
   threads of one of `make benchmark`'s workers; the difference in the CPU seconds they
   spend outside training is what recording costs (params, metrics, figures, reports, the
   logged models, the statistics and figures over repetitions and of the study), as a
   share of the tracked cell's wall time.
5. Pruning saving: the epochs a pruned Optuna study trains, against its trials run to the end.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch

from benchmark.app.launchers import auto_threads
from benchmark.app.perf_timing import Context, Row, alternate
from benchmark.app.repetitions import cut, summarize_cell
from benchmark.app.runner import _record_cell, run_cell, settle_heap
from benchmark.cells import Cell, expand
from benchmark.recording import NullRunLog, Recorder
from benchmark.train import fit_cpu_seconds
from studies import TuneOptions, tune_cell
from tracking.store import Store

TRACKING_TARGET = 0.03  # recording may take at most 3% of a quick cell's wall time


def _cell(ctx: Context, epochs: int, train_limit: int, trials: int = 0) -> Cell:
    """A cnn cell of the quick profile (fewer epochs, to keep `make perf` short)."""
    small = ctx.sizes["batch"] < 256  # --quick
    return Cell("cnn", "long-tail", "none", epochs=1 if small else epochs, batch_size=256,
                dataset=ctx.data.source, profile="quick", trials=trials, seed=ctx.seed,
                train_limit=300 if small else train_limit, test_limit=100 if small else 2000)


def quick_cell(ctx: Context) -> Cell:
    """The quick profile's cnn long-tail cell as `make benchmark` runs it (its sizes, epochs,
    repetitions and trials); with --quick one tiny repetition of one epoch and 2 trials."""
    cell = next(e.cell for e in expand("full", "quick", ctx.data.source)
                if (e.cell.model, e.cell.variant, e.cell.remedy) == ("cnn", "long-tail", "none"))
    cell = dataclasses.replace(cell, seed=ctx.seed)
    if ctx.sizes["batch"] < 256:  # --quick
        cell = dataclasses.replace(cell, epochs=1, seeds=1, trials=2, train_limit=300,
                                   test_limit=100)
    return cell


class Timed:
    """A Recorder around another that adds up the seconds spent in its calls and in those of
    its nested runs (their figures drawn in log_files included): the recording a tracked cell
    does, timed directly, beside the with/without difference."""

    def __init__(self, inner: Recorder, seconds: list[float]):
        self.inner, self.seconds, self.run_id = inner, seconds, inner.run_id

    def __getattr__(self, name: str):
        method = getattr(self.inner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds[0] += time.perf_counter() - start
        return timed

    @contextmanager
    def child(self, name: str, kind: str, tags: dict | None = None) -> Iterator[Timed]:
        start = time.perf_counter()
        with self.inner.child(name, kind, tags) as run:  # its creation and its ending timed
            self.seconds[0] += time.perf_counter() - start
            yield Timed(run, self.seconds)
            start = time.perf_counter()  # (a body that raised, a pruned trial: not its ending)
        self.seconds[0] += time.perf_counter() - start


def _cpu_seconds() -> float:
    """This process's CPU time, all its threads (the writer thread's too) and the children
    it waited for (git)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tracking_overhead(ctx: Context) -> Row:
    """The quick cnn cell tracked (a real SQLite store; as runner._own runs it: its params,
    study, repetitions and summary) against the same cell on NullRunLog, alternated, after one
    small warm-up cell of each (the process's first figure, export and store calls import
    their libraries, about 2 s: a worker pays that once, not per cell).

    On a CPU both train at the torch threads of one of `make benchmark`'s workers (one on a
    2-core machine: the cell as the grid trains it, every core busy with a worker). The row
    is the CPU seconds the tracked cell spends outside training (`fit_cpu_seconds`) beyond
    what the untracked one does: with every core busy that is what recording adds to the
    grid's wall time, counting the store writes that a background thread makes (an idle core
    would hide those from a wall-clock difference). Training itself is left out because its
    CPU time scatters by seconds between identical cells on a shared machine, more than
    recording costs (at more than one torch thread the threads torch adds are not taken out:
    the row stays right on average, with more scatter). The note gives the whole CPU and
    wall-clock differences, and the training's, beside it."""
    cell = quick_cell(ctx)
    # small, and it learns (balanced, 2 epochs at lr 0.05): so its model is exported and its
    # figures drawn, which is what the warm-up is for
    tiny = dataclasses.replace(cell, variant="balanced", epochs=2, seeds=1, trials=2, lr=0.05,
                               train_limit=min(1000, cell.train_limit or 1000),
                               test_limit=min(200, cell.test_limit or 200))
    threads = auto_threads() if ctx.device.type == "cpu" else None
    # per round and contender: (CPU seconds, of them in fit's epochs)
    cpu: dict[str, list[tuple[float, float]]] = {"tracked": [], "untracked": []}

    @contextmanager
    def counted(kind: str) -> Iterator[None]:
        start, fitting = _cpu_seconds(), fit_cpu_seconds()
        settle_heap()  # as run_grid does before each cell
        yield
        cpu[kind].append((_cpu_seconds() - start, fit_cpu_seconds() - fitting))

    with tempfile.TemporaryDirectory() as tmp, _threads(threads):
        store = Store(f"sqlite:///{tmp}/mlflow.db", "tailbench/perf")
        journals = (TuneOptions(str(Path(tmp) / f"optuna-{i}.journal")) for i in itertools.count())
        learned, recorded = [], []

        def tracked(c: Cell) -> None:
            seconds = [0.0]
            with counted("tracked"), store.cell_run(c.name, {}) as log:
                run = Timed(log, seconds)
                _record_cell(run, c, ctx.data, ctx.device, {})
                learned.append(run_cell(c, ctx.data, run, ctx.device, tuning=next(journals)))
                summarize_cell(store, run, c)
            recorded.append(seconds[0])

        def untracked(c: Cell) -> None:  # a fresh study each time: an old one would train no trial
            with counted("untracked"):
                run_cell(c, ctx.data, NullRunLog(), ctx.device, tuning=next(journals))

        tracked(tiny)
        untracked(tiny)
        for done in (learned, recorded, *cpu.values()):
            done.clear()
        # a quick cell takes about a minute on one thread: three rounds (a median that one
        # disturbed round does not move) keep this row near seven minutes
        with_, without = alternate(partial(tracked, cell), partial(untracked, cell),
                                   reps=min(ctx.reps, 3), device=ctx.device, warmup=0)

    def median(values) -> float:
        return statistics.median(list(values))

    rounds = list(zip(cpu["tracked"], cpu["untracked"], with_, without, strict=True))
    outside = [((a - fa) - (b - fb), w) for (a, fa), (b, fb), w, _ in rounds]
    all_cpu = median(a - b for (a, _), (b, _), *_ in rounds)
    training = median(fa - fb for (_, fa), (_, fb), *_ in rounds)
    wall = median(w - u for *_, w, u in rounds)
    timed = median(recorded)
    return Row("tracking overhead (share of a quick cell)", "s/cell",
               median(r for r, _ in outside), median(with_),
               median(r / w for r, w in outside), target=TRACKING_TARGET,
               percent=True, upper=True, runs=outside,
               note=f"CPU seconds outside training, tracked - untracked / the tracked cell's "
                    f"wall time; {cell.name}, {cell.seeds} repetitions of {cell.epochs} epochs, "
                    f"{cell.trials} trials"
                    + (f", {threads} torch thread{'s' * (threads > 1)} as a make benchmark "
                       "worker" if threads else "")
                    + f"; tracked - untracked in all CPU {all_cpu:.2f} s, in training CPU "
                      f"{training:+.2f} s, in wall time {wall:.2f} s; recording calls timed "
                      f"directly: {timed:.2f} s ({timed / median(with_):.1%}); "
                      f"{min(learned)} of {cell.seeds} learned in the worst tracked round")


def pruning_saving(ctx: Context) -> Row:
    cell = _cell(ctx, epochs=4, train_limit=2000, trials=6 if ctx.sizes["batch"] >= 256 else 3)
    with tempfile.TemporaryDirectory() as tmp:
        result = tune_cell(cell, cut(cell, ctx.data), ctx.device, NullRunLog(),
                           TuneOptions(str(Path(tmp) / "optuna.journal")))
    full = cell.trials * cell.epochs
    return Row("pruning: epochs trained", "epochs", result.epochs_trained, full,
               result.epochs_trained / full, percent=True,
               note=f"{result.pruned} of {cell.trials} trials pruned; baseline: every trial "
                    "run to the end")
