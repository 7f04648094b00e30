"""An Optuna journal file that survives a crash at any byte.

Optuna appends each record as one JSON line, under a lock. A writer killed, or a disk filled,
in the middle of a line leaves a *torn* last record: Optuna's reader skips it, but the next
append lands right after it, the two make one line that is not JSON, and from then on every
read of the file fails (`Expecting ':' delimiter`): the studies are lost.

So every append here first looks at the file's last byte, under the same lock Optuna writes
under (its own symlink lock: optuna-dashboard and any other Optuna process take the same
one). A last line without its newline can only be a dead writer's: it is set aside, appended
to `<journal>.torn`, the file cut back to the last whole record, and a one-line warning names
the file and what was dropped. A crash costs at most that record: the trial it belonged to is
then RUNNING with no live worker, and is failed and run again (studies/trials.py).

A journal that was already damaged (a torn record with another appended after it, as Optuna
alone leaves it) is repaired the same way when it is opened: the whole record at the end of
such a line is kept, the torn bytes before it set aside.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from optuna.storages.journal import JournalFileSymlinkLock

from benchmark.errors import DataWarning

RECORD_START = b'{"op_code":'  # how Optuna's every record begins (json.dumps, compact)


class TornRecordWarning(DataWarning):
    """A journal's torn record was set aside (the console shows it as one line)."""


class TornSafeLock(JournalFileSymlinkLock):
    """Optuna's journal lock; once held, a torn last record is set aside before the append."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = Path(path)

    def acquire(self) -> bool:
        got = super().acquire()
        try:
            set_aside_torn_tail(self.path)
        except BaseException:
            self.release()
            raise
        return got


def _aside(path: Path, what: bytes) -> Path:
    torn = Path(f"{path}.torn")
    with torn.open("ab") as f:
        f.write(what + b"\n")
    return torn


def _warn(path: Path, dropped: bytes, torn: Path, where: str) -> None:
    shown = dropped[:60].decode("utf-8", "replace")
    warnings.warn(TornRecordWarning(
        f"Optuna journal {path}: {where} was a record cut short (a crash or a full disk "
        f"mid-write); its {len(dropped)} bytes ({shown!r}{'...' if len(dropped) > 60 else ''}) "
        f"are set aside in {torn}, and the studies go on from the records before it"),
        stacklevel=2)


def set_aside_torn_tail(path: Path) -> bool:
    """Cut a torn last record off the journal (the caller holds its lock); whether it did."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with path.open("rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return False
        end = _last_newline(f) + 1
        f.seek(end)
        dropped = f.read()
        torn = _aside(path, dropped)
        f.truncate(end)
        f.flush()
        os.fsync(f.fileno())
    _warn(path, dropped, torn, "its last line")
    return True


def _last_newline(f) -> int:
    """The offset of the file's last b"\\n", or -1; read backwards in blocks."""
    pos = f.seek(0, os.SEEK_END)
    while pos > 0:
        step = min(pos, 1 << 16)
        pos -= step
        f.seek(pos)
        found = f.read(step).rfind(b"\n")
        if found >= 0:
            return pos + found
    return -1


def repair(path: Path) -> int:
    """Set aside the torn bytes of every line that is not a record, keeping a whole record
    appended after them (the caller holds the lock); how many lines it mended. Raises
    ValueError naming the line when one holds no whole record at all."""
    set_aside_torn_tail(path)
    lines = path.read_bytes().splitlines(keepends=True)
    mended = 0
    for number, line in enumerate(lines, 1):
        if _is_record(line):
            continue
        start = line.rfind(RECORD_START)
        if start <= 0 or not _is_record(line[start:]):
            raise ValueError(f"line {number} is not an Optuna record")
        _warn(path, line[:start], _aside(path, line[:start]), f"line {number}")
        lines[number - 1] = line[start:]
        mended += 1
    if mended:
        tmp = path.with_name(f"{path.name}.mending")
        tmp.write_bytes(b"".join(lines))
        os.replace(tmp, path)
    return mended


def _is_record(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False
