"""Wrong-secret times per source, in one SQLite file every collector worker shares
(``data/.auth-failures.sqlite``, :data:`FILE_NAME`).

The collector's failure limiter (``collector.security.FailureLimiter``) decides what a source
is (an IPv4 address, an IPv6 /64), the limit and the window, and what to answer; this module
only keeps, for each source, the times of its failures within the window (at most ``keep`` of
them) and forgets the least recently failing sources beyond ``max_sources``.

Why SQLite: the workers are separate processes, so the counts have to live outside them, and
the collector must not need a server of its own. One small file in WAL mode, with
``synchronous=OFF`` (the counts are disposable: losing the last ones in a power cut is
harmless, so no fsync), and a read-modify-write of one row under ``BEGIN IMMEDIATE`` (the
write lock is taken first, so two workers cannot both read the same old count).

Any failure of the file (disk full, read-only, not a directory) raises
:class:`AuthFailuresUnavailable`, and the connection is reopened on the next call.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

FILE_NAME = ".auth-failures.sqlite"  # in the data directory, shared by every worker


class AuthFailuresUnavailable(Exception):
    """The failure file cannot be used now (the cause is chained)."""


def auth_failures_path(data_dir: Path) -> Path:
    return Path(data_dir) / FILE_NAME


class AuthFailures:
    """Failure times per source in the file ``path`` (see the module docstring).

    ``window``: seconds a failure counts; ``keep``: failure times kept per source (counting
    beyond the limit changes nothing); ``max_sources``: sources kept at most.
    """

    def __init__(self, path: str | Path, *, window: float, keep: int, max_sources: int, busy_timeout: float = 0.5):
        self.path = Path(path)
        self.window = window
        self.keep = keep
        self.max_sources = max_sources
        self.busy_timeout = busy_timeout
        self._lock = threading.Lock()  # one connection per process, used by one thread at a time
        self._db: sqlite3.Connection | None = None
        self._pid: int | None = None

    def record(self, source: str, now: float) -> int:
        """Add a failure of ``source`` at ``now``; return how many of its failures were within
        the window before this one (at most ``keep``)."""
        with self._lock:
            try:
                db = self._connection()
                db.execute("BEGIN IMMEDIATE")
                try:
                    row = db.execute("SELECT times FROM failures WHERE source = ?", (source,)).fetchone()
                    recent = self._recent(row[0], now) if row else []
                    kept = (recent + [now])[-self.keep:]
                    db.execute("INSERT INTO failures (source, last, times) VALUES (?, ?, ?) "
                               "ON CONFLICT (source) DO UPDATE SET last = excluded.last, times = excluded.times",
                               (source, now, " ".join(repr(t) for t in kept)))
                    if row is None:
                        self._evict(db)
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
            except (sqlite3.Error, OSError) as exc:  # OSError: the data directory cannot be made
                self._drop()
                raise AuthFailuresUnavailable(str(exc)) from exc
        return len(recent)

    def recent(self, source: str, now: float) -> int:
        """How many failures of ``source`` lie within the window (read only)."""
        with self._lock:
            try:
                row = self._connection().execute("SELECT times FROM failures WHERE source = ?",
                                                 (source,)).fetchone()
            except (sqlite3.Error, OSError) as exc:
                self._drop()
                raise AuthFailuresUnavailable(str(exc)) from exc
        return len(self._recent(row[0], now)) if row is not None else 0

    def sources(self) -> int:
        """How many sources are remembered."""
        with self._lock:
            return self._connection().execute("SELECT COUNT(*) FROM failures").fetchone()[0]

    def _connection(self) -> sqlite3.Connection:
        if self._db is None or self._pid != os.getpid():  # never reuse a connection across fork
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                                 check_same_thread=False)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=OFF")
                db.execute("CREATE TABLE IF NOT EXISTS failures ("
                           "source TEXT PRIMARY KEY, last REAL NOT NULL, times TEXT NOT NULL)")
                db.execute("CREATE INDEX IF NOT EXISTS failures_by_last ON failures (last)")
            except BaseException:
                db.close()
                raise
            self._db, self._pid = db, os.getpid()
        return self._db

    def _recent(self, times: str, now: float) -> list[float]:
        # A time ahead of now by more than a window means the clock was set back: drop it.
        return [t for t in map(float, times.split()) if now - self.window < t <= now + self.window]

    def _evict(self, db: sqlite3.Connection) -> None:
        (count,) = db.execute("SELECT COUNT(*) FROM failures").fetchone()
        if count > self.max_sources:
            db.execute("DELETE FROM failures WHERE source IN "
                       "(SELECT source FROM failures ORDER BY last LIMIT ?)", (count - self.max_sources,))

    def _drop(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None  # reopen on the next call: the disk may be writable again
