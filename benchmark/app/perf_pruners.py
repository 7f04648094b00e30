"""`make pruners` (`tailbench pruners`): today's pruning rule against its candidates, over
several studies.

Each study is one quick-profile cell (8 trials; the cnn 6 epochs on 2,000 images), tuned
once per pruning rule in studies/pruners.py with the same sampler seed, the same validation
split and the same initial weights, so the rules differ only in which trials they stop (and
so in what TPE learns from the trials stopped). For each (study, rule) it records the epochs
trained over all trials (the cost) and the best validation balanced accuracy the study found
(what a cell then trains with). Epochs and accuracies do not depend on the machine's load;
wall time does, and is kept only as a note.

Too long for `make perf` (a study took 1 to 6 minutes of a loaded 2-core CPU, and a
comparison needs several studies per rule), hence a command of its own.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmark import train
from benchmark.app.perf import NETWORKS, load_images, machine
from benchmark.app.perf_timing import Context
from benchmark.app.repetitions import cut
from benchmark.cells import Cell, apply_profile, load_profile
from benchmark.data import Dataset
from benchmark.errors import UserError
from benchmark.recording import NullRunLog
from studies import TuneOptions, tune_cell
from studies.pruners import DEFAULT, PRUNERS

CANDIDATES = ("median", "halving", "percentile")  # today's rule first: the others' baseline
CELLS = (("balanced", "none"), ("long-tail", "none"), ("long-tail", "flip+noise"))
SEEDS = (0, 1, 2)  # cell seeds: each its own subsample, cut, split, weights and sampler seed
QUICK = {"epochs": 2, "trials": 3, "train_limit": 200, "test_limit": 50, "batch_size": 32}


@dataclass
class StudyRow:
    study: str  # the cell's name and seed
    pruner: str
    epochs: int  # trained over every trial, pruned ones up to where they stopped
    full: int  # trials x epochs: every trial run to the end
    complete: int
    pruned: int
    best: float | None  # best validation balanced accuracy; None when no trial completed
    best_lr: float | None
    seconds: float  # wall time: load-sensitive, a note only


def studies(dataset: str, seeds: tuple[int, ...] = SEEDS, quick: bool = False,
            model: str = "cnn") -> list[Cell]:
    """The quick profile's cells of `model` (its epochs, images, batch and 8 trials), one per
    (variant, augmentation) and seed; `quick`: tiny sizes that check the command runs."""
    profile = load_profile("quick")
    out = []
    for seed in seeds:
        for variant, augment in CELLS:
            cell = apply_profile(Cell(model, variant, augment, epochs=200, dataset=dataset,
                                      seed=seed, precision="fp32"), "quick", profile)
            out.append(dataclasses.replace(cell, **QUICK) if quick else cell)
    return out


def run_study(cell: Cell, data: Dataset, device: torch.device, pruner: str) -> StudyRow:
    """Tune `cell` under the named rule, in a journal of its own (a fresh study)."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = tune_cell(cell, cut(cell, data), device, NullRunLog(),
                           TuneOptions(Path(tmp) / "optuna.journal", pruner=pruner))
    return StudyRow(f"{cell.name} · seed {cell.seed}", pruner, result.epochs_trained,
                    cell.trials * cell.epochs, result.complete, result.pruned,
                    result.summary.best_value, result.best.get("lr"),
                    time.perf_counter() - start)


def compare(cells: list[Cell], data: Dataset, device: torch.device,
            pruners: tuple[str, ...] = CANDIDATES,
            echo: Callable[[str], None] = lambda line: None) -> list[StudyRow]:
    """Every cell's study under every rule, rule by rule within a cell."""
    rows = []
    for cell in cells:
        for name in pruners:
            rows.append(r := run_study(cell, data, device, name))
            echo(f"  {r.study} / {r.pruner}: {r.epochs}/{r.full} epochs, best "
                 f"{_acc(r.best)} ({r.seconds:.0f}s)")
    return rows


def summarize(rows: list[StudyRow], baseline: str = DEFAULT) -> list[dict]:
    """Per rule: its epochs against the baseline rule's, and its best accuracy minus the
    baseline's on the same study (mean, min, max over studies), beside the spread of the
    baseline's best accuracy from study to study."""
    base = {r.study: r for r in rows if r.pruner == baseline}
    spread = [r.best for r in base.values() if r.best is not None]
    out = []
    for name in dict.fromkeys(r.pruner for r in rows):
        mine = [r for r in rows if r.pruner == name and r.study in base]
        diffs = [r.best - base[r.study].best for r in mine
                 if r.best is not None and base[r.study].best is not None]
        out.append({
            "pruner": name, "studies": len(mine),
            "epochs": sum(r.epochs for r in mine), "full": sum(r.full for r in mine),
            "epochs_vs_baseline": sum(r.epochs for r in mine)
            / max(1, sum(base[r.study].epochs for r in mine)),
            "mean_best": statistics.fmean(r.best for r in mine if r.best is not None)
            if any(r.best is not None for r in mine) else None,
            "best_minus_baseline": {"mean": statistics.fmean(diffs), "min": min(diffs),
                                    "max": max(diffs)} if diffs else None,
            "studies_worse": sum(d < 0 for d in diffs),
            "no_complete_trial": sum(r.best is None for r in mine),
            "baseline_best_std": statistics.stdev(spread) if len(spread) > 1 else None})
    return out


def _acc(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def table(rows: list[StudyRow], summary: list[dict]) -> str:
    """A line per (study, rule), then a line per rule against the first (the baseline)."""
    base = summary[0]["pruner"] if summary else DEFAULT
    lines = [f"{'study':<40} {'pruner':<11} {'epochs':>9} {'best':>6}"]
    lines += [f"{r.study:<40} {r.pruner:<11} {f'{r.epochs}/{r.full}':>9} {_acc(r.best):>6}"
              for r in rows]
    lines += ["", f"{'pruner':<11} {'studies':>7} {'epochs':>9} {'vs ' + base:>10} "
                  f"{'mean best':>9} {f'best - {base}: mean [min, max]':>31} {'worse':>5}"]
    for s in summary:
        d, epochs = s["best_minus_baseline"], f"{s['epochs']}/{s['full']}"
        diff = "-" if d is None else f"{d['mean']:+.3f} [{d['min']:+.3f}, {d['max']:+.3f}]"
        lines.append(f"{s['pruner']:<11} {s['studies']:>7} {epochs:>9} "
                     f"{s['epochs_vs_baseline']:>10.0%} {_acc(s['mean_best']):>9} {diff:>31} "
                     f"{s['studies_worse']:>5}")
    std = summary[0]["baseline_best_std"] if summary else None
    lines.append(f"study-to-study std of the {base} rule's best: {_acc(std)}")
    return "\n".join(lines)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("pruners", help="today's pruning rule against its candidates: epochs "
                       "trained and best validation accuracy over several studies")
    p.add_argument("--device", default="cpu", choices=train.DEVICES)
    p.add_argument("--pruners", nargs="+", default=list(CANDIDATES), choices=PRUNERS.names(),
                   help=f"rules to compare, the baseline first (default {' '.join(CANDIDATES)})")
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS),
                   help="cell seeds (default 0 1 2): each is one study of each of the three cells")
    p.add_argument("--model", default="cnn", choices=NETWORKS,
                   help="whose quick cells to tune (default cnn)")
    p.add_argument("--out", default="pruners.json", help="where to write the rows as JSON")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks it runs")
    p.add_argument("--from", dest="inputs", nargs="+", default=[], metavar="JSON",
                   help="train nothing: the table of earlier runs' JSON files together (runs "
                        "of different seeds, e.g. side by side in two processes)")
    return p


def merged(paths: list[str]) -> dict:
    """The rows, cells and machines of earlier runs' JSON files, as one result."""
    parts = []
    for path in paths:
        try:
            parts.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as e:
            raise UserError(f"--from {path}: cannot read it as `tailbench pruners` JSON "
                            f"({e}); give files that `tailbench pruners --out` wrote") from None
    return {"machine": [p["machine"] for p in parts], "sources": list(paths),
            "cells": [c for p in parts for c in p["cells"]],
            "rows": [r for p in parts for r in p["rows"]],
            "seconds": sum(p["seconds"] for p in parts)}


def _report(result: dict, baseline: str, out: str, note: str = "") -> None:
    rows = [StudyRow(**r) for r in result["rows"]]
    result["summary"] = summary = summarize(rows, baseline)
    print(f"\n{table(rows, summary)}\n\n{result['seconds']:.0f}s of studies{note}")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def run(args: argparse.Namespace, data: Dataset | None = None) -> int:
    if args.inputs:
        result = merged(args.inputs)
        _report(result, result["rows"][0]["pruner"] if result["rows"] else DEFAULT, args.out)
        return 0
    if not args.seeds:
        raise UserError("--seeds needs at least one seed")
    data = data or load_images()
    device = train.resolve_device(args.device)
    cells = studies(data.source, tuple(args.seeds), args.quick, args.model)
    print(f"tailbench pruners: {len(cells)} studies x {len(args.pruners)} rules on {device}",
          flush=True)
    start, load = time.perf_counter(), os.getloadavg()[0]
    rows = compare(cells, data, device, tuple(args.pruners), echo=lambda s: print(s, flush=True))
    about = machine(Context(device, data, {}, 0)) | {"load_before": load,
                                                     "load_after": os.getloadavg()[0]}
    result = {"machine": about, "cells": [c.params() for c in cells],
              "rows": [dataclasses.asdict(r) for r in rows],
              "seconds": time.perf_counter() - start}
    _report(result, args.pruners[0], args.out,
            " (--quick: tiny sizes, these numbers decide nothing)" * args.quick)
    return 0
