"""``data/demo.json``: is ``dlrlens up`` still posting its demo traffic?

``dlrlens up`` writes it (:func:`write_demo_status`) when it starts posting simulated traffic,
again every :data:`HEARTBEAT_SECONDS` while the simulator runs, and once with ``posting``
false when it ends. The dashboard reads it (:func:`demo_posting`) to say "the demo is still
posting" and refresh by itself. A heartbeat older than :data:`STALE_AFTER_SECONDS` means
whoever wrote it is gone (killed, machine restarted): not posting. A missing file or one that
does not parse: not posting, never an error.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from dlrlens.store import files, layout

HEARTBEAT_SECONDS = 5.0
STALE_AFTER_SECONDS = 30.0


def write_demo_status(data_dir: str | Path, posting: bool, started_at: datetime, now: datetime | None = None) -> None:
    """Publish the demo's status (atomically): ``posting``, when it started, this heartbeat."""
    now = now or datetime.now(timezone.utc)
    doc = {"posting": bool(posting), "started_at": started_at.astimezone(timezone.utc).isoformat(),
           "updated_at": now.astimezone(timezone.utc).isoformat()}
    files.publish_bytes(Path(data_dir) / layout.DEMO_STATUS, json.dumps(doc).encode())


def demo_posting(data_dir: str | Path, now: datetime | None = None) -> datetime | None:
    """When the demo that is still posting started (UTC), or None when no demo is posting."""
    now = now or datetime.now(timezone.utc)
    try:
        doc = json.loads((Path(data_dir) / layout.DEMO_STATUS).read_text())
        updated = datetime.fromisoformat(doc["updated_at"])
        started = datetime.fromisoformat(doc["started_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    fresh = (now - updated).total_seconds() <= STALE_AFTER_SECONDS
    return started if doc.get("posting") is True and fresh else None
