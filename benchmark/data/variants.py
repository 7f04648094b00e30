"""Dataset variants (balanced, long-tail) and the seeded, stratified index selections behind
them."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from benchmark.data.dataset import DataError, Dataset
from benchmark.data.sampling import take_per_class
from benchmark.registry import Registry

# A variant picks training indices: (labels, tail_classes=, fraction=, seed=) -> sorted indices.
# The tail classes and the fraction kept have no defaults here: they are the cell's
# (Cell.tail_classes, Cell.tail_fraction), the one place that says what the reference's are.
Variant = Callable[..., torch.Tensor]
VARIANTS: Registry[Variant] = Registry("variant")


def class_counts(labels: torch.Tensor, num_classes: int) -> list[int]:
    return torch.bincount(labels.cpu(), minlength=num_classes).tolist()


@VARIANTS.register("balanced")
def _balanced(labels: torch.Tensor, **_) -> torch.Tensor:
    """Every training image."""
    return torch.arange(len(labels))


@VARIANTS.register("long-tail")
def long_tail_indices(labels: torch.Tensor, *, tail_classes: Sequence[int], fraction: float,
                      seed: int = 0) -> torch.Tensor:
    """Keep `fraction` of every tail class (at least one image) and all of the others."""
    if not 0 < fraction <= 1:
        raise DataError(f"long-tail fraction must lie in (0, 1], got {fraction}")
    counts = torch.bincount(labels).tolist()
    keep = {c: (max(1, round(k * fraction)) if c in tail_classes else k)
            for c, k in enumerate(counts)}
    return take_per_class(labels, keep, seed)


def make_variant(data: Dataset, variant: str, seed: int = 0, *, tail_classes: Sequence[int],
                 fraction: float) -> Dataset:
    """The dataset with its training set cut as `variant` says; the test set is never touched."""
    select = VARIANTS[variant]  # an unknown name raises, listing the choices
    bad = [c for c in tail_classes if not 0 <= c < data.num_classes]
    if bad:
        raise DataError(f"tail classes {bad} are not classes of {data.source} "
                        f"(0..{data.num_classes - 1})")
    idx = select(data.train_y, tail_classes=tail_classes, fraction=fraction, seed=seed)
    return Dataset(data.train_x[idx], data.train_y[idx], data.test_x, data.test_y,
                   data.classes, data.source, data.digest, data.path)
