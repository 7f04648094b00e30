"""Run cells: data -> tuning -> repetitions (final fits) -> statistics -> tracking. The one
orchestrator.

A cell is one top-level MLflow run. It is tuned once (an Optuna study on repetition 0's
validation split) and the tuned parameters then train each of its `seeds` repetitions on the
whole training set, each a nested run with its own seed. A re-run trains only the
repetitions that have no outcome yet, in the same cell run, and the cell's statistics (mean,
std, 95% CI over the repetitions that learned) are computed again from all of them.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from benchmark.app.console import Console
from benchmark.cells import REPETITION_FIELDS, Cell, GridEntry
from benchmark.data import Dataset
from benchmark.data.augment import NoAugment, make_augment
from benchmark.data.variants import TAIL_CLASSES, class_counts, make_variant
from benchmark.metrics import cell_metrics
from benchmark.recording import Recorder
from benchmark.stats import summarize
from benchmark.train import (
    COLLAPSE_CHANCE_MULTIPLE,
    Diverged,
    RawImages,
    Split,
    build_model,
    did_not_learn,
    evaluate,
    final_train_balanced_acc,
    fit,
)
from studies import TuneOptions, open_studies, tune_cell
from studies.locks import Locks, open_locks
from tracking import results
from tracking.artifacts import write_cell_summary, write_repetition_artifacts
from tracking.store import Store, git_commit, tag_json
from tracking.study_plots import write_study_figures

# The cell run's headline metrics: name on the cell run -> the repetition metric it summarizes
HEADLINE = {"test_acc": "final_test_acc", "train_acc": "final_train_acc",
            "balanced_acc": "balanced_acc", "head_acc": "head_acc", "tail_acc": "tail_acc",
            "tail_gap": "tail_gap", "macro_f1": "macro_f1"}
CURVES = ["train_loss", "train_acc", "test_loss", "test_acc"]  # figures over repetitions
FINAL_TRIES = 3  # tuned parameters, then the runners-up, when a final fit fails to learn


@dataclass
class Outcome:
    cell: Cell
    status: str  # one of STATUSES
    error: str = ""
    seconds: float = 0.0
    trained: int = 0  # repetitions this invocation trained


@dataclass
class Prepared:
    """A repetition's data on the device: training set after the cut, its oversampler, the
    test set."""

    data: Dataset
    train: Split
    test: Split
    augment: NoAugment
    counts: list[int]


def cut(cell: Cell, data: Dataset, repetition: int = 0) -> Dataset:
    """Test subset (from the cell's seed: the same images for every repetition) -> training
    subset and variant cut (from the repetition's seed); on the CPU."""
    seed = cell.repetition_seed(repetition)
    if cell.test_limit:
        data = data.limit(test=cell.test_limit, seed=cell.seed)
    if cell.train_limit:
        data = data.limit(train=cell.train_limit, seed=seed)
    return make_variant(data, cell.variant, seed, TAIL_CLASSES, cell.tail_fraction)


def _augment(cell: Cell, train: Split, num_classes: int) -> NoAugment:
    return make_augment(cell.augment, train.y, tail_classes=TAIL_CLASSES, sigma=cell.sigma,
                        num_classes=num_classes)


def prepare(cell: Cell, data: Dataset, device: torch.device, repetition: int = 0) -> Prepared:
    """The repetition's cut data on the device, with its oversampler."""
    data = cut(cell, data, repetition)
    train = Split(data.train_x.to(device), data.train_y.to(device))
    return Prepared(data, train, Split(data.test_x.to(device), data.test_y.to(device)),
                    _augment(cell, train, data.num_classes),
                    class_counts(data.train_y, data.num_classes))


@dataclass(frozen=True)
class Invocation:
    """One `tailbench run` (all of its workers): its id, whether it forces re-runs, and what
    it says about itself on the cells it touches (grid, profile, dataset, device)."""

    id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:12])
    force: bool = False
    about: dict[str, str] = dataclasses.field(default_factory=dict)

    def tags(self, position: int, reference: dict) -> dict[str, object]:
        """The tags a cell run gets from this invocation: its id, the cell's place in the grid
        (so the report shows this invocation's cells in grid order) and the reference's
        numbers for the cell."""
        return {"invocation": self.id, f"invocation.{self.id}": position,
                **{f"invocation_{k}": v for k, v in self.about.items()},
                **{k if k == "table" else f"reference_{k}": v for k, v in reference.items()}}


def _record_cell(run: Recorder, cell: Cell, data: Dataset, device: torch.device,
                 tags: dict) -> None:
    """The cell run's params (every Cell field but the repetition count, which may grow: it
    is a tag) and tags."""
    run.log_params({k: v for k, v in cell.params().items() if k not in REPETITION_FIELDS})
    run.set_tags({"cell_key": cell.key, "cell_name": cell.name, "model": cell.model,
                  "variant": cell.variant, "augment": cell.augment, "dataset": data.source,
                  "profile": cell.profile, "seeds": cell.seeds, "device": str(device),
                  "torch_version": torch.__version__, "git_commit": git_commit(),
                  "classes": tag_json(list(data.classes)),
                  "tail_classes": tag_json(list(TAIL_CLASSES)), **tags})


def _record_repetition(run: Recorder, prep: Prepared) -> None:
    d = prep.data
    run.set_tags({"class_counts": tag_json(dict(zip(d.classes, prep.counts, strict=True))),
                  "augment_note": prep.augment.note})
    counts = {"class_counts": tag_json(prep.counts), "train_images": str(len(prep.train.y))}
    run.log_dataset(d.source, d.digest, d.path, "train", counts)
    run.log_dataset(d.source, d.digest, d.path, "test", {"test_images": str(len(prep.test.y))})


def _tune(cell: Cell, data: Dataset, run: Recorder, device: torch.device,
          tuning: TuneOptions | None) -> list[Cell]:
    """The cell with its searched fields tuned (lr, sigma) on repetition 0's validation
    split, and after it the cell as the runners-up tuned it, best first; just the cell when
    it asks for no trials. The study's summary and figures go on the cell run."""
    if not cell.trials:
        return [cell]
    result = tune_cell(cell, cut(cell, data, 0), device, run, tuning,
                       seed=cell.repetition_seed(0))
    run.end_lost(result.dead_runs, LOST_TRIAL)
    run.log_params({f"best_{k}": v for k, v in result.best.items()})
    run.log_metrics({"trials_complete": result.complete, "trials_pruned": result.pruned,
                     "trials_failed": result.failed, "trial_epochs": result.epochs_trained})
    with tempfile.TemporaryDirectory() as tmp:  # the figures live only until they are logged
        if write_study_figures(result.summary, Path(tmp)):
            run.log_artifacts(Path(tmp), "optuna")
    # a trial that did not learn on validation either is no runner-up: falling back to it
    # would trade a diverged fit for one near chance (seen: lr 0.01 scored chance in 6 epochs)
    floor = COLLAPSE_CHANCE_MULTIPLE / data.num_classes
    return [dataclasses.replace(cell, **params) for params in result.ranked(floor)] or [cell]


def _final_fit(candidates: list[Cell], prep: Prepared, run: Recorder, seed: int,
               device: torch.device, progress: bool):
    """Train the repetition with the best parameters; a fit that diverges (NaN loss) or does
    not learn (`did_not_learn`) is tagged and the next best trial's parameters are tried:
    the best are often near the learning rate where training breaks, and the whole training
    set is not the tuning split. Returns (cell, model, history, final) or the last reason."""
    num_classes = prep.data.num_classes
    why = ""
    for attempt, tuned in enumerate(candidates[:FINAL_TRIES], 1):
        # the oversampler of this candidate's sigma (cheap: class counts, no images)
        prep = dataclasses.replace(prep, augment=_augment(tuned, prep.train, num_classes))
        model = build_model(tuned.model, num_classes, seed, device)
        try:
            history = fit(model, prep.train, prep.test, epochs=tuned.epochs,
                          batch_size=tuned.batch_size, lr=tuned.lr, seed=seed,
                          augment=prep.augment, progress=progress)
            final = evaluate(model, prep.test, tuned.batch_size)
            balanced = final_train_balanced_acc(model, prep.train, history, num_classes,
                                                tuned.batch_size)
            why = did_not_learn(balanced, final["preds"], num_classes)
        except Diverged as e:
            why = f"diverged: {e}"
        if not why:
            run.log_params({"final_lr": tuned.lr, "final_sigma": tuned.sigma,
                            "final_attempt": attempt})
            return tuned, model, history, final
        run.set_tags({f"final_rejected_{attempt}": f"lr {tuned.lr:.4g}: {why}"[:4000]})
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
    classes, tail = list(data.classes), list(TAIL_CLASSES)
    m = cell_metrics(prep.test.y.cpu().numpy(), final["preds"].numpy(), classes, tail)
    with tempfile.TemporaryDirectory() as tmp:
        write_repetition_artifacts(Path(tmp), f"{cell.name} · repetition {repetition}",
                                   history, m, classes, tail)
        run.log_artifacts(Path(tmp))
    run.log_metrics({"final_train_acc": history[-1]["train_acc"] if history else 0.0,
                     "final_test_acc": final["acc"], "final_test_loss": final["loss"],
                     **m.scalars})
    # the network as evaluated (uint8 images in), a logged model linked to the metrics above
    run.log_model(RawImages(model), prep.test.x[:2], {
        "cell_key": cell.key, "cell_name": cell.name, "repetition": repetition,
        "dataset": data.source, "input": "uint8 images (N, 3, 32, 32), as stored"})
    run.set_tags({"outcome": results.OK})
    return True


def run_cell(cell: Cell, data: Dataset, run: Recorder, device: torch.device,
             repetitions: list[int] | None = None, progress: bool = False,
             tuning: TuneOptions | None = None, say=lambda *_: None) -> int:
    """Tune the cell once, then train `repetitions` (default: all of its seeds) as runs nested
    under `run`; returns how many of them learned."""
    candidates = _tune(cell, data, run, device, tuning)
    learned = 0
    for r in range(cell.seeds) if repetitions is None else repetitions:
        say(f"repetition {r + 1} of {cell.seeds} ...")
        tags = {"cell_key": cell.key, "repetition": r, "rep_seed": cell.repetition_seed(r)}
        with run.child(f"repetition {r}", "repetition", tags=tags) as rep:
            learned += run_repetition(cell, candidates, data, rep, r, device, progress)
    return learned


def summarize_cell(store: Store, run: Recorder, cell: Cell, cell_run) -> tuple[int, str]:
    """Statistics over the cell's repetitions (all of them, this invocation's and earlier
    ones) and their figures, on the cell run; ends it FAILED when none learned. Returns how
    many learned and the line that says how the cell ended."""
    df = results.cell_results(store, cell_run)
    ok = df[df["outcome"] == results.OK]
    runner_up = int((ok["final_attempt"] > 1).sum()) if len(ok) else 0
    metrics = {"repetitions": cell.seeds, "repetitions_ok": len(ok),
               "repetitions_runner_up": runner_up}
    for name, column in HEADLINE.items():
        s = summarize(ok[column] if column in ok else [])
        metrics |= {f"{name}_mean": s.mean, f"{name}_std": s.std, f"{name}_ci95": s.ci95}
    run.log_metrics({k: v for k, v in metrics.items() if v == v})  # NaN: not computed
    histories = [store.metric_histories(run_id, CURVES) for run_id in ok["run_id"]]
    with tempfile.TemporaryDirectory() as tmp:
        if write_cell_summary(Path(tmp), cell.name, histories, ok):
            run.log_artifacts(Path(tmp))
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


def run_grid(entries: list[GridEntry], data: Dataset, store: Store, *, device: torch.device,
             invocation: Invocation | None = None, progress: bool = False,
             tuning: TuneOptions | None = None) -> list[Outcome]:
    """Every cell as a top-level run, tagged with this invocation. Cells whose repetitions all
    have an outcome are skipped (unless `force`, which starts a new cell run once per
    invocation); a failing cell is recorded FAILED and the next one runs; Ctrl-C ends the
    current runs KILLED and stops. Several workers (processes, machines) can run the same
    grid at once on shared stores: the final fits of a cell are trained by the worker that
    holds the cell's lock, the others help with its Optuna trials and move on."""
    tuning = tuning or TuneOptions()
    open_studies(tuning.storage)  # created before any worker asks for a study in it
    locks = open_locks(tuning.storage)
    invocation = invocation or Invocation()
    store.start_invocation(invocation.id)
    outcomes: list[Outcome] = []
    console = Console()
    for i, entry in enumerate(tqdm(entries, desc="cells", unit="cell", disable=not progress,
                                   leave=False), 1):
        say = console.cell(i, len(entries), entry.cell.name)
        outcomes.append(_run_entry(entry.cell, data, store, locks, invocation, say,
                                   device=device, progress=progress, tuning=tuning,
                                   tags=invocation.tags(i, entry.reference)))
    return outcomes


STATUSES = ("finished", "skipped", "failed", "helped", "elsewhere")
LOST_TRIAL = "its worker died in the middle of this trial"
LOST_WORKER = "its worker died before the run ended"
HELP_WAIT_S = 30  # how long a worker waits for the cell's owner to open its run


def _cell_run(store: Store, cell: Cell, invocation: Invocation):
    """The cell's run a worker adds to: its latest, or with --force the one this invocation
    started (None before that)."""
    run = store.latest_cell_run(cell.key)
    if run and invocation.force and run.data.tags.get("invocation") != invocation.id:
        return None
    return run


def _missing(store: Store, cell: Cell, invocation: Invocation):
    """(the cell run to add to, or None for a new one; the repetitions it still needs)."""
    cell_run = _cell_run(store, cell, invocation)
    if cell_run is None:
        return None, list(range(cell.seeds))
    done = {int(r.data.tags["repetition"]) for r in store.children(cell_run.info.run_id,
                                                                   "repetition")
            if results.is_done(r)}
    return cell_run, [r for r in range(cell.seeds) if r not in done]


def _run_entry(cell: Cell, data: Dataset, store: Store, locks: Locks, invocation: Invocation,
               say, *, device: torch.device, progress: bool, tuning: TuneOptions,
               tags: dict) -> Outcome:
    cell_run, missing = _missing(store, cell, invocation)
    if not missing:
        store.run_log(cell_run.info.run_id).set_tags(tags)  # in this invocation's report
        say(f"skipped (all {cell.seeds} repetitions finished before)")
        return Outcome(cell, "skipped")
    held = locks.try_hold(f"cell {cell.key}")
    if held is None:  # another live worker trains this cell's final fits
        return _help(cell, data, store, locks, invocation, say, device, tuning)
    with held:  # released when this worker ends, or dies: the OS or the database sees to it
        return _own(cell, data, store, invocation, say, device=device, progress=progress,
                    tuning=tuning, tags=tags)


def _own(cell: Cell, data: Dataset, store: Store, invocation: Invocation, say, *,
         device: torch.device, progress: bool, tuning: TuneOptions, tags: dict) -> Outcome:
    """Train the cell's missing repetitions, holding its lock."""
    cell_run, missing = _missing(store, cell, invocation)  # its owner may have died after it
    if not missing:
        return Outcome(cell, "skipped")
    say(f"started: {cell.epochs} epochs" + (f", {cell.trials} trials" if cell.trials else "")
        + f", repetitions {_ranges(missing)} of {cell.seeds}")
    start = time.perf_counter()
    reopen = cell_run.info.run_id if cell_run else None
    if reopen:  # nobody else holds the lock: what is RUNNING there, a dead worker left
        store.end_lost([reopen, *(r.info.run_id for r in store.children(reopen, "repetition"))],
                       LOST_WORKER)
    try:
        with store.cell_run(cell.name, {"cell_key": cell.key, "invocation": invocation.id},
                            reopen=reopen) as run:
            _record_cell(run, cell, data, device, tags)
            run_cell(cell, data, run, device, missing, progress, tuning, say)
            learned, line = summarize_cell(store, run, cell, store.client.get_run(run.run_id))
            say(f"finished in {time.perf_counter() - start:.0f} s: {line}" if learned
                else f"failed: {line}")
    except Exception as e:  # recorded FAILED on the run; the next cell still runs
        say(f"failed: {type(e).__name__}: {e}")
        return Outcome(cell, "failed", error=f"{type(e).__name__}: {e}",
                       seconds=time.perf_counter() - start, trained=len(missing))
    return Outcome(cell, "finished" if learned else "failed",
                   error="" if learned else line, seconds=time.perf_counter() - start,
                   trained=len(missing))


def _ranges(numbers: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5": the repetitions a cell still needs, short."""
    out, start = [], None
    for i, n in enumerate(numbers):
        if start is None:
            start = n
        if i + 1 == len(numbers) or numbers[i + 1] != n + 1:
            out.append(f"{start}" if start == n else f"{start}-{n}")
            start = None
    return ", ".join(out)


def _owner_run(store: Store, cell: Cell, invocation: Invocation, locks: Locks) -> str | None:
    """The run id of the cell's owner, once it has opened it (None if it is done first)."""
    deadline = time.monotonic() + HELP_WAIT_S
    while time.monotonic() < deadline:
        run = _cell_run(store, cell, invocation)
        if run and run.info.status == "RUNNING":
            return run.info.run_id
        free = locks.try_hold(f"cell {cell.key}")
        if free:  # the owner is done (or died): nothing to help with now
            free.release()
            return None
        time.sleep(1)
    return None


def _help(cell: Cell, data: Dataset, store: Store, locks: Locks, invocation: Invocation, say,
          device: torch.device, tuning: TuneOptions) -> Outcome:
    """Run trials of a cell whose final fits another worker trains, nested under its run."""
    run_id = _owner_run(store, cell, invocation, locks) if cell.trials else None
    if not run_id:
        say("another worker has it")
        return Outcome(cell, "elsewhere")
    say("another worker has it; helping with its trials")
    start = time.perf_counter()
    run = store.run_log(run_id)
    result = tune_cell(cell, cut(cell, data, 0), device, run, tuning,
                       seed=cell.repetition_seed(0))
    run.end_lost(result.dead_runs, LOST_TRIAL)
    return Outcome(cell, "helped", seconds=time.perf_counter() - start)
