"""Scale-out on real engines: PostgreSQL (Debian's, started by tracking/services.sh on
loopback) for Optuna, an MLflow tracking server on it, several worker processes, kill -9."""

import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from conftest import free_port, write_cifar
from optuna.trial import TrialState

from benchmark.app.cli import main
from benchmark.cells import expand
from studies.storage import open_studies
from studies.tune import study_name

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
# batch 8: the cnn learns the learnable images in two epochs (a fit that does not learn is
# not a result, and its cell would end FAILED)
GRID = ('[[cell]]\nmodel = "cnn"\nvariant = "long-tail"\nremedy = "none"\nepochs = {epochs}\n'
        'batch_size = 8\nlr = 0.05\nimbalance_ratio = 2\nseed = {seed}\n')
# a cell (key, study) of its own per test, on fresh services; fixed seeds, so a run of this
# module trains the same cells every time (42 seeds checked: this cell learns in 3 epochs)
SEEDS = itertools.count(1)


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
        found = dict(line.removeprefix("export ").split("=", 1)
                     for line in (folder / "env").read_text().splitlines())
        # the MLflow server asks for a login: this process and the workers it starts use it
        login = {k: found[k] for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
        os.environ.update(login)
        yield found | {"folder": str(folder)}
    finally:
        for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(k, None)
        subprocess.run([script, "stop"], env=env, capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)  # its databases: nothing is left in /tmp


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar(root, per_batch=40, n_test=100)
    return root


class Bench:
    """One tiny grid (one cnn cell) on the shared stores, driven through the command line:
    its studies on PostgreSQL (advisory locks, heartbeats), or with `journal` in a journal
    file of its own (file locks, workers' locks for liveness)."""

    def __init__(self, services, data_dir, folder: Path, trials: int, epochs: int = 3,
                 journal: bool = False, seeds: int = 1):
        self.services, self.trials = services, trials
        self.storage = str(folder / "optuna.journal") if journal else \
            services["TAILBENCH_STORAGE"]
        self.grid = folder / "grid.toml"
        self.grid.write_text(GRID.format(epochs=epochs, seed=next(SEEDS)))
        self.args = ["run", "--grid", str(self.grid), "--profile", "paper", "--dataset",
                     "cifar10", "--data-dir", str(data_dir), "--no-report", "--trials",
                     str(trials), "--seeds", str(seeds), "--storage", self.storage,
                     "--tracking-uri", services["MLFLOW_TRACKING_URI"]]
        self.env = os.environ | {"PGPASSFILE": services["PGPASSFILE"],
                                 "PYTHONPATH": str(ROOT), "TAILBENCH_HEARTBEAT": "2"}

    def start(self, *extra: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "benchmark.app.cli", *self.args, *extra],
                                cwd=ROOT, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    @property
    def cell(self):
        # the cell as the command runs it: precision auto resolved, fp32 on this CPU
        return expand(str(self.grid), "paper", "cifar10",
                      overrides={"trials": self.trials, "precision": "fp32"})[0].cell

    def study(self) -> optuna.Study:
        os.environ["PGPASSFILE"] = self.services["PGPASSFILE"]
        return optuna.load_study(study_name=study_name(self.cell),
                                 storage=open_studies(self.storage))

    def study_names(self) -> list[str]:
        """Every study in the storage, asked through Optuna's own API."""
        os.environ["PGPASSFILE"] = self.services["PGPASSFILE"]
        return optuna.get_all_study_names(open_studies(self.storage))

    def runs(self, kind: str):
        """The cell runs of this grid's cell, or the trial or repetition runs nested under
        them."""
        mlflow.set_tracking_uri(self.services["MLFLOW_TRACKING_URI"])
        exp = ["tailbench/cifar10/paper"]
        cells = mlflow.search_runs(experiment_names=exp, filter_string=(
            f"tags.cell_key = '{self.cell.key}' and tags.tailbench_kind = 'cell'"))
        if kind == "cell" or not len(cells):
            return cells
        nested = mlflow.search_runs(experiment_names=exp,
                                    filter_string=f"tags.tailbench_kind = '{kind}'")
        return nested[nested["tags.mlflow.parentRunId"].isin(set(cells["run_id"]))]


def finished(study: optuna.Study) -> list:
    return [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def wait(proc: subprocess.Popen, seconds: float = 400) -> str:
    out, _ = proc.communicate(timeout=seconds)
    return out


def test_three_workers_share_a_study_and_run_each_trial_once(services, data_dir, tmp_path):
    # trials long enough (8 epochs) that the first worker cannot run all six while the
    # others are still importing torch: then the trials really spread over the workers
    bench = Bench(services, data_dir, tmp_path, trials=6, epochs=8)
    out = wait(bench.start("--workers", "3"))
    assert "finished in" in out and "1 of 1 repetitions learned" in out, out
    assert "Traceback" not in out and "View run" not in out, out
    study = bench.study()
    done = finished(study)
    assert [t.state for t in study.trials] == [t.state for t in done]  # none failed, surplus
    assert len(done) == 6
    assert len({t.user_attrs["worker"] for t in done}) >= 2  # the trials spread over workers
    names = bench.study_names()  # the tuning studies, nothing else (no locks, no claims)
    assert names.count(study_name(bench.cell)) == 1 and not any("claim" in n for n in names)
    trials = bench.runs("trial")
    ran = trials[trials["status"] != "FAILED"]
    # each finished trial has exactly one run, and no trial number ran twice
    assert sorted(ran["params.trial_number"].astype(int)) == sorted(t.number for t in done)
    cells = bench.runs("cell")
    assert list(cells["status"]) == ["FINISHED"]
    assert cells["metrics.trials_complete"][0] + cells["metrics.trials_pruned"][0] == 6
    assert cells["metrics.trials_failed"][0] == 0


def wait_until(bench: Bench, victim: subprocess.Popen, ready, what: str) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except KeyError:  # the study is not there yet
            pass
        time.sleep(0.3)
    victim.kill()
    pytest.fail(f"the first worker never reached {what}: " + victim.communicate()[0])


def kill(victim: subprocess.Popen) -> None:
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()


def test_a_worker_killed_mid_trial_and_the_study_still_completes(services, data_dir, tmp_path):
    # on PostgreSQL (heartbeats); test_resume kills a worker mid-trial on a journal
    bench = Bench(services, data_dir, tmp_path, trials=4, epochs=6)
    victim = bench.start()
    wait_until(bench, victim, lambda: any(t.state == TrialState.RUNNING and t.intermediate_values
                                          for t in bench.study().trials), "a trial")
    kill(victim)
    out = wait(bench.start("--workers", "2"))
    study = bench.study()
    states = [t.state for t in study.trials]
    assert len(finished(study)) == 4, states
    assert states.count(TrialState.FAIL) == 1 and TrialState.RUNNING not in states  # the dead
    assert any("retry_of" in t.user_attrs or "retry_history" in t.system_attrs
               for t in study.trials)  # its parameters were tried again
    cells = bench.runs("cell")
    # the killed owner's cell run was ended FAILED, then taken up again and finished
    assert list(cells["status"]) == ["FINISHED"], out
    assert "died" in cells["tags.previous_error"].iloc[0]
    assert "tags.error" not in cells or cells["tags.error"].isna().all()
    trials = bench.runs("trial")
    assert "RUNNING" not in set(trials["status"])  # the killed trial's run was ended too
    assert "Traceback" not in out, out


@pytest.mark.parametrize("journal", [False, True], ids=["postgresql", "journal"])
def test_a_worker_killed_mid_final_fit_is_taken_over_once(services, data_dir, tmp_path,
                                                          journal):
    bench = Bench(services, data_dir, tmp_path, trials=0, epochs=12, journal=journal, seeds=2)
    victim = bench.start()
    wait_until(bench, victim, lambda: "RUNNING" in set(bench.runs("repetition")["status"]),
               "a final fit")
    kill(victim)
    out = wait(bench.start("--workers", "2"))
    assert "finished in" in out and "2 of 2 repetitions learned" in out, out
    cells = bench.runs("cell")
    assert list(cells["status"]) == ["FINISHED"] and "died" in cells["tags.previous_error"][0]
    reps = bench.runs("repetition")
    finished_reps = reps[reps["status"] == "FINISHED"]
    # exactly one FINISHED run per repetition; the killed one ended FAILED, with the reason
    assert sorted(finished_reps["tags.repetition"].astype(int)) == [0, 1]
    killed = reps[reps["status"] == "FAILED"]
    assert len(killed) == 1 and "died" in killed["tags.error"].iloc[0]
    assert "RUNNING" not in set(reps["status"])


@pytest.mark.parametrize("journal", [False, True], ids=["postgresql", "journal"])
def test_two_workers_race_for_one_final_run(services, data_dir, tmp_path, journal, monkeypatch,
                                            capsys):
    bench = Bench(services, data_dir, tmp_path, trials=0, journal=journal)
    first, second = bench.start(), bench.start()
    outs = wait(first) + wait(second)
    cells = bench.runs("cell")
    assert list(cells["status"]) == ["FINISHED"], outs
    reps = bench.runs("repetition")
    assert list(reps["status"]) == ["FINISHED"], outs  # trained once, by one of them
    # a complete benchmark trains nothing: run again in this process (no start-up of its own)
    # with the workers' environment, from a folder of the test's own (its results file)
    for key in ("PGPASSFILE", "TAILBENCH_HEARTBEAT"):
        monkeypatch.setenv(key, bench.env[key])
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    code = main(bench.args)
    again = "".join(capsys.readouterr())
    assert code == 0, again
    assert "skipped" in again and len(bench.runs("cell")) == 1
    if journal:
        assert bench.study_names() == []  # untuned: no study, and never a lock's


HOLD = ("import sys, time\nfrom studies.locks import open_locks\n"
        "held = open_locks(sys.argv[1]).hold('cell abc')\nprint('held', flush=True)\n"
        "time.sleep(600)\n")


def test_a_killed_holders_advisory_lock_is_released_by_postgresql(services):
    from studies.locks import open_locks

    os.environ["PGPASSFILE"] = services["PGPASSFILE"]
    url = services["TAILBENCH_STORAGE"]
    holder = subprocess.Popen([sys.executable, "-c", HOLD, url], stdout=subprocess.PIPE,
                              text=True, cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        assert open_locks(url).try_hold("cell abc") is None  # held on another connection
        other = open_locks(url).try_hold("cell other")
        assert other is not None
        other.release()  # its connection closed, not left to the garbage collector
    finally:
        kill(holder)
    deadline = time.monotonic() + 30  # the server sees the connection close, and lets go
    while (held := open_locks(url).try_hold("cell abc")) is None:
        assert time.monotonic() < deadline, "the dead holder's advisory lock was never freed"
        time.sleep(0.2)
    held.release()


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


@pytest.mark.skipif(os.geteuid() != 0, reason="runs clients as user nobody (root only)")
def test_another_local_user_is_refused_by_both_services(services):
    """User nobody, on the same machine, without the passwords: PostgreSQL refuses it on its
    socket (the folder is mode 700) and on loopback (scram-sha-256, as superuser or not), and
    the MLflow server answers 401."""
    folder = Path(services["folder"])
    port = services["TAILBENCH_STORAGE"].rsplit(":", 1)[1].split("/")[0]
    psql = str(sorted(Path("/usr/lib/postgresql").glob("*/bin/psql"))[-1])
    assert (folder / "sock").stat().st_mode & 0o777 == 0o700
    assert "trust" not in (folder / "pg" / "pg_hba.conf").read_text()

    def as_nobody(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run([shutil.which("runuser"), "-u", "nobody", "--", *cmd], cwd="/",
                              capture_output=True, text=True, timeout=60,
                              env={"PATH": "/usr/bin:/bin", "PGCONNECT_TIMEOUT": "5"})

    socket = as_nobody(psql, "-h", str(folder / "sock"), "-p", port, "-U", "postgres", "-w",
                       "-c", "SELECT 1")
    assert socket.returncode != 0 and "Permission denied" in socket.stderr, socket.stderr
    for user in ("postgres", "tailbench"):
        tcp = as_nobody(psql, "-h", "127.0.0.1", "-p", port, "-U", user, "-d", "optuna", "-w",
                        "-c", "SELECT 1")
        assert tcp.returncode != 0 and "password" in tcp.stderr, tcp.stderr
    url = services["MLFLOW_TRACKING_URI"] + "/api/2.0/mlflow/experiments/search?max_results=1"
    web = as_nobody("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url)
    assert web.stdout.strip() == "401", web.stdout + web.stderr


def test_a_wrong_mlflow_password_is_one_line(services, data_dir, tmp_path, monkeypatch,
                                            capsys):
    import benchmark.data as data_pkg

    monkeypatch.setattr(data_pkg, "load_dataset", lambda *a, **k: pytest.fail("data was read"))
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong-password")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    bench = Bench(services, data_dir, tmp_path, trials=1, journal=True)
    assert main(bench.args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "refused the credentials" in err, err
    assert "wrong-password" not in err
