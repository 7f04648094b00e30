"""`tailbench run --launcher slurm` on a real one-node SLURM cluster (Debian's slurm-wlm and
munge, started by tracking/slurm.sh in a fresh folder on free ports): an array of worker
jobs, `--no-wait` then `tailbench results`, and a job requeued twice mid-grid, once by
`scontrol requeue` (the job is killed and started again from its submission) and once by
USR2 (what SLURM sends before the time limit: submitit checkpoints and requeues it), after
which the grid is finished with each repetition trained to FINISHED exactly once."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import free_port
from test_launchers import finished, repetitions, run_args

from benchmark.app.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*differ from the official")]
ROOT = Path(__file__).resolve().parents[1]
DAEMONS = ("slurmctld", "slurmd", "munged", "sbatch", "scontrol")
missing = [d for d in DAEMONS if shutil.which(d, path=os.environ["PATH"] + ":/usr/sbin") is None]
if missing:
    pytest.skip(f"SLURM is not installed ({', '.join(missing)} missing): "
                "apt-get install slurm-wlm munge", allow_module_level=True)


@pytest.fixture(scope="module")
def cluster():
    """A fresh one-node cluster; its environment (SLURM_CONF) while the module's tests run."""
    folder = Path(tempfile.mkdtemp(prefix="tailbench-slurm-"))
    folder.chmod(0o711)  # munged runs as the munge user and must reach its folder
    env = os.environ | {"SLURM_DIR": str(folder), "SLURMCTLD_PORT": str(free_port()),
                        "SLURMD_PORT": str(free_port()), "SLURMDBD_PORT": str(free_port()),
                        "SLURM_DB_PORT": str(free_port()),
                        # a requeued job's old run may train on until SIGKILL: keep that short,
                        # so it cannot finish the grid before the requeued run starts
                        "SLURM_KILL_WAIT": "1"}
    script = str(ROOT / "tracking" / "slurm.sh")
    old = os.environ.get("SLURM_CONF")
    try:
        started = subprocess.run([script, "start"], env=env, capture_output=True, text=True,
                                 timeout=240)
        assert started.returncode == 0, started.stdout + started.stderr
        os.environ["SLURM_CONF"] = str(folder / "slurm.conf")
        yield folder
    finally:
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
        subprocess.run([script, "stop"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


def slurm(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60).stdout


def jobs() -> dict[str, str]:
    """{job id: state} of the cluster's jobs (only this module's)."""
    return dict(line.split() for line in slurm("squeue", "-h", "-o", "%i %T").splitlines())


def release(job: str, deadline: float) -> None:
    """Run a requeued job now: SLURM holds a requeued batch job back for two minutes (its
    begin time is set to the requeue's time plus 120 s); an operator may start it at once."""
    while time.monotonic() < deadline:
        if jobs().get(job) == "RUNNING":
            return
        if jobs().get(job) == "PENDING":
            slurm("scontrol", "update", f"JobId={job}", "StartTime=now")
        time.sleep(1)
    pytest.fail(f"job {job} never ran again: {jobs()}")


def wait_until(condition, deadline: float, what: str) -> None:
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.5)


def test_a_hello_job_runs(cluster, tmp_path):
    out = tmp_path / "hello.out"
    job = slurm("sbatch", "--parsable", "-o", str(out), "--wrap", "echo hello from $(hostname)")
    deadline = time.monotonic() + 60
    wait_until(lambda: job.strip() not in jobs() and out.exists(), deadline, "the hello job")
    assert out.read_text().strip() == f"hello from {socket.gethostname()}"


def test_an_array_of_worker_jobs_not_waited_for_then_results(cluster, tmp_path, cifar_dir,
                                                             capsys):
    args = [a for a in run_args(tmp_path, cifar_dir, epochs=2, seeds=2)
            if a != "--slurm-shared-fs"]  # every node is this machine: local stores will do
    code = main([*args, "--workers", "2", "--no-wait", "--slurm-partition", "debug",
                 "--slurm-cpus-per-task", "1", "--slurm-time", "10",
                 "--slurm-option", "comment=tailbench-test"])
    err = capsys.readouterr().err
    assert code == 0 and "2 worker jobs submitted" in err and "not waiting" in err, err
    array = err.split("submitted (", 1)[1].split("_", 1)[0]
    shown = slurm("scontrol", "show", "job", array)
    assert "Comment=tailbench-test" in shown and "Partition=debug" in shown  # sbatch got them
    wait_until(lambda: not jobs(), time.monotonic() + 300, "the worker jobs")
    uri = args[args.index("--tracking-uri") + 1]
    assert finished(uri) == [0, 1]
    assert main(["results", "--tracking-uri", uri]) == 0
    assert " 2/2 " in capsys.readouterr().out
    logs = sorted((tmp_path / "jobs").glob(f"{array}_*/*_log.err"))
    assert len(logs) == 2 and all("worker job on" in p.read_text() for p in logs)


def test_a_job_requeued_twice_mid_grid_still_finishes_it_once(cluster, tmp_path, cifar_dir,
                                                              capsys):
    # a repetition must outlast the seconds between the requeue and its SIGKILL (about 5 s
    # here: squeue's polls, SLURM's KillWait), else the killed run trains most of the grid
    # first: at 3 epochs (1.2 s a repetition, one torch thread) it trained 5 of the 6
    args = run_args(tmp_path, cifar_dir, epochs=10, seeds=6)
    uri = args[args.index("--tracking-uri") + 1]
    codes: list[int] = []
    command = threading.Thread(target=lambda: codes.append(main([*args, "--slurm-time", "10"])))
    command.start()
    deadline = time.monotonic() + 600
    wait_until(lambda: finished(uri), deadline, "the first repetition")
    (job,) = jobs()
    slurm("scontrol", "requeue", job)  # killed (SIGTERM, then SIGKILL) and queued again
    wait_until(lambda: jobs().get(job) == "PENDING", deadline, "the requeue")
    release(job, deadline)  # RUNNING again: the killed run is gone (it may have finished
    before = len(finished(uri))  # a repetition while SLURM waited to SIGKILL it)
    assert before < 5, f"the killed run trained {before} of 6 repetitions before its SIGKILL"
    wait_until(lambda: len(finished(uri)) > before, deadline, "a repetition of the second run")
    slurm("scancel", "--signal=USR2", job)  # as before the time limit: checkpoint, requeue
    wait_until(lambda: jobs().get(job) == "PENDING", deadline, "submitit's requeue")
    release(job, deadline)
    command.join(timeout=max(1.0, deadline - time.monotonic()))
    err = capsys.readouterr().err
    assert codes == [0], err
    assert "1 cell finished; checkpointed and requeued 1x" in err, err
    assert finished(uri) == [0, 1, 2, 3, 4, 5], repetitions(uri)  # each repetition once
    log = (tmp_path / "jobs" / job / f"{job}_0_log.out").read_text()
    assert "Calling checkpoint method" in log and f"Requeued job {job}" in log
    assert log.count("Starting with JobEnvironment") == 3  # three runs of the same job
    if (cluster / "slurmdbd.conf").exists():  # accounting runs: the job ended COMPLETED
        def state() -> list[str]:  # slurmdbd records the end a moment after the job's end
            return slurm("sacct", "-n", "-X", "-j", job, "-o", "State").split()
        wait_until(lambda: state() != ["RUNNING"], time.monotonic() + 60, "the job's record")
        assert state() == ["COMPLETED"]
    assert sys.executable in (tmp_path / "jobs" / job / f"{job}_submission.sh").read_text()


def test_options_that_sbatch_refuses_stop_the_command_in_one_line(cluster, tmp_path,
                                                                  cifar_dir, capsys):
    args = run_args(tmp_path, cifar_dir, epochs=2, seeds=1)
    assert main([*args, "--slurm-partition", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("tailbench run: error: SLURM refused the worker jobs: sbatch: error: "
                       "invalid partition specified: nope"), err
    assert not any(line.startswith("sbatch:") for line in err) and not jobs()
