"""Cells, grid files and profiles."""

import dataclasses

import pytest

from benchmark.cells import Cell, GridError, apply_profile, expand, load_grid, load_profile
from benchmark.models import MODELS


def test_reference_grid_holds_the_six_reference_cells():
    entries = load_grid("reference")
    assert [(e.cell.model, e.cell.variant, e.cell.augment, e.cell.epochs) for e in entries] == [
        ("cnn", "balanced", "none", 100), ("rnn", "balanced", "none", 200),
        ("cnn", "long-tail", "none", 200), ("rnn", "long-tail", "none", 200),
        ("resnet50", "long-tail", "flip+noise", 10), ("rnn", "long-tail", "flip+noise", 50)]
    assert entries[0].reference == {"table": 1, "train_acc": 86.4, "test_acc": 71.9}
    assert all(e.cell.lr == 0.01 and e.cell.batch_size == 1024 for e in entries)


def test_full_grid_adds_the_three_missing_combinations():
    cells = {(e.cell.model, e.cell.variant, e.cell.augment) for e in load_grid("full")}
    assert len(cells) == 9
    assert {("cnn", "long-tail", "flip+noise"), ("resnet50", "balanced", "none"),
            ("resnet50", "long-tail", "none")} <= cells
    assert {m for m, _, _ in cells} == set(MODELS)


def test_keys_are_stable_and_change_with_every_field():
    cell = Cell("cnn", "long-tail", "none", epochs=5)
    assert cell.key == Cell("cnn", "long-tail", "none", epochs=5).key
    assert len(cell.key) == 16 and cell.name == "cnn · long-tail · none"
    for f in dataclasses.fields(Cell):
        value = getattr(cell, f.name)
        other = value + "x" if isinstance(value, str) else value + 1
        changed = dataclasses.replace(cell, **{f.name: other}).key != cell.key
        # more repetitions are the same cell: `--seeds 5` after 3 adds two
        assert changed == (f.name != "seeds"), f.name
    assert cell.params()["epochs"] == 5  # params come from dataclasses.asdict


def test_repetition_seeds_are_distinct_stable_and_from_the_base_seed():
    cell = Cell("cnn", "long-tail", "none", epochs=5)
    seeds = [cell.repetition_seed(r) for r in range(6)]
    assert len(set(seeds)) == 6 and seeds == [cell.repetition_seed(r) for r in range(6)]
    other = dataclasses.replace(cell, seed=1)
    assert not set(seeds) & {other.repetition_seed(r) for r in range(6)}
    assert dataclasses.replace(cell, seeds=9).repetition_seed(2) == seeds[2]


def test_quick_profile_shrinks_data_epochs_and_sets_trials():
    quick = load_profile("quick")
    cell = apply_profile(Cell("resnet50", "long-tail", "flip+noise", epochs=10), "quick", quick)
    assert cell.profile == "quick" and cell.epochs < 10 and cell.train_limit > 0
    assert cell.trials == quick["trials"]
    paper = apply_profile(Cell("cnn", "balanced", "none", epochs=100), "paper",
                          load_profile("paper"))
    assert paper.epochs == 100 and paper.train_limit == 0


def test_expand_applies_dataset_overrides_and_filters():
    entries = expand("full", "quick", "fashion-mnist", {"model": ["rnn"], "variant": ["long-tail"]},
                     {"trials": 0})
    assert [(e.cell.augment) for e in entries] == ["none", "flip+noise"]
    assert all(e.cell.dataset == "fashion-mnist" and e.cell.trials == 0 for e in entries)


def bad_grid(tmp_path, body):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    return str(path)


@pytest.mark.parametrize("body, message", [
    ('[[cell]]\nmodel = "vgg"\nvariant = "balanced"\naugment = "none"\nepochs = 1\n',
     r"\[\[cell\]\] #1: model 'vgg' is not one of cnn, rnn, resnet50"),
    ('[[cell]]\nmodel = "cnn"\naugment = "none"\nepochs = 1\n',
     r"\[\[cell\]\] #1: missing field 'variant'"),
    ('[[cell]]\nmodel = "cnn"\nvariant = "balanced"\naugment = "none"\nepochs = 1\nlr = "fast"\n',
     r"lr must be float, got 'fast'"),
    ('[[cell]]\nmodel = "cnn"\nvariant = "balanced"\naugment = "none"\nepochs = 1\nlrr = 0.1\n',
     r"unknown field\(s\) lrr"),
    ('[[cell]]\nmodel = "cnn"\nvariant = "balanced"\naugment = "none"\nepochs = 0\n',
     r"epochs must be at least 1"),
    ('[[cell]\nmodel = "cnn"', r"not valid TOML"),
])
def test_bad_grid_file_is_refused_naming_file_and_field(tmp_path, body, message):
    path = bad_grid(tmp_path, body)
    with pytest.raises(GridError, match=message) as err:
        load_grid(path)
    assert path in str(err.value)


def test_unknown_grid_and_profile_are_refused():
    with pytest.raises(GridError, match="no such grid file"):
        load_grid("nonexistent")
    with pytest.raises(GridError, match="unknown profile 'fast'"):
        load_profile("fast")
