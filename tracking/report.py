"""One cell's artifact folder, and the cross-cell report read back from MLflow.

The report is built as a list of blocks (heading, paragraph, table, image) and rendered
twice: Markdown with the figures as PNG files beside it, and one self-contained HTML file
with the figures inlined, which can be mailed or opened from any folder.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from mlflow import MlflowClient

from tracking import plots
from tracking.metrics import cell_metrics, class_metric_names
from tracking.render import Image, Table, to_html, to_markdown

NA = "—"  # a number that does not exist (cell not measured, no reference)


# ---------------------------------------------------------------- one cell's artifacts

def _confusion_csv(cm: np.ndarray, classes: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["true \\ predicted", *classes])  # rows are true classes, as in sklearn
    for name, row in zip(classes, cm.tolist(), strict=True):
        w.writerow([name, *row])
    return buf.getvalue()


def write_cell_artifacts(out_dir: Path, cell_title: str, history: list[dict], y_true, y_pred,
                         classes: list[str], tail_classes: list[int]) -> dict[str, float]:
    """Figures and sklearn reports of one cell into out_dir; returns its scalar metrics.

    Writes figures/{loss,accuracy,confusion,confusion_normalized,per_class_accuracy}.png
    and reports/classification_report.{json,txt}, reports/confusion_matrix.csv.
    """
    out_dir = Path(out_dir)
    m = cell_metrics(y_true, y_pred, classes, tail_classes)
    recall = [m.scalars.get(n, math.nan) for n in class_metric_names(list(classes))]
    figures = {
        "loss.png": plots.loss_curve(history, cell_title),
        "accuracy.png": plots.accuracy_curve(history, cell_title),
        "confusion.png": plots.confusion_figure(m.confusion, classes, cell_title),
        "confusion_normalized.png": plots.confusion_figure(m.confusion, classes, cell_title,
                                                           normalized=True),
        "per_class_accuracy.png": plots.per_class_accuracy_figure(recall, classes,
                                                                  tail_classes, cell_title),
    }
    for name, fig in figures.items():
        plots.save_png(fig, out_dir / "figures" / name)
    reports = out_dir / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "classification_report.json").write_text(json.dumps(m.report_dict, indent=2))
    (reports / "classification_report.txt").write_text(m.report_text)
    (reports / "confusion_matrix.csv").write_text(_confusion_csv(m.confusion, list(classes)))
    return dict(m.scalars)


# ---------------------------------------------------------------- runs -> rows

@dataclass
class Row:
    """One expected cell and what its chosen run (if any) says about it."""

    spec: dict  # the expected cell: key, name, model, variant, augment, table, reference
    status: str = "missing"  # measured, failed, killed, running, missing
    error: str = ""
    metrics: dict = field(default_factory=dict)  # latest value of each run metric
    tags: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)

    @property
    def measured(self) -> bool:
        return self.status == "measured"

    def pct(self, metric: str) -> float | None:
        """A run metric in percent, only for a finished run: a failed run's partial numbers
        would read as results."""
        v = self.metrics.get(metric) if self.measured else None
        return None if v is None or math.isnan(v) else 100.0 * v

    def ref(self, what: str) -> float | None:
        return (self.spec.get("reference") or {}).get(what)

    @property
    def slot(self) -> tuple[str, str, str]:
        return self.spec["model"], self.spec["variant"], self.spec["augment"]


_STATUS = {"FINISHED": "measured", "FAILED": "failed", "KILLED": "killed"}


def _cell_runs(client: MlflowClient, experiment_id: str) -> list:
    runs, token = [], None
    while True:  # every page: a grid re-run many times can exceed one page
        page = client.search_runs([experiment_id], "tags.tailbench_kind = 'cell'",
                                  max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _choose(runs: list) -> dict[str, object]:
    """Run per cell_key: a finished one over any other, then the newest."""
    best = {}
    for run in runs:
        key = run.data.tags.get("cell_key")
        rank = (run.info.status == "FINISHED", run.info.start_time or 0)
        if key and (key not in best or rank > best[key][0]):
            best[key] = (rank, run)
    return {k: run for k, (_, run) in best.items()}


def _row(spec: dict, run) -> Row:
    if run is None:
        return Row(spec)
    return Row(spec, status=_STATUS.get(run.info.status, "running"),
               error=run.data.tags.get("error", ""), metrics=dict(run.data.metrics),
               tags=dict(run.data.tags), params=dict(run.data.params))


def load_rows(tracking_uri: str, experiment: str, expected: list[dict]
              ) -> tuple[list[Row], int]:
    """The expected cells, in order, each with its chosen run's numbers (or 'missing'),
    and how many other cell keys have runs in the experiment (another grid or settings)."""
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"no MLflow experiment {experiment!r} at {tracking_uri}: run the grid "
                         f"first, or pass the tracking URI and experiment name it logged to")
    chosen = _choose(_cell_runs(client, exp.experiment_id))
    others = len(set(chosen) - {spec["key"] for spec in expected})
    return [_row(spec, chosen.get(spec["key"])) for spec in expected], others


# ---------------------------------------------------------------- numbers -> text

def fmt(v: float | None, signed: bool = False) -> str:
    if v is None:
        return NA
    return f"{v:+.1f}" if signed else f"{v:.1f}"


def diff(measured: float | None, reference: float | None) -> float | None:
    return None if measured is None or reference is None else measured - reference


def status_cell(row: Row) -> tuple[str, str]:
    """(text, css class): a failed cell shows the first line of its error."""
    if row.status in ("failed", "killed") and row.error:
        first = row.error.strip().splitlines()[0] if row.error.strip() else ""
        return f"{row.status}: {first[:80]}", row.status
    return row.status, row.status


def produced_by(row: Row) -> str:
    ds, prof = row.tags.get("dataset"), row.tags.get("profile")
    if not ds and not prof:
        return NA
    text = f"{ds or '?'} · {prof or '?'}"
    if ds != "cifar10" or prof != "paper":
        text += " — not comparable in absolute terms"
    return text


# ---------------------------------------------------------------- tables and figures

def accuracy_table(rows: list[Row]) -> Table:
    heads = ["cell", "status", "epochs", "train acc (%)", "ref. train", "Δ train (pts)",
             "test acc (%)", "ref. test", "Δ test (pts)", "produced by"]
    out = []
    for r in rows:
        tr, te = r.pct("final_train_acc"), r.pct("final_test_acc")
        rtr, rte = r.ref("train_acc"), r.ref("test_acc")
        out.append([r.spec["name"], status_cell(r), r.params.get("epochs", NA),
                    fmt(tr), fmt(rtr), fmt(diff(tr, rtr), True),
                    fmt(te), fmt(rte), fmt(diff(te, rte), True), produced_by(r)])
    return Table(heads, out)


def head_tail_table(rows: list[Row]) -> Table:
    heads = ["cell", "status", "head acc (%)", "tail acc (%)", "gap (pts)",
             "balanced acc (%)", "macro-F1 (%)"]
    return Table(heads, [[r.spec["name"], status_cell(r), fmt(r.pct("head_acc")),
                          fmt(r.pct("tail_acc")), fmt(r.pct("tail_gap")),
                          fmt(r.pct("balanced_acc")), fmt(r.pct("macro_f1"))] for r in rows])


def _classes(rows: list[Row]) -> tuple[list[str], list[int]]:
    """The union of the measured cells' class lists, and the first cell's tail classes."""
    classes, tail = [], None
    for r in rows:
        if r.measured:
            for c in json.loads(r.tags.get("classes", "[]")):
                if c not in classes:
                    classes.append(c)
            if tail is None and "tail_classes" in r.tags:
                tail = json.loads(r.tags["tail_classes"])
    return classes, tail or []


def heatmap_image(rows: list[Row]) -> Image | None:
    classes, tail = _classes(rows)
    if not classes:
        return None
    names = class_metric_names(classes)
    values = np.array([[r.pct(n) if r.pct(n) is not None else math.nan for n in names]
                       for r in rows], dtype=float)
    labels = [r.spec["name"] + ("" if r.measured else f" ({r.status})") for r in rows]
    fig = plots.per_class_heatmap(labels, classes, values, "Test accuracy per class (%)", tail)
    return Image("per_class_heatmap.png", "per-class test accuracy, cells x classes",
                 plots.png_bytes(fig))


def bars_image(rows: list[Row]) -> Image:
    fig = plots.cell_accuracy_bars([r.spec["name"] for r in rows],
                                   [r.pct("final_test_acc") for r in rows],
                                   [r.ref("test_acc") for r in rows],
                                   "Test accuracy per cell: measured vs reference",
                                   notes=[r.status for r in rows])
    return Image("test_accuracy.png", "test accuracy per cell", plots.png_bytes(fig))


# ---------------------------------------------------------------- findings

_VERDICT = {True: ("holds", "yes"), False: ("does not hold", "no"),
            None: ("cannot tell", "unknown")}  # text, and the css class that colours it


def _slots(rows: list[Row]) -> dict[tuple[str, str, str], Row]:
    """One row per (model, variant, augment): a measured one if the grid repeats a slot."""
    out: dict = {}
    for r in rows:
        if r.slot not in out or (r.measured and not out[r.slot].measured):
            out[r.slot] = r
    return out


def _absent(slots: dict, *wanted: tuple[str, str, str]) -> str:
    """Why a comparison cannot be made: which of its cells is not in the grid or not measured."""
    why = []
    for slot in wanted:
        name = " · ".join(slot)
        if slot not in slots:
            why.append(f"{name} is not in the grid")
        elif not slots[slot].measured:
            why.append(f"{name} is {slots[slot].status}")
    return "; ".join(why)


def _finding(claim: str, ok: bool | None, numbers: str) -> list:
    text, cls = _VERDICT[ok]
    return [claim, (text, cls), numbers]


def _longtail_below_balanced(slots: dict, model: str) -> list:
    bal, lt = (model, "balanced", "none"), (model, "long-tail", "none")
    claim = f"{model}: long-tail test accuracy below balanced"
    if _absent(slots, bal, lt):
        return _finding(claim, None, _absent(slots, bal, lt))
    b, t = slots[bal].pct("final_test_acc"), slots[lt].pct("final_test_acc")
    if b is None or t is None:
        return _finding(claim, None, "final_test_acc was not logged")
    return _finding(claim, t < b, f"balanced {fmt(b)}% vs long-tail {fmt(t)}% "
                                  f"({fmt(t - b, True)} pts)")


def _tail_below_head(slots: dict, row: Row) -> list:
    claim = f"{row.spec['name']}: tail accuracy below head"
    head, tail = row.pct("head_acc"), row.pct("tail_acc")
    if not row.measured or head is None or tail is None:
        return _finding(claim, None, f"cell is {row.status}" if not row.measured
                        else "head_acc/tail_acc were not logged")
    numbers = f"tail {fmt(tail)}% vs head {fmt(head)}% (gap {fmt(head - tail)} pts)"
    control = slots.get((row.spec["model"], "balanced", "none"))
    if control is not None and control.pct("tail_gap") is not None:
        # the cut classes may be harder anyway: the balanced cell shows how much
        numbers += f"; balanced control gap {fmt(control.pct('tail_gap'))} pts"
    return _finding(claim, tail < head, numbers)


def _oversampling_narrows_gap(slots: dict, model: str) -> list:
    lt, fn = (model, "long-tail", "none"), (model, "long-tail", "flip+noise")
    claim = f"{model}: flip+noise narrows the long-tail gap"
    if _absent(slots, lt, fn):
        return _finding(claim, None, _absent(slots, lt, fn))
    g0, g1 = slots[lt].pct("tail_gap"), slots[fn].pct("tail_gap")
    if g0 is None or g1 is None:
        return _finding(claim, None, "tail_gap was not logged")
    return _finding(claim, g1 < g0, f"gap {fmt(g1)} pts with flip+noise vs {fmt(g0)} "
                                    f"without ({fmt(g1 - g0, True)} pts)")


def findings_table(rows: list[Row]) -> Table:
    """The reference's three findings, checked on the measured cells."""
    slots, out = _slots(rows), []
    models = list(dict.fromkeys(r.spec["model"] for r in rows))
    for m in models:
        if {(m, "balanced", "none"), (m, "long-tail", "none")} & set(slots):
            out.append(_longtail_below_balanced(slots, m))
    out += [_tail_below_head(slots, r) for r in rows if r.spec["variant"] == "long-tail"]
    for m in models:
        if {(m, "long-tail", "none"), (m, "long-tail", "flip+noise")} & set(slots):
            out.append(_oversampling_narrows_gap(slots, m))
    return Table(["finding", "verdict", "numbers"], out)


def build_blocks(rows: list[Row], experiment: str, tracking_uri: str, others: int = 0) -> list:
    counts = {s: sum(r.status == s for r in rows) for s in dict.fromkeys(r.status for r in rows)}
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    blocks: list = [("h1", f"tailbench report — {experiment}"),
                    ("p", f"{len(rows)} cells expected; "
                          + ", ".join(f"{n} {s}" for s, n in counts.items())
                          + (f"; {others} other cells have runs here but are not in this "
                             "grid (other settings or profile)" if others else "")
                          + f". Tracking store: {tracking_uri}. Generated {now}. "
                          "Accuracies in percent; Δ = measured minus reference, in points.")]
    tables = sorted({r.spec["table"] for r in rows if r.spec.get("table") is not None})
    blocks.append(("h2", "The reference's tables"))
    for t in tables:
        blocks += [("h3", f"Table {t}"),
                   accuracy_table([r for r in rows if r.spec.get("table") == t])]
    extra = [r for r in rows if r.spec.get("table") is None]
    if extra:
        blocks += [("h2", "Cells the reference did not run"), accuracy_table(extra)]
    blocks += [("h2", "Findings"), findings_table(rows)]
    blocks += [("h2", "Head and tail"),
               ("p", "Head/tail accuracy pools the test images of the head (or tail) "
                     "classes; gap = head minus tail."), head_tail_table(rows)]
    heat = heatmap_image(rows)
    blocks += [("h2", "Per-class accuracy"),
               heat if heat else ("p", "No per-class accuracies: no cell is measured yet, "
                                        "or none logged its classes tag."), bars_image(rows)]
    failed = [r for r in rows if r.error]
    if failed:
        blocks.append(("h2", "Errors"))
        blocks += [("pre", f"{r.spec['name']} ({r.status}):\n{r.error[:2000]}") for r in failed]
    return blocks


def build_report(tracking_uri: str, experiment: str, expected: list[dict],
                 out_root: Path = Path("reports")) -> Path:
    """Write <out_root>/<experiment>/report.md (+ figures/) and a self-contained report.html.

    `expected` lists the grid's cells as dicts: key, name, model, variant, augment,
    table (int or None), reference ({train_acc, test_acc} in percent, or {}).
    Returns the path of report.md.
    """
    rows, others = load_rows(tracking_uri, experiment, expected)
    out = Path(out_root) / experiment.replace("/", "_")
    out.mkdir(parents=True, exist_ok=True)
    blocks = build_blocks(rows, experiment, tracking_uri, others)
    md = out / "report.md"
    md.write_text(to_markdown(blocks, out / "figures"), encoding="utf-8")
    (out / "report.html").write_text(to_html(blocks, f"tailbench report — {experiment}"),
                                     encoding="utf-8")
    return md
