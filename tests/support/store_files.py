"""Receipt files as the collector's flushes leave them, and readers of what is stored, for the
storage tests (compaction, maintenance).

* :func:`synthetic_receipts` makes a realistic day of receipts as an Arrow table (fast: numpy);
  :func:`write_flush_files` and :func:`write_row_files` write them as many small flush-like
  files, backdated so compaction takes them.
* :func:`hold_replay` holds a writer slot's flushes (a replay on a slow disk, a big log)
  until the test lets them go.
* :func:`stored_rows` (every stored row, as a multiset of all columns), :func:`stored_rows_of`
  (the same for a table), :func:`visible_files`, :func:`temp_files` and
  :func:`assert_files_whole` read what is on disk.

(:mod:`tests.support.receipts` reads stored rows as dicts, for the collector's tests.)
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections import Counter
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dlrlens.store import layout, writer
from tests.support.factory import parquet_bytes

HOUR = 3600.0

# -- realistic synthetic receipts ---------------------------------------------------------

_STATUSES = [  # (status, code, category) as in dlrlens/statuses.csv
    ("ACCEPTED", 2, "pending"), ("INTERIM_QUEUED", 8, "pending"), ("DELIVERED", 1, "delivered"),
    ("EXPIRED", 3, "failed"), ("UNDELIVERABLE", 5, "failed"), ("UNKNOWN", 6, "unknown"),
]


def _hex_ids(rng: np.random.Generator, count: int) -> np.ndarray:
    raw = rng.integers(0, 2**63, size=(count, 2), dtype=np.int64).view(np.uint64)
    return np.array([f"{a:016x}{b:016x}" for a, b in raw], dtype=object)


def synthetic_receipts(n_rows: int, *, seed: int = 1, day: str = "2026-11-03") -> pa.Table:
    """``n_rows`` realistic receipts created on UTC ``day``, in arrival (random) order.

    Per message (32-hex id, one of 200 campaigns with its batch id and labels): an ACCEPTED
    receipt, 30% an INTERIM_QUEUED one, 95% a final one (88% DELIVERED); millisecond
    ``created`` times, a received_at 0.2-4 s later; 2% of receipts stored twice.
    """
    rng = np.random.default_rng(seed)
    n_messages = n_rows // 2 + 1
    messages = _hex_ids(rng, n_messages)
    day_start_ms = int(np.datetime64(day, "ms").astype(np.int64))
    sent = day_start_ms + rng.integers(0, 82_800_000, n_messages)
    everyone = np.arange(n_messages)
    interim = everyone[rng.random(n_messages) < 0.3]
    final = everyone[rng.random(n_messages) < 0.95]
    roll = rng.random(len(final))
    final_status = np.select([roll < 0.88, roll < 0.93, roll < 0.97], [2, 3, 4], 5)
    message = np.concatenate([everyone, interim, final])
    created = np.concatenate([sent + rng.integers(50, 1_500, n_messages),
                              sent[interim] + rng.integers(1_500, 5_000, len(interim)),
                              sent[final] + rng.integers(2_000, 600_000, len(final))])
    status = np.concatenate([np.zeros(n_messages, int), np.ones(len(interim), int), final_status])
    receipt_ids = _hex_ids(rng, len(message))
    again = rng.random(len(message)) < 0.02
    pick = np.concatenate([np.arange(len(message)), np.flatnonzero(again)])
    pick = rng.permutation(pick)[:n_rows]
    message, created, status, receipt_ids = message[pick], created[pick], status[pick], receipt_ids[pick]
    campaign_of = rng.integers(0, 200, n_messages)[message]
    campaigns = np.array([f"campaign-{i:03d}" for i in range(200)], dtype=object)
    labels = np.array([json.dumps({"campaign": f"campaign-{i:03d}", "team": ("retail", "billing")[i % 2]})
                       for i in range(200)], dtype=object)
    batches = _hex_ids(rng, 200)
    names, codes, categories = (np.array(column, dtype=object) for column in zip(*_STATUSES))
    received = created * 1000 + rng.integers(200_000, 4_000_000, len(message))
    n = len(message)
    return pa.table({
        "receipt_id": receipt_ids, "delivery_message_id": messages[message], "batch_id": batches[campaign_of],
        "client_reference": pa.nulls(n, pa.string()),
        "created": pa.array(created * 1000).cast(layout.UTC_TIMESTAMP),
        "received_at": pa.array(received).cast(layout.UTC_TIMESTAMP),
        "status": names[status], "status_code": pa.array(codes[status].astype(np.int32)),
        "category": categories[status], "part": pa.nulls(n, pa.int32()),
        "parts": pa.array(np.ones(n, np.int32)), "hlr": pa.nulls(n, pa.string()),
        "extra": pa.nulls(n, pa.string()), "campaign": campaigns[campaign_of], "labels": labels[campaign_of],
        "source_format": np.full(n, "json", dtype=object),
    }, schema=layout.RECEIPT_SCHEMA)


# -- files and readers ---------------------------------------------------------------------


def write_flush_files(data_dir: Path, table: pa.Table, files: int, *, prefix: str = "w000",
                      age_seconds: float = HOUR) -> list[Path]:
    """Split ``table`` (rows of one day) into ``files`` flush-like files, ``age_seconds`` old."""
    day = table.column("created")[0].as_py().date().isoformat()
    partition = layout.partition_dir(data_dir, day)
    partition.mkdir(parents=True, exist_ok=True)
    step = -(-table.num_rows // files)
    paths = []
    mtime = time.time() - age_seconds
    for index in range(files):
        chunk = table.slice(index * step, step)
        path = partition / f"{prefix}-{time.time_ns()}.parquet"
        buffer = io.BytesIO()
        pq.write_table(chunk.sort_by([("delivery_message_id", "ascending"), ("created", "ascending")]), buffer,
                       compression="zstd")
        layout.atomic_write_bytes(path, buffer.getvalue())  # readers may be globbing meanwhile
        os.utime(path, (mtime, mtime))
        paths.append(path)
    return paths


def write_row_files(data_dir: Path, rows: list[dict], per_file: int, *, age_seconds: float = HOUR) -> int:
    """Write factory rows as many small files per partition (as flushes would); returns files."""
    by_day: dict[str, list[dict]] = {}
    for row in rows:
        by_day.setdefault(row["created"].date().isoformat(), []).append(row)
    mtime = time.time() - age_seconds
    written = 0
    for day, day_rows in by_day.items():
        partition = layout.partition_dir(data_dir, day)
        partition.mkdir(parents=True, exist_ok=True)
        for start in range(0, len(day_rows), per_file):
            path = partition / f"w001-{start:08d}.parquet"
            path.write_bytes(parquet_bytes(day_rows[start:start + per_file]))
            os.utime(path, (mtime, mtime))
            written += 1
    return written


def _columns() -> str:
    return ", ".join(f"epoch_us({name})" if name in ("created", "received_at") else name
                     for name in layout.RECEIPT_SCHEMA.names)


def stored_rows(data_dir: Path) -> Counter:
    """The multiset of every stored row (all columns), read with DuckDB over the reader glob."""
    if not list(Path(data_dir).glob(layout.PARQUET_GLOB)):
        return Counter()
    with duckdb.connect() as con:
        return Counter(con.execute(f"SELECT {_columns()} FROM read_parquet(?)",
                                   [layout.parquet_glob(data_dir)]).fetchall())


def visible_files(data_dir: Path) -> list[Path]:
    return sorted(Path(data_dir).glob(layout.PARQUET_GLOB))


def temp_files(data_dir: Path) -> list[Path]:
    return sorted(Path(data_dir).glob("receipts/*/.*.tmp"))


def assert_files_whole(data_dir: Path) -> None:
    for path in visible_files(data_dir):
        table = pq.read_table(path)
        assert table.schema.equals(layout.RECEIPT_SCHEMA, check_metadata=False), path


def stored_rows_of(table: pa.Table) -> Counter:
    with duckdb.connect() as con:
        con.register("t", table)
        return Counter(con.execute(f"SELECT {_columns()} FROM t").fetchall())


def hold_replay(monkeypatch, slot: str = "w000") -> threading.Event:
    """Hold every flush of writer slot ``slot`` (its replay of a log a previous run left) until
    the returned event is set; the other slots flush as usual."""
    released = threading.Event()
    flush_segment = writer.flush_segment

    def held_flush(data_dir, flushed_slot, *args, **kwargs):
        if flushed_slot == slot:
            assert released.wait(30), "the replay was never let go"
        return flush_segment(data_dir, flushed_slot, *args, **kwargs)
    monkeypatch.setattr(writer, "flush_segment", held_flush)
    return released
