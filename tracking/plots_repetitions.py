"""Figures over a cell's repetitions (seeds): mean curves with a ±1 std band, and the
per-class accuracy with error bars. Same conventions as tracking.plots (Figure objects,
Agg, the head/tail colours)."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from benchmark.metrics import expected_calibration_error
from tracking.plots import (
    HEAD_COLOR,
    TAIL_COLOR,
    TEST_COLOR,
    TRAIN_COLOR,
    _head_tail_legend,
    fit_layout,
)


def _repetitions(n: int) -> str:
    return f"{n} repetition" if n == 1 else f"{n} repetitions"


def _epoch_stats(histories: list[list[dict[str, float]]], key: str,
                 scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Per epoch (history[i] is epoch i + 1): the mean and sample std (ddof=1) of `key` over
    the repetitions that reached that epoch and recorded it; std is NaN below two of them."""
    length = max((len(h) for h in histories), default=0)
    means, stds = np.full(length, math.nan), np.full(length, math.nan)
    for i in range(length):
        values = [h[i][key] * scale for h in histories
                  if i < len(h) and h[i].get(key) is not None and not math.isnan(h[i][key])]
        if values:
            means[i] = np.mean(values)
        if len(values) >= 2:
            stds[i] = np.std(values, ddof=1)
    return means, stds


def mean_curves(histories: list[list[dict[str, float]]], title: str, what: str) -> Figure:
    """Train and test curves over repetitions: the per-epoch mean as a line, ±1 sample std
    (ddof=1) as a band around it (none with a single repetition). `what` is "loss" or
    "accuracy" (drawn in percent; histories hold fractions).

    Each history is one repetition's list of per-epoch dicts (train_loss, train_acc,
    test_loss, test_acc), epoch i + 1 being history[i]. A repetition that stopped early
    simply drops out of the later epochs' mean and std.
    """
    if what not in ("loss", "accuracy"):
        raise ValueError(f"what must be 'loss' or 'accuracy', not {what!r}")
    key, scale, ylabel = (("loss", 1.0, "cross-entropy loss") if what == "loss"
                          else ("acc", 100.0, "accuracy (%)"))
    n = len(histories)
    lengths = [len(h) for h in histories]
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    x = np.arange(1, max(lengths, default=0) + 1)
    for split, color in (("train", TRAIN_COLOR), ("test", TEST_COLOR)):
        means, stds = _epoch_stats(histories, f"{split}_{key}", scale)
        if np.isnan(means).all():
            continue
        ax.plot(x, means, color=color, marker="o" if len(x) <= 30 else None, ms=4,
                label=split)
        if n >= 2 and np.isfinite(stds).any():  # NaN where one repetition is left: a gap
            ax.fill_between(x, means - stds, means + stds, color=color, alpha=0.2, lw=0)
    ax.set(title=f"{title} — {ylabel.split(' (')[0]}", xlabel="epoch", ylabel=ylabel)
    if what == "accuracy":
        ax.set_ylim(0, 100)
    if len(x):  # integer epoch ticks: "1.5 epochs" reads as a bug
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    if ax.lines:
        caption = (f"mean ± std over {_repetitions(n)}" if n >= 2
                   else f"{_repetitions(n)} (no spread to show)")
        if min(lengths) < max(lengths):
            caption += f"\nfewer repetitions after epoch {min(lengths)}"
        ax.legend(title=caption, title_fontsize=9)
    else:  # an empty frame would read as a plotting bug
        ax.text(0.5, 0.5, "no epochs recorded", transform=ax.transAxes, ha="center",
                color="#777777", style="italic")
    return fit_layout(fig)


def mean_loss_curve(histories: list[list[dict[str, float]]], title: str) -> Figure:
    """Train and test cross-entropy per epoch, mean ± std over repetitions."""
    return mean_curves(histories, title, "loss")


def mean_accuracy_curve(histories: list[list[dict[str, float]]], title: str) -> Figure:
    """Train and test accuracy per epoch (percent), mean ± std over repetitions."""
    return mean_curves(histories, title, "accuracy")


def per_class_accuracy_errorbars(means: list[float], stds: list[float], classes: list[str],
                                 tail_classes: list[int], title: str, n: int,
                                 cut: bool = True) -> Figure:
    """Mean accuracy per class over `n` repetitions (fractions in, percent drawn) with ±1 std
    error bars (a NaN std draws none), tail classes coloured apart from the head; `cut`:
    whether the training set cut them (False on a balanced one: the legend says so)."""
    if not len(means) == len(stds) == len(classes):
        raise ValueError(f"{len(means)} means, {len(stds)} stds, {len(classes)} classes")

    def pct(v: float | None) -> float:
        return math.nan if v is None or math.isnan(v) else v * 100

    mean_pct, std_pct = [pct(m) for m in means], [pct(s) for s in stds]
    fig = Figure(figsize=(max(8.0, 0.75 * len(classes)), 4.8))
    ax = fig.add_subplot()
    tail = set(tail_classes)
    colors = [TAIL_COLOR if i in tail else HEAD_COLOR for i in range(len(classes))]
    heights = [0.0 if math.isnan(m) else m for m in mean_pct]
    # a NaN in yerr draws no error bar for that class; bar_label sits above the error bar
    bars = ax.bar(range(len(classes)), heights, color=colors, yerr=std_pct, capsize=3,
                  error_kw={"ecolor": "#333333", "elinewidth": 1})
    ax.bar_label(bars, labels=["–" if math.isnan(m) else f"{m:.0f}" for m in mean_pct],
                 fontsize=8, padding=2)
    tops = [h + s for h, s in zip(heights, std_pct, strict=True) if not math.isnan(s)]
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right",
                  rotation_mode="anchor")
    ax.set(title=f"{title}\naccuracy per class, mean ± std over {_repetitions(n)}",
           xlabel="class", ylabel="test accuracy (%)",
           ylim=(0, max([108.0, *(t + 8 for t in tops)])))  # headroom for the bar labels
    ax.grid(axis="y", alpha=0.3)
    # beside the axes: inside, it hid the bar labels and error bars that reach 100%
    _head_tail_legend(ax, loc="upper left", cut=cut, bbox_to_anchor=(1.01, 1),
                      fontsize="small")
    return fit_layout(fig)


def reliability_diagram(bins: dict[str, list[float]], title: str, n: int) -> Figure:
    """Reliability diagram of `n` repetitions' test predictions pooled (bins: summed
    benchmark.metrics.calibration_bins): per equal-width confidence bin, the accuracy of its
    predictions as a bar, their mean confidence as a dot, the diagonal as perfect calibration;
    below, how many predictions each bin holds. The pooled ECE is in the title."""
    count = np.asarray(bins["count"], dtype=float)
    k = len(count)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(count > 0, np.asarray(bins["correct"]) / count, np.nan) * 100
        conf = np.where(count > 0, np.asarray(bins["confidence"]) / count, np.nan) * 100
    edges = np.linspace(0, 100, k + 1)
    mids, width = (edges[:-1] + edges[1:]) / 2, 100 / k
    fig = Figure(figsize=(6, 6.5))
    ax, hist = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(mids, np.nan_to_num(acc), width=width * 0.95, color=TEST_COLOR, alpha=0.8,
           label="accuracy of the bin")
    ax.plot(mids, conf, "o", color="#333333", ms=4, label="mean confidence of the bin")
    ax.plot([0, 100], [0, 100], "--", color="#999999", lw=1, label="calibrated")
    ece = expected_calibration_error(bins)
    ax.set(title=f"{title}\nreliability, {_repetitions(n)} pooled: ECE "
                 f"{ece * 100:.1f}% ({k} bins)", ylabel="accuracy (%)", xlim=(0, 100),
           ylim=(0, 100))
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    hist.bar(mids, count, width=width * 0.95, color=HEAD_COLOR)
    hist.set(xlabel="confidence (%)", ylabel="predictions")
    hist.grid(alpha=0.3)
    return fit_layout(fig)
