"""The tidy results table: one row per repetition, read back from MLflow.

Every number that tailbench prints, reports or judges is computed from this table (pandas),
and `tailbench results` writes it to `runs/results.parquet` for anyone's own analysis. A row
holds every Cell field (from the cell run's params; `tail_classes` as its JSON list, like
`classes`), the repetition, its seed, its run's status and outcome, the tuned values it
trained with and every final metric.

Which runs count: per cell key the newest cell run (a `--force` re-run starts a new one; the
older stays in MLflow as history), and per repetition of it one run: one with an outcome
(it learned, or it did not) over one that crashed or was killed, then the newest.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from benchmark.cells import CELL_FIELDS, INT_TUPLE
from tracking.store import KIND, Store

OK, DID_NOT_LEARN, ERROR, RUNNING = "ok", "did-not-learn", "error", "running"  # ok: a result
ID_COLUMNS = ["cell_key", "cell_name", "repetition", "rep_seed", "status", "outcome", "reason",
              "run_id", "cell_run_id", "final_lr", "final_sigma", "final_cb_beta",
              "final_la_tau", "final_ldam_margin", "final_attempt", "classes", "calibration",
              "confusion"]
TUNED_LOSS = ("cb_beta", "la_tau", "ldam_margin")  # final_<name>: NaN where the remedy lacks it


def outcome_of(run) -> str:
    """ok / did-not-learn (tagged by the runner when it ends a repetition), error for a run that
    crashed or was killed, running while it is RUNNING."""
    tagged = run.data.tags.get("outcome")
    if run.info.status == "RUNNING":
        return RUNNING
    if run.info.status == "FINISHED" and tagged == OK:
        return OK
    return DID_NOT_LEARN if tagged == DID_NOT_LEARN else ERROR


def is_done(run) -> bool:
    """A repetition a re-run does not train again: it learned, or it did not learn (a
    deterministic result of its seed, which training again on this machine only repeats).
    A crashed, killed or orphaned run is retried."""
    return outcome_of(run) in (OK, DID_NOT_LEARN)


_TYPES = {"str": str, "int": int, "float": float}  # Cell annotations (strings: __future__)


def _typed(name: str, text: str | None):
    """A Cell field back from its MLflow param string. A tuple field stays the JSON list its
    param holds (a column of JSON text, like `classes`, round-trips through Parquet as it is);
    a run of a layout before the field was one has the default, which it trained with."""
    field = CELL_FIELDS[name]
    if field.type == INT_TUPLE:
        return json.dumps(json.loads(text) if text is not None else list(field.default))
    if text is None:
        return field.default
    kind = _TYPES[field.type if isinstance(field.type, str) else field.type.__name__]
    return int(float(text)) if kind is int else kind(text)


def _cell_fields(cell_run) -> dict:
    params, tags = cell_run.data.params, cell_run.data.tags
    params = {"remedy": params.get("augment"), **params}  # layout 3 or older: "augment"
    out = {n: _typed(n, params.get(n)) for n in CELL_FIELDS if n != "seeds"}
    out["seeds"] = int(tags.get("seeds", 1))
    return out


def _pick(runs: list) -> dict[int, object]:
    """One run per repetition number: one with an outcome over a crashed one, then newest."""
    best: dict[int, tuple] = {}
    for run in runs:
        r = int(run.data.tags.get("repetition", -1))
        rank = (is_done(run), run.info.start_time or 0)
        if r >= 0 and (r not in best or rank > best[r][0]):
            best[r] = (rank, run)
    return {r: run for r, (_, run) in sorted(best.items())}


def _row(cell_run, fields: dict, run) -> dict:
    tags, params = run.data.tags, run.data.params
    return {**fields, "cell_key": cell_run.data.tags.get("cell_key", ""),
            "cell_name": cell_run.data.tags.get("cell_name", cell_run.info.run_name),
            "repetition": int(tags["repetition"]), "rep_seed": int(tags.get("rep_seed", -1)),
            "status": run.info.status, "outcome": outcome_of(run),
            "reason": tags.get("reason") or tags.get("error", ""),
            "run_id": run.info.run_id, "cell_run_id": cell_run.info.run_id,
            "final_lr": float(params.get("final_lr", "nan")),
            "final_sigma": float(params.get("final_sigma", "nan")),
            **{f"final_{k}": float(params.get(f"final_{k}", "nan")) for k in TUNED_LOSS},
            # 1: the tuned parameters; 2, 3: a runner-up's, after they failed; 0: no fit
            "final_attempt": int(params.get("final_attempt", 0)),
            "classes": cell_run.data.tags.get("classes", "[]"),
            # the test set's reliability bins (benchmark.metrics.calibration_bins) as JSON
            "calibration": tags.get("calibration", ""),
            # its test confusion matrix (rows true, columns predicted) as a JSON list of rows
            "confusion": tags.get("confusion", ""),
            **run.data.metrics}


def cell_results(store: Store, cell_run) -> pd.DataFrame:
    """The rows of one cell run's repetitions."""
    fields = _cell_fields(cell_run)
    picked = _pick(store.children(cell_run.info.run_id, "repetition"))
    return _frame([_row(cell_run, fields, run) for run in picked.values()])


def load_results(store: Store) -> pd.DataFrame:
    """Every repetition of every cell in the store's experiment, as one table."""
    cells: dict[str, object] = {}
    for run in store.search(f"tags.{KIND} = 'cell'", ["attributes.start_time DESC"]):
        cells.setdefault(run.data.tags.get("cell_key", run.info.run_id), run)  # newest first
    by_parent: dict[str, list] = {}
    for run in store.search(f"tags.{KIND} = 'repetition'"):
        by_parent.setdefault(run.data.tags.get("mlflow.parentRunId", ""), []).append(run)
    rows = []
    for cell_run in cells.values():
        fields = _cell_fields(cell_run)
        for run in _pick(by_parent.get(cell_run.info.run_id, [])).values():
            rows.append(_row(cell_run, fields, run))
    return _frame(rows)


def invocation_cells(store: Store, invocation: str) -> list[dict]:
    """The cells one `tailbench run` trained or found finished, in its grid's order, as the
    report's specs (key, name, model, variant, remedy, seeds, table, reference), read from
    their cell runs' tags: nothing is derived again from command-line flags."""
    tag = f"invocation.{invocation}"
    cells: dict[str, object] = {}
    for run in store.search(f"tags.{KIND} = 'cell'", ["attributes.start_time DESC"]):
        if tag in run.data.tags:
            cells.setdefault(run.data.tags.get("cell_key", run.info.run_id), run)
    specs = []
    for run in sorted(cells.values(), key=lambda r: int(r.data.tags[tag])):
        t = run.data.tags
        specs.append({"key": t.get("cell_key", ""), "name": t.get("cell_name", ""),
                      "model": t.get("model", ""), "variant": t.get("variant", ""),
                      # a run of cell layout 3 or older tagged its remedy "augment"
                      "remedy": t.get("remedy", t.get("augment", "")),
                      "seeds": int(t.get("seeds", 1)),
                      "table": int(t["table"]) if "table" in t else None,
                      "reference": {k.removeprefix("reference_"): float(v) for k, v in t.items()
                                    if k.startswith("reference_")}})
    return specs


def _frame(rows: list[dict]) -> pd.DataFrame:
    """Rows in a stable column order: Cell fields, identity, then metrics alphabetically."""
    fields = list(CELL_FIELDS)
    df = pd.DataFrame(rows, columns=None if rows else fields + ID_COLUMNS)
    metrics = sorted(c for c in df.columns if c not in fields and c not in ID_COLUMNS)
    df = df.reindex(columns=fields + ID_COLUMNS + metrics)
    if len(df):
        df = df.sort_values(["cell_name", "cell_key", "repetition"], kind="stable")
    return df.reset_index(drop=True)


def write_results(df: pd.DataFrame, path: Path) -> Path:
    """The table as Parquet (pyarrow), its folder created if need be."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path, index=False)
    return path


def default_path(store: Store) -> Path:
    """runs/results.parquet beside a local SQLite store, else ./runs/results.parquet."""
    if store.uri.startswith("sqlite:///"):
        return Path(store.uri.removeprefix("sqlite:///")).parent / "results.parquet"
    return Path("runs") / "results.parquet"
