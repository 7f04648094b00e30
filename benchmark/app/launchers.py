"""Launchers: where the workers of `tailbench run` run.

- local (the default): in this process, or `--workers N` processes spawned on this machine.
- slurm: `--workers N` worker jobs (one SLURM job array) submitted through submitit. Each job
  runs the same WorkerPlan against the shared stores, which share the grid out among the jobs
  exactly as among local workers. Before a job's time limit, or when the cluster preempts it
  with a signal, submitit sends it USR2, calls `WorkerJob.checkpoint` and requeues it; the
  requeued job runs the plan again, and the stores make that a resumption: it trains only what
  has no outcome yet. The command waits for the jobs (or with --no-wait returns at once).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path

import submitit
import torch
from submitit.core.utils import FailedJobError
from submitit.helpers import DelayedSubmission

from benchmark.app import slurm_options
from benchmark.app.console import Console, quiet_libraries
from benchmark.app.runner import Outcome
from benchmark.app.slurm_options import SlurmOptions, absolute, check_stores
from benchmark.app.workers import WorkerPlan, spawn, work
from benchmark.data import default_data_dir
from benchmark.errors import UserError
from benchmark.train import resolve_device
from studies.storage import storage_url
from tracking.store import tracking_uri

LAUNCHERS = ("local", "slurm")
# seconds between looks at the jobs while waiting: a look is a stat of each job's result file
# (submitit's Job.done); submitit spaces out its own sacct calls (2 s, then growing), as its
# Job.wait, which looks every second. 5 s made a finished run wait up to 5 s for its command.
POLL_S = 1.0
CPU_WORKERS = 4  # the most `--workers auto` starts on a CPU (measured on 2 cores only)
SAYS = {"finished": "finished", "skipped": "skipped (done before)", "failed": "failed",
        "helped": "helped with its trials", "elsewhere": "left to another worker"}


def auto_threads() -> int:
    """The torch threads each of `--workers auto`'s workers trains with on this CPU (given
    cells enough for them all): its cores split between them."""
    cores = os.cpu_count() or 1
    return max(1, cores // min(cores, CPU_WORKERS))


@dataclass(frozen=True)
class JobReport:
    """What a worker job returns: where it ran, how often it was checkpointed, its outcomes."""

    host: str
    checkpoints: int
    outcomes: tuple[Outcome, ...]

    def line(self) -> str:
        counts: dict[str, int] = {}
        for o in self.outcomes:
            counts[o.status] = counts.get(o.status, 0) + 1
        cells = ", ".join(f"{n} cell{'s' * (n != 1)} {SAYS.get(status, status)}"
                          for status, n in counts.items()) or "no cell"
        again = f"; checkpointed and requeued {self.checkpoints}x" if self.checkpoints else ""
        return f"ran on {self.host}: {cells}{again}"


class WorkerJob:
    """What a SLURM job runs: the plan, in the job's process. The plan holds no progress (the
    stores do), so the checkpoint that submitit pickles at a time limit or a preemption is
    the same job again; it only counts its checkpoints, for the report."""

    def __init__(self, plan: WorkerPlan, checkpoints: int = 0):
        self.plan, self.checkpoints = plan, checkpoints

    def __call__(self) -> JobReport:
        quiet_libraries()
        host = socket.gethostname()
        again = f", after {self.checkpoints} checkpoint(s)" if self.checkpoints else ""
        Console().note(f"worker job on {host} (pid {os.getpid()}){again}")
        return JobReport(host, self.checkpoints, tuple(work(self.plan)))

    def checkpoint(self) -> DelayedSubmission:
        """Called by submitit on USR2; it then runs `scontrol requeue` as a child of this
        process and exits. The requeue sends SIGTERM to every process of the job, and a
        child that has not exited yet dies of it (seen on a one-node cluster: the requeue
        then raises inside the training). An ignored signal stays ignored across exec, so
        ignoring SIGTERM here protects that child; submitit only logs SIGTERM anyway, and
        SLURM's SIGKILL still ends the job after its KillWait."""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return DelayedSubmission(WorkerJob(self.plan, self.checkpoints + 1))


class Local:
    """Workers on this machine: this process, or spawned processes (one per GPU by default)."""

    def device(self, name: str) -> torch.device:
        return resolve_device(name)

    def compute_device(self, name: str) -> torch.device:
        """The kind of device the cells will train on, for `--precision auto`."""
        return resolve_device(name)

    def prepare(self, plan: WorkerPlan) -> WorkerPlan:
        return plan

    @staticmethod
    def workers(plan: WorkerPlan, asked: int | str | None) -> int:
        """How many worker processes: as asked; by default one per GPU, else 1; `auto`: one
        per GPU, else one per CPU core (each with one torch thread) up to CPU_WORKERS, and
        no more than the cells. On this project's 2-core CPU, two one-thread workers train
        1.2-1.75x the images of one two-thread process (a quiet side-by-side probe; `make
        perf`'s workers rows time it)."""
        if isinstance(asked, int):
            return asked
        if resolve_device(plan.device).type == "cuda":
            return torch.cuda.device_count()
        if asked != "auto":
            return 1
        return max(1, min(os.cpu_count() or 1, CPU_WORKERS, len(plan.entries)))

    def run(self, plan: WorkerPlan, workers: int | str | None) -> list[str]:
        """Run the plan; returns a line for each failure."""
        n = self.workers(plan, workers)
        if n > 1:
            codes = spawn(plan, n)
            return [f"worker {i + 1} exited with {c}" for i, c in enumerate(codes) if c]
        return [f"{o.cell.name}: {o.error}" for o in work(plan) if o.status == "failed"]


def slurm_executor(options: SlurmOptions, job_name: str):
    """submitit's SlurmExecutor with the options (the tests put its LocalExecutor here)."""
    try:
        executor = submitit.SlurmExecutor(folder=options.folder,
                                          max_num_timeout=options.requeues)
    except RuntimeError:  # submitit looks for srun
        raise UserError("--launcher slurm needs SLURM's commands (srun, sbatch) on PATH: run "
                        "it on a machine of the cluster, such as a login node") from None
    try:
        executor.update_parameters(**options.parameters(job_name))
    except ValueError as e:
        raise UserError(f"submitit refused the SLURM options: {str(e).splitlines()[0]}") from None
    return executor


class Slurm:
    """Worker jobs on a SLURM cluster, through submitit."""

    def __init__(self, options: SlurmOptions, console: Console | None = None):
        self.options, self.console = options, console or Console()

    def device(self, name: str) -> str:
        return name  # resolved by each job on its node ("auto": the GPU it was given, if any)

    def compute_device(self, name: str) -> torch.device:
        """CUDA when the jobs ask for GPUs (or --device cuda), else the CPU: what
        `--precision auto` resolves against, here, before any job starts."""
        gpus = name == "cuda" or (name == "auto" and bool(self.options.gpus_per_task))
        return torch.device("cuda" if gpus else "cpu")

    def prepare(self, plan: WorkerPlan) -> WorkerPlan:
        """The plan as the jobs need it: every path absolute (a job may start in another
        folder), no progress bars (the logs are files), torch threads = the CPUs asked for."""
        storage = storage_url(plan.tuning.storage)
        return replace(plan, data_dir=str(Path(plan.data_dir or default_data_dir()).resolve()),
                       tracking_uri=absolute(plan.tracking_uri),
                       tuning=replace(plan.tuning, storage=absolute(storage), progress=False),
                       progress=False, threads=self.options.cpus_per_task, gpu=None)

    def run(self, plan: WorkerPlan, workers: int | str | None) -> list[str] | None:
        """Submit the jobs, then wait for them and return a line for each failure; with
        --no-wait return None once they are submitted."""
        executor = slurm_executor(self.options, f"tailbench-{plan.invocation.id}")
        jobs = submit(executor, plan, workers if isinstance(workers, int) else 1)
        o = self.options
        ids = ", ".join(j.job_id for j in jobs)
        self.console.note(
            f"{len(jobs)} worker job{'s' * (len(jobs) != 1)} submitted ({ids}): "
            f"{o.partition or 'default'} partition, {o.time_min} min each, requeued at the "
            f"limit up to {o.requeues} times; logs in {jobs[0].paths.folder}"
            + (" and beside it" if len(jobs) > 1 else ""))
        if not o.wait:
            self.console.note(f"not waiting: `squeue -j {jobs[0].job_id.split('_')[0]}` shows "
                              "them; `tailbench results` and `tailbench report` with the same "
                              "--tracking-uri read what they record")
            return None
        return wait_for(jobs, self.console)


def submit(executor, plan: WorkerPlan, n: int) -> list:
    """n WorkerJobs of the plan: one job array where the executor makes one (SLURM)."""
    try:  # submitit prints what sbatch says on stderr too: said once, below, instead
        with contextlib.redirect_stderr(io.StringIO()), executor.batch():
            jobs = [executor.submit(WorkerJob(plan)) for _ in range(n)]
    except FailedJobError as e:  # sbatch said no: a partition, account or option it refuses
        first = next((line for line in str(e).splitlines() if line.strip()), "no reason given")
        raise UserError(f"SLURM refused the worker jobs: {first.strip()}") from None
    return jobs


def wait_for(jobs: list, console: Console, poll_s: float | None = None) -> list[str]:
    """Wait for the jobs, saying when one changes state; then a line for each of them, and
    return a line for each failure (a failed cell, a job that ended without a result)."""
    seen: dict[str, str] = {}
    try:
        while True:
            done = [job.done() for job in jobs]
            for job in jobs:
                state = job.state  # UNKNOWN: not yet in sacct, or no sacct
                if seen.get(job.job_id, "UNKNOWN") != state:
                    console.note(f"job {job.job_id}: {state}")
                    seen[job.job_id] = state
            if all(done):
                break
            time.sleep(poll_s or POLL_S)
    except KeyboardInterrupt:
        array = jobs[0].job_id.split("_")[0]
        console.note(f"stopped waiting; the jobs go on (`scancel {array}` stops them) and "
                     "`tailbench results` reads what they record")
        raise
    failed = []
    for job in jobs:
        error = job.exception()
        if error is None:
            report = job.result()
            console.note(f"job {job.job_id} {report.line()}; log {job.paths.stderr}")
            failed += [f"{o.cell.name}: {o.error}" for o in report.outcomes
                       if o.status == "failed"]
        else:
            failed.append(f"job {job.job_id} {_why(error)} ({job.state}); see "
                          f"{job.paths.stderr}")
    return failed


def _why(error: Exception) -> str:
    """A job's error in a few words: what it raised (the last line of its traceback, which
    submitit puts between dashed lines), or that it ended with no result (killed, cancelled,
    out of memory, out of requeues)."""
    if isinstance(error, FailedJobError):
        trace = [line.strip() for line in str(error).split("-" * 22)[1].splitlines()
                 if line.strip()] if str(error).count("-" * 22) >= 2 else []
        return f"raised {trace[-1] if trace else type(error).__name__}"
    return "ended without a result"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--launcher", choices=LAUNCHERS, default="local",
                   help="local: worker processes here; slurm: --workers N jobs on a SLURM "
                        "cluster through submitit (README: On a SLURM cluster)")
    slurm_options.add_arguments(p)


def launcher(args: argparse.Namespace) -> Local | Slurm:
    """The launcher `args` ask for, its options checked before anything is opened or run;
    for SLURM also that the nodes can share both stores."""
    options = slurm_options.options(args)
    if options is None:
        return Local()
    check_stores(storage_url(args.storage), tracking_uri(args.tracking_uri), options)
    return Slurm(options)
