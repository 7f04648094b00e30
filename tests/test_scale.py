"""Scale-out on real engines: PostgreSQL (Debian's, started by tracking/services.sh on
loopback) for Optuna, an MLflow tracking server on it, several worker processes, kill -9."""

import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from conftest import write_cifar
from optuna.trial import TrialState

from benchmark.app.cli import main
from benchmark.cells import expand
from studies.storage import open_storage
from studies.tune import study_name

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
# batch 8: the cnn learns the learnable images in two epochs (a fit that does not learn is
# not a result, and its cell would end FAILED)
GRID = ('[[cell]]\nmodel = "cnn"\nvariant = "long-tail"\naugment = "none"\nepochs = {epochs}\n'
        'batch_size = 8\nlr = 0.05\ntail_fraction = 0.5\nseed = {seed}\n')
# a cell (key, study) of its own per test, on fresh services; fixed seeds, so a run of this
# module trains the same cells every time (42 seeds checked: this cell learns in 3 epochs)
SEEDS = itertools.count(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def services():
    """PostgreSQL and an MLflow server in a fresh folder (the postgres user must reach it)."""
    folder = Path(tempfile.mkdtemp(prefix="tailbench-services-"))
    folder.chmod(0o711)
    env = os.environ | {"SERVICES_DIR": str(folder), "PG_PORT": str(free_port()),
                        "MLFLOW_PORT": str(free_port()),
                        "VENV": str(Path(sys.executable).parent.parent)}
    script = str(ROOT / "tracking" / "services.sh")
    try:  # stopped even when starting failed half-way (PostgreSQL up, MLflow not)
        started = subprocess.run([script, "start"], env=env, capture_output=True, text=True,
                                 timeout=240)
        assert started.returncode == 0, started.stdout + started.stderr
        yield dict(line.removeprefix("export ").split("=", 1)
                   for line in (folder / "env").read_text().splitlines())
    finally:
        subprocess.run([script, "stop"], env=env, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar(root, per_batch=40, n_test=100)
    return root


class Bench:
    """One tiny grid (one rnn cell) on the shared stores, driven through the command line."""

    def __init__(self, services, data_dir, folder: Path, trials: int, epochs: int = 3):
        self.services, self.trials = services, trials
        self.grid = folder / "grid.toml"
        self.grid.write_text(GRID.format(epochs=epochs, seed=next(SEEDS)))
        self.args = ["run", "--grid", str(self.grid), "--profile", "paper", "--dataset",
                     "cifar10", "--data-dir", str(data_dir), "--no-report", "--trials",
                     str(trials), "--seeds", "1", "--storage", services["TAILBENCH_STORAGE"],
                     "--tracking-uri", services["MLFLOW_TRACKING_URI"]]
        self.env = os.environ | {"PGPASSFILE": services["PGPASSFILE"],
                                 "PYTHONPATH": str(ROOT), "TAILBENCH_HEARTBEAT": "1"}

    def start(self, *extra: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "benchmark.app.cli", *self.args, *extra],
                                cwd=ROOT, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    @property
    def cell(self):
        return expand(str(self.grid), "paper", "cifar10", overrides={"trials": self.trials})[0].cell

    def study(self) -> optuna.Study:
        os.environ["PGPASSFILE"] = self.services["PGPASSFILE"]
        return optuna.load_study(study_name=study_name(self.cell),
                                 storage=open_storage(self.services["TAILBENCH_STORAGE"]))

    def runs(self, kind: str):
        """The cell runs of this grid's cell, or the trial runs nested under them."""
        mlflow.set_tracking_uri(self.services["MLFLOW_TRACKING_URI"])
        exp = ["tailbench/cifar10/paper"]
        cells = mlflow.search_runs(experiment_names=exp, filter_string=(
            f"tags.cell_key = '{self.cell.key}' and tags.tailbench_kind = 'cell'"))
        if kind == "cell" or not len(cells):
            return cells
        trials = mlflow.search_runs(experiment_names=exp,
                                    filter_string="tags.tailbench_kind = 'trial'")
        return trials[trials["tags.mlflow.parentRunId"].isin(set(cells["run_id"]))]


def finished(study: optuna.Study) -> list:
    return [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def wait(proc: subprocess.Popen, seconds: float = 400) -> str:
    out, _ = proc.communicate(timeout=seconds)
    return out


def test_three_workers_share_a_study_and_run_each_trial_once(services, data_dir, tmp_path):
    bench = Bench(services, data_dir, tmp_path, trials=6)
    out = wait(bench.start("--workers", "3"))
    assert "finished in" in out and "1 of 1 repetitions learned" in out, out
    study = bench.study()
    done = finished(study)
    assert len(done) == 6, [(t.number, t.state) for t in study.trials]
    assert len({t.user_attrs["worker"] for t in done}) >= 2  # the trials spread over workers
    trials = bench.runs("trial")
    ran = trials[trials["status"] != "FAILED"]
    # each finished trial has exactly one run, and no trial number ran twice
    assert sorted(ran["params.trial_number"].astype(int)) == sorted(t.number for t in done)
    cells = bench.runs("cell")
    assert list(cells["status"]) == ["FINISHED"] and cells["metrics.trials_complete"][0] + \
        cells["metrics.trials_pruned"][0] == 6


def test_a_worker_killed_mid_trial_and_the_study_still_completes(services, data_dir, tmp_path):
    bench = Bench(services, data_dir, tmp_path, trials=4, epochs=6)
    victim = bench.start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # until the victim is in the middle of a trial
        try:
            running = [t for t in bench.study().trials if t.state == TrialState.RUNNING]
        except KeyError:
            running = []
        if running and running[0].intermediate_values:
            break
        time.sleep(0.5)
    else:
        pytest.fail("the first worker never reached a trial: " + victim.communicate()[0])
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    out = wait(bench.start("--workers", "2"))
    study = bench.study()
    states = [t.state for t in study.trials]
    assert len(finished(study)) == 4, states
    assert TrialState.RUNNING not in states and TrialState.FAIL in states  # the dead one
    assert any("retry_of" in t.user_attrs or "retry_history" in t.system_attrs
               for t in study.trials)  # its parameters were tried again
    cells = bench.runs("cell")
    # the killed owner's cell run was ended FAILED, then taken up again and finished
    assert list(cells["status"]) == ["FINISHED"], out
    assert "died" in cells["tags.previous_error"].iloc[0]
    assert "tags.error" not in cells or cells["tags.error"].isna().all()
    trials = bench.runs("trial")
    assert "RUNNING" not in set(trials["status"])  # the killed trial's run was ended too


def test_two_workers_race_for_one_final_run(services, data_dir, tmp_path):
    bench = Bench(services, data_dir, tmp_path, trials=0)
    first, second = bench.start(), bench.start()
    wait(first), wait(second)
    cells = bench.runs("cell")
    assert list(cells["status"]) == ["FINISHED"]
    again = wait(bench.start())  # a complete benchmark trains nothing
    assert "skipped" in again and len(bench.runs("cell")) == 1


@pytest.mark.parametrize("flag, uri, says", [
    ("--storage", "postgresql://tailbench@127.0.0.1:1/optuna", "cannot be opened"),
    ("--storage", "postgresql://nobody:wrong@127.0.0.1:{pg}/optuna", "cannot be opened"),
    ("--storage", "postgres:/host/db", "looks like a URL"),
    ("--tracking-uri", "http://127.0.0.1:1", "cannot be"),
    ("--tracking-uri", "mysql//host", "is not a URI"),
])
def test_bad_stores_are_refused_before_any_training(services, data_dir, tmp_path, monkeypatch,
                                                     capsys, flag, uri, says):
    import benchmark.data as data_pkg

    monkeypatch.setattr(data_pkg, "load_dataset", lambda *a, **k: pytest.fail("data was read"))
    monkeypatch.setenv("PGPASSFILE", services["PGPASSFILE"])
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    pg = services["TAILBENCH_STORAGE"].rsplit(":", 1)[1].split("/")[0]
    bench = Bench(services, data_dir, tmp_path, trials=1)
    args = list(bench.args)
    args[args.index(flag) + 1] = uri.format(pg=pg)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert says in err and "wrong" not in err  # what is wrong, and never the password
