"""studies (Optuna) and tracking.study_plots: real studies in a journal file, trials read back
from a real SQLite MLflow store, on a tiny learnable dataset."""

from __future__ import annotations

import dataclasses
import math

import optuna
import pytest
import torch
from conftest import assert_readable_svg, learnable_dataset, text_off_canvas
from mlflow import MlflowClient

from benchmark.app import runner
from benchmark.cells import Cell, GridEntry
from benchmark.data.variants import make_variant
from benchmark.errors import UserError
from studies import objective as objective_mod
from studies.dashboard import dashboard_command
from studies.objective import tuning_data
from studies.space import SPACE, Param, check_space, searched, starting_point, suggest
from studies.storage import open_studies, storage_url
from studies.summary import StudySummary, TrialRecord
from studies.tune import TuneOptions, default_pruner, study_name, tune_cell
from tracking.store import Store
from tracking.study_plots import FIGURES, write_study_figures

CPU = torch.device("cpu")
BASE = dict(epochs=2, batch_size=8, lr=0.05, dataset="synthetic", profile="quick", trials=3)
PLAIN = Cell("cnn", "balanced", "none", **BASE)
OVERSAMPLED = Cell("cnn", "long-tail", "flip+noise", imbalance_ratio=5, sigma=0.1, **BASE)


class PruneOddTrials(optuna.pruners.BasePruner):
    """Prunes trials 1, 3, ... at their first report: pruning without depending on scores."""

    def prune(self, study, trial) -> bool:
        return trial.number % 2 == 1


@pytest.fixture(scope="module")
def data():
    return learnable_dataset(200, 50, seed=3, digest="cd" * 32)


def store_at(tmp_path) -> Store:
    return Store(f"sqlite:///{tmp_path}/mlflow.db", "tailbench/synthetic/quick")


def runs_of(client: MlflowClient, store: Store, kind: str) -> list:
    return client.search_runs([store.experiment_id], f"tags.tailbench_kind = '{kind}'",
                              max_results=1000)


# ---------------------------------------------------------------- space and validation split

def test_space_is_valid_cell_fields_and_sigma_is_searched_only_for_flip_noise():
    check_space()
    lr = next(p for p in SPACE if p.name == "lr")
    assert lr.log and lr.contains(0.01) and lr.high >= 3.0  # the reference's lr, and the cliff
    assert [p.name for p in searched(PLAIN)] == ["lr"]
    assert [p.name for p in searched(OVERSAMPLED)] == ["lr", "sigma"]
    assert starting_point(OVERSAMPLED) == {"lr": 0.05, "sigma": 0.1}
    # plain repeats and the loss remedies have no noise to tune; a loss remedy searches the
    # one parameter its paper tunes, starting from the paper's value
    for remedy, extra in (("oversample", []), ("balanced-softmax", []), ("reweight", ["cb_beta"]),
                          ("logit-adjust", ["la_tau"]), ("ldam-drw", ["ldam_margin"])):
        cell = dataclasses.replace(OVERSAMPLED, remedy=remedy)
        assert [p.name for p in searched(cell)] == ["lr", *extra]
        assert starting_point(cell) == {"lr": 0.05, **{k: getattr(cell, k) for k in extra}}
    # cb_beta is drawn from Cui et al.'s grid, never in between
    beta = next(p for p in SPACE if p.name == "cb_beta")
    cell = dataclasses.replace(OVERSAMPLED, remedy="reweight")
    drawn = suggest(optuna.trial.FixedTrial({"lr": 0.1, "cb_beta": 0.999}), cell)
    assert drawn == {"lr": 0.1, "cb_beta": 0.999}
    assert beta.contains(0.99) and not beta.contains(0.995)
    with pytest.raises(ValueError, match="least and greatest choice"):
        check_space((Param("cb_beta", 0.9, 0.99999, log=False, choices=(0.9, 0.99)),))
    # a user's new entry: an int field is drawn as an int
    space = SPACE + (Param("batch_size", 16, 256, log=True),)
    drawn = suggest(optuna.trial.FixedTrial({"lr": 0.1, "batch_size": 32}), PLAIN, space)
    assert drawn == {"lr": 0.1, "batch_size": 32} and isinstance(drawn["batch_size"], int)
    with pytest.raises(ValueError, match="not a Cell field"):
        check_space((Param("momentum", 0.0, 0.9, log=False),))
    with pytest.raises(ValueError, match="log-uniform"):
        check_space((Param("lr", 0.0, 1.0, log=True),))


def test_validation_split_is_disjoint_from_training_and_stratified(data):
    cut = make_variant(data, "long-tail", seed=0, tail_classes=OVERSAMPLED.tail_classes,
                       ratio=5)
    split = tuning_data(cut, seed=0, device=CPU)
    assert len(split.train.y) + len(split.val.y) == len(cut.train_y)
    # learnable images carry random noise, so equal bytes would mean the same image
    train_images = {bytes(img.numpy()) for img in split.train.x}
    assert not any(bytes(img.numpy()) in train_images for img in split.val.x)
    counts = torch.bincount(cut.train_y, minlength=10)
    val_counts = torch.bincount(split.val.y, minlength=10)
    for c in range(10):  # 10% of each class, at least one
        assert abs(val_counts[c].item() - max(1, 0.1 * counts[c].item())) <= 1, c
    assert not torch.equal(split.val.x, cut.test_x[:len(split.val.x)])  # not the test set


# ---------------------------------------------------------------- studies through the runner

def test_two_cell_study_nests_trials_marks_pruned_and_records_best(tmp_path, data, monkeypatch):
    seen_labels = []
    real = objective_mod.make_remedy

    def spy(name, labels, **kw):  # the oversampler must see the training part only
        seen_labels.append(len(labels))
        return real(name, labels, **kw)

    monkeypatch.setattr(objective_mod, "make_remedy", spy)
    store = store_at(tmp_path)
    # a space where batch-8 SGD neither diverges nor stalls: only the pruner stops trials
    space = (Param("lr", 0.02, 0.1, log=True), SPACE[1])
    tuning = TuneOptions(str(tmp_path / "optuna" / "studies.journal"), pruner=PruneOddTrials(),
                         space=space)
    outcomes = runner.run_grid([GridEntry(c, {}) for c in (PLAIN, OVERSAMPLED)], data, store,
                               device=CPU, tuning=tuning)
    assert [o.status for o in outcomes] == ["finished", "finished"], outcomes
    client = MlflowClient(store.uri)
    cells = {r.data.tags["remedy"]: r for r in runs_of(client, store, "cell")}
    trials = runs_of(client, store, "trial")
    assert len(trials) == 6
    for augment, cell in zip(("none", "flip+noise"), (PLAIN, OVERSAMPLED), strict=True):
        run = cells[augment]
        mine = sorted((t for t in trials if t.data.tags["mlflow.parentRunId"] == run.info.run_id),
                      key=lambda t: int(t.data.tags["trial_number"]))
        assert [t.data.tags["trial_number"] for t in mine] == ["0", "1", "2"]
        assert [t.info.status for t in mine] == ["FINISHED", "KILLED", "FINISHED"]
        assert [t.data.tags["state"] for t in mine] == ["COMPLETE", "PRUNED", "COMPLETE"]
        assert float(mine[0].data.params["lr"]) == cell.lr  # the cell's own lr is trial 0
        assert ("sigma" in mine[0].data.params) == cell.uses_sigma
        curve = client.get_metric_history(mine[0].info.run_id, "val_balanced_acc")
        assert [m.step for m in curve] == [1, 2]
        assert len(client.get_metric_history(mine[1].info.run_id, "val_balanced_acc")) == 1
        assert "best_lr" in run.data.params
        assert ("best_sigma" in run.data.params) == cell.uses_sigma
        m = run.data.metrics
        assert (m["trials_complete"], m["trials_pruned"], m["trials_failed"]) == (2, 1, 0)
        assert m["trial_epochs"] == 2 + 1 + 2  # the pruned trial stopped after epoch 1
        figures = {a.path for a in client.list_artifacts(run.info.run_id, "optuna")}
        # (importance.svg needs complete trials that differ: not asked of 2-epoch trials)
        expected = {"optuna/history.svg", "optuna/intermediate.svg"}
        assert expected | ({"optuna/lr_sigma.svg"} if cell.uses_sigma else set()) <= figures
        assert ("optuna/lr_sigma.svg" in figures) == cell.uses_sigma
        study = optuna.load_study(study_name=study_name(cell),
                                  storage=open_studies(tuning.storage))
        assert [t.user_attrs["mlflow_run_id"] for t in study.trials] == [
            t.info.run_id for t in mine]
    # 3 trials per cell, each oversampler built on the training part alone: balanced 200 - 20
    # held out; long-tail 5 x 4 + 5 x 20 = 120 after the cut, 5 x 1 + 5 x 2 held out
    assert seen_labels == [180] * 3 + [105] * 3


def test_a_diverging_learning_rate_prunes_its_trials_and_the_cell_still_finishes(
        tmp_path, data):
    store = store_at(tmp_path)
    cell = dataclasses.replace(PLAIN, trials=2)
    tuning = TuneOptions(str(tmp_path / "optuna.journal"),
                         space=(Param("lr", 1e4, 1e5, log=True),))
    [outcome] = runner.run_grid([GridEntry(cell, {})], data, store, device=CPU, tuning=tuning)
    assert outcome.status == "finished", outcome.error
    client = MlflowClient(store.uri)
    trials = runs_of(client, store, "trial")
    assert len(trials) == 2
    for t in trials:
        assert t.info.status == "KILLED" and t.data.tags["state"] == "PRUNED"
        assert t.data.tags["pruned_reason"].startswith("diverged")
    [cell_run] = runs_of(client, store, "cell")
    assert "best_lr" not in cell_run.data.params  # nothing completed: the cell kept its lr
    assert cell_run.data.metrics["trials_pruned"] == 2


# ---------------------------------------------------------------- resume

def test_a_study_resumes_to_more_trials_without_starting_over(tmp_path, data):
    store = store_at(tmp_path)
    storage = str(tmp_path / "optuna.journal")
    cell = dataclasses.replace(PLAIN, trials=2)
    with store.cell_run(cell.name, {}) as run:
        first = tune_cell(cell, data, CPU, run, TuneOptions(storage))
    more = dataclasses.replace(cell, trials=4, seeds=5)
    assert study_name(more) == study_name(cell)  # the budget is not part of the study
    with store.cell_run(more.name, {}) as run:
        second = tune_cell(more, data, CPU, run, TuneOptions(storage))
    with store.cell_run(more.name, {}) as run:
        third = tune_cell(more, data, CPU, run, TuneOptions(storage))
    assert first.complete + first.pruned == 2
    assert second.complete + second.pruned == 4
    before, after = first.summary.trials, second.summary.trials
    assert [(t.params, t.value) for t in after[:2]] == [(t.params, t.value) for t in before]
    assert third.epochs_trained == second.epochs_trained  # enough trials: nothing trained
    assert third.best == second.best and "lr" in third.best
    assert len(runs_of(MlflowClient(store.uri), store, "trial")) == 4


def test_each_cell_samples_points_of_its_own():
    """The sampler's seed comes from the cell's study key: two cells that differ in one field
    draw different random start-up points (a seed shared by every cell made every study try
    the same learning rates), while the same cell draws the same ones again."""
    from studies.tune import make_sampler

    def first_lrs(cell, n=4):
        study = optuna.create_study(sampler=make_sampler(cell), direction="maximize")
        study.optimize(lambda t: t.suggest_float("lr", 1e-3, 3.0, log=True), n_trials=n)
        return [t.params["lr"] for t in study.trials]

    other = dataclasses.replace(PLAIN, variant="long-tail")
    assert first_lrs(PLAIN) == first_lrs(PLAIN)
    assert not set(first_lrs(PLAIN)) & set(first_lrs(other))
    # the budget is not part of the key: the random start-up points stay the same
    assert first_lrs(dataclasses.replace(PLAIN, trials=9), 2) == first_lrs(PLAIN, 2)


def test_a_failed_trial_and_its_retry_leave_the_proposals_as_they_were():
    """The sampler's proposal for a trial depends on its index among the trials that did not
    fail: a study whose trial 1 failed (a dead worker, Ctrl-C), was queued again and resumed by
    a new process proposes the same points as one that never stopped (seeding a new sampler
    with the trials so far, as before, drew other points)."""
    from studies.tune import make_sampler

    cell = dataclasses.replace(PLAIN, trials=8)

    def objective(t):
        return -abs(math.log(t.suggest_float("lr", 1e-3, 3.0, log=True)) + 3)

    def points(fail_at=None):
        storage = optuna.storages.InMemoryStorage()
        study = optuna.create_study(storage=storage, sampler=make_sampler(cell),
                                    direction="maximize")
        for _ in range(8):
            trial = study.ask()
            value = objective(trial)
            if trial.number == fail_at:  # failed, queued again, resumed by a new process
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                study.enqueue_trial(trial.params)
                study = optuna.load_study(study_name=study.study_name, storage=storage,
                                          sampler=make_sampler(cell))
                continue
            study.tell(trial, value)
        return [t.params["lr"] for t in study.trials if t.state.name == "COMPLETE"]

    uninterrupted, resumed = points(), points(fail_at=1)
    assert resumed == uninterrupted[:len(resumed)] and len(resumed) == 7
    assert len(set(uninterrupted)) == 8  # random start-up points, then TPE's own (after 4)


def test_the_default_pruner_prunes_a_poor_third_trial():
    study = optuna.create_study(direction="maximize", pruner=default_pruner(PLAIN))
    for _ in range(2):
        t = study.ask()
        for epoch in (1, 2):
            t.report(0.8, epoch)
        study.tell(t, 0.8)
    poor = study.ask()
    poor.report(0.1, 1)
    assert poor.should_prune()


# ---------------------------------------------------------------- storage and dashboard

@pytest.mark.parametrize("bad, says", [
    ("", "empty"), ("sqlite://runs/o.db", "three slashes"), ("sqlite:runs/o.db", "without '//'"),
    ("postgres://u@h/db", "unknown scheme"), ("postgresql://host", "database name"),
    ("http://localhost:8080", "unknown scheme")])
def test_malformed_storage_strings_are_refused_with_a_fix(bad, says):
    with pytest.raises(ValueError, match=says) as e:
        storage_url(bad)
    assert "sqlite:///" in str(e.value) or "like" in str(e.value)


def test_storage_paths_journal_folder_sqlite_and_dashboard(tmp_path, monkeypatch):
    monkeypatch.delenv("TAILBENCH_STORAGE", raising=False)
    assert storage_url(None).endswith("optuna.journal")
    monkeypatch.setenv("TAILBENCH_STORAGE", "sqlite:///shared/optuna.db")  # make services
    assert storage_url(None) == "sqlite:///shared/optuna.db"
    with pytest.raises(ValueError, match="cannot be opened.*cannot be reached"):
        open_studies("postgresql://nobody:pw@127.0.0.1:1/optuna")  # nothing listens on port 1
    with pytest.raises(ValueError, match="is a folder"):
        storage_url(tmp_path)
    journal = tmp_path / "deep" / "er" / "o.journal"
    with pytest.raises(UserError, match="no Optuna journal"):
        dashboard_command(journal)
    optuna.create_study(storage=open_studies(journal), study_name="s")  # creates the folders
    cmd = dashboard_command(journal, port=8123)
    assert cmd[0].endswith("optuna-dashboard") and cmd[1:3] == [str(journal), "--port"]
    db = tmp_path / "db" / "o.db"
    optuna.create_study(storage=open_studies(f"sqlite:///{db}"), study_name="s")
    with pytest.raises(ValueError, match="SQLite database"):
        storage_url(db)  # a database passed as a journal path
    with pytest.raises(ValueError, match="unknown scheme") as e:
        storage_url("mongodb://u:secret@h/d")
    assert "secret" not in str(e.value)  # a password never reaches a message


# ---------------------------------------------------------------- figures from plain data

def _summary(space: dict) -> StudySummary:
    def trial(n, state, lr, sigma, curve, note=""):
        value = curve[-1] if state == "COMPLETE" else None
        params = {"lr": lr, "sigma": sigma} if "sigma" in space else {"lr": lr}
        return TrialRecord(n, state, params, value, dict(enumerate(curve, 1)), len(curve), note)

    trials = [trial(0, "COMPLETE", 0.01, 0.05, [0.3, 0.5, 0.6]),
              trial(1, "PRUNED", 0.002, 0.2, [0.1]),
              trial(2, "COMPLETE", 0.1, 0.1, [0.4, 0.6, 0.7]),
              trial(3, "PRUNED", 5.0, 0.25, [], "diverged: loss nan")]
    return StudySummary("cnn · long-tail · flip+noise [abc]", "validation balanced accuracy",
                        space, trials, {"lr": 0.8, "sigma": 0.2} if "sigma" in space else {},
                        2, 0.7, dict(trials[2].params))


def test_study_figures_are_drawn_from_plain_data(tmp_path):
    both = {"lr": {"low": 1e-3, "high": 10.0, "log": True, "unit": "SGD learning rate"},
            "sigma": {"low": 0.0, "high": 0.3, "log": False, "unit": "noise std"}}
    paths = write_study_figures(_summary(both), tmp_path / "a")
    assert sorted(p.name for p in paths) == ["history.svg", "importance.svg",
                                             "intermediate.svg", "lr_sigma.svg"]
    for p in paths:
        assert_readable_svg(p.read_bytes())
    only_lr = write_study_figures(_summary({"lr": both["lr"]}), tmp_path / "b")
    assert sorted(p.name for p in only_lr) == ["history.svg", "intermediate.svg"]
    empty = dataclasses.replace(_summary(both), trials=[])
    assert write_study_figures(empty, tmp_path / "c") == []



def test_study_figures_draw_nothing_off_their_canvas():
    """They are saved uncropped, as tight_layout fits them: the legends beside or inside the
    axes, the colour bar, the longest cell name in the titles all stay on the canvas."""
    both = {"lr": {"low": 1e-3, "high": 10.0, "log": True, "unit": "SGD learning rate"},
            "sigma": {"low": 0.0, "high": 0.3, "log": False, "unit": "noise std"}}
    summary = dataclasses.replace(_summary(both),
                                  name="resnet32 · long-tail · balanced-softmax [abc]")
    drawn = {name: draw(summary) for name, draw in FIGURES.items()}
    assert all(fig is not None for fig in drawn.values())
    for name, fig in drawn.items():
        assert not text_off_canvas(fig), (name, text_off_canvas(fig))

def test_runner_ups_are_only_trials_that_learned_on_validation():
    """The final fit falls back to the next best trials, but never to one that scored near
    chance on validation: it would trade a diverged fit for one that learns nothing."""
    from studies.tune import TuneResult

    trials = [TrialRecord(0, "COMPLETE", {"lr": 0.01}, 0.10, {}, 6),
              TrialRecord(1, "COMPLETE", {"lr": 0.1}, 0.52, {}, 6),
              TrialRecord(2, "PRUNED", {"lr": 2.0}, None, {}, 1),
              TrialRecord(3, "COMPLETE", {"lr": 0.2}, 0.41, {}, 6)]
    result = TuneResult({"lr": 0.1}, 3, 1, 0, 19, StudySummary("s", "v", {}, trials), "s", "j")
    assert result.ranked() == [{"lr": 0.1}, {"lr": 0.2}, {"lr": 0.01}]
    assert result.ranked(above=0.15) == [{"lr": 0.1}, {"lr": 0.2}]
