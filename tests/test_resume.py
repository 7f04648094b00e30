"""Resume = uninterrupted: a cell run without a stop, and the same cell stopped mid-trial by
Ctrl-C (SIGINT) and later by kill -9, each time run again, end with the same trials, the same
tuned parameters and the same test accuracy, digit for digit (one machine, one worker). Real
processes, real signals, real journal and SQLite files."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from conftest import write_cifar
from optuna.trial import TrialState

from benchmark.app.cli import main
from benchmark.cells import expand
from studies.storage import open_studies
from studies.tune import study_name

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
TRIALS = 5  # trial 0 the cell's own values, 1-2 random start-up points, 3-4 TPE's model
GRID = ('[[cell]]\nmodel = "cnn"\nvariant = "long-tail"\nremedy = "none"\nepochs = 4\n'
        'batch_size = 8\nlr = 0.05\nimbalance_ratio = 2\nseed = 7\n')


class Cell:
    """One tiny tuned cell on stores of its own in `folder`, run through the command line."""

    def __init__(self, folder: Path, data_dir: Path):
        folder.mkdir()
        self.grid, self.journal = folder / "grid.toml", str(folder / "optuna.journal")
        self.grid.write_text(GRID)
        self.uri = f"sqlite:///{folder}/mlflow.db"
        self.args = ["run", "--grid", str(self.grid), "--profile", "paper", "--dataset",
                     "cifar10", "--data-dir", str(data_dir), "--no-report", "--trials",
                     str(TRIALS), "--seeds", "1", "--storage", self.journal, "--tracking-uri",
                     self.uri]

    def start(self) -> subprocess.Popen:
        # SIGINT as a terminal's foreground command has it: a command started in the
        # background of a shell without job control (a CI script's `cmd &`) inherits it
        # ignored, and Python then installs no KeyboardInterrupt for it
        return subprocess.Popen([sys.executable, "-m", "benchmark.app.cli", *self.args],
                                cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def run_here(self, folder: Path, monkeypatch, capsys) -> str:
        """Run the cell to its end in this process; its output."""
        monkeypatch.chdir(folder)
        capsys.readouterr()
        code = main(self.args)
        out = "".join(capsys.readouterr())
        assert code == 0, out
        return out

    def study(self) -> optuna.Study:
        # the cell as the command runs it: precision auto resolved, fp32 on this CPU
        cell = expand(str(self.grid), "paper", "cifar10",
                      overrides={"trials": TRIALS, "precision": "fp32"})[0].cell
        return optuna.load_study(study_name=study_name(cell), storage=open_studies(self.journal))

    def stop_in_trial(self, number: int, sig: int) -> str:
        """Start the cell and send `sig` once trial `number` has reported an epoch."""
        proc = self.start()
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                trials = self.study().trials
            except KeyError:  # no study yet
                trials = []
            # RUNNING is mid-trial (before or after its first epoch's report): on a loaded
            # machine a tiny trial's whole run can fall between two looks
            if any(t.number == number and t.state == TrialState.RUNNING for t in trials):
                os.kill(proc.pid, sig)
                return proc.communicate(timeout=120)[0]
            time.sleep(0.1)
        proc.kill()
        pytest.fail(f"trial {number} was never caught running: {proc.communicate()[0]}")

    def outcome(self):
        """(the study's finished trials as (params, value), the cell's tuned lr, the test
        accuracy of its repetition)."""
        done = [(t.params, t.value) for t in self.study().trials if t.state != TrialState.FAIL]
        mlflow.set_tracking_uri(self.uri)
        runs = mlflow.search_runs(experiment_names=["tailbench/cifar10/paper"])
        assert "RUNNING" not in set(runs["status"])  # no orphan, whatever was stopped
        cell = runs[runs["tags.tailbench_kind"] == "cell"]
        rep = runs[(runs["tags.tailbench_kind"] == "repetition") & (runs["status"] == "FINISHED")]
        assert list(cell["status"]) == ["FINISHED"] and len(rep) == 1
        return done, cell["params.best_lr"].iloc[0], rep["metrics.final_test_acc"].iloc[0]


def test_a_cell_stopped_and_resumed_ends_as_if_never_stopped(tmp_path, monkeypatch, capsys):
    data_dir = tmp_path / "data"
    write_cifar(data_dir, per_batch=40, n_test=100)
    whole = Cell(tmp_path / "whole", data_dir)
    uninterrupted = whole.start()  # alongside the stopped one: on its own stores, it gets
    # the same numbers however busy the machine is (its kernels are deterministic)
    cut = Cell(tmp_path / "cut", data_dir)
    cut.stop_in_trial(1, signal.SIGINT)  # Ctrl-C in a random start-up point
    assert [t.state for t in cut.study().trials].count(TrialState.FAIL) == 1
    cut.stop_in_trial(3, signal.SIGKILL)  # kill -9 in TPE's first modelled point
    # the resume needs no signal: run in this process (no start-up of its own), from a
    # folder of the test's own
    out = cut.run_here(tmp_path, monkeypatch, capsys)
    # the cell run, and the trial's run if the kill came after it was created (a kill can
    # also land while the trial is still being set up); outcome() checks none is left
    assert "that dead workers left RUNNING" in out, out
    states = [t.state for t in cut.study().trials]
    assert states.count(TrialState.FAIL) == 2 and len(states) == TRIALS + 2
    out = uninterrupted.communicate(timeout=300)[0]
    assert uninterrupted.returncode == 0, out
    assert cut.outcome() == whole.outcome()
