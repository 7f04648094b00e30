"""Cell (one frozen experiment) and the grid files and profiles that expand into cells."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmark.data.augment import REMEDIES
from benchmark.data.sources import CLASS_COUNTS
from benchmark.data.variants import VARIANTS, variant_tail
from benchmark.errors import UserError
from benchmark.models import MODELS
from benchmark.train import PRECISIONS

GRID_DIR = Path(__file__).parent / "grids"
PROFILES = GRID_DIR / "profiles.toml"
# 2: a cell run holds repetitions (layout 1: one fit per run); 3: tail_classes is a field (in
# layout 2 every cell's tail was classes 0-4); 4: imbalance_ratio (rho) replaces tail_fraction
# (a tail class keeps round(n / rho) images, not round(n * fraction)), the variant exp exists,
# the loss remedies' parameters are fields (cb_beta, la_tau, ldam_margin, ldam_s, drw_defer)
# and ldam-drw trains a cosine head (in layout 3 the losses ran at their defaults on raw
# logits), and the remedy axis is called `remedy` (it was `augment`): keys of another layout
# never match
KEY_LAYOUT = 4
REFERENCE_TAIL = (0, 1, 2, 3, 4)  # the reference's tail: CIFAR-10's airplane ... deer
REPETITION_FIELDS = {"seeds"}  # how many repetitions: not part of the cell's key


class GridError(UserError, ValueError):
    """A grid or profile file that cannot be expanded; the message names the file and field."""


@dataclass(frozen=True)
class Cell:
    """One (model, variant, remedy) experiment with everything that fixes its result."""

    model: str
    variant: str  # an entry of VARIANTS: "balanced", "long-tail" (step), "exp"
    remedy: str  # an entry of REMEDIES: "none", "oversample", "flip+noise", "reweight", ...
    epochs: int
    dataset: str = "auto"  # resolved to the source actually loaded before any cell runs
    profile: str = "paper"
    batch_size: int = 1024  # images per SGD step
    lr: float = 0.01  # SGD learning rate; the starting point when tuned
    sigma: float = 0.05  # flip+noise noise std, in units of the [0, 1] pixel range
    # the loss remedies' parameters (benchmark.losses; defaults = the papers'): each is read
    # only by the remedies that name it in their `loss_params` (benchmark.data.augment)
    cb_beta: float = 0.9999  # effective-number beta of reweight (tuned) and of ldam-drw's DRW
    la_tau: float = 1.0  # logit-adjust's temperature tau of the log-prior offset (tuned)
    ldam_margin: float = 0.5  # ldam-drw's largest (the rarest class's) margin, cosine units (tuned)
    ldam_s: float = 30.0  # ldam-drw's scale of the cosine logits (Cao et al.'s 30; fixed)
    drw_defer: float = 0.8  # ldam-drw: share of the epochs before re-weighting starts (fixed)
    # the tail: the classes long-tail cuts, oversample and flip+noise fill up, tail_acc scores; the
    # reference's are the first five (CIFAR-10's airplane ... deer). Kept sorted. exp fixes its
    # own (every class but class 0): an exp cell holds that tail, its default becomes it.
    tail_classes: tuple[int, ...] = REFERENCE_TAIL
    # rho, the largest class count over the smallest: long-tail's tail classes keep 1/rho of
    # their images (the reference's 10%), exp's class i keeps n_max * rho^(-i/(C-1))
    imbalance_ratio: float = 10.0
    train_limit: int = 0  # stratified subset of the training set before the cut; 0 = all
    test_limit: int = 0  # stratified subset of the test set; 0 = all
    trials: int = 0  # Optuna trials tuning lr (and sigma, a loss parameter: studies/space.py)
    seed: int = 0  # the cell's base seed; repetition r trains with repetition_seed(r)
    seeds: int = 1  # repetitions: trainings of the tuned parameters, each with its own seed
    # what training computes in: fp32, or bf16 autocast; auto (bf16 on CUDA, fp32 elsewhere)
    # is resolved for the device before a cell runs, so a key names the precision it ran in
    precision: str = "auto"

    def __post_init__(self) -> None:
        """Check every field, so a cell made in code (or by dataclasses.replace, which runs
        this again) is checked like one read from a grid file: a GridError names the field.
        Numbers become plain Python numbers (a results table holds numpy ones; lr = 1 is the
        float 1.0), so equal cells have equal keys."""
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _checked(f.name, f.type, getattr(self, f.name)))
        object.__setattr__(self, "tail_classes", _variant_tail(self))
        _check_tail(self.tail_classes, self.dataset)

    @property
    def key(self) -> str:
        """A stable hash of every field but `seeds`: the MLflow tag that lets a re-run skip
        finished work. Asking for more repetitions keeps the key, so `--seeds 5` after 3 trains
        repetitions 3 and 4 of the same cell."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in REPETITION_FIELDS}
        blob = json.dumps({"layout": KEY_LAYOUT, **fields}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def repetition_seed(self, repetition: int) -> int:
        """The seed of every random draw of repetition r: the training subsample, the long-tail
        cut, the validation split, the initial weights, the batch order and the oversampling.
        Derived with numpy's SeedSequence from (seed, r), so repetitions of a cell, and cells
        of different base seeds, never share a stream. (The test subsample is drawn from
        `seed` alone: every repetition is scored on the same test images.)"""
        if repetition < 0:
            raise ValueError(f"repetition must be >= 0, got {repetition}")
        return int(np.random.SeedSequence([self.seed, repetition]).generate_state(1)[0])

    @property
    def name(self) -> str:
        return f"{self.model} · {self.variant} · {self.remedy}"

    @property
    def oversamples(self) -> bool:
        """Whether the remedy adds copies of tail images (oversample, flip+noise)."""
        return bool(REMEDIES.meta(self.remedy)["oversamples"])

    @property
    def uses_sigma(self) -> bool:
        """Whether the remedy reads `sigma` (flip+noise): only then is sigma tuned."""
        return bool(REMEDIES.meta(self.remedy)["sigma"])

    @property
    def loss_params(self) -> dict[str, float]:
        """{the loss's parameter: this cell's value} for the fields the remedy reads
        (reweight: {"beta": cb_beta}); empty for a remedy with a parameterless loss."""
        fields = REMEDIES.meta(self.remedy).get("loss_params", {})
        return {param: float(getattr(self, field)) for field, param in fields.items()}

    @property
    def loss_fields(self) -> tuple[str, ...]:
        """The Cell fields the remedy's loss reads (reweight: cb_beta)."""
        return tuple(REMEDIES.meta(self.remedy).get("loss_params", {}))

    def _tunes(self, field: str) -> bool:
        return field in REMEDIES.meta(self.remedy).get("tuned", ())

    @property
    def tunes_cb_beta(self) -> bool:
        """Whether the remedy's study searches cb_beta (reweight; ldam-drw keeps 0.9999)."""
        return self._tunes("cb_beta")

    @property
    def tunes_la_tau(self) -> bool:
        """Whether the remedy's study searches la_tau (logit-adjust)."""
        return self._tunes("la_tau")

    @property
    def tunes_ldam_margin(self) -> bool:
        """Whether the remedy's study searches ldam_margin (ldam-drw)."""
        return self._tunes("ldam_margin")

    def remedy_kwargs(self) -> dict[str, object]:
        """What make_remedy takes from the cell: the tail, sigma and the loss's parameters."""
        return {"tail_classes": self.tail_classes, "sigma": self.sigma,
                "loss_params": self.loss_params}

    def params(self) -> dict[str, object]:
        """Every field, as a run's params: a tuple as a list, which a param shows as its JSON
        (`[0, 1, 2, 3, 4]`), read back by tracking.results."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}


CELL_FIELDS = {f.name: f for f in dataclasses.fields(Cell)}
REQUIRED = [n for n, f in CELL_FIELDS.items() if f.default is dataclasses.MISSING]
CHOICES = {"model": MODELS, "variant": VARIANTS, "remedy": REMEDIES}  # registry-named fields
NOTES = {"table", "reference_train_acc", "reference_test_acc"}  # reference data, not settings
RANGES = {  # field -> (whether a value is allowed, what the message says it must be)
    "epochs": (lambda v: v >= 1, "at least 1"),
    "seeds": (lambda v: v >= 1, "at least 1"),
    "batch_size": (lambda v: v >= 1, "at least 1"),
    "lr": (lambda v: 0 < v < math.inf, "> 0 and finite"),
    "sigma": (lambda v: 0 <= v < math.inf, ">= 0 and finite"),
    "imbalance_ratio": (lambda v: 1 <= v < math.inf, ">= 1 and finite"),
    "cb_beta": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "la_tau": (lambda v: 0 <= v < math.inf, ">= 0 and finite"),
    "ldam_margin": (lambda v: 0 <= v < math.inf, ">= 0 and finite"),
    "ldam_s": (lambda v: 0 < v < math.inf, "> 0 and finite"),
    "drw_defer": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "train_limit": (lambda v: v >= 0, "at least 0 (0 = all)"),
    "test_limit": (lambda v: v >= 0, "at least 0 (0 = all)"),
    "trials": (lambda v: v >= 0, "at least 0 (0 = no tuning)"),
    "seed": (lambda v: v >= 0, "at least 0"),  # numpy's SeedSequence takes no negative seed
    "precision": (lambda v: v in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
}
# a field's annotation -> (what it accepts, what it holds); numpy's numbers are Integral / Real
_KINDS = {"str": (str, str), "int": (numbers.Integral, int), "float": (numbers.Real, float)}
INT_TUPLE = "tuple[int, ...]"  # a set of class indices: a TOML array, a list or a tuple


def _checked(name: str, annotation: object, value: object) -> object:
    """`value` as field `name` holds it, or a GridError naming the field and what it must be."""
    if str(annotation) == INT_TUPLE:
        return _int_tuple(name, value)
    if str(annotation) not in _KINDS:
        raise TypeError(f"Cell.{name} is a {annotation}, which _checked cannot check: add the "
                        "type to benchmark.cells._KINDS")
    accepts, kind = _KINDS[str(annotation)]
    if not isinstance(value, accepts) or isinstance(value, bool):
        raise GridError(f"{name} must be {kind.__name__}, got {value!r}")
    value = kind(value)
    if name in CHOICES and value not in CHOICES[name]:
        raise GridError(f"{name} {value!r} is not one of {', '.join(CHOICES[name].names())}")
    if kind is str and not value:
        raise GridError(f"{name} must not be empty")
    if name in RANGES and not RANGES[name][0](value):
        raise GridError(f"{name} must be {RANGES[name][1]}, got {value!r}")
    return value


def _int_tuple(name: str, value: object) -> tuple[int, ...]:
    """Distinct ints (a TOML array, a list, a tuple, a numpy array) as a sorted tuple, so the
    same classes in another order are the same cell with the same key."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | np.ndarray):
        raise GridError(f"{name} must be a list of class indices, got {value!r}")
    items = list(value)
    if any(not isinstance(v, numbers.Integral) or isinstance(v, bool) for v in items):
        raise GridError(f"{name} must be a list of int, got {value!r}")
    items = [int(v) for v in items]
    if not items:
        raise GridError(f"{name} must not be empty")
    twice = sorted({v for v in items if items.count(v) > 1})
    if twice:
        raise GridError(f"{name} lists {', '.join(map(str, twice))} more than once")
    return tuple(sorted(items))


def _num_classes(dataset: str) -> int:
    """The dataset's class count; one not yet resolved (`auto`) or not a source (one a test
    builds) is held to the most classes any source has."""
    return CLASS_COUNTS.get(dataset, max(CLASS_COUNTS.values()))


def _variant_tail(cell: Cell) -> tuple[int, ...]:
    """The cell's tail: its tail_classes, or the one its variant fixes (exp), which the default
    tail becomes and any other tail is refused for."""
    own = variant_tail(cell.variant, cell.tail_classes, _num_classes(cell.dataset))
    if own != cell.tail_classes and cell.tail_classes != REFERENCE_TAIL:
        raise GridError(f"variant {cell.variant} fixes its own tail, classes "
                        f"{', '.join(map(str, own))} (every class it shrinks below the largest): "
                        f"leave tail_classes out, got {list(cell.tail_classes)}")
    return own


def _check_tail(tail: tuple[int, ...], dataset: str) -> None:
    """The tail classes are classes of the cell's dataset and leave it a head. A dataset not
    yet resolved (`auto`) or not a source (one a test builds) is held to the most classes any
    source has; the loaded data checks its own count again (make_variant)."""
    n = _num_classes(dataset)
    of = dataset if dataset in CLASS_COUNTS else " or ".join(CLASS_COUNTS)
    bad = [c for c in tail if not 0 <= c < n]
    if bad:
        raise GridError(f"tail_classes {', '.join(map(str, bad))} are not classes of {of} "
                        f"(0..{n - 1})")
    if len(tail) >= n:
        raise GridError(f"tail_classes name all {n} classes of {of}: leave at least one head "
                        "class")


@dataclass(frozen=True)
class GridEntry:
    cell: Cell
    reference: dict[str, float]  # the reference study's numbers for this cell, if any


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise GridError(f"{path}: no such grid file") from None
    except tomllib.TOMLDecodeError as e:
        raise GridError(f"{path}: not valid TOML ({e})") from None


def _check_entry(raw: dict, where: str) -> Cell:
    """The cell a grid's [[cell]] table describes; its errors start with `where`."""
    unknown = set(raw) - set(CELL_FIELDS) - NOTES
    if "augment" in unknown:  # the remedy axis's name until cell layout 4
        raise GridError(f"{where}: the field augment is called remedy now: write remedy = "
                        f"{raw['augment']!r}")
    if unknown:
        raise GridError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; "
                        f"a cell takes {', '.join(CELL_FIELDS)}")
    for name in REQUIRED:
        if name not in raw:
            raise GridError(f"{where}: missing field {name!r}")
    try:
        return Cell(**{k: v for k, v in raw.items() if k in CELL_FIELDS})
    except GridError as e:
        raise GridError(f"{where}: {e}") from None


def grid_path(name: str) -> Path:
    """A grid by name (a file in benchmark/grids) or by path."""
    path = Path(name)
    return path if path.suffix == ".toml" else GRID_DIR / f"{name}.toml"


def load_grid(name: str) -> list[GridEntry]:
    """The entries of a grid file, in order; `include = "other"` pulls in another grid first."""
    path = grid_path(name)
    raw = _read_toml(path)
    entries = load_grid(raw["include"]) if "include" in raw else []
    defaults = raw.get("defaults", {})
    for i, cell in enumerate(raw.get("cell", [])):
        where = f"{path}: [[cell]] #{i + 1}"
        merged = defaults | cell
        ref = {k.removeprefix("reference_"): v for k, v in merged.items() if k in NOTES}
        entries.append(GridEntry(_check_entry(merged, where), ref))
    if not entries:
        raise GridError(f"{path}: no [[cell]] tables")
    return entries


def load_profile(name: str, path: Path | None = None) -> dict:
    """A profile of benchmark/grids/profiles.toml (or of `path`), its fields named by Cell."""
    path = path or PROFILES
    profiles = _read_toml(path)
    if name not in profiles:
        raise GridError(f"{path}: unknown profile {name!r}; choose one of {', '.join(profiles)}")
    unknown = set(profiles[name]) - set(CELL_FIELDS)
    if unknown:
        raise GridError(f"{path}: [{name}] has unknown field(s) {', '.join(sorted(unknown))}; "
                        f"a profile sets Cell fields: {', '.join(CELL_FIELDS)}")
    return profiles[name]


def apply_profile(cell: Cell, name: str, profile: dict) -> Cell:
    """The cell as a profile scales it. A value is for every cell, or a table by model
    (`epochs = { cnn = 6 }`); `epochs` caps the grid's epochs rather than replacing them."""
    changes = {}
    for key, value in profile.items():
        if key not in CELL_FIELDS:
            continue
        if isinstance(value, dict):
            if cell.model not in value:
                continue
            value = value[cell.model]
        changes[key] = min(cell.epochs, value) if key == "epochs" else value
    return dataclasses.replace(cell, profile=name, **changes)


RESTRICTS = ("model", "variant", "remedy")  # what a grid's [profile.NAME] table may restrict


def load_restriction(grid: str, profile: str) -> dict[str, list[str]]:
    """What the grid file's `[profile.NAME]` table keeps of its cells under that profile, by
    model, variant or remedy (`[profile.quick] model = ["cnn"]`: quick runs the cnn cells
    alone); {} when the file has no table for it. A table names a profile of profiles.toml and
    lists registry names; anything else is a GridError naming the file and the table."""
    path = grid_path(grid)
    tables = _read_toml(path).get("profile", {})
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        raise GridError(f"{path}: `profile` must hold tables, as [profile.quick] "
                        'model = ["cnn"]')
    known = _read_toml(PROFILES)
    for name, table in tables.items():
        where = f"{path}: [profile.{name}]"
        if name not in known:
            raise GridError(f"{where}: unknown profile {name!r}; {PROFILES.name} has "
                            f"{', '.join(known)}")
        unknown = set(table) - set(RESTRICTS)
        if unknown:
            raise GridError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; a grid's "
                            f"profile table keeps cells by {', '.join(RESTRICTS)} (settings "
                            f"for every cell go in {PROFILES.name})")
        for key, names in table.items():
            if not isinstance(names, list) or not names or \
                    not all(isinstance(n, str) for n in names):
                raise GridError(f"{where}: {key} must be a non-empty list of names, got "
                                f"{names!r}")
            bad = [n for n in names if n not in CHOICES[key]]
            if bad:
                raise GridError(f"{where}: {key} {', '.join(map(repr, bad))} is not one of "
                                f"{', '.join(CHOICES[key].names())}")
    return tables.get(profile, {})


def _keeps(cell: Cell, selection: dict[str, list[str]]) -> bool:
    return all(getattr(cell, k) in v for k, v in selection.items() if v)


def expand(grid: str, profile: str, dataset: str, filters: dict[str, list[str]] | None = None,
           overrides: dict[str, object] | None = None) -> list[GridEntry]:
    """Grid -> the grid's restriction for the profile -> profile -> dataset and overrides ->
    filters: the cells to run, in grid order. A filter that only cells the restriction left
    out match is a GridError that says so (rather than "no cell matches")."""
    prof = load_profile(profile)
    restriction = load_restriction(grid, profile)
    out, left_out = [], []
    for entry in load_grid(grid):
        try:
            cell = apply_profile(entry.cell, profile, prof)
        except GridError as e:  # a profile's value, checked by the cell it scales
            raise GridError(f"{PROFILES}: [{profile}]: {e}") from None
        cell = dataclasses.replace(cell, dataset=dataset, **(overrides or {}))
        if not _keeps(cell, filters or {}):
            continue
        (out if _keeps(cell, restriction) else left_out).append(GridEntry(cell, entry.reference))
    if not out and left_out:
        kept = "; ".join(f"{k} {', '.join(v)}" for k, v in restriction.items())
        asked = {k: v for k, v in (filters or {}).items() if v}
        why = f"none of those matches {asked}" if asked else "the grid has none of those"
        raise GridError(f"{grid_path(grid)}: profile {profile} runs only the cells of {kept}, "
                        f"and {why}: choose another profile (paper runs every cell)")
    return out
