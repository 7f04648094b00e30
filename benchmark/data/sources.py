"""The registry of dataset sources, with the rule `auto` choosing CIFAR-10 where it can."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from benchmark.data import cifar10, fashion_mnist
from benchmark.data.dataset import Dataset
from benchmark.registry import Registry


def default_data_dir() -> Path:
    return Path(os.environ.get("TAILBENCH_DATA", "data"))


# A source loads a whole dataset: (data_dir, download) -> Dataset, or a DataError that says
# where it looked and what to do.
Source = Callable[[Path, bool], Dataset]
SOURCES: Registry[Source] = Registry("dataset")
SOURCES.register("cifar10", cifar10.load)
SOURCES.register("fashion-mnist", fashion_mnist.load)
# the classes of each source's official files: a cell's tail classes are checked against these
# before any data is read (and the loaded Dataset's own classes when it is cut)
CLASS_COUNTS = {"cifar10": 10, "fashion-mnist": len(fashion_mnist.CLASSES)}


def _auto(data_dir: Path, download: bool = True) -> tuple[str, str]:
    """The `auto` rule: cifar10 where present or downloadable, else fashion-mnist."""
    if cifar10.present(data_dir):
        return "cifar10", f"found in {data_dir / cifar10.FOLDER}"
    if download and cifar10.can_download():
        return "cifar10", "downloading it"
    return "fashion-mnist", (f"CIFAR-10 is not in {data_dir / cifar10.FOLDER} and cannot be "
                             "downloaded")


SOURCES.rule("auto", _auto)  # a choice (list(SOURCES) offers it), not an entry


def resolve_name(name: str, data_dir: Path, download: bool = True) -> tuple[str, str]:
    """(the source `name` stands for, why): a source stands for itself, `auto` for cifar10
    where present or downloadable, else fashion-mnist. An unknown name raises, listing the
    choices."""
    return SOURCES.resolve(name, Path(data_dir), download)


def load_dataset(name: str = "auto", data_dir: str | Path | None = None,
                 download: bool = True) -> Dataset:
    """Load a dataset by name ('cifar10', 'fashion-mnist' or 'auto') from `data_dir`
    (default: $TAILBENCH_DATA, else ./data); what `auto` picked is said on stderr."""
    folder = Path(data_dir) if data_dir else default_data_dir()
    source, why = resolve_name(name, folder, download)
    if source != name:
        print(f"tailbench: dataset {name} -> {source} ({why})", file=sys.stderr)
    return SOURCES[source](folder, download)
