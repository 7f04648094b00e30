"""The artifact folders of the runs: a repetition's scikit-learn reports, and a cell's
figures over its repetitions (mean curves with a ±std band, per-class accuracy with error
bars, the pooled confusion matrix and reliability diagram). Plain data in (histories,
metrics the core computed, the cell's results rows), files out; the runner logs each folder
on its run."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.data.variants import VARIANTS
from benchmark.metrics import CellMetrics, class_metric_names
from tracking import plots, plots_repetitions


def _confusion_csv(cm: np.ndarray, classes: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["true \\ predicted", *classes])  # rows are true classes, as in sklearn
    for name, row in zip(classes, cm.tolist(), strict=True):
        w.writerow([name, *row])
    return buf.getvalue()


def write_repetition_reports(out_dir: Path, m: CellMetrics, classes: list[str]) -> None:
    """The scikit-learn reports of one repetition into out_dir, from its metrics (computed by
    the core, benchmark.metrics.cell_metrics): reports/classification_report.{json,txt} and
    reports/confusion_matrix.csv. A repetition draws no figure: its curves and per-class
    accuracy are its MLflow metrics (the UI charts them), and the cell's figures show them
    over all of its repetitions, drawn once when the cell is summarized."""
    reports = Path(out_dir) / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "classification_report.json").write_text(json.dumps(m.report_dict, indent=2))
    (reports / "classification_report.txt").write_text(m.report_text)
    (reports / "confusion_matrix.csv").write_text(_confusion_csv(m.confusion, list(classes)))


def write_cell_summary(out_dir: Path, title: str, histories: list[list[dict[str, float]]],
                       ok: pd.DataFrame) -> list[Path]:
    """figures/mean_{loss,accuracy}.svg, figures/per_class_accuracy_mean.svg and, from what
    the repetitions recorded, figures/confusion_normalized.svg (their confusion matrices
    summed) and figures/reliability.svg (their calibration bins summed), from the
    repetitions that learned (`ok`: their rows of the results table, `histories`: their
    curves); nothing when none learned. Returns the files written."""
    if not len(ok):
        return []
    folder = Path(out_dir) / "figures"

    def save(fig, name: str) -> Path:
        # laid out by tight_layout when built (the cell's name on a title line of its own):
        # saved as they are, without bbox_inches="tight"'s second draw (tests/test_reports.py
        # checks that nothing they draw is cut off)
        return plots.save_figure(fig, folder / f"{name}{plots.FIGURE_SUFFIX}", tight=False)

    written = [save(plots_repetitions.mean_loss_curve(histories, title), "mean_loss"),
               save(plots_repetitions.mean_accuracy_curve(histories, title), "mean_accuracy")]
    classes = json.loads(ok["classes"].iloc[0])
    tail = json.loads(ok["tail_classes"].iloc[0])
    names = class_metric_names(classes)
    values = ok.reindex(columns=names).astype(float)
    stds = values.std(ddof=1) if len(ok) > 1 else pd.Series(np.nan, index=names)
    fig = plots_repetitions.per_class_accuracy_errorbars(
        values.mean().tolist(), stds.tolist(), classes, tail, title, n=len(ok),
        cut=VARIANTS.meta(ok["variant"].iloc[0]).get("cuts", True))
    written.append(save(fig, "per_class_accuracy_mean"))
    confusion, n = pooled_json(ok, "confusion")
    if confusion is not None:
        fig = plots.confusion_figure(np.asarray(confusion), classes, title, normalized=True,
                                     pooled=n)
        written.append(save(fig, "confusion_normalized"))
    pooled, n = pooled_calibration(ok)
    if pooled:
        written.append(save(plots_repetitions.reliability_diagram(pooled, title, n), "reliability"))
    return written


def _recorded(ok: pd.DataFrame, column: str) -> list:
    """The JSON values of `column` (a results-table column of JSON text) that were recorded."""
    return [json.loads(v) for v in ok.get(column, pd.Series(dtype=str))
            if isinstance(v, str) and v and v != "null"]


def pooled_json(ok: pd.DataFrame, column: str) -> tuple[list | None, int]:
    """The arrays in `column` of the repetitions in `ok` that recorded it, summed, and how
    many they are; (None, 0) when none did."""
    recorded = _recorded(ok, column)
    if not recorded:
        return None, 0
    return np.sum(recorded, axis=0).tolist(), len(recorded)


def pooled_calibration(ok: pd.DataFrame) -> tuple[dict[str, list[float]] | None, int]:
    """The reliability bins of the repetitions in `ok` that recorded them (the results
    table's `calibration` JSON), summed, and how many they are; (None, 0) when none did."""
    recorded = _recorded(ok, "calibration")
    if not recorded:
        return None, 0
    return {k: np.sum([b[k] for b in recorded], axis=0).tolist() for k in recorded[0]}, \
        len(recorded)
