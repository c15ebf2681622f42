"""Write-ahead log with group commit: the collector's durability point.

A log is a directory of segment files (``<time_ns>.wal``), written by one process only.
Each line is ``<crc32 as 8 hex digits> <json record>\\n``; a line whose checksum does not
match (a torn write at a crash) is skipped on replay, and everything after it in that
segment is too, because nothing after a torn line was ever acknowledged.

Group commit: concurrent :meth:`WriteAheadLog.append` calls join the batch that is being
gathered while another batch is being fsynced; the writer thread writes and fsyncs the whole
batch at once, so N concurrent requests cost one fsync, not N. Requests announce themselves
with :meth:`WriteAheadLog.arrival` before they parse their body, and the writer holds a batch
(up to ``gather_seconds``) until every announced request has appended: under load a batch then
holds every request in flight, not just the two or three that arrived during the last fsync.

Waiting is optional: :meth:`Arrival.append_nowait` returns the batch (a :class:`Durability`)
at once, and whoever must not answer before the fsync registers a callback with
:meth:`Durability.add_done_callback` instead of blocking a thread (the collector's gunicorn
worker holds the response bytes and sends them from its event loop: see
:mod:`collector.server`). Nothing may be acknowledged before the callback says the batch is
durable.

The writer also keeps, in memory, the documents it made durable in the open segment, so the
flusher can build Parquet from them (:meth:`WriteAheadLog.take_documents`) instead of reading
back and decoding what it has just written; the file is read only on recovery.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from dlrlens.store.faults import crash_point

SEGMENT_SUFFIX = ".wal"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_TIMESTAMP_FIELDS = ("created", "received_at")


class StorageError(Exception):
    """The log could not be written durably: nothing in the failed batch was acknowledged."""


def log_document(record: dict) -> dict:
    """A receipt record as the log stores it: timestamps as integer microseconds since the epoch.

    This is exactly what :func:`read_segment` gives back for the record's line.
    """
    doc = dict(record)
    for name in _TIMESTAMP_FIELDS:
        if name not in doc:
            continue  # a click has no created (dlrlens.store.layout.TABLES)
        delta = doc[name] - _EPOCH
        doc[name] = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return doc


def encode_document(doc: dict) -> bytes:
    """One checksummed log line for a :func:`log_document`."""
    payload = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")
    return b"%08x %s\n" % (zlib.crc32(payload), payload)


def encode_record(record: dict) -> bytes:
    """One log line for a receipt record."""
    return encode_document(log_document(record))


def read_segment(path: Path) -> tuple[list[dict], bool]:
    """Records of a segment in order, and whether it ended in a torn (skipped) line.

    Timestamps are returned as integer microseconds since the epoch (UTC).
    """
    records: list[dict] = []
    with open(path, "rb") as fh:
        data = fh.read()
    for line in data.split(b"\n"):
        if not line:
            continue
        checksum, _, payload = line.partition(b" ")
        try:
            valid = len(checksum) == 8 and int(checksum, 16) == zlib.crc32(payload)
            record = json.loads(payload) if valid else None
        except ValueError:
            valid = False
        if not valid:
            return records, True
        records.append(record)
    return records, False


def list_segments(log_dir: Path) -> list[Path]:
    """Segments of a log, oldest first."""
    if not log_dir.is_dir():
        return []
    return sorted(p for p in log_dir.iterdir() if p.name.endswith(SEGMENT_SUFFIX))


class Arrival:
    """An announced append (see :meth:`WriteAheadLog.arrival`): append once, or cancel."""

    def __init__(self, log: WriteAheadLog):
        self._log = log
        self._pending = True

    def append(self, documents: list[dict]) -> None:
        """:meth:`WriteAheadLog.append` for the announced request."""
        self.append_nowait(documents).wait()

    def append_nowait(self, documents: list[dict]) -> "Durability":
        """Hand the documents to the writer and return their batch without waiting for its
        fsync. Raises :class:`StorageError` at once when the log is closed."""
        if not self._pending:
            raise RuntimeError("an arrival appends once")
        self._pending = False
        return self._log._append(documents, announced=True)

    def cancel(self) -> None:
        """Stop holding the writer for this request (it will not append). Idempotent."""
        if self._pending:
            self._pending = False
            self._log._withdraw()


@dataclass(eq=False)
class Durability:
    """One batch of the log: the lines appended together and made durable by one fsync.

    ``error`` is set when its write or fsync failed (then none of its lines counts as stored).
    Hashable by identity, so callers can group what waits for the same batch.
    """

    lines: list[bytes] = field(default_factory=list)
    documents: list[dict] = field(default_factory=list)
    count: int = 0
    written: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    _callbacks: list | None = field(default_factory=list)  # None once finished
    _callbacks_lock: threading.Lock = field(default_factory=threading.Lock)

    def wait(self) -> None:
        """Block until the batch is written and fsynced (and its callbacks ran);
        :class:`StorageError` when it failed."""
        self.written.wait()
        if self.error:
            raise StorageError(str(self.error)) from self.error

    def add_done_callback(self, callback) -> None:
        """Call ``callback(self)`` once the batch is durable or failed: in the writer thread,
        or at once in this one when that already happened. Keep it short: the writer waits.
        Callbacks run before :meth:`wait` returns."""
        with self._callbacks_lock:
            if self._callbacks is not None:
                self._callbacks.append(callback)
                return
        _run_callback(callback, self)

    def _finish(self, error: BaseException | None) -> None:
        self.error = error
        with self._callbacks_lock:
            callbacks, self._callbacks = self._callbacks, None
        for callback in callbacks:
            _run_callback(callback, self)
        self.written.set()


def _run_callback(callback, batch: Durability) -> None:
    try:
        callback(batch)
    except Exception:  # one caller's bug must not strand the others' waiters
        logging.getLogger("dlrlens.collector").exception("event=durability_callback_failed")


def _durable_now() -> Durability:
    """A batch with nothing in it: durable already."""
    done = Durability()
    done._finish(None)
    return done



class WriteAheadLog:
    """The append side of one log directory. Thread-safe; one instance per process.

    A dedicated writer thread owns the file: request threads add their lines to the batch
    being gathered and wait on that batch's event only, so one fsync wakes exactly the
    requests it made durable.
    """

    def __init__(self, log_dir: Path, fsync=os.fsync, gather_seconds: float = 0.002):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self.gather_seconds = gather_seconds
        self._lock = threading.Lock()              # guards _gathering and _expected
        self._work = threading.Condition(self._lock)
        self._io = threading.Lock()                # held while the file is written or rotated
        self._gathering = Durability()
        self._expected = 0                         # announced arrivals that have not appended yet
        self._file = None
        self._segment: Path | None = None
        self._segment_records = 0
        self._segment_documents: list[dict] = []   # durable in the open segment, in order
        self._closed_documents: dict[int, list[dict]] = {}
        # Segments a previous process left (replayed by the flusher while this one appends):
        # every new segment gets a larger id, so a flush takes them oldest first and
        # :meth:`rotate` covers them even before this log opened a segment of its own.
        self._last_id = max((int(segment.stem) for segment in list_segments(self.log_dir)), default=0)
        self._closed = False
        self.fsyncs = 0
        self._writer = threading.Thread(target=self._write_loop, name="dlrlens-wal-writer", daemon=True)
        self._writer.start()

    # -- append --------------------------------------------------------------------------

    def append(self, documents: list[dict]) -> None:
        """Append :func:`log_document` records; returns only after they are written and fsynced.

        Raises :class:`StorageError` when the write or fsync fails; then none of them counts
        as stored (the segment is cut back to its last durable length).
        """
        self._append(documents, announced=False).wait()

    def append_nowait(self, documents: list[dict]) -> Durability:
        """:meth:`append` without the wait: the batch the documents joined (see :class:`Durability`)."""
        return self._append(documents, announced=False)

    @contextmanager
    def arrival(self) -> Iterator[Arrival]:
        """Announce an append that is on its way (a request whose body is being parsed).

        Until the announced request appends with :meth:`Arrival.append` or gives up with
        :meth:`Arrival.cancel` (leaving the block does that too), the writer holds the batch
        being gathered for it, for at most ``gather_seconds``.
        """
        with self._lock:
            self._expected += 1
        arrival = Arrival(self)
        try:
            yield arrival
        finally:
            arrival.cancel()

    # The writer is woken only when it has something to do: a batch that stopped being empty,
    # or the last announced request arriving. Waking it on every append would cost a thread
    # switch (and a GIL hand-over) per request while it gathers.

    def _withdraw(self) -> None:
        with self._lock:
            self._expected -= 1
            if not self._expected:
                self._work.notify()

    def _append(self, documents: list[dict], announced: bool) -> Durability:
        try:
            lines = [encode_document(doc) for doc in documents]
        except BaseException:
            if announced:
                self._withdraw()  # else every later batch would wait gather_seconds for it
            raise
        with self._lock:
            if announced:
                self._expected -= 1
            if self._closed:
                raise StorageError("the log is closed")
            if not lines:
                if announced and not self._expected:
                    self._work.notify()
                return _durable_now()
            batch = self._gathering
            batch.lines.extend(lines)
            batch.documents.extend(documents)
            batch.count += len(lines)
            if batch.count == len(lines) or not self._expected:
                self._work.notify()
        return batch

    def _write_loop(self) -> None:
        while True:
            with self._lock:
                while not self._gathering.count and not self._closed:
                    self._work.wait()
                if not self._gathering.count:
                    return  # closed and drained
                # Requests being parsed right now join this batch: one fsync for all of them.
                deadline = time.monotonic() + self.gather_seconds
                while self._expected > 0 and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._work.wait(remaining)
                batch, self._gathering = self._gathering, Durability()
            error = None
            with self._io:
                try:
                    self._write(batch)
                except BaseException as exc:  # OSError mostly; anything else must not strand waiters
                    error = exc
            batch._finish(error)

    def _write(self, batch: Durability) -> None:
        if self._file is None:
            self._open_segment()
        good_length = self._file.tell()
        try:
            self._file.write(b"".join(batch.lines))
            self._file.flush()
            crash_point("wal:before-fsync")
            self._fsync(self._file.fileno())
            crash_point("wal:after-fsync")
            self.fsyncs += 1
            self._segment_records += batch.count
            self._segment_documents.extend(batch.documents)
        except OSError:
            self._abandon_segment(good_length)
            raise

    def _open_segment(self) -> None:
        segment_id = max(time.time_ns(), self._last_id + 1)
        self._last_id = segment_id
        path = self.log_dir / f"{segment_id:020d}{SEGMENT_SUFFIX}"
        self._file = open(path, "ab", buffering=0)
        self._segment = path
        self._segment_records = 0
        self._segment_documents = []
        fd = os.open(self.log_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self._fsync(fd)
        finally:
            os.close(fd)

    def _abandon_segment(self, good_length: int) -> None:
        """After a failed write: cut the unacknowledged tail off and start a new segment next time."""
        try:
            self._file.truncate(good_length)
        except OSError:
            pass  # the checksum makes a leftover tail harmless on replay
        try:
            self._file.close()
        except OSError:
            pass
        self._file = None
        if self._segment_records == 0:
            try:
                self._segment.unlink()
            except OSError:
                pass
        self._segment = None
        self._segment_documents = []  # the flusher reads what stayed durable from the file

    # -- rotation ------------------------------------------------------------------------

    def rotate(self) -> int:
        """Close the current segment; return the id of the newest segment now closed.

        Every segment with an id up to the returned one is closed for good (safe to flush and
        delete); appends after this call go to a newer segment. Waits for a write in flight.
        """
        with self._io:
            if self._file is not None:
                self._file.close()
                if not self._segment_records:
                    self._segment.unlink(missing_ok=True)
                else:
                    self._closed_documents[int(self._segment.stem)] = self._segment_documents
                self._file = None
                self._segment = None
                self._segment_documents = []
            return self._last_id

    def take_documents(self, segment: Path) -> list[dict] | None:
        """The documents of a segment this log closed, each once; ``None`` when not in memory
        (a segment from a previous process, or one cut short by a failed write): read the file."""
        with self._io:
            return self._closed_documents.pop(int(segment.stem), None)

    @property
    def last_segment_id(self) -> int:
        """Id of the newest segment opened so far; every later segment has a larger id."""
        with self._io:
            return self._last_id

    @property
    def pending_records(self) -> int:
        """Records in the open segment (not yet handed to the flusher)."""
        return self._segment_records

    def close(self) -> None:
        """Write what is queued, stop the writer thread and close the segment."""
        with self._lock:
            self._closed = True
            self._work.notify()
        self._writer.join(timeout=30)
        self.rotate()
