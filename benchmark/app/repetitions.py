"""One repetition of a cell: its data (the test subset, the training subset and the variant's
cut, the oversampler), its final fit with the tuned parameters (the runners-up when a fit does
not learn), its record; and the cell's statistics over its repetitions.

A repetition is a run nested under its cell's run; `run_repetition` trains and records one,
`summarize_cell` computes the cell's headline metrics (mean, std, 95% CI over the repetitions
that learned) and figures from all of them, this invocation's and earlier ones.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

from benchmark.cells import Cell
from benchmark.data import Dataset
from benchmark.data.augment import NoAugment, make_remedy
from benchmark.data.variants import class_counts, make_variant
from benchmark.metrics import cell_metrics
from benchmark.recording import Recorder
from benchmark.stats import summarize
from benchmark.train import (
    Diverged,
    RawImages,
    Split,
    build_model,
    did_not_learn,
    evaluate,
    final_train_balanced_acc,
    fit,
)
from tracking import results
from tracking.artifacts import write_cell_summary, write_repetition_reports
from tracking.store import Store, tag_json

# The cell run's headline metrics: name on the cell run -> the repetition metric it summarizes
HEADLINE = {"test_acc": "final_test_acc", "train_acc": "final_train_acc",
            "balanced_acc": "balanced_acc", "head_acc": "head_acc", "tail_acc": "tail_acc",
            "tail_gap": "tail_gap", "macro_f1": "macro_f1", "ece": "ece",
            "many_acc": "many_acc", "medium_acc": "medium_acc", "few_acc": "few_acc"}
CURVES = ["train_loss", "train_acc", "test_loss", "test_acc"]  # figures over repetitions
FINAL_TRIES = 3  # tuned parameters, then the runners-up, when a final fit fails to learn
REJECTED_SECONDS = "rejected_fit_seconds"  # metric: seconds of the attempts rejected so far


@dataclass
class Prepared:
    """A repetition's data on the device: training set after the cut, its oversampler, the
    test set."""

    data: Dataset
    train: Split
    test: Split
    remedy: NoAugment  # the cell's remedy: its epoch plan (oversampling) and its loss
    counts: list[int]


def cut(cell: Cell, data: Dataset, repetition: int = 0) -> Dataset:
    """Test subset (from the cell's seed: the same images for every repetition) -> training
    subset and variant cut (from the repetition's seed); on the CPU."""
    seed = cell.repetition_seed(repetition)
    if cell.test_limit:
        data = data.limit(test=cell.test_limit, seed=cell.seed)
    if cell.train_limit:
        data = data.limit(train=cell.train_limit, seed=seed)
    return make_variant(data, cell.variant, seed, tail_classes=cell.tail_classes,
                        ratio=cell.imbalance_ratio)


def _remedy(cell: Cell, train: Split, num_classes: int) -> NoAugment:
    return make_remedy(cell.remedy, train.y, num_classes=num_classes, **cell.remedy_kwargs())


def prepare(cell: Cell, data: Dataset, device: torch.device, repetition: int = 0) -> Prepared:
    """The repetition's cut data on the device, with its oversampler."""
    data = cut(cell, data, repetition)
    train = Split(data.train_x.to(device), data.train_y.to(device))
    return Prepared(data, train, Split(data.test_x.to(device), data.test_y.to(device)),
                    _remedy(cell, train, data.num_classes),
                    class_counts(data.train_y, data.num_classes))


def _record_repetition(run: Recorder, prep: Prepared) -> None:
    d = prep.data
    run.set_tags({"class_counts": tag_json(dict(zip(d.classes, prep.counts, strict=True))),
                  "remedy_note": prep.remedy.note})
    counts = {"class_counts": tag_json(prep.counts), "train_images": str(len(prep.train.y))}
    run.log_dataset(d.source, d.digest, d.path, "train", counts)
    run.log_dataset(d.source, d.digest, d.path, "test", {"test_images": str(len(prep.test.y))})


def _final_fit(candidates: list[Cell], prep: Prepared, run: Recorder, seed: int,
               device: torch.device, progress: bool):
    """Train the repetition with the best parameters; a fit that diverges (NaN loss) or does
    not learn (`did_not_learn`) is tagged and the next best trial's parameters are tried:
    the best are often near the learning rate where training breaks, and the whole training
    set is not the tuning split. Returns (cell, model, history, final) or the last reason."""
    num_classes = prep.data.num_classes
    why, rejected = "", 0.0
    for attempt, tuned in enumerate(candidates[:FINAL_TRIES], 1):
        start = time.perf_counter()
        # the oversampler of this candidate's sigma (cheap: class counts, no images)
        prep = dataclasses.replace(prep, remedy=_remedy(tuned, prep.train, num_classes))
        model = build_model(tuned.model, num_classes, seed, device, prep.remedy.cosine_scale)
        try:
            history = fit(model, prep.train, prep.test, epochs=tuned.epochs,
                          batch_size=tuned.batch_size, lr=tuned.lr, seed=seed,
                          augment=prep.remedy, progress=progress, precision=tuned.precision)
            # the last epoch's test evaluation is the final weights' (fit trains no further)
            final = history.last_test or evaluate(model, prep.test, tuned.batch_size,
                                                  tuned.precision)
            balanced = final_train_balanced_acc(model, prep.train, history, num_classes,
                                                tuned.batch_size, tuned.precision)
            why = did_not_learn(balanced, final["preds"], num_classes)
        except Diverged as e:
            why = f"diverged: {e}"
        if not why:
            run.log_params({"final_lr": tuned.lr, "final_sigma": tuned.sigma,
                            **{f"final_{k}": getattr(tuned, k) for k in tuned.loss_fields},
                            "final_attempt": attempt})
            return tuned, model, history, final
        run.set_tags({f"final_rejected_{attempt}": f"lr {tuned.lr:.4g}: {why}"[:4000]})
        # training too, though no curve of it is logged: the grid's timeline counts it as fits
        rejected += time.perf_counter() - start
        run.log_metrics({REJECTED_SECONDS: rejected}, step=attempt)
    return why


def run_repetition(cell: Cell, candidates: list[Cell], data: Dataset, run: Recorder,
                   repetition: int, device: torch.device, progress: bool = False) -> bool:
    """Train, test and record one repetition on its run; True when it learned. A repetition
    whose every candidate failed is ended FAILED with outcome did-not-learn and the reason."""
    seed = cell.repetition_seed(repetition)
    prep = prepare(candidates[0], data, device, repetition)
    _record_repetition(run, prep)
    got = _final_fit(candidates, prep, run, seed, device, progress)
    if isinstance(got, str):
        run.set_tags({"outcome": results.DID_NOT_LEARN, "reason": got[:4000]})
        run.end("FAILED")
        return False
    tuned, model, history, final = got
    # the curves in one call, once a fit went through (a rejected attempt leaves none)
    run.log_curves([{k if k != "seconds" else "epoch_seconds": v for k, v in m.items()}
                    for m in history])
    classes, tail = list(data.classes), list(cell.tail_classes)
    m = cell_metrics(prep.test.y.cpu().numpy(), final["preds"].numpy(), classes, tail,
                     train_counts=prep.counts, confidence=final["confidence"].numpy())
    run.log_files(lambda folder: write_repetition_reports(folder, m, classes))
    # the network as evaluated (uint8 images in), a logged model, and its test metrics
    run.log_model(RawImages(model), prep.test.x[:2], {
        "cell_key": cell.key, "cell_name": cell.name, "repetition": repetition,
        "dataset": data.source, "input": "uint8 images (N, 3, 32, 32), as stored"},
        metrics={"final_train_acc": history[-1]["train_acc"] if history else 0.0,
                 "final_test_acc": final["acc"], "final_test_loss": final["loss"],
                 **m.scalars})
    # what the cell's pooled figures sum over its repetitions
    run.set_tags({"outcome": results.OK, "calibration": tag_json(m.calibration),
                  "confusion": tag_json(m.confusion.tolist())})
    return True


def summarize_cell(store: Store, run: Recorder, cell: Cell) -> tuple[int, str]:
    """Statistics over the cell's repetitions (all of them, this invocation's and earlier
    ones) and their figures, on the cell run; ends it FAILED when none learned. Returns how
    many learned and the line that says how the cell ended."""
    run.flush()  # the cell run's params, read back with its repetitions
    df = results.cell_results(store, store.client.get_run(run.run_id))
    ok = df[df["outcome"] == results.OK]
    runner_up = int((ok["final_attempt"] > 1).sum()) if len(ok) else 0
    metrics = {"repetitions": cell.seeds, "repetitions_ok": len(ok),
               "repetitions_runner_up": runner_up}
    for name, column in HEADLINE.items():
        s = summarize(ok[column] if column in ok else [])
        metrics |= {f"{name}_mean": s.mean, f"{name}_std": s.std, f"{name}_ci95": s.ci95}
    run.log_metrics({k: v for k, v in metrics.items() if v == v})  # NaN: not computed
    histories = [store.metric_histories(run_id, CURVES) for run_id in ok["run_id"]]
    run.log_files(lambda folder: write_cell_summary(folder, cell.name, histories, ok))
    if not len(ok):
        why = "; ".join(f"repetition {r}: {w}" for r, w in zip(df["repetition"], df["reason"],
                                                               strict=True))
        run.set_tags({"error": f"no repetition learned ({why})"[:4000]})
        run.end("FAILED")
        return 0, f"none of {len(df)} repetitions learned ({why})"[:300]
    test, tail = summarize(ok["final_test_acc"]), summarize(ok["tail_acc"])
    fallback = f" ({runner_up} at a runner-up's parameters)" if runner_up else ""
    return len(ok), (f"{len(ok)} of {cell.seeds} repetitions learned{fallback}; test "
                     f"{test.text(count=False)}%, tail {tail.text(count=False)}%")
