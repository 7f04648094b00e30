"""tune_cell: one Optuna study per cell, resumed where it stopped, trials as nested runs.

Sampler: TPE, seeded from the cell and from each trial's index among the trials that did not
fail (studies/sampler.py), so a study resumed after a kill or a Ctrl-C proposes what it would
have proposed without the stop.

Pruner: studies/pruners.py's default, the median rule, MedianPruner(n_startup_trials=2,
n_warmup_steps=max(1, epochs // 3)): a trial stops when its best validation balanced accuracy
so far is below the median of the completed trials at the same epoch, from the third trial on
and once a third of its epochs are done. Not earlier, because early curves of plain SGD cross:
on Fashion-MNIST (quick profile) the cnn at lr 0.01 trails lr 0.001 for two epochs and leads
from the third on, so a verdict at epoch 1 would stop the better trial.

Measured against two candidates with `make pruners` (benchmark/app/perf_pruners.py): 9
studies of the quick profile's cnn cells (balanced, long-tail, long-tail flip+noise; cell
seeds 0, 1, 2; 8 trials of 6 epochs), each tuned under every rule with the same sampler seeds,
split and initial weights, on a loaded 2-core CPU (epochs and accuracies do not depend on the
load). Of the 432 epochs of 9 unpruned studies the median rule trained 251; successive
halving (rungs at epochs 2 and 4, the top half goes on) 243 (97%), its best validation
balanced accuracy from -0.140 to +0.235 of the median rule's on the same study (mean +0.016;
equal in 6 of 9); the top-quartile rule 240 (96%), with the same best in all 9. The median
rule's best varies by 0.174 (std) from study to study. On 6 rnn studies (4 epochs, seeds 0
and 1): halving 103% of the median rule's epochs, best -0.040..0; top-quartile 95%, the same
best in all 6. Neither candidate trains clearly fewer
epochs, so the median rule stays. There is little left to save: the median rule already
stops 45 of the 72 trials, on average after 2.0 epochs (its first verdict; diverged ones
after 1), and 162 of its 251 epochs are the 27 trials that complete, two a study at least
(its start-up). Halving's different bests come with different trials (TPE learns from what
was pruned), not with fewer epochs.

The median rule is chosen over Hyperband because the studies are small (8 trials in the quick
profile, 20 in the paper one). Hyperband splits those few trials over its brackets, and while
a rung holds fewer than `reduction_factor` trials it promotes only the best so far: a trial is
then stopped at its first rung (epoch 1 for max_resource = epochs) on the word of one other
trial, just where the curves still cross. The median rule compares with every completed trial,
waits for two of them, and waits out the first third of the epochs.

The rule is no part of the study key (a study continued under another rule mixes the two):
the cell run's tag `optuna_pruner` says which rule tuned it. Changing the default changes what
new studies find, and continues existing ones under the new rule.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch

from benchmark.cells import Cell
from benchmark.data import Dataset
from benchmark.recording import Recorder
from studies.locks import locks_place, open_locks
from studies.objective import Objective, tuning_data
from studies.pruners import DEFAULT, make_pruner
from studies.sampler import IndexedSampler
from studies.space import SPACE, Param, check_space, searched, starting_point
from studies.storage import is_journal, masked, open_studies, storage_url
from studies.summary import StudySummary, summarize
from studies.trials import Workers

OBJECTIVE = "validation balanced accuracy"
# The fields that only size the search, not the problem: changing them continues a study
# instead of starting a new one (asking for 20 trials after 4 adds 16).
BUDGET_FIELDS = {"trials": 0}


@dataclass
class TuneResult:
    """What the runner records on the cell run; `summary` is plain data for the figures."""

    best: dict[str, float]  # Cell field -> tuned value; {} when no trial completed
    complete: int
    pruned: int
    failed: int
    epochs_trained: int  # over every trial of the study, pruned ones up to where they stopped
    summary: StudySummary
    study_name: str
    storage: str
    dead_runs: list[str] = dataclasses.field(default_factory=list)  # trial runs of dead workers

    def ranked(self, above: float = float("-inf")) -> list[dict[str, float]]:
        """The parameters of every complete trial whose value is above `above`, best first
        (`best` is the first)."""
        done = [t for t in self.summary.trials if t.state == "COMPLETE" and t.value is not None
                and t.value > above]
        return [dict(t.params) for t in sorted(done, key=lambda t: -t.value)]


def study_key(cell: Cell) -> str:
    """The key of everything that defines the cell's problem, not its budget."""
    return dataclasses.replace(cell, **BUDGET_FIELDS).key


def study_name(cell: Cell) -> str:
    """The cell's name and its study key."""
    return f"{cell.name} [{study_key(cell)}]"


def default_pruner(cell: Cell) -> optuna.pruners.BasePruner:
    """studies/pruners.py's default rule for this cell (see the module docstring for why)."""
    return make_pruner(DEFAULT, cell)


def pruner_of(cell: Cell, pruner: str | optuna.pruners.BasePruner | None
              ) -> tuple[optuna.pruners.BasePruner, str]:
    """(the pruner, its name for the cell run's tag): a rule's name, a pruner, or None for the
    default rule. The pruner is no part of the study key: a study continued under another
    rule mixes the two, and the tag says which rule the cell's run tuned with."""
    if pruner is None or isinstance(pruner, str):
        name = pruner or DEFAULT
        return make_pruner(name, cell), name
    return pruner, type(pruner).__name__


def make_sampler(cell: Cell) -> optuna.samplers.BaseSampler:
    """TPE seeded from the cell's study key, so every cell explores points of its own (a seed
    shared by all cells made every study try the same learning rates), and from the trial's
    index among the study's trials that did not fail (studies/sampler.py): a study resumed
    after a kill or a Ctrl-C proposes the points it would have proposed without the stop,
    and never redraws the start-up points it tried before. Half the budget (2..10 trials) is
    random start-up, the rest is TPE's model."""
    key = int(study_key(cell), 16)
    startup = min(10, max(2, cell.trials // 2))
    return IndexedSampler(lambda index: optuna.samplers.TPESampler(
        seed=(key + index) % 2**32, n_startup_trials=startup))


def _open_study(cell: Cell, storage, pruner: optuna.pruners.BasePruner) -> optuna.Study:
    """The cell's study, created on first use, loaded with its sampler and pruner."""
    name = study_name(cell)
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                load_if_exists=True)
    if not study.metric_names:  # optuna-dashboard's axis label, instead of "Objective 0"
        with warnings.catch_warnings():  # "experimental" since Optuna 3.2: known, and used
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([OBJECTIVE])
    return optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(cell),
                             pruner=pruner)


@dataclass(frozen=True)
class TuneOptions:
    """How a cell's study runs (its budget, `trials`, is the cell's own)."""

    storage: str | Path | None = None  # journal path, sqlite:///, postgresql://; None: default
    timeout: float | None = None  # seconds one cell's study may take; None: no limit
    jobs: int = 1  # trials at once, in threads sharing the device
    progress: bool = False  # Optuna's bar over the trials (on a terminal)
    # a rule of studies/pruners.py by name, or a pruner; None: the default rule
    pruner: str | optuna.pruners.BasePruner | None = None
    space: tuple[Param, ...] = SPACE  # what is searched


def tune_cell(cell: Cell, data: Dataset, device: torch.device, run: Recorder,
              options: TuneOptions | None = None, *, seed: int | None = None) -> TuneResult:
    """Tune the cell's searched fields on a validation split of `data`'s training set (after
    the long-tail cut, before oversampling) until its study holds `cell.trials` finished
    (complete or pruned) trials, or `timeout` seconds pass. `data` is repetition 0's cut and
    `seed` its seed (default `cell.repetition_seed(0)`): it draws the validation split, and
    every trial's initial weights and batch order. Each trial is a nested run of `run`. A
    study that already holds enough trials trains nothing and gives its best."""
    study, options, url = _study(cell, run, options)
    dead = _optimize(study, cell, data, device, run, options, seed, url, wait=True)
    result = _result(study, searched(cell, options.space), cell.seed, url)
    result.dead_runs = _run_ids(dead)
    return result


def help_tune(cell: Cell, data: Dataset, device: torch.device, run: Recorder,
              options: TuneOptions | None = None, *, seed: int | None = None) -> list[str]:
    """Run trials of a cell's study beside its owner (who calls `tune_cell`), as `tune_cell`
    does, but leave the last one that nobody has started to the owner (it has to wait for the
    study's end anyway: it trains instead of waiting) and go: the owner waits for the others'
    trials to end, and runs again any whose worker dies. Returns the MLflow runs of the dead
    workers' trials found on the way."""
    study, options, url = _study(cell, run, options)
    return _run_ids(_optimize(study, cell, data, device, run, options, seed, url, wait=False))


def _study(cell: Cell, run: Recorder, options: TuneOptions | None
           ) -> tuple[optuna.Study, TuneOptions, str]:
    """The cell's study, opened (its first trial the cell's own values) and named on `run`."""
    options = options or TuneOptions()
    check_space(options.space)
    url = storage_url(options.storage)
    pruner, pruner_name = pruner_of(cell, options.pruner)
    study = _open_study(cell, open_studies(url), pruner)
    run.set_tags({"optuna_study": study.study_name, "optuna_url": masked(url),
                  "optuna_pruner": pruner_name})
    if not study.get_trials(deepcopy=False):
        # the cell's own values first: tuning can then only improve on them (on validation)
        study.enqueue_trial(starting_point(cell, options.space), skip_if_exists=True)
    return study, options, url


def _run_ids(trials: list) -> list[str]:
    return [t.user_attrs["mlflow_run_id"] for t in trials if "mlflow_run_id" in t.user_attrs]


def _optimize(study: optuna.Study, cell: Cell, data: Dataset, device: torch.device,
              run: Recorder, options: TuneOptions, seed: int | None, url: str, *,
              wait: bool) -> list:
    """Run trials until the study holds `cell.trials` finished ones (`wait`), or until only
    one is left that nobody has started (a helper's), whichever worker runs them
    (studies/trials.py). Returns the dead workers' trials found on the way."""
    seed = cell.repetition_seed(0) if seed is None else seed
    deadline = None if options.timeout is None else time.monotonic() + options.timeout
    workers = Workers(study, open_locks(url), is_journal(url), cell.trials, deadline,
                      options.progress, wait=wait)
    return workers.run(lambda: Objective(cell, tuning_data(data, seed, device), device, run,
                                         options.space, seed, {"locks": locks_place(url)}),
                       options.jobs)


def _result(study: optuna.Study, space: list[Param], seed: int, url: str) -> TuneResult:
    summary = summarize(study, space, OBJECTIVE, seed)
    return TuneResult(summary.best_params, summary.count("COMPLETE"), summary.count("PRUNED"),
                      summary.count("FAIL"), summary.epochs_trained, summary,
                      study.study_name, masked(url))
