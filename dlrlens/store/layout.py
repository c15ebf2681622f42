"""The storage contract between the collector (sole writer) and the dashboard (reader).

Everything dlrlens keeps lives under one data directory (``data/`` by default,
``DLRLENS_DATA`` or ``--data`` elsewhere); only :mod:`dlrlens.store` reads or writes it::

    data/
      receipts/date=YYYY-MM-DD/<slot>-<segment>.parquet   immutable receipt files (a flush)
      receipts/date=YYYY-MM-DD/c-<time_ns>.parquet        ... merged by compaction
      receipts/date=YYYY-MM-DD/.<name>.<pid>.tmp          being written (never data)
      wal/<slot>/<segment>.wal                            write-ahead log, per writer slot
      wal/<slot>.lock                                     held (flock) by the live writer
      wal/quarantine/<slot>-<segment>.wal                 log segments that could not be converted
      rejected/<reason>/<time>-<id>.body|.json            raw bodies of rejected requests, and why
      stats/<slot>.json                                   each writer's counters (metrics)
      maintenance.json                                    the maintenance process's status
      maintenance.lock                                    flock: the active maintainer
      compaction.lock                                     flock: one compaction at a time
      derived/manifest.json                               the per-message state in force
      derived/{messages,rollup,hist,latency}/sent=YYYY-MM-DD/*.parquet   that state's files
      derived.lock                                        flock: one derived-state updater at a time
      tmp/compaction/, tmp/derive/                        DuckDB spill files (removed after use)
      .auth-failures.sqlite (-wal, -shm)                  wrong-secret counts per source, shared
                                                          by the collector's workers (disposable)
      .healthz-<pid>                                      /healthz's write probe (removed at once)
      sends/<log|history>/YYYY-MM-DD.parquet              Mobivate's send records created that UTC day
      campaigns/mobivate.parquet                          Mobivate's campaign list (id, name, ...)
      campaigns/imported.parquet                          campaign names imported from a CSV
      sync.json                                           the last sync of send records (window, error, auth error)
      sync.lock                                           flock: one sync at a time
      keys/msisdn.key, keys/.msisdn.lock                  per-installation HMAC key for phone numbers (mode 600)

Files are published and locks taken only through :mod:`dlrlens.store.files`; the derived
state is described in :mod:`dlrlens.store.derive`, the status files in
:mod:`dlrlens.store.status`, Mobivate's send records, campaign names and the sync state in
:mod:`dlrlens.store.sends` (schema :data:`dlrlens.store.sends.SEND_SCHEMA`), the number key in
:mod:`dlrlens.store.pseudonym`.

Contract for readers:

* Only files matching ``receipts/date=*/*.parquet`` are data. Writers create a file
  under a dot-prefixed ``.tmp`` name, fsync it, rename it into place and fsync the
  directory (:func:`dlrlens.store.files.publishing`), so a reader globbing ``*.parquet``
  never sees a partial file.
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

from dlrlens.store import files

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


def has_receipts(root: Path) -> bool:
    """Whether any receipt file is visible under the data directory ``root``."""
    receipts = receipts_dir(root)
    try:
        partitions = [e for e in os.scandir(receipts) if e.name.startswith(PARTITION_PREFIX) and e.is_dir()]
    except FileNotFoundError:
        return False
    return any(files.visible_files(Path(p.path)) for p in partitions)


# Old names of the helpers now in dlrlens.store.files (callers move there; kept so that code
# written against them goes on working).
visible_files = files.visible_files
fsync_path = files.fsync_path
fsync_dir = files.fsync_dir
atomic_write_bytes = files.publish_bytes
