"""Build receipt rows in the storage contract's schema and write them as the collector would.

Tests (queries, report, pages) use this instead of running the collector:

* :func:`receipt` makes one row (a dict with every column of ``RECEIPT_SCHEMA``).
  Identical receipts get the identical ``receipt_id``, so storing a row twice is how
  a test models a duplicate delivery.
* :func:`write_receipts` writes rows as Parquet under ``<data_dir>/receipts/date=YYYY-MM-DD/``,
  partitioned by the UTC date of ``created``, atomically (the reader contract).
* :func:`demo_rows` generates a realistic mixed data set with a fixed seed.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from io import BytesIO
from itertools import count
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from dlrlens.store import layout
from dlrlens.statuses import classify

UTC = timezone.utc
_file_counter = count(1)


def utc(*args: int) -> datetime:
    """Shorthand: ``utc(2026, 11, 3, 12, 0)`` -> tz-aware UTC datetime."""
    return datetime(*args, tzinfo=UTC)


def receipt_id_for(message_id: str, status: str, status_code: int | None, created: datetime, part: int | None) -> str:
    """Deterministic id from the fields the contract names (message, status, code, created, part)."""
    key = "|".join([message_id, status, "" if status_code is None else str(status_code),
                    _as_utc(created).isoformat(), "" if part is None else str(part)])
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def receipt(
    message_id: str,
    status: str,
    created: datetime,
    *,
    received_at: datetime | None = None,
    campaign: str | None = None,
    batch_id: str | None = None,
    client_reference: str | None = None,
    labels: dict[str, str] | None = None,
    status_code: int | None = None,
    parts: int | None = 1,
    part: int | None = None,
    hlr: dict | None = None,
    extra: dict | None = None,
    source_format: str = "json",
) -> dict:
    """One receipt row with every contract column.

    ``status`` is normalised and categorised exactly like the collector does
    (``dlrlens.statuses.classify``); ``status_code`` defaults to the documented code of a
    known status. ``received_at`` defaults to ``created`` + 2 s. ``campaign`` is also put into
    ``labels`` (the collector stores every webhook query parameter there).
    """
    created = _as_utc(created)
    name, category = classify(status, status_code)
    if status_code is None:
        status_code = _documented_code(name)
    all_labels = dict(labels or {})
    if campaign is not None:
        all_labels["campaign"] = campaign
    return {
        "receipt_id": receipt_id_for(message_id, name, status_code, created, part),
        "delivery_message_id": message_id,
        "batch_id": batch_id,
        "client_reference": client_reference,
        "created": created,
        "received_at": _as_utc(received_at) if received_at is not None else created + timedelta(seconds=2),
        "status": name,
        "status_code": status_code,
        "category": category,
        "part": part,
        "parts": parts,
        "hlr": json.dumps(hlr) if hlr is not None else None,
        "extra": json.dumps(extra) if extra is not None else None,
        "campaign": campaign,
        "labels": json.dumps(all_labels, sort_keys=True),
        "source_format": source_format,
    }


def write_receipts(data_dir: str | Path, rows: list[dict], file_name: str | None = None) -> list[Path]:
    """Write ``rows`` as Parquet files, one per UTC date of ``created``; return the paths.

    ``file_name`` (without ``.parquet``) names the file in each partition; by default a
    fresh unique name, so two calls never overwrite each other (like two collector flushes).
    """
    if file_name is None:
        file_name = f"test-{next(_file_counter):06d}"
    by_day: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_day[_as_utc(row["created"]).date().isoformat()].append(row)
    written = []
    for day, day_rows in sorted(by_day.items()):
        path = layout.partition_dir(Path(data_dir), day) / f"{file_name}.parquet"
        layout.atomic_write_bytes(path, parquet_bytes(day_rows))
        written.append(path)
    return written


def parquet_bytes(rows: list[dict]) -> bytes:
    """Rows -> Parquet file contents in the contract schema."""
    table = pa.Table.from_pylist(rows, schema=layout.RECEIPT_SCHEMA)
    buffer = BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def message(message_id: str, sent: datetime, steps: list[tuple[str, float]], **common) -> list[dict]:
    """Receipts of one message: ``steps`` are (status, seconds after ``sent``) pairs."""
    return [receipt(message_id, status, sent + timedelta(seconds=offset), **common) for status, offset in steps]


# Plausible failure reasons with weights (the common ones first).
_FAILURES = [("UNDELIVERABLE", 5), ("EXPIRED", 4), ("REJECTED", 2), ("FAILED_NOROUTE", 2),
             ("FAILED_RECIPIENT_BLACKLISTED", 1), ("FAILED_EXHAUSTED", 1)]


def demo_rows(n_messages: int = 300, seed: int = 7, start: datetime | None = None, days: int = 5) -> list[dict]:
    """A realistic mixed data set: several campaigns (plus unlabelled batches), interim
    receipts, delivered/failed/unknown/pending messages, duplicates, out-of-order arrival,
    a few regressions (interim receipt created after the final one), an unrecognised status
    name and multipart messages. Deterministic for a given ``seed``.
    """
    rng = random.Random(seed)
    start = _as_utc(start) if start is not None else utc(2026, 11, 1)
    campaigns = ["black-friday", "welcome", "reminder", None]  # None: no campaign label
    rows: list[dict] = []
    for i in range(n_messages):
        campaign = rng.choice(campaigns)
        batch = f"B{rng.randrange(6):03d}"
        sent = start + timedelta(seconds=rng.uniform(0, days * 86400))
        labels = {"env": rng.choice(["prod", "staging"])}
        common = dict(campaign=campaign, batch_id=batch, client_reference=f"ref-{i}", labels=labels,
                      parts=2 if rng.random() < 0.05 else 1)
        mid = f"M{seed:02d}{i:06d}"
        steps: list[tuple[str, float]] = [("ACCEPTED", 0.0)]
        if rng.random() < 0.3:
            steps.append(("INTERIM_QUEUED", rng.uniform(0.5, 3)))
        roll = rng.random()
        final_at = rng.choice([rng.uniform(2, 9), rng.uniform(10, 120), rng.uniform(120, 7200)])
        if roll < 0.70:
            steps.append(("DELIVERED", final_at))
        elif roll < 0.85:
            reason = rng.choices([r for r, _ in _FAILURES], [w for _, w in _FAILURES])[0]
            steps.append((reason, final_at))
        elif roll < 0.89:
            steps.append(("UNKNOWN", final_at))
        elif roll < 0.90:
            steps.append(("CARRIER_LOST", final_at))  # unrecognised name -> unknown outcome
        elif roll < 0.93:
            steps = [("DELIVERED", 0.0)]  # only a final receipt: no latency
        # else: stays pending (ACCEPTED / INTERIM_QUEUED only)
        if rng.random() < 0.03 and any(s in ("DELIVERED", "UNDELIVERABLE") for s, _ in steps):
            steps.append(("RETRY", steps[-1][1] + 5))  # regression after the final receipt
        lag = rng.uniform(0.2, 4)
        for status, offset in steps:
            created = sent + timedelta(seconds=offset)
            received = created + timedelta(seconds=lag + rng.uniform(0, 2))
            if rng.random() < 0.05:
                received += timedelta(minutes=10)  # arrives late, after later receipts
            row = receipt(mid, status, created, received_at=received, **common)
            rows.append(row)
            if rng.random() < 0.04:
                rows.append(dict(row))  # Mobivate retry: the same receipt stored twice
    rng.shuffle(rows)
    return rows


def _documented_code(name: str) -> int | None:
    from dlrlens.statuses import status_table

    for status in status_table():
        if status.name == name:
            return status.code
    return None


def _as_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("receipt times must be tz-aware")
    return value.astimezone(UTC)


def write_demo_flushes(root: Path, messages: int = 250, seed: int = 5, first_file_rows: int = 120) -> Path:
    """``demo_rows(messages, seed)`` written as two flush files under ``root`` (as a collector
    that flushed twice leaves them): the first ``first_file_rows`` rows, then the rest."""
    rows = demo_rows(messages, seed=seed)
    write_receipts(root, rows[:first_file_rows])
    write_receipts(root, rows[first_file_rows:])
    return root
