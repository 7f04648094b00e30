"""The local files that hold a store (an SQLite database, an Optuna journal, an artifact
folder), checked before a command uses them, and their faults told in a few words: the
filesystem is read-only or full, the file is not a database or is locked. Shared by both
stores (studies/storage.py, tracking/access.py), which add what the user should do."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
from pathlib import Path

MB = 2**20
SQLITE_HEADER = b"SQLite format 3\x00"
# how long a store waits for another process's write lock before calling it locked (MLflow's
# own SQLite sessions wait 20 s)
LOCK_WAIT_S = float(os.environ.get("TAILBENCH_SQLITE_WAIT", "20"))
_FULL = ("database or disk is full", "no space left on device", "disk quota exceeded")


def existing(path: Path) -> Path:
    """`path`, or its nearest ancestor that exists (what a new file's checks look at)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def mount_of(path: Path) -> str:
    """The mount point of the filesystem that holds `path`."""
    path = existing(path).resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return str(path)


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(existing(path)).free


def no_space(e: BaseException | None) -> bool:
    """Whether `e`, or an exception it came from, says the disk is full."""
    seen = 0
    while e is not None and seen < 20:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(s in str(e).lower() for s in _FULL):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def megabytes(n: float) -> str:
    return f"{n / MB:,.0f} MB" if n >= 10 * MB else f"{n / MB:.1f} MB"


def write_problem(path: Path) -> str | None:
    """Why this process cannot write `path` (or create it in its folder), or None."""
    where = existing(path)
    if os.access(where, os.W_OK):
        return None
    if os.statvfs(where).f_flag & os.ST_RDONLY:
        return f"is on a read-only filesystem ({mount_of(where)})"
    return f"is not writable by this user ({where} is mode {where.stat().st_mode & 0o777:o})"


def space_problem(path: Path, need: int) -> str | None:
    """'only N MB free on /mount' when less than `need` bytes are free there, else None."""
    free = free_bytes(path)
    if free >= need:
        return None
    return f"has only {megabytes(free)} free on {mount_of(path)} (needs about {megabytes(need)})"


def sqlite_problem(db: Path, write: bool) -> str | None:
    """Why an existing SQLite file cannot be used (not a database, locked), or None; a file
    that does not exist yet is no problem here."""
    if not db.is_file() or db.stat().st_size == 0:
        return None
    with db.open("rb") as f:
        head = f.read(len(SQLITE_HEADER))
    if head != SQLITE_HEADER:
        return f"is not an SQLite database (it starts with {head[:12]!r})"
    try:
        con = sqlite3.connect(f"file:{db}?mode={'rw' if write else 'ro'}", uri=True,
                              timeout=LOCK_WAIT_S)
        try:
            if write:  # a write lock, given back at once: waits out another writer's
                con.execute("BEGIN IMMEDIATE")
                con.rollback()
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            con.close()
    except sqlite3.Error as e:
        if "locked" in str(e):
            return (f"is locked by another process (it held a write lock for over "
                    f"{LOCK_WAIT_S:.0f} s)")
        return f"cannot be opened ({type(e).__name__}: {e})"
    return None
