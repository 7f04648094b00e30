"""The expected cells with their repetitions from the results table, and the reference's
findings judged on them with benchmark.stats.

Only repetitions whose outcome is "ok" are evidence: a failed, killed, running or collapsed
("did-not-learn") repetition never enters a mean, a spread or a test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from benchmark.stats import Summary, Verdict, paired, summarize, welch
from tracking.render import Table

OK = "ok"  # the outcome of a repetition that counts
REQUIRED = ("cell_key", "outcome")  # columns without which no cell can be told apart
# the size of the long-tail gap, |head - tail|: a remedy that turns a +45-point gap into a
# -16-point one narrows it, one that turns +10 into -30 widens it (signed, both "narrow")
GAP_SIZE = "tail_gap_size"

HOW_JUDGED = (
    "How verdicts are decided: each finding is a t-test over the repetitions that learned "
    "(outcome ok; a failed, killed or collapsed repetition never counts): Welch's two-sample "
    "t-test between two cells, a paired t-test of tail minus head within one cell. A finding "
    "holds when the 95% confidence interval of the difference lies wholly on the claimed "
    "side of 0, is contradicted when it lies wholly on the other side, and is inconclusive "
    "otherwise. The long-tail gap is head minus tail accuracy; whether a remedy narrows it "
    "compares its size |head − tail|, so a remedy that turns the gap around by more than it "
    "was widens it. With one repetition per cell there is no spread to test against, so every "
    "finding is inconclusive: run with --seeds 3 or more.")


# ---------------------------------------------------------------- results -> cells

def first_line(text: object, width: int = 120) -> str:
    lines = str(text or "").strip().splitlines()
    return lines[0][:width] if lines else ""


@dataclass(frozen=True)
class CellResult:
    """One expected cell and its repetitions in the results table."""

    spec: dict  # the expected cell: key, name, model, variant, augment, table, reference, seeds
    reps: pd.DataFrame  # its repetitions 0..asked-1, whatever their outcome
    ok: pd.DataFrame  # those that count: outcome "ok", one row per repetition
    asked: int  # N, the repetitions asked for

    @property
    def n(self) -> int:
        return len(self.ok)

    @property
    def runner_up(self) -> int:
        """How many of the repetitions that count trained with a runner-up's parameters
        (the tuned ones diverged or did not learn on their seed)."""
        if "final_attempt" not in self.ok.columns:
            return 0
        return int((pd.to_numeric(self.ok["final_attempt"], errors="coerce") > 1).sum())

    @property
    def measured(self) -> bool:
        return self.n > 0

    @property
    def status(self) -> str:
        """measured (≥ 1 repetition counts), running, failed, or missing (no rows at all)."""
        if self.measured:
            return "measured"
        if self.reps.empty:
            return "missing"
        return "running" if (self.reps["outcome"] == "running").any() else "failed"

    @property
    def reason(self) -> str:
        """The first line of the first reason a repetition gives for not counting."""
        bad = self.reps[self.reps["outcome"] != OK]
        reasons = [first_line(r) for r in bad.get("reason", pd.Series(dtype=str))]
        return next((r for r in reasons if r), "")

    @property
    def slot(self) -> tuple[str, str, str]:
        return self.spec["model"], self.spec["variant"], self.spec["remedy"]

    def values(self, metric: str) -> np.ndarray:
        """The metric of every repetition that counts (NaN where it was not logged);
        GAP_SIZE is |tail_gap|."""
        if metric == GAP_SIZE:
            return np.abs(self.values("tail_gap"))
        if metric not in self.ok.columns:
            return np.full(self.n, np.nan)
        return pd.to_numeric(self.ok[metric], errors="coerce").to_numpy(dtype=float)

    def summary(self, metric: str) -> Summary:
        return summarize(self.values(metric))

    def first(self, column: str) -> object:
        """A setting shared by the cell's repetitions (dataset, epochs…), or None."""
        rows = self.ok if self.measured else self.reps
        return rows[column].iloc[0] if column in rows.columns and len(rows) else None


def _asked(spec: dict, rows: pd.DataFrame) -> int:
    """N: the spec's seeds, or with `seeds_from_runs` (no --seeds on the command line) what
    the cell's last run asked for, so a report after `run --seeds 6` counts all six."""
    from_runs = spec.get("seeds_from_runs") or not spec.get("seeds")
    if from_runs and "seeds" in rows.columns and len(rows):
        return int(rows["seeds"].max())
    return int(spec.get("seeds") or 1)


def _cell(spec: dict, rows: pd.DataFrame) -> CellResult:
    asked = _asked(spec, rows)
    if "repetition" in rows.columns:
        # the key leaves out the number of seeds: a run that asked for more left repetitions
        # beyond this grid's N, and "n of N" describes the N asked for here
        rows = rows[rows["repetition"] < asked]
    ok = rows[rows["outcome"] == OK]
    if "repetition" in ok.columns:  # a repetition trained twice is one seed, not two
        ok = ok.drop_duplicates("repetition", keep="last")
    return CellResult(spec, rows, ok, asked)


def check_results(results: pd.DataFrame) -> pd.DataFrame:
    """The results table, with its required columns checked (an empty table: no runs yet)."""
    if results.empty and not set(REQUIRED) <= set(results.columns):
        return pd.DataFrame(columns=[*REQUIRED, "repetition", "reason"])
    missing = [c for c in REQUIRED if c not in results.columns]
    if missing:
        raise ValueError(f"the results table has no column(s) {', '.join(missing)}: pass the "
                         f"frame tracking.results.load_results returns (one row per "
                         f"repetition)")
    return results


def expected_cells(results: pd.DataFrame, expected: list[dict]) -> list[CellResult]:
    """The expected cells in order, each with its rows of the results table."""
    results = check_results(results)
    groups = dict(tuple(results.groupby("cell_key", sort=False)))
    empty = results.iloc[0:0]
    return [_cell(spec, groups.get(spec["key"], empty)) for spec in expected]


# ---------------------------------------------------------------- findings

def _slots(cells: list[CellResult]) -> dict[tuple[str, str, str], CellResult]:
    """One cell per (model, variant, augment): the best-measured if the grid repeats a slot."""
    out: dict = {}
    for c in cells:
        if c.slot not in out or c.n > out[c.slot].n:
            out[c.slot] = c
    return out


# why a cell has no number to compare, by its status
UNMEASURED = {"missing": "has not run", "running": "is still running",
              "failed": "has no repetition that learned"}


def _absent(slots: dict, *wanted: tuple[str, str, str]) -> str:
    """Why a comparison cannot be made: which of its cells is not in the run or has no
    repetition that counts."""
    why = []
    for slot in wanted:
        name = " · ".join(slot)
        if slot not in slots:
            why.append(f"{name} is not among this run's cells")
        elif not slots[slot].measured:
            why.append(f"{name} {UNMEASURED[slots[slot].status]}")
    return "; ".join(why)


def _row(claim: str, verdict: Verdict | None, numbers: str, why: str = "") -> list:
    name = verdict.verdict if verdict else "inconclusive"
    if verdict is not None and not why:
        why = verdict.why or ("the 95% CI of the difference includes 0"
                              if name == "inconclusive" else "")
    return [claim, (name, name), numbers, why]


def _between(claim: str, slots: dict, a: tuple, b: tuple, metric: str, expect: str,
             label: str = "") -> list:
    """A Welch comparison of `metric` between cell a and cell b (the claim is about b − a);
    `label` names the metric in the numbers."""
    absent = _absent(slots, a, b)
    if absent:
        return _row(claim, None, "—", absent)
    ca, cb = slots[a], slots[b]
    v = welch(ca.values(metric), cb.values(metric), expect)
    numbers = (f"{' · '.join(a[1:])} {label}{ca.summary(metric).text()} vs "
               f"{' · '.join(b[1:])} {label}{cb.summary(metric).text()}; {v.text()}")
    return _row(claim, v, numbers)


def _tail_below_head(slots: dict, cell: CellResult) -> list:
    claim = f"{cell.spec['name']}: tail accuracy below head"
    if not cell.measured:
        return _row(claim, None, "—", f"the cell {UNMEASURED[cell.status]}")
    v = paired(cell.values("tail_acc") - cell.values("head_acc"), "less")
    numbers = (f"tail {cell.summary('tail_acc').text()} vs head "
               f"{cell.summary('head_acc').text()}; {v.text()}")
    control = slots.get((cell.spec["model"], "balanced", "none"))
    if control is not None and control.measured:
        # the cut classes may be harder anyway: the balanced cell shows how much
        numbers += f"; balanced control's gap {control.summary('tail_gap').text()}"
    return _row(claim, v, numbers)


def findings_table(cells: list[CellResult]) -> Table:
    """The reference's findings, each judged over the repetitions that count."""
    slots, out = _slots(cells), []
    models = list(dict.fromkeys(c.spec["model"] for c in cells))
    for m in models:
        bal, lt = (m, "balanced", "none"), (m, "long-tail", "none")
        if {bal, lt} & set(slots):
            out.append(_between(f"{m}: long-tail test accuracy below balanced", slots,
                                bal, lt, "final_test_acc", "less"))
    out += [_tail_below_head(slots, c) for c in cells if c.spec["variant"] == "long-tail"]
    for m in models:
        lt, fn = (m, "long-tail", "none"), (m, "long-tail", "flip+noise")
        if {lt, fn} & set(slots):
            out.append(_between(f"{m}: flip+noise narrows the long-tail gap", slots,
                                lt, fn, GAP_SIZE, "less", "|gap| "))
            out.append(_between(f"{m}: flip+noise raises tail accuracy", slots,
                                lt, fn, "tail_acc", "greater"))
    return Table(["finding", "verdict", "numbers", "why inconclusive"], out)


# ---------------------------------------------------------------- remedies against plain CE

PLAIN = "none"  # the control every remedy is compared with: plain cross-entropy
REFERENCE_REMEDIES = {"none", "flip+noise"}  # the reference's own: the findings cover them


def has_remedies(cells: list[CellResult]) -> bool:
    """Whether the run holds a remedy beyond the reference's none and flip+noise."""
    return any(c.spec["remedy"] not in REFERENCE_REMEDIES for c in cells)


def tail_metric(control: CellResult) -> str:
    """few_acc where the control's training counts have a many/medium/few split (an exp
    protocol: its repetitions logged medium_acc), else tail_acc (a step cut's few-shot classes
    are its tail)."""
    return "few_acc" if np.isfinite(control.values("medium_acc")).any() else "tail_acc"


@dataclass(frozen=True)
class RemedyComparison:
    """One remedy against plain cross-entropy on the same model and variant."""

    control: CellResult  # model · variant · none
    remedy: CellResult
    test: Verdict  # Welch on final_test_acc, the claim: the remedy raises it
    tail: Verdict  # Welch on `tail_metric` (few_acc or tail_acc), the same claim
    tail_metric: str


def remedy_comparisons(cells: list[CellResult]) -> list[RemedyComparison | tuple]:
    """For each (model, variant) with a `none` cell, each other remedy's cell against it, in
    the run's order; a remedy whose control is absent is (remedy, why) instead."""
    slots, out = _slots(cells), []
    for c in cells:
        model, variant, remedy = c.slot
        if remedy == PLAIN:
            continue
        control = (model, variant, PLAIN)
        absent = _absent(slots, control, c.slot)
        if absent:
            out.append((c, absent))
            continue
        base = slots[control]
        metric = tail_metric(base)
        out.append(RemedyComparison(
            base, c, welch(base.values("final_test_acc"), c.values("final_test_acc"),
                           "greater"),
            welch(base.values(metric), c.values(metric), "greater"), metric))
    return out
