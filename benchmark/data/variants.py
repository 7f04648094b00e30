"""Dataset variants (balanced, long-tail) and the seeded, stratified index selections behind
them."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from benchmark.data.dataset import DataError, Dataset

TAIL_CLASSES = (0, 1, 2, 3, 4)  # the reference cuts the first five classes (airplane ... deer)
TAIL_FRACTION = 0.1  # and keeps 10% of their training images


def class_counts(labels: torch.Tensor, num_classes: int) -> list[int]:
    return torch.bincount(labels.cpu(), minlength=num_classes).tolist()


def _take_per_class(labels: torch.Tensor, keep: dict[int, int], seed: int) -> torch.Tensor:
    """Sorted indices of `keep[c]` images drawn at random (seeded) from each class c."""
    gen = torch.Generator().manual_seed(seed)
    parts = []
    for c, k in sorted(keep.items()):
        idx = torch.nonzero(labels == c).flatten()
        parts.append(idx[torch.randperm(len(idx), generator=gen)[:k]])
    return torch.cat(parts).sort().values if parts else torch.empty(0, dtype=torch.long)


def stratified_subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """About `n` indices with each class in its original proportion (at least one per class)."""
    counts = torch.bincount(labels)
    frac = min(1.0, n / max(1, len(labels)))
    return _take_per_class(labels, {c: max(1, round(int(k) * frac)) for c, k in
                                    enumerate(counts.tolist()) if k}, seed)


def stratified_split(labels: torch.Tensor, fraction: float, seed: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) indices: `fraction` of every class (at least one) held out."""
    if not 0 < fraction < 1:
        raise DataError(f"validation fraction must lie strictly between 0 and 1, got {fraction}")
    counts = torch.bincount(labels).tolist()
    val = _take_per_class(labels, {c: max(1, round(k * fraction)) for c, k in enumerate(counts)
                                   if k > 1}, seed)
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[val] = False
    return torch.nonzero(mask).flatten(), val


def long_tail_indices(labels: torch.Tensor, tail_classes: Sequence[int] = TAIL_CLASSES,
                      fraction: float = TAIL_FRACTION, seed: int = 0) -> torch.Tensor:
    """Keep `fraction` of every tail class (at least one image) and all of the others."""
    if not 0 < fraction <= 1:
        raise DataError(f"long-tail fraction must lie in (0, 1], got {fraction}")
    counts = torch.bincount(labels).tolist()
    keep = {c: (max(1, round(k * fraction)) if c in tail_classes else k)
            for c, k in enumerate(counts)}
    return _take_per_class(labels, keep, seed)


def _balanced(labels: torch.Tensor, **_) -> torch.Tensor:
    return torch.arange(len(labels))


VARIANTS = {"balanced": _balanced, "long-tail": long_tail_indices}


def make_variant(data: Dataset, variant: str, seed: int = 0,
                 tail_classes: Sequence[int] = TAIL_CLASSES,
                 fraction: float = TAIL_FRACTION) -> Dataset:
    """The dataset with its training set cut as `variant` says; the test set is never touched."""
    if variant not in VARIANTS:
        raise DataError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    bad = [c for c in tail_classes if not 0 <= c < data.num_classes]
    if bad:
        raise DataError(f"tail classes {bad} are not classes of {data.source} "
                        f"(0..{data.num_classes - 1})")
    idx = VARIANTS[variant](data.train_y, tail_classes=tail_classes, fraction=fraction, seed=seed)
    return Dataset(data.train_x[idx], data.train_y[idx], data.test_x, data.test_y,
                   data.classes, data.source, data.digest, data.path)
