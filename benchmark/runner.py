"""Run cells: data -> tuning -> final fit -> reports -> tracking. The one orchestrator."""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmark.cells import Cell, GridEntry
from benchmark.data import Dataset
from benchmark.data.augment import NoAugment, make_augment
from benchmark.data.variants import TAIL_CLASSES, class_counts, make_variant
from benchmark.train import Split, build_model, evaluate, fit
from tracking.store import RunLog, Store, tag_json


@dataclass
class Outcome:
    cell: Cell
    status: str  # "finished", "skipped" or "failed"
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


def prepare(cell: Cell, data: Dataset, device: torch.device, sigma: float | None = None
            ) -> Prepared:
    """Limit (stratified) -> variant (long-tail cut) -> oversampler, all from the cell's seed."""
    if cell.train_limit or cell.test_limit:
        data = data.limit(cell.train_limit or None, cell.test_limit or None, seed=cell.seed)
    data = make_variant(data, cell.variant, cell.seed, TAIL_CLASSES, cell.tail_fraction)
    train = Split(data.train_x.to(device), data.train_y.to(device))
    augment = make_augment(cell.augment, train.y, tail_classes=TAIL_CLASSES,
                           sigma=cell.sigma if sigma is None else sigma,
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


def _tune(cell: Cell, prep: Prepared, run: RunLog, device: torch.device, tuning: dict) -> Cell:
    """The cell with its tuned lr (and sigma), when it asks for trials; the study's summary
    and figures go on the cell run."""
    if not cell.trials or not tuning.get("enabled", True):
        return cell
    from studies import tune_cell

    result = tune_cell(cell, prep.data, device, run, **{k: v for k, v in tuning.items()
                                                        if k != "enabled"})
    run.log_params({f"best_{k}": v for k, v in result.best.items()})
    run.log_metrics({"trials_complete": result.complete, "trials_pruned": result.pruned,
                     "trials_failed": result.failed, "trial_epochs": result.epochs_trained})
    from tracking.study_plots import write_study_figures

    with tempfile.TemporaryDirectory() as tmp:  # the figures live only until they are logged
        if write_study_figures(result.summary, Path(tmp)):
            run.log_artifacts(Path(tmp), "optuna")
    return dataclasses.replace(cell, **result.best)


def run_cell(cell: Cell, data: Dataset, run: RunLog, device: torch.device,
             progress: bool = False, tuning: dict | None = None) -> dict[str, float]:
    """Train and test one cell, recording everything on `run`; returns its final metrics."""
    from tracking.report import write_cell_artifacts

    prep = prepare(cell, data, device)
    _record_inputs(run, cell, prep, device)
    tuned = _tune(cell, prep, run, device, tuning or {})  # the cell, its searched fields tuned
    if tuned != cell:
        prep = prepare(tuned, data, device)
    model = build_model(tuned.model, data.num_classes, tuned.seed, device)

    def log_epoch(epoch: int, m: dict[str, float]) -> None:
        run.log_metrics({k if k != "seconds" else "epoch_seconds": v for k, v in m.items()},
                        step=epoch)

    history = fit(model, prep.train, prep.test, epochs=tuned.epochs, batch_size=tuned.batch_size,
                  lr=tuned.lr, seed=tuned.seed, augment=prep.augment, callback=log_epoch,
                  progress=progress)
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
    cell KILLED and stops."""
    done = {} if force else store.finished()
    outcomes = []
    with store.invocation(f"{len(entries)} cells", invocation_tags or {}) as parent:
        for i, entry in enumerate(entries, 1):
            cell = entry.cell
            if cell.key in done:
                outcomes.append(Outcome(cell, "skipped", done[cell.key]))
                print(f"[{i}/{len(entries)}] {cell.name}: finished before, skipped",
                      file=sys.stderr)
                continue
            print(f"[{i}/{len(entries)}] {cell.name}: {cell.epochs} epochs ...", file=sys.stderr,
                  flush=True)
            start = time.perf_counter()
            try:
                with parent.child(cell.name, "cell") as run:
                    metrics = run_cell(cell, data, run, device, progress, tuning)
                outcomes.append(Outcome(cell, "finished", metrics,
                                        seconds=time.perf_counter() - start))
            except Exception as e:  # recorded FAILED on the run; the next cell still runs
                outcomes.append(Outcome(cell, "failed", error=f"{type(e).__name__}: {e}",
                                        seconds=time.perf_counter() - start))
                print(f"    failed: {type(e).__name__}: {e}", file=sys.stderr)
        parent.set_tags({"finished": sum(o.status == "finished" for o in outcomes),
                         "skipped": sum(o.status == "skipped" for o in outcomes),
                         "failed": sum(o.status == "failed" for o in outcomes)})
    return outcomes


def format_table(outcomes: list[Outcome]) -> str:
    rows = [f"{'cell':<34} {'status':<9} {'train acc':>9} {'test acc':>8} {'tail acc':>8} "
            f"{'seconds':>7}"]
    for o in outcomes:
        train, test, tail = (f"{o.metrics[k]:.1%}" if k in o.metrics else "-"
                             for k in ("final_train_acc", "final_test_acc", "tail_acc"))
        rows.append(f"{o.cell.name:<34} {o.status:<9} {train:>9} {test:>8} {tail:>8} "
                    f"{o.seconds:>7.0f}")
    return "\n".join(rows)
