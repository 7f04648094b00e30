"""The `tailbench` command: train one model, run a grid, write the report, measure speed."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
import uuid
from pathlib import Path

from benchmark.app import launchers
from benchmark.app.console import Console, one_line_warnings, quiet_libraries
from benchmark.data import SOURCES, default_data_dir, resolve_name
from benchmark.errors import UserError
from benchmark.models import MODELS
from benchmark.train import (
    DEVICES,
    PRECISIONS,
    Diverged,
    bf16_emulated,
    resolve_precision,
)


def _number(kind: type, low: float = 0, low_ok: bool = True):
    """An argparse type: a finite int or float, at least `low` (or above it)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or value < low or (value == low and not low_ok):
            raise argparse.ArgumentTypeError(
                f"must be {'>=' if low_ok else '>'} {low} and finite, got {text}")
        return value

    return parse


_positive = _number  # >= 0


def _workers(text: str) -> int | str:
    """--workers: a count >= 1, or auto (launchers.Local.workers says how many)."""
    return text if text == "auto" else _number(int, 1)(text)


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="auto", choices=list(SOURCES),
                   help="auto: CIFAR-10 where present or downloadable, else Fashion-MNIST")
    p.add_argument("--data-dir", default=None,
                   help=f"where the data lives (env TAILBENCH_DATA, default {default_data_dir()})")
    p.add_argument("--device", default="auto", choices=DEVICES)


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train one model and print a per-epoch table")
    p.add_argument("--model", required=True, choices=list(MODELS))
    _data_args(p)
    p.add_argument("--epochs", type=_positive(int), default=2)
    p.add_argument("--limit", type=_positive(int), default=0,
                   help="train on this many images (stratified); 0 = all")
    p.add_argument("--batch-size", type=_number(int, 1), default=1024)
    p.add_argument("--lr", type=_number(float, 0, low_ok=False), default=0.01)
    p.add_argument("--seed", type=int, default=0)


def cmd_train(args: argparse.Namespace) -> int:
    from benchmark.data import load_dataset
    from benchmark.train import Split, build_model, fit, resolve_device

    device = resolve_device(args.device)
    data = load_dataset(args.dataset, args.data_dir)
    if args.limit:
        data = data.limit(train=args.limit, test=max(1000, args.limit // 5), seed=args.seed)
    train = Split(data.train_x.to(device), data.train_y.to(device))
    test = Split(data.test_x.to(device), data.test_y.to(device))
    model = build_model(args.model, data.num_classes, args.seed, device)
    print(f"{args.model} on {data.source}: {len(train.y)} train / {len(test.y)} test images, "
          f"{device}")
    print(f"{'epoch':>5} {'loss':>8} {'train acc':>9} {'test acc':>8} {'seconds':>7}")

    def show(epoch: int, m: dict[str, float]) -> None:
        print(f"{epoch:>5} {m['train_loss']:>8.4f} {m['train_acc']:>9.2%} {m['test_acc']:>8.2%} "
              f"{m['seconds']:>7.1f}", flush=True)

    fit(model, train, test, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        seed=args.seed, callback=show, progress=sys.stderr.isatty())
    return 0


def _trial_args(p: argparse.ArgumentParser):
    t = p.add_argument_group("tuning (Optuna)")
    t.add_argument("--trials", type=_positive(int), default=None,
                   help="Optuna trials per cell (default: the profile's)")
    t.add_argument("--no-tune", action="store_true",
                   help="the reference's fixed hyperparameters (lr 0.01, sigma 0.05), no study")
    p.add_argument("--seeds", type=_number(int, 1), default=None,
                   help="repetitions per cell, each with its own seed (default: the profile's); "
                        "more than before adds the missing ones")
    return t


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    """Cell fields the command line sets (trials is part of each cell's key, seeds is not)."""
    out: dict[str, object] = {"trials": 0} if args.no_tune else (
        {"trials": args.trials} if args.trials is not None else {})
    return out | ({"seeds": args.seeds} if args.seeds is not None else {})


def _run_parser(sub) -> None:
    p = sub.add_parser("run", help="run a grid of cells, one MLflow run each, then the report")
    p.add_argument("--grid", default="full", help="grid name in benchmark/grids or a .toml path")
    p.add_argument("--profile", default="quick", help="paper (reference epochs, full data) "
                   "or quick (small data and epochs, for a CPU)")
    _data_args(p)
    for name in ("model", "variant", "remedy"):
        old = ["--augment"] if name == "remedy" else []  # the remedy axis's name until layout 4
        p.add_argument(f"--{name}", *old, action="append", default=[], dest=name,
                       help=f"run only cells with this {name} (repeatable)")
    p.add_argument("--force", action="store_true", help="re-run cells that finished before")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="what training computes in (part of each cell's key); auto: a cell's "
                        "own setting, else bf16 autocast on CUDA and fp32 on a CPU")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store (env MLFLOW_TRACKING_URI, default sqlite:///runs/mlflow.db)")
    p.add_argument("--no-report", action="store_true", help="skip writing the report at the end")
    p.add_argument("--workers", type=_workers, default=None,
                   help="workers sharing the grid: processes here (default: one per GPU, "
                        "else 1; auto: one per GPU, else one per CPU core up to 4, at most "
                        "one per cell), or SLURM jobs with --launcher slurm (default 1)")
    launchers.add_arguments(p)
    t = _trial_args(p)
    t.add_argument("--timeout", type=_positive(float), default=None,
                   help="stop each cell's study after this many seconds")
    t.add_argument("--storage", default=None,
                   help="Optuna storage: a journal file path (default runs/optuna.journal), "
                        "sqlite:///... or postgresql://...")
    t.add_argument("--jobs", type=_positive(int), default=1,
                   help="trials run at once per study (threads sharing the device)")


PLURAL = {"model": "models", "variant": "variants", "remedy": "remedies"}


def _no_cell(args: argparse.Namespace, filters: dict[str, list[str] | None]) -> str:
    """Why the --model/--variant/--remedy filters leave no cell: the first value the grid
    has no cell of, with the values it has; else the combination that none has."""
    from benchmark.cells import expand

    cells = [e.cell for e in expand(args.grid, args.profile, args.dataset, None,
                                    _overrides(args))]
    for field, wanted in filters.items():
        have = sorted({getattr(c, field) for c in cells})
        missing = [w for w in wanted or [] if w not in have]
        if missing:
            return (f"--{field} {missing[0]}: grid {args.grid!r} ({args.profile}) has no cell "
                    f"of {field} {missing[0]!r}; its {PLURAL[field]}: {', '.join(have)}")
    asked = ", ".join(f"{k} {' or '.join(v)}" for k, v in filters.items() if v)
    return f"no cell of grid {args.grid!r} ({args.profile}) is {asked}"


def cmd_run(args: argparse.Namespace) -> int:
    """Check everything (launcher options, grid, device, both stores) before any data is
    read, then run the cells here, in worker processes or in SLURM jobs, and end with the
    results table and the report (not when SLURM jobs are submitted without waiting)."""
    from benchmark.app.runner import Invocation
    from benchmark.app.workers import WorkerPlan
    from benchmark.cells import expand
    from studies import open_studies
    from tracking.store import Store

    launcher = launchers.launcher(args)  # bad --slurm-* options, unshareable stores stop here
    filters = {"model": args.model, "variant": args.variant, "remedy": args.remedy}
    entries = expand(args.grid, args.profile, args.dataset, filters, _overrides(args))
    if not entries:
        raise UserError(_no_cell(args, filters))
    device = launcher.device(args.device)  # on SLURM: resolved by each job on its node
    open_studies(args.storage)  # a malformed or unreachable Optuna storage fails here
    source, why = resolve_name(args.dataset, Path(args.data_dir or default_data_dir()))
    store = Store(args.tracking_uri, f"tailbench/{source}/{args.profile}")  # and the tracking
    invocation = Invocation(uuid.uuid4().hex[:12], args.force,
                            {"grid": args.grid, "profile": args.profile, "dataset": source,
                             "device": str(device), "started_ms": str(_started_ms())})
    compute = launcher.compute_device(args.device)
    entries = [dataclasses.replace(e, cell=dataclasses.replace(
        e.cell, dataset=source, precision=resolve_precision(
            e.cell.precision if args.precision == "auto" else args.precision, compute)))
        for e in entries]  # the dataset and precision each cell runs with: in its key
    plan = launcher.prepare(WorkerPlan(tuple(entries), source, args.data_dir, args.device,
        store.uri, store.experiment_name, _tuning(args), invocation,
        progress=sys.stderr.isatty()))  # for SLURM: absolute paths, no bars
    console = Console()
    if args.dataset == "auto":
        console.note(f"dataset auto -> {source} ({why})")
    emulated = bf16_emulated(compute) if device == compute else ""  # not SLURM's nodes
    if emulated and any(e.cell.precision == "bf16" for e in entries):
        console.note(f"bf16 on this CPU ({emulated}: no bf16 instructions) is emulated, "
                     "about 10x slower than fp32 "
                     "(`tailbench perf --only perf_precision.speed` measures it); "
                     "--precision fp32 trains at full speed")
    n = len(entries)
    console.note(f"{n} cell{'s' * (n != 1)} of grid {args.grid!r} ({args.profile}) on {source}, "
                 f"{device}; MLflow {store.uri}, experiment {store.experiment_name}, "
                 f"run {invocation.id}")
    failed = launcher.run(plan, args.workers)
    if failed is None:  # SLURM jobs submitted, not waited for
        return 0
    try:
        df = _finish(store, invocation.id, report=not args.no_report)
    except UserError:  # no cell of this run was recorded: say why, if a worker failed
        if not failed:
            raise
        df = None
    for line in failed:
        console.note(f"failed: {line}")
    if df is None:
        return 1
    ok = set(df.loc[df["outcome"] == "ok", "cell_key"]) if len(df) else set()
    return int(bool(failed) or any(e.cell.key not in ok for e in plan.entries))


def _started_ms() -> int:
    """When this process started (Linux: /proc), so a run's start-up is measured from the
    command's first instant, imports included; now, where /proc is not there."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return int((boot + ticks / os.sysconf("SC_CLK_TCK")) * 1000)
    except (OSError, ValueError, IndexError, StopIteration):
        return int(time.time() * 1000)


def _report_parser(sub) -> None:
    for name, what in (("report", "write reports/<experiment>/report.md and report.html "
                                  "(and the results table) from the runs in MLflow"),
                       ("results", "write the results table, a row per repetition, from the "
                                   "runs in MLflow to runs/results.parquet and print it")):
        p = sub.add_parser(name, help=what)
        p.add_argument("--tracking-uri", default=None, help="MLflow store "
                       "(env MLFLOW_TRACKING_URI, default sqlite:///runs/mlflow.db)")
        p.add_argument("--experiment", default=None, help="default: the experiment of the "
                       "latest `tailbench run` on the store (e.g. tailbench/cifar10/paper)")
        p.add_argument("--invocation", default=None, help="show the cells of this run's id "
                       "(the `invocation` tag of a cell run); default: the latest run's")
        p.add_argument("--out", default=None, help="the Parquet file (default: results.parquet "
                       "beside a local store's mlflow.db, else runs/results.parquet)")


def cmd_report(args: argparse.Namespace) -> int:
    """The cells of one invocation, found in MLflow (never by expanding a grid again)."""
    from tracking.store import Store, latest_experiment

    store = Store(args.tracking_uri, args.experiment or latest_experiment(args.tracking_uri),
                  write=False)  # it only reads runs: a read-only store will do
    invocation = store.invocation(args.invocation)
    if invocation is None:
        raise UserError(f"experiment {store.experiment_name} at {store.uri} records no "
                        "`tailbench run` yet: run one first, or pass --invocation ID")
    _finish(store, invocation, report=args.command == "report", out=args.out)
    return 0


def _tuning(args: argparse.Namespace):
    from studies import TuneOptions

    return TuneOptions(args.storage, args.timeout, args.jobs or 1,
                       progress=sys.stderr.isatty())


def _finish(store, invocation: str, report: bool, out: str | None = None):
    """The results table from MLflow: written to Parquet (every repetition of the experiment),
    printed and made into the report (the cells of `invocation`, each with the repetitions
    its last run asked for). Returns the table."""
    from tracking.report import build_report, results_table
    from tracking.results import default_path, invocation_cells, load_results, write_results

    df = load_results(store)
    path = write_results(df, Path(out) if out else default_path(store))
    expected = invocation_cells(store, invocation)
    if not expected:
        raise UserError(f"invocation {invocation!r} ran no cell of experiment "
                        f"{store.experiment_name}: check the id (a cell run's `invocation` tag)")
    print(results_table(df, expected))
    n = len(expected)
    print(f"results: {path} ({len(df)} repetitions); above: the {n} cell{'s' * (n != 1)} of "
          f"run {invocation}")
    if report:
        md = build_report(df, expected, store.experiment_name, store.uri)
        print(f"report: {md} (and report.html beside it)")
    return df


# the commands defined here; the others' modules are imported only when one of them (or the
# whole parser: --help, a bad command) is asked for: perf imports torchvision, about 2 s of a
# `tailbench run`'s start-up that the run never uses
OWN = ("train", "run", "report", "results")
ALL = (*OWN, "perf", "pruners", "register", "gpu-check")


def parser(full: bool = True) -> argparse.ArgumentParser:
    """The command's parser; `full=False` leaves out the subcommands not in OWN, with the same
    usage line (for an argv whose command is in OWN, it parses it as the full one does)."""
    p = argparse.ArgumentParser(prog="tailbench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True,
                           metavar=None if full else "{" + ",".join(ALL) + "}")
    _train_parser(sub)
    _run_parser(sub)
    _report_parser(sub)
    if full:
        from benchmark.app import gpu_check, perf, perf_pruners, register

        perf.add_parser(sub)
        perf_pruners.add_parser(sub)
        register.add_parser(sub)
        gpu_check.add_parser(sub)
    return p


def command(name: str):
    """The function that runs the command `name`."""
    own = {"train": cmd_train, "run": cmd_run, "report": cmd_report, "results": cmd_report}
    if name in own:
        return own[name]
    from benchmark.app import gpu_check, perf, perf_pruners, register

    return {"perf": perf.run, "pruners": perf_pruners.run, "register": register.run,
            "gpu-check": gpu_check.run}[name]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser(full=not argv or argv[0] not in OWN).parse_args(argv)
    quiet_libraries()
    one_line_warnings()
    return _dispatch(args)


def _dispatch(args: argparse.Namespace) -> int:
    """A UserError (bad input, missing data, an unusable store) or a diverged `train` is one
    line and exit 2; anything else is a bug or a fault and keeps its traceback."""
    start = time.perf_counter()
    try:
        return command(args.command)(args)
    except (UserError, Diverged) as e:
        Console().error(args.command, str(e))
        return 2
    except KeyboardInterrupt:
        Console().note(f"{args.command} interrupted after {time.perf_counter() - start:.0f}s")
        return 130


if __name__ == "__main__":
    sys.exit(main())
