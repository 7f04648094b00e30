"""Opening a store, for real: several processes creating one fresh SQLite store at once (both
MLflow's and Optuna's), and every store that cannot be used refused in one line that says
what and where, before any data is read (a read-only filesystem and a full one are real tmpfs
mounts, made when the tests run as root)."""

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import mounted_tmpfs

from benchmark.app.cli import main

ROOT = Path(__file__).resolve().parents[1]
# each process imports once (seconds), then for every attempt waits for that attempt's go file
# and opens a fresh store: all of them at the same moment
OPEN = """import sys, time
from pathlib import Path
which, root, attempts = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
if which == "mlflow":
    from tracking.store import Store
else:
    from studies.storage import open_studies
for k in range(attempts):
    print("ready", flush=True)
    while not (root / f"go{k}").exists():
        time.sleep(0.002)
    try:
        if which == "mlflow":
            Store(f"sqlite:///{root}/{k}/mlflow.db", "tailbench/x/y")
        else:
            open_studies(f"sqlite:///{root}/{k}/optuna.db")
        print("opened", flush=True)
    except Exception as e:
        print(f"failed: {e}", flush=True)
"""


# without the locks two bare MLflow opens lost the race 3 of 3 times, four Optuna ones in 3 of
# 5 attempts
@pytest.mark.slow
@pytest.mark.parametrize("which, procs, attempts", [("mlflow", 3, 2), ("optuna", 4, 4)])
def test_processes_opening_a_fresh_store_at_once_all_succeed(tmp_path, which, procs, attempts):
    workers = [subprocess.Popen([sys.executable, "-c", OPEN, which, str(tmp_path),
                                 str(attempts)], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True) for _ in range(procs)]
    try:
        for k in range(attempts):
            for w in workers:
                assert w.stdout.readline().strip() == "ready"
            (tmp_path / f"go{k}").touch()
            lines = [w.stdout.readline().strip() for w in workers]
            assert lines == ["opened"] * procs, (k, lines)
    finally:
        for w in workers:
            w.kill()
            w.wait()


@pytest.fixture
def no_data(monkeypatch):
    import benchmark.data as data_pkg

    monkeypatch.setattr(data_pkg, "load_dataset", lambda *a, **k: pytest.fail("data was read"))


def run_args(uri: str, storage: str) -> list[str]:
    return ["run", "--model", "cnn", "--variant", "balanced", "--no-tune", "--dataset",
            "fashion-mnist", "--tracking-uri", uri, "--storage", storage]


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("make, says", [
    (lambda d: d.joinpath("m.db").write_text("hello, not a database " * 4),
     "is not an SQLite database"),
    (lambda d: None, "unknown scheme 'foo'"),
])
def test_a_tracking_store_that_is_no_database_or_no_scheme_is_one_line(tmp_path, no_data, capsys,
                                                                        make, says):
    make(tmp_path)
    uri = f"sqlite:///{tmp_path}/m.db" if "SQLite" in says else "foo://host/x"
    assert main(run_args(uri, str(tmp_path / "o.journal"))) == 2
    err = one_line(capsys)
    assert err.startswith("tailbench run: error: tracking ") and says in err, err


def test_an_optuna_storage_that_is_no_database_or_locked_is_one_line(tmp_path, no_data, capsys,
                                                                    monkeypatch):
    import benchmark.localfs as localfs

    bad = tmp_path / "o.db"
    bad.write_text("hello, not a database " * 4)
    uri = f"sqlite:///{tmp_path}/m.db"
    assert main(run_args(uri, f"sqlite:///{bad}")) == 2
    assert "is not an SQLite database" in one_line(capsys)
    locked = tmp_path / "l.db"
    con = sqlite3.connect(locked, isolation_level=None)
    con.execute("CREATE TABLE t (x)")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys, time\ncon = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "con.execute('BEGIN EXCLUSIVE')\nprint('held', flush=True)\ntime.sleep(60)\n"),
        str(locked)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(localfs, "LOCK_WAIT_S", 0.5)
        assert main(run_args(uri, f"sqlite:///{locked}")) == 2
        err = one_line(capsys)
        assert "is locked by another process" in err and str(locked) in err, err
    finally:
        holder.kill()
        holder.wait()


root_only = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs (root only)")


@pytest.fixture
def tmpfs(tmp_path):
    """A 128 MB tmpfs of the test's own (unmounted at the end)."""
    with mounted_tmpfs(tmp_path / "mnt", 128) as mnt:
        yield mnt


@root_only
def test_a_read_only_store_is_one_line_before_any_data_is_read(tmpfs, no_data, capsys):
    subprocess.run([sys.executable, "-c", "import sys\nfrom tracking.store import Store\n"
                    "Store(sys.argv[1], 'tailbench/x/y')", f"sqlite:///{tmpfs}/mlflow.db"],
                   cwd=ROOT, check=True)  # a real MLflow store, made (and closed) elsewhere
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    assert main(run_args(f"sqlite:///{tmpfs}/mlflow.db", str(tmpfs.parent / "o.journal"))) == 2
    err = one_line(capsys)
    assert "read-only filesystem" in err and str(tmpfs) in err and "writable" in err, err
    # reading it still works: it holds no run, and that is what `results` says
    assert main(["results", "--tracking-uri", f"sqlite:///{tmpfs}/mlflow.db"]) == 2
    assert "holds no tailbench run yet" in one_line(capsys)
    assert main(run_args(f"sqlite:///{tmpfs.parent}/m.db", str(tmpfs / "o.journal"))) == 2
    err = one_line(capsys)
    assert "Optuna storage" in err and "read-only filesystem" in err, err


@root_only
def test_a_full_store_is_one_line_before_any_data_is_read(tmpfs, no_data, capsys):
    filler = tmpfs / "filler"
    with filler.open("wb") as f:  # leaves under a megabyte
        f.write(b"\0" * (127 * 2**20))
    assert main(run_args(f"sqlite:///{tmpfs}/mlflow.db", str(tmpfs.parent / "o.journal"))) == 2
    err = one_line(capsys)
    assert "free on" in err and str(tmpfs) in err and "free some space" in err, err


def test_an_unreachable_tracking_server_is_one_line_within_seconds(tmp_path, no_data, capsys):
    start = time.monotonic()
    assert main(run_args("http://127.0.0.1:1", str(tmp_path / "o.journal"))) == 2
    err = one_line(capsys)
    assert "cannot be reached" in err and time.monotonic() - start < 30, err
