"""`tailbench run`, `results` and `report` end to end through the command line, on an
official-format CIFAR-10 folder and real SQLite/journal stores."""

import pandas as pd
import pytest

from benchmark.app.cli import main

GRID = ('[[cell]]\nmodel = "cnn"\nvariant = "long-tail"\naugment = "none"\nepochs = 2\n'
        'batch_size = 8\nlr = 0.05\ntail_fraction = 0.5\n')


@pytest.fixture
def args(tmp_path, cifar_dir):
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID)
    store = tmp_path / "runs"
    common = ["--grid", str(grid), "--profile", "paper", "--dataset", "cifar10",
              "--data-dir", str(cifar_dir), "--tracking-uri", f"sqlite:///{store}/mlflow.db"]
    common += ["--no-tune"]  # (the report finds cells by the key its flags give: issue 11)
    return store, common + ["--storage", str(store / "optuna.journal")], common


def table_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("cnn · long-tail"))


@pytest.mark.filterwarnings("ignore:.*differ from the official")
def test_run_then_more_seeds_then_results_and_report(args, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the report goes to ./reports
    store, run, common = args
    assert main(["run", *run, "--seeds", "2", "--no-report"]) == 0
    out = capsys.readouterr().out
    assert " 2/2 " in table_line(out) and "measured" in table_line(out)
    df = pd.read_parquet(store / "results.parquet")
    assert list(df["repetition"]) == [0, 1] and set(df["outcome"]) == {"ok"}
    assert main(["run", *run, "--seeds", "3", "--no-report"]) == 0  # adds repetition 2
    captured = capsys.readouterr()
    assert "repetitions 2 of 3" in captured.err and " 3/3 " in table_line(captured.out)
    # without --seeds the report counts what the cell's last run asked for: 3, not the
    # profile's default
    out_dir = tmp_path / "elsewhere.parquet"
    assert main(["results", *common, "--out", str(out_dir)]) == 0
    assert " 3/3 " in table_line(capsys.readouterr().out)
    assert len(pd.read_parquet(out_dir)) == 3
    assert main(["report", *common]) == 0
    assert "report: reports/" in capsys.readouterr().out
    md = next((tmp_path / "reports").glob("*/report.md")).read_text()
    assert "3 of 3" in md
