"""`make perf` items 4 and 5: whole cells, timed through the runner.

4. Tracking overhead: a quick cell (the quick profile's cnn long-tail cell, a small study
   included) with MLflow tracking (a real SQLite store) and without it (a Recorder that
   records nothing and draws no figure), alternated in one process; the difference is what
   recording costs (params, metrics, figures, reports, the logged models, the statistics
   and figures over repetitions and of the study), as a share of the tracked cell's wall time.
5. Pruning saving: the epochs a pruned Optuna study trains, against its trials run to the end.
"""

from __future__ import annotations

import dataclasses
import itertools
import statistics
import tempfile
from pathlib import Path

from benchmark.app.perf_timing import Context, Row, alternate
from benchmark.app.repetitions import cut, summarize_cell
from benchmark.app.runner import _record_cell, run_cell
from benchmark.cells import Cell, expand
from benchmark.recording import NullRunLog
from studies import TuneOptions, tune_cell
from tracking.store import Store

TRACKING_TARGET = 0.03  # recording may take at most 3% of a quick cell's wall time
OVERHEAD_TRIALS = 2  # a study small enough for `make perf`, big enough to record one


def _cell(ctx: Context, epochs: int, train_limit: int, trials: int = 0) -> Cell:
    """A cnn cell of the quick profile (fewer epochs, to keep `make perf` short)."""
    small = ctx.sizes["batch"] < 256  # --quick
    return Cell("cnn", "long-tail", "none", epochs=1 if small else epochs, batch_size=256,
                dataset=ctx.data.source, profile="quick", trials=trials, seed=ctx.seed,
                train_limit=300 if small else train_limit, test_limit=100 if small else 2000)


def quick_cell(ctx: Context) -> Cell:
    """The quick profile's cnn long-tail cell (its sizes, epochs and repetitions) with a study
    of OVERHEAD_TRIALS trials, not its 8 (trials train far more than they record, so the
    share is larger than a full cell's); with --quick one tiny repetition of one epoch."""
    cell = next(e.cell for e in expand("full", "quick", ctx.data.source)
                if (e.cell.model, e.cell.variant, e.cell.remedy) == ("cnn", "long-tail", "none"))
    cell = dataclasses.replace(cell, trials=OVERHEAD_TRIALS, seed=ctx.seed)
    if ctx.sizes["batch"] < 256:  # --quick
        cell = dataclasses.replace(cell, epochs=1, seeds=1, train_limit=300, test_limit=100)
    return cell


def tracking_overhead(ctx: Context) -> Row:
    cell = quick_cell(ctx)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{tmp}/mlflow.db", "tailbench/perf")
        journals = (TuneOptions(str(Path(tmp) / f"optuna-{i}.journal")) for i in itertools.count())
        learned = []

        def tracked() -> None:  # as runner._own runs a cell: its params, repetitions, summary
            with store.cell_run(cell.name, {}) as run:
                _record_cell(run, cell, ctx.data, ctx.device, {})
                learned.append(run_cell(cell, ctx.data, run, ctx.device,
                                        tuning=next(journals)))
                summarize_cell(store, run, cell, store.client.get_run(run.run_id))

        def untracked() -> None:  # a fresh study each time: an old one would train no trial
            run_cell(cell, ctx.data, NullRunLog(), ctx.device, tuning=next(journals))

        # a cell takes half a minute: two timed rounds keep `make perf` within its 10 minutes
        with_, without = alternate(tracked, untracked, reps=min(ctx.reps, 2),
                                   device=ctx.device)
    runs = [(a - b, a) for a, b in zip(with_, without, strict=True)]  # (recording, wall)
    return Row("tracking overhead (share of a quick cell)", "s/cell",
               statistics.median(r for r, _ in runs), statistics.median(with_),
               statistics.median(r / w for r, w in runs), target=TRACKING_TARGET,
               percent=True, upper=True, runs=runs,
               note=f"seconds recording / the tracked cell's wall time; {cell.name}, "
                    f"{cell.seeds} repetitions of {cell.epochs} epochs, {cell.trials} trials; "
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
