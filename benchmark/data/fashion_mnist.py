"""Fashion-MNIST from its IDX files, padded to 32x32 and repeated to three channels."""

from __future__ import annotations

import gzip
import hashlib
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch

from benchmark.data.dataset import DataError, Dataset, file_digest
from benchmark.data.download import fetch, reachable
from benchmark.errors import DataWarning

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
MD5 = {  # of the gzipped official files
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
RAW_MD5 = {  # of the unpacked official files: the same whoever gzipped them (Debian re-gzips)
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def unpack(path: Path) -> bytes:
    """The bytes of an IDX file, gunzipped where its name ends in .gz."""
    try:
        return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot be read ({e}); the file is truncated or corrupt") from None


def read_idx(path: Path, ndim: int, raw: bytes | None = None) -> np.ndarray:
    """An IDX file of unsigned bytes (gzipped or not; `raw`: its unpacked bytes, if read
    already) as an array of `ndim` dimensions."""
    raw = unpack(path) if raw is None else raw
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else -1
    if magic != 0x0800 + ndim:
        raise DataError(f"{path}: not an IDX file of {ndim}-d unsigned bytes (magic {magic:#x})")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    start, size = 4 + 4 * ndim, int(np.prod(dims))
    if len(raw) != start + size:
        raise DataError(f"{path}: header says {dims} ({size} bytes) but {len(raw) - start} "
                        "bytes follow; the file is truncated or corrupt")
    return np.frombuffer(raw, np.uint8, offset=start).reshape(dims)


def _find(folders: list[Path], stem: str) -> Path | None:
    for folder in folders:
        for name in (stem + ".gz", stem):
            if (folder / name).is_file():
                return folder / name
    return None


def _folders(data_dir: Path) -> list[Path]:
    return [data_dir / "fashion-mnist", data_dir / "FashionMNIST" / "raw", data_dir, SYSTEM_DIR]


def _to_rgb32(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images.copy()).unsqueeze(1)  # (N, 1, 28, 28)
    x = torch.nn.functional.pad(x, (2, 2, 2, 2))  # (N, 1, 32, 32), black border
    return x.expand(-1, 3, -1, -1).contiguous()  # (N, 3, 32, 32), grey in every channel


def load(data_dir: Path, download: bool = True) -> Dataset:
    folders = _folders(data_dir)
    stems = [n.removesuffix(".gz") for n in MD5]
    paths = [_find(folders, s) for s in stems]
    if None in paths and download and reachable(URL):
        for name, md5 in MD5.items():
            fetch(URL + name, data_dir / "fashion-mnist", md5)
        paths = [_find(folders, s) for s in stems]
    if None in paths:
        missing = [s for s, p in zip(stems, paths, strict=True) if p is None]
        raise DataError(
            f"Fashion-MNIST not found: looked for {', '.join(missing)} (.gz or not) in "
            f"{', '.join(map(str, folders))}. Install Debian's dataset-fashion-mnist "
            f"(apt-get install dataset-fashion-mnist) or put the IDX files in {folders[0]}.")
    digest, _ = file_digest(paths)
    raws = [unpack(p) for p in paths]
    differ = [p.name for p, s, raw in zip(paths, stems, raws, strict=True)
              if hashlib.md5(raw).hexdigest() != RAW_MD5[s]]
    if differ:
        warnings.warn(f"{', '.join(differ)} differ from the official Fashion-MNIST files; "
                      f"loading anyway, digest {digest[:12]}", DataWarning, stacklevel=2)
    train_x, train_y, test_x, test_y = (read_idx(p, 3 if "images" in p.name else 1, raw)
                                        for p, raw in zip(paths, raws, strict=True))
    for x, y, px, py in ((train_x, train_y, paths[0], paths[1]),
                         (test_x, test_y, paths[2], paths[3])):
        if x.shape[1:] != (28, 28) or len(x) != len(y):
            raise DataError(f"{px}: {x.shape} images do not match the {len(y)} labels of {py}")
    return Dataset(_to_rgb32(train_x), torch.from_numpy(train_y.astype(np.int64)),
                   _to_rgb32(test_x), torch.from_numpy(test_y.astype(np.int64)),
                   CLASSES, "fashion-mnist", digest, str(paths[0].parent))
