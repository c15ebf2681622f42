"""The status files of the data directory, read as plain dicts (for ``/metrics`` and the
dashboard's Data health page).

* ``stats/<slot>.json``: each writer slot's counters, written by
  :class:`dlrlens.store.writer.Counters` at every flush (:func:`writer_counters`, summed by
  :func:`sum_counters`);
* ``maintenance.json``: the active maintainer's status, written by
  :meth:`dlrlens.store.maintenance.Maintainer.status_document` after each task
  (:func:`maintenance_status`);
* ``rejected/<reason>/``: the kept bodies of refused requests (:func:`kept_rejected`, from
  :mod:`dlrlens.store.rejected`).

Each file is replaced atomically but may be missing (not written yet), or not ours: a file
that does not parse is left out (or ``None``), never an error: status must answer anyway.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from dlrlens.store import layout
from dlrlens.store.rejected import kept_rejected

__all__ = ["kept_rejected", "maintenance_status", "sum_counters", "writer_counters"]


def writer_counters(data_dir: Path) -> dict[str, dict]:
    """Every writer slot's persisted counters, by slot (``w000``...), as saved:
    ``{"counters": {name: int}, "rejected": {reason: int}, "flush_seconds_sum": float,
    "last_flush_seconds": float, "updated_at": str}`` (the numbers normalised to int/float).
    A file that cannot be read or parsed is left out."""
    found: dict[str, dict] = {}
    for path in sorted(Path(data_dir, layout.STATS_DIR).glob("*.json")):
        try:
            found[path.stem] = _snapshot(json.loads(path.read_text()))
        except (OSError, ValueError, AttributeError, TypeError):
            continue  # being replaced or not ours: counters are best effort
    return found


def _snapshot(raw: dict) -> dict:
    return {
        "counters": {str(k): int(v) for k, v in raw.get("counters", {}).items()},
        "rejected": {str(k): int(v) for k, v in raw.get("rejected", {}).items()},
        "flush_seconds_sum": float(raw.get("flush_seconds_sum", 0.0)),
        "last_flush_seconds": float(raw.get("last_flush_seconds", 0.0)),
        "updated_at": raw.get("updated_at"),
    }


def sum_counters(snapshots: Iterable[dict]) -> dict:
    """The sum of counter snapshots (:func:`writer_counters` values, or a live
    ``Counters.snapshot()``): ``{"counters": {name: int}, "rejected": {reason: int},
    "flush_seconds_sum": float}``."""
    counters: dict[str, int] = {}
    rejected: dict[str, int] = {}
    flush_seconds = 0.0
    for snap in snapshots:
        for name, value in snap.get("counters", {}).items():
            counters[name] = counters.get(name, 0) + int(value)
        for reason, value in snap.get("rejected", {}).items():
            rejected[reason] = rejected.get(reason, 0) + int(value)
        flush_seconds += float(snap.get("flush_seconds_sum", 0.0))
    return {"counters": counters, "rejected": rejected, "flush_seconds_sum": flush_seconds}


def maintenance_status(data_dir: Path) -> dict | None:
    """``maintenance.json`` as written (see ``Maintainer.status_document``: pid, updated_at,
    interval_seconds, runs, errors, last_success_at, last_error, last_error_at; times as
    ISO 8601 text); ``None`` before the first report, or when it cannot be read."""
    try:
        doc = json.loads((Path(data_dir) / layout.MAINTENANCE_STATUS).read_text())
    except (OSError, ValueError):
        return None  # not written yet, or being replaced: it is rewritten every few seconds
    return doc if isinstance(doc, dict) else None
