"""`make perf`: the workers `make benchmark` starts on a CPU against one process.

`--workers auto` (the Makefile's default) runs one worker process per core on a CPU, each
with one torch thread (benchmark/app/launchers.py). Whether that beats one process using
every core depends on the model: small layers leave threads waiting on each other. Here,
per model, at the quick profile's batch size: one training epoch in this process with all
its threads, against the same epoch run at once in each of `cores` one-thread processes
(started, and warmed up, before the clock runs). The row is the images/s of the workers
over the one process's.
"""

from __future__ import annotations

import multiprocessing
import os

import torch

from benchmark import train
from benchmark.app.perf_timing import Context, Row, alternate, paired
from benchmark.cells import load_profile
from benchmark.data.augment import NoAugment

_WORKER: dict = {}  # in a worker process: its images, and a model and optimizer per name


def _start(x: torch.Tensor, y: torch.Tensor, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER.update(split=train.Split(x, y), models={})


def _one_epoch(name: str, n: int, num_classes: int, batch: int, seed: int) -> None:
    """One epoch of `name` on the worker's first n images (its model built on the first
    call)."""
    split = train.Split(_WORKER["split"].x[:n], _WORKER["split"].y[:n])
    if name not in _WORKER["models"]:
        model = train.build_model(name, num_classes, seed, torch.device("cpu"))
        _WORKER["models"][name] = (model, torch.optim.SGD(model.parameters(), lr=0.01))
    model, opt = _WORKER["models"][name]
    gen = torch.Generator().manual_seed(seed)
    train.train_one_epoch(model, opt, split, batch, gen, NoAugment(split.y))


def speeds(ctx: Context) -> list[Row]:
    """A row per model: `cores` one-thread workers' images/s over one process's."""
    cores = os.cpu_count() or 1
    if ctx.device.type != "cpu" or cores < 2:
        return []  # on a GPU the workers are one per GPU; one core has nothing to split
    batches = {m: b for m, b in load_profile("quick")["batch_size"].items() if m in ctx.sizes}
    rows, most = [], max(ctx.sizes[m] for m in batches)
    pool = multiprocessing.get_context("spawn").Pool(
        cores, initializer=_start, initargs=(ctx.data.train_x[:most], ctx.data.train_y[:most], 1))
    try:
        for name, batch in batches.items():
            n, k = ctx.sizes[name], ctx.data.num_classes
            args = (name, n, k, batch, ctx.seed)
            here = train.build_model(name, k, ctx.seed, ctx.device)
            opt = torch.optim.SGD(here.parameters(), lr=0.01)
            split = train.Split(ctx.data.train_x[:n], ctx.data.train_y[:n])

            def one_process(model=here, opt=opt, split=split, batch=batch):
                gen = torch.Generator().manual_seed(ctx.seed)
                train.train_one_epoch(model, opt, split, batch, gen, NoAugment(split.y))

            def workers(args=args):
                pool.starmap(_one_epoch, [args] * cores)

            t_one, t_workers = alternate(one_process, workers, reps=ctx.reps,
                                         device=ctx.device)
            rows.append(paired(
                f"{name} epoch, {cores} one-thread workers / 1 process", "img/s",
                [cores * n / t for t in t_workers], [n / t for t in t_one],
                note=f"batch {batch} (the quick profile's), {n} images an epoch each; "
                     f"one process with {torch.get_num_threads()} threads"))
    finally:
        pool.terminate()
    return rows
