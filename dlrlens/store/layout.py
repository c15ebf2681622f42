"""The storage contract between the collector (sole writer) and the dashboard (reader).

Everything dlrlens keeps lives under one data directory (``data/`` by default,
``DLRLENS_DATA`` or ``--data`` elsewhere)::

    data/
      receipts/date=YYYY-MM-DD/<writer>-<segment>.parquet   immutable receipt files
      wal/<slot>/<segment>.wal                             write-ahead log, per writer slot
      wal/<slot>.lock                                      held (flock) by the live writer
      rejected/<reason>/<time>-<id>.body                   raw bodies of rejected requests
      stats/<slot>.json                                    each writer's counters (metrics)
      maintenance.json                                     the maintenance process's status

Contract for readers:

* Only files matching ``receipts/date=*/*.parquet`` are data. Writers create a file
  under a dot-prefixed ``.tmp`` name, fsync it, rename it into place and fsync the
  directory, so a reader globbing ``*.parquet`` never sees a partial file.
* A file, once renamed into place, never changes. It may be *replaced* atomically by
  a file with identical rows (WAL replay after a crash) or removed after compaction
  merged its rows into a new file (see the compaction notes in the README).
* The ``date`` partition is the UTC date of ``created``.
* The same receipt may be stored more than once (Mobivate retries, bulk replays).
  Rows with the same ``receipt_id`` are the same receipt: readers count one.

The columns are :data:`RECEIPT_SCHEMA`; :data:`COLUMN_DOCS` says what each means.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

RECEIPTS_DIR = "receipts"
WAL_DIR = "wal"
REJECTED_DIR = "rejected"
STATS_DIR = "stats"
# Written (atomically) by the active maintainer after each task: runs, errors, the last error,
# the last success of each task, its intervals. See dlrlens.store.maintenance.Maintainer.status_document.
MAINTENANCE_STATUS = "maintenance.json"
PARTITION_PREFIX = "date="
PARQUET_GLOB = f"{RECEIPTS_DIR}/{PARTITION_PREFIX}*/*.parquet"

UTC_TIMESTAMP = pa.timestamp("us", tz="UTC")

RECEIPT_SCHEMA = pa.schema(
    [
        pa.field("receipt_id", pa.string(), nullable=False),
        pa.field("delivery_message_id", pa.string(), nullable=False),
        pa.field("batch_id", pa.string()),
        pa.field("client_reference", pa.string()),
        pa.field("created", UTC_TIMESTAMP, nullable=False),
        pa.field("received_at", UTC_TIMESTAMP, nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("status_code", pa.int32()),
        pa.field("category", pa.string(), nullable=False),
        pa.field("part", pa.int32()),
        pa.field("parts", pa.int32()),
        pa.field("hlr", pa.string()),
        pa.field("extra", pa.string()),
        pa.field("campaign", pa.string()),
        pa.field("labels", pa.string()),
        pa.field("source_format", pa.string(), nullable=False),
    ]
)

COLUMN_DOCS = {
    "receipt_id": "Stable id of the receipt: a hash of deliveryMessageId, status, statusCode, "
    "created and part. The same receipt delivered twice has the same id.",
    "delivery_message_id": "Mobivate's deliveryMessageId: one SMS message.",
    "batch_id": "Mobivate's batchId (the send request), or null.",
    "client_reference": "clientReference: the `reference` you gave when sending, or null.",
    "created": "When Mobivate created the receipt, converted to UTC.",
    "received_at": "When the collector received it (collector clock, UTC).",
    "status": "Status name, trimmed and upper-cased; an unrecognised name is kept as sent "
    "(upper-cased). When only a known statusCode came, its documented name.",
    "status_code": "statusCode as an integer, or null when absent or not numeric.",
    "category": "delivered | failed | pending | unknown (see dlrlens/statuses.csv). "
    "pending (ACCEPTED, INTERIM_*, RETRY) is not final; every other category is final.",
    "part": "Which part of a multipart message this receipt is for (XML form), or null.",
    "parts": "Number of parts of the message, or null.",
    "hlr": "The hlr object as JSON text, or null.",
    "extra": "Any receipt field Mobivate adds beyond the documented ones, plus the original "
    "value of statusCode/part/parts when it was not numeric, as a JSON object text, or null.",
    "campaign": "The `campaign` query parameter of the webhook URL, or null.",
    "labels": "All query parameters of the webhook URL except the secret, as a JSON object "
    "text ({} when none).",
    "source_format": "json | xml: how the receipt reached us (xml covers the form-encoded xml= field).",
}


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """Resolve the data directory: explicit argument, else ``DLRLENS_DATA``, else ``./data``."""
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("DLRLENS_DATA") or "data")


def receipts_dir(root: Path) -> Path:
    return Path(root) / RECEIPTS_DIR


def partition_dir(root: Path, day: str) -> Path:
    """Directory holding the receipts whose ``created`` falls on UTC ``day`` (YYYY-MM-DD)."""
    return receipts_dir(root) / f"{PARTITION_PREFIX}{day}"


def parquet_glob(root: Path) -> str:
    """The glob that matches every visible receipt file (and nothing partial)."""
    return str(Path(root) / PARQUET_GLOB)


def visible_files(partition: Path) -> dict[str, tuple[Path, int, int]]:
    """The receipt files a reader may see in one partition directory, by name:
    ``(path, size, mtime_ns)``. Temporary files are left out; a file removed while listing
    (compaction) is skipped; a missing directory gives an empty dict."""
    found: dict[str, tuple[Path, int, int]] = {}
    try:
        entries = list(os.scandir(partition))
    except FileNotFoundError:
        return found
    for entry in entries:
        if entry.name.startswith(".") or not entry.name.endswith(".parquet"):
            continue
        try:
            st = entry.stat()
        except FileNotFoundError:
            continue
        found[entry.name] = (Path(entry.path), st.st_size, st.st_mtime_ns)
    return found


def fsync_path(path: Path, flags: int = 0) -> None:
    """fsync a file (or, with ``os.O_DIRECTORY``, a directory) by path."""
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink inside ``path`` durable."""
    fsync_path(path, os.O_DIRECTORY)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one.

    Returns only after the file and its directory entry are fsynced.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
