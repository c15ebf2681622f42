"""The storage contract between the collector (sole writer) and the dashboard (reader).

Everything dlrlens keeps lives under one data directory (``data/`` by default,
``DLRLENS_DATA`` or ``--data`` elsewhere); only :mod:`dlrlens.store` reads or writes it::

    data/
      receipts/date=YYYY-MM-DD/<slot>-<segment>.parquet   immutable receipt files (a flush)
      receipts/date=YYYY-MM-DD/c-<time_ns>.parquet        ... merged by compaction
      receipts/date=YYYY-MM-DD/.<name>.<pid>.tmp          being written (never data)
      clicks/date=YYYY-MM-DD/<slot>-<segment>.parquet     short-URL clicks (UTC date of arrival)
      replies/date=YYYY-MM-DD/<slot>-<segment>.parquet    incoming messages (UTC date of created)
      keys/msisdn.key, keys/.msisdn.lock                  per-installation HMAC key for phone numbers (mode 600), its creation lock
      wal/<slot>/<segment>.wal                            write-ahead log, per writer slot
      wal/<slot>.lock                                     held (flock) by the live writer
      wal/quarantine/<slot>-<segment>.wal                 log segments that could not be converted
      rejected/<reason>/<time>-<id>.body|.json            raw bodies of rejected requests, and why
      stats/<slot>.json                                   each writer's counters (metrics)
      stats/replay/<slot>.json                            each writer's catching-up state (dlrlens.store.catch_up)
      maintenance.json                                    the maintenance process's status
      demo.json                                           `dlrlens up`'s demo traffic: still posting?
      maintenance.lock                                    flock: the active maintainer
      compaction.lock                                     flock: one compaction at a time
      derived/manifest.json                               the per-message state in force
      derived/{messages,<companions>}/sent=YYYY-MM-DD/*.parquet   that state's files (dlrlens.store.derive)
      derived.lock                                        flock: one derived-state updater at a time
      tmp/compaction/, tmp/derive/                        DuckDB spill files (removed after use)
      .auth-failures.sqlite (-wal, -shm)                  wrong-secret counts per source, shared
                                                          by the collector's workers (disposable)
      .healthz-<pid>                                      /healthz's write probe (removed at once)
      alerts.sqlite (-wal, -shm)                          alert state and history (dlrlens.store.alert_state):
                                                          firing since when, notifications and their outcome,
                                                          silences; written by the alert evaluator and the
                                                          dashboard's silence form, one transaction a change
      alerts.lock                                         flock: the one alert evaluator of the data directory
      sends/<log|history>/YYYY-MM-DD.parquet              Mobivate's send records created that UTC day
      campaigns/mobivate.parquet                          Mobivate's campaign list (id, name, ...)
      campaigns/imported.parquet                          campaign names imported from a CSV
      sync.json                                           the last sync of send records (window, error, auth error)
      sync.lock                                           flock: one sync at a time

With the Iceberg store (``DLRLENS_STORE=iceberg:<catalog>``, :mod:`dlrlens.store.backends`) the
receipts, clicks and replies live in the Iceberg tables ``<namespace>.receipts``,
``<namespace>.clicks`` and ``<namespace>.replies`` of that catalog (namespace
``DLRLENS_ICEBERG_NAMESPACE``, default ``dlrlens``): the columns of :data:`TABLES`,
partitioned by the UTC day of each table's day column, one append commit per table with rows
per flush of a log slot's segments (snapshot summary ``dlrlens.segment = <collector
id>/<slot>/<segment>[,<segment>...]``, table property ``dlrlens.committed.<collector
id>/<slot>``: the slot's segments the table holds that its log still holds) or per batch of
files copied by ``dlrlens migrate`` (``dlrlens.source = <source id>/<relative path>``, one per
line); the receipts compacted by the collectors' maintenance; Mobivate's send records, campaign
list and imported names in ``<namespace>.sends`` (partitioned by source and UTC day of
``created``), ``.campaigns`` and ``.campaign_names``, each partition replaced by an overwrite
commit (:mod:`dlrlens.store.iceberg.send_tables`); see :mod:`dlrlens.store.iceberg`.
The data directory then keeps what is local to one machine::

    data/
      wal/..., stats/..., rejected/..., .auth-failures.sqlite   as above: the collector's log is local,
                                                          a 200 still means fsynced on this machine
      collector-id, collector-id.lock                     this directory's id in segment keys (made once)
      cache/iceberg/<catalog>/                            the dashboard's and report's copy of the tables:
        receipts/date=YYYY-MM-DD/i-<hash>.parquet         one cached data file (hash of its object URI;
                                                          c-<hash>: a compaction output, lineage inside)
        clicks/date=YYYY-MM-DD/i-<hash>.parquet           ... of the clicks table
        replies/date=YYYY-MM-DD/i-<hash>.parquet          ... of the replies table
        sends/<source>/YYYY-MM-DD.parquet, campaigns/...  the send tables' partitions as local files
        send-tables.json, sync.json                       their data files cached; the last sync's outcome
        derived/..., derived.lock                         per-message state computed from the cache
        mirror.lock                                       flock: one sync of the cache at a time
      tmp/iceberg-compaction/                             the table compaction's copies while it merges

No ``receipts/``, ``clicks/``, ``replies/``, ``sends/`` or ``campaigns/`` is written under ``data/`` itself then
(``sync.json`` and ``sync.lock`` are: a syncing process's own outcome and lock). The cache follows the contract for
readers below (it is a data-directory layout); it is disposable: deleting it costs one download.

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

Event tables (:data:`TABLES`): ``clicks`` (Mobivate's short-URL click webhook,
:data:`CLICK_SCHEMA`) and ``replies`` (incoming messages, :data:`REPLY_SCHEMA`) travel the
receipts' durable path unchanged: the same write-ahead log of the writer slot (a log record
names its table in :data:`TABLE_KEY`; a record without it is a receipt), the same flush
into ``<table>/date=YYYY-MM-DD/<slot>-<segment>.parquet``, the same crash replay and
idempotent file names, the same reader contract as above. Compaction and the derived state
cover receipts only: clicks and replies are a few percent of receipts, and the funnel
queries read their files directly (:mod:`dlrlens.store.events`).

Personal data in the event tables (what is kept and why, see the README's *Personal data*):
a phone number is stored as an HMAC-SHA256 keyed with ``keys/msisdn.key`` (32 random bytes
created at first use, never leaves the data directory; losing it only means new hashes no
longer match old ones) and a masked form (``44700****123``); the number itself only when
``DLRLENS_KEEP_MSISDN`` says so. A click's IP address is kept only when
``DLRLENS_KEEP_CLICK_IP`` says so (its country is in the body anyway). Reply text is stored:
it is the feature (opt-out keywords, reading replies); the dashboard masks it by default.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from dlrlens.store import files

RECEIPTS_DIR = "receipts"
# With the Iceberg store (see the module docstring; the names are used by dlrlens.store.iceberg).
COLLECTOR_ID = "collector-id"
ICEBERG_CACHE_DIR = "cache/iceberg"
ICEBERG_COMPACTION_DIR = "tmp/iceberg-compaction"  # the table compaction's copies while it merges
WAL_DIR = "wal"
REJECTED_DIR = "rejected"
STATS_DIR = "stats"
# Each writer slot's catching-up state (dlrlens.store.catch_up); not stats/*.json: those are counters.
REPLAY_STATE_DIR = "stats/replay"
# Written (atomically) by the active maintainer after each task: runs, errors, the last error,
# the last success of each task, its intervals. See dlrlens.store.maintenance.Maintainer.status_document.
MAINTENANCE_STATUS = "maintenance.json"
# Written (atomically) by `dlrlens up` while its demo traffic posts, every few seconds, and once
# when it ends; see dlrlens.store.demo.
DEMO_STATUS = "demo.json"
PARTITION_PREFIX = "date="
PARQUET_GLOB = f"{RECEIPTS_DIR}/{PARTITION_PREFIX}*/*.parquet"
CLICKS_DIR = "clicks"
REPLIES_DIR = "replies"
KEYS_DIR = "keys"
MSISDN_KEY = f"{KEYS_DIR}/msisdn.key"
# The log record key naming a record's table (absent: a receipt). Never a column name.
TABLE_KEY = "_table"

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


CLICK_SCHEMA = pa.schema(
    [
        pa.field("click_id", pa.string(), nullable=False),
        pa.field("received_at", UTC_TIMESTAMP, nullable=False),
        pa.field("message_id", pa.string()),
        pa.field("batch_id", pa.string()),
        pa.field("client_ref", pa.string()),
        pa.field("url", pa.string()),
        pa.field("browser", pa.string()),
        pa.field("os", pa.string()),
        pa.field("country", pa.string()),
        pa.field("iso2l", pa.string()),
        pa.field("mobile_hash", pa.string()),
        pa.field("mobile_masked", pa.string()),
        pa.field("mobile", pa.string()),
        pa.field("ip_address", pa.string()),
        pa.field("extra", pa.string()),
        pa.field("campaign", pa.string()),
        pa.field("labels", pa.string()),
    ]
)

CLICK_COLUMN_DOCS = {
    "click_id": "Hash of the click's documented fields and URL labels: a retried click has the same id "
    "(copies received within a minute of each other count once).",
    "received_at": "When the collector received the click (Mobivate sends no time: the click time).",
    "message_id": "messageId: the deliveryMessageId of the message whose short URL was clicked, or null.",
    "batch_id": "batchId of the send, or null.",
    "client_ref": "clientRef: the send's reference (a receipt's clientReference), or null.",
    "url": "The original long URL.",
    "browser": "Clicker's browser, as Mobivate names it.",
    "os": "Clicker's operating system.",
    "country": "Country of the clicker's IP address, as Mobivate names it.",
    "iso2l": "Two-letter code of that country as sent (Mobivate writes UK, not GB).",
    "mobile_hash": "HMAC-SHA256 of the clicker's number (digits only) with the installation key, or null.",
    "mobile_masked": "The clicker's number masked for display (44700****123), or null.",
    "mobile": "The clicker's number as sent: only with DLRLENS_KEEP_MSISDN, else null.",
    "ip_address": "The clicker's IP address: only with DLRLENS_KEEP_CLICK_IP, else null.",
    "extra": "Fields beyond the documented ones, as a JSON object text, or null.",
    "campaign": "The `campaign` query parameter of the webhook URL, or null.",
    "labels": "All query parameters of the webhook URL except the secret, as a JSON object text.",
}

REPLY_SCHEMA = pa.schema(
    [
        pa.field("reply_id", pa.string(), nullable=False),
        pa.field("created", UTC_TIMESTAMP, nullable=False),
        pa.field("received_at", UTC_TIMESTAMP, nullable=False),
        pa.field("in_reply_to", pa.string()),
        pa.field("logical_message_id", pa.string()),
        pa.field("recipient", pa.string()),
        pa.field("body", pa.string()),
        pa.field("originator_hash", pa.string()),
        pa.field("originator_masked", pa.string()),
        pa.field("originator", pa.string()),
        pa.field("owner_user_id", pa.string()),
        pa.field("extra", pa.string()),
        pa.field("campaign", pa.string()),
        pa.field("labels", pa.string()),
    ]
)

REPLY_COLUMN_DOCS = {
    "reply_id": "Mobivate's id of the incoming message (else a hash of its fields): the same reply twice "
    "has the same id and counts once.",
    "created": "When Mobivate received the reply, converted to UTC.",
    "received_at": "When the collector received it (collector clock, UTC).",
    "in_reply_to": "inReplyTo: the deliveryMessageId of the message replied to, or null.",
    "logical_message_id": "logicalMessageId: the batchId of that message, or null.",
    "recipient": "Your virtual number or short code the reply was sent to.",
    "body": "The reply text (personal data: masked on screen by default, never logged).",
    "originator_hash": "HMAC-SHA256 of the replier's number (digits only) with the installation key.",
    "originator_masked": "The replier's number masked for display (44700****123).",
    "originator": "The replier's number as sent: only with DLRLENS_KEEP_MSISDN, else null.",
    "owner_user_id": "ownerUserId: the Mobivate account, or null.",
    "extra": "Fields beyond the documented ones, as a JSON object text, or null.",
    "campaign": "The `campaign` query parameter of the webhook URL, or null.",
    "labels": "All query parameters of the webhook URL except the secret, as a JSON object text.",
}


class TableSpec:
    """What the durable write path needs to know of one table."""

    def __init__(self, name: str, directory: str, schema: pa.Schema, day_column: str, sort: tuple[str, ...]):
        self.name = name
        self.directory = directory
        self.schema = schema
        self.day_column = day_column  # its UTC date is the partition
        self.sort = sort  # row order inside a flushed file
        self.timestamps = tuple(f.name for f in schema if f.type == UTC_TIMESTAMP)


TABLES = {
    "receipts": TableSpec("receipts", RECEIPTS_DIR, RECEIPT_SCHEMA, "created", ("delivery_message_id", "created")),
    "clicks": TableSpec("clicks", CLICKS_DIR, CLICK_SCHEMA, "received_at", ("message_id", "received_at")),
    "replies": TableSpec("replies", REPLIES_DIR, REPLY_SCHEMA, "created", ("in_reply_to", "created")),
}


def table_partition_dir(root: Path, table: str, day: str) -> Path:
    """Directory of ``table``'s rows whose partition column falls on UTC ``day``."""
    return Path(root) / TABLES[table].directory / f"{PARTITION_PREFIX}{day}"


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
