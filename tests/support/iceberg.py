"""Helpers of the Iceberg store's tests (the object store itself: tests/support/seaweed.py)."""

from __future__ import annotations

import json
from pathlib import Path

from dlrlens import cli
from dlrlens.store.wal import list_segments


def table_ids(catalog: str = "lake") -> list[str]:
    """Every row's receipt id in catalog ``catalog``'s receipts table, read back through pyiceberg
    (every data file the current snapshot holds is read: a missing one fails)."""
    from dlrlens.store.iceberg.table import open_catalog, receipts_table

    table = receipts_table(open_catalog(catalog), create=False)
    return table.scan(selected_fields=("receipt_id",)).to_arrow()["receipt_id"].to_pylist()


def commit_keeping_a_copy(storage, rows: list[dict]) -> tuple[Path, bytes]:
    """Store ``rows`` in a segment of their own, flush it (a commit) and stop ``storage``; the
    segment's path and content, to put back as a crash between the commit and the segment's
    deletion leaves it."""
    storage.store(rows)
    storage.wal.rotate()
    segment = list_segments(storage.log_dir)[0]
    kept = segment.read_bytes()
    storage.flush()
    storage.close()
    return segment, kept


def report_json(data_dir: Path, store: str, output: Path) -> dict:
    """``dlrlens report --format json`` of ``store``, without its generation time."""
    assert cli.main(["report", "--data", str(data_dir), "--store", store, "--format", "json",
                     "--output", str(output)]) == 0
    doc = json.loads(output.read_text())
    doc["Summary"] = [row for row in doc["Summary"] if row["key"] != "generated_at"]
    return doc
