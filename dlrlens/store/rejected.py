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
        stem = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:8]}"
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
