"""Shared fixtures: small CIFAR-10 and Fashion-MNIST folders in their official file formats,
written into the test's tmp folder, with images a network learns in a few epochs.

No test touches the network: `no_network` (autouse) makes every reachability check answer
False and every download fail loudly.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import socket
import struct
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                 "dog", "frog", "horse", "ship", "truck")


def learnable_images(n: int, seed: int, channels: int = 3, size: int = 32
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (n, channels, size, size), labels int64 (n,)): every class equally often
    (n divisible by 10), each image black with a bright block where its class says (a 3 x 4
    grid of places), plus N(0, 20^2) pixel noise. The reference cnn learns this in a few
    hundred images; uniform class colours, by contrast, make its plain SGD oscillate."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 10)
    cell = size // 4
    x = np.zeros((n, channels, size, size), np.float32)
    for i, c in enumerate(labels):
        r, k = divmod(int(c), 4)
        x[i, :, r * cell + 1:(r + 1) * cell - 1, k * cell + 1:(k + 1) * cell - 1] = 200
    x += rng.normal(0, 20, x.shape).astype(np.float32)
    return x.clip(0, 255).astype(np.uint8), labels.astype(np.int64)


def learnable_dataset(n_train: int, n_test: int, seed: int, digest: str = "ab" * 32,
                      path: str = ""):
    """A benchmark Dataset of learnable images in memory (source "synthetic"): train from
    `seed`, test from `seed + 1`."""
    import torch

    from benchmark.data import Dataset

    x, y = learnable_images(n_train, seed)
    tx, ty = learnable_images(n_test, seed + 1)
    return Dataset(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(tx),
                   torch.from_numpy(ty), CIFAR_CLASSES, "synthetic", digest, path)


class Py2StylePickler(pickle._Pickler):
    """Protocol 2 as Python 2's cPickle wrote the official batches: every string as BINSTRING
    (read back as bytes with encoding='bytes'), numpy under its old `numpy.core` name. Python 3's
    own protocol 2 writes bytes as calls to `_codecs.encode` instead."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_bytes(self, obj: bytes | str) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj  # Python 2's str was bytes
        n = len(data)
        head = (pickle.SHORT_BINSTRING + bytes([n]) if n < 256
                else pickle.BINSTRING + struct.pack("<I", n))
        self.write(head + data)
        self.memoize(obj)

    dispatch[bytes] = save_bytes
    dispatch[str] = save_bytes

    def save_global(self, obj, name=None) -> None:
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)


def dump_batch(path: Path, batch: dict, style: str = "py2") -> None:
    """Write one batch: 'py2' as the official files, 'py3' as Python 3's pickle at protocol 2,
    'str' with str keys at the highest protocol (how a re-packed copy may look)."""
    if style == "py2":
        buf = io.BytesIO()
        Py2StylePickler(buf, protocol=2).dump(batch)
        path.write_bytes(buf.getvalue())
    elif style == "py3":
        path.write_bytes(pickle.dumps(batch, protocol=2))
    elif style == "str":
        batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
        path.write_bytes(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL))
    else:
        raise ValueError(style)


def write_cifar(root: Path, per_batch: int = 80, n_test: int = 200, seed: int = 0,
                style: str = "py2") -> Path:
    """`root/cifar-10-batches-py` as in the official archive: data_batch_1..5 and test_batch
    ({b'batch_label', b'labels', b'data' uint8 (n, 3072), b'filenames'}) and batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train_x, train_y = learnable_images(5 * per_batch, seed)  # balanced when 10 | 5 * per_batch
    test_x, test_y = learnable_images(n_test, seed + 1)
    parts = [(f"data_batch_{i + 1}", train_x[i * per_batch:(i + 1) * per_batch],
              train_y[i * per_batch:(i + 1) * per_batch]) for i in range(5)]
    for name, x, y in [*parts, ("test_batch", test_x, test_y)]:
        batch = {b"batch_label": f"{name} of 6".encode(),
                 b"labels": [int(v) for v in y],
                 b"data": np.ascontiguousarray(x.reshape(-1, 3 * 32 * 32)),
                 b"filenames": [f"img_{j}.png".encode() for j in range(len(y))]}
        dump_batch(folder / name, batch, style)
    meta = {b"num_cases_per_batch": per_batch, b"num_vis": 3072,
            b"label_names": [c.encode() for c in CIFAR_CLASSES]}
    dump_batch(folder / "batches.meta", meta, style)
    return folder


def idx_bytes(a: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: magic 0x0800 + ndim, the dims big-endian, the data."""
    head = struct.pack(">I", 0x0800 + a.ndim) + b"".join(struct.pack(">I", d) for d in a.shape)
    return head + np.ascontiguousarray(a, np.uint8).tobytes()


def write_fashion(root: Path, n_train: int = 400, n_test: int = 100, gz: bool = True,
                  seed: int = 1) -> Path:
    """`root/fashion-mnist` with the four IDX files, gzipped (as distributed) or plain."""
    folder = root / "fashion-mnist"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, split_seed in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
        x, y = learnable_images(n, split_seed, channels=1, size=28)
        for kind, a in (("images-idx3", x[:, 0]), ("labels-idx1", y)):
            raw = idx_bytes(a)
            name = f"{split}-{kind}-ubyte"
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(raw, mtime=0))
            else:
                (folder / name).write_bytes(raw)
    return folder


def pytest_configure(config):
    """Under pytest-xdist, each worker's torch on its share of the cores (as `make benchmark`'s
    workers train): torch's default, every core in every worker, oversubscribes the CPU, and
    OpenMP threads waiting on each other then slow a network's many small ops many times
    over (the packed rnn's 16 steps: 2.7 s alone, 45 s beside another worker). The processes
    a test starts get the same count (OMP_NUM_THREADS), so a run in a subprocess computes as
    one in the test's process (tests/test_resume.py compares them digit for digit)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        import torch

        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Nothing reaches the network: every source finds its URL unreachable, and a download
    that happens anyway fails the test."""
    from benchmark.data import cifar10, download, fashion_mnist

    def refuse(*args, **kwargs):
        raise AssertionError(f"a test tried to download {args[:1]}")

    for module in (cifar10, download, fashion_mnist):
        monkeypatch.setattr(module, "reachable", lambda url, timeout=3.0: False)
    monkeypatch.setattr(cifar10, "can_download", lambda: False)
    for module in (cifar10, download, fashion_mnist):
        monkeypatch.setattr(module, "fetch", refuse)


@pytest.fixture
def make_cifar(tmp_path) -> Callable[..., Path]:
    """write_cifar into a fresh folder under tmp_path; returns the cifar-10-batches-py folder."""
    count = iter(range(1000))

    def make(**kwargs) -> Path:
        return write_cifar(tmp_path / f"cifar{next(count)}", **kwargs)

    return make


@pytest.fixture
def cifar_dir(make_cifar) -> Path:
    """A data dir (the parent) holding a small official-format cifar-10-batches-py."""
    return make_cifar().parent


@pytest.fixture
def fashion_dir(tmp_path) -> Path:
    """A data dir (tmp_path) holding small gzipped Fashion-MNIST IDX files in fashion-mnist/."""
    return write_fashion(tmp_path, gz=True).parent


@pytest.fixture
def fashion_plain_dir(tmp_path) -> Path:
    """A data dir holding small plain (not gzipped) Fashion-MNIST IDX files in fashion-mnist/."""
    return write_fashion(tmp_path / "plain", gz=False).parent


@pytest.fixture(scope="session")
def learnable_split(tmp_path_factory):
    """(train, test) Splits: 400 / 200 learnable images from an official-format CIFAR-10
    folder, read through the real loader once per session."""
    from benchmark.data import cifar10
    from benchmark.train import Split

    root = tmp_path_factory.mktemp("learnable")
    write_cifar(root)
    with pytest.warns(UserWarning, match="differ from the official"):  # by design
        data = cifar10.load(root, download=False)
    return Split(data.train_x, data.train_y), Split(data.test_x, data.test_y)


def free_port() -> int:
    """A loopback TCP port nothing listens on now (for the services a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mounted_tmpfs(folder: Path, size_mb: int) -> Iterator[Path]:
    """A tmpfs of `size_mb` mounted at `folder` (created), unmounted at the end (root only)."""
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(folder)],
                   check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def text_off_canvas(fig) -> list[float]:
    """How far (inches: left, bottom, right, top) what `fig` draws reaches past its canvas:
    what saving it without bbox_inches="tight" cuts off (the tight box is what it crops to);
    empty when nothing does."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    drawn = fig.get_tightbbox(FigureCanvasAgg(fig).get_renderer())
    w, h = fig.get_size_inches()
    past = [-drawn.x0, -drawn.y0, drawn.x1 - w, drawn.y1 - h]
    return past if max(past) > 0.01 else []


def assert_readable_svg(data: bytes) -> None:
    """An SVG matplotlib drew: its size in points, and more than an empty canvas."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(data)
    assert root.tag == "{http://www.w3.org/2000/svg}svg", root.tag
    w, h = (float(root.get(k).removesuffix("pt")) for k in ("width", "height"))
    assert 250 <= w <= 2000 and 100 <= h <= 2000, (w, h)
    assert len(data) > 5000  # an empty canvas is far less
