"""Receipt storage for one collector process: write-ahead log in, immutable Parquet out.

One :class:`ReceiptStorage` per process. At start it takes the first free *writer slot*
(an ``flock`` on ``wal/<slot>.lock``, released by the kernel when the process dies), replays
whatever its slot's log still holds from a previous life, and adopts the logs of slots no
live process holds. So any number of gunicorn workers can run, each writing only its own
files, and a restarted worker finishes what its predecessor acknowledged.

The replay is the flusher thread's first task, not the constructor's: the process appends (and
acknowledges) from the moment it is built, whatever the log holds and whether or not the
publisher's store answers. A collector restarted with an object-store outage's backlog used to
answer only once every segment was committed (the soak, tests/support/load_balanced.py: 8.6 s
after its restart, 3.1 s now, on a loaded 2-core machine; 37 s before catch-ups were batched).
New segments get larger ids than those left behind (:class:`~dlrlens.store.wal.WriteAheadLog`),
so the flusher still takes a slot's segments oldest first, and the exactly-once rules below
hold unchanged. Until that first pass has gone through, :attr:`ReceiptStorage.catching_up` is
true when something was left behind (the collector's ``/healthz`` then says "degraded"). Each slot
records that state in the data directory (:mod:`dlrlens.store.catch_up`), so that
:meth:`ReceiptStorage.collector_catching_up` answers for every worker of the collector.

Flushing turns a closed log segment into one Parquet file per table and UTC day (of
``created`` for receipts and replies, of arrival for clicks: :data:`dlrlens.store.layout.TABLES`),
named after the slot and segment (``<slot>-<segment>.parquet``). One log serves every table:
a record names its table under :data:`dlrlens.store.layout.TABLE_KEY` (none: a receipt), so
a click, a reply and a receipt arriving together share one fsync. The name is
deterministic, so replaying a segment whose files were already renamed into place
replaces them with identical files rather than adding copies. The segment is deleted only
after every file it produced is durable.

A *publisher* (``publish``, optional) replaces the local Parquet files as the destination of
every table (receipts, clicks, replies): the Iceberg backend's
:class:`dlrlens.store.iceberg.publisher.IcebergPublisher` is one. ``publish(slot, batch)``
commits ``batch``, a list of ``(segment, {table name: its rows as an Arrow table})`` of one
slot, oldest first (a table without rows in a segment is left out of its dict), and returns
only once every row is durable there. It must be idempotent per table: a segment replayed
after a crash (committed, entirely or to some tables only, before the crash; not yet deleted
from the log) is handed again, and the publisher commits only what its store does not hold.

The flush takes the closed segments of a slot oldest first, up to :data:`PUBLISH_BATCH_SEGMENTS`
segments and :data:`PUBLISH_BATCH_RECEIPTS` records at a time (one segment in steady state;
many after an outage of the store, when the catch-up then costs a commit per batch, not per
segment), and deletes them once ``publish`` returned. When it raises :class:`PublishError`
the segments stay in the log and the next flush tries again; the collector goes on
acknowledging from its log meanwhile.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa

from dlrlens.store import catch_up, files, layout
from dlrlens.store.faults import crash_point
from dlrlens.store.wal import Arrival, Durability, StorageError, WriteAheadLog, list_segments, log_document, read_segment

log = logging.getLogger("dlrlens.collector")

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
PARQUET_OPTIONS = dict(compression="zstd", compression_level=3, use_dictionary=True, write_statistics=True)
RECENT_IDS = 200_000  # receipt ids remembered per process to count duplicates as they arrive
# One publisher commit takes at most this many segments / receipts (a catch-up after an outage:
# the receipts bound the memory a batch takes).
PUBLISH_BATCH_SEGMENTS = 64
PUBLISH_BATCH_RECEIPTS = 50_000


# The crash points of publishing one flushed Parquet file (tests kill the writer at each).
PARQUET_CRASH_POINTS = {files.WRITTEN: "parquet:before-fsync", files.FSYNCED: "parquet:before-rename",
                        files.RENAMED: "parquet:before-dir-fsync"}


class PublishError(OSError):
    """A publisher could not take a segment now (its store is down, a commit failed): the
    segment stays in the log and is tried again at the next flush."""


def write_parquet_atomically(table: pa.Table, path: Path) -> None:
    """Publish ``table`` as the Parquet file ``path`` (:func:`dlrlens.store.files.publish_table`).

    A reader globbing ``*.parquet`` sees either no file or the whole file.
    """
    files.publish_table(table, path, crash_points=PARQUET_CRASH_POINTS, **PARQUET_OPTIONS)


def records_to_table(records: list[dict], table_name: str = "receipts") -> pa.Table:
    """Log records (timestamps in epoch microseconds) as a table of the contract schema of
    ``table_name``, sorted so that one message's rows sit together (better compression, faster scans)."""
    spec = layout.TABLES[table_name]
    columns = {name: [r.get(name) for r in records] for name in spec.schema.names}
    table = pa.table(
        {
            name: pa.array(values, type=pa.int64()).cast(field.type) if name in spec.timestamps
            else pa.array(values, type=field.type)
            for (name, values), field in zip(columns.items(), spec.schema)
        },
        schema=spec.schema,
    )
    return table.sort_by([(name, "ascending") for name in spec.sort])


def utc_day(micros: int) -> str:
    """The UTC date (YYYY-MM-DD) of a timestamp in epoch microseconds, in exact integer
    arithmetic (a float division rounds 9999-12-31T23:59:59.999999 into year 10000)."""
    day = (_EPOCH + timedelta(microseconds=micros)).date()
    return f"{day.year:04d}-{day.month:02d}-{day.day:02d}"


def segment_records(segment: Path, documents: list[dict] | None = None) -> list[dict]:
    """A closed segment's records: ``documents`` (as the writer kept them in memory, exactly what
    reading the file gives) or, without them, the file's."""
    if documents is not None:
        return documents
    records, torn = read_segment(segment)
    if torn:
        log.warning("event=torn_log_tail segment=%s kept=%d", segment.name, len(records))
    return records


def flush_segment(data_dir: Path, slot: str, segment: Path, documents: list[dict] | None = None,
                  published: bool = False) -> int:
    """Turn one closed log segment into Parquet files and delete it. Returns records written.

    ``documents``: see :func:`segment_records`. Idempotent: running it again on the same
    segment (after a crash) writes the same files. ``published``: the segment's rows are in
    the publisher's store already (every table's): no local file is written, the segment is
    only deleted.
    """
    records = segment_records(segment, documents)
    by_day: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for record in records if not published else ():
        table_name = record.get(layout.TABLE_KEY, "receipts")
        by_day[table_name, utc_day(record[layout.TABLES[table_name].day_column])].append(record)
    for (table_name, day), rows in sorted(by_day.items()):
        target = layout.table_partition_dir(data_dir, table_name, day) / f"{slot}-{segment.stem}.parquet"
        write_parquet_atomically(records_to_table(rows, table_name), target)
        crash_point("flush:between-partitions")
    crash_point("flush:before-segment-delete")
    segment.unlink()
    files.fsync_dir(segment.parent)
    return len(records)


def tables_of(records: list[dict]) -> dict[str, pa.Table]:
    """A segment's records by table, each as a contract-schema table (what a publisher takes);
    only the tables with records."""
    by_table: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        by_table[record.get(layout.TABLE_KEY, "receipts")].append(record)
    return {name: records_to_table(rows, name) for name, rows in by_table.items()}


def error_kind(exc: BaseException) -> str:
    """What went wrong, for an answer: the errno name (``ENOSPC``, ``EACCES``) or the exception
    class, never ``str(exc)``, which names files (the data directory's absolute path)."""
    name = errno.errorcode.get(getattr(exc, "errno", None) or -1)
    return name or type(exc).__name__


def collector_segments(wal_root: Path) -> list[Path]:
    """The segments of every slot's log under ``wal_root`` (the whole collector's), oldest first."""
    return sorted((segment for slot in sorted(Path(wal_root).glob("w*")) if slot.is_dir()
                   for segment in list_segments(slot)), key=lambda segment: segment.name)


def segments_backlog(segments: list[Path]) -> dict:
    """``segments`` (oldest first): how many, their bytes, and the age of the oldest (a segment's
    id is the time it was opened; 0 when none)."""
    size = 0
    for segment in segments:
        try:
            size += segment.stat().st_size
        except OSError:
            pass  # flushed meanwhile
    return {"segments": len(segments), "bytes": size, "oldest_age_seconds": oldest_age_seconds(segments)}


def oldest_age_seconds(segments: list[Path]) -> float:
    oldest = (time.time() - int(segments[0].stem) / 1e9) if segments else 0.0
    return round(max(oldest, 0.0), 3)


class Counters:
    """Monotonic counters of one writer slot, persisted to ``stats/<slot>.json`` at each flush."""

    NAMES = ("requests", "received", "stored", "duplicates_seen", "storage_errors",
             "flushes", "flushed_receipts", "flush_errors", "quarantined_segments", "auth_failures", "forbidden",
             "publish_errors", "click_requests", "clicks_received", "clicks_stored", "reply_requests",
             "replies_received", "replies_stored")
    # Per table: (requests, received, stored) counter names (see dlrlens.store.layout.TABLES).
    TABLE_NAMES = {"receipts": ("requests", "received", "stored"),
                   "clicks": ("click_requests", "clicks_received", "clicks_stored"),
                   "replies": ("reply_requests", "replies_received", "replies_stored")}

    def __init__(self, path: Path):
        import json

        self._json = json
        self.path = path
        self._lock = threading.Lock()
        self.values = dict.fromkeys(self.NAMES, 0)
        self.rejected: dict[str, int] = defaultdict(int)
        self.flush_seconds_sum = 0.0
        self.last_flush_seconds = 0.0
        try:
            saved = json.loads(path.read_text())
            self.values.update({k: int(v) for k, v in saved.get("counters", {}).items() if k in self.values})
            self.rejected.update({k: int(v) for k, v in saved.get("rejected", {}).items()})
            self.flush_seconds_sum = float(saved.get("flush_seconds_sum", 0.0))
        except (OSError, ValueError, AttributeError):
            pass

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self.values[name] += amount

    def reject(self, reason: str, amount: int = 1) -> None:
        with self._lock:
            self.rejected[reason] += amount

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "counters": dict(self.values),
                "rejected": dict(self.rejected),
                "flush_seconds_sum": self.flush_seconds_sum,
                "last_flush_seconds": self.last_flush_seconds,
                "updated_at": datetime.now(timezone.utc).isoformat(),
            }

    def save(self) -> None:
        try:
            files.publish_bytes(self.path, self._json.dumps(self.snapshot()).encode())
        except OSError:
            pass  # counters are best effort; receipts are not


class _StorageArrival:
    """:meth:`ReceiptStorage.arrival`'s handle: append the announced records once, or cancel."""

    def __init__(self, storage: ReceiptStorage, announced: Arrival):
        self._storage = storage
        self._announced = announced
        self.cancel = announced.cancel

    def append(self, records: list[dict], table: str = "receipts") -> None:
        self._storage._store(records, self._announced.append_nowait, table).wait()

    def append_nowait(self, records: list[dict], table: str = "receipts") -> Durability:
        """:meth:`append` without waiting for the fsync: the caller must not acknowledge the
        records before the returned batch is done without error (see :class:`Durability`)."""
        return self._storage._store(records, self._announced.append_nowait, table)


class ReceiptStorage:
    """Durable receipt storage for this process (see the module docstring)."""

    def __init__(self, data_dir: Path, flush_seconds: float = 2.0, flush_rows: int = 50_000, publish=None):
        self.data_dir = Path(data_dir)
        self.publish = publish
        self.last_publish_error: str | None = None  # the publisher's, while it cannot take segments
        self.flush_seconds = flush_seconds
        self.flush_rows = flush_rows
        self.wal_root = self.data_dir / layout.WAL_DIR
        self.wal_root.mkdir(parents=True, exist_ok=True)
        self.slot, self._slot_lock = self._take_slot()
        self.log_dir = self.wal_root / self.slot
        self.counters = Counters(self.data_dir / layout.STATS_DIR / f"{self.slot}.json")
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._recent_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.last_flush_error: str | None = None
        # What a previous life left (this slot's log, other slots' logs) is replayed by the
        # flusher's first pass (the module docstring), which sets the event once it went through.
        self._caught_up = threading.Event()
        self._recovery_pending = True
        self._started = time.time()
        if not self._left_behind():
            self.recover()  # nothing to replay: only the temporary files of writers that died, at once
            self._caught_up.set()
        catch_up.record(self.data_dir, self.slot, self.catching_up, self._started)
        self.wal = WriteAheadLog(self.log_dir)
        self._thread = threading.Thread(target=self._flush_loop, name="dlrlens-flusher", daemon=True)
        self._thread.start()

    # -- slots ---------------------------------------------------------------------------

    def _take_slot(self) -> tuple[str, files.FileLock]:
        for number in range(10_000):
            slot = f"w{number:03d}"
            held = files.lock(self.wal_root / f"{slot}.lock", wait=False)
            if held is not None:
                return slot, held
        raise RuntimeError("no free writer slot")

    def _left_behind(self) -> bool:
        """Whether a previous life left segments to replay: in this slot's log, or in a slot no
        live process holds. Another live worker's open segment is its own, not a backlog: counting
        it made every worker started after the first say "catching up" for its first pass (the
        whole collector's state since :mod:`dlrlens.store.catch_up`). Without the kernel's lock
        list every slot's segments count, as before."""
        held = catch_up.held_lock_inodes()
        return any(list_segments(log_dir) and (log_dir.name == self.slot or held is None
                                               or not catch_up.slot_held(self.wal_root, log_dir.name, held))
                   for log_dir in self.wal_root.glob("w*") if log_dir.is_dir())

    def recover(self) -> int:
        """Flush what every unheld slot's log still holds (this slot's own log is the flush's:
        :meth:`flush` takes every closed segment of it). Returns receipts.

        Also removes temporary files left by writers that died mid-write.
        """
        for spec in layout.TABLES.values():
            files.remove_orphan_temp_files(self.data_dir / spec.directory)
        try:
            recovered = self._recover_logs()
        except PublishError as exc:
            # The publisher's store is down: acknowledge from the log meanwhile; the flusher
            # tries the recovery again at each tick.
            self._recovery_pending = True
            self.last_publish_error = str(exc)
            log.error("event=recovery_deferred error=%r", str(exc))
            return 0
        self._recovery_pending = False
        if recovered:
            log.info("event=recovered receipts=%d", recovered)
        return recovered

    def _recover_logs(self) -> int:
        recovered = 0
        for lock_path in sorted(self.wal_root.glob("*.lock")):
            slot = lock_path.stem
            if slot == self.slot or not list_segments(self.wal_root / slot):
                continue
            with files.locked(lock_path, wait=False) as held:
                if held:  # else a live process owns it and will flush it itself
                    recovered += self._flush_dir(slot, self.wal_root / slot)
        return recovered

    def _flush_dir(self, slot: str, log_dir: Path, up_to: int | None = None) -> int:
        """Flush the segments of ``log_dir`` (those with id <= ``up_to``, when given), oldest first."""
        segments = [segment for segment in list_segments(log_dir) if up_to is None or int(segment.stem) <= up_to]
        if self.publish is not None:
            return self._publish_segments(slot, segments)
        return sum(self._flush_or_quarantine(slot, segment, self._documents(slot, segment)) for segment in segments)

    def _documents(self, slot: str, segment: Path) -> list[dict] | None:
        return self.wal.take_documents(segment) if slot == self.slot else None

    def _flush_or_quarantine(self, slot: str, segment: Path, documents: list[dict] | None,
                             published: bool = False) -> int:
        """:func:`flush_segment`. OSError (storage trouble) propagates: the segment stays for a retry.

        Any other error means the segment's content cannot be converted (a bug meeting
        unexpected data). Retrying would fail forever and block the segments behind it, so
        the segment is moved, intact, to ``wal/quarantine/`` for a person to look at, and
        counted; the collector goes on.
        """
        try:
            return flush_segment(self.data_dir, slot, segment, documents, published)
        except OSError:
            raise
        except Exception as exc:
            self._quarantine(slot, segment, exc)
            return 0

    def _quarantine(self, slot: str, segment: Path, exc: Exception) -> None:
        quarantine = self.wal_root / "quarantine"
        quarantine.mkdir(exist_ok=True)
        target = quarantine / f"{slot}-{segment.name}"
        os.replace(segment, target)
        files.fsync_dir(quarantine)
        self.counters.add("quarantined_segments")
        log.error("event=segment_quarantined segment=%s error=%r", target, str(exc))

    def _publish_segments(self, slot: str, segments: list[Path]) -> int:
        """Hand ``segments`` (one slot's, oldest first) to the publisher in batches (see the
        module docstring). PublishError and OSError propagate (the rest waits in the log)."""
        written = 0
        batch: list[tuple[Path, list[dict]]] = []
        receipts = 0
        for segment in segments:
            records = segment_records(segment, self._documents(slot, segment))
            batch.append((segment, records))
            receipts += len(records)
            if len(batch) >= PUBLISH_BATCH_SEGMENTS or receipts >= PUBLISH_BATCH_RECEIPTS:
                written += self._publish_batch(slot, batch)
                batch, receipts = [], 0
        if batch:
            written += self._publish_batch(slot, batch)
        return written

    def _publish_batch(self, slot: str, batch: list[tuple[Path, list[dict]]]) -> int:
        pending: list[tuple[Path, list[dict], dict[str, pa.Table]]] = []
        for segment, records in batch:
            try:
                pending.append((segment, records, tables_of(records)))
            except Exception as exc:  # cannot be converted: set aside (see _flush_or_quarantine)
                self._quarantine(slot, segment, exc)
        if any(tables for _, _, tables in pending):
            self.publish(slot, [(segment, tables) for segment, _, tables in pending])
        # Deleted only now: every table holds every row of these segments.
        return sum(self._flush_or_quarantine(slot, segment, records, published=True)
                   for segment, records, _ in pending)

    # -- writing -------------------------------------------------------------------------

    def store(self, records: list[dict], table: str = "receipts") -> None:
        """Make ``records`` (rows of ``table``, see :data:`dlrlens.store.layout.TABLES`) durable.
        Returns only after they are fsynced in the log.

        Raises :class:`StorageError` when they could not be: then none of them is acknowledged.
        """
        self._store(records, self.wal.append_nowait, table).wait()

    @contextmanager
    def arrival(self) -> Iterator[Arrival]:
        """Announce receipts on their way: wrap the parsing of a request body and call
        ``arrival.append(records)`` (same contract as :meth:`store`) or ``arrival.cancel()``.

        While a request is announced, the log's writer holds its next fsync (a millisecond or
        two at most) so that concurrent requests share it.
        """
        with self.wal.arrival() as announced:
            yield _StorageArrival(self, announced)

    def _store(self, records: list[dict], append_nowait, table: str = "receipts") -> Durability:
        """Append through ``append_nowait`` (the log's or an arrival's) and return the batch;
        its counters move once the batch is durable (or failed), in the log's writer thread."""
        documents = [log_document(r) for r in records]
        if table != "receipts":
            layout.TABLES[table]  # an unknown table is a bug: refuse before anything is written
            for doc in documents:
                doc[layout.TABLE_KEY] = table
        try:
            batch = append_nowait(documents)
        except StorageError:
            self.counters.add("storage_errors")
            raise

        def settle(batch: Durability) -> None:
            if batch.error:
                self.counters.add("storage_errors")
                return
            self.counters.add(Counters.TABLE_NAMES[table][2], len(records))
            if table == "receipts":
                self._count_duplicates(records)
            if self.wal.pending_records >= self.flush_rows:
                self._wake.set()

        batch.add_done_callback(settle)
        return batch

    def _count_duplicates(self, records: list[dict]) -> None:
        duplicates = 0
        with self._recent_lock:
            for record in records:
                rid = record["receipt_id"]
                if rid in self._recent:
                    duplicates += 1
                    self._recent.move_to_end(rid)
                else:
                    self._recent[rid] = None
                    if len(self._recent) > RECENT_IDS:
                        self._recent.popitem(last=False)
        if duplicates:
            self.counters.add("duplicates_seen", duplicates)

    # -- flushing ------------------------------------------------------------------------

    def flush(self) -> int:
        """Move everything acknowledged so far into Parquet. Returns receipts written.

        On failure the segments stay in the log and the next flush retries them.
        """
        with self._flush_lock:
            started = time.perf_counter()
            try:
                # Only segments closed by the rotation: the writer may open a newer one at once,
                # which must not be flushed (and deleted) while it is written.
                closed_up_to = self.wal.rotate()
                written = self._flush_dir(self.slot, self.log_dir, up_to=closed_up_to)
            except PublishError as exc:
                # Not a local storage problem: the log holds the segments; /healthz says degraded.
                self.counters.add("publish_errors")
                self.last_publish_error = str(exc)
                raise StorageError(str(exc)) from exc
            except OSError as exc:
                self.counters.add("flush_errors")
                self.last_flush_error = error_kind(exc)  # shown by /healthz: no path in it
                log.error("event=flush_failed error=%r", str(exc))
                raise StorageError(str(exc)) from exc
            self.last_flush_error = None
            self.last_publish_error = None
            elapsed = time.perf_counter() - started
            if written:
                log.info("event=flushed receipts=%d seconds=%.3f", written, elapsed)
                self.counters.add("flushes")
                self.counters.add("flushed_receipts", written)
                self.counters.flush_seconds_sum += elapsed
                self.counters.last_flush_seconds = elapsed
            return written

    def _flush_loop(self) -> None:
        # The first pass at once when a previous life left something to replay (the module docstring).
        replay_now = self.catching_up
        while not self._stop.is_set():
            if not replay_now:
                self._wake.wait(self.flush_seconds)
                self._wake.clear()
            replay_now = False
            try:
                if self._recovery_pending:
                    self.recover()
                self.flush()
                if not self._recovery_pending and not self._caught_up.is_set():
                    catch_up.record(self.data_dir, self.slot, False, self._started)  # first: see wait_caught_up
                    self._caught_up.set()
                    log.info("event=caught_up seconds=%.3f", time.time() - self._started)
            except StorageError:
                pass  # counted and logged; retried next tick
            except Exception:  # never let the flusher die: the log keeps the receipts
                log.exception("event=flush_crashed")
            self.counters.save()

    @property
    def catching_up(self) -> bool:
        """Whether segments a previous life left in the logs are still being replayed (this
        slot's own, or an unheld slot's that this process adopts)."""
        return not self._caught_up.is_set()

    def collector_catching_up(self) -> dict:
        """Whether the whole collector (any worker of this data directory) is catching up:
        :func:`dlrlens.store.catch_up.collector_state`, with this worker's own state added in
        case its record could not be written."""
        return catch_up.collector_state(self.data_dir, also=(self.slot, self._started) if self.catching_up else None)

    def wait_caught_up(self, timeout: float | None = None) -> bool:
        """Wait until :attr:`catching_up` is false (or ``timeout`` seconds); whether it is. Once
        it is, this slot's record (:mod:`dlrlens.store.catch_up`) says so too."""
        return self._caught_up.wait(timeout)

    def backlog(self) -> dict:
        """This slot's log: segments and bytes acknowledged but not yet flushed, the records of
        the open segment, and the age of the oldest segment (its id is the time it was opened;
        0 when none)."""
        return segments_backlog(list_segments(self.log_dir)) | {"records_open_segment": self.wal.pending_records}

    def collector_backlog(self) -> dict:
        """:meth:`backlog` of the whole collector: every slot's log under ``wal/`` (all the
        workers', and those waiting for adoption), without ``records_open_segment``."""
        return segments_backlog(collector_segments(self.wal_root))

    def quarantined_segments(self) -> int:
        """Log segments set aside because they could not be converted (see _flush_or_quarantine)."""
        folder = self.wal_root / "quarantine"
        return sum(1 for _ in folder.iterdir()) if folder.is_dir() else 0

    def close(self) -> None:
        """Stop the flusher and flush what is left (best effort: the log keeps it otherwise)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)
        self.wal.close()
        try:
            if self._recovery_pending:  # closed before the flusher's first pass went through
                self.recover()
            self.flush()
        except (StorageError, OSError):
            pass  # logged; the logs keep the receipts for the next start
        self.counters.save()
        if self.catching_up:  # closed before its replay went through: the log keeps the rest
            catch_up.record(self.data_dir, self.slot, False, self._started)
            self._caught_up.set()
        self._slot_lock.release()
