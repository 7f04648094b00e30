"""The search space, as data: one entry per tuned Cell field.

To tune another hyperparameter, add a `Param` whose `name` is a field of
`benchmark.cells.Cell` that training reads (lr, sigma, batch_size; an int field is drawn as an
int): each trial trains with that field replaced, the trial runs log it, the cell run records
`best_<name>`, and the runner's `_tune` returns the cell with the field replaced (run_cell's
final fit reads lr and sigma from that cell; a new field must be read from it there too).
(Fields that shape the data before the split, such as imbalance_ratio, cannot be tuned here.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from benchmark.cells import CELL_FIELDS, Cell


@dataclass(frozen=True)
class Param:
    name: str  # a Cell field
    low: float
    high: float
    log: bool  # sample log-uniformly (for scale parameters such as a learning rate)
    only_if: str = ""  # a Cell attribute that must be true for the cell to search this
    unit: str = ""  # what one unit of the value means, for axis labels and docs

    def applies(self, cell: Cell) -> bool:
        return not self.only_if or bool(getattr(cell, self.only_if))

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


SPACE: tuple[Param, ...] = (
    # Plain SGD (no momentum). 0.01 is the reference's lr for every network, inside the range.
    # The top is past the cliff, measured on Fashion-MNIST (quick profile: 4,000 images,
    # long-tail, batch 256): the cnn learns at 0.01..0.1, its loss turns NaN at 0.3 and 1
    # (epoch 2-3) and at 3 in the first epoch; the rnn's loss stays finite (tanh saturates) but
    # from lr 1 it predicts one class. TPE learns to stay below (diverged trials are pruned).
    Param("lr", 1e-3, 3.0, log=True, unit="SGD learning rate"),
    # flip+noise noise std in units of the [0, 1] pixel range: 0 = flips only; 0.3 already
    # buries most of a 32x32 image's detail. Only flip+noise cells use sigma at all.
    Param("sigma", 0.0, 0.3, log=False, only_if="uses_sigma", unit="noise std, [0, 1] pixels"),
)


def check_space(space: tuple[Param, ...] = SPACE) -> None:
    """Every entry names a numeric Cell field and has a usable range (raises ValueError)."""
    for p in space:
        where = f"studies/space.py: Param {p.name!r}"
        if p.name not in CELL_FIELDS:
            raise ValueError(f"{where} is not a Cell field; use one of {', '.join(CELL_FIELDS)}")
        if not (math.isfinite(p.low) and math.isfinite(p.high) and p.low < p.high):
            raise ValueError(f"{where}: need finite low < high, got {p.low}..{p.high}")
        if p.log and p.low <= 0:
            raise ValueError(f"{where}: a log-uniform range must start above 0, got {p.low}")
        if p.only_if and not hasattr(Cell, p.only_if) and p.only_if not in CELL_FIELDS:
            raise ValueError(f"{where}: only_if {p.only_if!r} is not a Cell attribute")


def searched(cell: Cell, space: tuple[Param, ...] = SPACE) -> list[Param]:
    """The parameters this cell's study tunes."""
    return [p for p in space if p.applies(cell)]


def is_integer(name: str) -> bool:
    """Whether the Cell field holds an int (batch_size, epochs): then suggest_int draws it."""
    return CELL_FIELDS[name].type in (int, "int")


def suggest(trial, cell: Cell, space: tuple[Param, ...] = SPACE) -> dict[str, float]:
    """{Cell field: value} drawn for one Optuna trial."""
    return {p.name: (trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log)
                     if is_integer(p.name) else
                     trial.suggest_float(p.name, p.low, p.high, log=p.log))
            for p in searched(cell, space)}


def starting_point(cell: Cell, space: tuple[Param, ...] = SPACE) -> dict[str, float]:
    """The cell's own values (the reference's lr and sigma) that lie inside the space: the
    first trial of a new study, so tuning never ends worse on validation than not tuning."""
    return {p.name: float(getattr(cell, p.name)) for p in searched(cell, space)
            if p.contains(float(getattr(cell, p.name)))}
