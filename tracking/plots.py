"""Figures for one cell and across cells, as matplotlib Figures: pure, nothing is trained here.

Figures are built with `matplotlib.figure.Figure`, not `pyplot.figure`, so none is kept alive
by pyplot's figure registry when a grid renders many cells. The Agg backend is chosen before
anything can import pyplot (scikit-learn's ConfusionMatrixDisplay does) so rendering works
on a headless machine.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402

from benchmark.metrics import normalize_rows  # noqa: E402

HEAD_COLOR, TAIL_COLOR = "#4C72B0", "#DD8452"  # blue head, orange tail, in every figure
TRAIN_COLOR, TEST_COLOR = "#4C72B0", "#C44E52"
REF_COLOR = "#9A9A9A"  # the reference study's numbers: grey, beside ours
DPI = 110  # ~900 px wide for the 8-inch figures: sharp in a report, small in MLflow
# a run's figures in MLflow: vector, so sharp at any zoom in the UI (which shows SVG) and in a
# paper, and cheaper to write than the PNG (what a cell's recording costs is mostly figures);
# their text as SVG text (svg.fonttype "none"), which a reader can select, search and edit:
# 17% cheaper to write than glyph paths, drawn in DejaVu Sans or, where the viewer lacks it,
# in the next sans-serif font of matplotlib's list (all narrower, so nothing runs over)
FIGURE_SUFFIX = ".svg"
SVG_RC = {"svg.fonttype": "none"}


def fit_layout(fig: Figure) -> Figure:
    """Lay the figure out once (tight_layout) and keep that layout: a figure that keeps its
    layout engine is drawn twice by savefig (a dry run for the engine, then the render)."""
    fig.tight_layout()
    fig.set_layout_engine(None)
    return fig


def png_bytes(fig: Figure, tight: bool = True) -> bytes:
    """The figure as PNG bytes (for an HTML data URI or an MLflow upload). `tight`: cropped
    to what it draws (bbox_inches="tight": everything shows, a legend outside the axes too,
    at the price of a second draw); False for a figure that `tight_layout` already fitted
    into its canvas."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight" if tight else None)
    return buf.getvalue()


def save_figure(fig: Figure, path: Path, tight: bool = True) -> Path:
    """Write the figure in the format its suffix names (FIGURE_SUFFIX for a run's figures,
    .png at DPI), creating its folder; `tight` as in png_bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    svg = path.suffix == ".svg"
    with matplotlib.rc_context(SVG_RC if svg else {}):
        fig.savefig(path, dpi=DPI, bbox_inches="tight" if tight else None,
                    metadata={"Date": None} if svg else None)  # the same bytes each time
    return path


def confusion_figure(cm: np.ndarray, classes: list[str], title: str,
                     normalized: bool = False, pooled: int = 0) -> Figure:
    """The confusion matrix (rows true, columns predicted), as counts or row-normalised;
    `pooled`: how many repetitions' matrices `cm` sums (0: one)."""
    n = len(classes)
    size = max(6.0, 0.65 * n + 2.5)  # cells big enough for a 4-character number
    fig = Figure(figsize=(size, size))
    ax = fig.add_subplot()
    values = normalize_rows(cm) if normalized else cm
    disp = ConfusionMatrixDisplay(values, display_labels=classes)
    disp.plot(ax=ax, cmap="Blues", xticks_rotation=45, colorbar=False,
              values_format=".2f" if normalized else "d",
              im_kw={"vmin": 0, "vmax": 1} if normalized else None,
              text_kw={"fontsize": 9 if n > 8 else 10})
    # no colour bar: every cell is written in, and one cost 13% of a cell's figures
    # right-aligned, anchored labels sit under their own column when rotated
    for label in ax.get_xticklabels():
        label.set(ha="right", rotation_mode="anchor")
    kind = ("confusion matrix, row-normalised (diagonal = recall)" if normalized
            else "confusion matrix, test images")
    if pooled:
        kind += f", {pooled} repetition{'s' * (pooled != 1)} summed"
    ax.set(title=f"{title}\n{kind}", xlabel="predicted class", ylabel="true class")
    return fit_layout(fig)


def _head_tail_legend(ax, loc: str = "upper right", cut: bool = True, **kwargs) -> None:
    """`cut`: whether the tail classes were cut in the training set (not on a balanced one)."""
    tail = "tail class (cut)" if cut else "tail class (not cut here)"
    ax.legend(handles=[Patch(color=HEAD_COLOR, label="head class"),
                       Patch(color=TAIL_COLOR, label=tail)], loc=loc, **kwargs)


def _text_color(value: float, vmax: float) -> str:
    # white on the dark end of viridis, black on the light end
    return "white" if value < 0.55 * vmax else "black"


def per_class_heatmap(cells: list[str], classes: list[str], values: np.ndarray,
                      title: str, tail_classes: list[int] | None = None) -> Figure:
    """Cells x classes test accuracy (percent, NaN = not measured), every value written in."""
    values = np.asarray(values, dtype=float)
    fig = Figure(figsize=(max(8.0, 0.85 * len(classes) + 3.5), max(3.0, 0.5 * len(cells) + 2)))
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#EEEEEE")  # unmeasured: grey
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0, vmax=100, aspect="auto")
    for (r, c), v in np.ndenumerate(values):
        ax.text(c, r, "–" if math.isnan(v) else f"{v:.0f}", ha="center", va="center",
                fontsize=9, color="#555555" if math.isnan(v) else _text_color(v, 100))
    tail = set(tail_classes or [])
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right",
                  rotation_mode="anchor")
    for i, label in enumerate(ax.get_xticklabels()):
        if i in tail:  # the cut classes' names in the tail colour
            label.set(color=TAIL_COLOR, fontweight="bold")
    ax.set_yticks(range(len(cells)), cells)
    caption = " (tail classes in orange)" if tail else ""
    ax.set(title=title, xlabel=f"class{caption}", ylabel="cell")
    fig.colorbar(im, ax=ax, label="test accuracy (%)", fraction=0.04)
    return fit_layout(fig)


def cell_accuracy_bars(cells: list[str], measured: list[float | None],
                       reference: list[float | None], title: str,
                       notes: list[str] | None = None,
                       errors: list[float | None] | None = None) -> Figure:
    """Test accuracy per cell (percent), the reference's number beside ours where known.

    `notes` (e.g. "missing", "failed") is written in place of a measured bar that is absent;
    `errors` (e.g. the std over repetitions, in points) draws an error bar on each measured one.
    """
    n = len(cells)
    fig = Figure(figsize=(9, max(3.0, 0.55 * n + 1.6)))
    ax = fig.add_subplot()
    y = np.arange(n)
    h = 0.38
    ours = [m if m is not None else 0.0 for m in measured]
    # a NaN draws no error bar (one repetition: no spread); bar_label moves past the bar's
    # error bar, so the number stays readable
    xerr = None if errors is None else [math.nan if e is None else e for e in errors]
    bars = ax.barh(y - h / 2, ours, h, color=TEST_COLOR, label="measured", xerr=xerr,
                   error_kw={"ecolor": "#333333", "capsize": 3, "lw": 1})
    ax.bar_label(bars, labels=[f"{m:.1f}" if m is not None else "" for m in measured],
                 fontsize=8, padding=2)
    refs = [r if r is not None else 0.0 for r in reference]
    rbars = ax.barh(y + h / 2, refs, h, color=REF_COLOR, label="reference")
    ax.bar_label(rbars, labels=[f"{r:.1f}" if r is not None else "" for r in reference],
                 fontsize=8, padding=2, color="#555555")
    for i, (m, r) in enumerate(zip(measured, reference, strict=True)):
        if m is None and notes and notes[i]:
            ax.text(1, i - h / 2, notes[i], va="center", fontsize=8, color="#B22222",
                    style="italic")
        if r is None:  # say so, or an empty slot reads as a reference of 0
            ax.text(1, i + h / 2, "no reference", va="center", fontsize=8, color="#777777",
                    style="italic")
    ax.set_yticks(y, cells)
    ax.invert_yaxis()  # grid order reads top to bottom
    ax.set(title=title, xlabel="test accuracy (%)", xlim=(0, 105))
    ax.grid(axis="x", alpha=0.3)
    # under the axes: inside, it would cover a bar near 100 %
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1 - 0.3 / n), ncol=2, frameon=False)
    return fit_layout(fig)
