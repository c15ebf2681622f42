"""What a flush costs with the Iceberg store, against the local store in the same run.

Starts ``weed mini`` on loopback (tests/support/seaweed.py) with a pyiceberg SQL catalog (SQLite),
then flushes the same log segments (``--segments`` of ``--rows`` receipts each, spread over
``--days`` UTC days as a flush of live traffic is) through two
:class:`~dlrlens.store.writer.ReceiptStorage` writers: the local one (Parquet files under a data
directory) and one with the :class:`~dlrlens.store.iceberg.publisher.IcebergPublisher`. Prints
the median and p95 flush time of each and their ratio, the snapshots the table holds and the size
of its metadata file. With ``--events N`` (default 50) a third writer flushes the same receipts
with N clicks and N/5 replies in each segment (one commit per table: receipts, clicks,
replies), against the receipts alone through Iceberg in the same run. Then a catch-up: the same segments piled up in the log (as during an outage
of the store) flushed at once, in batches (one commit for up to
:data:`~dlrlens.store.writer.PUBLISH_BATCH_SEGMENTS`) and one commit per segment (batches of 1).

    python3 -m tests.benchmarks.iceberg_commits [--segments 30] [--rows 1000] [--days 1] [--events 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from dlrlens.store.backends import parse_store, publisher
from dlrlens.store.iceberg.table import open_catalog, receipts_table
from dlrlens.store import writer
from dlrlens.store.writer import ReceiptStorage
from tests.support import factory
from tests.support.funnel import click_row, reply_row
from tests.support.seaweed import object_store


def segment_rows(number: int, rows: int, days: int) -> list[dict]:
    start = factory.utc(2026, 11, 1) + timedelta(days=number % 30)
    return [factory.receipt(f"b{number}-{i}", "DELIVERED", start + timedelta(seconds=(i % days) * 86_400 + i),
                            campaign="bench") for i in range(rows)]


def segment_events(rows: list[dict], count: int) -> tuple[list[dict], list[dict]]:
    """``count`` clicks and ``count // 5`` replies on the messages of ``rows``."""
    clicks = [click_row(f"c-{row['receipt_id']}", row["created"] + timedelta(minutes=5),
                        message_id=row["delivery_message_id"]) for row in rows[:count]]
    replies = [reply_row(f"r-{row['receipt_id']}", row["created"] + timedelta(minutes=9), "STOP",
                         in_reply_to=row["delivery_message_id"]) for row in rows[:count // 5]]
    return clicks, replies


def flush_times(storage: ReceiptStorage, segments: list[list[dict]], events: int = 0) -> list[float]:
    times = []
    for rows in segments:
        storage.store(rows)
        if events:
            clicks, replies = segment_events(rows, events)
            storage.store(clicks, "clicks")
            storage.store(replies, "replies")
        started = time.perf_counter()
        storage.flush()
        times.append(time.perf_counter() - started)
    return times


def catch_up_seconds(root: Path, name: str, segments: list[list[dict]], batch: int) -> tuple[float, int]:
    """Seconds to flush ``segments`` piled up in a fresh collector's log, ``batch`` per commit, and the commits."""
    storage = ReceiptStorage(root / name, flush_seconds=3600,
                             publish=publisher(parse_store("iceberg:bench"), root / name))
    kept = writer.PUBLISH_BATCH_SEGMENTS
    writer.PUBLISH_BATCH_SEGMENTS = batch
    try:
        for rows in segments:
            storage.store([dict(row, receipt_id=f"{name}-{row['receipt_id']}") for row in rows])
            storage.wal.rotate()
        started = time.perf_counter()
        storage.flush()
        return time.perf_counter() - started, storage.publish.counts["commits"]
    finally:
        writer.PUBLISH_BATCH_SEGMENTS = kept
        storage.close()


def describe(name: str, times: list[float]) -> str:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return f"{name:8s} median {statistics.median(times) * 1000:7.1f} ms   p95 {p95 * 1000:7.1f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=30)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--days", type=int, default=1, help="UTC days each segment spans (files per commit)")
    parser.add_argument("--events", type=int, default=50, help="clicks per segment of the third writer "
                        "(and a fifth as many replies); 0: no third writer")
    args = parser.parse_args(argv)
    segments = [segment_rows(n, args.rows, args.days) for n in range(args.segments)]
    with tempfile.TemporaryDirectory(prefix="dlrlens-iceberg-bench-") as tmp:
        root = Path(tmp)
        with object_store(root / "s3") as store:
            os.environ.update(store.catalog_env("bench", root / "catalog.db"))
            local = ReceiptStorage(root / "local", flush_seconds=3600)
            remote = ReceiptStorage(root / "remote", flush_seconds=3600,
                                    publish=publisher(parse_store("iceberg:bench"), root / "remote"))
            with_events = ReceiptStorage(root / "events", flush_seconds=3600,
                                         publish=publisher(parse_store("iceberg:bench"), root / "events"))
            try:
                flush_times(remote, segments[:1])  # creates the namespace and the table: not measured
                flush_times(with_events, segments[:1], max(args.events, 5))  # ... and the events tables
                local_times = flush_times(local, segments[1:])
                iceberg_times = flush_times(remote, segments[1:])
                events_times = flush_times(with_events, segments[1:], args.events) if args.events else []
            finally:
                local.close()
                remote.close()
                with_events.close()
            table = receipts_table(open_catalog("bench"), create=False)
            snapshots = len(table.metadata.snapshots)
            with table.io.new_input(table.metadata_location).open() as metadata:
                metadata_bytes = len(metadata.read())
            batched = catch_up_seconds(root, "batched", segments[1:], writer.PUBLISH_BATCH_SEGMENTS)
            one_each = catch_up_seconds(root, "one-each", segments[1:], 1)
    print(f"{args.segments - 1} flushes of {args.rows} receipts over {args.days} UTC day(s) each")
    print(describe("local", local_times))
    print(describe("iceberg", iceberg_times))
    print(f"ratio (iceberg / local, medians): {statistics.median(iceberg_times) / statistics.median(local_times):.1f}x; "
          f"table snapshots: {snapshots}, metadata file {metadata_bytes:,} bytes "
          f"({metadata_bytes / snapshots:,.0f} per snapshot: every commit and reader sync reads it)")
    if events_times:
        print(describe("+events", events_times))
        print(f"with {args.events} clicks and {args.events // 5} replies a segment (a commit to each table): "
              f"{statistics.median(events_times) / statistics.median(iceberg_times):.1f}x the receipts alone (medians)")
    print(f"catch-up of {args.segments - 1} segments piled up in the log: {batched[0]:.2f} s in {batched[1]} commit(s) "
          f"against {one_each[0]:.2f} s in {one_each[1]} (one per segment): {one_each[0] / batched[0]:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
