"""`tailbench register CELL`: a cell's model into the MLflow model registry, under a readable
name, with the cell's key, dataset and metrics as tags."""

from __future__ import annotations

import argparse

from benchmark.app.console import Console
from benchmark.errors import UserError
from tracking import results
from tracking.models import model_of, register, registered_name
from tracking.store import KIND, Store, latest_experiment

HELP = ("put a cell's model (one repetition's; default repetition 0) in the MLflow model "
        "registry")


def add_parser(sub) -> None:
    p = sub.add_parser("register", help=HELP, description=HELP)
    p.add_argument("cell", help="the cell's name (\"cnn · long-tail · none\") or key")
    p.add_argument("--repetition", type=int, default=0,
                   help="which repetition's model (default 0: not the best on the test set, "
                        "which would select on it)")
    p.add_argument("--name", default=None,
                   help="registered model name (default tailbench-<model>-<variant>-<remedy>)")
    p.add_argument("--tracking-uri", default=None, help="MLflow store "
                   "(env MLFLOW_TRACKING_URI, default sqlite:///runs/mlflow.db)")
    p.add_argument("--experiment", default=None, help="default: the experiment of the "
                   "latest `tailbench run` on the store")


def _cell_run(store: Store, cell: str):
    quoted = cell.replace("'", "\\'")
    runs = store.search(f"tags.{KIND} = 'cell' and tags.cell_key = '{quoted}'",
                        ["attributes.start_time DESC"]) or \
        store.search(f"tags.{KIND} = 'cell' and tags.cell_name = '{quoted}'",
                     ["attributes.start_time DESC"])
    if not runs:
        raise UserError(f"experiment {store.experiment_name} has no cell {cell!r}: name it as "
                        "the results table does (\"cnn · balanced · none\") or by its key")
    return runs[0]  # the newest run of that name (a --force or a new budget makes another)


def _repetition(store: Store, cell_run, repetition: int):
    reps = [r for r in store.children(cell_run.info.run_id, "repetition")
            if r.data.tags.get("repetition") == str(repetition)
            and r.data.tags.get("outcome") == results.OK and r.info.status == "FINISHED"]
    if not reps:
        raise UserError(f"cell {cell_run.data.tags.get('cell_name')} has no finished repetition "
                        f"{repetition} that learned (see `tailbench results`)")
    return max(reps, key=lambda r: r.info.start_time)


def run(args: argparse.Namespace) -> int:
    store = Store(args.tracking_uri, args.experiment or latest_experiment(args.tracking_uri))
    cell_run = _cell_run(store, args.cell)
    rep = _repetition(store, cell_run, args.repetition)
    tags, m = cell_run.data.tags, rep.data.metrics
    name = args.name or registered_name(tags.get("cell_name", args.cell))
    keep = ("final_test_acc", "balanced_acc", "head_acc", "tail_acc", "macro_f1")
    version = register(store.client, model_of(store.client, rep), name, {
        "cell_key": tags.get("cell_key"), "cell_name": tags.get("cell_name"),
        "dataset": tags.get("dataset"), "experiment": store.experiment_name,
        "repetition": args.repetition, "repetition_run_id": rep.info.run_id,
        **{k: f"{m[k]:.4f}" for k in keep if k in m},
        **{k: f"{v:.4f}" for k, v in cell_run.data.metrics.items()
           if k in ("test_acc_mean", "test_acc_std", "tail_acc_mean", "tail_acc_std")}})
    console = Console()
    console.note(f"registered {name} version {version.version} (cell {tags.get('cell_key')}, "
                 f"repetition {args.repetition}, test acc {m.get('final_test_acc', 0):.4f})")
    console.note(f"load it: mlflow.set_tracking_uri({store.uri!r}); "
                 f"mlflow.pytorch.load_model('models:/{name}/{version.version}')")
    return 0
