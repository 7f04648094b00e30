"""`tailbench train`: the per-epoch table, and bad arguments refused before any data is read."""

from __future__ import annotations

import re

import pytest
import torch

import benchmark.data
import benchmark.data.sources
from benchmark.app.cli import main
from benchmark.data import SOURCES, fashion_mnist
from benchmark.train import resolve_device

# the fixtures' files are not the official ones, so the loader warns; that is tested elsewhere
pytestmark = pytest.mark.filterwarnings("ignore:.*differ from the official:UserWarning")


@pytest.fixture
def no_system_copy(tmp_path, monkeypatch):
    """Only the test's own Fashion-MNIST files can be found."""
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "no-system-copy")


@pytest.fixture
def data_never_read(monkeypatch):
    """Every way to data fails the test: the loader and each registered source."""
    def read(*args, **kwargs):
        raise AssertionError("data was read before the arguments were checked")

    monkeypatch.setattr(benchmark.data, "load_dataset", read)
    monkeypatch.setattr(benchmark.data.sources, "load_dataset", read)
    for name in list(SOURCES):
        monkeypatch.setitem(SOURCES, name, read)


def _train(data_dir, *extra: str) -> list[str]:
    return ["train", "--model", "cnn", "--dataset", "fashion-mnist", "--data-dir", str(data_dir),
            "--epochs", "1", "--limit", "300", *extra]


def test_train_prints_the_per_epoch_table(fashion_plain_dir, no_system_copy, capsys):
    assert main(_train(fashion_plain_dir, "--epochs", "2", "--batch-size", "64")) == 0
    lines = capsys.readouterr().out.splitlines()
    # fixture: 400 train (40 a class), 100 test; --limit 300 keeps 30 of each class
    assert lines[0] == f"cnn on fashion-mnist: 300 train / 100 test images, {resolve_device()}"
    assert lines[1].split() == ["epoch", "loss", "train", "acc", "test", "acc", "seconds"]
    rows = [re.fullmatch(r"\s*(\d+)\s+(\d+\.\d{4})\s+(\d+\.\d{2})%\s+(\d+\.\d{2})%\s+(\d+\.\d)",
                         line) for line in lines[2:]]
    assert len(rows) == 2 and all(rows), lines
    assert [int(r[1]) for r in rows] == [1, 2]
    assert all(0 <= float(r[i]) <= 100 for r in rows for i in (3, 4))
    assert all(len(line) == len(lines[1]) for line in lines[2:])  # columns line up


def test_train_reads_the_gzipped_files(fashion_dir, no_system_copy, capsys):
    assert main(_train(fashion_dir)) == 0
    out = capsys.readouterr().out
    assert "cnn on fashion-mnist: 300 train / 100 test images" in out


def test_train_with_missing_data_exits_2_with_the_loaders_message(tmp_path, no_system_copy,
                                                                  capsys):
    assert main(_train(tmp_path / "empty")) == 2
    err = capsys.readouterr().err
    assert err.startswith("tailbench train: error: Fashion-MNIST not found")


@pytest.mark.parametrize("args, message", [
    (["--model", "vgg16"], r"argument --model: invalid choice: 'vgg16' \(choose from "
                           r"'?cnn'?, '?rnn'?, '?resnet50'?, '?resnet32'?\)"),
    (["--epochs", "-1"], r"argument --epochs: must be >= 0 and finite, got -1"),
    (["--epochs", "two"], r"argument --epochs: expected an integer, got 'two'"),
    (["--limit", "-5"], r"argument --limit: must be >= 0 and finite, got -5"),
    (["--lr", "-0.1"], r"argument --lr: must be > 0 and finite, got -0.1"),
    (["--device", "tpu"], r"argument --device: invalid choice: 'tpu'"),
    (["--dataset", "imagenet"], r"argument --dataset: invalid choice: 'imagenet'"),
])
def test_bad_arguments_exit_2_before_any_data_is_read(tmp_path, data_never_read, capsys,
                                                      args, message):
    with pytest.raises(SystemExit) as exit_:
        main(_train(tmp_path, *args))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: tailbench train")
    assert re.search(message, err), err


def test_model_is_required(tmp_path, data_never_read, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--data-dir", str(tmp_path)])
    assert exit_.value.code == 2
    assert "the following arguments are required: --model" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_absent_cuda_exits_2_before_any_data_is_read(tmp_path, data_never_read, capsys):
    assert main(_train(tmp_path, "--device", "cuda")) == 2
    assert "error: device 'cuda' is not available on this machine; use --device cpu" in \
        capsys.readouterr().err


@pytest.mark.parametrize("args", [["--batch-size", "0"], ["--lr", "nan"], ["--lr", "inf"]])
def test_nonsense_sizes_and_rates_exit_2_before_any_data_is_read(tmp_path, data_never_read,
                                                                 capsys, args):
    with pytest.raises(SystemExit) as exit_:
        main(_train(tmp_path, *args))
    assert exit_.value.code == 2


def test_divergence_is_an_error_message_not_a_traceback(fashion_plain_dir, no_system_copy,
                                                        capsys):
    assert main(_train(fashion_plain_dir, "--batch-size", "16", "--lr", "1e6")) == 2
    assert "tailbench train: error: training loss is" in capsys.readouterr().err
