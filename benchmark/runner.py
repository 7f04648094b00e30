"""Run cells: data -> tuning -> final fit -> reports -> tracking. The one orchestrator."""

from __future__ import annotations

import dataclasses
import functools
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmark.cells import Cell, GridEntry
from benchmark.data import Dataset
from benchmark.data.augment import NoAugment, make_augment
from benchmark.data.variants import TAIL_CLASSES, class_counts, make_variant
from benchmark.train import Diverged, Split, build_model, evaluate, fit
from tracking.store import RunLog, Store, tag_json


@dataclass
class Outcome:
    cell: Cell
    status: str  # one of STATUSES
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""
    seconds: float = 0.0


@dataclass
class Prepared:
    """A cell's data on the device: training set after the cut, its oversampler, the test set."""

    data: Dataset
    train: Split
    test: Split
    augment: NoAugment
    counts: list[int]


def cut(cell: Cell, data: Dataset) -> Dataset:
    """Limit (stratified) -> variant (long-tail cut), from the cell's seed; on the CPU."""
    if cell.train_limit or cell.test_limit:
        data = data.limit(cell.train_limit or None, cell.test_limit or None, seed=cell.seed)
    return make_variant(data, cell.variant, cell.seed, TAIL_CLASSES, cell.tail_fraction)


def prepare(cell: Cell, data: Dataset, device: torch.device) -> Prepared:
    """The cell's cut data on the device, with its oversampler."""
    data = cut(cell, data)
    train = Split(data.train_x.to(device), data.train_y.to(device))
    augment = make_augment(cell.augment, train.y, tail_classes=TAIL_CLASSES,
                           sigma=cell.sigma,
                           num_classes=data.num_classes)
    return Prepared(data, train, Split(data.test_x.to(device), data.test_y.to(device)), augment,
                    class_counts(data.train_y, data.num_classes))


def _record_inputs(run: RunLog, cell: Cell, prep: Prepared, device: torch.device) -> None:
    d = prep.data
    run.log_params(cell.params())
    run.set_tags({"cell_key": cell.key, "cell_name": cell.name, "model": cell.model,
                  "variant": cell.variant, "augment": cell.augment, "dataset": d.source,
                  "profile": cell.profile, "device": str(device),
                  "torch_version": torch.__version__, "classes": tag_json(list(d.classes)),
                  "tail_classes": tag_json(list(TAIL_CLASSES)),
                  "class_counts": tag_json(dict(zip(d.classes, prep.counts, strict=True))),
                  "augment_note": prep.augment.note})
    counts = {"class_counts": tag_json(prep.counts), "train_images": str(len(prep.train.y))}
    run.log_dataset(d.source, d.digest, d.path, "train", counts)
    run.log_dataset(d.source, d.digest, d.path, "test", {"test_images": str(len(prep.test.y))})


def _tune(cell: Cell, prep: Prepared, run: RunLog, device: torch.device,
          tuning: dict) -> list[Cell]:
    """The cell with its searched fields tuned (lr, sigma), and after it the cell as the
    runners-up tuned it, best first; just the cell when it asks for no trials. The study's
    summary and figures go on the cell run."""
    if not cell.trials or not tuning.get("enabled", True):
        return [cell]
    from studies import tune_cell

    result = tune_cell(cell, prep.data, device, run, **{k: v for k, v in tuning.items()
                                                        if k != "enabled"})
    run.end_lost(result.dead_runs, LOST_TRIAL)
    run.log_params({f"best_{k}": v for k, v in result.best.items()})
    run.log_metrics({"trials_complete": result.complete, "trials_pruned": result.pruned,
                     "trials_failed": result.failed, "trial_epochs": result.epochs_trained})
    from tracking.study_plots import write_study_figures

    with tempfile.TemporaryDirectory() as tmp:  # the figures live only until they are logged
        if write_study_figures(result.summary, Path(tmp)):
            run.log_artifacts(Path(tmp), "optuna")
    return [dataclasses.replace(cell, **params) for params in result.ranked] or [cell]


FINAL_TRIES = 3  # tuned parameters, then the runners-up, when a final fit diverges


def _final_fit(cell: Cell, candidates: list[Cell], data: Dataset, prep: Prepared, run: RunLog,
               device: torch.device, progress: bool):
    """Train on the whole training set with the best parameters. The best are often near the
    learning rate where training breaks, and the whole set is not the tuning split: when the
    loss goes NaN, the next best trial's parameters are tried (the run's tags say so)."""
    built_for = cell  # the cell `prep` was made for: a tuned sigma needs a new oversampler
    for attempt, tuned in enumerate(candidates[:FINAL_TRIES], 1):
        if tuned != built_for:
            prep, built_for = prepare(tuned, data, device), tuned
        model = build_model(tuned.model, data.num_classes, tuned.seed, device)
        try:
            history = fit(model, prep.train, prep.test, epochs=tuned.epochs,
                          batch_size=tuned.batch_size, lr=tuned.lr, seed=tuned.seed,
                          augment=prep.augment, progress=progress)
        except Diverged as e:
            run.set_tags({f"final_diverged_{attempt}": f"lr {tuned.lr:.4g}: {e}"})
            if attempt == min(len(candidates), FINAL_TRIES):
                raise
            continue
        run.log_params({"final_lr": tuned.lr, "final_sigma": tuned.sigma,
                        "final_attempt": attempt})
        return tuned, prep, model, history
    raise AssertionError("no candidates")  # unreachable: candidates is never empty


def run_cell(cell: Cell, data: Dataset, run: RunLog, device: torch.device,
             progress: bool = False, tuning: dict | None = None) -> dict[str, float]:
    """Train and test one cell, recording everything on `run`; returns its final metrics."""
    from tracking.report import write_cell_artifacts

    prep = prepare(cell, data, device)
    _record_inputs(run, cell, prep, device)
    candidates = _tune(cell, prep, run, device, tuning or {})
    tuned, prep, model, history = _final_fit(cell, candidates, data, prep, run, device,
                                             progress)
    # the curves in one call, once a fit went through (a diverged attempt leaves none)
    run.log_curves([{k if k != "seconds" else "epoch_seconds": v for k, v in m.items()}
                    for m in history])
    final = evaluate(model, prep.test, tuned.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        scalars = write_cell_artifacts(
            Path(tmp), cell.name, history, prep.test.y.cpu().numpy(), final["preds"].numpy(),
            list(data.classes), list(TAIL_CLASSES))
        run.log_artifacts(Path(tmp))
    metrics = {"final_train_acc": history[-1]["train_acc"] if history else 0.0,
               "final_test_acc": final["acc"], "final_test_loss": final["loss"], **scalars}
    run.log_metrics(metrics)
    run.log_state_dict(model.state_dict())
    return metrics


def run_grid(entries: list[GridEntry], data: Dataset, store: Store, *, device: torch.device,
             force: bool = False, progress: bool = False, tuning: dict | None = None,
             invocation_tags: dict | None = None) -> list[Outcome]:
    """Every cell as a nested run of one invocation run. Finished cells are skipped (unless
    `force`); a failing cell is recorded FAILED and the next one runs; Ctrl-C ends the current
    cell KILLED and stops. Several workers (processes, machines) can run the same grid at
    once on shared stores: each cell's final training is claimed by one of them, the others
    help with its Optuna trials and move on."""
    from studies import open_storage

    tuning = dict(tuning or {})
    storage = open_storage(tuning.get("storage"))
    # --force re-runs finished cells once per invocation: its claims get names of their own
    nonce = tuning.pop("force_nonce", None) or uuid.uuid4().hex
    suffix = f" force {nonce}" if force else ""
    outcomes: list[Outcome] = []
    with store.invocation(f"{len(entries)} cells", invocation_tags or {}) as parent:
        for i, entry in enumerate(entries, 1):
            say = functools.partial(print, f"[{i}/{len(entries)}] {entry.cell.name}:",
                                    file=sys.stderr, flush=True)
            outcomes.append(_run_entry(entry.cell, data, store, parent, storage, suffix, say,
                                       device=device, force=force, progress=progress,
                                       tuning=tuning))
        parent.set_tags({s: sum(o.status == s for o in outcomes) for s in STATUSES})
    return outcomes


STATUSES = ("finished", "skipped", "failed", "helped", "elsewhere")
LOST_TRIAL = "its worker died in the middle of this trial"


def _run_entry(cell: Cell, data: Dataset, store: Store, parent: RunLog, storage, suffix: str,
               say, *, device: torch.device, force: bool, progress: bool,
               tuning: dict) -> Outcome:
    from studies.claims import try_claim

    if not force and (done := store.finished_metrics(cell.key)) is not None:
        say("finished before, skipped")
        return Outcome(cell, "skipped", done)
    claim = try_claim(storage, _claim_name(cell) + suffix)
    if claim is None:  # another live worker has this cell
        return _help(cell, data, store, storage, suffix, say, device, tuning)
    parent.end_lost(claim.stale_runs, "its worker died before the cell finished")
    if not force and (done := store.finished_metrics(cell.key)) is not None:
        claim.release(True)  # its owner died after recording it, before saying so
        return Outcome(cell, "skipped", done)
    say(f"{cell.epochs} epochs" + (f", {cell.trials} trials" if cell.trials else "") + " ...")
    start = time.perf_counter()
    try:
        with parent.child(cell.name, "cell") as run:
            claim.publish(run.run_id)
            metrics = run_cell(cell, data, run, device, progress, tuning)
    except KeyboardInterrupt:
        claim.release(False)
        raise
    except Exception as e:  # recorded FAILED on the run; the next cell still runs
        claim.release(False)
        say(f"failed: {type(e).__name__}: {e}")
        return Outcome(cell, "failed", error=f"{type(e).__name__}: {e}",
                       seconds=time.perf_counter() - start)
    claim.release(True)
    return Outcome(cell, "finished", metrics, seconds=time.perf_counter() - start)


def _claim_name(cell: Cell) -> str:
    return f"{cell.name} [{cell.key}]"  # the cell's whole key: its trial budget included


def _help(cell: Cell, data: Dataset, store: Store, storage, suffix: str, say,
          device: torch.device, tuning: dict) -> Outcome:
    """Run trials of a cell whose final training another worker owns, nested under its run."""
    from studies import tune_cell
    from studies.claims import published_run

    run_id = published_run(storage, _claim_name(cell) + suffix)
    if not (cell.trials and tuning.get("enabled", True) and run_id):
        say("another worker has it")
        return Outcome(cell, "elsewhere")
    say("another worker has it; helping with its trials")
    start = time.perf_counter()
    kwargs = {k: v for k, v in tuning.items() if k != "enabled"}
    run = store.run_log(run_id)
    result = tune_cell(cell, cut(cell, data), device, run, **kwargs)
    run.end_lost(result.dead_runs, LOST_TRIAL)
    return Outcome(cell, "helped", seconds=time.perf_counter() - start)


def format_table(outcomes: list[Outcome]) -> str:
    rows = [f"{'cell':<34} {'status':<9} {'train acc':>9} {'test acc':>8} {'tail acc':>8} "
            f"{'seconds':>7}"]
    for o in outcomes:
        train, test, tail = (f"{o.metrics[k]:.1%}" if k in o.metrics else "-"
                             for k in ("final_train_acc", "final_test_acc", "tail_acc"))
        rows.append(f"{o.cell.name:<34} {o.status:<9} {train:>9} {test:>8} {tail:>8} "
                    f"{o.seconds:>7.0f}")
    return "\n".join(rows)
