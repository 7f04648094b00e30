"""Figures of one Optuna study, drawn from its plain summary (studies.summary.StudySummary or
anything with the same attributes), so this module needs neither Optuna nor `studies`.

Figures are `matplotlib.figure.Figure`s on the Agg backend, as in tracking.plots: nothing is
kept alive by pyplot, and a headless machine renders them.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402

from tracking.plots import FIGURE_SUFFIX, fit_layout, save_figure  # noqa: E402

COMPLETE_COLOR, PRUNED_COLOR, BEST_COLOR = "#4C72B0", "#9A9A9A", "#C44E52"
DIVERGED_COLOR = "#DD8452"


def _pct(v: float) -> float:
    return 100 * v


def _ylabel(summary) -> str:
    return f"{summary.objective} (%)"


def _diverged(t) -> bool:
    return t.note.startswith("diverged")


def _last(t) -> float | None:
    """A pruned trial's last reported value (where it stood when it was stopped)."""
    return t.intermediate[max(t.intermediate)] if t.intermediate else None


def _best_so_far(trials) -> tuple[list[int], list[float]]:
    xs, ys, best = [], [], -math.inf
    for t in sorted(trials, key=lambda t: t.number):
        if t.state == "COMPLETE" and t.value is not None:
            best = max(best, t.value)
        if best > -math.inf:
            xs.append(t.number)
            ys.append(_pct(best))
    return xs, ys


def history_figure(summary) -> Figure:
    """Objective per trial (pruned ones where they were stopped, diverged ones at 0) and the
    best value so far."""
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    groups = {
        "complete": ([t for t in summary.trials if t.state == "COMPLETE"], COMPLETE_COLOR, "o"),
        "pruned (last epoch reported)": ([t for t in summary.trials if t.state == "PRUNED"
                                          and not _diverged(t) and t.intermediate],
                                         PRUNED_COLOR, "x"),
        "diverged (loss NaN/inf)": ([t for t in summary.trials if _diverged(t)],
                                    DIVERGED_COLOR, "v"),
    }
    for label, (trials, color, marker) in groups.items():
        if not trials:
            continue
        ys = [_pct(t.value if t.state == "COMPLETE" else (0.0 if _diverged(t) else _last(t)))
              for t in trials]
        ax.scatter([t.number for t in trials], ys, color=color, marker=marker, label=label,
                   zorder=3)
    xs, ys = _best_so_far(summary.trials)
    if xs:
        ax.step(xs, ys, where="post", color=BEST_COLOR, label="best so far")
    ax.set(title=f"{summary.name}\noptimisation history", xlabel="trial",
           ylabel=_ylabel(summary))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return fit_layout(fig)


def importance_figure(summary) -> Figure | None:
    """fANOVA importance of each searched parameter (None when there are none to show)."""
    if not summary.importances:
        return None
    items = sorted(summary.importances.items(), key=lambda kv: kv[1])
    fig = Figure(figsize=(8, 1.5 + 0.6 * len(items)))
    ax = fig.add_subplot()
    bars = ax.barh([k for k, _ in items], [v for _, v in items], color=COMPLETE_COLOR)
    ax.bar_label(bars, fmt="%.2f", padding=3)
    n = sum(t.state == "COMPLETE" for t in summary.trials)  # few trials: a rough estimate
    ax.set(title=f"{summary.name}\nparameter importance (fANOVA, {n} complete trials)",
           xlabel=f"share of the variance of the {summary.objective}", xlim=(0, 1.1))
    return fit_layout(fig)


def lr_sigma_figure(summary) -> Figure | None:
    """Each trial at its (lr, sigma), coloured by its objective; pruned ones grey. Only for
    studies that search both."""
    if not {"lr", "sigma"} <= set(summary.space):
        return None
    trials = [t for t in summary.trials if {"lr", "sigma"} <= set(t.params)]
    if not trials:
        return None
    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    done = [t for t in trials if t.state == "COMPLETE" and t.value is not None]
    for label, color, marker, keep in (
            ("pruned / not complete", PRUNED_COLOR, "x", lambda t: not _diverged(t)),
            ("diverged", DIVERGED_COLOR, "v", _diverged)):
        rest = [t for t in trials if t not in done and keep(t)]
        if rest:
            ax.scatter([t.params["lr"] for t in rest], [t.params["sigma"] for t in rest],
                       color=color, marker=marker, label=label)
    if done:
        sc = ax.scatter([t.params["lr"] for t in done], [t.params["sigma"] for t in done],
                        c=[_pct(t.value) for t in done], cmap="viridis", s=60,
                        edgecolors="black", linewidths=0.5, label="complete")
        fig.colorbar(sc, ax=ax, label=_ylabel(summary))
    if summary.best_params and {"lr", "sigma"} <= set(summary.best_params):
        ax.scatter([summary.best_params["lr"]], [summary.best_params["sigma"]], marker="*",
                   s=300, facecolors="none", edgecolors=BEST_COLOR, linewidths=1.5, label="best")
    lr, sigma = summary.space["lr"], summary.space["sigma"]
    pad = 0.05 * (sigma["high"] - sigma["low"])  # so points on the bounds stay whole
    ax.set(xscale="log" if lr.get("log") else "linear", xlim=(lr["low"] / 1.3, lr["high"] * 1.3),
           ylim=(sigma["low"] - pad, sigma["high"] + pad), title=f"{summary.name}\nlr × sigma",
           xlabel=f"lr ({lr.get('unit') or 'learning rate'}, log scale)",
           ylabel=f"sigma ({sigma.get('unit') or 'noise std'})")
    ax.legend(loc="best", fontsize="small")
    return fit_layout(fig)


def intermediate_figure(summary) -> Figure | None:
    """Validation curve of every trial, epoch by epoch: complete solid, pruned dashed."""
    trials = [t for t in summary.trials if t.intermediate]
    if not trials:
        return None
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    for i, t in enumerate(trials):
        epochs = sorted(t.intermediate)
        ax.plot(epochs, [_pct(t.intermediate[e]) for e in epochs], marker=".",
                linestyle="-" if t.state == "COMPLETE" else "--", color=f"C{i % 10}",
                label=f"trial {t.number} ({'diverged' if _diverged(t) else t.state.lower()})")
    ax.set(title=f"{summary.name}\nvalidation curves per trial", xlabel="epoch",
           ylabel=_ylabel(summary))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    if len(trials) <= 12:  # beside the axes: the curves fill every corner
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    return fit_layout(fig)


FIGURES = {"history": history_figure, "importance": importance_figure,
           "lr_sigma": lr_sigma_figure, "intermediate": intermediate_figure}


def write_study_figures(summary, folder: Path) -> list[Path]:
    """Every figure the summary supports as folder/<name>.svg; [] for a study without trials.
    Each figure is laid out once by tight_layout when built, and saved as it is (no
    bbox_inches="tight" redraw: tests/test_studies.py checks that nothing is cut off)."""
    if not summary.trials:
        return []
    out = []
    for name, draw in FIGURES.items():
        fig = draw(summary)
        if fig is not None:
            out.append(save_figure(fig, Path(folder) / f"{name}{FIGURE_SUFFIX}", tight=False))
    return out
