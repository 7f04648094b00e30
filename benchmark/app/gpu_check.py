"""`make gpu-check` (`tailbench gpu-check`): a short check on a CUDA machine, under 5 minutes.

A paper-profile cnn cell (batch 1024, the reference's recipe) tuned with 4 trials running at
once in threads sharing the GPU, then one final fit, in bf16 autocast with channels_last
weights (the CUDA defaults), on CIFAR-10 where it is on disk or random CIFAR-shaped images
(the machine may have no data and no network: the numbers are speed, not accuracy). It
writes images per second (trials and final fit), the epochs trained and the peak GPU
memory to a JSON file. Tracking is a real MLflow SQLite store in a temporary folder.
Then 4 cnn trainings of the cell's recipe packed into one vmapped model (benchmark.packed)
against the same 4 one after the other, one epoch each way after a warm-up: whether packing
pays on this GPU (the trials above still run as 4 threads, not packed: Optuna hands each
trial its own objective call).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from benchmark.app import perf_packed
from benchmark.app.perf_timing import Context
from benchmark.app.repetitions import cut, run_repetition
from benchmark.app.runner import tune_candidates
from benchmark.cells import Cell
from benchmark.data import DataError, Dataset, load_dataset
from benchmark.errors import UserError
from benchmark.train import resolve_precision
from studies import TuneOptions
from tracking.store import Store

HELP = ("check the CUDA paths (4 trials at once, 4 cnns packed vs sequential, bf16, "
        "channels_last): images/s, peak memory")


def add_parser(sub) -> None:
    p = sub.add_parser("gpu-check", help=HELP, description=HELP)
    p.add_argument("--out", default="runs/gpu-check.json")
    p.add_argument("--epochs", type=int, default=3, help="per trial and final fit")
    p.add_argument("--images", type=int, default=50000, help="training images (random ones "
                   "where CIFAR-10 is not on disk)")
    p.add_argument("--device", default="cuda", help="cuda (cpu only to test this command)")


def _data(n: int) -> Dataset:
    try:
        return load_dataset("cifar10", download=False)
    except DataError:
        gen = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (n + 10000, 3, 32, 32), dtype=torch.uint8, generator=gen)
        y = torch.randint(0, 10, (n + 10000,), generator=gen)
        return Dataset(x[:n], y[:n], x[n:], y[n:], tuple(map(str, range(10))), "random", "")


def run(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("gpu-check needs a CUDA GPU and finds none (torch.cuda.is_available() "
                        "is False); `make perf` measures this CPU")
    data = _data(args.images)
    cell = Cell("cnn", "balanced", "none", epochs=args.epochs, dataset=data.source,
                profile="paper", trials=4, train_limit=min(args.images, len(data.train_y)),
                precision=resolve_precision("auto", device))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{tmp}/mlflow.db", "tailbench/gpu-check")
        tuning = TuneOptions(Path(tmp) / "optuna.journal", jobs=4)  # 4 trials at once
        with store.cell_run(cell.name, {"cell_key": cell.key}) as run_log:
            start = time.perf_counter()
            candidates = tune_candidates(cell, data, run_log, device, tuning)
            tuned = time.perf_counter()
            with run_log.child("repetition 0", "repetition") as rep:
                learned = run_repetition(cell, candidates, data, rep, 0, device)
            done = time.perf_counter()
            epochs = store.client.get_run(run_log.run_id).data.metrics["trial_epochs"]
    n = len(cut(cell, data).train_y)
    packed = perf_packed.speed(Context(device, data, {"cnn": n, "batch": cell.batch_size}, 1),
                               "cnn", 4)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "precision": cell.precision, "channels_last": True,
        "data": data.source, "train_images": n, "epochs": cell.epochs, "trials_at_once": 4,
        "trial_epochs": epochs,  # pruned trials stop early
        "trials_img_per_s": 0.9 * n * epochs / (tuned - start),  # 10% is the validation split
        "final_fit_img_per_s": n * cell.epochs / (done - tuned), "final_fit_learned": learned,
        "seconds": done - start,
        "packed_4_img_per_s": packed.tailbench, "sequential_4_img_per_s": packed.baseline,
        "packed_over_sequential": packed.ratio,
        "peak_gpu_memory_gib": (torch.cuda.max_memory_allocated(device) / 2**30
                                if device.type == "cuda" else None)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0
