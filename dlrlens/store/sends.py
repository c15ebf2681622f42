"""Mobivate's send records in the store: the message log, the campaign list and imported
campaign names, joined to the receipts for names, cost, country and network.

On disk (part of the layout contract, :mod:`dlrlens.store.layout`)::

    sends/<source>/YYYY-MM-DD.parquet     send records created that UTC day (source: log, history)
    campaigns/mobivate.parquet            Mobivate's campaign list (id, name, ...)
    campaigns/imported.parquet            names imported from a CSV (batch_id, name)
    sync.json                             the last sync: window, counts, last error and its time
    sync.lock                             flock: one sync at a time per data directory

Contract:

* Idempotent: a page's records are merged into the file of their UTC ``created`` day, one row
  per ``message_id`` (the latest ``modified`` wins; ties keep the stored row), rows sorted by id;
  a file whose merged rows equal the stored ones is not rewritten. A row taken is stamped
  ``changed_at`` (later than every stamp in its file), so the derived state absorbs only what
  changed (:mod:`dlrlens.store.derive`, "Send records"). Syncing a window twice
  changes no file. Files are published atomically (:func:`dlrlens.store.files.publish_table`).
* Nothing half-stored: a page is converted whole before any of it is merged; a page that does
  not convert (a record without a usable ``id`` or ``created``, a non-numeric ``cost``) is
  reported and skipped (:class:`BadPage`).
* Personal data: the recipient's full number is stored only with ``keep_recipient``; by
  default a row keeps its country (ISO region), original network (the carrier phonenumbers
  knows for the prefix: numbers get ported), a keyed hash (:func:`dlrlens.store.pseudonym.number_hash`)
  and a masked form. Message text (``body``, ``text``) is never stored; no number is logged.
* Readers: :func:`sends_sql` (one row per message id over every source), :func:`names_sql`
  (one name per campaign id: imported first, then Mobivate's) and :func:`campaign_sql` (THE
  definition of a message's campaign); :func:`one_record_per_message_sql` and
  :func:`names_of_sql` are the first two over any relation (other engines' views of the
  Iceberg tables: :mod:`dashboard.engine_sql`). The dashboard's cost figures read the send records
  the derived state absorbed (:mod:`dlrlens.store.derive`: each message keeps its MT record),
  never joining at query time; the straightforward join is the test oracle's
  (``tests/support/baseline.py``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from dlrlens.store import files, pseudonym
from dlrlens.store.sql import string_literal

log = logging.getLogger("dlrlens.sync")

SENDS_DIR = "sends"
CAMPAIGNS_DIR = "campaigns"
MOBIVATE_CAMPAIGNS = f"{CAMPAIGNS_DIR}/mobivate.parquet"
IMPORTED_NAMES = f"{CAMPAIGNS_DIR}/imported.parquet"
SYNC_STATUS = "sync.json"
SYNC_LOCK = "sync.lock"
SOURCES = ("log", "history")
NO_CAMPAIGN = "(none)"
MAX_NAME_LENGTH = 200

UTC = timezone.utc
UTC_TIMESTAMP = pa.timestamp("us", tz="UTC")

SEND_SCHEMA = pa.schema([
    pa.field("message_id", pa.string(), nullable=False),
    pa.field("created", UTC_TIMESTAMP, nullable=False),
    pa.field("modified", UTC_TIMESTAMP),
    pa.field("originator", pa.string()),
    pa.field("status", pa.string()),
    pa.field("direction", pa.string()),
    pa.field("route_id", pa.string()),
    pa.field("parts", pa.int32()),
    pa.field("cost", pa.float64()),
    pa.field("currency", pa.string()),
    pa.field("sender_reference", pa.string()),
    pa.field("campaign_id", pa.string()),
    pa.field("country", pa.string()),
    pa.field("network", pa.string()),
    pa.field("recipient_hash", pa.string()),
    pa.field("recipient_masked", pa.string()),
    pa.field("recipient", pa.string()),
    pa.field("source", pa.string(), nullable=False),
    pa.field("changed_at", UTC_TIMESTAMP),
])

SEND_COLUMN_DOCS = {
    "message_id": "Mobivate's message id (the receipts' deliveryMessageId).",
    "created": "When Mobivate created the message (UTC); the file's day.",
    "modified": "When Mobivate last changed the record (UTC), or null; the latest one is kept.",
    "originator": "The sender ID.",
    "status": "Mobivate's status of the message in its log (upper-cased).",
    "direction": "MT (sent) or MO (received).",
    "route_id": "Mobivate's route.",
    "parts": "Number of SMS parts billed.",
    "cost": "What Mobivate charged for the message, in `currency`.",
    "currency": "ISO currency of `cost` (upper-cased).",
    "sender_reference": "Your send reference (the receipts' clientReference).",
    "campaign_id": "Mobivate's campaign id, or null (the receipts' batchId for campaign sends).",
    "country": "ISO region of the recipient number (phonenumbers), or null when it does not parse.",
    "network": "Original network of the number's prefix (phonenumbers; numbers get ported), or null.",
    "recipient_hash": "HMAC-SHA256 of the number's E.164 digits with data/keys/msisdn.key (lookups).",
    "recipient_masked": "The number with its middle digits hidden (44700****123).",
    "recipient": "The full number, only with DLRLENS_KEEP_RECIPIENT=1; else null.",
    "source": "log (older API message log) or history (newer API message history).",
    "changed_at": "When a sync last stored a change of the record (UTC; grows within a file): the derived state "
                  "absorbs a replaced file's records changed since it last read it.",
}

CAMPAIGN_SCHEMA = pa.schema([
    pa.field("campaign_id", pa.string(), nullable=False),
    pa.field("name", pa.string()),
    pa.field("recipient_count", pa.int64()),
    pa.field("scheduled", pa.string()),
    pa.field("status", pa.string()),
])
NAME_SCHEMA = pa.schema([pa.field("batch_id", pa.string(), nullable=False), pa.field("name", pa.string(), nullable=False)])


class BadPage(ValueError):
    """A page whose records do not convert (the message names the record and the field)."""


# --------------------------------------------------------------------------- converting records


def parse_time(value) -> datetime | None:
    """A Mobivate time (``+0000``, ``+00:00``, ``Z``, fractions or none) as aware UTC, or None."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"not a time: {type(value).__name__}")
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    elif len(text) > 5 and text[-5] in "+-" and text[-4:].isdigit() and text[-3] != ":":
        text = text[:-2] + ":" + text[-2:]
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _text(value, upper: bool = False) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    if not text:
        return None
    return text.upper() if upper else text


def _cost(value) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError("a boolean is not a cost")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError("not a finite number")
    return number


def _int(value) -> int | None:
    if value is None or value == "":
        return None
    return int(value)


@dataclass
class RecordConverter:
    """Turns Mobivate records into stored rows (:data:`SEND_SCHEMA`), keeping only what the
    settings allow of the recipient number."""

    key: bytes
    keep_recipient: bool = False

    def log_row(self, record: dict) -> dict:
        """A message-log record (older API) as a row."""
        return self._row(record, source="log", created=record.get("created"), modified=record.get("modified"),
                         cost=record.get("cost"), reference=record.get("senderReference"),
                         campaign=record.get("campaignId"), route=record.get("routeId"),
                         direction=record.get("direction"))

    def history_row(self, record: dict) -> dict:
        """A history record (newer API: the documented shape or the observed one) as a row."""
        return self._row(record, source="history", created=record.get("created_at", record.get("sent_on")),
                         modified=record.get("updated_at"), cost=record.get("price", record.get("cost")),
                         reference=record.get("reference"), campaign=record.get("campaign_id"),
                         route=record.get("route"), direction=record.get("direction", "MT"))

    def _row(self, record: dict, *, source, created, modified, cost, reference, campaign, route, direction) -> dict:
        message_id = _text(record.get("id"))
        if message_id is None:
            raise ValueError("no id")
        created_at = parse_time(created)
        if created_at is None:
            raise ValueError("no created time")
        number = pseudonym.parse_number(_text(record.get("recipient")))
        return {
            "message_id": message_id, "created": created_at, "modified": parse_time(modified),
            "originator": _text(record.get("originator")), "status": _text(record.get("status"), upper=True),
            "direction": _text(direction, upper=True), "route_id": _text(route), "parts": _int(record.get("parts")),
            "cost": _cost(cost), "currency": _text(record.get("currency"), upper=True),
            "sender_reference": _text(reference), "campaign_id": _text(campaign),
            "country": number.country if number else None, "network": number.network if number else None,
            "recipient_hash": pseudonym.keyed_hash(self.key, number.canonical) if number else None,
            "recipient_masked": number.masked if number else None,
            "recipient": number.canonical if number and self.keep_recipient else None,
            "source": source,
        }

    def page(self, records: list[dict], kind: str) -> list[dict]:
        """Every record of a page as rows, or :class:`BadPage` (nothing of the page is kept)."""
        convert = self.log_row if kind == "log" else self.history_row
        rows = []
        for i, record in enumerate(records):
            try:
                rows.append(convert(record))
            except (TypeError, ValueError) as exc:
                raise BadPage(f"record {i} (id {str(record.get('id'))[:40]!r}): {exc}") from None
        return rows


def campaign_rows(records: list[dict]) -> list[dict]:
    """Campaign-list records as rows of :data:`CAMPAIGN_SCHEMA` (BadPage when one has no id)."""
    rows = []
    for i, record in enumerate(records):
        campaign_id = _text(record.get("id"))
        if campaign_id is None:
            raise BadPage(f"campaign record {i}: no id")
        try:
            count = _int(record.get("recipientCount"))
        except (TypeError, ValueError):
            count = None
        rows.append({"campaign_id": campaign_id, "name": (_text(record.get("name")) or "")[:MAX_NAME_LENGTH] or None,
                     "recipient_count": count, "scheduled": _text(record.get("scheduled")),
                     "status": _text(record.get("status"))})
    return rows


# --------------------------------------------------------------------------- storing


def day_path(data_dir: Path, source: str, day: date) -> Path:
    return Path(data_dir) / SENDS_DIR / source / f"{day.isoformat()}.parquet"


def _merge(existing: pa.Table | None, rows: list[dict], schema: pa.Schema, key: str,
           newer: Callable[[dict, dict], bool], stamp: str | None = None) -> tuple[pa.Table, bool]:
    """``existing`` with ``rows`` merged in by ``key`` (a row replaces the stored one when
    ``newer(row, stored)``), sorted by key; and whether anything changed. ``stamp``: a column
    set on each row taken to a time later than every stored one (the clock, or 1 us past the
    latest stored stamp should the clock step back), left out of the comparisons."""
    merged = {r[key]: r for r in (existing.to_pylist() if existing is not None else [])}
    changed = False
    when = None
    if stamp:
        latest = max((r[stamp] for r in merged.values() if r.get(stamp) is not None), default=None)
        when = datetime.now(UTC)
        if latest is not None and when <= latest:
            when = latest + timedelta(microseconds=1)
    for row in rows:
        stored = merged.get(row[key])
        if stamp:
            row = {**row, stamp: None}
            compared = None if stored is None else {**stored, stamp: None}
        else:
            compared = stored
        if stored is None or (compared != row and newer(row, compared)):
            merged[row[key]] = {**row, stamp: when} if stamp else row
            changed = True
    table = pa.Table.from_pylist([merged[k] for k in sorted(merged)], schema=schema)
    return table, changed


def _read(path: Path, schema: pa.Schema) -> pa.Table | None:
    try:
        return pq.read_table(path, schema=schema)
    except FileNotFoundError:
        return None


def _later_modified(row: dict, stored: dict) -> bool:
    """A fetched row replaces the stored one when it was modified later (or the stored one has
    no modified time); equal times keep the stored row (idempotent)."""
    if row["modified"] is None:
        return stored["modified"] is None and row != stored
    return stored["modified"] is None or row["modified"] > stored["modified"]


def send_partitions(rows: list[dict]) -> dict[tuple[str, date], list[dict]]:
    """``rows`` by (source, UTC day of ``created``): a local day file, a partition of the
    Iceberg ``sends`` table."""
    by_partition: dict[tuple[str, date], list[dict]] = {}
    for row in rows:
        by_partition.setdefault((row["source"], row["created"].date()), []).append(row)
    return by_partition


def merge_sends(existing: pa.Table | None, rows: list[dict]) -> tuple[pa.Table, bool]:
    """One day's stored send rows with ``rows`` merged in (one per message id, the latest
    ``modified`` wins, taken rows stamped ``changed_at``); and whether anything changed."""
    return _merge(existing, rows, SEND_SCHEMA, "message_id", _later_modified, stamp="changed_at")


def merge_campaigns(existing: pa.Table | None, rows: list[dict]) -> tuple[pa.Table, bool]:
    """The stored campaign list with ``rows`` merged in (the fetched row wins)."""
    return _merge(existing, rows, CAMPAIGN_SCHEMA, "campaign_id", lambda a, b: True)


def merge_names(existing: pa.Table | None, rows: list[dict]) -> tuple[pa.Table, bool]:
    """The stored imported names with ``rows`` merged in (a batch id imported again takes the new name)."""
    return _merge(existing, rows, NAME_SCHEMA, "batch_id", lambda a, b: True)


class LocalSends:
    """Where a sync and a names import store what they bring: the data directory's files (the
    local store). The Iceberg store's counterpart is
    :class:`dlrlens.store.iceberg.send_tables.IcebergSends` (same methods, same merge rules)."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)

    def store_rows(self, rows: list[dict]) -> int:
        """Merge send rows into their day files; returns how many files changed."""
        changed = 0
        for (source, day), day_rows in sorted(send_partitions(rows).items()):
            path = day_path(self.data_dir, source, day)
            changed += self._publish(path, *merge_sends(_read(path, SEND_SCHEMA), day_rows), compression="zstd")
        return changed

    def store_campaigns(self, rows: list[dict]) -> int:
        """Merge campaign-list rows; returns 1 when the file changed."""
        path = self.data_dir / MOBIVATE_CAMPAIGNS
        return self._publish(path, *merge_campaigns(_read(path, CAMPAIGN_SCHEMA), rows))

    def store_names(self, rows: list[dict]) -> int:
        """Merge imported names (``batch_id``, ``name``); returns 1 when the file changed."""
        path = self.data_dir / IMPORTED_NAMES
        return self._publish(path, *merge_names(_read(path, NAME_SCHEMA), rows))

    def record_status(self, status: dict) -> None:
        """Nothing more to do: ``sync.json`` is the data directory's own (:func:`record_sync`)."""

    @staticmethod
    def _publish(path: Path, table: pa.Table, dirty: bool, compression: str = "snappy") -> int:
        if dirty:
            path.parent.mkdir(parents=True, exist_ok=True)
            files.publish_table(table, path, compression=compression)
        return int(dirty)


def store_rows(data_dir: Path, rows: list[dict]) -> int:
    """Merge send rows into the data directory's day files; returns how many files changed."""
    return LocalSends(data_dir).store_rows(rows)


# --------------------------------------------------------------------------- names from a CSV


@dataclass
class NameImport:
    names: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def parse_names_csv(text: str) -> NameImport:
    """``batch_id,name`` rows (a header row with those names required). Every bad row is an
    error naming its line; the caller stores nothing when there is one."""
    result = NameImport()
    reader = csv.reader(io.StringIO(text))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        result.errors.append("line 1: the file is empty (expected a header batch_id,name)")
        return result
    except csv.Error as exc:
        result.errors.append(f"line 1: {exc}")
        return result
    if header[:2] != ["batch_id", "name"]:
        result.errors.append(f"line 1: expected the header batch_id,name, got {','.join(header)[:80]!r}")
        return result
    try:
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != 2:
                result.errors.append(f"line {line}: expected 2 columns (batch_id,name), got {len(row)}")
                continue
            batch_id, name = row[0].strip(), row[1].strip()
            if not batch_id:
                result.errors.append(f"line {line}: empty batch_id")
            elif not name:
                result.errors.append(f"line {line}: empty name for batch_id {batch_id[:40]!r}")
            elif len(name) > MAX_NAME_LENGTH or any(ord(c) < 32 for c in name):
                result.errors.append(f"line {line}: the name is longer than {MAX_NAME_LENGTH} characters "
                                     f"or holds a control character")
            elif batch_id in result.names and result.names[batch_id] != name:
                result.errors.append(f"line {line}: batch_id {batch_id[:40]!r} named twice differently")
            else:
                result.names[batch_id] = name
    except csv.Error as exc:
        result.errors.append(f"line {reader.line_num}: {exc}")
    return result


def import_names(data_dir: Path, text: str, destination=None) -> NameImport:
    """Parse a names CSV and, when it has no error, merge it into the imported names
    (``destination``: :class:`LocalSends` of ``data_dir`` by default, i.e.
    ``campaigns/imported.parquet``). Nothing is stored when any row is bad."""
    result = parse_names_csv(text)
    if result.errors or not result.names:
        if not result.errors:
            result.errors.append("no names in the file")
        return result
    destination = destination or LocalSends(data_dir)
    destination.store_names([{"batch_id": k, "name": v} for k, v in result.names.items()])
    return result


# --------------------------------------------------------------------------- sync


@dataclass
class SyncResult:
    start: date
    end: date
    records: int = 0
    campaigns: int = 0
    pages: int = 0
    bad_pages: list[str] = field(default_factory=list)
    files_changed: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"from": self.start.isoformat(), "to": self.end.isoformat(), "records": self.records,
                "campaigns": self.campaigns, "pages": self.pages, "bad_pages": len(self.bad_pages),
                "bad_page_errors": self.bad_pages[:10], "files_changed": self.files_changed,
                "seconds": round(self.seconds, 3)}


def days(start: date, end: date) -> list[date]:
    """The UTC days from ``start`` to ``end``, both included."""
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def sync(data_dir: Path, client, start: date, end: date, *, keep_recipient: bool = False,
         page_size: int = 1000, progress: Callable[[str], None] | None = None, destination=None) -> SyncResult:
    """Fetch the message log (day by day), the history and the campaign list for the UTC days
    [start, end] with ``client`` (a :class:`dlrlens.mobivate.MobivateClient`) and merge them
    into ``destination`` (default: :class:`LocalSends` of ``data_dir``; on the Iceberg store its
    tables). Each day is merged after its last page, so an interrupted backfill keeps
    the days already done. Records the outcome in ``data_dir``'s ``sync.json`` and with the
    destination (also on failure, then re-raises: :class:`dlrlens.mobivate.MobivateAuthError`
    for a key problem). ``data_dir`` also holds the sync's lock and the number key."""
    import time

    from dlrlens.mobivate import MalformedPage

    data_dir = Path(data_dir)
    result = SyncResult(start, end)
    began = time.monotonic()
    converter = RecordConverter(pseudonym.installation_key(data_dir), keep_recipient)
    say = progress or (lambda text: None)
    destination = destination or LocalSends(data_dir)

    def malformed(exc: MalformedPage) -> None:
        result.bad_pages.append(str(exc))

    try:
        with files.locked(data_dir / SYNC_LOCK, wait=True):
            for day in days(start, end):
                first = datetime(day.year, day.month, day.day, tzinfo=UTC)
                last = first + timedelta(days=1) - timedelta(seconds=1)
                rows = _fetch(client.message_log(first, last, page_size=page_size, on_malformed=malformed),
                              lambda page: converter.page(page, "log"), result)
                result.files_changed += destination.store_rows(rows)
                say(f"{day.isoformat()}: {len(rows)} log records ({result.records} in all, "
                    f"{len(result.bad_pages)} bad pages)")
            rows = _fetch(client.history(start, end + timedelta(days=1), on_malformed=malformed),
                          lambda page: converter.page(page, "history"), result)
            result.files_changed += destination.store_rows(rows)
            campaigns = _fetch(client.campaigns(start, end, on_malformed=malformed), campaign_rows, result,
                               count=False)
            result.campaigns = len(campaigns)
            result.files_changed += destination.store_campaigns(campaigns)
    except Exception as exc:
        result.seconds = time.monotonic() - began
        record_sync(data_dir, result, error=exc, destination=destination)
        raise
    result.seconds = time.monotonic() - began
    record_sync(data_dir, result, destination=destination)
    if result.bad_pages:
        say(f"{len(result.bad_pages)} malformed page(s) skipped; first: {result.bad_pages[0]}")
    return result


def _fetch(pages: Iterable[list[dict]], convert, result: SyncResult, count: bool = True) -> list[dict]:
    rows = []
    for page in pages:
        result.pages += 1
        try:
            converted = convert(page)
        except BadPage as exc:
            result.bad_pages.append(str(exc))
            log.warning("event=sync_bad_page error=%r", str(exc))
            continue
        rows.extend(converted)
        if count:
            result.records += len(converted)
    return rows


def record_sync(data_dir: Path, result: SyncResult, error: Exception | None = None, destination=None) -> None:
    """Update ``sync.json``: the last success (window, counts) or the last error and its time;
    and give the same to ``destination`` (the Iceberg store keeps it with its tables, where
    every dashboard reads it). A destination that cannot take it is logged, not raised: the
    sync's own outcome stands."""
    from dlrlens.mobivate import MobivateAuthError

    status = sync_status(data_dir) or {}
    now = datetime.now(UTC).isoformat()
    if error is None:
        status.update(last_success_at=now, last_result=result.as_dict(), consecutive_failures=0,
                      auth_error=None)
    else:
        status.update(last_error=f"{type(error).__name__}: {error}"[:500], last_error_at=now,
                      auth_error=str(error)[:500] if isinstance(error, MobivateAuthError) else None,
                      consecutive_failures=int(status.get("consecutive_failures") or 0) + 1,
                      failed_window={"from": result.start.isoformat(), "to": result.end.isoformat()})
    files.publish_bytes(Path(data_dir) / SYNC_STATUS, json.dumps(status, sort_keys=True).encode())
    if destination is not None:
        try:
            destination.record_status(status)
        except Exception as exc:  # noqa: BLE001 - the status is for people; the records are stored
            log.warning("event=sync_status_unpublished error=%r", f"{type(exc).__name__}: {str(exc)[:300]}")


def sync_status(data_dir: Path) -> dict | None:
    """What ``sync.json`` holds, or None before the first sync (or when unreadable)."""
    try:
        return json.loads((Path(data_dir) / SYNC_STATUS).read_text())
    except (FileNotFoundError, ValueError):
        return None


MAX_BACKOFF_SECONDS = 3600.0


def periodic_settings():
    """The Mobivate settings of this process when a periodic sync is due (a key and an
    interval > 0), else None. A bad setting is logged and turns the sync off."""
    from dlrlens.mobivate import MobivateSettings

    try:
        settings = MobivateSettings.from_env()
    except ValueError as exc:
        log.error("event=sync_disabled error=%r", str(exc))
        return None
    return settings if settings.configured and settings.sync_seconds > 0 else None


def periodic_sync(data_dir: Path, settings, now: datetime | None = None, client=None, destination=None) -> dict:
    """One periodic sync (the maintenance process, every ``settings.sync_seconds``): the last
    ``settings.sync_days`` UTC days again (overlapping windows: late log updates arrive, stored
    records merge by id). After failures it backs off: the next attempt waits the interval
    times 2**failures (at most an hour) after the last error. Raises on failure (recorded in
    ``sync.json``)."""
    from dlrlens.mobivate import MobivateClient

    now = now or datetime.now(UTC)
    status = sync_status(data_dir) or {}
    failures = int(status.get("consecutive_failures") or 0)
    if failures and status.get("last_error_at"):
        wait = min(MAX_BACKOFF_SECONDS, settings.sync_seconds * 2 ** failures)
        retry_at = datetime.fromisoformat(status["last_error_at"]) + timedelta(seconds=wait)
        if now < retry_at:
            return {"skipped": f"backing off after {failures} failure(s) until {retry_at.isoformat()}"}
    end = now.date()
    start = end - timedelta(days=settings.sync_days - 1)
    own = client is None
    client = client or MobivateClient.from_settings(settings)
    try:
        result = sync(data_dir, client, start, end, keep_recipient=settings.keep_recipient, destination=destination)
    finally:
        if own:
            client.close()
    return result.as_dict()


# --------------------------------------------------------------------------- reading


def _visible(data_dir: Path, pattern: str) -> list[Path]:
    return sorted(p for p in Path(data_dir).glob(pattern) if not p.name.startswith("."))


def version(data_dir: Path) -> str:
    """Changes whenever a send, campaign or name file changes (a cache key part)."""
    parts = []
    for path in _visible(data_dir, f"{SENDS_DIR}/*/*.parquet") + _visible(data_dir, f"{CAMPAIGNS_DIR}/*.parquet"):
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        parts.append(f"{path}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def has_sends(data_dir: Path) -> bool:
    return bool(_visible(data_dir, f"{SENDS_DIR}/*/*.parquet"))


def sql_types(schema: pa.Schema) -> dict[str, str]:
    """{column: DuckDB type} of one of this module's schemas (:data:`SEND_SCHEMA`, ...)."""
    types = {"string": "VARCHAR", "int32": "INTEGER", "int64": "BIGINT", "double": "DOUBLE",
             "timestamp[us, tz=UTC]": "TIMESTAMPTZ"}
    return {f.name: types[str(f.type)] for f in schema}


def empty_select(schema: pa.Schema) -> str:
    """A query with the columns of ``schema`` (one of this module's) and no rows."""
    return "SELECT " + ", ".join(f"NULL::{t} AS {name}" for name, t in sql_types(schema).items()) + " WHERE FALSE"


def _parquet(paths: list[Path], schema: pa.Schema) -> str:
    if not paths:
        return f"({empty_select(schema)})"
    return "read_parquet([" + ", ".join(string_literal(p) for p in paths) + "], union_by_name = true)"


# A message's send record is an MT one (an MO record is no message of ours).
MT_RECORD = "coalesce(direction, 'MT') = 'MT'"


def sends_sql(data_dir: Path, where: str = "TRUE") -> str:
    """One row per message id over every stored send record meeting ``where`` (of a message
    in both the log and the history, the log's; else the latest modified)."""
    return one_record_per_message_sql(_parquet(_visible(data_dir, f"{SENDS_DIR}/*/*.parquet"), SEND_SCHEMA), where)


def one_record_per_message_sql(records: str, where: str = "TRUE") -> str:
    """:func:`sends_sql` over the send records ``records`` (a relation with the columns of
    :data:`SEND_SCHEMA`: the local files, or another engine's view of the ``sends`` table)."""
    return f"""(
        SELECT * EXCLUDE (pick) FROM (
            SELECT *, row_number() OVER (PARTITION BY message_id
                ORDER BY source = 'log' DESC, modified DESC NULLS LAST, created DESC) AS pick
            FROM {records} WHERE {where})
        WHERE pick = 1)"""


def names_sql(data_dir: Path) -> str:
    """One row per campaign id (``campaign_id``, ``name``): an imported name first, else
    Mobivate's campaign name."""
    return names_of_sql(_parquet(_visible(data_dir, IMPORTED_NAMES), NAME_SCHEMA),
                        _parquet(_visible(data_dir, MOBIVATE_CAMPAIGNS), CAMPAIGN_SCHEMA))


def names_of_sql(imported: str, mobivate: str) -> str:
    """:func:`names_sql` over the relations ``imported`` (:data:`NAME_SCHEMA` rows) and
    ``mobivate`` (:data:`CAMPAIGN_SCHEMA` rows)."""
    return f"""(
        SELECT campaign_id, arg_min(name, priority) AS name FROM (
            SELECT batch_id AS campaign_id, name, 1 AS priority FROM {imported}
            UNION ALL
            SELECT campaign_id, name, 2 AS priority FROM {mobivate} WHERE nullif(trim(name), '') IS NOT NULL)
        GROUP BY campaign_id)"""


def campaign_sql(label: str = "label", batch_id: str = "batch_id", campaign_id: str = "campaign_id",
                 batch_name: str = "batch_name", campaign_name: str = "campaign_name") -> str:
    """THE definition of a message's campaign (every query joining send records uses it): its
    URL ``campaign`` label, else the name (imported, else Mobivate's) of its batchId, else of
    its log campaignId, else its batchId, else its campaignId, else ``(none)``. Arguments: the
    SQL expressions of those columns.

    The log's campaignId is used only for messages without any receipt:
    the receipt-based relations of the reader see a message's batchId only
    (:meth:`dlrlens.store.reader.Store._named`), and a message must have the same campaign on
    every page. Mobivate's receipts of a campaign send carry its id as batchId."""
    return f"coalesce({label}, {batch_name}, {campaign_name}, {batch_id}, {campaign_id}, '{NO_CAMPAIGN}')"
