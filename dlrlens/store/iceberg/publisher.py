"""The collector's Iceberg side: flushed log segments committed to the receipts, clicks and
replies tables, exactly once.

:class:`IcebergPublisher` is the ``publish`` hook of :class:`dlrlens.store.writer.ReceiptStorage`:
a flush hands it a slot's closed segments (oldest first, in batches, each with its rows by
table) instead of writing local Parquet, and deletes the segments only when it returned. The
contract:

* The ``200`` still means "fsynced in this machine's log" (``--data``). The tables are updated
  every flush; until then the rows are in the local log only.
* A batch of segments (one in steady state; up to
  :data:`~dlrlens.store.writer.PUBLISH_BATCH_SEGMENTS` when a catch-up after an outage finds
  many waiting) is one append commit **per table** it has rows for (receipts, then clicks, then
  replies: :data:`~dlrlens.store.iceberg.table.WRITTEN_TABLES`; a batch without clicks makes no
  commit to the clicks table). Each commit's snapshot summary records ``dlrlens.segment =
  <collector id>/<slot>/<id>,<id>,...`` (the segments whose rows it holds) and, in the same
  catalog commit, sets the table property ``dlrlens.committed.<collector id>/<slot>`` to the ids
  of the slot's segments the table holds and the log still holds (that commit's, and the
  earlier ones' a crash left in the log), which snapshot expiry never removes (the contract is
  in :mod:`dlrlens.store.iceberg.table`).
* Before committing to a table, the publisher reads that property on metadata refreshed from
  the catalog and leaves out the segments the table already holds. So a replay after a crash
  (between two tables' commits, or between the last commit and the segments' deletion, or an
  answer lost after the catalog committed) commits each table's rows of a segment once: say
  the receipts were committed and the process died before the clicks commit, the replay
  commits only the clicks. A segment is deleted from the log only once all three tables hold
  its rows. The collector id (``collector-id`` in the data directory, made once, under a lock)
  ties the keys to the log directory, so whichever worker replays a slot's log uses the same key.
* A commit that loses a race with another writer is retried on fresh metadata by pyiceberg
  itself (``commit.retry.num-retries``, 4; the data files are written once), then a few more
  times here (also when pyiceberg cannot retry because the snapshot the commit started from
  was expired meanwhile: a ``ValidationException``). Any other failure (catalog or object
  store down, a timeout) raises :class:`~dlrlens.store.writer.PublishError`: the segments stay
  in the log, the collector keeps acknowledging from its log, and the publisher waits
  (exponential back-off, 1 s doubling to 60 s, with jitter) before trying again; later
  segments wait behind the oldest, so the tables receive them in order once the store is back.
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
from dlrlens.store.iceberg.table import (SEGMENT_KEY, WRITTEN_TABLES, committed_property, committed_segments,
                                         open_catalog, segment_value, written_table)
from dlrlens.store.wal import list_segments
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
    """Commits flushed segments to the tables of catalog ``catalog_name``.

    Thread-safe: catalog calls are serialised by a lock; :meth:`status` and :meth:`health`
    never wait for it (a commit may hang on the network for its timeouts, /healthz must not)."""

    def __init__(self, catalog_name: str, data_dir: Path, *, backoff_start: float = BACKOFF_START_SECONDS,
                 backoff_max: float = BACKOFF_MAX_SECONDS):
        self.catalog_name = catalog_name
        self.collector_id = collector_id(data_dir)
        self.backoff_start = backoff_start
        self.backoff_max = backoff_max
        self._commit_lock = threading.Lock()
        self._tables: dict[str, object] = {}  # table name -> its pyiceberg Table, as last loaded
        self._seen: dict[str, dict[int, str | None]] = {name: {} for name in WRITTEN_TABLES}
        self._failures = 0          # consecutive failed attempts
        self._retry_at = 0.0        # monotonic time before which no attempt is made
        self._line_counts: dict[tuple[str, int], int] = {}
        self.last_error: str | None = None
        self.last_commit_at: datetime | None = None
        self.counts = {"commits": 0, "committed_segments": 0, "committed_receipts": 0, "committed_clicks": 0,
                       "committed_replies": 0, "already_committed": 0, "conflicts": 0, "failures": 0}

    def slot_key(self, slot: str) -> str:
        return f"{self.collector_id}/{slot}"

    def __call__(self, slot: str, batch: list[tuple[Path, dict[str, pa.Table]]]) -> None:
        """Commit ``batch`` (``slot``'s segments, oldest first, each with its rows by table
        name; a table without rows may be left out) to the tables: per table, the rows of the
        segments it does not hold yet, as one commit (none when there are none).

        Raises :class:`PublishError` when it cannot now (nothing lost: the caller keeps the
        segments; what was committed is not committed again)."""
        with self._commit_lock:
            self._catalog_call(lambda: self._commit_batch(slot, batch))

    def _catalog_call(self, call) -> None:
        waiting = self._retry_at - time.monotonic()
        if waiting > 0:
            raise PublishError(f"Iceberg commits paused for {waiting:.1f} s after: {self.last_error}")
        try:
            call()
        except Exception as exc:
            self._failed(exc)
            raise PublishError(f"Iceberg commit failed: {self.last_error}") from exc
        self._failures = 0
        self._retry_at = 0.0
        self.last_error = None

    def _commit_batch(self, slot: str, batch: list[tuple[Path, dict[str, pa.Table]]]) -> None:
        if not batch:
            return
        logged = {segment.stem for segment in list_segments(batch[0][0].parent)}
        needed: set[str] = set()      # segments with rows some table did not hold
        with_rows: set[str] = set()
        for name in WRITTEN_TABLES:
            parts = [(segment.stem, tables[name]) for segment, tables in batch
                     if name in tables and tables[name].num_rows]
            if not parts:
                continue  # no empty commits
            with_rows.update(segment_id for segment_id, _ in parts)
            committed = self._refresh_and_check(name, slot)
            missing = [(segment_id, rows) for segment_id, rows in parts if segment_id not in committed]
            if missing:
                needed.update(segment_id for segment_id, _ in missing)
                self._commit(name, slot, missing, logged, committed)
        committed_before = with_rows - needed
        if committed_before:  # a replay: committed before a crash, deleted now
            self.counts["already_committed"] += len(committed_before)
            log.info("event=segments_already_committed slot=%s segments=%d", self.slot_key(slot),
                     len(committed_before))
        if needed:
            self.counts["committed_segments"] += len(needed)
            self.last_commit_at = datetime.now(timezone.utc)

    def _refresh_and_check(self, name: str, slot: str) -> set[str]:
        """The ids of ``slot``'s segments table ``name`` holds (and a log may still hold), on
        metadata refreshed now."""
        return committed_segments(self._fresh_table(name), self.slot_key(slot), self._seen[name])

    def _commit(self, name: str, slot: str, parts: list[tuple[str, pa.Table]], logged: set[str],
                committed: set[str]) -> None:
        """Append ``parts`` (segment id, rows) to table ``name`` as one commit, which also sets
        the slot's committed property (see the module docstring); ``logged``: the ids still in
        the slot's log; ``committed``: the slot's ids the table holds, as just read."""
        slot_key = self.slot_key(slot)
        ids = [segment_id for segment_id, _ in parts]
        rows = pa.concat_tables([part for _, part in parts])
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            if attempt > 1 and set(ids) <= committed:  # an earlier attempt landed, its answer was lost
                return
            # The slot's segments this table holds that its log still holds, ours included.
            named = sorted(set(ids) | (committed & logged), key=lambda segment_id: (len(segment_id), segment_id))
            table = self._tables[name]
            head = table.current_snapshot()
            try:
                with table.transaction() as transaction:
                    transaction.append(rows, snapshot_properties={SEGMENT_KEY: segment_value(slot_key, ids)})
                    transaction.set_properties({committed_property(slot_key): ",".join(named)})
            except (CommitFailedException, ValidationException):
                # pyiceberg retried on fresh metadata and gave up, or could not retry because the
                # snapshot this commit started from was expired meanwhile: again, on fresh metadata.
                self.counts["conflicts"] += 1
                if attempt == CONFLICT_ATTEMPTS:
                    raise
                time.sleep(random.uniform(0.01, 0.1) * attempt)
                committed = self._refresh_and_check(name, slot)
                continue
            current = table.current_snapshot()
            if current is not None and current.parent_snapshot_id != (head.snapshot_id if head else None):
                self.counts["conflicts"] += 1  # another writer committed first: pyiceberg retried
            self.counts["commits"] += 1
            self.counts[f"committed_{name}"] += rows.num_rows
            return

    def _fresh_table(self, name: str):
        table = self._tables.get(name)
        if table is None:
            table = written_table(open_catalog(self.catalog_name), name)
        else:
            table = table.refresh()
        self._tables[name] = table
        return table

    def _failed(self, exc: Exception) -> None:
        self._failures += 1
        self.counts["failures"] += 1
        # The kind and the first line only: a remote error can be long, and never holds receipts.
        self.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        delay = min(self.backoff_max, self.backoff_start * 2 ** (self._failures - 1))
        self._retry_at = time.monotonic() + delay * random.uniform(0.8, 1.0)
        if isinstance(exc, (OSError, TimeoutError)) or self._failures > 1:
            self._tables.clear()  # reconnect from scratch next time
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

