"""Datasets as tensors: sources (CIFAR-10, Fashion-MNIST) -> variants (long-tail) -> augment."""

from benchmark.data.dataset import DataError, Dataset
from benchmark.data.sources import SOURCES, default_data_dir, load_dataset, resolve_name

__all__ = ["SOURCES", "DataError", "Dataset", "default_data_dir", "load_dataset",
           "resolve_name"]
