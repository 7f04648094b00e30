"""Workers: the processes that run a grid's cells. One worker runs in the command's own
process; several are started with multiprocessing (a forkserver) and handed their options as data,
a WorkerPlan, never as a command line to parse again. They share the stores: the worker
holding a cell's lock owns it, the others help with its trials and, once they have no cell
left, with its repetitions (benchmark/app/runner.py, studies/locks.py)."""

from __future__ import annotations

import multiprocessing
import os
import sys
from dataclasses import dataclass, replace

import torch

import benchmark.data as sources  # looked up at call time (tests stand in for the loader)
from benchmark.app.console import Console, one_line_warnings, quiet_libraries
from benchmark.app.runner import Invocation, Outcome, run_grid
from benchmark.cells import GridEntry
from benchmark.train import resolve_device
from studies import TuneOptions
from tracking.store import Store


@dataclass(frozen=True)
class WorkerPlan:
    """Everything a worker needs to run the grid, checked by the command before any start."""

    entries: tuple[GridEntry, ...]
    source: str  # the dataset, resolved ("cifar10" or "fashion-mnist")
    data_dir: str | None
    device: str
    tracking_uri: str
    experiment: str
    tuning: TuneOptions
    invocation: Invocation
    progress: bool = False  # tqdm bars (one worker on a terminal)
    threads: int | None = None  # torch threads: on a CPU the workers split its cores
    gpu: int | None = None  # the GPU this worker uses, where there are several


def work(plan: WorkerPlan) -> list[Outcome]:
    """Run the plan's cells in this process."""
    if plan.threads:
        torch.set_num_threads(plan.threads)
    device = torch.device("cuda", plan.gpu) if plan.gpu is not None else \
        resolve_device(plan.device)
    data = sources.load_dataset(plan.source, plan.data_dir)
    store = Store(plan.tracking_uri, plan.experiment)
    return run_grid(list(plan.entries), data, store, device=device, invocation=plan.invocation,
                    progress=plan.progress, tuning=plan.tuning)


def _main(plan: WorkerPlan) -> None:
    """A spawned worker: quiet libraries, our warnings in one line, run, exit 1 when a cell
    failed."""
    quiet_libraries()
    one_line_warnings()
    try:
        outcomes = work(plan)
    except KeyboardInterrupt:  # the runs are ended KILLED; the parent reports
        sys.exit(130)
    sys.exit(1 if any(o.status == "failed" for o in outcomes) else 0)


def _context():
    """Workers fork from a fresh server process that imported this module (torch, MLflow,
    Optuna) once, rather than each importing it again (about 6 s of CPU a worker on a
    2-core machine); no worker inherits the command's own torch state. Where there is no
    forkserver (Windows), spawn."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


def spawn(plan: WorkerPlan, n: int) -> list[int]:
    """Run the plan in `n` worker processes (one per GPU where there are several, else
    splitting the CPU's cores) and wait for them; returns their exit codes."""
    gpus = torch.cuda.device_count() if plan.device != "cpu" else 0
    Console().note(f"{n} workers" + (f" on {gpus} GPUs" if gpus else ""))
    threads = None if gpus else max(1, (os.cpu_count() or 1) // n)
    ctx = _context()
    quiet = replace(plan.tuning, progress=False)  # n workers' bars would garble each other
    procs = [ctx.Process(target=_main, args=(replace(
        plan, tuning=quiet, progress=False, threads=threads, gpu=(i % gpus) if gpus else None),))
        for i in range(n)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:  # the workers got the same Ctrl-C; let them end their runs
        for p in procs:
            p.join()
        raise
    return [p.exitcode for p in procs]
