"""Clicks and replies as Mobivate posts them, and what the collector stored of them.

* :func:`click` / :func:`reply`: one JSON body (a dict, the documented fields) for ``/click`` /
  ``/incoming``; ``more`` adds or replaces fields.
* :func:`stored_events` reads a table's stored rows back from Parquet with DuckDB;
  :func:`wait_events` waits for them (flushes happen every few hundred ms).
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from dlrlens.store import layout
from tests.support.servers import wait_until


def click(message_id: str | None, batch_id: str | None = "B1", client_ref: str | None = None, **more) -> dict:
    doc = {"mobile": "447700900123", "messageId": message_id, "batchId": batch_id, "clientRef": client_ref,
           "browser": "Chrome", "country": "United Kingdom", "ipAddress": "198.51.100.23", "iso2l": "UK",
           "os": "Android", "url": "https://shop.example.com/offer"}
    doc.update(more)
    return doc


def reply(reply_id: str, in_reply_to: str | None, body: str = "Thanks", batch_id: str | None = "B1",
          created: str = "2026-11-20T10:30:00+0000", **more) -> dict:
    doc = {"id": reply_id, "originator": "447700900456", "recipient": "60777", "body": body, "created": created,
           "inReplyTo": in_reply_to, "logicalMessageId": batch_id, "ownerUserId": "U1"}
    doc.update(more)
    return doc


def stored_events(data_dir: Path, table: str) -> list[dict]:
    """Every stored row of ``table`` (``clicks``, ``replies``) as a dict."""
    directory = Path(data_dir) / layout.TABLES[table].directory
    if not list(directory.glob(f"{layout.PARTITION_PREFIX}*/*.parquet")):
        return []
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    cursor = con.execute("SELECT * FROM read_parquet(?, union_by_name = true, hive_partitioning = false) "
                         "ORDER BY received_at", [str(directory / f"{layout.PARTITION_PREFIX}*" / "*.parquet")])
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def wait_events(data_dir: Path, table: str, count: int, timeout: float = 20) -> list[dict]:
    """The stored rows of ``table`` once there are at least ``count``."""
    def check():
        rows = stored_events(data_dir, table)
        return rows if len(rows) >= count else None
    return wait_until(check, timeout, interval=0.2, what=f"{count} stored {table}")
