"""The dataset sources: CIFAR-10 pickle batches, Fashion-MNIST IDX files, and `auto`."""

from __future__ import annotations

import _codecs
import builtins
import gzip
import hashlib
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CIFAR_CLASSES, dump_batch, idx_bytes, write_cifar, write_fashion

from benchmark.data import SOURCES, DataError, cifar10, fashion_mnist, load_dataset
from benchmark.data.sources import CLASS_COUNTS
from benchmark.errors import DataWarning

# The fixtures' files are not the official ones, so the loaders warn; tests of that warning
# catch it themselves.
pytestmark = pytest.mark.filterwarnings("ignore:.*differ from the official:UserWarning")

CIFAR_FILES = [*cifar10.TRAIN, "test_batch", "batches.meta"]


def _batch(folder: Path, name: str) -> dict:
    return pickle.loads((folder / name).read_bytes(), encoding="bytes")


# ---- CIFAR-10 ------------------------------------------------------------------------------

def test_cifar10_loads_the_official_format(cifar_dir):
    data = cifar10.load(cifar_dir, download=False)
    folder = cifar_dir / cifar10.FOLDER
    assert data.train_x.shape == (5 * 80, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.train_y.shape == (400,) and data.train_y.dtype == torch.int64
    assert data.test_x.shape == (200, 3, 32, 32) and data.test_y.shape == (200,)
    assert data.classes == CIFAR_CLASSES and data.num_classes == 10
    assert data.source == "cifar10" and data.path == str(folder)
    assert len(data.digest) == 64 and int(data.digest, 16) >= 0  # sha256 hex
    # batch order kept, each row of 3072 bytes is (R plane, G plane, B plane) of 32 x 32
    first = _batch(folder, "data_batch_1")
    assert torch.equal(data.train_x[0], torch.from_numpy(first[b"data"][0].reshape(3, 32, 32)))
    assert data.train_y[:80].tolist() == first[b"labels"]
    last = _batch(folder, "test_batch")
    assert torch.equal(data.test_x[-1].flatten(), torch.from_numpy(last[b"data"][-1]))
    assert sorted(torch.bincount(data.train_y).tolist()) == [40] * 10


@pytest.mark.parametrize("style", ["py2", "py3", "str"])
def test_cifar10_accepts_bytes_and_str_keys(make_cifar, style):
    """py2: bytes keys as Python 2 wrote them (the official files); py3: bytes keys as Python 3
    writes them at protocol 2 (through _codecs.encode); str: str keys at protocol 5."""
    reference = cifar10.load(make_cifar(style="py2").parent, download=False)
    data = cifar10.load(make_cifar(style=style).parent, download=False)
    assert torch.equal(data.train_x, reference.train_x)
    assert torch.equal(data.train_y, reference.train_y)
    assert torch.equal(data.test_x, reference.test_x)
    assert data.classes == CIFAR_CLASSES


def test_cifar10_checksum_mismatch_loads_with_a_warning_and_digest(cifar_dir):
    with pytest.warns(DataWarning, match="differ from the official CIFAR-10") as record:
        data = cifar10.load(cifar_dir, download=False)
    message = str(record[0].message)
    assert all(name in message for name in CIFAR_FILES)
    assert f"digest {data.digest[:12]}" in message
    # the digest is the sha256 over "name:md5" lines, in the loader's file order
    folder = cifar_dir / cifar10.FOLDER
    lines = "".join(f"{n}:{hashlib.md5((folder / n).read_bytes()).hexdigest()}\n"
                    for n in cifar10.MD5)
    assert data.digest == hashlib.sha256(lines.encode()).hexdigest()


def test_cifar10_matching_checksums_load_silently(cifar_dir, monkeypatch):
    folder = cifar_dir / cifar10.FOLDER
    monkeypatch.setattr(cifar10, "MD5", {n: hashlib.md5((folder / n).read_bytes()).hexdigest()
                                         for n in cifar10.MD5})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cifar10.load(cifar_dir, download=False)


class _RunsCode:
    """Unpickles by calling `func(*args)`: how a malicious pickle runs code."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("payload", ["os.system", "builtins.exec", "builtins.eval",
                                     "_codecs.encode", "pathlib.Path"])
@pytest.mark.parametrize("where", ["whole file", "as the data"])
def test_cifar10_refuses_a_pickle_that_runs_code(cifar_dir, tmp_path, payload, where):
    marker = tmp_path / "pwned"
    make = {
        "os.system": lambda: _RunsCode(os.system, f"touch {marker}"),
        "builtins.exec": lambda: _RunsCode(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
        "builtins.eval": lambda: _RunsCode(builtins.eval,
                                           f"open({str(marker)!r}, 'w').close()"),
        # _codecs.encode is let through for latin1 only (how Python 3 writes bytes); a codec
        # like rot13 is refused
        "_codecs.encode": lambda: _RunsCode(_codecs.encode, "text", "rot13"),
        "pathlib.Path": lambda: _RunsCode(Path, str(marker)),
    }[payload]
    folder = cifar_dir / cifar10.FOLDER
    obj = make() if where == "whole file" else {b"data": make(), b"labels": [0]}
    (folder / "data_batch_3").write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(DataError, match="data_batch_3") as err:
        cifar10.load(cifar_dir, download=False)
    assert "refused" in str(err.value) and "nothing in it was run" in str(err.value)
    assert not marker.exists()


def test_the_marker_trick_does_run_code_with_plain_pickle(tmp_path):
    """The control for the test above: the payload is live, so its refusal means something."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_RunsCode(os.system, f"touch {marker}")))
    assert marker.exists()


@pytest.mark.parametrize("keep", [0, 1, 2, 100, 0.5, -1])
def test_cifar10_truncated_file_is_a_data_error(cifar_dir, keep):
    path = cifar_dir / cifar10.FOLDER / "test_batch"
    raw = path.read_bytes()
    cut = keep if isinstance(keep, int) and keep >= 0 else (
        len(raw) + keep if isinstance(keep, int) else int(len(raw) * keep))
    path.write_bytes(raw[:cut])
    with pytest.raises(DataError, match=r"test_batch: .*(truncated|corrupt|not a CIFAR-10)"):
        cifar10.load(cifar_dir, download=False)


def _rewrite(folder: Path, name: str, change) -> None:
    batch = _batch(folder, name)
    change(batch)
    dump_batch(folder / name, batch)


@pytest.mark.parametrize("change, message", [
    (lambda b: b.update({b"data": b[b"data"][:, :1024]}), r"must be uint8 \(N, 3072\)"),
    (lambda b: b.update({b"data": b[b"data"].reshape(-1, 3, 32, 32)}), r"\(N, 3072\)"),
    (lambda b: b.update({b"data": b[b"data"].astype(np.float32)}), "float32"),
    (lambda b: b.update({b"labels": b[b"labels"][:-1]}), "80 images but labels"),
    (lambda b: b.update({b"labels": [str(v) for v in b[b"labels"]]}), "integer label"),
    (lambda b: b.pop(b"labels"), "needs 'data' and 'labels'"),
])
def test_cifar10_wrong_shape_or_type_is_a_data_error(cifar_dir, change, message):
    _rewrite(cifar_dir / cifar10.FOLDER, "data_batch_2", change)
    with pytest.raises(DataError, match=message) as err:
        cifar10.load(cifar_dir, download=False)
    assert "data_batch_2" in str(err.value)


def test_cifar10_file_that_is_not_a_dict_is_a_data_error(cifar_dir):
    dump_batch(cifar_dir / cifar10.FOLDER / "data_batch_4", [1, 2, 3])
    with pytest.raises(DataError, match="data_batch_4: expected a dict, found list"):
        cifar10.load(cifar_dir, download=False)


def test_cifar10_meta_without_label_names_is_a_data_error(cifar_dir):
    _rewrite(cifar_dir / cifar10.FOLDER, "batches.meta", lambda b: b.pop(b"label_names"))
    with pytest.raises(DataError, match="batches.meta: no 'label_names'"):
        cifar10.load(cifar_dir, download=False)


@pytest.mark.parametrize("bad", [10, -1, 255])
@pytest.mark.parametrize("name", ["data_batch_5", "test_batch"])
def test_cifar10_labels_out_of_range_are_a_data_error(cifar_dir, name, bad):
    def change(b):
        b[b"labels"][7] = bad

    _rewrite(cifar_dir / cifar10.FOLDER, name, change)
    split = "test" if name == "test_batch" else "train"
    with pytest.raises(DataError, match=rf"cifar10 {split} set .*labels must lie in 0\.\.9"):
        cifar10.load(cifar_dir, download=False)


def test_cifar10_missing_folder_lists_where_it_looked(tmp_path):
    with pytest.raises(DataError) as err:
        cifar10.load(tmp_path, download=True)  # cannot be downloaded: no network in tests
    message = str(err.value)
    assert str(tmp_path / cifar10.FOLDER) in message
    assert all(name in message for name in CIFAR_FILES)
    assert cifar10.URL in message and "--dataset fashion-mnist" in message


def test_cifar10_partly_missing_folder_names_the_missing_file(cifar_dir):
    (cifar_dir / cifar10.FOLDER / "data_batch_4").unlink()
    with pytest.raises(DataError, match=r"looked in .*cifar-10-batches-py for data_batch_4, and"):
        cifar10.load(cifar_dir, download=False)


def test_cifar10_download_is_tried_only_when_allowed_and_reachable(tmp_path, monkeypatch):
    fetched = []

    def fake_fetch(url, folder, md5, extract=False):
        fetched.append(url)
        write_cifar(folder)

    monkeypatch.setattr(cifar10, "can_download", lambda: True)
    monkeypatch.setattr(cifar10, "fetch", fake_fetch)
    with pytest.raises(DataError, match="CIFAR-10 not found"):
        cifar10.load(tmp_path, download=False)
    assert fetched == []
    assert len(cifar10.load(tmp_path, download=True).train_y) == 400
    assert fetched == [cifar10.URL]


# ---- Fashion-MNIST -------------------------------------------------------------------------

def _raw_images(folder: Path, stem: str) -> np.ndarray:
    for path in (folder / f"{stem}.gz", folder / stem):
        if path.exists():
            return fashion_mnist.read_idx(path, 3).copy()
    raise FileNotFoundError(stem)


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_fashion_mnist_loads_and_pads_to_rgb32(tmp_path, monkeypatch, gz):
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "no-system-copy")
    folder = write_fashion(tmp_path, gz=gz)
    with pytest.warns(DataWarning, match="differ from the official Fashion-MNIST") as caught:
        data = fashion_mnist.load(tmp_path, download=False)
    assert len(caught) == 1 and f"digest {data.digest[:12]}" in str(caught[0].message)
    assert data.train_x.shape == (400, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.test_x.shape == (100, 3, 32, 32) and data.test_y.dtype == torch.int64
    assert data.classes == fashion_mnist.CLASSES and data.source == "fashion-mnist"
    assert data.path == str(folder)
    for x, stem in ((data.train_x, "train-images-idx3-ubyte"),
                    (data.test_x, "t10k-images-idx3-ubyte")):
        assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])  # grey x 3
        border = torch.ones(32, 32, dtype=torch.bool)
        border[2:30, 2:30] = False
        assert int(x[:, :, border].max()) == 0  # 2-px black frame
        assert torch.equal(x[:, 0, 2:30, 2:30], torch.from_numpy(_raw_images(folder, stem)))
    assert sorted(torch.bincount(data.train_y).tolist()) == [40] * 10


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_fashion_mnist_checks_the_unpacked_contents(tmp_path, monkeypatch, gz):
    """Checksums are of the unpacked IDX bytes, so a re-gzipped copy (Debian's) or a plain
    one with the official contents loads without a warning."""
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "no-system-copy")
    folder = write_fashion(tmp_path, gz=gz)
    monkeypatch.setattr(fashion_mnist, "RAW_MD5", {
        stem: hashlib.md5(fashion_mnist.unpack(folder / (stem + ".gz" * gz))).hexdigest()
        for stem in fashion_mnist.RAW_MD5})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fashion_mnist.load(tmp_path, download=False)


@pytest.mark.parametrize("layout", ["fashion-mnist", "FashionMNIST/raw", "."])
def test_fashion_mnist_found_in_each_documented_folder(tmp_path, monkeypatch, layout):
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "no-system-copy")
    made = write_fashion(tmp_path / "staging", gz=False)
    target = tmp_path / "data" / layout
    target.mkdir(parents=True, exist_ok=True)
    for f in made.iterdir():
        f.rename(target / f.name)
    data = load_dataset("fashion-mnist", tmp_path / "data", download=False)
    assert len(data.train_y) == 400 and Path(data.path) == target


def _corrupt_gz(raw: bytes) -> bytes:
    bad = bytearray(raw)
    for i in range(12, min(len(bad) - 8, 60)):  # inside the deflate stream
        bad[i] ^= 0xFF
    return bytes(bad)


@pytest.mark.parametrize("gz, damage", [
    (True, "truncate"), (True, "truncate-header"), (True, "corrupt"), (True, "wrong-magic"),
    (False, "truncate"), (False, "truncate-header"), (False, "wrong-magic"),
])  # a plain file has no checksum of its own to corrupt; truncation covers it
def test_fashion_mnist_damaged_idx_is_a_data_error(tmp_path, monkeypatch, gz, damage):
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "no-system-copy")
    folder = write_fashion(tmp_path, gz=gz)
    path = folder / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    raw = path.read_bytes()
    if damage == "truncate":
        raw = raw[:len(raw) // 2]
    elif damage == "truncate-header":
        raw = raw[:3] if not gz else gzip.compress(gzip.decompress(raw)[:6])
    elif damage == "corrupt":
        raw = _corrupt_gz(raw)
    else:
        inner = gzip.decompress(raw) if gz else raw
        inner = b"\x00\x00\x09\x03" + inner[4:]
        raw = gzip.compress(inner) if gz else inner
    path.write_bytes(raw)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*(truncated|corrupt|not an "
                                        r"IDX file)"):
        fashion_mnist.load(tmp_path, download=False)


def test_fashion_mnist_images_and_labels_must_match(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "no-system-copy")
    folder = write_fashion(tmp_path, gz=False)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(99, np.uint8)))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: .* do not match the 99 labels"):
        fashion_mnist.load(tmp_path, download=False)


def test_fashion_mnist_labels_out_of_range_are_a_data_error(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "no-system-copy")
    folder = write_fashion(tmp_path, gz=False)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(100, 12, np.uint8)))
    with pytest.raises(DataError, match=r"fashion-mnist test set .*labels must lie in 0\.\.9"):
        fashion_mnist.load(tmp_path, download=False)


def test_fashion_mnist_missing_lists_the_folders_it_looked_in(tmp_path, monkeypatch):
    system = tmp_path / "system-copy"
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", system)
    data_dir = tmp_path / "data"
    with pytest.raises(DataError, match="Fashion-MNIST not found") as err:
        fashion_mnist.load(data_dir, download=True)  # unreachable: no network in tests
    message = str(err.value)
    for folder in (data_dir / "fashion-mnist", data_dir / "FashionMNIST" / "raw", data_dir,
                   system):
        assert str(folder) in message
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        assert stem in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_fashion_mnist_partly_missing_names_only_the_missing_file(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "no-system-copy")
    folder = write_fashion(tmp_path, gz=False)
    (folder / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"looked for t10k-labels-idx1-ubyte \(\.gz or not\) in"):
        fashion_mnist.load(tmp_path, download=False)


@pytest.mark.skipif(not fashion_mnist.SYSTEM_DIR.is_dir(),
                    reason=f"{fashion_mnist.SYSTEM_DIR} is not installed "
                           "(apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_from_the_system_copy(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the official files: their checksums match
        data = load_dataset("fashion-mnist", tmp_path, download=False)  # tmp_path is empty
    assert data.path == str(fashion_mnist.SYSTEM_DIR)
    assert data.train_x.shape == (60000, 3, 32, 32) and data.test_x.shape == (10000, 3, 32, 32)
    assert torch.bincount(data.train_y).tolist() == [6000] * 10
    assert torch.bincount(data.test_y).tolist() == [1000] * 10
    assert int(data.train_x[:, :, :2].max()) == 0 and int(data.test_x[..., 30:].max()) == 0
    assert torch.equal(data.test_x[:, 0], data.test_x[:, 2])
    assert int(data.train_x.max()) == 255


# ---- auto and the registry -----------------------------------------------------------------

def test_auto_picks_cifar10_when_present(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "no-system-copy")
    write_cifar(tmp_path)
    write_fashion(tmp_path, gz=False)
    data = load_dataset("auto", tmp_path)
    assert data.source == "cifar10"
    assert "auto -> cifar10" in capsys.readouterr().err


def test_auto_falls_back_to_fashion_mnist_with_a_one_line_notice(fashion_plain_dir, capsys,
                                                                 monkeypatch, tmp_path):
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "no-system-copy")
    data = load_dataset("auto", fashion_plain_dir)
    assert data.source == "fashion-mnist" and len(data.train_y) == 400
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and "auto -> fashion-mnist" in lines[0]
    assert str(fashion_plain_dir / cifar10.FOLDER) in lines[0]


def test_auto_with_neither_dataset_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "no-system-copy")
    with pytest.raises(DataError, match="Fashion-MNIST not found"):
        load_dataset("auto", tmp_path / "empty")


def test_unknown_dataset_names_the_choices():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; choose one of cifar10, "
                                         "fashion-mnist, auto"):
        load_dataset("mnist", "anywhere")


@pytest.mark.parametrize("name", SOURCES.names())
def test_every_missing_source_names_the_folders_it_looked_in(name, tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "no-system-copy")
    empty = tmp_path / "empty"
    with pytest.raises(DataError, match="not found") as err:
        load_dataset(name, empty, download=False)
    message = str(err.value)
    assert str(empty) in message  # the folder(s) it looked in
    with pytest.raises(DataError) as direct:  # the entry itself, as the rule `auto` calls it
        SOURCES[name](empty, False)
    assert str(direct.value) == message


@pytest.mark.parametrize("name", SOURCES.names())
def test_every_source_loads_its_fixture_as_a_valid_dataset(name, cifar_dir, fashion_plain_dir,
                                                           tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "no-system-copy")
    folder = {"cifar10": cifar_dir, "fashion-mnist": fashion_plain_dir}
    assert name in folder, f"add a fixture folder for source {name!r}"
    data = load_dataset(name, folder[name], download=False)
    assert data.source == name and data.num_classes == 10 and len(data.train_y) > 0
    assert CLASS_COUNTS[name] == data.num_classes  # what a Cell checks its tail classes against


def test_data_dir_defaults_to_tailbench_data(cifar_dir, monkeypatch):
    monkeypatch.setenv("TAILBENCH_DATA", str(cifar_dir))
    assert load_dataset("cifar10").path == str(cifar_dir / cifar10.FOLDER)
