"""The options of `tailbench run --launcher slurm`, checked before anything is submitted, and
the check that the worker jobs can reach both stores from the cluster's nodes."""

from __future__ import annotations

import argparse
import ipaddress
import re
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from benchmark.app.console import Console
from benchmark.errors import UserError
from studies.storage import is_journal, masked, storage_url

DEFAULT_FOLDER = "runs/slurm/%j"  # submitit's folder: %j is the job id (array: 12_0, 12_1, ...)
# sbatch options that tailbench or submitit set: through their own flag, or not at all
OWN_FLAG = {"time": "--slurm-time", "partition": "--slurm-partition",
            "cpus-per-task": "--slurm-cpus-per-task", "gpus-per-task": "--slurm-gpus-per-task"}
SUBMITIT_SETS = ("array", "output", "error", "signal", "open-mode", "job-name")
_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class SlurmOptions:
    """How the worker jobs are asked of SLURM (sbatch's own names in `extra`)."""

    partition: str | None = None
    time_min: int = 60  # each job's time limit; at the limit it is checkpointed and requeued
    cpus_per_task: int | None = None  # None: the cluster's default
    gpus_per_task: int | None = None
    extra: tuple[tuple[str, str | bool], ...] = ()  # --slurm-option KEY=VALUE (KEY: a flag)
    setup: tuple[str, ...] = ()  # shell lines run before the worker in each job
    folder: str = DEFAULT_FOLDER
    requeues: int = 10  # time limits a job may hit and be requeued after (submitit's timeouts)
    shared_fs: bool = False  # the user says: store files are on a file system every node mounts
    wait: bool = True

    @property
    def signal_delay_s(self) -> int:
        """USR2 this long before the time limit (submitit's 90 s; less for short tests)."""
        return min(90, 12 * self.time_min)

    def parameters(self, job_name: str) -> dict[str, object]:
        """submitit.SlurmExecutor.update_parameters(**this)."""
        given = {"partition": self.partition, "cpus_per_task": self.cpus_per_task,
                 "gpus_per_task": self.gpus_per_task}
        return {"job_name": job_name, "time": self.time_min, "signal_delay_s": self.signal_delay_s,
                **{k: v for k, v in given.items() if v is not None},
                **({"additional_parameters": dict(self.extra)} if self.extra else {}),
                **({"setup": list(self.setup)} if self.setup else {})}


def sbatch_option(text: str) -> tuple[str, str | bool]:
    """An argparse type: KEY=VALUE (an sbatch long option, e.g. qos=high) or KEY (a flag)."""
    key, eq, value = text.strip().removeprefix("--").partition("=")
    key = key.replace("_", "-")
    if not _KEY.match(key):
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE with KEY an sbatch option such as qos or account, got {text!r}")
    if key in OWN_FLAG:
        raise argparse.ArgumentTypeError(f"{key} has its own option: {OWN_FLAG[key]}")
    if key in SUBMITIT_SETS:
        raise argparse.ArgumentTypeError(f"{key} is set by tailbench and submitit for each job")
    if eq and not value:
        raise argparse.ArgumentTypeError(f"{key}= has no value; write {key} alone for a flag")
    return key, value if eq else True


def _count(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {text}")
        return value

    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    s = p.add_argument_group("SLURM (--launcher slurm; README: On a SLURM cluster)")
    s.add_argument("--slurm-partition", default=None, metavar="NAME",
                   help="the partition (default: the cluster's default partition)")
    s.add_argument("--slurm-time", type=_count(1), default=None, metavar="MINUTES",
                   help="each job's time limit (default 60); at the limit a job is requeued "
                        "and resumes")
    s.add_argument("--slurm-cpus-per-task", type=_count(1), default=None, metavar="N",
                   help="CPUs per worker job, also its torch threads (default: the cluster's)")
    s.add_argument("--slurm-gpus-per-task", type=_count(0), default=None, metavar="N",
                   help="GPUs per worker job")
    s.add_argument("--slurm-option", type=sbatch_option, action="append", default=[],
                   metavar="KEY=VALUE", help="any other sbatch option, e.g. qos=high, "
                   "account=proj, mem=16G, or a flag alone (repeatable)")
    s.add_argument("--slurm-setup", action="append", default=[], metavar="LINE",
                   help="a shell line each job runs first, e.g. 'module load cuda' (repeatable)")
    s.add_argument("--slurm-folder", default=None, metavar="DIR",
                   help="the jobs' logs and submitit's files "
                   f"(default {DEFAULT_FOLDER.replace('%', '%%')}, %%j the job id); on a file "
                   "system the nodes mount")
    s.add_argument("--slurm-requeues", type=_count(0), default=None, metavar="N",
                   help="how often a job may hit its time limit and be requeued (default 10)")
    s.add_argument("--slurm-shared-fs", action="store_true",
                   help="the store files (an Optuna journal, a SQLite database) are on a file "
                        "system every node mounts: accept them")
    s.add_argument("--no-wait", action="store_true", help="submit the jobs, print their ids "
                   "and return (`tailbench results` / `report` read their results later)")


def options(args: argparse.Namespace) -> SlurmOptions | None:
    """The SLURM options of `args` (None for --launcher local); SLURM options given to the
    local launcher are an error, not silently ignored."""
    given = {"--slurm-partition": args.slurm_partition, "--slurm-time": args.slurm_time,
             "--slurm-cpus-per-task": args.slurm_cpus_per_task,
             "--slurm-gpus-per-task": args.slurm_gpus_per_task,
             "--slurm-option": args.slurm_option, "--slurm-setup": args.slurm_setup,
             "--slurm-folder": args.slurm_folder, "--slurm-requeues": args.slurm_requeues,
             "--slurm-shared-fs": args.slurm_shared_fs, "--no-wait": args.no_wait}
    if args.launcher != "slurm":
        stray = [k for k, v in given.items() if v not in (None, [], False)]
        if stray:
            raise UserError(f"{', '.join(stray)}: only for --launcher slurm; add "
                            "--launcher slurm, or leave them out")
        return None
    default = SlurmOptions()
    return SlurmOptions(
        args.slurm_partition, args.slurm_time or default.time_min, args.slurm_cpus_per_task,
        args.slurm_gpus_per_task, tuple(args.slurm_option), tuple(args.slurm_setup),
        args.slurm_folder or default.folder,
        default.requeues if args.slurm_requeues is None else args.slurm_requeues,
        args.slurm_shared_fs, not args.no_wait)


# --- can the nodes reach the stores? ---------------------------------------------------------

def _loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _where(kind: str, text: str) -> tuple[str, str | None]:
    """("file", path) for a store in a local file, ("host", host) for one on a server."""
    if kind == "optuna":
        url = storage_url(text)
        if is_journal(url):
            return "file", url
    else:
        url = text
    if url.startswith(("sqlite:", "file:")):
        return "file", url
    return "host", urlsplit(url).hostname


def partition_nodes(partition: str | None) -> set[str] | None:
    """The host names of the partition's nodes (sinfo), or None when sinfo cannot say."""
    cmd = ["sinfo", "-h", "-N", "-o", "%n"] + (["-p", partition] if partition else [])
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    nodes = set(out.stdout.split())
    return nodes if out.returncode == 0 and nodes else None


def this_host_only(partition: str | None) -> bool:
    """Whether every node of the partition is this machine (a one-node cluster)."""
    nodes = partition_nodes(partition)
    here = {socket.gethostname(), socket.gethostname().split(".")[0], socket.getfqdn()}
    return bool(nodes) and nodes <= here


def check_stores(storage: str, tracking_uri: str, options: SlurmOptions,
                 here_only: Callable[[str | None], bool] = this_host_only) -> None:
    """Refuse stores the worker jobs could not share: a server on this machine's loopback
    (unless every node is this machine), a file on this machine (unless every node is this
    machine, or the user says its folder is shared). SQLite over a network file system is
    accepted with a warning: its locks are only as good as the file system's."""
    stores = [("Optuna storage", *_where("optuna", storage), masked(storage)),
              ("MLflow tracking store", *_where("mlflow", tracking_uri), masked(tracking_uri))]
    checked: dict[str, bool] = {}

    def one_node() -> bool:
        if "here" not in checked:
            checked["here"] = here_only(options.partition)
        return checked["here"]

    where = f"partition {options.partition}" if options.partition else "the default partition"
    for name, kind, place, shown in stores:
        if kind == "host" and _loopback(place) and not one_node():
            raise UserError(
                f"{name} {shown} is on this machine's loopback, which the nodes of {where} "
                "cannot reach: serve it on an address they reach (README: On a SLURM cluster)")
        if kind == "file" and not options.shared_fs and not one_node():
            raise UserError(
                f"{name} {shown} is a file on this machine, and the jobs run on other nodes: "
                "use PostgreSQL and an MLflow server (make services), or pass "
                "--slurm-shared-fs if its folder is on a file system every node mounts")
        if kind == "file" and place.startswith("sqlite") and not one_node():  # shared_fs
            Console().note(f"{name} {shown}: SQLite on a shared file system is only as safe "
                           "as its locks (many NFS setups break them); PostgreSQL is the safe "
                           "choice")


def absolute(store: str) -> str:
    """A store's path or sqlite:/// URL made absolute: a job may start in another folder."""
    if store.startswith("sqlite:///") and not store.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(store.removeprefix("sqlite:///")).resolve())
    return store if "://" in store else str(Path(store).expanduser().resolve())
