"""The pruning rules a cell's study may use, by name: today's default and the candidates that
`tailbench pruners` measures against it (benchmark/app/perf_pruners.py).

Each entry is a function of the cell (its epochs size the warm-up and the rungs) that returns
a fresh Optuna pruner. Optuna's steps are our epochs, counted from 1 (studies/objective.py);
a pruner asked after the last epoch can still prune, and then the trial has no value.
"""

from __future__ import annotations

from collections.abc import Callable

import optuna

from benchmark.cells import Cell
from benchmark.registry import Registry

PRUNERS: Registry[Callable[[Cell], optuna.pruners.BasePruner]] = Registry("pruner")
DEFAULT = "median"  # studies/tune.py's default_pruner: why, with the measured numbers, there


def warmup(cell: Cell) -> int:
    """Epochs every trial trains before any verdict: a third of them, at least one. Early
    curves of plain SGD cross (the cnn at lr 0.01 trails lr 0.001 for two epochs on
    Fashion-MNIST, then leads), so a verdict at epoch 1 would stop the better trial."""
    return max(1, cell.epochs // 3)


@PRUNERS.register("median", about="median rule, from the 3rd trial, after a third of the epochs")
def median(cell: Cell) -> optuna.pruners.BasePruner:
    """Stop a trial whose best value so far is below the median of the completed trials at
    the same epoch, from the third trial on, once `warmup` epochs are done (a step below
    n_warmup_steps is spared)."""
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=warmup(cell))


@PRUNERS.register("halving", about="successive halving: rungs at warmup x 2^k epochs, top half")
def halving(cell: Cell) -> optuna.pruners.BasePruner:
    """Asynchronous successive halving with its most lenient reduction factor (2: the top
    half of a rung goes on) and its first rung after `warmup` epochs (6 epochs: rungs at 2 and
    4). While a rung holds fewer than 4 trials only the best so far goes on."""
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=warmup(cell), reduction_factor=2)


@PRUNERS.register("percentile", about="top-quartile rule, from the 3rd trial, same warm-up")
def percentile(cell: Cell) -> optuna.pruners.BasePruner:
    """The median rule made stricter: a trial goes on only while its best value is in the top
    quarter of the completed trials at the same epoch."""
    return optuna.pruners.PercentilePruner(25.0, n_startup_trials=2, n_warmup_steps=warmup(cell))


@PRUNERS.register("none", about="no pruning: every trial runs to the end")
def no_pruning(cell: Cell) -> optuna.pruners.BasePruner:
    return optuna.pruners.NopPruner()


def make_pruner(name: str, cell: Cell) -> optuna.pruners.BasePruner:
    """The named rule's pruner for `cell` (an unknown name lists the choices)."""
    return PRUNERS[name](cell)
