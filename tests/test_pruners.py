"""studies/pruners.py's rules on real Optuna studies (in memory) with constructed curves, the
rule a cell run records, and `tailbench pruners` on tiny sizes."""

from __future__ import annotations

import argparse
import json

import optuna
import pytest
import torch
from conftest import learnable_dataset

from benchmark.app import perf_pruners
from benchmark.app.perf_pruners import StudyRow
from benchmark.cells import Cell
from benchmark.errors import UserError
from benchmark.recording import NullRunLog
from studies.pruners import DEFAULT, PRUNERS, make_pruner, warmup
from studies.tune import TuneOptions, default_pruner, tune_cell

CELL = Cell("cnn", "balanced", "none", epochs=6, dataset="synthetic", profile="quick", trials=8)
GOOD = [0.3, 0.5, 0.6, 0.7, 0.75, 0.8]  # validation balanced accuracy at epochs 1..6
FLAT_BAD = [0.1] * 6  # learns nothing: every rule that prunes at all must stop it


def play(study: optuna.Study, curve: list[float]) -> int | None:
    """One trial as studies/objective.py runs it: report each epoch (from 1), ask whether to
    prune. Returns the epoch it was pruned at, or None when it completed."""
    trial = study.ask()
    for epoch, value in enumerate(curve, start=1):
        trial.report(value, epoch)
        if trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return epoch
    study.tell(trial, curve[-1])
    return None


def study_with(rule: str, *curves: list[float]) -> optuna.Study:
    study = optuna.create_study(direction="maximize", pruner=make_pruner(rule, CELL))
    for curve in curves:
        assert play(study, curve) is None  # the first trials are never judged
    return study


def test_the_default_is_a_registered_rule_and_default_pruner_builds_it():
    assert DEFAULT in PRUNERS.names()
    assert type(default_pruner(CELL)) is type(make_pruner(DEFAULT, CELL))
    assert warmup(CELL) == 2 and warmup(Cell("cnn", "balanced", "none", epochs=2)) == 1


@pytest.mark.parametrize("rule", [r for r in PRUNERS.names() if r != "none"])
def test_every_rule_stops_a_flat_bad_trial_after_the_warmup_and_keeps_a_good_one(rule):
    study = study_with(rule, [v - 0.05 for v in GOOD], GOOD)  # better and better: none judged
    stopped = play(study, FLAT_BAD)
    assert stopped is not None and warmup(CELL) <= stopped < CELL.epochs, stopped
    assert play(study, [v + 0.05 for v in GOOD]) is None  # the best so far runs to the end


def test_no_rule_judges_before_the_warmup_where_early_curves_still_cross():
    for rule in PRUNERS.names():
        study = study_with(rule, GOOD, GOOD, GOOD, GOOD)
        trial = study.ask()
        trial.report(0.0, 1)  # far below at epoch 1: spared all the same
        assert not trial.should_prune(), rule


def test_none_never_prunes():
    study = study_with("none", GOOD, GOOD)
    assert play(study, FLAT_BAD) is None


def test_percentile_is_stricter_than_the_median():
    done = [[0.1, v, v, v, v, v] for v in (0.5, 0.6, 0.7, 0.8)]  # epoch-2 median 0.65, q75 0.725
    middling = [0.1, 0.68, 0.68, 0.68, 0.68, 0.68]
    assert play(study_with("median", *done), middling) is None
    assert play(study_with("percentile", *done), middling) == 2


def test_halving_promotes_only_the_best_while_a_rung_is_small_then_the_top_half():
    study = study_with("halving", GOOD)
    # second trial: a rung of two, only the better goes on (epoch 2 is the first rung)
    assert play(study, [v - 0.01 for v in GOOD]) == 2
    assert play(study, [v + 0.01 for v in GOOD]) is None


def test_an_unknown_rule_names_the_choices():
    with pytest.raises(ValueError, match="median"):
        make_pruner("hyperband", CELL)


class Tags(NullRunLog):
    def __init__(self):
        self.tags = {}

    def set_tags(self, tags):
        self.tags |= tags


@pytest.fixture(scope="module")
def data():
    return learnable_dataset(250, 60, seed=5, digest="ef" * 32)


def test_the_cell_run_records_the_rule_it_tuned_with(tmp_path, data):
    cell = Cell("cnn", "balanced", "none", epochs=1, batch_size=16, dataset="synthetic",
                profile="quick", trials=1)
    for pruner, tag in ((None, DEFAULT), ("halving", "halving"),
                        (optuna.pruners.NopPruner(), "NopPruner")):
        run = Tags()
        tune_cell(cell, data, torch.device("cpu"), run,
                  TuneOptions(tmp_path / f"{tag}.journal", pruner=pruner))
        assert run.tags["optuna_pruner"] == tag


def row(study: str, pruner: str, epochs: int, best: float | None) -> StudyRow:
    return StudyRow(study, pruner, epochs, 48, 0, 0, best, 0.01, 1.0)


def test_summary_compares_each_rule_with_the_baseline_on_the_same_study():
    rows = [row("a", "median", 30, 0.60), row("a", "halving", 20, 0.58),
            row("b", "median", 20, 0.70), row("b", "halving", 10, 0.74),
            row("c", "median", 25, 0.50), row("c", "halving", 15, None)]
    median, halving = perf_pruners.summarize(rows)
    assert median["epochs"] == 75 and median["epochs_vs_baseline"] == 1.0
    assert median["best_minus_baseline"] == {"mean": 0.0, "min": 0.0, "max": 0.0}
    assert halving["epochs"] == 45 and halving["epochs_vs_baseline"] == pytest.approx(45 / 75)
    d = halving["best_minus_baseline"]  # study c has no complete trial: no difference
    assert d["min"] == pytest.approx(-0.02) and d["max"] == pytest.approx(0.04)
    assert d["mean"] == pytest.approx(0.01)
    assert halving["studies_worse"] == 1 and halving["no_complete_trial"] == 1
    assert median["baseline_best_std"] == pytest.approx(0.1)
    assert "halving" in perf_pruners.table(rows, [median, halving])


def test_the_command_runs_every_rule_on_every_study_and_writes_the_json(tmp_path, data,
                                                                        monkeypatch, capsys):
    monkeypatch.setattr(perf_pruners, "CELLS", (("long-tail", "none"),))
    out = tmp_path / "pruners.json"
    p = argparse.ArgumentParser()
    perf_pruners.add_parser(p.add_subparsers(dest="command"))
    args = p.parse_args(["pruners", "--quick", "--seeds", "0", "--pruners", "median", "halving",
                         "--out", str(out)])
    assert perf_pruners.run(args, data) == 0
    result = json.loads(out.read_text())
    assert [(r["pruner"], r["full"]) for r in result["rows"]] == [("median", 6), ("halving", 6)]
    assert all(0 < r["epochs"] <= r["full"] for r in result["rows"])
    assert [s["pruner"] for s in result["summary"]] == ["median", "halving"]
    assert result["cells"][0]["trials"] == 3 and result["machine"]["device"] == "cpu"
    assert "best - median" in capsys.readouterr().out


def test_from_prints_the_runs_of_two_processes_together(tmp_path, capsys):
    files = []
    for seed, (m, h) in enumerate(((30, 20), (20, 10))):
        rows = [row(f"cnn · seed {seed}", "median", m, 0.6), row(f"cnn · seed {seed}", "halving",
                                                                 h, 0.6 + seed / 10)]
        files.append(tmp_path / f"seed{seed}.json")
        files[-1].write_text(json.dumps({"machine": {"seed": seed}, "cells": [{"seed": seed}],
                                         "rows": [r.__dict__ for r in rows], "seconds": 5}))
    out = tmp_path / "all.json"
    args = argparse.Namespace(inputs=[str(f) for f in files], out=str(out))
    assert perf_pruners.run(args) == 0
    result = json.loads(out.read_text())
    halving = result["summary"][1]
    assert halving["studies"] == 2 and halving["epochs"] == 30
    assert halving["epochs_vs_baseline"] == pytest.approx(30 / 50)
    assert halving["best_minus_baseline"]["max"] == pytest.approx(0.1)
    assert len(result["machine"]) == 2 and result["seconds"] == 10
    assert "vs median" in capsys.readouterr().out
    with pytest.raises(UserError, match="--from"):
        perf_pruners.run(argparse.Namespace(inputs=[str(tmp_path / "none.json")], out="x"))
