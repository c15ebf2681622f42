"""Whether the collector (its data directory, every worker) still replays what a previous life left.

Each writer slot (:class:`dlrlens.store.writer.ReceiptStorage`, one per gunicorn worker) records
its own state in ``stats/replay/<slot>.json`` (:func:`record`, written atomically): whether it is
catching up and since when (its start), with its pid. It writes it at its start and once its
flusher's first pass went through (or when it closes). :func:`collector_state` reads every
slot's record, so whichever worker answers ``/healthz`` answers for the whole collector: a worker
whose slot had nothing left said "ok" while another still replayed a backlog.

A worker killed mid-replay leaves a record saying "catching up" for ever. Such a record counts
only while the slot's lock (``wal/<slot>.lock``) is held, read from the kernel's list of locks
(``/proc/locks``) rather than by trying the lock: a try holds it for an instant, and a worker
starting then would take another slot, or skip adopting that slot's log (its recovery takes
the lock with ``wait=False``). While another worker adopts the dead slot's log it holds that
lock, so the collector says "catching up" until the adoption is done too. Without
``/proc/locks`` (not Linux) the record's pid must be alive instead.

Reading costs a glob and a few small files (and ``/proc/locks`` only when some record says
"catching up"): no lock is taken, nothing is written; a record that is missing or does not
parse is left out (status must answer anyway).
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

from dlrlens.store import files, layout

PROC_LOCKS = Path("/proc/locks")


def state_path(data_dir: Path, slot: str) -> Path:
    return Path(data_dir, layout.REPLAY_STATE_DIR, f"{slot}.json")


def record(data_dir: Path, slot: str, catching_up: bool, since: float) -> None:
    """Record slot ``slot``'s state: ``catching_up`` since ``since`` (epoch seconds, its start).
    Best effort, like the counters: an OSError is swallowed (the worker's own answer still holds it)."""
    doc = {"slot": slot, "pid": os.getpid(), "catching_up": catching_up,
           "since": datetime.fromtimestamp(since, timezone.utc).isoformat(), "since_epoch": since,
           "updated_at": datetime.now(timezone.utc).isoformat()}
    try:
        files.publish_bytes(state_path(data_dir, slot), json.dumps(doc).encode())
    except OSError:
        pass


def collector_state(data_dir: Path, also: tuple[str, float] | None = None) -> dict:
    """The collector's state: ``{"catching_up": bool, "slots": [slots catching up], "since": ISO
    time the oldest of their replays started or None, "seconds": how long ago (0 when none)}``.
    A record of a slot whose lock no live process holds is ignored (see the module docstring).
    ``also``: (slot, since) of the asking worker when it is catching up itself, counted even if
    its record could not be written."""
    claims = [doc for doc in _records(data_dir) if doc.get("catching_up") is True]
    if claims:
        held = held_lock_inodes()
        claims = [doc for doc in claims if _live(data_dir, doc, held)]
    if also is not None and all(doc["slot"] != also[0] for doc in claims):
        claims.append({"slot": also[0], "since_epoch": also[1]})
    if not claims:
        return {"catching_up": False, "slots": [], "since": None, "seconds": 0.0}
    since = min(float(doc["since_epoch"]) for doc in claims)
    return {"catching_up": True, "slots": sorted(str(doc["slot"]) for doc in claims),
            "since": datetime.fromtimestamp(since, timezone.utc).isoformat(),
            "seconds": round(max(time.time() - since, 0.0), 3)}


def _records(data_dir: Path) -> list[dict]:
    found = []
    for path in sorted(Path(data_dir, layout.REPLAY_STATE_DIR).glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being replaced, or not ours
        if isinstance(doc, dict) and doc.get("slot") == path.stem and isinstance(doc.get("since_epoch"), (int, float)):
            found.append(doc)
    return found


def held_lock_inodes() -> set[int] | None:
    """Inode numbers of the files some process holds an ``flock`` on (``/proc/locks``), or
    None when the kernel does not list them. Lines read ``1: FLOCK ADVISORY WRITE <pid>
    <major>:<minor>:<inode> 0 EOF`` (``->`` marks a waiter, not a holder). The device is not
    compared: on overlay file systems it differs from ``stat``'s; another held file with the
    same inode number on another device would only keep a stale record counted."""
    try:
        text = PROC_LOCKS.read_text()
    except OSError:
        return None
    inodes = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK":
            try:
                inodes.add(int(fields[5].rsplit(":", 1)[1]))
            except (IndexError, ValueError):
                continue
    return inodes


def slot_held(wal_root: Path, slot: str, held: set[int]) -> bool:
    """Whether ``slot``'s lock is held by some process (``held``: :func:`held_lock_inodes`)."""
    try:
        return Path(wal_root, f"{slot}.lock").stat().st_ino in held
    except OSError:
        return False  # no lock file: no writer there


def _live(data_dir: Path, doc: dict, held: set[int] | None) -> bool:
    if held is not None:
        return slot_held(Path(data_dir, layout.WAL_DIR), doc["slot"], held)
    try:
        pid = int(doc.get("pid", 0))
        if pid <= 0:
            return False  # os.kill(0, ...) would signal our own process group
        os.kill(pid, 0)
    except PermissionError:
        return True  # alive, another user's
    except (OSError, ValueError, TypeError):
        return False  # gone
    return True
