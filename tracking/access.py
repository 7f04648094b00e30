"""Opening the tracking store, before any data is read: every way it cannot be used told in
one line (what, where, what to do), one process at a time creating a fresh SQLite database,
and a little disk space kept in reserve so that a run can still be ended FAILED when its disk
fills up.

- A fresh SQLite store is created (MLflow's migrations) by one process at a time: the first
  open holds a file lock beside the database (`mlflow.db.lock`); two `tailbench run`s started
  at once otherwise race, and one dies with "table _alembic_tmp_experiments already exists".
- A writable local store keeps `mlflow.db.reserve` (4 MB) on its disk. When a write fails for
  a full disk the reserve is deleted, so the run's FAILED status and its reason can be
  written; the next open that finds space again puts it back.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path

import requests
from filelock import FileLock

from benchmark.errors import UserError
from benchmark.localfs import (
    MB,
    mount_of,
    no_space,
    space_problem,
    sqlite_problem,
    write_problem,
)

# what MLflow 3 reads (sqlalchemy dialects, "+driver" allowed; a server)
SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")
EXAMPLES = "use sqlite:///path/mlflow.db, http://host:5000 or postgresql://user@host/db"
OPEN_NEED = 64 * MB  # free space a local store must have for a `tailbench run` to start
RESERVE = 4 * MB  # ... of which this much is held back for ending runs on a full disk
REACH_TIMEOUT_S = 10  # a server that does not answer /health in this long is unreachable


class TrackingError(UserError, ValueError):
    """The tracking store cannot be used; the message says which and how to fix it."""


class NoSpace(TrackingError, OSError):
    """A store's disk filled up while a run was writing to it."""


def masked(uri: str) -> str:
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", uri)


def local_db(uri: str) -> Path | None:
    """The database file of a local SQLite store, else None."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def check(uri: str, write: bool) -> None:
    """Refuse, in one line, a URI or a store that cannot be used (see the module docstring)."""
    if "://" not in uri:
        raise TrackingError(f"tracking URI {masked(uri)!r} is not a URI: {EXAMPLES}")
    scheme = uri.split("://", 1)[0]
    if scheme.split("+")[0] not in SCHEMES:
        raise TrackingError(f"tracking URI {masked(uri)!r}: unknown scheme {scheme!r}; "
                            f"{EXAMPLES}")
    db = local_db(uri)
    if db is not None:
        _check_local(uri, db, write)
    elif scheme in ("http", "https"):
        _check_reachable(uri)


def _check_local(uri: str, db: Path, write: bool) -> None:
    if not write and not db.exists():
        raise TrackingError(f"tracking store {uri} holds no tailbench run yet ({db} does not "
                            "exist): run `make benchmark` (or `tailbench run`) first, or pass "
                            "--tracking-uri")
    problem = sqlite_problem(db, write)
    if write:
        problem = problem or write_problem(db) or write_problem(db.parent / "artifacts") or \
            space_problem(db.parent, OPEN_NEED)
    if problem:
        raise TrackingError(f"tracking store {uri}: {db} {problem}; {_fix(problem)}")
    if write:
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrackingError(f"tracking store {uri}: cannot create {db.parent} "
                                f"({e.strerror}); choose a writable place") from None
        _keep_reserve(db)


def _fix(problem: str) -> str:
    if "read-only" in problem or "not writable" in problem:
        return ("make it writable, or point --tracking-uri at a writable place (reading it, "
                "`tailbench results --out FILE` and `tailbench report` still work)")
    if "free on" in problem:
        return "free some space, or move the store (STORE=... or --tracking-uri)"
    if "locked" in problem:
        return "wait for the other process to finish, or stop it"
    return "point --tracking-uri at an MLflow database or at a new file"


def _check_reachable(uri: str) -> None:
    try:  # MLflow itself retries a refused connection for minutes before it says so
        requests.get(f"{uri.rstrip('/')}/health", timeout=REACH_TIMEOUT_S)
    except requests.RequestException as e:
        raise TrackingError(f"tracking server {masked(uri)} cannot be reached "
                            f"({type(e).__name__}): start it (`make services`), or check "
                            "the URI and the network") from None


@contextmanager
def first_open(uri: str):
    """Held while the store is opened: one process at a time creates or migrates a local
    SQLite database (see the module docstring); nothing for other stores."""
    db = local_db(uri)
    if db is None or (db.exists() and write_problem(Path(f"{db}.lock"))):
        yield  # a server's, or a store only read here (it cannot be created nor migrated)
        return
    with FileLock(f"{db}.lock", thread_local=False):
        yield


def explain(uri: str, e: BaseException) -> TrackingError:
    """An error from opening or writing the store, as one line that says what to do."""
    text = str(getattr(e, "message", None) or e).strip()
    first = masked(text.splitlines()[0] if text else type(e).__name__)[:300]
    low = text.lower()
    where = f"tracking store {masked(uri)}"
    if no_space(e):
        return TrackingError(f"{where} has no space left on {where_full(uri, e)}: free some "
                             "space, or move the store")
    if "readonly" in low or "read-only" in low:
        return TrackingError(f"{where} is read-only ({first}): make it writable")
    if "locked" in low:
        return TrackingError(f"{where} is locked by another process ({first}): wait for it "
                             "to finish, or stop it")
    if any(s in low for s in ("password", "authentication", "401", "unauthorized", "403")):
        return TrackingError(f"{where} refused the credentials ({first}): check the user and "
                             "password (PGPASSFILE for PostgreSQL, MLFLOW_TRACKING_USERNAME/"
                             "PASSWORD for a server)")
    if any(s in low for s in ("connection refused", "could not connect", "could not translate",
                              "name or service not known", "timed out", "max retries")):
        return TrackingError(f"{where} cannot be reached ({first}): check that it is up and "
                             "the URI")
    if "not a database" in low:
        return TrackingError(f"{where} is not an MLflow database ({first}): {_fix('')}")
    return TrackingError(f"{where} cannot be used: {type(e).__name__}: {first}")


def where_full(uri: str, e: BaseException | None = None) -> str:
    """The filesystem that filled up: the file a write failed on (a copy's destination, its
    second filename), else the store's own."""
    while e is not None:
        if isinstance(e, OSError) and (e.filename2 or e.filename):
            return mount_of(Path(e.filename2 or e.filename))
        e = e.__cause__ or e.__context__
    db = local_db(uri)
    return mount_of(db) if db else "the store's disk"


def _reserve(db: Path) -> Path:
    return Path(f"{db}.reserve")


def _keep_reserve(db: Path) -> None:
    path = _reserve(db)
    if path.is_file() and path.stat().st_size >= RESERVE:
        return
    try:
        tmp = path.with_name(f"{path.name}.{os.getpid()}")
        with tmp.open("wb") as f:  # real blocks, not a sparse file
            f.write(b"\0" * RESERVE)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except OSError:  # no room for it now: the space check above has said what it could
        tmp.unlink(missing_ok=True)


def release_reserve(uri: str) -> bool:
    """Give the reserve's space back (a write failed for a full disk); whether there was one."""
    db = local_db(uri)
    if db is None or not _reserve(db).exists():
        return False
    _reserve(db).unlink(missing_ok=True)
    return True
