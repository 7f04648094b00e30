"""Cells, grid files and profiles."""

import dataclasses
import math

import numpy as np
import pytest

from benchmark import cells
from benchmark.cells import (
    CELL_FIELDS,
    RANGES,
    Cell,
    GridError,
    apply_profile,
    expand,
    load_grid,
    load_profile,
)
from benchmark.data.sources import CLASS_COUNTS
from benchmark.models import MODELS

# a valid value other than the test cell's, for every field (a new field must add one)
OTHER = {"model": "rnn", "variant": "balanced", "remedy": "flip+noise", "epochs": 6,
         "dataset": "cifar10", "profile": "quick", "batch_size": 64, "lr": 0.1, "sigma": 0.1,
         "tail_classes": (7, 9), "imbalance_ratio": 100.0, "train_limit": 100, "test_limit": 50,
         "trials": 3, "seed": 1, "seeds": 3, "precision": "bf16", "cb_beta": 0.99,
         "la_tau": 1.5, "ldam_margin": 0.3, "ldam_s": 16.0, "drw_defer": 0.5}


def test_reference_grid_holds_the_six_reference_cells():
    entries = load_grid("reference")
    assert [(e.cell.model, e.cell.variant, e.cell.remedy, e.cell.epochs) for e in entries] == [
        ("cnn", "balanced", "none", 100), ("rnn", "balanced", "none", 200),
        ("cnn", "long-tail", "none", 200), ("rnn", "long-tail", "none", 200),
        ("resnet50", "long-tail", "flip+noise", 10), ("rnn", "long-tail", "flip+noise", 50)]
    assert entries[0].reference == {"table": 1, "train_acc": 86.4, "test_acc": 71.9}
    assert all(e.cell.lr == 0.01 and e.cell.batch_size == 1024 for e in entries)


def test_full_grid_adds_the_three_missing_combinations():
    cells = {(e.cell.model, e.cell.variant, e.cell.remedy) for e in load_grid("full")}
    assert len(cells) == 9
    assert {("cnn", "long-tail", "flip+noise"), ("resnet50", "balanced", "none"),
            ("resnet50", "long-tail", "none")} <= cells
    # every network of the reference study (resnet32 is the remedies' backbone, not its)
    assert {m for m, _, _ in cells} == set(MODELS) - {"resnet32"}


def test_keys_are_stable_and_change_with_every_field():
    cell = Cell("cnn", "long-tail", "none", epochs=5)
    assert cell.key == Cell("cnn", "long-tail", "none", epochs=5).key
    assert len(cell.key) == 16 and cell.name == "cnn · long-tail · none"
    assert set(OTHER) == set(CELL_FIELDS)
    for f in dataclasses.fields(Cell):
        assert OTHER[f.name] != getattr(cell, f.name), f.name
        changed = dataclasses.replace(cell, **{f.name: OTHER[f.name]}).key != cell.key
        # more repetitions are the same cell: `--seeds 5` after 3 adds two
        assert changed == (f.name != "seeds"), f.name
    assert cell.params()["epochs"] == 5  # params come from dataclasses.asdict


@pytest.mark.parametrize("field, value, message", [
    ("model", "vgg", "model 'vgg' is not one of cnn, rnn, resnet50, resnet32"),
    ("variant", "lt", "variant 'lt' is not one of balanced, long-tail, exp"),
    ("remedy", "mixup", r"remedy 'mixup' is not one of none, oversample, flip\+noise, "
                        "reweight, logit-adjust, balanced-softmax, ldam-drw"),
    ("model", 3, "model must be str, got 3"),
    ("epochs", 0, "epochs must be at least 1, got 0"),
    ("cb_beta", 1.0, r"cb_beta must be in \[0, 1\), got 1.0"),
    ("ldam_s", 0.0, "ldam_s must be > 0 and finite, got 0.0"),
    ("drw_defer", 1.5, r"drw_defer must be in \[0, 1\], got 1.5"),
    ("epochs", 2.0, "epochs must be int, got 2.0"),
    ("epochs", True, "epochs must be int, got True"),
    ("seeds", 0, "seeds must be at least 1, got 0"),
    ("precision", "fp16", "precision must be one of auto, fp32, bf16, got 'fp16'"),
    ("batch_size", 0, "batch_size must be at least 1, got 0"),
    ("lr", 0.0, "lr must be > 0 and finite, got 0.0"),
    ("lr", -0.1, "lr must be > 0 and finite"),
    ("lr", math.inf, "lr must be > 0 and finite, got inf"),
    ("lr", math.nan, "lr must be > 0 and finite, got nan"),
    ("lr", "fast", "lr must be float, got 'fast'"),
    ("sigma", -0.01, "sigma must be >= 0 and finite"),
    ("imbalance_ratio", 0.5, r"imbalance_ratio must be >= 1 and finite, got 0.5"),
    ("imbalance_ratio", math.inf, r"imbalance_ratio must be >= 1 and finite, got inf"),
    ("train_limit", -1, "train_limit must be at least 0"),
    ("test_limit", -1, "test_limit must be at least 0"),
    ("trials", -1, "trials must be at least 0"),
    ("seed", -1, "seed must be at least 0"),
    ("dataset", "", "dataset must not be empty"),
    ("profile", None, "profile must be str, got None"),
    ("tail_classes", (), "tail_classes must not be empty"),
    ("tail_classes", (1, 3, 1), "tail_classes lists 1 more than once"),
    ("tail_classes", (0.5, 1), r"tail_classes must be a list of int, got \(0.5, 1\)"),
    ("tail_classes", (True,), "tail_classes must be a list of int"),
    ("tail_classes", "01234", "tail_classes must be a list of class indices, got '01234'"),
    ("tail_classes", 3, "tail_classes must be a list of class indices, got 3"),
    ("tail_classes", (-1, 2), r"tail_classes -1 are not classes of cifar10 or fashion-mnist "
                              r"\(0..9\)"),
    ("tail_classes", (3, 10, 11), "tail_classes 10, 11 are not classes"),
    ("tail_classes", tuple(range(10)), "tail_classes name all 10 classes of cifar10 or "
                                       "fashion-mnist: leave at least one head class"),
])
def test_a_cell_made_in_code_checks_itself_naming_the_field(field, value, message):
    with pytest.raises(GridError, match=message):
        Cell(**{"model": "cnn", "variant": "long-tail", "remedy": "none", "epochs": 5,
                field: value})
    with pytest.raises(GridError, match=message):  # dataclasses.replace checks again
        dataclasses.replace(Cell("cnn", "long-tail", "none", epochs=5), **{field: value})


def test_tail_classes_are_part_of_the_key_and_one_set_in_any_order():
    cell = Cell("cnn", "long-tail", "none", epochs=5)
    assert cell.tail_classes == (0, 1, 2, 3, 4)  # the reference's tail: the first five
    other = dataclasses.replace(cell, tail_classes=(7, 9))
    assert other.key != cell.key  # differing only in the tail: two cells
    # a TOML array, a results table's numpy array, another order: the same cell
    for same in ([9, 7], (9, 7), np.array([9, 7], dtype=np.int64)):
        again = dataclasses.replace(cell, tail_classes=same)
        assert again == other and again.key == other.key
        assert type(again.tail_classes) is tuple and type(again.tail_classes[0]) is int
    assert other.params()["tail_classes"] == [7, 9]  # a run's param shows it as a JSON list


def test_tail_classes_are_checked_against_the_cells_dataset(monkeypatch):
    assert Cell("cnn", "long-tail", "none", epochs=1, dataset="cifar10",
                tail_classes=(9,)).tail_classes == (9,)
    with pytest.raises(GridError, match=r"tail_classes 10 are not classes of cifar10 \(0..9\)"):
        Cell("cnn", "long-tail", "none", epochs=1, dataset="cifar10", tail_classes=(10,))
    monkeypatch.setitem(CLASS_COUNTS, "tiny", 3)  # a source with three classes
    with pytest.raises(GridError, match=r"tail_classes 3 are not classes of tiny \(0..2\)"):
        Cell("cnn", "long-tail", "none", epochs=1, dataset="tiny", tail_classes=(0, 3))
    with pytest.raises(GridError, match="name all 3 classes of tiny"):
        Cell("cnn", "long-tail", "none", epochs=1, dataset="tiny", tail_classes=(0, 1, 2))
    # resolving `auto` to a source checks the tail again (dataclasses.replace, as the CLI does)
    auto = Cell("cnn", "long-tail", "none", epochs=1, tail_classes=(1, 3))
    with pytest.raises(GridError, match="not classes of tiny"):
        dataclasses.replace(auto, dataset="tiny")


def test_tail_classes_come_from_a_grid_or_a_profile(tmp_path, monkeypatch):
    grid = bad_grid(tmp_path, '[defaults]\ntail_classes = [9, 7]\n'
                    '[[cell]]\nmodel = "cnn"\nvariant = "long-tail"\nremedy = "none"\nepochs = 1\n'
                    '[[cell]]\nmodel = "rnn"\nvariant = "long-tail"\nremedy = "none"\nepochs = 1\n'
                    'tail_classes = [2]\n')
    assert [e.cell.tail_classes for e in load_grid(grid)] == [(7, 9), (2,)]
    profiles = tmp_path / "profiles.toml"
    profiles.write_text('[mine]\ntail_classes = { cnn = [3, 4] }\n[bad]\ntail_classes = [0, 12]\n')
    monkeypatch.setattr(cells, "PROFILES", profiles)
    assert [e.cell.tail_classes for e in expand(grid, "mine", "auto")] == [(3, 4), (2,)]
    with pytest.raises(GridError, match=r"profiles.toml: \[bad\]: tail_classes 12 are not "):
        expand(grid, "bad", "auto")


def test_every_range_is_of_a_cell_field():
    assert set(RANGES) <= set(CELL_FIELDS)


def test_a_cell_takes_the_edges_of_its_ranges_and_any_dataset_name():
    cell = Cell("cnn", "balanced", "none", epochs=1, seeds=1, batch_size=1, sigma=0.0,
                imbalance_ratio=1.0, train_limit=0, test_limit=0, trials=0, seed=0,
                dataset="synthetic")
    assert cell.dataset == "synthetic" and cell.imbalance_ratio == 1.0


def test_numbers_become_plain_python_numbers():
    """A results table hands back numpy numbers; an int lr is the float it means."""
    cell = Cell("cnn", "balanced", "none", epochs=np.int64(5), lr=1, sigma=np.float64(0.1))
    assert type(cell.epochs) is int and type(cell.lr) is float and type(cell.sigma) is float
    assert cell == Cell("cnn", "balanced", "none", epochs=5, lr=1.0, sigma=0.1)
    assert cell.key == Cell("cnn", "balanced", "none", epochs=5, lr=1.0, sigma=0.1).key


def test_a_test_registered_model_is_a_valid_cell_model(monkeypatch):
    monkeypatch.setitem(MODELS, "constant", lambda **_: None)
    assert Cell("constant", "balanced", "none", epochs=1).model == "constant"


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
    assert [(e.cell.remedy) for e in entries] == ["none", "flip+noise"]
    assert all(e.cell.dataset == "fashion-mnist" and e.cell.trials == 0 for e in entries)


def bad_grid(tmp_path, body):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    return str(path)


@pytest.mark.parametrize("body, message", [
    ('[[cell]]\nmodel = "vgg"\nvariant = "balanced"\nremedy = "none"\nepochs = 1\n',
     r"\[\[cell\]\] #1: model 'vgg' is not one of cnn, rnn, resnet50, resnet32"),
    ('[[cell]]\nmodel = "cnn"\nremedy = "none"\nepochs = 1\n',
     r"\[\[cell\]\] #1: missing field 'variant'"),
    ('[[cell]]\nmodel = "cnn"\nvariant = "balanced"\nremedy = "none"\nepochs = 1\nlr = "fast"\n',
     r"lr must be float, got 'fast'"),
    ('[[cell]]\nmodel = "cnn"\nvariant = "balanced"\nremedy = "none"\nepochs = 1\nlrr = 0.1\n',
     r"unknown field\(s\) lrr"),
    ('[[cell]]\nmodel = "cnn"\nvariant = "balanced"\naugment = "oversample"\nepochs = 1\n',
     r"#1: the field augment is called remedy now: write remedy = 'oversample'"),
    ('[[cell]]\nmodel = "cnn"\nvariant = "balanced"\nremedy = "none"\nepochs = 0\n',
     r"\[\[cell\]\] #1: epochs must be at least 1"),
    ('[defaults]\nlr = 0.0\n[[cell]]\nmodel = "cnn"\nvariant = "balanced"\nremedy = "none"\n'
     'epochs = 1\n[[cell]]\nmodel = "rnn"\nvariant = "balanced"\nremedy = "none"\n'
     'epochs = 1\nlr = 0.1\n', r"\[\[cell\]\] #1: lr must be > 0 and finite, got 0.0"),
    ('[[cell]]\nmodel = "cnn"\nvariant = "balanced"\nremedy = "none"\nepochs = 1\n'
     '[[cell]]\nmodel = "cnn"\nvariant = "balanced"\nremedy = "none"\nepochs = 1\n'
     'imbalance_ratio = 0\n', r"\[\[cell\]\] #2: imbalance_ratio must be >= 1"),
    ('[[cell]\nmodel = "cnn"', r"not valid TOML"),
    ('[[cell]]\nmodel = "cnn"\nvariant = "long-tail"\nremedy = "none"\nepochs = 1\n'
     'tail_classes = [0, 12]\n', r"\[\[cell\]\] #1: tail_classes 12 are not classes"),
    ('[[cell]]\nmodel = "cnn"\nvariant = "long-tail"\nremedy = "none"\nepochs = 1\n'
     'tail_classes = "0-4"\n', r"\[\[cell\]\] #1: tail_classes must be a list of class"),
])
def test_bad_grid_file_is_refused_naming_file_and_field(tmp_path, body, message):
    path = bad_grid(tmp_path, body)
    with pytest.raises(GridError, match=message) as err:
        load_grid(path)
    assert path in str(err.value)


def test_an_exp_cell_holds_the_tail_its_protocol_fixes():
    cell = Cell("cnn", "exp", "oversample", epochs=1, imbalance_ratio=100)
    assert cell.tail_classes == tuple(range(1, 10))  # every class but class 0
    assert Cell("cnn", "exp", "none", epochs=1, tail_classes=range(9, 0, -1)).key == \
        Cell("cnn", "exp", "none", epochs=1).key
    with pytest.raises(GridError, match=r"variant exp fixes its own tail, classes 1, 2, .*9 "
                                        r".*leave tail_classes out, got \[7, 9\]"):
        Cell("cnn", "exp", "none", epochs=1, tail_classes=(7, 9))
    assert Cell("cnn", "long-tail", "none", epochs=1).tail_classes == (0, 1, 2, 3, 4)
    assert Cell("cnn", "long-tail", "none", epochs=1).imbalance_ratio == 10.0  # the reference's


def test_the_remedies_grid_expands_and_its_quick_profile_keeps_the_cnn():
    paper = [e.cell for e in expand("remedies", "paper", "auto")]
    assert len(paper) == 2 * 2 * 7 and {c.model for c in paper} == {"cnn", "resnet32"}
    combos = {(c.model, c.variant, c.imbalance_ratio, c.remedy) for c in paper}
    assert combos == {(m, v, rho, a) for m in ("cnn", "resnet32")
                      for v, rho in (("long-tail", 10.0), ("exp", 100.0)) for a in cells.REMEDIES}
    assert all(c.tail_classes == tuple(range(1, 10)) for c in paper if c.variant == "exp")
    quick = [e.cell for e in expand("remedies", "quick", "auto")]
    assert [(c.variant, c.remedy) for c in quick] == [(c.variant, c.remedy) for c in paper
                                                        if c.model == "cnn"]
    assert all(c.model == "cnn" and c.trials >= 8 and c.seeds == 3 for c in quick)
    with pytest.raises(GridError, match="profile quick runs only the cells of model cnn, and "
                                        r"none of those matches \{'model': \['resnet32'\]\}"):
        expand("remedies", "quick", "auto", {"model": ["resnet32"]})
    assert expand("remedies", "quick", "auto", {"model": ["rnn"]}) == []  # in no cell at all


def _restricted(tmp_path, table: str) -> str:
    return bad_grid(tmp_path, table + '\n[[cell]]\nmodel = "cnn"\nvariant = "balanced"\n'
                    'remedy = "none"\nepochs = 1\n[[cell]]\nmodel = "rnn"\n'
                    'variant = "exp"\nremedy = "none"\nepochs = 1\n')


def test_a_grids_profile_table_restricts_that_profile_only(tmp_path):
    grid = _restricted(tmp_path, '[profile.quick]\nvariant = ["exp"]\n'
                                 '[profile.paper]\nmodel = ["cnn", "rnn"]\nremedy = ["none"]')
    assert [e.cell.model for e in expand(grid, "quick", "auto")] == ["rnn"]
    assert [e.cell.model for e in expand(grid, "paper", "auto")] == ["cnn", "rnn"]
    with pytest.raises(GridError, match="profile quick runs only the cells of variant long-tail, "
                                        "and the grid has none of those"):
        expand(_restricted(tmp_path, '[profile.quick]\nvariant = ["long-tail"]'), "quick",
               "auto")


@pytest.mark.parametrize("table, message", [
    ('[profile.quick]\nepochs = 2', r"\[profile.quick\]: unknown key\(s\) epochs; a grid's "
     r"profile table keeps cells by model, variant, remedy \(settings for every cell go in "
     r"profiles.toml\)"),
    ('[profile.quik]\nmodel = ["cnn"]', r"\[profile.quik\]: unknown profile 'quik'; "
     "profiles.toml has paper, quick"),
    ('[profile.quick]\nmodel = ["vgg"]', r"\[profile.quick\]: model 'vgg' is not one of cnn, "),
    ('[profile.quick]\nmodel = "cnn"', r"model must be a non-empty list of names, got 'cnn'"),
    ('[profile.quick]\nmodel = []', "model must be a non-empty list of names"),
    ('profile = 3', "`profile` must hold tables"),
])
def test_a_bad_profile_table_in_a_grid_is_refused_naming_file_and_table(tmp_path, table,
                                                                       message):
    grid = _restricted(tmp_path, table)
    with pytest.raises(GridError, match=message) as err:
        expand(grid, "paper", "auto")  # checked whichever profile runs
    assert grid in str(err.value)


def test_unknown_grid_and_profile_are_refused():
    with pytest.raises(GridError, match="no such grid file"):
        load_grid("nonexistent")
    with pytest.raises(GridError, match="unknown profile 'fast'"):
        load_profile("fast")
