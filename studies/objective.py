"""The objective: train one trial's model on the cell's training set minus a validation split,
and score it by balanced accuracy on that split. The test set is never seen here.

Each trial is a nested MLflow run under the cell's run (handed in as a duck-typed RunLog:
`child(name, kind, tags)`, `log_params`, `log_metrics`, `set_tags`, `end`, `run_id`), so
`studies` never imports mlflow. How a trial's run ends:
- COMPLETE: FINISHED, tag state=COMPLETE, its value logged as `value`.
- PRUNED by the pruner: KILLED, tag state=PRUNED.
- Diverged (the loss went NaN/inf): KILLED, tag state=PRUNED and `pruned_reason`. Pruned, not
  failed, on purpose: TPE ranks a pruned trial (worst of all when it reported nothing) and so
  learns to stay below the cliff, while it ignores FAILED trials; and a pruned trial counts
  toward the cell's trial budget, so a study whose space diverges still ends.
- Anything else: FAILED with the error (the RunLog's context does that), and the study stops,
  because such an error (a bug, a full disk) would repeat in every trial.
- Ctrl-C: KILLED; Optuna fails the trial and its parameters are queued again, so the next run
  tries that point first, as after a dead worker (studies/sampler.py: resume = uninterrupted).
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass

import optuna
import torch

from benchmark.cells import Cell
from benchmark.data import Dataset
from benchmark.data.augment import make_remedy
from benchmark.data.sampling import stratified_split
from benchmark.recording import Recorder
from benchmark.train import Diverged, Split, build_model, fit
from studies.space import SPACE, Param, suggest
from studies.trials import WORKER

VALIDATION_FRACTION = 0.1  # of every class of the cell's training set (at least one image)
# build_model seeds torch's global RNG; with --jobs > 1 two trials must not interleave there
_BUILD_LOCK = threading.Lock()


@dataclass(frozen=True)
class TuningData:
    """The cell's training set split in two, on the device."""

    train: Split
    val: Split
    num_classes: int


def tuning_data(data: Dataset, seed: int, device: torch.device) -> TuningData:
    """Training part and validation part of `data`'s training set (stratified, seeded).

    `data` is the cell's data after the long-tail cut and before oversampling: oversampling is
    built later on the training part alone, so no copy of a validation image is ever trained on.
    """
    train_idx, val_idx = stratified_split(data.train_y, VALIDATION_FRACTION, seed)
    x, y = data.train_x, data.train_y
    return TuningData(Split(x[train_idx].to(device), y[train_idx].to(device)),
                      Split(x[val_idx].to(device), y[val_idx].to(device)), data.num_classes)


class Objective:
    """Callable for `study.optimize`: one trial = one fit of `cell.epochs` epochs."""

    def __init__(self, cell: Cell, data: TuningData, device: torch.device, run: Recorder,
                 space: tuple[Param, ...] = SPACE, seed: int | None = None,
                 run_tags: dict[str, str] | None = None):
        self.cell, self.data, self.device, self.run, self.space = cell, data, device, run, space
        self.seed = cell.repetition_seed(0) if seed is None else seed
        self.run_tags = run_tags or {}  # on every trial's run (where its workers' locks live)

    def __call__(self, trial: optuna.Trial) -> float:
        params = suggest(trial, self.cell, self.space)
        # the worker running it: a trial run left RUNNING whose worker's lock is free has lost
        # its worker, and the next `tailbench run` ends it (benchmark/app/safety.py)
        tags = {"trial_number": trial.number, "study": trial.study.study_name,
                "worker": trial.user_attrs.get(WORKER, ""), **self.run_tags}
        try:
            with self.run.child(f"trial {trial.number}", "trial", tags=tags) as log:
                trial.set_user_attr("mlflow_run_id", log.run_id)
                log.log_params({"trial_number": trial.number, **params})
                value = self._train(trial, params, log)
                log.log_metrics({"value": value})
                log.set_tags({"state": "COMPLETE"})  # in one store write with the metrics
                return value
        except KeyboardInterrupt:
            # Optuna fails the trial; its point is queued again, as a dead worker's is, so the
            # next run starts with it and the study goes on as if never stopped
            # (studies/sampler.py)
            trial.study.enqueue_trial(params, user_attrs={"retry_of": trial.number})
            raise

    def _train(self, trial: optuna.Trial, params: dict[str, float], log) -> float:
        # the trial's cell: the searched fields replaced, so a new entry in the space reaches
        # training wherever training reads that Cell field
        cell, data = dataclasses.replace(self.cell, **params), self.data
        augment = make_remedy(cell.remedy, data.train.y, num_classes=data.num_classes,
                               **cell.remedy_kwargs())
        with _BUILD_LOCK:
            model = build_model(cell.model, data.num_classes, self.seed, self.device,
                                augment.cosine_scale)
        done = {"epochs": 0}  # epochs trained so far, also when fit stops early
        try:
            # every trial uses repetition 0's seed (same init, same batches): trials then
            # differ only in their hyperparameters, which makes their comparison less noisy
            history = fit(model, data.train, data.val, epochs=cell.epochs,
                          batch_size=cell.batch_size, lr=cell.lr,
                          seed=self.seed, augment=augment, precision=cell.precision,
                          callback=_epoch_callback(trial, log, done))
        except optuna.TrialPruned as e:
            _end_pruned(trial, log, str(e))
            raise
        except Diverged as e:
            done["epochs"] = e.epoch  # that epoch was trained, up to the non-finite loss
            _end_pruned(trial, log, f"diverged: {e}")
            raise optuna.TrialPruned(f"diverged: {e}") from None
        finally:
            trial.set_user_attr("epochs", done["epochs"])
        return history[-1]["test_balanced_acc"]  # the final weights are what a final fit keeps


def _epoch_callback(trial: optuna.Trial, log, done: dict):
    """Per epoch: log the validation curve on the trial's run, report to Optuna, and stop the
    trial (raise TrialPruned out of fit) when the pruner says so."""

    def on_epoch(epoch: int, m: dict[str, float]) -> None:
        done["epochs"] = epoch
        value = m["test_balanced_acc"]  # fit's "test" split is the validation split here
        log.log_metrics({"val_balanced_acc": value, "val_acc": m["test_acc"],
                         "train_loss": m["train_loss"], "train_acc": m["train_acc"]}, step=epoch)
        trial.report(value, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch}: val balanced accuracy "
                                     f"{value:.3f} fell behind the other trials")

    return on_epoch


def _end_pruned(trial: optuna.Trial, log, reason: str) -> None:
    """End the trial's run KILLED before the exception leaves the run's context, which then
    keeps that status instead of writing FAILED."""
    trial.set_user_attr("pruned_reason", reason)
    log.set_tags({"state": "PRUNED", "pruned_reason": reason[:4000]})
    log.end("KILLED")
