"""Receipts as Mobivate posts them, and what the collector made of them.

* :func:`receipt` is one JSON receipt body (a dict, the documented fields) to post to ``/dlr``;
  :data:`MOBIVATE` holds the documented examples (``tests/fixtures/mobivate``).
* :func:`stored_rows`, :func:`wait_rows`, :func:`wait_stored` and :func:`rows_of` read the
  stored receipts back from Parquet with DuckDB (as row dicts), waiting for the flushes.
* :func:`metric` reads one value from a running collector's ``/metrics``.

(:mod:`tests.support.factory` makes *stored rows* directly, without a collector.)
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import requests

from dlrlens.store import layout
from tests.support.servers import wait_until

MOBIVATE = Path(__file__).resolve().parents[1] / "fixtures" / "mobivate"
RECEIPT_JSON = (MOBIVATE / "receipt.json").read_bytes()


def receipt(message_id: str, status: str = "DELIVERED", code=1, created="2026-11-20T10:00:00.000+00:00", **more):
    """A Mobivate JSON receipt body; ``more`` adds or replaces fields."""
    doc = {"deliveryMessageId": message_id, "batchId": "B1", "clientReference": None, "created": created,
           "status": status, "statusCode": code, "parts": 1, "hlr": None}
    doc.update(more)
    return doc


def stored_rows(data_dir: Path) -> list[dict]:
    """Every stored receipt row (a dict per row), by message id and created."""
    files = list(Path(data_dir).glob(layout.PARQUET_GLOB))
    if not files:
        return []
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    cursor = con.execute(
        "SELECT * FROM read_parquet(?, union_by_name=true) ORDER BY delivery_message_id, created",
        [layout.parquet_glob(data_dir)],
    )
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def wait_rows(data_dir: Path, ready, timeout: float = 20, what: str = "stored receipts") -> list[dict]:
    """Stored rows once ``ready(rows)`` holds (flushes happen every few hundred ms)."""
    def check():
        rows = stored_rows(data_dir)
        return rows if ready(rows) else None
    return wait_until(check, timeout, interval=0.2, what=what)


def wait_stored(data_dir: Path, count: int, timeout: float = 20) -> list[dict]:
    return wait_rows(data_dir, lambda rows: len(rows) >= count, timeout, what=f"{count} stored receipts")


def rows_of(data_dir: Path, prefix: str, count: int) -> list[dict]:
    """The stored rows whose message id starts with ``prefix``, once there are ``count``."""
    def mine(rows):
        return [r for r in rows if r["delivery_message_id"].startswith(prefix)]
    return mine(wait_rows(data_dir, lambda rows: len(mine(rows)) >= count, what=f"{count} rows {prefix}*"))


def metric(url: str, name: str) -> float:
    """The value of ``name`` (e.g. ``dlrlens_rejected_total{reason="x"}``) in ``url``'s /metrics; 0 if absent."""
    text = requests.get(url + "/metrics", timeout=5).text
    return metric_value(text, name)


def metric_value(text: str, name: str) -> float:
    """The value of ``name`` in a Prometheus text exposition; 0 if absent."""
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{") and line.split(" ")[0] == name:
            return float(line.rsplit(" ", 1)[1])
    return 0.0
