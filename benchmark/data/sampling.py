"""Seeded, stratified index selections: the subsample, the validation split and the per-class
draws behind the variants. Plain index arithmetic on label tensors; no Dataset here, so both
the Dataset (its `limit`) and the variants build on it."""

from __future__ import annotations

import torch


def take_per_class(labels: torch.Tensor, keep: dict[int, int], seed: int) -> torch.Tensor:
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
    return take_per_class(labels, {c: max(1, round(int(k) * frac)) for c, k in
                                    enumerate(counts.tolist()) if k}, seed)


def stratified_split(labels: torch.Tensor, fraction: float, seed: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) indices: `fraction` of every class (at least one) held out."""
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must lie strictly between 0 and 1, got {fraction}")
    counts = torch.bincount(labels).tolist()
    val = take_per_class(labels, {c: max(1, round(k * fraction)) for c, k in enumerate(counts)
                                   if k > 1}, seed)
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[val] = False
    return torch.nonzero(mask).flatten(), val
