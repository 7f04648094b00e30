"""The registry of dataset sources, with `auto` choosing CIFAR-10 where it can."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from benchmark.data import cifar10, fashion_mnist
from benchmark.data.dataset import DataError, Dataset


def default_data_dir() -> Path:
    return Path(os.environ.get("TAILBENCH_DATA", "data"))


def resolve_name(name: str, data_dir: Path, download: bool = True) -> tuple[str, str]:
    """(the source `name` stands for, why): `auto` is cifar10 where present or downloadable."""
    if name != "auto":
        return name, "asked for"
    if cifar10.present(data_dir):
        return "cifar10", f"found in {data_dir / cifar10.FOLDER}"
    if download and cifar10.can_download():
        return "cifar10", "downloading it"
    return "fashion-mnist", (f"CIFAR-10 is not in {data_dir / cifar10.FOLDER} and cannot be "
                             "downloaded")


def _auto(data_dir: Path, download: bool) -> Dataset:
    name, why = resolve_name("auto", data_dir, download)
    print(f"tailbench: dataset auto -> {name} ({why})", file=sys.stderr)
    return SOURCES[name](data_dir, download)


SOURCES: dict[str, Callable[[Path, bool], Dataset]] = {
    "cifar10": cifar10.load,
    "fashion-mnist": fashion_mnist.load,
    "auto": _auto,
}


def load_dataset(name: str = "auto", data_dir: str | Path | None = None,
                 download: bool = True, source: str | None = None) -> Dataset:
    """Load a dataset by name ('cifar10', 'fashion-mnist' or 'auto') from `data_dir`;
    `source`, when given, is what `auto` was already resolved to."""
    if name not in SOURCES:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(SOURCES)}")
    folder = Path(data_dir) if data_dir else default_data_dir()
    if source and name == "auto":
        return SOURCES[source](folder, download)
    return SOURCES[name](folder, download)
