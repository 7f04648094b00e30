"""What a `tailbench run` checks and cleans up before it trains: runs that dead or failed
processes left RUNNING, ended FAILED with the reason; and, before each cell, whether the disks
it writes to have room for it.

**Orphans.** A run stays RUNNING when its process dies (kill -9, a lost machine) or fails
where it can no longer write (a full disk). Whether such a run still has a live owner is told
by the locks its owners hold (studies/locks.py), which the OS or PostgreSQL lets go of when
their holder dies: a cell run by the cell's lock, a repetition run by its repetition's lock
(whichever worker trains it), a trial run by its worker's lock. Each lock is taken before its
runs are opened and given back after they end, so a RUNNING run whose lock this process can
take now has no live owner; it is ended while the lock is held, after its status is read
again. A run whose `locks` tag names other locks (another study storage) is left to the
workers that use those.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmark.cells import Cell
from benchmark.localfs import MB, mount_of, space_problem
from benchmark.models import weight_bytes
from studies.locks import Locks, cell_lock, locks_place, repetition_lock, worker_lock
from studies.storage import local_path, storage_url
from tracking.store import KIND, Store

LOST_WORKER = "its worker died (or failed, e.g. on a full disk) before the run ended"
LOST_TRIAL = "its worker died in the middle of this trial"


def sweep_orphans(store: Store, locks: Locks, storage) -> int:
    """End FAILED every RUNNING run of the experiment that no live process owns; how many."""
    place, ended = locks_place(storage), 0
    for run in store.search("attributes.status = 'RUNNING'"):
        tags = run.data.tags
        owner = _owner_lock(store, run, tags)
        if owner is None or tags.get("locks", place) != place:
            continue
        held = locks.try_hold(owner)
        if held is None:  # a live worker holds it: the run is being worked on
            continue
        with held:
            reason = LOST_TRIAL if tags.get(KIND) == "trial" else LOST_WORKER
            ended += store.end_lost([run.info.run_id], reason)
    return ended


def _owner_lock(store: Store, run, tags: dict) -> str | None:
    """The lock a live owner of this run holds, or None when the run names none."""
    kind = tags.get(KIND)
    if kind == "trial":
        return worker_lock(tags["worker"]) if tags.get("worker") else None
    if kind in ("cell", "repetition") and tags.get("cell_key"):
        if kind == "repetition" and "locks" not in tags:  # its cell run says where
            parent = store.client.get_run(tags["mlflow.parentRunId"]).data.tags
            tags.setdefault("locks", parent.get("locks", ""))
        if kind == "repetition" and tags.get("repetition", "").isdigit():
            return repetition_lock(tags["cell_key"], int(tags["repetition"]))
        return cell_lock(tags["cell_key"])
    return None


def cell_needs(cell: Cell, repetitions: int, num_classes: int = 10) -> dict[str, int]:
    """Roughly what a cell writes, in bytes: to the tracking store (each repetition's logged
    model, a little more than its fp32 weights, plus figures and reports; each trial's
    curves), to the study storage (a few records a trial epoch) and to the temporary folder
    (one model at a time before it is uploaded)."""
    model = weight_bytes(cell.model, num_classes)
    return {"tracking": repetitions * (model * 5 // 4 + 2 * MB) + cell.trials * MB // 4
            + 8 * MB,
            "studies": cell.trials * (cell.epochs + 4) * 4096 + MB,
            "temporary": model * 2 + 8 * MB}


def disk_shortfall(cell: Cell, repetitions: int, store: Store, storage,
                   num_classes: int = 10) -> str | None:
    """Why the cell should not start (a disk it writes to lacks the room it roughly needs:
    `cell_needs`), or None. Needs on one filesystem add up; a server's disks are its own."""
    needs = cell_needs(cell, repetitions, num_classes)
    places = {"temporary": Path(tempfile.gettempdir())}
    if store.local_folder() is not None:
        places["tracking"] = store.local_folder()
    study_file = local_path(storage_url(storage))
    if study_file is not None and cell.trials:
        places["studies"] = study_file.parent
    by_mount: dict[str, tuple[Path, int]] = {}
    for what, path in places.items():
        folder, need = by_mount.get(mount_of(path), (path, 0))
        by_mount[mount_of(path)] = (folder, need + needs[what])
    for folder, need in by_mount.values():
        problem = space_problem(folder, need)
        if problem:
            return (f"{folder} {problem} for this cell's {repetitions} repetition(s); free "
                    "some space, or move the store (STORE=..., --tracking-uri, --storage)")
    return None
