"""`make perf` items 4 and 5: whole cells, timed through the runner.

4. Tracking overhead: the same small cell with MLflow tracking (a real SQLite store) and
   without it (a RunLog that records nothing), alternated; both render the same figures, so
   the difference is what recording costs.
5. Pruning saving: the epochs a pruned Optuna study trains, against its trials run to the end.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmark.app.perf_timing import Context, Row, alternate, paired
from benchmark.app.repetitions import cut, summarize_cell
from benchmark.app.runner import run_cell
from benchmark.cells import Cell
from benchmark.recording import NullRunLog
from studies import TuneOptions, tune_cell
from tracking.store import Store

TRACKING_TARGET = 1.03  # a tracked cell may take at most 3% longer


def _cell(ctx: Context, epochs: int, train_limit: int, trials: int = 0) -> Cell:
    """A cnn cell of the quick profile (fewer epochs, to keep `make perf` short)."""
    small = ctx.sizes["batch"] < 256  # --quick
    return Cell("cnn", "long-tail", "none", epochs=1 if small else epochs, batch_size=256,
                dataset=ctx.data.source, profile="quick", trials=trials, seed=ctx.seed,
                train_limit=300 if small else train_limit, test_limit=100 if small else 2000)


def tracking_overhead(ctx: Context) -> Row:
    cell = _cell(ctx, epochs=3, train_limit=4000)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{tmp}/mlflow.db", "tailbench/perf")

        def tracked() -> None:  # the cell's statistics and figures over repetitions included
            with store.cell_run(cell.name, {}) as run:
                run_cell(cell, ctx.data, run, ctx.device)
                summarize_cell(store, run, cell, store.client.get_run(run.run_id))

        def untracked() -> None:
            run_cell(cell, ctx.data, NullRunLog(), ctx.device)

        # a cell takes seconds: two timed rounds keep `make perf` within its 10 minutes
        with_, without = alternate(tracked, untracked, reps=min(ctx.reps, 2),
                                   device=ctx.device)
    return paired("tracking overhead (cell wall time)", "s/cell", with_, without,
                  target=TRACKING_TARGET, upper=True,
                  note="a quick cnn cell with MLflow tracking / the same cell without")


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
