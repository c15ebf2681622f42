"""The collector's Iceberg side: flushed log segments committed to the receipts table, exactly once.

:class:`IcebergPublisher` is the ``publish`` hook of :class:`dlrlens.store.writer.ReceiptStorage`:
a flush hands it a slot's closed segments (oldest first, in batches) instead of writing local
Parquet, and deletes the segments only when it returned. The contract:

* The ``200`` still means "fsynced in this machine's log" (``--data``). The table is updated
  every flush; until then the receipts are in the local log only.
* A batch of segments (one in steady state; up to
  :data:`~dlrlens.store.writer.PUBLISH_BATCH_SEGMENTS` when a catch-up after an outage finds
  many waiting) is one append commit. Its snapshot summary records ``dlrlens.segment =
  <collector id>/<slot>/<id>,<id>,...`` and, in the same catalog commit, the table property
  ``dlrlens.committed.<collector id>/<slot>`` is set to those ids: the slot's last commit,
  which snapshot expiry never removes (the contract is in :mod:`dlrlens.store.iceberg.table`).
* Before committing, the writer asks :meth:`IcebergPublisher.already_committed` (on metadata
  refreshed from the catalog): a segment already in the table (a crash between the commit and
  the segment's deletion, or an answer lost after the catalog committed) is deleted from the
  log, not committed again, and always before anything newer of its slot is committed. The
  collector id (``collector-id`` in the data directory, made once, under a lock) ties the keys
  to the log directory, so whichever worker replays a slot's log uses the same key.
* A commit that loses a race with another writer is retried on fresh metadata by pyiceberg
  itself (``commit.retry.num-retries``, 4; the data files are written once), then a few more
  times here (also when pyiceberg cannot retry because the snapshot the commit started from
  was expired meanwhile: a ``ValidationException``). Any other failure (catalog or object
  store down, a timeout) raises :class:`~dlrlens.store.writer.PublishError`: the segments stay
  in the log, the collector keeps acknowledging from its log, and the publisher waits
  (exponential back-off, 1 s doubling to 60 s, with jitter) before trying again; later
  segments wait behind the oldest, so the table receives them in order once the store is back.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
from pyiceberg.exceptions import CommitFailedException, ValidationException

from dlrlens.store import files, layout
from dlrlens.store.iceberg.table import (SEGMENT_KEY, committed_property, committed_segments, open_catalog,
                                         receipts_table, segment_value)
from dlrlens.store.writer import PublishError, collector_segments, oldest_age_seconds

log = logging.getLogger("dlrlens.collector")

CONFLICT_ATTEMPTS = 5
BACKOFF_START_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 60.0
# A segment waiting longer than this many flush intervals (and at least STALE_MIN_SECONDS) means
# commits are failing somewhere in the collector.
STALE_FLUSHES = 5
STALE_MIN_SECONDS = 10.0


def collector_id(data_dir: Path) -> str:
    """This data directory's collector id (made once, kept in ``collector-id``)."""
    path = Path(data_dir) / layout.COLLECTOR_ID
    with files.locked(path.with_name(layout.COLLECTOR_ID + ".lock"), wait=True):
        try:
            existing = path.read_text().strip()
        except FileNotFoundError:
            existing = ""
        if existing:
            return existing
        made = uuid.uuid4().hex[:16]
        files.publish_bytes(path, made.encode() + b"\n")
        return made


class IcebergPublisher:
    """Commits flushed segments to the receipts table of catalog ``catalog_name``.

    Thread-safe: catalog calls are serialised by a lock; :meth:`status` and :meth:`health`
    never wait for it (a commit may hang on the network for its timeouts, /healthz must not)."""

    def __init__(self, catalog_name: str, data_dir: Path, *, backoff_start: float = BACKOFF_START_SECONDS,
                 backoff_max: float = BACKOFF_MAX_SECONDS):
        self.catalog_name = catalog_name
        self.collector_id = collector_id(data_dir)
        self.backoff_start = backoff_start
        self.backoff_max = backoff_max
        self._commit_lock = threading.Lock()
        self._table = None
        self._checked: str | None = None  # the slot already_committed just checked on self._table
        self._seen: dict[int, str | None] = {}
        self._committed_ids: set[str] = set()  # of the slot last checked
        self._failures = 0          # consecutive failed attempts
        self._retry_at = 0.0        # monotonic time before which no attempt is made
        self._line_counts: dict[tuple[str, int], int] = {}
        self.last_error: str | None = None
        self.last_commit_at: datetime | None = None
        self.counts = {"commits": 0, "committed_segments": 0, "committed_receipts": 0, "already_committed": 0,
                       "conflicts": 0, "failures": 0}

    def slot_key(self, slot: str) -> str:
        return f"{self.collector_id}/{slot}"

    def already_committed(self, slot: str, segments: list[Path]) -> set[Path]:
        """Those of ``segments`` (of ``slot``) the table holds, on metadata refreshed now.
        Raises :class:`PublishError` when the catalog cannot tell now."""
        with self._commit_lock:
            self._catalog_call(lambda: self._refresh_and_check(slot))
            ids = self._committed_ids
        done = {segment for segment in segments if segment.stem in ids}
        if done:
            self.counts["already_committed"] += len(done)
            log.info("event=segments_already_committed slot=%s segments=%d", self.slot_key(slot), len(done))
        return done

    def __call__(self, slot: str, batch: list[tuple[Path, pa.Table]]) -> None:
        """Commit ``batch`` (``slot``'s segments, oldest first, with their receipts) as one commit.

        Raises :class:`PublishError` when it cannot now (nothing lost: the caller keeps the
        segments)."""
        ids = [segment.stem for segment, _ in batch]
        rows = pa.concat_tables([receipts for _, receipts in batch])
        with self._commit_lock:
            self._catalog_call(lambda: self._commit(slot, ids, rows))

    def _catalog_call(self, call) -> None:
        waiting = self._retry_at - time.monotonic()
        if waiting > 0:
            raise PublishError(f"Iceberg commits paused for {waiting:.1f} s after: {self.last_error}")
        try:
            call()
        except Exception as exc:
            self._checked = None
            self._failed(exc)
            raise PublishError(f"Iceberg commit failed: {self.last_error}") from exc
        self._failures = 0
        self._retry_at = 0.0
        self.last_error = None

    def _refresh_and_check(self, slot: str) -> None:
        table = self._fresh_table()
        self._committed_ids = committed_segments(table, self.slot_key(slot), self._seen)
        self._checked = slot

    def _commit(self, slot: str, ids: list[str], rows: pa.Table) -> None:
        slot_key = self.slot_key(slot)
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            if self._checked != slot:
                self._refresh_and_check(slot)
                if set(ids) <= self._committed_ids:  # an earlier attempt landed, its answer was lost
                    self.counts["already_committed"] += len(ids)
                    return
            self._checked = None
            table = self._table
            head = table.current_snapshot()
            try:
                with table.transaction() as transaction:
                    transaction.append(rows, snapshot_properties={SEGMENT_KEY: segment_value(slot_key, ids)})
                    transaction.set_properties({committed_property(slot_key): ",".join(ids)})
            except (CommitFailedException, ValidationException):
                # pyiceberg retried on fresh metadata and gave up, or could not retry because the
                # snapshot this commit started from was expired meanwhile: again, on fresh metadata.
                self.counts["conflicts"] += 1
                if attempt == CONFLICT_ATTEMPTS:
                    raise
                time.sleep(random.uniform(0.01, 0.1) * attempt)
                continue
            committed = table.current_snapshot()
            if committed is not None and committed.parent_snapshot_id != (head.snapshot_id if head else None):
                self.counts["conflicts"] += 1  # another writer committed first: pyiceberg retried
            self.counts["commits"] += 1
            self.counts["committed_segments"] += len(ids)
            self.counts["committed_receipts"] += rows.num_rows
            self.last_commit_at = datetime.now(timezone.utc)
            return

    def _fresh_table(self):
        if self._table is None:
            self._table = receipts_table(open_catalog(self.catalog_name))
        else:
            self._table = self._table.refresh()
        return self._table

    def _failed(self, exc: Exception) -> None:
        self._failures += 1
        self.counts["failures"] += 1
        # The kind and the first line only: a remote error can be long, and never holds receipts.
        self.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        delay = min(self.backoff_max, self.backoff_start * 2 ** (self._failures - 1))
        self._retry_at = time.monotonic() + delay * random.uniform(0.8, 1.0)
        if isinstance(exc, (OSError, TimeoutError)) or self._failures > 1:
            self._table = None  # reconnect from scratch next time
        log.error("event=iceberg_commit_failed attempt=%d retry_in=%.1f error=%r", self._failures, delay,
                  self.last_error)

    # -- status

    def backlog(self, wal_root: Path) -> dict:
        """What the collector's logs (every slot under ``wal_root``: all its workers, and slots
        waiting for adoption) hold that the table does not yet: segments, receipts (their lines,
        counted again only when a segment grew) and the age of the oldest (its id is the time it
        was opened)."""
        segments = collector_segments(wal_root)
        counts: dict[tuple[str, int], int] = {}
        for segment in segments:
            try:
                size = segment.stat().st_size
            except OSError:
                continue
            cache_key = (str(segment), size)
            if cache_key not in self._line_counts:
                try:
                    self._line_counts[cache_key] = segment.read_bytes().count(b"\n")
                except OSError:
                    continue
            counts[cache_key] = self._line_counts[cache_key]
        self._line_counts = counts
        receipts = sum(counts.values())
        return {"segments": len(segments), "receipts": receipts, "oldest_age_seconds": oldest_age_seconds(segments)}

    def health(self, wal_root: Path, flush_seconds: float) -> dict:
        """:meth:`status` with the collector's :meth:`backlog` (``unpublished``) and ``degraded``:
        this worker's last commit failed, or a segment has waited longer than a few flushes
        (another worker's commits failing: any worker answers for the whole collector)."""
        unpublished = self.backlog(wal_root)
        status = self.status()
        stale = unpublished["oldest_age_seconds"] > max(STALE_MIN_SECONDS, STALE_FLUSHES * flush_seconds)
        return status | {"unpublished": unpublished, "degraded": bool(status["last_error"]) or stale}

    def status(self) -> dict:
        waiting = max(self._retry_at - time.monotonic(), 0.0)
        last_commit = self.last_commit_at
        return {"backend": f"iceberg:{self.catalog_name}", "collector_id": self.collector_id,
                "last_error": self.last_error, "retry_in_seconds": round(waiting, 1),
                "last_commit_at": last_commit.isoformat() if last_commit else None, **dict(self.counts)}

