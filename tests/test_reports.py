"""benchmark.metrics, tracking.plots and tracking.report: numbers by hand, real PNGs, and the
cross-cell report built from a results table written by hand (a row per repetition)."""

from __future__ import annotations

import json
import math
import re
import struct

import numpy as np
import pandas as pd
import pytest
from conftest import text_off_canvas
from scipy import stats as st

from benchmark.metrics import (
    calibration_bins,
    cell_metrics,
    class_metric_names,
    expected_calibration_error,
    metric_name,
    normalize_rows,
    shot_groups,
)
from tracking import plots
from tracking.artifacts import write_repetition_reports
from tracking.findings import expected_cells
from tracking.report import build_report, results_table, tuned_text

CIFAR = ["airplane", "automobile", "bird", "cat", "deer",
         "dog", "frog", "horse", "ship", "truck"]
TAIL = [0, 1, 2, 3, 4]

# 3 classes, 10 test images. Rows true, columns predicted:
#        a  b  c
#   a  [ 2, 1, 1 ]   recall 2/4
#   b  [ 1, 2, 0 ]   recall 2/3
#   c  [ 0, 1, 2 ]   recall 2/3
Y_TRUE = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
Y_PRED = np.array([0, 0, 1, 2, 1, 1, 0, 2, 2, 1])


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])  # IHDR width, height


def assert_readable_png(data: bytes) -> None:
    w, h = png_size(data)
    assert 400 <= w <= 3000 and 250 <= h <= 3000, (w, h)
    assert len(data) > 5000  # an empty canvas compresses to far less


# ---------------------------------------------------------------- metrics

def test_cell_metrics_by_hand():
    m = cell_metrics(Y_TRUE, Y_PRED, ["a", "b", "c"], tail_classes=[0])
    np.testing.assert_array_equal(m.confusion, [[2, 1, 1], [1, 2, 0], [0, 1, 2]])
    s = m.scalars
    assert s["tail_acc"] == pytest.approx(2 / 4)  # class a: 2 of its 4 images
    assert s["head_acc"] == pytest.approx(4 / 6)  # classes b, c pooled: (2 + 2) / (3 + 3)
    assert s["tail_gap"] == pytest.approx(4 / 6 - 2 / 4)
    assert s["balanced_acc"] == pytest.approx((1 / 2 + 2 / 3 + 2 / 3) / 3)
    # precision = diagonal / column total: a 2/3, b 2/4, c 2/3
    # F1 = 2pr/(p+r): a 2(2/3)(1/2)/(7/6) = 4/7; b 2(1/2)(2/3)/(7/6) = 4/7; c = 2/3
    # macro F1 = (4/7 + 4/7 + 2/3) / 3 = 38/63
    assert s["macro_f1"] == pytest.approx(38 / 63)
    assert (s["acc_a"], s["acc_b"], s["acc_c"]) == pytest.approx((1 / 2, 2 / 3, 2 / 3))
    assert m.report_dict["b"]["precision"] == pytest.approx(0.5)
    assert m.report_dict["accuracy"] == pytest.approx(0.6)
    assert "macro avg" in m.report_text and "0.603" in m.report_text
    assert m["scalars"] is m.scalars  # dict-style access works too


def test_pooled_head_acc_weights_images_not_classes():
    # head classes 1 (1 image, right) and 2 (3 images, all wrong): pooled 1/4, mean recall 1/2
    m = cell_metrics([1, 2, 2, 2, 0], [1, 0, 0, 0, 0], ["a", "b", "c"], [0])
    assert m.scalars["head_acc"] == pytest.approx(1 / 4)


def test_class_without_test_images_has_no_accuracy_and_empty_tail_is_nan():
    m = cell_metrics([0, 0, 1], [0, 1, 1], ["a", "b", "c"], [])
    assert "acc_c" not in m.scalars and m.confusion.shape == (3, 3)
    assert math.isnan(m.scalars["tail_acc"]) and m.scalars["head_acc"] == pytest.approx(2 / 3)


def test_metric_names_are_valid_mlflow_names():
    from mlflow.utils.validation import _validate_metric_name

    fashion = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    names = class_metric_names(fashion)
    assert names[0] == "acc_T-shirt_top" and names[-1] == "acc_Ankle_boot"
    for n in names + [metric_name("../x"), metric_name("é")]:
        _validate_metric_name(n)
    assert class_metric_names(["a b", "a/b"]) == ["acc_a_b_0", "acc_a_b_1"]  # no clash


def test_bad_labels_are_explained():
    with pytest.raises(ValueError, match="outside 0..2"):
        cell_metrics([0, 3], [0, 1], ["a", "b", "c"], [0])
    with pytest.raises(ValueError, match="tail classes"):
        cell_metrics([0, 1], [0, 1], ["a", "b", "c"], [5])


def test_expected_calibration_error_by_hand():
    # 15 bins of width 1/15, right-closed: 0.9 -> bin 13 (0.867, 0.933], 0.95 -> bin 14,
    # 0.58 and 0.59 -> bin 8 (0.533, 0.6], 0.3 -> bin 4 (0.267, 0.333]
    conf = np.array([0.9, 0.95, 0.58, 0.59, 0.3])
    y_true = np.array([0, 1, 2, 2, 0])
    y_pred = np.array([0, 0, 2, 2, 1])  # right, wrong, right, right, wrong
    m = cell_metrics(y_true, y_pred, ["a", "b", "c"], [0], confidence=conf)
    bins = m.calibration
    assert [i for i, n in enumerate(bins["count"]) if n] == [4, 8, 13, 14]
    assert bins["count"][8] == 2 and bins["correct"][8] == 2
    assert bins["confidence"][8] == pytest.approx(1.17)
    # |B|/N |acc - conf| per bin: (1 |0 - 0.3| + 2 |1 - 0.585| + 1 |1 - 0.9| + 1 |0 - 0.95|) / 5
    assert m.scalars["ece"] == pytest.approx((0.3 + 0.83 + 0.1 + 0.95) / 5)
    assert expected_calibration_error(bins) == m.scalars["ece"]
    # the edges: 1/15 is bin 0's top, 1.0 is in the last bin; all right at confidence 1: ECE 0
    edge = calibration_bins([1, 1], [1 / 15, 1.0])
    assert edge["count"][0] == 1 and edge["count"][14] == 1
    assert expected_calibration_error(calibration_bins([1, 1], [1.0, 1.0])) == 0.0
    assert "ece" not in cell_metrics(y_true, y_pred, ["a", "b", "c"], [0]).scalars
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        calibration_bins([1], [1.5])


def test_shot_groups_are_thirds_of_the_log_count_range():
    # counts 100, 10, 1: t = log(n / 1) / log(100) = 1, 1/2, 0
    assert shot_groups([100, 10, 1]) == {"many": [0], "medium": [1], "few": [2]}
    # CIFAR-10's exp rho=100 cut as Cao et al. round it (int(5000 * 0.01^(i/9))): classes 3
    # and 6 lie on the edges (1077.2 and 232.1 before rounding down) and stay on their side
    exp = [int(5000 * 0.01 ** (i / 9)) for i in range(10)]
    assert exp[3] == 1077 and exp[6] == 232
    assert shot_groups(exp) == {"many": [0, 1, 2, 3], "medium": [4, 5, 6], "few": [7, 8, 9]}
    # a quick profile's subset (400 ... 4, rounded): the same split
    small = [round(400 * 0.01 ** (i / 9)) for i in range(10)]
    assert shot_groups(small) == {"many": [0, 1, 2, 3], "medium": [4, 5, 6], "few": [7, 8, 9]}
    # a step cut: head many, tail few, no medium; equal counts: no split at all
    assert shot_groups([50] * 5 + [500] * 5) == {"many": [5, 6, 7, 8, 9], "few": [0, 1, 2, 3, 4]}
    assert shot_groups([500] * 10) == {}
    # pooled accuracy per group: many = class a (2 of 4), medium b (2 of 3), few c (2 of 3)
    m = cell_metrics(Y_TRUE, Y_PRED, ["a", "b", "c"], [0], train_counts=[100, 10, 1])
    assert (m.scalars["many_acc"], m.scalars["medium_acc"], m.scalars["few_acc"]) == \
        pytest.approx((2 / 4, 2 / 3, 2 / 3))
    m = cell_metrics(Y_TRUE, Y_PRED, ["a", "b", "c"], [0], train_counts=[9, 9, 9])
    assert not {"many_acc", "medium_acc", "few_acc"} & set(m.scalars)


def test_normalize_rows_keeps_empty_rows_zero():
    out = normalize_rows(np.array([[2, 2], [0, 0]]))
    np.testing.assert_allclose(out, [[0.5, 0.5], [0, 0]])


# ---------------------------------------------------------------- figures

def predictions(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(10), 50)
    # tail classes right 30% of the time, head 70%
    right = rng.random(y.size) < np.where(y < 5, 0.3, 0.7)
    return y, np.where(right, y, rng.integers(0, 10, y.size))


def test_the_confusion_figures_render():
    y, p = predictions()
    m = cell_metrics(y, p, CIFAR, TAIL)
    title = "cnn · long-tail · flip+noise"
    figs = [plots.confusion_figure(m.confusion, CIFAR, title),
            plots.confusion_figure(m.confusion, CIFAR, title, normalized=True),
            plots.confusion_figure(3 * m.confusion, CIFAR, "resnet50 · long-tail · "
                                   "balanced-softmax", normalized=True, pooled=3)]
    assert figs[2].axes[0].get_title().endswith("3 repetitions summed")
    for fig in figs:
        assert " · long-tail · " in fig.axes[0].get_title()
        assert fig.axes[0].get_xlabel() and fig.axes[0].get_ylabel()
        assert_readable_png(plots.png_bytes(fig))
        # a cell saves these uncropped (tight=False): all they write is on the canvas
        assert_readable_png(plots.png_bytes(fig, tight=False))
        assert not text_off_canvas(fig), (fig.axes[0].get_title(), text_off_canvas(fig))


def test_the_cells_figures_draw_nothing_off_their_canvas():
    """The cell's figures are saved uncropped, as tight_layout fits them: with the longest
    cell name and Fashion-MNIST's longest class names, nothing they write reaches past the
    canvas."""
    from tracking import plots_repetitions as pr

    curves = [[{"train_loss": 1 / e, "train_acc": e / 10, "test_loss": 1.2 / e,
                "test_acc": e / 12} for e in range(1, 7)]] * 3
    title = "resnet32 · long-tail · balanced-softmax"
    fashion = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot"]
    y, p = predictions()
    m = cell_metrics(y, p, fashion, TAIL, confidence=np.linspace(0.1, 1, y.size))
    recall = [m.scalars[name] for name in class_metric_names(fashion)]
    for fig in (pr.mean_loss_curve(curves, title), pr.mean_accuracy_curve(curves, title),
                pr.per_class_accuracy_errorbars(recall, [0.05] * 10, fashion, TAIL, title, 3),
                pr.reliability_diagram(m.calibration, title, 3)):
        assert_readable_png(plots.png_bytes(fig, tight=False))
        assert not text_off_canvas(fig), (fig.axes[0].get_title(), text_off_canvas(fig))


def test_cross_cell_figures_render():
    cells = ["cnn · balanced · none", "rnn · long-tail · none (missing)"]
    values = np.array([np.linspace(40, 90, 10), np.full(10, np.nan)])
    assert_readable_png(plots.png_bytes(plots.per_class_heatmap(cells, CIFAR, values, "t", TAIL)))
    bars = plots.cell_accuracy_bars(cells, [70.0, None], [71.9, 42.0], "t", ["measured", "missing"])
    assert_readable_png(plots.png_bytes(bars))
    bars = plots.cell_accuracy_bars(cells, [70.0, None], [71.9, 42.0], "t", errors=[1.5, None])
    assert_readable_png(plots.png_bytes(bars))


def test_write_repetition_reports(tmp_path):
    y, p = predictions()
    m = cell_metrics(y, p, CIFAR, TAIL)
    write_repetition_reports(tmp_path, m, CIFAR)
    scalars = m.scalars
    assert not (tmp_path / "figures").exists()  # the cell draws them, over its repetitions
    report = json.loads((tmp_path / "reports" / "classification_report.json").read_text())
    assert report["airplane"]["support"] == 50
    assert "macro avg" in (tmp_path / "reports" / "classification_report.txt").read_text()
    lines = (tmp_path / "reports" / "confusion_matrix.csv").read_text().splitlines()
    assert len(lines) == 11 and lines[1].startswith("airplane,")
    assert sum(map(int, lines[1].split(",")[1:])) == 50
    assert scalars["tail_acc"] < scalars["head_acc"] and "acc_truck" in scalars


# ---------------------------------------------------------------- the cross-cell report

def spec(model, variant, augment, table=None, ref=None, seeds=3):
    name = f"{model} · {variant} · {augment}"
    return {"key": name.replace(" · ", "-"), "name": name, "model": model, "variant": variant,
            "remedy": augment, "table": table, "reference": ref or {}, "seeds": seeds}


EXPECTED = [
    spec("cnn", "balanced", "none", 1, {"train_acc": 86.4, "test_acc": 71.9}),
    spec("rnn", "balanced", "none", 2, {"train_acc": 100.0, "test_acc": 52.8}),
    spec("cnn", "long-tail", "none", 3, {"train_acc": 100.0, "test_acc": 53.4}, seeds=4),
    spec("rnn", "long-tail", "none", 3, {"train_acc": 97.3, "test_acc": 42.0}),
    spec("resnet50", "long-tail", "flip+noise", 4, {"train_acc": 98.2, "test_acc": 67.4},
         seeds=1),
    spec("cnn", "long-tail", "flip+noise"),
]
CNN_B, RNN_B, CNN_LT, RNN_LT, RES_FN, CNN_FN = EXPECTED


def rep(cell, r, train=0.9, test=0.7, head=0.7, tail=0.7, outcome="ok", reason="",
        status="FINISHED", dataset="cifar10", profile="quick"):
    """One repetition's row of the results table, as tracking.results.load_results writes it;
    every class's accuracy is its part's (head or tail) accuracy."""
    row = {"model": cell["model"], "variant": cell["variant"], "remedy": cell["remedy"],
           "epochs": 6, "dataset": dataset, "profile": profile, "seeds": cell["seeds"],
           "seed": 0, "cell_key": cell["key"], "cell_name": cell["name"], "repetition": r,
           "rep_seed": 1000 + r, "status": status, "outcome": outcome, "reason": reason,
           "run_id": f"{cell['key']}-{r}", "cell_run_id": cell["key"], "final_lr": 0.01,
           "final_sigma": 0.05, "classes": json.dumps(CIFAR), "tail_classes": json.dumps(TAIL),
           "final_train_acc": train, "final_test_acc": test, "final_test_loss": 1.0,
           "balanced_acc": (head + tail) / 2, "head_acc": head, "tail_acc": tail,
           "tail_gap": head - tail, "macro_f1": (head + tail) / 2 - 0.05}
    names = class_metric_names(CIFAR)
    return row | {n: tail if i in TAIL else head for i, n in enumerate(names)}


def results() -> pd.DataFrame:
    rows = [
        # cnn balanced: train 89/90/91, test 69/70/71 (means 90.0, 70.0, std 1.0)
        *(rep(CNN_B, r, 0.89 + 0.01 * r, 0.69 + 0.01 * r, 0.72 + 0.01 * r, 0.68 + 0.01 * r,
              profile="paper") for r in range(3)),
        rep(RNN_B, 0, outcome="error", status="FAILED",
            reason="RuntimeError: CUDA out of memory. Tried to allocate 2 GiB\nTraceback ..."),
        rep(RNN_B, 1, outcome="error", status="KILLED"),
        # cnn long-tail: three that learned (test 49/50/51) and a collapsed one that must
        # change nothing; a repetition 4 beyond the 4 asked for, left by a longer run
        *(rep(CNN_LT, r, 0.99, 0.49 + 0.01 * r, 0.80 + 0.02 * r, tail, profile="quick")
          for r, tail in enumerate([0.20, 0.25, 0.21])),
        rep(CNN_LT, 3, 0.10, 0.10, 0.20, 0.0, outcome="did-not-learn",
            reason="predicted 'frog' for 99% of the test images"),
        rep(CNN_LT, 4, 0.99, 0.99),
        rep(RES_FN, 0, 0.95, 0.55, 0.60, 0.50),
        # cnn flip+noise: tail 50/52/54, gap 20/19/18: narrower than cnn long-tail's
        *(rep(CNN_FN, r, 0.97, 0.55 + 0.01 * r, 0.70 + 0.01 * r, 0.50 + 0.02 * r)
          for r in range(3)),
        rep(spec("cnn", "balanced", "none") | {"key": "stale"}, 0, 0.1, 0.1),
    ]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    return build_report(results(), EXPECTED, "cifar10/quick", "sqlite:///runs/mlflow.db",
                        out_root=out)


def section(text: str, heading: str) -> str:
    return text.split(heading, 1)[1].split("\n## ", 1)[0]


def cells_of(md_section: str) -> list[list[str]]:
    """The rows of the Markdown tables in a section, as lists of stripped cells."""
    return [[c.strip() for c in line.strip("|").split("|")]
            for line in md_section.splitlines() if line.startswith("| ")]


def test_report_files(report):
    md = report
    assert md == md.parent / "report.md" and md.parent.name == "cifar10_quick"
    html = (md.parent / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "<table>" in html
    assert "src=\"figures/" not in html  # self-contained: nothing outside the file
    for name in ["per_class_heatmap.png", "test_accuracy.png"]:
        assert_readable_png((md.parent / "figures" / name).read_bytes())
        assert f"(figures/{name})" in md.read_text()
    assert '<td class="num">70.0 ± 1.0 (n=3)</td>' in html  # numbers right-aligned


def test_report_tables(report):
    text = report.read_text()
    assert ("6 cells in this run; 4 measured, 1 failed, 1 missing; 1 other cells have results"
            in text)
    t1 = cells_of(section(text, "### Table 1"))
    # cnn balanced: train 90.0 ± 1.0 vs 86.4 (+3.6), test 70.0 ± 1.0 vs 71.9 (−1.9)
    assert t1[1] == ["cnn · balanced · none", "measured", "3 of 3", "6", "90.0 ± 1.0 (n=3)",
                     "86.4", "+3.6", "70.0 ± 1.0 (n=3)", "71.9", "−1.9", "cifar10 · paper"]
    t2 = cells_of(section(text, "### Table 2"))
    assert t2[1][:5] == ["rnn · balanced · none",
                         "failed: RuntimeError: CUDA out of memory. Tried to allocate 2 GiB",
                         "0 of 3", "6", "—"]
    t3 = cells_of(section(text, "### Table 3"))
    # the collapsed repetition counts neither in n nor in the means (it would pull test
    # accuracy to 40.0), nor does repetition 4, beyond the 4 asked for
    assert t3[1][:10] == ["cnn · long-tail · none", "measured", "3 of 4", "6",
                          "99.0 ± 0.0 (n=3)", "100.0", "−1.0", "50.0 ± 1.0 (n=3)", "53.4",
                          "−3.4"]
    assert t3[1][10] == "cifar10 · quick — not comparable in absolute terms"
    assert t3[2][:5] == ["rnn · long-tail · none", "missing", "0 of 3", "—", "—"]
    t4 = cells_of(section(text, "### Table 4"))
    assert t4[1][2:5] == ["1 of 1", "6", "95.0 (n=1)"]
    extra = cells_of(section(text, "## Cells the reference did not run"))
    assert extra[1][:3] == ["cnn · long-tail · flip+noise", "measured", "3 of 3"]
    assert extra[1][5:7] == ["—", "—"]  # no reference, no Δ


def test_head_tail_table(report):
    ht = {r[0]: r for r in cells_of(section(report.read_text(), "## Head and tail"))}
    # head 72/73/74, tail 68/69/70, gap 4 each; balanced = (head + tail) / 2, F1 5 below
    assert ht["cnn · balanced · none"][2:] == ["3 of 3", "73.0 ± 1.0 (n=3)", "69.0 ± 1.0 (n=3)",
                                               "4.0 ± 0.0 (n=3)", "71.0 ± 1.0 (n=3)",
                                               "66.0 ± 1.0 (n=3)"]
    assert ht["cnn · long-tail · none"][3:5] == ["82.0 ± 2.0 (n=3)", "22.0 ± 2.6 (n=3)"]
    assert ht["resnet50 · long-tail · flip+noise"][3:6] == ["60.0 (n=1)", "50.0 (n=1)",
                                                            "10.0 (n=1)"]
    assert ht["rnn · long-tail · none"][1:4] == ["missing", "0 of 3", "—"]


def finding(report, claim: str) -> list[str]:
    rows = cells_of(section(report.read_text(), "## Findings"))
    return next(r for r in rows if r[0] == claim)


def test_report_findings(report):
    _, verdict, numbers, why = finding(report, "cnn: long-tail test accuracy below balanced")
    ci = st.ttest_ind([0.49, 0.50, 0.51], [0.69, 0.70, 0.71], equal_var=False) \
        .confidence_interval()
    assert verdict == "holds" and why == ""
    assert numbers.startswith("balanced · none 70.0 ± 1.0 (n=3) vs long-tail · none "
                              "50.0 ± 1.0 (n=3); Δ −20.0 pts, 95% CI "
                              f"[−{-100 * ci.low:.1f}, −{-100 * ci.high:.1f}], p ")
    assert numbers.endswith("(Welch, n = 3 vs 3)")
    assert finding(report, "rnn: long-tail test accuracy below balanced")[1:] == [
        "inconclusive", "—", "rnn · balanced · none has no repetition that learned; "
                             "rnn · long-tail · none has not run"]
    tail = finding(report, "cnn · long-tail · none: tail accuracy below head")
    assert tail[1] == "holds" and "(paired t, n = 3)" in tail[2]
    assert "balanced control's gap 4.0 ± 0.0 (n=3)" in tail[2]
    one = finding(report, "resnet50 · long-tail · flip+noise: tail accuracy below head")
    assert one[1:] == ["inconclusive", "tail 50.0 (n=1) vs head 60.0 (n=1); Δ −10.0 pts "
                       "(paired t, n = 1)", "one repetition: no spread to test against; run "
                       "with --seeds 3 or more"]
    assert finding(report, "rnn · long-tail · none: tail accuracy below head")[3] == \
        "the cell has not run"
    assert finding(report, "cnn: flip+noise narrows the long-tail gap")[1] == "holds"
    assert finding(report, "cnn: flip+noise raises tail accuracy")[1] == "holds"
    assert finding(report, "resnet50: flip+noise raises tail accuracy")[3] == \
        "resnet50 · long-tail · none is not among this run's cells"
    text = report.read_text()
    assert "Welch's two-sample t-test" in section(text, "## Findings")
    assert "With one repetition per cell there is no spread" in text
    html = (report.parent / "report.html").read_text()
    assert '<td class="holds">holds</td>' in html
    assert '<td class="inconclusive">inconclusive</td>' in html
    assert '<td class="missing">missing</td>' in html


def test_repetitions_that_did_not_count(report):
    rows = cells_of(section(report.read_text(), "## Repetitions that did not count"))
    assert rows[1:] == [
        ["rnn · balanced · none", "0", "error", "RuntimeError: CUDA out of memory. Tried to "
                                                "allocate 2 GiB"],
        ["rnn · balanced · none", "1", "error", "KILLED"],  # no reason: the run's status
        ["cnn · long-tail · none", "3", "did-not-learn",
         "predicted 'frog' for 99% of the test images"]]


def test_findings_contradicted_and_overlapping():
    from tracking.findings import expected_cells, findings_table

    cells = [spec("rnn", "balanced", "none"), spec("rnn", "long-tail", "none"),
             spec("rnn", "long-tail", "flip+noise")]
    rows = pd.DataFrame(
        # long-tail clearly above balanced; tail clearly above head; flip+noise's gap and
        # tail overlapping long-tail's
        [rep(cells[0], r, test=0.40 + 0.01 * r) for r in range(3)]
        + [rep(cells[1], r, test=0.50 + 0.01 * r, head=0.40 + 0.01 * r, tail=0.50 + 0.01 * r)
           for r in range(3)]
        + [rep(cells[2], r, head=h, tail=t) for r, (h, t) in
           enumerate([(0.40, 0.46), (0.45, 0.55), (0.41, 0.45)])])
    table = findings_table(expected_cells(rows, cells))
    verdicts = {r[0]: (r[1][0], r[3]) for r in table.rows}
    assert verdicts["rnn: long-tail test accuracy below balanced"][0] == "contradicted"
    assert verdicts["rnn · long-tail · none: tail accuracy below head"][0] == "contradicted"
    assert verdicts["rnn: flip+noise narrows the long-tail gap"] == (
        "inconclusive", "the 95% CI of the difference includes 0")
    assert verdicts["rnn: flip+noise raises tail accuracy"][0] == "inconclusive"


def test_a_gap_turned_around_narrows_only_when_it_ends_smaller():
    from tracking.findings import expected_cells, findings_table

    cells = [spec(m, "long-tail", r) for m in ("cnn", "rnn") for r in ("none", "flip+noise")]
    # cnn: head 45 points above tail, then tail 16 above head (smaller: narrowed);
    # rnn: head 10 above tail, then tail 30 above head (a signed test calls both "narrower")
    gaps = {cells[0]["key"]: 0.45, cells[1]["key"]: -0.16,
            cells[2]["key"]: 0.10, cells[3]["key"]: -0.30}
    rows = pd.DataFrame([rep(c, r, head=0.5 + gaps[c["key"]] / 2 + 0.01 * r,
                             tail=0.5 - gaps[c["key"]] / 2 + 0.01 * r * r)
                         for c in cells for r in range(3)])
    table = findings_table(expected_cells(rows, cells))
    verdicts = {r[0]: (r[1][0], r[2]) for r in table.rows}
    verdict, numbers = verdicts["cnn: flip+noise narrows the long-tail gap"]
    assert verdict == "holds", numbers
    # |gap| per repetition: 45, 45, 43 against 16, 16, 18 points
    assert numbers.startswith("long-tail · none |gap| 44.3 ± 1.2 (n=3) vs long-tail · "
                              "flip+noise |gap| 16.7 ± 1.2 (n=3); Δ −27.7 pts"), numbers
    assert verdicts["rnn: flip+noise narrows the long-tail gap"][0] == "contradicted"
    assert verdicts["rnn: flip+noise raises tail accuracy"][0] == "holds"


def test_heatmap_and_bars_use_the_repetitions_that_learned(monkeypatch):
    from tracking import report as report_module
    from tracking.findings import expected_cells

    seen = {}
    monkeypatch.setattr(plots, "per_class_heatmap",
                        lambda labels, classes, values, title, tail: seen.update(
                            labels=labels, values=values, tail=tail) or plots.Figure())
    monkeypatch.setattr(plots, "cell_accuracy_bars",
                        lambda cells, measured, reference, title, notes, errors: seen.update(
                            measured=measured, errors=errors, title=title) or plots.Figure())
    cells = expected_cells(results(), EXPECTED)
    report_module.heatmap_image(cells)
    report_module.bars_image(cells)
    assert seen["labels"][2] == "cnn · long-tail · none (n=3)"
    assert seen["labels"][3] == "rnn · long-tail · none (missing)"
    # tail classes 20/25/21 (the collapsed repetition's 0 left out), head 80/82/84
    np.testing.assert_allclose(seen["values"][2], [22] * 5 + [82] * 5)
    assert np.isnan(seen["values"][3]).all()
    assert seen["measured"][:3] == pytest.approx([70.0, None, 50.0])
    assert seen["errors"][2] == pytest.approx(1.0) and seen["errors"][4] is None
    assert seen["tail"] == TAIL  # the cells' tail_classes column, shared by all of them
    # the reference's bars are CIFAR-10 at its epochs; cells trained otherwise are not like it
    assert seen["title"].splitlines()[1] == ("cifar10 · quick: not comparable to the "
                                             "reference in absolute terms")
    as_reference = results().assign(profile="paper")
    report_module.bars_image(expected_cells(as_reference, EXPECTED))
    assert seen["title"] == "Test accuracy per cell: mean ± std vs reference"
    other = results()
    other.loc[other["cell_key"] == CNN_FN["key"], "tail_classes"] = json.dumps([7, 9])
    report_module.heatmap_image(expected_cells(other, EXPECTED))
    assert seen["tail"] == []  # cells with different tails: no one set of columns is marked


def test_results_table():
    lines = results_table(results(), EXPECTED).splitlines()
    assert re.split(r"\s{2,}", lines[0]) == ["cell", "n/N", "train acc", "test acc",
                                              "tail acc", "status"]
    rows = [re.split(r"\s{2,}", line.strip()) for line in lines[1:]]
    assert rows[0] == ["cnn · balanced · none", "3/3", "90.0 ± 1.0", "70.0 ± 1.0",
                       "69.0 ± 1.0", "measured"]
    assert rows[1] == ["rnn · balanced · none", "0/3", "—", "—", "—",
                       "failed: RuntimeError: CUDA out of memory. Tried to allocate 2 GiB"]
    assert rows[2] == ["cnn · long-tail · none", "3/4", "99.0 ± 0.0", "50.0 ± 1.0",
                       "22.0 ± 2.6", "measured"]
    assert rows[3] == ["rnn · long-tail · none", "0/3", "—", "—", "—", "missing"]
    assert rows[4][1:] == ["1/1", "95.0", "55.0", "50.0", "measured"]
    assert len(rows) == len(EXPECTED)
    # the numbers line up on the right
    assert len({line.index("measured") for line in lines if line.endswith("measured")}) == 1


def test_report_with_no_results_yet(tmp_path):
    md = build_report(pd.DataFrame(), EXPECTED, "x", "sqlite:///m.db", out_root=tmp_path)
    text = md.read_text()
    assert "6 cells in this run; 6 missing" in text and "No per-class accuracies" in text
    assert "Every recorded repetition learned." in text
    assert all(line.endswith("missing") for line in
               results_table(pd.DataFrame(), EXPECTED).splitlines()[1:])


def test_results_without_the_columns_are_explained():
    with pytest.raises(ValueError, match="no column.*outcome.*load_results"):
        results_table(pd.DataFrame({"cell_key": ["a"]}), EXPECTED)


def test_repetitions_at_a_runner_up_are_flagged(tmp_path):
    """A repetition that learned only with a runner-up's parameters counts, and the printed
    table and the report say so, with the parameters it trained with."""
    rows = [rep(CNN_B, r) | {"final_attempt": 1} for r in range(3)]
    rows[2] |= {"final_attempt": 2, "final_lr": 0.2, "final_test_acc": 0.5}
    df = pd.DataFrame(rows)
    [line] = results_table(df, [CNN_B]).splitlines()[1:]
    assert line.endswith("measured (1 at a runner-up's parameters)")
    md = build_report(df, [CNN_B], "cifar10/quick", "sqlite:///x.db",
                      out_root=tmp_path).read_text()
    section = md.split("Repetitions trained with a runner-up's parameters")[1]
    assert "| cnn · balanced · none | 2 | 2 | 0.2 | 0.05 | 50.0 |" in section


def test_remedies_table_compares_each_remedy_with_plain_cross_entropy(tmp_path, report):
    # only shown when a run has remedies beyond the reference's none and flip+noise
    assert "Remedies against plain cross-entropy" not in report.read_text()
    none, rw, la, ldam = (spec("cnn", "exp", r) for r in
                          ("none", "reweight", "logit-adjust", "ldam-drw"))
    step_none, step_bs = spec("cnn", "long-tail", "none"), spec("cnn", "long-tail",
                                                                 "balanced-softmax")

    def exp_rep(cell, r, test, few, **extra):
        return rep(cell, r, test=test, tail=few) | {"few_acc": few, "medium_acc": 0.5,
                                                    "many_acc": 0.8, **extra}

    rows = [*(exp_rep(none, r, 0.50 + 0.01 * r, 0.10 + 0.02 * r) for r in range(3)),
            # reweight: test 55/56/57 vs 50/51/52, few 30/31/32 vs 10/12/14: both hold
            *(exp_rep(rw, r, 0.55 + 0.01 * r, 0.30 + 0.01 * r, final_cb_beta=0.999)
              for r in range(3)),
            # logit-adjust: test 45/46/47: below plain; few 11/12/13: no difference to speak of
            *(exp_rep(la, r, 0.45 + 0.01 * r, 0.11 + 0.01 * r, final_la_tau=1.5 + r % 2 * 0.1234)
              for r in range(3)),
            # a step cut: no medium_acc, so the tail is compared
            *(rep(step_none, r, test=0.6, tail=0.20 + 0.01 * r) for r in range(2)),
            *(rep(step_bs, r, test=0.6, tail=0.40 + 0.01 * r) for r in range(2))]
    md = build_report(pd.DataFrame(rows), [none, rw, la, ldam, step_none, step_bs], "rem",
                      "sqlite:///x.db", out_root=tmp_path).read_text()
    table = {r[1]: r for r in cells_of(section(md, "## Remedies against plain cross-entropy"))}
    test_ci = st.ttest_ind([0.55, 0.56, 0.57], [0.50, 0.51, 0.52], equal_var=False) \
        .confidence_interval()
    few_ci = st.ttest_ind([0.30, 0.31, 0.32], [0.10, 0.12, 0.14], equal_var=False) \
        .confidence_interval()
    assert table["reweight"] == [
        "cnn · exp", "reweight", "cb_beta 0.999", "56.0 ± 1.0 (n=3)", "51.0 ± 1.0 (n=3)",
        f"+5.0 [+{100 * test_ci.low:.1f}, +{100 * test_ci.high:.1f}]", "holds",
        "few-shot: 31.0 ± 1.0 (n=3)", "12.0 ± 2.0 (n=3)",
        f"+19.0 [+{100 * few_ci.low:.1f}, +{100 * few_ci.high:.1f}]", "holds"]
    assert table["logit-adjust"][2] == "la_tau 1.5, 1.62"  # a runner-up's too, 3 digits
    assert table["logit-adjust"][5].startswith("−5.0 [") and table["logit-adjust"][6] == \
        "contradicted"
    assert table["logit-adjust"][9].startswith("+0.0 [") and table["logit-adjust"][10] == \
        "inconclusive"
    assert table["ldam-drw"][2] == "—"  # not measured; and its fixed cb_beta is never shown
    assert table["ldam-drw"][6] == "inconclusive" and \
        table["ldam-drw"][9] == "cnn · exp · ldam-drw has not run"
    assert table["balanced-softmax"][0] == "cnn · long-tail"
    assert table["balanced-softmax"][7] == "tail: 40.5 ± 0.7 (n=2)"
    assert table["balanced-softmax"][3] == "60.0 ± 0.0 (n=2)"  # same test acc: zero spread
    assert table["balanced-softmax"][6] == "inconclusive"
    assert "none" not in table  # plain cross-entropy is the control, not a row


def test_the_tuned_column_shows_only_the_parameter_the_remedy_searches():
    ldam = spec("cnn", "exp", "ldam-drw")
    rows = [rep(ldam, r) | {"final_cb_beta": 0.9999, "final_ldam_margin": 0.3} for r in range(2)]
    [cell] = expected_cells(pd.DataFrame(rows), [ldam])
    assert tuned_text(cell) == "ldam_margin 0.3"  # its DRW's cb_beta is fixed, not tuned
