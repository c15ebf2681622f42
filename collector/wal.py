"""Write-ahead log with group commit: the collector's durability point.

A log is a directory of segment files (``<time_ns>.wal``), written by one process only.
Each line is ``<crc32 as 8 hex digits> <json record>\\n``; a line whose checksum does not
match (a torn write at a crash) is skipped on replay, and everything after it in that
segment is too, because nothing after a torn line was ever acknowledged.

Group commit: concurrent :meth:`WriteAheadLog.append` calls join the batch that is being
gathered while another batch is being fsynced; the next leader writes and fsyncs the whole
batch at once, so N concurrent requests cost one fsync, not N.
"""

from __future__ import annotations

import json
import os
import threading
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from collector.faults import crash_point

SEGMENT_SUFFIX = ".wal"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_TIMESTAMP_FIELDS = ("created", "received_at")


class StorageError(Exception):
    """The log could not be written durably: nothing in the failed batch was acknowledged."""


def encode_record(record: dict) -> bytes:
    """One log line for a receipt record (timestamps as integer microseconds since the epoch)."""
    doc = dict(record)
    for name in _TIMESTAMP_FIELDS:
        delta = doc[name] - _EPOCH
        doc[name] = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    payload = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")
    return b"%08x %s\n" % (zlib.crc32(payload), payload)


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


@dataclass
class _Batch:
    lines: list[bytes] = field(default_factory=list)
    count: int = 0
    written: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class WriteAheadLog:
    """The append side of one log directory. Thread-safe; one instance per process.

    A dedicated writer thread owns the file: request threads add their lines to the batch
    being gathered and wait on that batch's event only, so one fsync wakes exactly the
    requests it made durable.
    """

    def __init__(self, log_dir: Path, fsync=os.fsync):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._lock = threading.Lock()              # guards _gathering
        self._work = threading.Condition(self._lock)
        self._io = threading.Lock()                # held while the file is written or rotated
        self._gathering = _Batch()
        self._file = None
        self._segment: Path | None = None
        self._segment_records = 0
        self._last_id = 0
        self._closed = False
        self.fsyncs = 0
        self._writer = threading.Thread(target=self._write_loop, name="dlrlens-wal-writer", daemon=True)
        self._writer.start()

    # -- append --------------------------------------------------------------------------

    def append(self, lines: list[bytes]) -> None:
        """Append encoded records; returns only after they are written and fsynced.

        Raises :class:`StorageError` when the write or fsync fails; then none of ``lines``
        counts as stored (the segment is cut back to its last durable length).
        """
        with self._lock:
            if self._closed:
                raise StorageError("the log is closed")
            batch = self._gathering
            batch.lines.extend(lines)
            batch.count += len(lines)
            self._work.notify()
        batch.written.wait()
        if batch.error:
            raise StorageError(str(batch.error)) from batch.error

    def _write_loop(self) -> None:
        while True:
            with self._lock:
                while not self._gathering.count and not self._closed:
                    self._work.wait()
                if not self._gathering.count:
                    return  # closed and drained
                batch, self._gathering = self._gathering, _Batch()
            with self._io:
                try:
                    self._write(batch)
                except BaseException as exc:  # OSError mostly; anything else must not strand waiters
                    batch.error = exc
            batch.written.set()

    def _write(self, batch: _Batch) -> None:
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
                self._file = None
                self._segment = None
            return self._last_id

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
