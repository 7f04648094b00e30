"""Statistics over repetitions: a cell's mean, spread and 95% CI, and verdicts on findings.

A cell is trained several times (repetitions, each with its own seed); only repetitions that
learned are evidence, and callers pass only those. A number is summarised as its mean, sample
standard deviation (ddof=1) and the half-width of the 95% Student-t confidence interval of
the mean. NaN values (a metric that was not logged) are ignored.

A finding compares two means: two cells with Welch's t-test (unequal variances,
Welch–Satterthwaite degrees of freedom), or one cell's per-repetition differences with a
one-sample (paired) t-test against 0. The rule:

- **holds** when the 95% CI of the difference lies wholly on the claimed side of 0;
- **contradicted** when it lies wholly on the other side;
- **inconclusive** otherwise, and always when either side has fewer than 2 values (one
  repetition has no spread to test against).

When both sides have zero variance the CI collapses to the point difference: a non-zero
difference decides by its sign (p = 0), a zero difference is inconclusive (p = 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as st

LEVEL = 0.95  # confidence of every interval here
EXPECT = ("less", "greater")  # the claim: the difference is below 0, or above it
MINUS = "\u2212"  # a typographic minus: "−18.4" reads as one number, "-18.4" as a dash
NA = "—"


def _t(df: float) -> float:
    """The two-sided critical value of Student's t for LEVEL."""
    return float(st.t.ppf(0.5 + LEVEL / 2, df))


def _clean(values) -> np.ndarray:
    a = np.asarray(values, dtype=float).ravel()
    return a[~np.isnan(a)]


def _mean(a: np.ndarray) -> float:
    """The mean, exactly the value itself for equal values (sum / n rounds: 0.1 × 3 / 3 is
    not 0.1), so that two cells of equal values differ by exactly 0."""
    return float(a[0]) if np.ptp(a) == 0 else float(a.mean())


def _var(a: np.ndarray) -> float:
    """Sample variance, exactly 0 for equal values (numpy leaves ~1e-34 of rounding there,
    which would pass for a spread)."""
    return 0.0 if np.ptp(a) == 0 else float(a.var(ddof=1))


def _num(v: float, digits: int, signed: bool = False) -> str:
    v = v if round(v, digits) != 0 else 0.0  # no "−0.0"
    text = f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"
    return text.replace("-", MINUS)


# ---------------------------------------------------------------- one number, n repetitions

@dataclass(frozen=True)
class Summary:
    """Mean, sample std and 95% CI half-width of n values (NaN where n is too small)."""

    n: int
    mean: float  # NaN when n == 0
    std: float  # sample standard deviation (ddof=1); NaN when n < 2
    ci95: float  # t(0.975, n-1) * std / sqrt(n); NaN when n < 2

    @property
    def low(self) -> float:
        return self.mean - self.ci95

    @property
    def high(self) -> float:
        return self.mean + self.ci95

    def text(self, scale: float = 100.0, digits: int = 1, count: bool = True) -> str:
        """'71.9 ± 1.2 (n=3)': mean ± std, scaled (100: fractions to percent); '—' if n == 0.

        `count=False` leaves out the '(n=…)', for tables that show n in a column of its own.
        """
        if self.n == 0:
            return NA
        text = _num(self.mean * scale, digits)
        if self.n >= 2:
            text += f" ± {_num(self.std * scale, digits)}"
        return f"{text} (n={self.n})" if count else text


def summarize(values) -> Summary:
    """The Summary of `values` (any sequence of numbers), NaN ignored."""
    a = _clean(values)
    n = a.size
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan)
    if n == 1:
        return Summary(1, _mean(a), math.nan, math.nan)
    std = math.sqrt(_var(a))
    return Summary(n, _mean(a), std, _t(n - 1) * std / math.sqrt(n))


def summarize_frame(df: pd.DataFrame, metrics: list[str], by: str = "cell_key") -> pd.DataFrame:
    """One row per value of `by` (in order of appearance), with `by` as a column, `n` (the
    group's rows) and for each metric m: m_mean, m_std, m_ci95 (NaN ignored per metric).

    Pass only the repetitions that count: this function cannot tell a collapsed fit apart.
    """
    missing = [c for c in [by, *metrics] if c not in df.columns]
    if missing:
        raise ValueError(f"summarize_frame: the frame has no column(s) {', '.join(missing)}; "
                         f"it has {', '.join(map(str, df.columns)) or 'none'}")
    rows = []
    for key, group in df.groupby(by, sort=False):
        row = {by: key, "n": len(group)}
        for m in metrics:
            s = summarize(group[m])
            row |= {f"{m}_mean": s.mean, f"{m}_std": s.std, f"{m}_ci95": s.ci95}
        rows.append(row)
    columns = [by, "n"] + [f"{m}_{s}" for m in metrics for s in ("mean", "std", "ci95")]
    return pd.DataFrame(rows, columns=columns)


# ---------------------------------------------------------------- verdicts

@dataclass(frozen=True)
class Verdict:
    """A claim about a difference of means, judged by the rule in the module docstring."""

    verdict: str  # "holds" | "contradicted" | "inconclusive"
    diff: float  # mean(b) - mean(a) (two-sample) or mean(diffs) (paired)
    low: float  # the 95% CI of diff (NaN when a side has fewer than 2 values)
    high: float
    p: float  # two-sided p-value
    n_a: int
    n_b: int
    why: str = ""  # a sentence when inconclusive for lack of data, else ""
    test: str = "Welch"  # "Welch" or "paired t": named in text()

    def text(self, scale: float = 100.0) -> str:
        """'Δ −18.4 pts, 95% CI [−21.0, −15.8], p = 0.001 (Welch, n = 3 vs 3)'."""
        unit = " pts" if scale == 100.0 else ""
        n = f"n = {self.n_a}" if self.test != "Welch" else f"n = {self.n_a} vs {self.n_b}"
        if math.isnan(self.diff):
            return f"Δ {NA} ({self.test}, {n})"
        head = f"Δ {_num(self.diff * scale, 1, signed=True)}{unit}"
        if math.isnan(self.low):
            return f"{head} ({self.test}, {n})"
        p = "p < 0.001" if self.p < 0.001 else f"p = {self.p:.3f}"
        return (f"{head}, 95% CI [{_num(self.low * scale, 1)}, {_num(self.high * scale, 1)}], "
                f"{p} ({self.test}, {n})")


def _check_expect(expect: str) -> None:
    if expect not in EXPECT:
        raise ValueError(f"expect must be 'less' or 'greater' (the claimed sign of the "
                         f"difference), got {expect!r}")


def _decide(low: float, high: float, expect: str) -> str:
    claimed, other = (high < 0, low > 0) if expect == "less" else (low > 0, high < 0)
    return "holds" if claimed else "contradicted" if other else "inconclusive"


def _too_few(n_a: int, n_b: int, paired: bool) -> str:
    """Why a test cannot be made with these counts, or '' when it can."""
    if min(n_a, n_b) >= 2:
        return ""
    if min(n_a, n_b) == 0:
        return ("no repetition that learned" + ("" if paired else " on one side")
                + ": nothing to compare")
    if max(n_a, n_b) == 1:
        return ("one repetition" + ("" if paired else " per cell")
                + ": no spread to test against; run with --seeds 3 or more")
    return ("one side has a single repetition that learned: no spread to test against; "
            "run more repetitions (--seeds)")


def _judge(diff: float, se: float, df: float, n_a: int, n_b: int, expect: str,
           test: str) -> Verdict:
    if se == 0:  # zero variance on both sides: t is undefined, the CI is the point itself
        return Verdict(_decide(diff, diff, expect), diff, diff, diff,
                       0.0 if diff != 0 else 1.0, n_a, n_b, test=test)
    half = _t(df) * se
    p = float(2 * st.t.sf(abs(diff) / se, df))
    return Verdict(_decide(diff - half, diff + half, expect), diff, diff - half, diff + half,
                   p, n_a, n_b, test=test)


def welch(a, b, expect: str) -> Verdict:
    """Welch's t-test of the claim mean(b) - mean(a) < 0 ("less") or > 0 ("greater").

    The same t, Welch–Satterthwaite df, p and CI as scipy's
    `ttest_ind(b, a, equal_var=False)`, computed here so that a side of equal values counts
    as zero variance instead of rounding noise.
    """
    _check_expect(expect)
    a, b = _clean(a), _clean(b)
    diff = _mean(b) - _mean(a) if a.size and b.size else math.nan
    why = _too_few(a.size, b.size, paired=False)
    if why:
        return Verdict("inconclusive", diff, math.nan, math.nan, math.nan, a.size, b.size, why)
    va, vb = _var(a) / a.size, _var(b) / b.size
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1)) if se else math.nan
    return _judge(diff, se, df, a.size, b.size, expect, "Welch")


def paired(diffs, expect: str) -> Verdict:
    """One-sample t-test of per-repetition differences against 0 (as scipy's
    `ttest_1samp(diffs, 0)`): the claim is that their mean is < 0 ("less") or > 0
    ("greater"). n_a == n_b == the number of pairs."""
    _check_expect(expect)
    d = _clean(diffs)
    n = d.size
    mean = _mean(d) if n else math.nan
    why = _too_few(n, n, paired=True)
    if why:
        return Verdict("inconclusive", mean, math.nan, math.nan, math.nan, n, n, why, "paired t")
    return _judge(mean, math.sqrt(_var(d) / n), n - 1, n, n, expect, "paired t")
