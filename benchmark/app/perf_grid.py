"""`make perf`: where the latest `make benchmark` spent its time, as shares of its wall time,
read from its runs in MLflow (the grid is not run again here: it takes minutes to hours).

Rows: start-up (the command's start to its first cell: imports, data, stores), Optuna
trials, the final fits' epochs, the evaluation inside them, recording around the fits
(metrics, figures, the logged model) and around the cells (statistics, figures); and the
wall time against the 15-minute goal for the default grid on a 2-core CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

from benchmark.app.perf_timing import Context, Row
from tracking.store import Store, latest_experiment, tracking_uri
from tracking.timeline import timeline

GOAL_S = 15 * 60  # the default grid (`full`, quick profile, 3 repetitions, tuned) on 2 cores


def _store(uri: str | None) -> Store | None:
    uri = tracking_uri(uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return None  # no benchmark has run here; do not create an empty store
    return Store(uri, latest_experiment(uri))


def shares(ctx: Context) -> list[Row]:
    store = _store(ctx.tracking_uri)
    t = timeline(store, store.invocation()) if store else None
    if t is None:
        print(f"tailbench perf: {tracking_uri(ctx.tracking_uri)} holds no `make benchmark` run "
              "with its times: the grid's time shares are left out", file=sys.stderr)
        return []
    note = f"{store.experiment_name}, latest run: {t.n_cells} cells trained"
    parts = [("start-up (imports, data, stores)", t.startup),
             ("Optuna trials", t.trials), ("final fits: epochs", t.fits),
             ("  of which test evaluation", t.evaluation),
             ("final fits: recording (metrics, figures, model)", t.recording),
             ("cells: statistics and figures", t.cells)]
    rows = [Row(f"grid: {name}", "s", s, t.wall, s / t.wall if t.wall else 0.0, percent=True,
                note=note) for name, s in parts]
    return rows + [Row("grid: wall time", "s", t.wall, GOAL_S, t.wall / GOAL_S, target=1.0,
                       upper=True, note=f"{note}; baseline: the 15-minute goal")]
