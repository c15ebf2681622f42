"""Raw bodies of refused requests, kept for audit under ``data/rejected/<reason>/``.

Bounded: at most ``max_bytes`` of each body and ``keep`` files per reason (the oldest go).
Keeping them is best effort: a full disk must not turn a 4xx into a 5xx.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path

from dlrlens.store import layout

TIME_FORMAT = "%Y%m%dT%H%M%S%fZ"  # a kept body's name: <time>-<8 hex>.body (UTC)


class RejectedBodies:
    def __init__(self, data_dir: Path, keep: int, max_bytes: int):
        self.root = Path(data_dir) / layout.REJECTED_DIR
        self.keep = keep
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def keep_body(self, reason: str, body: bytes, meta: dict) -> None:
        """Save ``body`` (truncated) and ``meta`` (status, message, content type, labels)."""
        if self.keep <= 0:
            return
        folder = self.root / reason
        stem = f"{datetime.now(timezone.utc):{TIME_FORMAT}}-{uuid.uuid4().hex[:8]}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{stem}.body").write_bytes(body[: self.max_bytes])
            meta = dict(meta, body_bytes=len(body), truncated=len(body) > self.max_bytes)
            (folder / f"{stem}.json").write_text(json.dumps(meta, default=str))
            self._prune(folder)
        except OSError:
            pass

    def _prune(self, folder: Path) -> None:
        with self._lock:
            bodies = sorted(folder.glob("*.body"))
            for old in bodies[: max(0, len(bodies) - self.keep)]:
                for path in (old, old.with_suffix(".json")):
                    try:
                        os.unlink(path)
                    except OSError:
                        pass


def kept_rejected(data_dir: Path) -> dict[str, dict]:
    """The kept bodies per reason: ``{reason: {"kept": count, "newest_at": datetime (UTC) or
    None}}``, the newest body's time taken from its name, else its mtime."""
    root = Path(data_dir) / layout.REJECTED_DIR
    found: dict[str, dict] = {}
    if not root.is_dir():
        return found
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        bodies = sorted(folder.glob("*.body"))
        found[folder.name] = {"kept": len(bodies), "newest_at": body_time(bodies[-1]) if bodies else None}
    return found


def body_time(path: Path) -> datetime | None:
    """When a kept body was received (UTC): from its name, else its mtime; None if it is gone."""
    try:
        return datetime.strptime(path.name.split("-")[0], TIME_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        try:
            return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)
        except OSError:
            return None


def rejected_between(data_dir: Path, start: datetime, end: datetime) -> dict[str, dict]:
    """Refused requests per reason received in [start, end), from the kept bodies' names:
    ``{reason: {"count": n, "at_least": bool}}``; ``at_least`` when the oldest kept body of
    that reason is inside the window (older ones were pruned: there may have been more).
    ``partial`` (a 207, some elements refused) is a reason like the others here."""
    root = Path(data_dir) / layout.REJECTED_DIR
    found: dict[str, dict] = {}
    if not root.is_dir():
        return found
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        times = sorted(t for t in (body_time(p) for p in folder.glob("*.body")) if t is not None)
        inside = [t for t in times if start <= t < end]
        if inside:
            found[folder.name] = {"count": len(inside), "at_least": times[0] >= start}
    return found
