"""`tailbench run --launcher slurm`: its options, the check that the nodes can share the stores,
and worker jobs run end to end by submitit's LocalExecutor (a real job process, pickled and
unpickled, checkpointed on USR2 and requeued by submitit itself). tests/test_slurm.py runs
the same on a real one-node SLURM cluster."""

import argparse
import os
import signal
import threading
import time
from pathlib import Path

import mlflow
import pytest
import submitit

from benchmark.app import launchers
from benchmark.app.cli import main
from benchmark.app.slurm_options import SlurmOptions, absolute, check_stores, sbatch_option
from benchmark.errors import UserError

GRID = ('[[cell]]\nmodel = "cnn"\nvariant = "long-tail"\nremedy = "none"\nepochs = {epochs}\n'
        'batch_size = 8\nlr = 0.05\nimbalance_ratio = 2\n')
EXPERIMENT = "tailbench/cifar10/paper"


# --- options -------------------------------------------------------------------------------

def test_sbatch_options_are_key_value_or_a_flag():
    assert sbatch_option("qos=high") == ("qos", "high")
    assert sbatch_option("--account=proj") == ("account", "proj")
    assert sbatch_option("mail_type=END,FAIL") == ("mail-type", "END,FAIL")
    assert sbatch_option("exclusive") == ("exclusive", True)
    for text, says in (("time=5", "--slurm-time"), ("partition=gpu", "--slurm-partition"),
                       ("array=0-3", "set by tailbench"), ("output=x", "set by tailbench"),
                       ("qos=", "no value"), ("=high", "KEY=VALUE"), ("q os=1", "KEY=VALUE")):
        with pytest.raises(argparse.ArgumentTypeError, match=says):
            sbatch_option(text)


def test_the_options_become_submitit_parameters():
    options = SlurmOptions(partition="gpu", time_min=240, cpus_per_task=8, gpus_per_task=1,
                           extra=(("qos", "high"), ("exclusive", True)),
                           setup=("module load cuda",))
    assert options.parameters("tailbench-x") == {
        "job_name": "tailbench-x", "time": 240, "signal_delay_s": 90, "partition": "gpu",
        "cpus_per_task": 8, "gpus_per_task": 1,
        "additional_parameters": {"qos": "high", "exclusive": True},
        "setup": ["module load cuda"]}
    short = SlurmOptions(time_min=2).parameters("t")  # USR2 before a short limit, not at once
    assert short == {"job_name": "t", "time": 2, "signal_delay_s": 24}


def test_the_help_lists_the_slurm_options(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--launcher {local,slurm}" in out and "runs/slurm/%j, %j the job id" in out


def test_bad_options_stop_the_command_in_one_line(capsys):
    assert main(["run", "--slurm-partition", "gpu", "--no-wait"]) == 2  # launcher local
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["tailbench run: error: --slurm-partition, --no-wait: only for --launcher "
                   "slurm; add --launcher slurm, or leave them out"]
    for bad in (["--slurm-option", "time=5"], ["--slurm-time", "0"],
                ["--slurm-gpus-per-task", "x"]):
        with pytest.raises(SystemExit) as e:  # argparse: usage and one error line
            main(["run", "--launcher", "slurm", *bad])
        assert e.value.code == 2
        assert "error: argument" in capsys.readouterr().err


def test_the_nodes_must_be_able_to_share_the_stores(capsys):
    other_nodes, one_node = (lambda partition: False), (lambda partition: True)
    plain, shared = SlurmOptions(), SlurmOptions(shared_fs=True)
    servers = ("postgresql://tailbench@db-host/optuna", "http://mlflow-host:5000")
    check_stores(*servers, plain, other_nodes)
    with pytest.raises(UserError, match="is a file on this machine.*--slurm-shared-fs"):
        check_stores("runs/optuna.journal", servers[1], plain, other_nodes)
    with pytest.raises(UserError, match="MLflow tracking store sqlite:///runs/mlflow.db is a file"):
        check_stores(servers[0], "sqlite:///runs/mlflow.db", plain, other_nodes)
    for loopback in ("http://127.0.0.1:5001", "http://localhost:5001"):
        with pytest.raises(UserError, match="loopback"):  # a shared folder does not help
            check_stores(servers[0], loopback, shared, other_nodes)
    with pytest.raises(UserError, match=r"Optuna storage postgresql://u:\*\*\*@127.0.0.1/o is"):
        check_stores("postgresql://u:secret@127.0.0.1/o", servers[1], shared, other_nodes)
    check_stores("runs/optuna.journal", servers[1], shared, other_nodes)  # the user says so
    assert capsys.readouterr().err == ""
    check_stores(servers[0], "sqlite:///runs/mlflow.db", shared, other_nodes)
    assert "SQLite on a shared file system" in capsys.readouterr().err  # accepted, warned
    # a cluster whose every node is this machine reaches its files and its loopback
    check_stores("runs/optuna.journal", "http://127.0.0.1:5001", plain, one_node)


def test_without_slurm_on_path_the_nodes_are_not_known_to_be_this_machine(monkeypatch,
                                                                        tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sinfo, no srun
    assert launchers.slurm_options.partition_nodes(None) is None
    assert not launchers.slurm_options.this_host_only(None)
    with pytest.raises(UserError, match="needs SLURM's commands"):
        launchers.slurm_executor(SlurmOptions(folder=str(tmp_path / "%j")), "t")


def test_store_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute("runs/optuna.journal") == str(tmp_path / "runs/optuna.journal")
    assert absolute("sqlite:///runs/m.db") == f"sqlite:///{tmp_path}/runs/m.db"
    assert absolute("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert absolute("postgresql://h/db") == "postgresql://h/db"


# --- worker jobs through submitit's LocalExecutor ------------------------------------------

@pytest.fixture
def local_jobs(monkeypatch):
    """--launcher slurm with submitit's LocalExecutor in place of its SlurmExecutor."""
    def executor(options: SlurmOptions, job_name: str):
        ex = submitit.LocalExecutor(folder=options.folder, max_num_timeout=options.requeues)
        ex.update_parameters(timeout_min=options.time_min)
        return ex

    monkeypatch.setattr(launchers, "slurm_executor", executor)
    monkeypatch.setattr(launchers, "POLL_S", 0.5)


def run_args(tmp_path, cifar_dir, epochs: int, seeds: int) -> list[str]:
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID.format(epochs=epochs))
    store = tmp_path / "runs"
    return ["run", "--grid", str(grid), "--profile", "paper", "--dataset", "cifar10",
            "--data-dir", str(cifar_dir), "--no-tune", "--no-report", "--seeds", str(seeds),
            "--storage", str(store / "optuna.journal"),
            "--tracking-uri", f"sqlite:///{store}/mlflow.db", "--launcher", "slurm",
            "--slurm-shared-fs", "--slurm-folder", str(tmp_path / "jobs" / "%j")]


def repetitions(uri: str) -> list[tuple[int, str]]:
    """(repetition, status) of every repetition run in the store."""
    mlflow.set_tracking_uri(uri)
    try:
        df = mlflow.search_runs(experiment_names=[EXPERIMENT],
                                filter_string="tags.tailbench_kind = 'repetition'")
    except Exception:  # the store or the experiment is not there yet
        return []
    if not len(df):
        return []
    return sorted(zip(df["tags.repetition"].astype(int), df["status"], strict=True))


def finished(uri: str) -> list[int]:
    return [r for r, status in repetitions(uri) if status == "FINISHED"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*differ from the official")
def test_two_worker_jobs_share_a_grid(local_jobs, tmp_path, cifar_dir, capsys):
    args = run_args(tmp_path, cifar_dir, epochs=2, seeds=2)
    assert main([*args, "--workers", "2"]) == 0
    captured = capsys.readouterr()
    assert "2 worker jobs submitted" in captured.err
    ran = [line for line in captured.err.splitlines() if " ran on " in line]
    assert len(ran) == 2 and any("1 cell finished" in line for line in ran), captured.err
    assert " 2/2 " in captured.out  # the results table, read back from MLflow
    assert finished(f"sqlite:///{tmp_path}/runs/mlflow.db") == [0, 1]
    logs = list((tmp_path / "jobs").glob("*/*_log.err"))
    assert len(logs) == 2 and any("finished in" in p.read_text() for p in logs)


def children(pid: int) -> list[int]:
    return [int(c) for t in Path(f"/proc/{pid}/task").iterdir()
            for c in (t / "children").read_text().split()]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*differ from the official")
def test_a_job_signalled_mid_grid_is_checkpointed_requeued_and_finishes_it(
        local_jobs, tmp_path, cifar_dir, capsys):
    """USR2 (what SLURM sends before the time limit) after the first repetition: submitit
    calls WorkerJob.checkpoint, the job exits and runs again, and the second run trains only
    the repetitions that have no outcome: one FINISHED run per repetition, none twice."""
    uri = f"sqlite:///{tmp_path}/runs/mlflow.db"
    codes: list[int] = []
    # 8 epochs: a repetition (about 3 s, one torch thread) outlasts the half-second look for
    # the first one, so the signal finds the second still to finish
    command = threading.Thread(target=lambda: codes.append(main(run_args(
        tmp_path, cifar_dir, epochs=8, seeds=3))))
    command.start()
    deadline = time.monotonic() + 300
    while not finished(uri) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert finished(uri) == [0], repetitions(uri)
    # the job's process: a child of submitit's controller, itself a child of this process
    tasks = [t for controller in children(os.getpid()) for t in children(controller)]
    assert len(tasks) == 1
    os.kill(tasks[0], signal.SIGUSR2)
    command.join(timeout=300)
    assert codes == [0]
    err = capsys.readouterr().err
    assert "1 cell finished; checkpointed and requeued 1x" in err, err
    assert finished(uri) == [0, 1, 2]  # each repetition once
    interrupted = [r for r, status in repetitions(uri) if status != "FINISHED"]
    assert interrupted in ([1], [])  # the one the signal stopped (if it was mid-repetition),
    # ended FAILED and trained again
    log = next((tmp_path / "jobs").glob("*/*_log.out")).read_text()
    assert "Calling checkpoint method" in log and "Requeued job" in log


@pytest.mark.slow
def test_a_job_that_raises_is_reported_with_its_error(local_jobs, tmp_path, make_cifar,
                                                      capsys):
    """The command reads no data itself: a broken file is found by the job, whose error
    comes back through submitit and is the failure the command reports."""
    folder = make_cifar()
    (folder / "test_batch").write_bytes(b"not a pickle")
    assert main(run_args(tmp_path, folder.parent, epochs=2, seeds=1)) == 1
    failed = [line for line in capsys.readouterr().err.splitlines() if "failed: job" in line]
    assert len(failed) == 1 and "raised benchmark.data.dataset.DataError" in failed[0]
    assert "test_batch: not a CIFAR-10 batch" in failed[0] and "_log.err" in failed[0]


def test_workers_auto_is_one_per_core_up_to_four_and_no_more_than_the_cells(monkeypatch):
    from dataclasses import replace

    from benchmark.app.workers import WorkerPlan
    from benchmark.cells import Cell, GridEntry

    cells = tuple(GridEntry(Cell("cnn", "balanced", "none", epochs=1, seed=s), {})
                  for s in range(6))
    plan = WorkerPlan(cells, "cifar10", None, "cpu", "sqlite:///x.db", "e", None, None)
    for cores, want in ((1, 1), (2, 2), (16, launchers.CPU_WORKERS)):
        monkeypatch.setattr(launchers.os, "cpu_count", lambda cores=cores: cores)
        assert launchers.Local.workers(plan, "auto") == want
    assert launchers.Local.workers(replace(plan, entries=cells[:3]), "auto") == 3  # 3 cells
    assert launchers.Local.workers(plan, None) == 1  # a plain `tailbench run` on a CPU
    assert launchers.Local.workers(plan, 5) == 5
    with pytest.raises(SystemExit):
        main(["run", "--workers", "many"])
