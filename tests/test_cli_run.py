"""`tailbench run`, `results` and `report` end to end through the command line, on an
official-format CIFAR-10 folder and real SQLite/journal stores."""

from pathlib import Path

import pandas as pd
import pytest
import torch

from benchmark.app.cli import main

GRID = ('[[cell]]\nmodel = "cnn"\nvariant = "long-tail"\nremedy = "none"\nepochs = 2\n'
        'batch_size = 8\nlr = 0.05\nimbalance_ratio = 2\n')


@pytest.fixture
def args(tmp_path, cifar_dir):
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID)
    store = tmp_path / "runs"
    uri = ["--tracking-uri", f"sqlite:///{store}/mlflow.db"]
    run = ["--grid", str(grid), "--profile", "paper", "--dataset", "cifar10", "--data-dir",
           str(cifar_dir), "--no-tune", "--storage", str(store / "optuna.journal"), *uri]
    return store, run, uri


def table_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("cnn · long-tail"))


@pytest.mark.filterwarnings("ignore:.*differ from the official")
def test_run_then_more_seeds_then_results_and_report(args, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the report goes to ./reports
    store, run, uri = args
    assert main(["run", *run, "--seeds", "2", "--no-report"]) == 0
    out = capsys.readouterr().out
    assert " 2/2 " in table_line(out) and "measured" in table_line(out)
    df = pd.read_parquet(store / "results.parquet")
    assert list(df["repetition"]) == [0, 1] and set(df["outcome"]) == {"ok"}
    assert set(df["precision"]) == {"fp32"}  # auto, on a CPU: recorded as what it ran in
    assert main(["run", *run, "--seeds", "3", "--no-report"]) == 0  # adds repetition 2
    captured = capsys.readouterr()
    assert "repetitions 2 of 3" in captured.err and " 3/3 " in table_line(captured.out)
    # results and report find the latest run's cells in MLflow: no grid, profile or flags
    out_file = tmp_path / "elsewhere.parquet"
    assert main(["results", *uri, "--out", str(out_file)]) == 0
    assert " 3/3 " in table_line(capsys.readouterr().out)
    assert len(pd.read_parquet(out_file)) == 3
    assert main(["report", *uri]) == 0
    assert "report: reports/" in capsys.readouterr().out
    md = next((tmp_path / "reports").glob("*/report.md")).read_text()
    assert "3 of 3" in md


@pytest.mark.filterwarnings("ignore:.*differ from the official")
def test_the_report_shows_the_cells_of_the_latest_run_or_of_the_one_asked_for(
        args, capsys, tmp_path, monkeypatch, cifar_dir):
    monkeypatch.chdir(tmp_path)
    store, run, uri = args
    assert main(["run", *run, "--no-report"]) == 0
    first = capsys.readouterr().err.split(", run ", 1)[1].split()[0]
    tuned = [a for a in run if a != "--no-tune"] + ["--trials", "1"]  # another cell (key)
    assert main(["run", *tuned, "--no-report", "--seeds", "1"]) == 0
    capsys.readouterr()
    assert main(["results", *uri]) == 0
    out = capsys.readouterr().out
    assert out.count("cnn · long-tail") == 1 and " 1/1 " in out  # the latest run's cell
    assert "(4 repetitions); above: the 1 cell of run" in out  # the file holds both cells
    assert main(["results", *uri, "--invocation", first]) == 0
    out = capsys.readouterr().out
    assert f"run {first}" in out and " 3/3 " in table_line(out)
    assert main(["report", *uri, "--invocation", "nope"]) == 2
    assert "ran no cell" in capsys.readouterr().err
    empty = ["--tracking-uri", f"sqlite:///{tmp_path}/empty/mlflow.db"]
    assert main(["report", *empty]) == 2
    assert "holds no tailbench run yet" in capsys.readouterr().err


@pytest.mark.parametrize(("filters", "says"), [
    (["--remedy", "nonsense"], "--remedy nonsense: grid 'full' (quick) has no cell of remedy "
                               "'nonsense'; its remedies: flip+noise, none"),
    (["--model", "resnet50", "--variant", "balanced", "--remedy", "flip+noise"],
     "no cell of grid 'full' (quick) is model resnet50, variant balanced, remedy flip+noise")])
def test_filters_that_leave_no_cell_say_which_value_and_what_the_grid_has(
        tmp_path, capsys, filters, says):
    store = tmp_path / "runs"
    assert main(["run", "--grid", "full", "--profile", "quick", *filters, "--tracking-uri",
                 f"sqlite:///{store}/mlflow.db", "--storage", str(store / "j")]) == 2
    assert capsys.readouterr().err.strip() == f"tailbench run: error: {says}"
    assert not store.exists()  # before any store is opened


@pytest.mark.filterwarnings("ignore:.*differ from the official")
def test_bf16_on_a_cpu_without_bf16_instructions_says_so_before_training(args, capsys,
                                                                        monkeypatch):
    store, run, uri = args
    grid = Path(run[run.index("--grid") + 1])  # one short epoch: emulated bf16 is slow
    grid.write_text(GRID.replace("epochs = 2", "epochs = 1\ntrain_limit = 100"))
    note = "bf16 on this CPU (AVX2: no bf16 instructions) is emulated, about 10x slower"
    cpus = {"AVX2": True, "AVX512": False}  # torch's capability: is bf16 emulated there?
    for capability, emulated in cpus.items():
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
        assert main(["run", *run, "--seeds", "1", "--no-report", "--precision", "bf16"]) == 0
        err = capsys.readouterr().err
        assert (note in err) == emulated, err
        if emulated:  # said before the first cell starts, once
            assert err.count(note) == 1 and err.index(note) < err.index("started")
    # fp32, the default on a CPU, says nothing of bf16
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert main(["run", *run, "--seeds", "1", "--no-report"]) == 0
    assert "is emulated" not in capsys.readouterr().err
