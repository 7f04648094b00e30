"""CIFAR-10 from the official python pickle batches, read by a restricted unpickler."""

from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch

from benchmark.data.dataset import DataError, Dataset, file_digest
from benchmark.data.download import fetch, reachable
from benchmark.errors import DataWarning

FOLDER = "cifar-10-batches-py"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
MD5 = {  # the official checksums, as torchvision lists them
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
TRAIN = [f"data_batch_{i}" for i in range(1, 6)]

# What the batches hold besides dicts, lists and bytes: numpy arrays and their dtypes. The
# callables are taken from numpy itself, so both `numpy.core` and `numpy._core` names map to them.
_reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
_frombuffer = np.zeros(1).__reduce_ex__(5)[0]


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    # Python 3 writes bytes at pickle protocol 2 as _codecs.encode(text, 'latin1'); that and
    # nothing else of the codecs machinery is let through
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


_ALLOWED = {
    (mod, name): obj
    for core in ("numpy.core", "numpy._core")
    for mod, name, obj in (
        (f"{core}.multiarray", "_reconstruct", _reconstruct),
        (f"{core}.numeric", "_frombuffer", _frombuffer),
    )
} | {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
     ("_codecs", "encode"): _latin1_bytes}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}") from None


def read_batch(path: Path) -> dict[str, object]:
    """One pickle batch as a dict with str keys; anything but arrays and plain data is refused."""
    try:
        obj = _RestrictedUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise DataError(f"{path}: not a CIFAR-10 batch ({e}); nothing in it was run. "
                        "Replace it with the official file.") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as e:
        raise DataError(f"{path}: truncated or corrupt pickle ({type(e).__name__}: {e}); "
                        "delete the folder and download the archive again.") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict, found {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _images_and_labels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = read_batch(path)
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"{path}: a batch needs 'data' and 'labels', found {sorted(batch)}")
    data, labels = np.asarray(batch["data"]), np.asarray(batch["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' must be uint8 (N, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: {data.shape[0]} images but labels of shape {labels.shape} "
                        f"and type {labels.dtype}; need one integer label per image")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def present(data_dir: Path) -> bool:
    return all((data_dir / FOLDER / name).is_file() for name in MD5)


def can_download() -> bool:
    return reachable(URL)


def load(data_dir: Path, download: bool = True) -> Dataset:
    folder = data_dir / FOLDER
    if not present(data_dir):
        if not (download and can_download()):
            missing = [n for n in MD5 if not (folder / n).is_file()]
            raise DataError(
                f"CIFAR-10 not found: looked in {folder} for {', '.join(missing)}, and {URL} "
                f"cannot be reached. Download and unpack that archive into {data_dir} "
                "(or pass --data-dir / set TAILBENCH_DATA), or use --dataset fashion-mnist.")
        fetch(URL, data_dir, ARCHIVE_MD5, extract=True)
    paths = [folder / n for n in MD5]
    digest, md5s = file_digest(paths)
    differ = [n for n, m in md5s.items() if m != MD5[n]]
    if differ:
        warnings.warn(f"{folder}: {', '.join(differ)} differ from the official CIFAR-10 files "
                      f"(a subset or a re-packed copy?); loading anyway, digest {digest[:12]}",
                      DataWarning, stacklevel=2)
    train = [_images_and_labels(folder / n) for n in TRAIN]
    test_x, test_y = _images_and_labels(folder / "test_batch")
    names = read_batch(folder / "batches.meta").get("label_names")
    if not isinstance(names, list) or not names:
        raise DataError(f"{folder / 'batches.meta'}: no 'label_names' list")
    return Dataset(
        train_x=torch.from_numpy(np.concatenate([x for x, _ in train])),
        train_y=torch.from_numpy(np.concatenate([y for _, y in train])),
        test_x=torch.from_numpy(test_x.copy()), test_y=torch.from_numpy(test_y),
        classes=tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names),
        source="cifar10", digest=digest, path=str(folder))
