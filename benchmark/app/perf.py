"""`tailbench perf`: tailbench's compute core against the usual tutorial pipeline, side by side.

Every comparison runs its two contenders in one process, alternating A, B, A, B, ... after
one untimed warm-up of each, and reports the median. A comparison is a function of a
Context that returns one Row; COMPARISONS lists them in the order they run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

from benchmark import train
from benchmark.app import perf_cells, perf_grid, perf_packed, perf_precision, perf_workers
from benchmark.app.perf_baseline import PilImages, add_noise, tutorial_epoch, tutorial_loader
from benchmark.app.perf_timing import Comparison, Context, Row, alternate, paired
from benchmark.cells import Cell
from benchmark.data import DataError, Dataset, load_dataset
from benchmark.data.augment import FlipNoise, NoAugment, batches
from benchmark.data.variants import make_variant
from benchmark.errors import UserError
from benchmark.models import create_model

SIZES = {  # images per measurement: enough for steady timings, small enough for ~8 min
    "full": {"cnn": 2048, "rnn": 2048, "resnet50": 1024,
             "pipeline": 20000,  # training images before the long-tail cut (~20k per epoch after)
             "batch": train.HYP["batch_size"], "flop_batch": 8, "matmul": 2048, "reps": 5},
    "quick": {"cnn": 64, "rnn": 64, "resnet50": 32, "pipeline": 600,
              "batch": 32, "flop_batch": 2, "matmul": 256, "reps": 1},
}
TARGETS = {  # speedup over the tutorial, or share of the machine's matmul rate
    ("train", "cnn"): 1.6, ("pipeline", "flip+noise"): 20.0,
    ("limit", "cnn"): 0.5, ("limit", "resnet50"): 0.5,
}


# ---- 1. training throughput -------------------------------------------------------------

def _train_contenders(ctx: Context, name: str):
    n, dev, k = ctx.sizes[name], ctx.device, ctx.data.num_classes
    x, y = ctx.data.train_x[:n], ctx.data.train_y[:n]
    ours = train.build_model(name, k, ctx.seed, dev)
    ours_opt = torch.optim.SGD(ours.parameters(), lr=train.HYP["lr"])
    split, gen = train.Split(x.to(dev), y.to(dev)), torch.Generator(dev).manual_seed(ctx.seed)
    torch.manual_seed(ctx.seed)
    plain = create_model(name, k).to(dev)  # NCHW, as a tutorial leaves it
    plain_opt = torch.optim.SGD(plain.parameters(), lr=train.HYP["lr"])
    flip = transforms.Compose([transforms.RandomHorizontalFlip(), transforms.ToTensor()])
    loader = tutorial_loader(ctx, PilImages(x, y, NoAugment(y).plan(torch.Generator()), flip))
    return (partial(train.train_one_epoch, ours, ours_opt, split, ctx.sizes["batch"], gen,
                    NoAugment(split.y)),
            partial(tutorial_epoch, plain, plain_opt, loader, dev))


def training(ctx: Context, name: str) -> Row:
    """Images/s of one training epoch: train_one_epoch against the tutorial loop. A square
    matmul runs third in each round: where other work shares the machine, its median then
    saw the same share of it as the network's (a best-of would not)."""
    ours, tutorial = _train_contenders(ctx, name)
    t_ours, t_tut, t_mm = alternate(ours, tutorial, matmul(ctx), reps=ctx.reps,
                                    device=ctx.device)
    n, flops = ctx.sizes[name], 2 * ctx.sizes["matmul"] ** 3
    ctx.cache[f"train/{name}"] = a = [n / t for t in t_ours]
    ctx.cache[f"matmul/{name}"] = [flops / t for t in t_mm]
    return paired(f"{name} training epoch", "img/s", a, [n / t for t in t_tut],
                  target=TARGETS.get(("train", name)),
                  note=f"{n} images, batch {ctx.sizes['batch']}")


# ---- 2. data pipeline alone ---------------------------------------------------------------

def tailbench_batches(x: torch.Tensor, y: torch.Tensor, augment: NoAugment,
                      gen: torch.Generator, batch: int, model: torch.nn.Module) -> int:
    """Every float batch of one epoch, made as train_one_epoch makes them; returns the count."""
    plan = augment.plan(gen)
    order = torch.randperm(len(plan.index), generator=gen, device=x.device)
    n = 0
    for idx, synthetic in batches(plan, order, batch):
        train.make_batch(x[idx], synthetic, augment, gen, model)
        n += len(y[idx])
    return n


def whole_batch_noise(x: torch.Tensor, y: torch.Tensor, augment: FlipNoise,
                      gen: torch.Generator, batch: int, model: torch.nn.Module) -> int:
    """The pipeline before: flips and noise drawn for every row of every batch, then kept
    where a row is synthetic (torch.where), in shuffled order."""
    plan = augment.plan(gen)
    order = torch.randperm(len(plan.index), generator=gen, device=x.device)
    n = 0
    for start in range(0, len(order), batch):
        pick = order[start:start + batch]
        xb = torch.div(x[plan.index[pick]], 255)
        mask = plan.synthetic[pick].view(-1, 1, 1, 1)
        flip = mask & (torch.rand(mask.shape, generator=gen, device=x.device) < 0.5)
        xb = torch.where(flip, xb.flip(-1), xb)
        noise = torch.randn(xb.shape, generator=gen, device=x.device) * augment.sigma
        train._like_model(torch.where(mask, (xb + noise).clamp_(0, 1), xb), model)
        n += len(pick)
    return n


def pipeline(ctx: Context) -> list[Row]:
    """Images/s of flip+noise oversampled batches: batched tensor ops against per-image PIL."""
    ref = Cell("cnn", "long-tail", "flip+noise", epochs=1)  # the reference's tail and sigma
    lt = make_variant(ctx.data.limit(train=ctx.sizes["pipeline"], seed=ctx.seed), "long-tail",
                      tail_classes=ref.tail_classes, ratio=ref.imbalance_ratio)
    dev, sigma = ctx.device, ref.sigma
    augment = FlipNoise(lt.train_y.to(dev), tail_classes=ref.tail_classes, sigma=sigma,
                        num_classes=lt.num_classes)
    gen = torch.Generator(dev).manual_seed(ctx.seed)
    model = train.build_model("cnn", lt.num_classes, ctx.seed, dev)  # for its memory format
    plan = augment.plan(torch.Generator(dev).manual_seed(ctx.seed))
    noisy = transforms.Compose([transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                partial(add_noise, sigma=sigma)])
    dataset = PilImages(lt.train_x, lt.train_y, plan, transforms.ToTensor(), noisy)
    x, y, loader = lt.train_x.to(dev), lt.train_y.to(dev), tutorial_loader(ctx, dataset)
    ours = partial(tailbench_batches, x, y, augment, gen, ctx.sizes["batch"], model)
    t_ours, t_tut = alternate(ours, lambda: sum(len(xb.to(dev)) for xb, _ in loader),
                              reps=ctx.reps, device=dev)
    t_rows, t_whole = alternate(ours, partial(whole_batch_noise, x, y, augment, gen,
                                              ctx.sizes["batch"], model),
                                reps=ctx.reps, device=dev)
    n, note = len(plan.index), f"{len(lt.train_y)} long-tail images + {augment.added} added"
    return [paired("flip+noise data pipeline", "img/s", [n / t for t in t_ours],
                   [n / t for t in t_tut], target=TARGETS[("pipeline", "flip+noise")],
                   note=f"{note}; baseline: PIL transforms in a DataLoader"),
            paired("flip+noise: added rows only", "img/s", [n / t for t in t_rows],
                   [n / t for t in t_whole],
                   note="noise drawn for the added rows / for whole batches (before)")]


# ---- 3. distance from the machine's limit -------------------------------------------------

def compute_dtype(device: torch.device) -> torch.dtype:
    """The dtype training computes in there: autocast's where train.py uses it, else fp32."""
    return getattr(train._autocast(device), "fast_dtype", torch.float32)


def matmul(ctx: Context) -> Callable[[], torch.Tensor]:
    """One dense (n, n) @ (n, n) product in the compute dtype: 2 n^3 FLOPs per call."""
    n, dev, dtype = ctx.sizes["matmul"], ctx.device, compute_dtype(ctx.device)
    a, b = (torch.randn(n, n, device=dev, dtype=dtype) for _ in range(2))
    return partial(torch.mm, a, b, out=torch.empty_like(a))


def train_flops_per_image(name: str, device: torch.device, batch: int, num_classes: int) -> float:
    """FLOPs of one forward + backward of the model, per image, as train.py runs it."""
    model = train.build_model(name, num_classes, 0, device)
    x = torch.zeros(batch, 3, 32, 32, dtype=torch.uint8, device=device)
    y = torch.zeros(batch, dtype=torch.long, device=device)
    x = train.make_batch(x, 0, NoAugment(y), None, model)
    with FlopCounterMode(display=False) as counter:
        with train._autocast(device):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
    return counter.get_total_flops() / batch


def limit(ctx: Context, name: str) -> Row:
    """Training FLOP/s (FLOPs per image x images/s) as a share of the matmul rate."""
    if f"train/{name}" not in ctx.cache:
        training(ctx, name)
    per_image = train_flops_per_image(name, ctx.device, ctx.sizes["flop_batch"],
                                      ctx.data.num_classes)
    achieved = [per_image * r / 1e9 for r in ctx.cache[f"train/{name}"]]
    peak = [r / 1e9 for r in ctx.cache[f"matmul/{name}"]]
    return paired(f"{name} training vs matmul", "GFLOP/s", achieved, peak,
                  target=TARGETS.get(("limit", name)), percent=True,
                  note=f"{per_image / 1e6:.1f} MFLOP per image, {compute_dtype(ctx.device)}"
                       .replace("torch.", ""))


NETWORKS = ("cnn", "rnn", "resnet50")
# ---- 4. and 5. whole cells: in perf_cells (the runner, tracking and studies) -------------

COMPARISONS: list[Comparison] = [
    *(partial(training, name=m) for m in NETWORKS),
    *(partial(perf_precision.speed, name=m) for m in NETWORKS),
    perf_precision.accuracy,
    *(partial(perf_packed.speed, name=m, k=k) for m in perf_packed.NETWORKS
      for k in perf_packed.KS),
    perf_workers.speeds,
    pipeline,
    *(partial(limit, name=m) for m in NETWORKS),
    perf_cells.tracking_overhead,
    perf_cells.pruning_saving,
    perf_grid.shares,
]


# ---- the table, the JSON and the command --------------------------------------------------

def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _ratio(v: float | None, percent: bool) -> str:
    """A speedup as 1.23x; a share as 45%, or 3.5% below 10% (where "3% <= 3% NO" would
    hide why)."""
    if v is None:
        return "-"
    return (f"{v:.1%}" if abs(v) < 0.1 else f"{v:.0%}") if percent else f"{v:.2f}x"


def table(rows: list[Row]) -> str:
    head = ("measure", "unit", "tailbench", "baseline", "ratio", "target", "met?")
    lines = [(r.measure, r.unit, _fmt(r.tailbench), _fmt(r.baseline), _ratio(r.ratio, r.percent),
              "-" if r.target is None else
              ("<= " if r.upper else ">= ") + _ratio(r.target, r.percent),
              {None: "-", True: "yes", False: "NO"}[r.met]) for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *lines, strict=True)]
    fmt = "  ".join(f"{{:{'<' if i < 2 else '>'}{w}}}" for i, w in enumerate(widths))
    out = [fmt.format(*head), "  ".join("-" * w for w in widths)]
    return "\n".join(out + [fmt.format(*line) for line in lines])


def _cpu_name() -> str:
    return cpu_info().get("name") or platform.processor() or platform.machine()


# the vector instructions bf16's speed on a CPU turns on (README: bf16 against fp32 per machine)
CPU_FLAGS = ("amx_bf16", "avx512_bf16", "avx512f", "avx2")


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict:
    """Model name, family, model, MHz and which of CPU_FLAGS the first CPU has, as Linux's
    cpuinfo says ({} where there is none): two CPUs of one model name can differ in the rest."""
    try:
        first = cpuinfo.read_text().split("\n\n", 1)[0]
    except OSError:
        return {}
    fields = {k.strip(): v.strip() for k, _, v in
              (ln.partition(":") for ln in first.splitlines()) if _}
    flags = set(fields.get("flags", "").split())
    return {"name": fields.get("model name"), "family": fields.get("cpu family"),
            "model": fields.get("model"),
            "mhz": fields.get("cpu MHz"), "flags": [f for f in CPU_FLAGS if f in flags]}


def machine(ctx: Context) -> dict:
    dev = ctx.device
    mm = [r / 1e9 for k, v in ctx.cache.items() if k.startswith("matmul/") for r in v]
    return {"torch": torch.__version__, "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_name(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu": cpu_info(),
            "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "dtype": str(compute_dtype(dev)),
            "matmul_gflops": {"best": max(mm), "median": statistics.median(mm)} if mm else None,
            "data": ctx.data.source, "reps": ctx.reps, "sizes": ctx.sizes,
            "tutorial_workers": ctx.workers}


def comparison_name(compare: Comparison) -> str:
    """module.function and its fixed arguments: `perf_packed.speed name=cnn k=2`."""
    fn = getattr(compare, "func", compare)
    args = " ".join(f"{k}={v}" for k, v in getattr(compare, "keywords", {}).items())
    return f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__} {args}".strip()


def rows_of(compare: Comparison, ctx: Context) -> list[Row]:
    """A comparison's rows: most give one, some a few side by side."""
    got = compare(ctx)
    return got if isinstance(got, list) else [got]


def measure(ctx: Context, comparisons: list[Comparison] | None = None,
            echo: Callable[[str], None] = lambda line: None) -> tuple[list[Row], dict]:
    """Run the comparisons: their rows, and the JSON of rows and machine."""
    start, load, rows = time.perf_counter(), os.getloadavg()[0], []
    for compare in comparisons or COMPARISONS:
        for r in rows_of(compare, ctx):
            rows.append(r)
            echo(f"  {r.measure}: {_fmt(r.tailbench)} vs {_fmt(r.baseline)} {r.unit}")
    # other processes' load makes both columns slow and noisy: keep it beside the numbers
    info = machine(ctx) | {"load_before": load, "load_after": os.getloadavg()[0]}
    return rows, {"machine": info, "rows": [r.to_dict() for r in rows],
                  "seconds": time.perf_counter() - start}


def load_images(seed: int = 0) -> Dataset:
    """The local dataset (never downloaded); seeded random images where there is none."""
    try:
        return load_dataset("auto", download=False)
    except DataError as e:
        print(f"tailbench perf: {e}\ntailbench perf: timing random images instead",
              file=sys.stderr)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (20000, 3, 32, 32), dtype=torch.uint8, generator=gen)
    y = torch.arange(20000) % 10
    return Dataset(x, y, x[:100], y[:100], tuple(map(str, range(10))), "random", "")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("perf", help="time tailbench against the usual tutorial pipeline")
    p.add_argument("--device", default="auto", choices=train.DEVICES)
    p.add_argument("--reps", type=int, default=None,
                   help=f"timed repetitions of each contender (default {SIZES['full']['reps']}, "
                        f"--quick {SIZES['quick']['reps']})")
    p.add_argument("--out", default="perf.json", help="where to write the table as JSON")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks it runs, not speed")
    p.add_argument("--only", default=None, metavar="TEXT", help="run only the comparisons "
                   "whose name contains TEXT (e.g. packed, precision, cnn)")
    p.add_argument("--tracking-uri", default=None, help="the MLflow store of the benchmark "
                   "whose time shares to show (default sqlite:///runs/mlflow.db)")
    return p


def run(args: argparse.Namespace) -> int:
    sizes = SIZES["quick" if args.quick else "full"]
    reps = args.reps if args.reps is not None else sizes["reps"]
    if reps < 1:
        raise UserError(f"--reps must be at least 1, got {reps}")
    ctx = Context(train.resolve_device(args.device), load_images(), dict(sizes), reps,
                  tracking_uri=getattr(args, "tracking_uri", None))
    if (load := os.getloadavg()[0]) > 0.5 * (os.cpu_count() or 1):
        print(f"tailbench perf: warning: load average {load:.1f} on {os.cpu_count()} CPUs; "
              "other work will slow and scatter these timings", file=sys.stderr)
    cpu = cpu_info()
    about = (f"{cpu['name']}, family {cpu['family']} model {cpu['model']}, "
             f"{' '.join(cpu['flags']) or 'no avx2'}; " if cpu and ctx.device.type == "cpu"
             else "")
    print(f"tailbench perf on {ctx.device} ({about}{torch.get_num_threads()} threads), "
          f"{reps} reps each, median kept", flush=True)
    only = getattr(args, "only", None)
    chosen = [c for c in COMPARISONS if only is None or only in comparison_name(c)]
    if not chosen:
        raise UserError(f"--only {only!r} matches no comparison; their names: "
                        + ", ".join(comparison_name(c) for c in COMPARISONS))
    rows, result = measure(ctx, chosen, echo=lambda line: print(line, flush=True))
    print(f"\n{table(rows)}\n\n{result['seconds']:.0f}s in all"
          + (" (--quick: tiny sizes, these numbers say nothing about speed)" * args.quick))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0
