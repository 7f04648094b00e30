"""tracking.plots over repetitions (seeds): mean ± std curves and per-class error bars, the
plotted numbers checked against means and sample stds worked out by hand, and real PNGs."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pandas as pd
import pytest

from tracking import plots, plots_repetitions
from tracking.artifacts import pooled_calibration

CLASSES = ["airplane", "automobile", "bird", "cat", "deer"]
TAIL = [0, 1]


def assert_readable_png(data: bytes) -> None:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    w, h = struct.unpack(">II", data[16:24])  # IHDR width, height
    assert 400 <= w <= 3000 and 250 <= h <= 3000, (w, h)
    assert len(data) > 5000  # an empty canvas compresses to far less


def epoch(train_acc: float, test_acc: float, train_loss: float = 1.0,
          test_loss: float = 1.2) -> dict[str, float]:
    return {"train_loss": train_loss, "train_acc": train_acc,
            "test_loss": test_loss, "test_acc": test_acc}


# three repetitions, three epochs each. Train accuracy at epoch 1 is 0.5, 0.6, 0.7:
# mean 60 %, sample std sqrt(((-10)^2 + 0 + 10^2) / 2) = 10 %.
THREE = [
    [epoch(0.5, 0.40, 2.0, 2.2), epoch(0.6, 0.50, 1.5, 1.8), epoch(0.7, 0.55, 1.0, 1.6)],
    [epoch(0.6, 0.45, 2.2, 2.4), epoch(0.7, 0.55, 1.6, 1.9), epoch(0.8, 0.60, 1.1, 1.7)],
    [epoch(0.7, 0.50, 2.4, 2.6), epoch(0.8, 0.60, 1.7, 2.0), epoch(0.9, 0.65, 1.2, 1.8)],
]


def line(fig, label: str):
    (found,) = [ln for ln in fig.axes[0].lines if ln.get_label() == label]
    return found


def bar_container(fig):
    from matplotlib.container import BarContainer

    (bars,) = [c for c in fig.axes[0].containers if isinstance(c, BarContainer)]
    return bars


def band_extent(fig, index: int, x: float) -> tuple[float, float]:
    """The lowest and highest y of band `index` at epoch `x`."""
    vertices = np.concatenate([p.vertices for p in fig.axes[0].collections[index].get_paths()])
    ys = vertices[np.isclose(vertices[:, 0], x), 1]
    return float(ys.min()), float(ys.max())


def test_mean_accuracy_line_is_the_hand_mean_in_percent():
    fig = plots_repetitions.mean_accuracy_curve(THREE, "cnn · long-tail · none")
    np.testing.assert_array_equal(line(fig, "train").get_xdata(), [1, 2, 3])
    np.testing.assert_allclose(line(fig, "train").get_ydata(), [60, 70, 80])
    np.testing.assert_allclose(line(fig, "test").get_ydata(), [45, 55, 60])
    ax = fig.axes[0]
    assert "cnn · long-tail · none" in ax.get_title() and ax.get_ylim() == (0, 100)
    assert ax.get_legend().get_title().get_text() == "mean ± std over 3 repetitions"
    assert_readable_png(plots.png_bytes(fig))


def test_band_is_one_sample_std_either_side():
    fig = plots_repetitions.mean_accuracy_curve(THREE, "t")
    assert len(fig.axes[0].collections) == 2  # one band for train, one for test
    # train epoch 1: 60 ± 10 (ddof=1; ddof=0 would give ± 8.16)
    assert band_extent(fig, 0, 1) == pytest.approx((50, 70))
    # test epoch 3: 0.55, 0.60, 0.65 -> 60 ± 5
    assert band_extent(fig, 1, 3) == pytest.approx((55, 65))


def test_mean_loss_is_not_scaled():
    fig = plots_repetitions.mean_loss_curve(THREE, "t")
    np.testing.assert_allclose(line(fig, "train").get_ydata(), [2.2, 1.6, 1.1])
    np.testing.assert_allclose(line(fig, "test").get_ydata(), [2.4, 1.9, 1.7])
    assert band_extent(fig, 0, 1) == pytest.approx((2.0, 2.4))  # 2.2 ± 0.2
    assert "loss" in fig.axes[0].get_ylabel()
    assert_readable_png(plots.png_bytes(fig))


def test_one_repetition_draws_the_line_and_no_band():
    fig = plots_repetitions.mean_accuracy_curve(THREE[:1], "t")
    np.testing.assert_allclose(line(fig, "train").get_ydata(), [50, 60, 70])
    assert len(fig.axes[0].collections) == 0
    assert "1 repetition" in fig.axes[0].get_legend().get_title().get_text()
    assert_readable_png(plots.png_bytes(fig))


def test_unequal_lengths_average_over_the_repetitions_that_reached_the_epoch():
    # lengths 3, 2, 1: epoch 1 over three, epoch 2 over two, epoch 3 over one
    histories = [THREE[0], THREE[1][:2], THREE[2][:1]]
    fig = plots_repetitions.mean_accuracy_curve(histories, "t")
    np.testing.assert_allclose(line(fig, "train").get_ydata(), [60, 65, 70])
    np.testing.assert_allclose(line(fig, "test").get_ydata(), [45, 52.5, 55])
    # a band where two or more repetitions remain; none at epoch 3, where one is left
    assert band_extent(fig, 0, 1) == pytest.approx((50, 70))
    sd = 100 * np.std([0.6, 0.7], ddof=1)
    assert band_extent(fig, 0, 2) == pytest.approx((65 - sd, 65 + sd))
    vertices = np.concatenate([p.vertices for p in fig.axes[0].collections[0].get_paths()])
    assert not np.isclose(vertices[:, 0], 3).any()
    assert "after epoch 1" in fig.axes[0].get_legend().get_title().get_text()
    assert_readable_png(plots.png_bytes(fig))


def test_a_missing_value_drops_out_of_that_epochs_mean():
    histories = [[epoch(0.5, 0.4)], [epoch(0.7, math.nan)], [{"train_acc": 0.9}]]
    fig = plots_repetitions.mean_accuracy_curve(histories, "t")
    np.testing.assert_allclose(line(fig, "train").get_ydata(), [70])
    np.testing.assert_allclose(line(fig, "test").get_ydata(), [40])
    assert len(fig.axes[0].collections) == 1  # test has one value: no band


def test_no_epochs_says_so_and_a_bad_what_is_refused():
    fig = plots_repetitions.mean_loss_curve([[], []], "t")
    assert not fig.axes[0].lines
    assert any("no epochs" in t.get_text() for t in fig.axes[0].texts)
    assert plots.png_bytes(fig)[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="loss"):
        plots_repetitions.mean_curves(THREE, "t", "acc")


def test_per_class_error_bars_are_mean_plus_minus_std_in_percent():
    means = [0.30, 0.40, 0.70, 0.80, 0.90]
    stds = [0.05, math.nan, 0.10, 0.02, 0.15]  # automobile: no spread measured
    fig = plots_repetitions.per_class_accuracy_errorbars(means, stds, CLASSES, TAIL,
                                                         "cnn · long-tail", 3)
    ax = fig.axes[0]
    bars = bar_container(fig)
    np.testing.assert_allclose([b.get_height() for b in bars], [30, 40, 70, 80, 90])
    segments = bars.errorbar.lines[2][0].get_segments()
    assert len(segments[1]) == 0  # NaN std: no error bar
    drawn = {int(round(s[0][0])): sorted(s[:, 1]) for s in segments if len(s)}
    assert sorted(drawn) == [0, 2, 3, 4]
    for i, (lo, hi) in drawn.items():
        assert (lo, hi) == pytest.approx((100 * (means[i] - stds[i]),
                                          100 * (means[i] + stds[i])))
    assert ax.get_ylim()[1] >= 105 + 8  # 90 + 15 fits, with room for its label
    assert [b.get_facecolor() for b in bars][:2] == [bars[0].get_facecolor()] * 2
    assert bars[0].get_facecolor() != bars[2].get_facecolor()  # tail apart from head
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["head class",
                                                                    "tail class (cut)"]
    assert "cnn · long-tail" in ax.get_title() and "3 repetitions" in ax.get_title()
    assert_readable_png(plots.png_bytes(fig))


def test_per_class_error_bars_with_one_repetition_and_a_missing_class():
    fig = plots_repetitions.per_class_accuracy_errorbars(
        [0.5, math.nan, 0.6, 0.7, 0.8], [math.nan] * 5, CLASSES, TAIL, "t", 1)
    ax = fig.axes[0]
    assert all(len(s) == 0 for s in bar_container(fig).errorbar.lines[2][0].get_segments())
    assert bar_container(fig)[1].get_height() == 0  # the missing class: an empty slot
    assert "–" in [t.get_text() for t in ax.texts]
    assert "1 repetition" in ax.get_title() and "repetitions" not in ax.get_title()
    balanced = plots_repetitions.per_class_accuracy_errorbars(
        [0.5] * 5, [0.1] * 5, CLASSES, TAIL, "t", 2, cut=False)  # a tail named, not cut
    assert [t.get_text() for t in balanced.axes[0].get_legend().get_texts()] == [
        "head class", "tail class (not cut here)"]
    assert_readable_png(plots.png_bytes(fig))
    with pytest.raises(ValueError):
        plots_repetitions.per_class_accuracy_errorbars([0.5], [0.1, 0.1], ["a"], [], "t", 2)


def test_reliability_diagram_pools_the_repetitions_bins(tmp_path):
    # two repetitions' bins (benchmark.metrics.calibration_bins), 15 bins: bin 14 holds 4 + 6
    # predictions, 3 + 6 right, confidence 3.8 + 5.8; bin 8 holds 2 + 0, 1 right, 1.2 summed
    def bins(count14, right14, conf14, count8, right8, conf8):
        b = {"count": [0.0] * 15, "correct": [0.0] * 15, "confidence": [0.0] * 15}
        b["count"][14], b["correct"][14], b["confidence"][14] = count14, right14, conf14
        b["count"][8], b["correct"][8], b["confidence"][8] = count8, right8, conf8
        return json.dumps(b)

    ok = pd.DataFrame({"calibration": [bins(4, 3, 3.8, 2, 1, 1.2), bins(6, 6, 5.8, 0, 0, 0),
                                       ""]})  # a repetition of an older layout: no bins
    pooled, n = pooled_calibration(ok)
    assert n == 2 and pooled["count"][14] == 10 and pooled["correct"][14] == 9
    fig = plots_repetitions.reliability_diagram(pooled, "cnn · exp · none", n)
    ax = fig.axes[0]
    bars = bar_container(fig)
    # accuracy per bin in percent: bin 14 90 %, bin 8 50 %, the empty bins 0
    heights = [b.get_height() for b in bars]
    assert heights[14] == pytest.approx(90.0) and heights[8] == pytest.approx(50.0)
    assert sum(heights) == pytest.approx(140.0)
    dots = line(fig, "mean confidence of the bin").get_ydata()
    assert dots[14] == pytest.approx(96.0) and dots[8] == pytest.approx(60.0)
    # pooled ECE: (|9 - 9.6| + |1 - 1.2|) / 12 = 0.8 / 12 = 6.7 %
    assert "ECE 6.7%" in ax.get_title() and "2 repetitions pooled" in ax.get_title()
    assert_readable_png(plots.png_bytes(fig))
    assert pooled_calibration(ok.iloc[2:]) == (None, 0)


def test_figures_are_not_kept_alive_by_pyplot():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plots_repetitions.mean_accuracy_curve(THREE, "t")
    plots_repetitions.per_class_accuracy_errorbars([0.5] * 5, [0.1] * 5, CLASSES, TAIL, "t", 3)
    assert plt.get_fignums() == before  # nothing to plt.close: Figure, not pyplot.figure
