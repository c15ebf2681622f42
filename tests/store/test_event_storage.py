"""Clicks and replies on the receipts' durable path (dlrlens/store/writer.py, wal.py): one log
for every table, a flush per table and day, replay after a crash, idempotent replay, torn tails."""

from __future__ import annotations

from datetime import datetime, timezone

import pyarrow.parquet as pq

from dlrlens.store import layout
from dlrlens.store.wal import encode_document, log_document, read_segment
from dlrlens.store.writer import ReceiptStorage, flush_segment
from tests.support.events import stored_events
from tests.support.funnel import click_row, reply_row
from tests.support.receipts import stored_rows

NOW = datetime(2026, 11, 20, 10, tzinfo=timezone.utc)


def receipt_record(n: int) -> dict:
    return {"receipt_id": f"{n:032x}", "delivery_message_id": f"M{n}", "batch_id": None, "client_reference": None,
            "created": NOW, "received_at": NOW, "status": "DELIVERED", "status_code": 1, "category": "delivered",
            "part": None, "parts": 1, "hlr": None, "extra": None, "campaign": None, "labels": "{}",
            "source_format": "json"}


def tagged(record: dict, table: str) -> dict:
    doc = log_document(record)
    if table != "receipts":
        doc[layout.TABLE_KEY] = table
    return doc


def test_one_log_three_tables(tmp_path):
    storage = ReceiptStorage(tmp_path, flush_seconds=60)
    try:
        storage.store([receipt_record(1)])
        storage.store([click_row("c1", NOW, message_id="M1")], "clicks")
        storage.store([reply_row("r1", datetime(2026, 11, 19, 23, tzinfo=timezone.utc), "STOP", in_reply_to="M1")],
                      "replies")
        assert storage.counters.values["stored"] == 1
        assert storage.counters.values["clicks_stored"] == storage.counters.values["replies_stored"] == 1
        assert storage.flush() == 3
    finally:
        storage.close()
    assert [r["delivery_message_id"] for r in stored_rows(tmp_path)] == ["M1"]
    assert [r["click_id"] for r in stored_events(tmp_path, "clicks")] == ["c1"]
    [reply] = stored_events(tmp_path, "replies")
    assert reply["body"] == "STOP"
    assert list(tmp_path.glob("replies/date=2026-11-19/w000-*.parquet")), "by the UTC day of created"
    for table in ("clicks", "replies"):
        [path] = (tmp_path / layout.TABLES[table].directory).glob("date=*/*.parquet")
        assert pq.read_schema(path).equals(layout.TABLES[table].schema, check_metadata=False)


def test_a_mixed_segment_left_by_a_crash_is_replayed_once_per_table(tmp_path):
    slot_dir = tmp_path / "wal" / "w000"
    slot_dir.mkdir(parents=True)
    docs = [tagged(receipt_record(1), "receipts"), tagged(click_row("c1", NOW, message_id="M1"), "clicks"),
            tagged(reply_row("r1", NOW, "hi", in_reply_to="M1"), "replies"), tagged(receipt_record(2), "receipts")]
    segment = slot_dir / "00000000000000000007.wal"
    torn = encode_document(tagged(click_row("c2", NOW), "clicks"))[:-12]  # a write cut by the crash
    segment.write_bytes(b"".join(encode_document(d) for d in docs) + torn)
    assert read_segment(segment)[1], "the last line is torn"
    copy = segment.read_bytes()
    ReceiptStorage(tmp_path, flush_seconds=60).close()  # recovery at start flushes the slot's log
    assert not segment.exists()
    first = {table: sorted(p.name for p in (tmp_path / layout.TABLES[table].directory).rglob("*.parquet"))
             for table in layout.TABLES}
    assert all(len(names) == 1 for names in first.values()), first
    # The same segment again (a crash after the Parquet files, before the segment's delete): same files.
    segment.write_bytes(copy)
    assert flush_segment(tmp_path, "w000", segment) == 4
    again = {table: sorted(p.name for p in (tmp_path / layout.TABLES[table].directory).rglob("*.parquet"))
             for table in layout.TABLES}
    assert again == first
    assert [r["click_id"] for r in stored_events(tmp_path, "clicks")] == ["c1"], "the torn click was never acked"
    assert len(stored_rows(tmp_path)) == 2 and len(stored_events(tmp_path, "replies")) == 1
