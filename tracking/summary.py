"""The figures of a cell run, over its repetitions: mean curves with a ±std band and the
per-class accuracy with error bars. Plain data in (histories, the cell's results rows),
PNG files out; the runner logs the folder on the cell run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.metrics import class_metric_names
from tracking import plots


def write_cell_summary(out_dir: Path, title: str, histories: list[list[dict[str, float]]],
                       ok: pd.DataFrame) -> list[Path]:
    """figures/mean_{loss,accuracy}.png and figures/per_class_accuracy_mean.png from the
    repetitions that learned (`ok`: their rows of the results table, `histories`: their
    curves); nothing when none learned. Returns the files written."""
    if not len(ok):
        return []
    folder = Path(out_dir) / "figures"
    written = [plots.save_png(plots.mean_loss_curve(histories, title),
                              folder / "mean_loss.png"),
               plots.save_png(plots.mean_accuracy_curve(histories, title),
                              folder / "mean_accuracy.png")]
    classes = json.loads(ok["classes"].iloc[0])
    tail = json.loads(ok["tail_classes"].iloc[0])
    names = class_metric_names(classes)
    values = ok.reindex(columns=names).astype(float)
    stds = values.std(ddof=1) if len(ok) > 1 else pd.Series(np.nan, index=names)
    fig = plots.per_class_accuracy_errorbars(values.mean().tolist(), stds.tolist(), classes,
                                             tail, title, n=len(ok))
    written.append(plots.save_png(fig, folder / "per_class_accuracy_mean.png"))
    return written
