"""Run cells: data -> tuning -> repetitions (final fits) -> statistics -> tracking. The one
orchestrator: a grid's cells, each cell's claim, study and repetitions (trained and summarized
in benchmark.app.repetitions).

A cell is one top-level MLflow run. It is tuned once (an Optuna study on repetition 0's
validation split) and the tuned parameters then train each of its `seeds` repetitions on the
whole training set, each a nested run with its own seed. A re-run trains only the
repetitions that have no outcome yet, in the same cell run, and the cell's statistics (mean,
std, 95% CI over the repetitions that learned) are computed again from all of them.

Workers share a grid through locks (studies/locks.py): the worker holding a cell's lock owns
it (its run, its study's last trial, its statistics); the others help with its trials and go
on to their next cell, and a worker with no cell left helps with the repetitions that other
workers' cells still need, each trained under its own lock by whoever takes it first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import time
import uuid
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from benchmark.app.console import Console
from benchmark.app.repetitions import cut, run_repetition, summarize_cell
from benchmark.app.safety import LOST_TRIAL, LOST_WORKER, disk_shortfall, sweep_orphans
from benchmark.cells import REPETITION_FIELDS, Cell, GridEntry
from benchmark.data import Dataset
from benchmark.errors import UserError
from benchmark.recording import Recorder
from benchmark.train import COLLAPSE_CHANCE_MULTIPLE
from studies import TuneOptions, help_tune, open_studies, tune_cell
from studies.locks import Locks, cell_lock, is_free, locks_place, open_locks, repetition_lock
from tracking import results
from tracking.store import Store, git_commit, tag_json
from tracking.study_plots import write_study_figures


@dataclass
class Outcome:
    cell: Cell
    status: str  # one of STATUSES
    error: str = ""
    seconds: float = 0.0
    trained: int = 0  # repetitions this invocation trained


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
    is a tag; the tail classes among them) and tags."""
    run.log_params({k: v for k, v in cell.params().items() if k not in REPETITION_FIELDS})
    run.set_tags({"cell_key": cell.key, "cell_name": cell.name, "model": cell.model,
                  "variant": cell.variant, "remedy": cell.remedy, "dataset": data.source,
                  "profile": cell.profile, "seeds": cell.seeds, "device": str(device),
                  "torch_version": torch.__version__, "git_commit": git_commit(),
                  "classes": tag_json(list(data.classes)), **tags})


TUNED = "tuned"  # cell run tag: the tuned parameters that train its repetitions (JSON, best first)


def candidates_of(cell: Cell, params: list[dict]) -> list[Cell]:
    """The cell as each of `params` (the TUNED tag) tunes it, best first."""
    return [dataclasses.replace(cell, **p) for p in params]


def tune_candidates(cell: Cell, data: Dataset, run: Recorder, device: torch.device,
          tuning: TuneOptions | None) -> list[Cell]:
    """The cell with its searched fields tuned (lr, sigma) on repetition 0's validation
    split, and after it the cell as the runners-up tuned it, best first; just the cell when
    it asks for no trials. The study's summary and figures go on the cell run, and the
    parameters, as its TUNED tag (a worker that helps with the repetitions reads them)."""
    params = _tuned(cell, data, run, device, tuning) if cell.trials else [{}]
    run.set_tags({TUNED: tag_json(params)})
    return candidates_of(cell, params)


def _tuned(cell: Cell, data: Dataset, run: Recorder, device: torch.device,
           tuning: TuneOptions | None) -> list[dict]:
    result = tune_cell(cell, cut(cell, data, 0), device, run, tuning,
                       seed=cell.repetition_seed(0))
    run.end_lost(result.dead_runs, LOST_TRIAL)
    run.log_params({f"best_{k}": v for k, v in result.best.items()})
    run.log_metrics({"trials_complete": result.complete, "trials_pruned": result.pruned,
                     "trials_failed": result.failed, "trial_epochs": result.epochs_trained})
    run.log_files(lambda folder: write_study_figures(result.summary, folder), "optuna")
    # a trial that did not learn on validation either is no runner-up: falling back to it
    # would trade a diverged fit for one near chance (seen: lr 0.01 scored chance in 6 epochs)
    floor = COLLAPSE_CHANCE_MULTIPLE / data.num_classes
    return result.ranked(floor) or [{}]


def train_repetition(cell: Cell, candidates: list[Cell], data: Dataset, run: Recorder, r: int,
                     device: torch.device, progress: bool = False) -> bool:
    """Repetition `r`, trained as a run nested under the cell's `run`; whether it learned."""
    tags = {"cell_key": cell.key, "repetition": r, "rep_seed": cell.repetition_seed(r)}
    with run.child(f"repetition {r}", "repetition", tags=tags) as rep:
        return run_repetition(cell, candidates, data, rep, r, device, progress)


@dataclass
class Shared:
    """A cell's repetitions shared with workers that have no cell of their own left: whoever
    trains a repetition holds its lock (studies.locks.repetition_lock), and reads again,
    holding it, that nobody has trained it since."""

    store: Store
    locks: Locks
    cell: Cell
    run_id: str  # the cell run

    def lock(self, r: int) -> str:
        return repetition_lock(self.cell.key, r)

    def runs(self, r: int) -> list:
        """The cell run's runs of repetition r (a failed or killed one among them too)."""
        return [run for run in self.store.children(self.run_id, "repetition")
                if run.data.tags.get("repetition") == str(r)]

    def outcome(self, r: int) -> str | None:
        """ok or did-not-learn when repetition r has one, else None."""
        done = [results.outcome_of(run) for run in self.runs(r) if results.is_done(run)]
        return done[0] if done else None

    def end_lost(self, r: int) -> None:
        """End FAILED what the dead worker that trained repetition r left RUNNING."""
        self.store.end_lost([run.info.run_id for run in self.runs(r)], LOST_WORKER)


def run_cell(cell: Cell, data: Dataset, run: Recorder, device: torch.device,
             repetitions: list[int] | None = None, progress: bool = False,
             tuning: TuneOptions | None = None, say=lambda *_: None,
             shared: Shared | None = None) -> int:
    """Tune the cell once, then train `repetitions` (default: all of its seeds) as runs nested
    under `run`; returns how many of them learned. `shared`: another worker may train some of
    them meanwhile (each is trained under its lock); this one then waits for those, and
    trains again any whose worker died."""
    candidates = tune_candidates(cell, data, run, device, tuning)
    learned, theirs = 0, []
    for r in range(cell.seeds) if repetitions is None else repetitions:
        held = shared.locks.try_hold(shared.lock(r)) if shared else None
        if shared and held is None:
            theirs.append(r)
            continue
        with held or contextlib.nullcontext():
            if shared and shared.outcome(r):  # another worker trained it just now
                continue
            say(f"repetition {r + 1} of {cell.seeds} ...")
            learned += train_repetition(cell, candidates, data, run, r, device, progress)
    for r in theirs:
        say(f"repetition {r + 1} of {cell.seeds}: another worker trains it, waiting")
        with shared.locks.hold(shared.lock(r)):  # it ended it, or died
            if (outcome := shared.outcome(r)) is not None:
                learned += outcome == results.OK
                continue
            shared.end_lost(r)
            say(f"repetition {r + 1} of {cell.seeds}: its worker died; training it here ...")
            learned += train_repetition(cell, candidates, data, run, r, device, progress)
    return learned



def settle_heap() -> None:
    """Collect the garbage, then freeze what is left (gc.freeze), before a cell. A worker's
    heap holds some 800,000 objects of the libraries it imported (torch, MLflow, Optuna,
    matplotlib), and every full collection walks them all: 0.4 to 0.5 s of CPU, about once a
    tracked cell (a cell that records nothing makes almost no garbage). Frozen, they are not
    walked again; what a cell leaves behind is collected before the next freeze, so no
    garbage is kept. Measured on the quick cnn cell: its collections took 0.53 s, and 0.05 s
    once frozen, with about 0.05 s for this call after a cell."""
    gc.collect()
    gc.freeze()


def run_grid(entries: list[GridEntry], data: Dataset, store: Store, *, device: torch.device,
             invocation: Invocation | None = None, progress: bool = False,
             tuning: TuneOptions | None = None) -> list[Outcome]:
    """Every cell as a top-level run, tagged with this invocation. Cells whose repetitions all
    have an outcome are skipped (unless `force`, which starts a new cell run once per
    invocation); a failing cell is recorded FAILED and the next one runs; Ctrl-C ends the
    current runs KILLED and stops. Several workers (processes, machines) can run the same
    grid at once on shared stores: a cell is owned by the worker that holds its lock, the
    others help with its Optuna trials and move on; once a worker has no cell of its own
    left, it helps with the repetitions of the cells others still own."""
    tuning = tuning or TuneOptions()
    open_studies(tuning.storage)  # created before any worker asks for a study in it
    locks = open_locks(tuning.storage)
    invocation = invocation or Invocation()
    store.start_invocation(invocation.id)
    console = Console()
    if lost := sweep_orphans(store, locks, tuning.storage):
        console.note(f"ended {lost} run{'s' * (lost != 1)} that dead workers left RUNNING")
    outcomes: list[Outcome] = []
    for i, entry in enumerate(tqdm(entries, desc="cells", unit="cell", disable=not progress,
                                   leave=False), 1):
        say = console.cell(i, len(entries), entry.cell.name)
        settle_heap()
        outcomes.append(_run_entry(entry.cell, data, store, locks, invocation, say,
                                   device=device, progress=progress, tuning=tuning,
                                   tags=invocation.tags(i, entry.reference)))
    # no cell of its own left: the repetitions that the other workers' cells still need
    for i, (entry, outcome) in enumerate(zip(entries, outcomes, strict=True), 1):
        if outcome.status in ("helped", "elsewhere"):
            trained = _help_repetitions(entry.cell, data, store, locks, invocation,
                                        console.cell(i, len(entries), entry.cell.name),
                                        device=device, progress=progress)
            if trained:
                outcomes[i - 1] = dataclasses.replace(outcome, status="helped",
                                                      trained=outcome.trained + trained)
    return outcomes


STATUSES = ("finished", "skipped", "failed", "helped", "elsewhere")
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
        now = cell_run.data.tags.get("invocation") == invocation.id  # another worker's, now
        say(f"skipped (all {cell.seeds} repetitions finished "
            f"{'by another worker' if now else 'before'})")
        return Outcome(cell, "skipped")
    held = locks.try_hold(cell_lock(cell.key))
    if held is None:  # another live worker trains this cell's final fits
        return _help(cell, data, store, locks, invocation, say, device, tuning)
    with held:  # released when this worker ends, or dies: the OS or the database sees to it
        return _own(cell, data, store, locks, invocation, say, device=device,
                    progress=progress, tuning=tuning, tags=tags)


def _own(cell: Cell, data: Dataset, store: Store, locks: Locks, invocation: Invocation, say, *,
         device: torch.device, progress: bool, tuning: TuneOptions, tags: dict) -> Outcome:
    """Train the cell's missing repetitions, holding its lock."""
    cell_run, missing = _missing(store, cell, invocation)  # its owner may have died after it
    if not missing:
        return Outcome(cell, "skipped")
    short = disk_shortfall(cell, len(missing), store, tuning.storage, data.num_classes)
    if short:  # nothing opened, nothing left RUNNING
        say(f"not started: {short}")
        return Outcome(cell, "failed", error=short)
    say(f"started: {cell.epochs} epochs" + (f", {cell.trials} trials" if cell.trials else "")
        + f", repetitions {_ranges(missing)} of {cell.seeds}")
    start = time.perf_counter()
    reopen = cell_run.info.run_id if cell_run else None
    if reopen:  # nobody else holds the cell's lock: its run's RUNNING, a dead worker left,
        store.end_lost([reopen], LOST_WORKER)
        lost = Shared(store, locks, cell, reopen)
        for r in missing:  # and so its repetitions' where nobody holds theirs (a helper may)
            if held := locks.try_hold(lost.lock(r)):
                with held:
                    lost.end_lost(r)
    try:
        # the old parameters go before the run is RUNNING again: a helper waits for new ones
        with store.cell_run(cell.name, {"cell_key": cell.key, "invocation": invocation.id,
                                        "locks": locks_place(tuning.storage)},
                            reopen=reopen, forget=(TUNED,)) as run:
            _record_cell(run, cell, data, device, tags)
            run_cell(cell, data, run, device, missing, progress, tuning, say,
                     shared=Shared(store, locks, cell, run.run_id))
            learned, line = summarize_cell(store, run, cell)
            say(f"finished in {time.perf_counter() - start:.0f} s: {line}" if learned
                else f"failed: {line}")
    except Exception as e:  # recorded FAILED on the run; the next cell still runs
        error = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
        say(f"failed: {error}")
        return Outcome(cell, "failed", error=error, seconds=time.perf_counter() - start,
                       trained=len(missing))
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
        free = locks.try_hold(cell_lock(cell.key))
        if free:  # the owner is done (or died): nothing to help with now
            free.release()
            return None
        time.sleep(1)
    return None


def _help(cell: Cell, data: Dataset, store: Store, locks: Locks, invocation: Invocation, say,
          device: torch.device, tuning: TuneOptions) -> Outcome:
    """Run trials of a cell whose final fits another worker trains, nested under its run,
    leaving the study's last trial to that owner (studies.help_tune)."""
    run_id = _owner_run(store, cell, invocation, locks) if cell.trials else None
    if not run_id:
        say("another worker has it")
        return Outcome(cell, "elsewhere")
    say("another worker has it; helping with its trials")
    start = time.perf_counter()
    run = store.run_log(run_id)
    dead = help_tune(cell, cut(cell, data, 0), device, run, tuning,
                     seed=cell.repetition_seed(0))
    run.end_lost(dead, LOST_TRIAL)
    return Outcome(cell, "helped", seconds=time.perf_counter() - start)


def _help_repetitions(cell: Cell, data: Dataset, store: Store, locks: Locks,
                      invocation: Invocation, say, *, device: torch.device,
                      progress: bool) -> int:
    """Train, under the run of a cell that another live worker owns, repetitions that nobody
    trains yet, last first (its owner goes from the first), once its tuning is done: what a
    worker does when it has no cell of its own left, instead of idling while the owner trains
    them one after another. Returns how many it trained."""
    trained = 0
    while True:
        run = _cell_run(store, cell, invocation)
        if run is None or run.info.status != "RUNNING" or is_free(locks, cell_lock(cell.key)):
            return trained  # its owner is done, or died (the next run trains what is missing)
        if TUNED not in run.data.tags:  # its owner is still tuning it
            time.sleep(1)
            continue
        shared = Shared(store, locks, cell, run.info.run_id)
        wanted = int(run.data.tags.get("seeds", cell.seeds))  # the owner's (not in the key)
        for r in reversed([r for r in _missing(store, cell, invocation)[1] if r < wanted]):
            held = locks.try_hold(shared.lock(r))
            if held is None:  # its owner, or another helper, trains it
                continue
            with held:
                if shared.outcome(r):
                    continue
                say(f"repetition {r + 1} of {wanted} (helping its owner) ...")
                candidates = candidates_of(cell, json.loads(run.data.tags[TUNED]))
                train_repetition(cell, candidates, data, store.run_log(run.info.run_id), r,
                                 device, progress)
                trained += 1
            break  # and look again: the owner may have finished meanwhile
        else:
            return trained  # every repetition it still needs is being trained
