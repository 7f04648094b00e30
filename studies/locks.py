"""Locks that the operating system or the database lets go of when their holder dies.

Workers that share a study storage coordinate through locks beside it, never through rows of
their own in it (optuna-dashboard shows nothing of them):
- a local storage (a journal file, a SQLite database): `flock` file locks in a folder next to
  it (`runs/optuna.journal.locks/`), via `filelock`; the kernel releases a lock when its
  process ends, kill -9 included;
- PostgreSQL: session advisory locks (`pg_try_advisory_lock`) on a connection held for as long
  as the lock; the server releases them when the connection ends. The connection asks the
  server to probe it every 30 s (TCP keepalives), so a lost machine's locks go within about
  a minute and a half rather than the operating system's default two hours.

A lock is named by a string; the name is hashed into a file name or a 64-bit key.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Protocol

import sqlalchemy
from filelock import FileLock, Timeout

from studies.storage import StorageError, is_journal, local_path, masked, storage_url


class Held:
    """A lock this process holds; `release` is idempotent, and it is a context manager."""

    def __init__(self, release) -> None:
        self._release = release

    def release(self) -> None:
        release, self._release = self._release, None
        if release:
            release()

    def __enter__(self) -> Held:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class Locks(Protocol):
    def try_hold(self, name: str) -> Held | None:
        """The lock if it is free now, else None."""

    def hold(self, name: str) -> Held:
        """The lock, waiting for it as long as it takes."""


class FileLocks:
    """flock locks, one file per name, in `folder`."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def _lock(self, name: str) -> FileLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        digest = hashlib.blake2b(name.encode(), digest_size=10).hexdigest()
        # no soft-lock fallback: a lock that outlives a killed process would block forever;
        # one object per acquisition, so two holders in one process still exclude each other
        return FileLock(self.folder / f"{digest}.lock", thread_local=False,
                        fallback_to_soft=False)

    def try_hold(self, name: str) -> Held | None:
        lock = self._lock(name)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return None
        return Held(lock.release)

    def hold(self, name: str) -> Held:
        lock = self._lock(name)
        lock.acquire()
        return Held(lock.release)


def advisory_key(name: str) -> int:
    """The signed 64-bit key PostgreSQL's advisory locks take for `name`."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big",
                          signed=True)


class AdvisoryLocks:
    """PostgreSQL session advisory locks, each on a connection of its own."""

    KEEPALIVES = ("SET tcp_keepalives_idle = 30; SET tcp_keepalives_interval = 10; "
                  "SET tcp_keepalives_count = 6")

    def __init__(self, url: str) -> None:
        # sqlalchemy is optuna's own dependency: the same URL, the same driver as the storage
        self._text = sqlalchemy.text
        self.engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                               isolation_level="AUTOCOMMIT")

    def _take(self, name: str, wait: bool) -> Held | None:
        conn = self.engine.connect()
        try:
            conn.exec_driver_sql(self.KEEPALIVES)
            key = {"k": advisory_key(name)}
            if wait:
                conn.execute(self._text("SELECT pg_advisory_lock(:k)"), key)
            elif not conn.execute(self._text("SELECT pg_try_advisory_lock(:k)"), key).scalar():
                conn.close()
                return None
        except BaseException:
            conn.close()
            raise

        def release() -> None:
            try:
                conn.execute(self._text("SELECT pg_advisory_unlock(:k)"), key)
            finally:
                conn.close()  # closing alone would release it too

        return Held(release)

    def try_hold(self, name: str) -> Held | None:
        return self._take(name, wait=False)

    def hold(self, name: str) -> Held:
        return self._take(name, wait=True)


@functools.cache
def _locks(url: str) -> Locks:
    if is_journal(url):
        return FileLocks(Path(f"{url}.locks"))
    if url.startswith("sqlite"):
        return FileLocks(Path(f"{url.split(':///', 1)[1]}.locks"))
    if url.startswith("postgresql"):
        return AdvisoryLocks(url)
    raise StorageError(f"Optuna storage {masked(url)}: workers coordinate through file locks "
                       "(a journal or SQLite) or PostgreSQL advisory locks; use one of those")


def open_locks(storage: str | Path | None = None) -> Locks:
    """The locks that go with a study storage (see the module docstring)."""
    return _locks(storage_url(storage))


def cell_lock(key: str) -> str:
    """The name of the lock a cell's owner holds while it trains the cell's final fits."""
    return f"cell {key}"


def repetition_lock(key: str, repetition: int) -> str:
    """The name of the lock a worker holds while it trains one repetition of a cell: the
    cell's owner, or a worker that has no cell of its own left (benchmark/app/runner.py)."""
    return f"repetition {key} {repetition}"


def worker_lock(worker: str) -> str:
    """The name of the lock a worker holds while it runs a study's trials."""
    return f"worker {worker}"


def is_free(locks: Locks, name: str) -> bool:
    """Whether nobody holds the lock now (its holder, if any, has died or let go)."""
    held = locks.try_hold(name)
    if held is None:
        return False
    held.release()
    return True


def locks_place(storage: str | Path | None = None) -> str:
    """Where the locks of a study storage live, the same string from any working folder: a
    run records it, and only a worker with the same locks can judge whether its owner lives."""
    url = storage_url(storage)
    path = local_path(url)
    return str(path.resolve()) if path is not None else masked(url)
