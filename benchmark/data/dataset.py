"""The dataset object: whole splits as uint8 tensors, validated on construction."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmark.data.sampling import stratified_subset
from benchmark.errors import UserError


class DataError(UserError, RuntimeError):
    """Data that is missing, corrupt or of the wrong shape; the message says where and what
    to do."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A whole dataset in memory: uint8 images (N, 3, 32, 32) and int64 labels, train and test."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]
    source: str  # "cifar10" or "fashion-mnist"
    digest: str  # sha256 over the files it was read from, for the run's dataset input
    path: str = ""  # the folder the files came from

    def __post_init__(self) -> None:
        for split, x, y in (("train", self.train_x, self.train_y),
                            ("test", self.test_x, self.test_y)):
            where = f"{self.source} {split} set ({self.path or 'in memory'})"
            if x.dtype != torch.uint8 or x.dim() != 4 or tuple(x.shape[1:]) != (3, 32, 32):
                raise DataError(f"{where}: images must be uint8 (N, 3, 32, 32), got "
                                f"{x.dtype} {tuple(x.shape)}")
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise DataError(f"{where}: need one int64 label per image, got {y.dtype} "
                                f"{tuple(y.shape)} for {x.shape[0]} images")
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(self.classes)):
                raise DataError(f"{where}: labels must lie in 0..{len(self.classes) - 1}, "
                                f"found {int(y.min())}..{int(y.max())}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def limit(self, train: int | None = None, test: int | None = None, seed: int = 0) -> Dataset:
        """A stratified random subset (same seed, same images), for quick runs and tests."""
        tr = stratified_subset(self.train_y, train, seed) if train else slice(None)
        te = stratified_subset(self.test_y, test, seed + 1) if test else slice(None)
        return Dataset(self.train_x[tr], self.train_y[tr], self.test_x[te], self.test_y[te],
                       self.classes, self.source, self.digest, self.path)


def file_digest(paths: list[Path]) -> tuple[str, dict[str, str]]:
    """(sha256 over all files in order, {name: md5}) - md5 is what the official lists publish."""
    total, md5s = hashlib.sha256(), {}
    for p in paths:
        md5 = hashlib.md5(p.read_bytes()).hexdigest()
        md5s[p.name] = md5
        total.update(f"{p.name}:{md5}\n".encode())
    return total.hexdigest(), md5s
