"""Where studies live: a journal file on one machine, a database when machines share them.

`storage` everywhere is what the user typed (`--storage`, OPTUNA_STORAGE in the Makefile):
- None: $TAILBENCH_STORAGE (set by `source .services/env` after `make services`), else the
  journal file runs/optuna.journal (no server, safe for several processes on one machine)
- a path: a journal file there (its folder is created)
- sqlite:///path.db, postgresql://user:pass@host/db: an Optuna RDBStorage
"""

from __future__ import annotations

import os
import re
import warnings
from contextlib import nullcontext
from pathlib import Path
from urllib.parse import urlsplit

import optuna
from filelock import FileLock
from optuna.storages.journal import JournalFileBackend

from benchmark.errors import UserError
from benchmark.localfs import MB, SQLITE_HEADER, space_problem, sqlite_problem, write_problem
from studies.journal import TornSafeLock, repair

DEFAULT_JOURNAL = Path("runs") / "optuna.journal"
HEARTBEAT_S = int(os.environ.get("TAILBENCH_HEARTBEAT", "10"))  # seconds between heartbeats
GRACE_S = 3 * HEARTBEAT_S  # a trial with no heartbeat for this long is taken as dead
ENV = "TAILBENCH_STORAGE"  # like MLFLOW_TRACKING_URI for the tracking store
# SQLAlchemy dialects, "+driver" allowed; not MySQL: workers coordinate by file locks next to a
# local store or PostgreSQL advisory locks (studies/locks.py)
RDB_SCHEMES = ("sqlite", "postgresql")
OPEN_NEED = 16 * MB  # free space a local storage must have when a command opens it
EXAMPLES = ("use a journal file path (runs/optuna.journal), sqlite:///runs/optuna.db or "
            "postgresql://user:password@host:5432/db")
# a URL scheme: two or more characters before ':' (one letter is a Windows drive, a path)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):")


class StorageError(UserError, ValueError):
    """The Optuna storage cannot be used; the message says which and how to fix it."""


def masked(url: str) -> str:
    """The URL with any password replaced, fit for an error message or a log."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def _check_rdb(url: str) -> str:
    parts = urlsplit(url)
    dialect = parts.scheme.split("+")[0]
    where = f"Optuna storage {masked(url)!r}"
    if dialect not in RDB_SCHEMES:
        raise StorageError(f"{where}: unknown scheme {parts.scheme!r}; {EXAMPLES}")
    if dialect == "sqlite":
        if not url.startswith(f"{parts.scheme}:///") or not url.split(":///", 1)[1]:
            raise StorageError(f"{where}: a SQLite URL needs three slashes and a file, like "
                             "sqlite:///runs/optuna.db (relative) or sqlite:////abs/optuna.db")
    elif not parts.hostname or not parts.path.strip("/"):
        raise StorageError(f"{where}: a {dialect} URL needs a host and a database name, like "
                         f"{dialect}://user:password@host/optuna")
    return url


def _check_journal(text: str) -> str:
    path = Path(text).expanduser()
    where = f"Optuna journal file {str(path)!r}"
    if path.is_dir():
        raise StorageError(f"{where} is a folder; name a file in it, e.g. "
                           f"{path / 'optuna.journal'}")
    if path.is_file():
        with path.open("rb") as f:
            if f.read(len(SQLITE_HEADER)) == SQLITE_HEADER:
                raise StorageError(f"{where} is a SQLite database; pass sqlite:///{path} instead")
    return str(path)


def storage_url(storage: str | Path | None = None) -> str:
    """The checked storage string: a journal file path or an RDB URL. Raises ValueError that
    says what is wrong with `storage` and what to write instead."""
    if storage is None:
        storage = os.environ.get(ENV) or DEFAULT_JOURNAL
    text = str(storage).strip()
    if not text:
        raise StorageError(f"Optuna storage is empty; {EXAMPLES}")
    if "://" in text:
        return _check_rdb(text)
    scheme = _SCHEME.match(text)
    if scheme and not isinstance(storage, Path):
        raise StorageError(f"Optuna storage {masked(text)!r} looks like a URL without '//' "
                         f"after {scheme.group(1)}:; {EXAMPLES}")
    return _check_journal(text)


def is_journal(url: str) -> bool:
    return "://" not in url


def local_path(url: str) -> Path | None:
    """The file of a local storage (a journal, an SQLite database), else None."""
    if is_journal(url):
        return Path(url)
    return Path(url.split(":///", 1)[1]) if url.startswith("sqlite") else None


def _check_local(path: Path, url: str) -> None:
    """A local storage this process can write, with some room, and (SQLite) not locked: the
    one-line refusal otherwise, before any data is read."""
    problem = (sqlite_problem(path, write=True) if not is_journal(url) else None) or \
        write_problem(path) or space_problem(path.parent, OPEN_NEED)
    if not problem:
        return
    if "read-only" in problem or "not writable" in problem:
        fix = "make it writable, or pass --storage a writable place"
    elif "free on" in problem:
        fix = "free some space, or move the storage (STORE=... or --storage)"
    elif "locked" in problem:
        fix = "wait for the other process to finish, or stop it"
    else:
        fix = "pass --storage a journal path or a new sqlite:/// file"
    raise StorageError(f"Optuna storage {masked(url)}: {path} {problem}; {fix}")


def _make_parent(path: Path, url: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"Optuna storage {masked(url)!r}: cannot create the folder "
                         f"{path.parent} ({e.strerror}); choose a writable place") from None


def _retry_stale():
    """Optuna's callback that queues a dead worker's trial again (experimental in Optuna 5:
    its warning is silenced here rather than shown to every user at every start)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)


def open_studies(storage: str | Path | None = None):
    """An Optuna storage object for `storage` (see the module docstring), folders created."""
    url = storage_url(storage)
    path = local_path(url)
    if path is not None:
        _make_parent(path, url)
        _check_local(path, url)
    if is_journal(url):
        return _journal(url)
    try:
        # a fresh SQLite file gets its tables from one process at a time: two at once race
        # (one dies with "table ... already exists"); the lock is the OS's, gone with its holder
        with FileLock(f"{path}.lock", thread_local=False) if path else nullcontext():
            return _rdb(url)
    except Exception as e:  # sqlalchemy's connection and driver errors
        raise StorageError(_rdb_problem(url, e)) from None


def _journal(url: str):
    """The journal storage, its torn records set aside (studies/journal.py): one at its end
    now, under Optuna's own lock, and before every append after."""
    lock = TornSafeLock(url)
    lock.acquire()
    lock.release()
    try:
        return optuna.storages.JournalStorage(JournalFileBackend(url, lock_obj=lock))
    except ValueError:  # a line that is not a record: mended where it can be, then again
        lock.acquire()
        try:
            repair(Path(url))
        except ValueError as e:
            raise StorageError(f"Optuna journal {url} is damaged: {e}; move the file aside "
                               "(its studies then start again) or pass another --storage"
                               ) from None
        finally:
            lock.release()
        return optuna.storages.JournalStorage(JournalFileBackend(url, lock_obj=lock))


def _rdb(url: str):
    # heartbeats let a worker that died (kill -9, a lost machine) be found out: its trial
    # is failed after the grace period and retried with the same parameters
    with warnings.catch_warnings():  # heartbeat_interval is "experimental" since v2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
            heartbeat_stale_trial_callback=_retry_stale())


def _rdb_problem(url: str, e: Exception) -> str:
    text = str(e)
    first = masked(text.splitlines()[0]).rstrip(".") if text else ""
    low = text.lower()
    if "password" in low or "authentication" in low:
        fix = "the server refused the credentials: check the user and password (PGPASSFILE)"
    elif any(s in low for s in ("connection refused", "could not connect", "timeout",
                                "could not translate", "name or service not known")):
        fix = "the server cannot be reached: check that it is up (`make services`) and the URI"
    elif "locked" in low:
        fix = "it is locked by another process: wait for it to finish, or stop it"
    elif any(s in low for s in ("disk is full", "no space")):
        fix = "its disk is full: free some space, or move the storage"
    else:
        fix = ("check that the server is up, the credentials (PGPASSFILE for PostgreSQL), and "
               "that its driver is installed (psycopg for postgresql)")
    return f"Optuna storage {masked(url)} cannot be opened ({type(e).__name__}: {first}): {fix}"
