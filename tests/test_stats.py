"""benchmark.stats: summaries and verdicts on constructed inputs, numbers by hand and by scipy."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from benchmark.stats import Summary, paired, summarize, summarize_frame, welch

T2 = 4.302653  # t(0.975, 2): the 95% critical value with 3 values


# ---------------------------------------------------------------- summaries

def test_summary_by_hand():
    s = summarize([1, 2, 3])
    assert (s.n, s.mean, s.std) == (3, 2.0, 1.0)  # deviations -1, 0, 1: variance 2 / 2
    assert s.ci95 == pytest.approx(T2 / math.sqrt(3), rel=1e-6)
    assert (s.low, s.high) == pytest.approx((2 - T2 / math.sqrt(3), 2 + T2 / math.sqrt(3)))


def test_summary_ignores_nan():
    assert summarize([1, math.nan, 3, float("nan")]) == summarize([1, 3])
    assert summarize([1, 3]).std == pytest.approx(math.sqrt(2))


def test_summary_of_one_and_of_none():
    one, none = summarize([0.5]), summarize([math.nan])
    assert one.n == 1 and one.mean == 0.5 and math.isnan(one.std) and math.isnan(one.ci95)
    assert none.n == 0 and math.isnan(none.mean) and math.isnan(none.std)


def test_summary_text():
    assert Summary(3, 0.719, 0.012, 0.03).text() == "71.9 ± 1.2 (n=3)"
    assert Summary(3, 0.719, 0.012, 0.03).text(count=False) == "71.9 ± 1.2"
    assert Summary(1, 0.719, math.nan, math.nan).text() == "71.9 (n=1)"
    assert Summary(0, math.nan, math.nan, math.nan).text() == "—"
    assert summarize([-0.1, -0.3]).text(scale=1, digits=2).startswith("−0.20 ± 0.14")


def test_equal_values_have_zero_spread():
    # numpy leaves ~1e-34 of rounding in the variance of [0.1, 0.1, 0.1]
    s = summarize([0.1, 0.1, 0.1])
    assert s.std == 0 and s.ci95 == 0 and s.text() == "10.0 ± 0.0 (n=3)"


def test_summarize_frame():
    df = pd.DataFrame({"cell_key": ["b", "a", "b", "b", "a"],
                       "acc": [0.1, 0.5, 0.2, 0.3, math.nan],
                       "loss": [1.0, 2.0, 1.0, 1.0, 4.0]})
    out = summarize_frame(df, ["acc", "loss"])
    assert list(out.columns) == ["cell_key", "n", "acc_mean", "acc_std", "acc_ci95",
                                 "loss_mean", "loss_std", "loss_ci95"]
    b, a = out.to_dict("records")  # in order of appearance
    assert b["cell_key"] == "b" and b["n"] == 3
    assert b["acc_mean"] == pytest.approx(0.2) and b["acc_std"] == pytest.approx(0.1)
    assert b["acc_ci95"] == pytest.approx(T2 * 0.1 / math.sqrt(3), rel=1e-6)
    assert b["loss_std"] == 0.0
    # cell a: 2 rows, but only one acc value
    assert a["n"] == 2 and a["acc_mean"] == 0.5 and math.isnan(a["acc_std"])
    assert a["loss_mean"] == 3.0 and a["loss_std"] == pytest.approx(math.sqrt(2))


def test_summarize_frame_names_missing_columns():
    with pytest.raises(ValueError, match="no column.*tail_acc"):
        summarize_frame(pd.DataFrame({"cell_key": ["a"]}), ["tail_acc"])
    empty = summarize_frame(pd.DataFrame({"cell_key": [], "acc": []}), ["acc"])
    assert empty.empty and "acc_mean" in empty.columns


# ---------------------------------------------------------------- verdicts

A = [0.70, 0.72, 0.74]  # mean 0.72, std 0.02
B = [0.50, 0.53, 0.59, 0.54]  # mean 0.54, unequal n and variance


def test_welch_matches_scipy():
    v = welch(A, B, "less")
    res = st.ttest_ind(B, A, equal_var=False)
    ci = res.confidence_interval(0.95)
    assert v.diff == pytest.approx(np.mean(B) - np.mean(A))
    assert (v.low, v.high) == pytest.approx((ci.low, ci.high))
    assert v.p == pytest.approx(res.pvalue)
    assert (v.n_a, v.n_b, v.verdict, v.why) == (3, 4, "holds", "")


def test_welch_by_hand():
    # a = [1, 2, 3], b = [4, 5, 6]: diff 3, se = sqrt(1/3 + 1/3), df = 4
    v = welch([1, 2, 3], [4, 5, 6], "greater")
    half = float(st.t.ppf(0.975, 4)) * math.sqrt(2 / 3)
    assert (v.diff, v.low, v.high) == pytest.approx((3, 3 - half, 3 + half))
    assert v.verdict == "holds"


def test_welch_contradicted_and_inconclusive_by_overlap():
    assert welch(A, B, "greater").verdict == "contradicted"
    v = welch([0.50, 0.60, 0.70], [0.55, 0.65, 0.75], "greater")  # diff 0.05, std 0.1 each
    assert v.verdict == "inconclusive" and v.low < 0 < v.high and v.why == ""


def test_one_repetition_is_inconclusive_and_says_why():
    v = welch([0.7], [0.5], "less")
    assert v.verdict == "inconclusive" and v.diff == pytest.approx(-0.2)
    assert math.isnan(v.low) and math.isnan(v.p) and (v.n_a, v.n_b) == (1, 1)
    assert v.why == ("one repetition per cell: no spread to test against; "
                     "run with --seeds 3 or more")
    assert "single repetition" in welch(A, [0.5], "less").why
    empty = welch([], A, "less")
    assert empty.verdict == "inconclusive" and math.isnan(empty.diff)
    assert "nothing to compare" in empty.why


def test_zero_variance_decides_by_sign():
    v = welch([0.7, 0.7, 0.7], [0.5, 0.5, 0.5], "less")
    assert v.verdict == "holds" and v.p == 0 and v.low == v.high == pytest.approx(-0.2)
    assert welch([0.7] * 3, [0.5] * 3, "greater").verdict == "contradicted"
    same = welch([0.1] * 3, [0.1] * 2, "less")  # 0.1 is not exact in binary: still no spread
    assert same.verdict == "inconclusive" and same.diff == 0 and same.p == 1


def test_paired_matches_scipy():
    d = [-0.20, -0.25, -0.22, -0.18]
    v = paired(d, "less")
    res = st.ttest_1samp(d, 0.0)
    ci = res.confidence_interval(0.95)
    assert (v.diff, v.low, v.high) == pytest.approx((np.mean(d), ci.low, ci.high))
    assert v.p == pytest.approx(res.pvalue) and v.verdict == "holds"
    assert (v.n_a, v.n_b) == (4, 4)
    assert paired(d, "greater").verdict == "contradicted"
    assert paired([-0.1, 0.1, 0.05], "less").verdict == "inconclusive"


def test_paired_edge_cases():
    one = paired([-0.3, math.nan], "less")
    assert one.verdict == "inconclusive" and one.n_a == 1
    assert one.why == "one repetition: no spread to test against; run with --seeds 3 or more"
    flat = paired([-0.1, -0.1, -0.1], "less")
    assert flat.verdict == "holds" and flat.p == 0


def test_verdict_text():
    v = welch([0.70, 0.72, 0.74], [0.50, 0.53, 0.56], "less")
    # diff -0.19, se = sqrt(0.0004/3 + 0.0009/3), df = 0.0013^2 / (0.0004^2 + 0.0009^2) * 2
    assert v.text().startswith("Δ −19.0 pts, 95% CI [−")
    assert v.text().endswith("p = 0.001 (Welch, n = 3 vs 3)")
    assert paired([-0.2, -0.3], "less").text().endswith("(paired t, n = 2)")
    assert welch([0.7], [0.5], "less").text() == "Δ −20.0 pts (Welch, n = 1 vs 1)"
    assert welch([], [0.5], "less").text() == "Δ — (Welch, n = 0 vs 1)"
    assert welch([0.7] * 2, [0.5] * 2, "less").text().endswith("p < 0.001 (Welch, n = 2 vs 2)")


def test_expect_is_checked():
    with pytest.raises(ValueError, match="expect must be 'less' or 'greater'"):
        welch(A, B, "lower")
    with pytest.raises(ValueError, match="expect must be"):
        paired(A, "two-sided")


def test_stats_is_core():
    # the core layer: importing it must not pull in tracking, tuning or plotting
    code = ("import sys, benchmark.stats; "
            "print(sorted(m for m in ('mlflow', 'optuna', 'matplotlib', 'studies', 'tracking') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
