"""Dataset variants (the protocols: balanced, long-tail, exp) and the seeded, stratified index
selections behind them.

The imbalance ratio rho (Cell.imbalance_ratio) is the largest class's count over the smallest's:
- `long-tail` is the *step* protocol (the reference's: the tail classes, the first five by
  default, cut to 10%, rho = 10): each tail class c keeps round(n_c / rho) of its n_c images
  (at least one), every other class keeps all of its own.
- `exp` is the exponential protocol of Cao et al. 2019 (CIFAR-10-LT): class i of C keeps
  floor(n_max * rho^(-i / (C - 1))) images (at least one, at most its own n_i), n_max the
  largest class count: class 0 keeps all, class C-1 keeps n_max / rho. Floored as Cao et al.'s
  code does, so CIFAR-10's 5000 a class at rho = 100 gives their 12,406 images. Its tail is
  fixed by the protocol (`exp_tail`): every class but class 0, the ones it shrinks below n_max;
  oversample and flip+noise fill each of them up to n_max, tail_acc pools them.
Both draw which images are kept from the repetition's seed (take_per_class).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from benchmark.data.dataset import DataError, Dataset
from benchmark.data.sampling import take_per_class
from benchmark.registry import Registry

# A variant picks training indices: (labels, tail_classes=, ratio=, seed=) -> sorted indices.
# The tail classes and the ratio have no defaults here: they are the cell's
# (Cell.tail_classes, Cell.imbalance_ratio), the one place that says what the reference's are.
# Metadata: tail = a function num_classes -> the tail classes, for a protocol that fixes its
# own tail (exp); the others cut (or score) the cell's tail_classes.
Variant = Callable[..., torch.Tensor]
VARIANTS: Registry[Variant] = Registry("variant")


def class_counts(labels: torch.Tensor, num_classes: int) -> list[int]:
    return torch.bincount(labels.cpu(), minlength=num_classes).tolist()


def _check_ratio(name: str, ratio: float) -> None:
    if not 1 <= ratio < math.inf:
        raise DataError(f"{name} imbalance ratio must be >= 1 and finite, got {ratio}")


@VARIANTS.register("balanced", cuts=False)  # names a tail (tail_classes), cuts no class
def _balanced(labels: torch.Tensor, **_) -> torch.Tensor:
    """Every training image."""
    return torch.arange(len(labels))


def step_counts(counts: Sequence[int], tail_classes: Sequence[int], ratio: float) -> list[int]:
    """The step protocol's counts: round(n_c / ratio) (at least 1) for a tail class c that has
    images, n_c for the others."""
    return [max(1, round(k / ratio)) if c in tail_classes and k else k
            for c, k in enumerate(counts)]


def exp_counts(counts: Sequence[int], ratio: float) -> list[int]:
    """The exponential protocol's counts: floor(n_max * ratio^(-i / (C - 1))), at least 1 and
    at most n_i, for class i of C with images (the 1e-9 keeps a float just below a whole number,
    5000 * 0.01 as 49.999..., from flooring to one image less)."""
    n_max, last = max(counts, default=0), max(1, len(counts) - 1)
    return [min(k, max(1, math.floor(n_max * ratio ** (-i / last) + 1e-9))) if k else 0
            for i, k in enumerate(counts)]


def exp_tail(num_classes: int) -> tuple[int, ...]:
    """exp's tail: every class it shrinks below the largest count, all but class 0."""
    return tuple(range(1, num_classes))


@VARIANTS.register("long-tail")
def long_tail_indices(labels: torch.Tensor, *, tail_classes: Sequence[int], ratio: float,
                      seed: int = 0) -> torch.Tensor:
    """The step protocol: each tail class keeps 1/ratio of its images (at least one), the
    others all of theirs."""
    _check_ratio("long-tail", ratio)
    counts = torch.bincount(labels).tolist()
    keep = step_counts(counts, tail_classes, ratio)
    return take_per_class(labels, dict(enumerate(keep)), seed)


@VARIANTS.register("exp", tail=exp_tail)
def exp_indices(labels: torch.Tensor, *, ratio: float, seed: int = 0, **_) -> torch.Tensor:
    """Cao et al. 2019's exponential protocol: class i keeps n_max * ratio^(-i / (C - 1))
    images, floored (at least one). Its tail is exp_tail's, whatever tail_classes says."""
    _check_ratio("exp", ratio)
    counts = torch.bincount(labels).tolist()
    return take_per_class(labels, dict(enumerate(exp_counts(counts, ratio))), seed)


def variant_tail(variant: str, tail_classes: Sequence[int], num_classes: int
                 ) -> tuple[int, ...]:
    """The tail a cell of `variant` has: the protocol's own (exp), else its tail_classes."""
    own = VARIANTS.meta(variant).get("tail")
    return own(num_classes) if own else tuple(sorted(tail_classes))


def make_variant(data: Dataset, variant: str, seed: int = 0, *, tail_classes: Sequence[int],
                 ratio: float) -> Dataset:
    """The dataset with its training set cut as `variant` says; the test set is never touched."""
    select = VARIANTS[variant]  # an unknown name raises, listing the choices
    bad = [c for c in tail_classes if not 0 <= c < data.num_classes]
    if bad:
        raise DataError(f"tail classes {bad} are not classes of {data.source} "
                        f"(0..{data.num_classes - 1})")
    own = variant_tail(variant, tail_classes, data.num_classes)
    if own != tuple(sorted(tail_classes)):
        raise DataError(f"variant {variant} fixes its tail as classes {list(own)} of "
                        f"{data.source}, got tail classes {sorted(tail_classes)}")
    idx = select(data.train_y, tail_classes=tail_classes, ratio=ratio, seed=seed)
    return Dataset(data.train_x[idx], data.train_y[idx], data.test_x, data.test_y,
                   data.classes, data.source, data.digest, data.path)
