"""The cross-cell report, computed from the results table.

The report is built from the tidy results DataFrame (one row per repetition, see
tracking.findings) as a list of blocks (heading, paragraph, table, image) and rendered
twice: Markdown with the figures as PNG files beside it, and one self-contained HTML file
with the figures inlined, which can be mailed or opened from any folder. Every number is a
mean ± sample std over the repetitions that learned; the findings are judged with
benchmark.stats.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.data.augment import REMEDIES
from benchmark.metrics import class_metric_names
from benchmark.stats import MINUS
from tracking import plots
from tracking.findings import (
    HOW_JUDGED,
    OK,
    CellResult,
    RemedyComparison,
    expected_cells,
    findings_table,
    first_line,
    has_remedies,
    remedy_comparisons,
)
from tracking.render import Image, Table, to_html, to_markdown
from tracking.results import TUNED_LOSS

NA = "—"  # a number that does not exist (cell not measured, no reference)


# ---------------------------------------------------------------- numbers -> text

def fmt(v: float | None, signed: bool = False) -> str:
    if v is None or math.isnan(v):
        return NA
    v = v if round(v, 1) != 0 else 0.0  # no "−0.0" from rounding noise
    return (f"{v:+.1f}" if signed else f"{v:.1f}").replace("-", MINUS)


def pct_mean(cell: CellResult, metric: str) -> float | None:
    """The mean of a metric over the repetitions that count, in percent (None if none)."""
    mean = cell.summary(metric).mean
    return None if math.isnan(mean) else 100.0 * mean


def pct_std(cell: CellResult, metric: str) -> float | None:
    std = cell.summary(metric).std
    return None if math.isnan(std) else 100.0 * std


def ref(cell: CellResult, what: str) -> float | None:
    return (cell.spec.get("reference") or {}).get(what)


def delta(cell: CellResult, metric: str, what: str) -> str:
    """The mean minus the reference, in points."""
    mean, reference = pct_mean(cell, metric), ref(cell, what)
    return NA if mean is None or reference is None else fmt(mean - reference, signed=True)


def status_cell(cell: CellResult) -> tuple[str, str]:
    """(text, css class): a cell without a counted repetition shows the first line of why."""
    if not cell.measured and cell.reason:
        return f"{cell.status}: {cell.reason[:80]}", cell.status
    return cell.status, cell.status


def n_of(cell: CellResult) -> str:
    return f"{cell.n} of {cell.asked}"


def _source(cell: CellResult) -> str:
    """"dataset · profile" of what the cell trained on, "" when its rows do not say."""
    ds, prof = cell.first("dataset"), cell.first("profile")
    return f"{ds or '?'} · {prof or '?'}" if ds or prof else ""


def _like_reference(cell: CellResult) -> bool:
    """Whether the cell trained as the reference did: CIFAR-10 at the paper profile."""
    return (cell.first("dataset"), cell.first("profile")) == ("cifar10", "paper")


def produced_by(cell: CellResult) -> str:
    text = _source(cell)
    if not text:
        return NA
    if not _like_reference(cell):
        text += " — not comparable in absolute terms"
    return text


# ---------------------------------------------------------------- tables and figures

def accuracy_table(cells: list[CellResult]) -> Table:
    heads = ["cell", "status", "repetitions", "epochs", "train acc (%)", "ref. train",
             "Δ train (pts)", "test acc (%)", "ref. test", "Δ test (pts)", "produced by"]
    rows = []
    for c in cells:
        epochs = c.first("epochs")
        rows.append([c.spec["name"], status_cell(c), n_of(c), NA if epochs is None else epochs,
                     c.summary("final_train_acc").text(), fmt(ref(c, "train_acc")),
                     delta(c, "final_train_acc", "train_acc"),
                     c.summary("final_test_acc").text(), fmt(ref(c, "test_acc")),
                     delta(c, "final_test_acc", "test_acc"), produced_by(c)])
    return Table(heads, rows)


HEAD_TAIL = ["head_acc", "tail_acc", "tail_gap", "balanced_acc", "macro_f1"]


def head_tail_table(cells: list[CellResult]) -> Table:
    heads = ["cell", "status", "repetitions", "head acc (%)", "tail acc (%)", "gap (pts)",
             "balanced acc (%)", "macro-F1 (%)"]
    return Table(heads, [[c.spec["name"], status_cell(c), n_of(c),
                          *(c.summary(m).text() for m in HEAD_TAIL)] for c in cells])


def _json_list(value: object) -> list:
    # a JSON list column; absent or NaN where a run did not record it
    return json.loads(value) if isinstance(value, str) and value else []


def _classes(cells: list[CellResult]) -> tuple[list[str], list[int]]:
    """The union of the measured cells' class lists, and the tail classes they share (each
    cell's `tail_classes` field); none when cells differ in their tail, where no one set of
    columns is the tail of every row."""
    classes, tails = [], set()
    for c in cells:
        if c.measured:
            for name in _json_list(c.first("classes")):
                if name not in classes:
                    classes.append(name)
            tails.add(tuple(_json_list(c.first("tail_classes"))))
    return classes, list(tails.pop()) if len(tails) == 1 else []


def heatmap_image(cells: list[CellResult]) -> Image | None:
    classes, tail = _classes(cells)
    if not classes:
        return None
    names = class_metric_names(classes)
    values = np.array([[100.0 * c.summary(n).mean for n in names] for c in cells])
    labels = [c.spec["name"] + (f" (n={c.n})" if c.measured else f" ({c.status})")
              for c in cells]
    fig = plots.per_class_heatmap(labels, classes, values,
                                  "Test accuracy per class (%), mean over repetitions", tail)
    return Image("per_class_heatmap.png", "per-class mean test accuracy, cells x classes",
                 plots.png_bytes(fig))


def bars_image(cells: list[CellResult]) -> Image:
    title = "Test accuracy per cell: mean ± std vs reference"
    unlike = sorted({_source(c) for c in cells if c.measured and not _like_reference(c)})
    if unlike:  # the reference's bars are CIFAR-10 at its epochs: say so where it matters
        title += (f"\n{', '.join(unlike)}: not comparable to the reference "
                  "in absolute terms")
    fig = plots.cell_accuracy_bars([c.spec["name"] for c in cells],
                                   [pct_mean(c, "final_test_acc") for c in cells],
                                   [ref(c, "test_acc") for c in cells], title,
                                   notes=[c.status for c in cells],
                                   errors=[pct_std(c, "final_test_acc") for c in cells])
    return Image("test_accuracy.png", "test accuracy per cell", plots.png_bytes(fig))


def not_counted_table(cells: list[CellResult]) -> Table | None:
    """Every repetition that is not evidence, and why; None when every one counts."""
    rows = []
    for c in cells:
        for _, r in c.reps[c.reps["outcome"] != OK].iterrows():
            outcome = str(r["outcome"])
            rep = r.get("repetition")
            why = first_line(r.get("reason"), 300) or first_line(r.get("status"))
            rows.append([c.spec["name"], NA if pd.isna(rep) else int(rep),
                         (outcome, "running" if outcome == "running" else "failed"), why])
    return Table(["cell", "repetition", "outcome", "reason"], rows) if rows else None


def runner_up_table(cells: list[CellResult]) -> Table | None:
    rows = []
    for c in cells:
        if not c.runner_up:
            continue
        for _, r in c.ok[pd.to_numeric(c.ok["final_attempt"], errors="coerce") > 1].iterrows():
            rows.append([c.spec["name"], int(r["repetition"]), int(r["final_attempt"]),
                         f"{r['final_lr']:.4g}", f"{r['final_sigma']:.3g}",
                         fmt(100 * float(r["final_test_acc"]))])
    return Table(["cell", "repetition", "attempt", "lr", "sigma", "test acc (%)"],
                 rows) if rows else None


def _diff_ci(v) -> str:
    """'+2.1 [−0.5, +4.7]': the difference of means and its 95% CI, in points."""
    text = fmt(100 * v.diff, signed=True)
    if math.isnan(v.low):
        return text
    return f"{text} [{fmt(100 * v.low, signed=True)}, {fmt(100 * v.high, signed=True)}]"


def _verdict(v) -> tuple[str, str]:
    return v.verdict, v.verdict


def tuned_text(cell: CellResult) -> str:
    """The loss parameter the remedy's study searches (REMEDIES' `tuned`) as its repetitions
    trained with it (final_<name>), e.g. 'cb_beta 0.999'; several values when runners-up
    trained some; '—' for none. (ldam-drw's fixed cb_beta is not shown.)"""
    remedy = cell.spec["remedy"]
    tuned = REMEDIES.meta(remedy).get("tuned", ()) if remedy in REMEDIES else ()
    parts = []
    for name in (n for n in TUNED_LOSS if n in tuned):
        values = sorted({float(v) for v in cell.values(f"final_{name}") if not math.isnan(v)})
        if values:
            parts.append(f"{name} {', '.join(f'{v:.3g}' for v in values)}")
    return "; ".join(parts) or NA


SHOT_LABEL = {"few_acc": "few-shot", "tail_acc": "tail"}


def remedies_table(cells: list[CellResult]) -> Table:
    """Each remedy against plain cross-entropy (none) on the same model and variant: test
    accuracy and tail (step) or few-shot (exp) accuracy, mean ± std, the difference with its
    95% CI (Welch) and the verdict on the claim that the remedy raises it."""
    heads = ["model · variant", "remedy", "tuned", "test acc (%)", "plain CE (%)",
             "Δ test [95% CI] (pts)", "verdict", "tail or few-shot acc (%)", "plain CE (%)",
             "Δ [95% CI] (pts)", "verdict"]
    rows = []
    for comp in remedy_comparisons(cells):
        if not isinstance(comp, RemedyComparison):
            cell, why = comp
            rows.append([" · ".join(cell.slot[:2]), cell.slot[2], NA, NA, NA, NA,
                         ("inconclusive", "inconclusive"), NA, NA, why, NA])
            continue
        c, base, m = comp.remedy, comp.control, comp.tail_metric
        rows.append([" · ".join(c.slot[:2]), c.slot[2], tuned_text(c),
                     c.summary("final_test_acc").text(), base.summary("final_test_acc").text(),
                     _diff_ci(comp.test), _verdict(comp.test),
                     f"{SHOT_LABEL[m]}: {c.summary(m).text()}", base.summary(m).text(),
                     _diff_ci(comp.tail), _verdict(comp.tail)])
    return Table(heads, rows)


REMEDIES_NOTE = (
    "Each remedy against plain cross-entropy (`none`) on the same model and variant, over the "
    "repetitions that learned: the claim judged is that the remedy raises test accuracy, and "
    "that it raises the tail's (a step cut) or the few-shot classes' (an exp protocol: "
    "classes in the lowest third of the log training-count range) accuracy. Δ = remedy minus "
    "plain, in points, with the 95% CI of Welch's t-test; 'tuned' is the remedy's own "
    "parameter as the study chose it on validation (the learning rate is tuned for every "
    "cell). The literature's numbers were selected on the test set; these were not.")


# ---------------------------------------------------------------- the report

def _intro(cells: list[CellResult], store_uri: str, others: int) -> str:
    statuses = dict.fromkeys(c.status for c in cells)
    counts = ", ".join(f"{sum(c.status == s for c in cells)} {s}" for s in statuses)
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    n = len(cells)
    return (f"{n} cell{'s' * (n != 1)} in this run; {counts}"
            + (f"; {others} other cells have results here but are not in this run (other "
               "settings or profile)" if others else "")
            + f". Tracking store: {store_uri}. Generated {now}. Accuracies in percent, as "
            "mean ± sample std over the repetitions that learned (n of them); "
            "Δ = mean minus reference, in points.")


def build_blocks(cells: list[CellResult], experiment: str, store_uri: str,
                 others: int = 0) -> list:
    blocks: list = [("h1", f"tailbench report — {experiment}"),
                    ("p", _intro(cells, store_uri, others))]
    tables = sorted({c.spec["table"] for c in cells if c.spec.get("table") is not None})
    if tables:
        blocks.append(("h2", "The reference's tables"))
    for t in tables:
        blocks += [("h3", f"Table {t}"),
                   accuracy_table([c for c in cells if c.spec.get("table") == t])]
    extra = [c for c in cells if c.spec.get("table") is None]
    if extra:
        blocks += [("h2", "Cells the reference did not run"), accuracy_table(extra)]
    blocks += [("h2", "Findings"), findings_table(cells), ("p", HOW_JUDGED)]
    if has_remedies(cells):
        blocks += [("h2", "Remedies against plain cross-entropy"), ("p", REMEDIES_NOTE),
                   remedies_table(cells)]
    blocks += [("h2", "Head and tail"),
               ("p", "Head/tail accuracy pools the test images of the head (or tail) "
                     "classes; gap = head minus tail."), head_tail_table(cells)]
    heat = heatmap_image(cells)
    blocks += [("h2", "Per-class accuracy"),
               heat if heat else ("p", "No per-class accuracies: no cell has a repetition "
                                       "that learned yet, or none recorded its classes."),
               bars_image(cells)]
    skipped = not_counted_table(cells)
    blocks += [("h2", "Repetitions that did not count"),
               skipped if skipped else ("p", "Every recorded repetition learned.")]
    fallback = runner_up_table(cells)
    if fallback:
        blocks += [("h2", "Repetitions trained with a runner-up's parameters"),
                   ("p", "On these seeds the tuned parameters diverged or did not learn, and "
                         "the next best trial's learned: they count, but at other parameters "
                         "than the rest of their cell, which widens its spread. A cell "
                         "listed here is tuned near the edge of stability."), fallback]
    return blocks


def build_report(results: pd.DataFrame, expected: list[dict], experiment: str, store_uri: str,
                 out_root: Path = Path("reports")) -> Path:
    """Write <out_root>/<experiment>/report.md (+ figures/) and a self-contained report.html.

    `results` is the results table (one row per repetition); `expected` lists the grid's
    cells in order as dicts: key, name, model, variant, augment, table (int or None),
    reference ({train_acc, test_acc} in percent, or {}), seeds (repetitions asked for).
    `store_uri` is only named in the report. Returns the path of report.md.
    """
    cells = expected_cells(results, expected)
    keys = set(results["cell_key"]) if "cell_key" in results.columns else set()
    others = len(keys - {spec["key"] for spec in expected})
    out = Path(out_root) / experiment.replace("/", "_")
    out.mkdir(parents=True, exist_ok=True)
    blocks = build_blocks(cells, experiment, store_uri, others)
    md = out / "report.md"
    md.write_text(to_markdown(blocks, out / "figures"), encoding="utf-8")
    (out / "report.html").write_text(to_html(blocks, f"tailbench report — {experiment}"),
                                     encoding="utf-8")
    return md


def results_table(results: pd.DataFrame, expected: list[dict]) -> str:
    """The plain-text table printed at the end of a run: per expected cell, the repetitions
    that learned of those asked, train/test/tail accuracy as mean ± std (%), and status."""
    heads = ["cell", "n/N", "train acc", "test acc", "tail acc", "status"]
    rows = [[c.spec["name"], f"{c.n}/{c.asked}",
             *(c.summary(m).text(count=False)
               for m in ("final_train_acc", "final_test_acc", "tail_acc")),
             status_cell(c)[0] + (f" ({c.runner_up} at a runner-up's parameters)"
                                  if c.runner_up else "")]
            for c in expected_cells(results, expected)]
    widths = [max(len(str(r[i])) for r in [heads, *rows]) for i in range(len(heads))]
    right = {1, 2, 3, 4}  # numbers line up on the right

    def line(r: list) -> str:
        return "  ".join(str(v).rjust(w) if i in right else str(v).ljust(w)
                         for i, (v, w) in enumerate(zip(r, widths, strict=True))).rstrip()

    return "\n".join(line(r) for r in [heads, *rows])
