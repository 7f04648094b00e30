"""The search space, as data: one entry per tuned Cell field.

To tune another hyperparameter, add a `Param` whose `name` is a field of
`benchmark.cells.Cell` that training reads (lr, sigma, batch_size; an int field is drawn as an
int): each trial trains with that field replaced, the trial runs log it, the cell run records
`best_<name>`, and the runner's `_tune` returns the cell with the field replaced (run_cell's
final fit reads lr, sigma and the loss's fields from that cell, and logs final_<name> for them;
a new field must be read from it there too). A Param with `choices` is drawn from that list
(Optuna's suggest_categorical), as a paper's grid.
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
    choices: tuple[float, ...] = ()  # drawn from these values only (low, high: their range)

    def applies(self, cell: Cell) -> bool:
        return not self.only_if or bool(getattr(cell, self.only_if))

    def contains(self, value: float) -> bool:
        if self.choices:
            return value in self.choices
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
    # The loss remedies' parameters, one per remedy, each the one its paper tunes (a quick
    # study has 8 trials, so nothing else; the rest stay fixed Cell fields at the papers'
    # values). reweight: Cui et al. 2019 searched beta over exactly this grid (the effective
    # number's scale is 1 / (1 - beta), so a uniform draw would almost never reach 0.9999).
    Param("cb_beta", 0.9, 0.9999, log=False, only_if="tunes_cb_beta",
          unit="effective-number beta", choices=(0.9, 0.99, 0.999, 0.9999)),
    # logit-adjust: Menon et al. 2021 use tau = 1 and show tau in [0, 3]; 0 is plain CE
    Param("la_tau", 0.0, 3.0, log=False, only_if="tunes_la_tau", unit="log-prior temperature"),
    # ldam-drw: Cao et al. 2019 tune the largest margin (0.5 for CIFAR), in cosine units
    # (their s = 30 and the deferral stay fixed)
    Param("ldam_margin", 0.1, 1.0, log=False, only_if="tunes_ldam_margin",
          unit="largest margin, cosine units"),
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
        if p.choices and (min(p.choices), max(p.choices)) != (p.low, p.high):
            raise ValueError(f"{where}: low and high must be the least and greatest choice")


def searched(cell: Cell, space: tuple[Param, ...] = SPACE) -> list[Param]:
    """The parameters this cell's study tunes."""
    return [p for p in space if p.applies(cell)]


def is_integer(name: str) -> bool:
    """Whether the Cell field holds an int (batch_size, epochs): then suggest_int draws it."""
    return CELL_FIELDS[name].type in (int, "int")


def suggest(trial, cell: Cell, space: tuple[Param, ...] = SPACE) -> dict[str, float]:
    """{Cell field: value} drawn for one Optuna trial."""
    return {p.name: _suggest(trial, p) for p in searched(cell, space)}


def _suggest(trial, p: Param) -> float:
    if p.choices:
        return trial.suggest_categorical(p.name, list(p.choices))
    if is_integer(p.name):
        return trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log)
    return trial.suggest_float(p.name, p.low, p.high, log=p.log)


def starting_point(cell: Cell, space: tuple[Param, ...] = SPACE) -> dict[str, float]:
    """The cell's own values (the reference's lr and sigma, the papers' loss parameters) that
    lie inside the space: the first trial of a new study, so tuning never ends worse on
    validation than not tuning."""
    return {p.name: float(getattr(cell, p.name)) for p in searched(cell, space)
            if p.contains(float(getattr(cell, p.name)))}
