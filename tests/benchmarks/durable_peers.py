"""The ingest benchmark's durable peers: what a user would build instead of the collector.

Each is :func:`tests.benchmarks.bare_app.create_bare_app` (same Flask app, same JSON parsing,
same answer, same gunicorn settings) with a ``store`` that writes the parsed documents before
the answer, one transaction per request, committed durably:

* :class:`PostgresStore`: PostgreSQL (psycopg 3), ``synchronous_commit = on``, one ``INSERT``
  (``executemany`` for a JSON array) and one ``COMMIT`` per request, one connection per server
  thread (opened at its first request, reopened after an error);
* :class:`SqliteStore`: SQLite in WAL mode with ``synchronous = FULL`` (each commit fsyncs the
  WAL), one ``INSERT`` + ``COMMIT`` per request, one connection per server thread, a 30 s busy
  timeout (the writers of both gunicorn workers queue on SQLite's one write lock).

A row is what a user would keep: which webhook, the event's id, the campaign label from the
query string, the time received and the JSON element as text (no index beyond the row id).
``stored_rows`` counts what a peer kept, so the benchmark can check every ``200``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path

TABLE = "receipts"
ID_FIELDS = ("deliveryMessageId", "messageId", "id")  # a receipt's, a click's, a reply's
INSERT_COLUMNS = "(webhook, event_id, campaign, received_at, body)"


def rows_of(path: str, campaign: str | None, documents: list) -> list[tuple]:
    """One row per JSON element: ``(webhook, event_id, campaign, received_at, body)``."""
    received_at = datetime.now(timezone.utc).isoformat()
    rows = []
    for document in documents:
        event_id = next((document[key] for key in ID_FIELDS if isinstance(document, dict) and key in document), None)
        rows.append((path, None if event_id is None else str(event_id), campaign, received_at,
                     json.dumps(document, separators=(",", ":"))))
    return rows


class PostgresStore:
    """``store(path, campaign, documents)``: INSERT + COMMIT on this thread's connection."""

    def __init__(self, dsn: str):
        import psycopg  # the benchmark's extra (pyproject: bench); imported only by this peer

        self._psycopg = psycopg
        self.dsn = dsn
        self._local = threading.local()
        self._sql = f"INSERT INTO {TABLE} {INSERT_COLUMNS} VALUES (%s, %s, %s, %s, %s)"

    def __call__(self, path: str, campaign: str | None, documents: list) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self._psycopg.connect(self.dsn)
        try:
            with connection.cursor() as cursor:
                cursor.executemany(self._sql, rows_of(path, campaign, documents))
            connection.commit()
        except Exception:
            self._local.connection = None
            connection.close()
            raise

    @staticmethod
    def create_table(dsn: str) -> None:
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute(f"DROP TABLE IF EXISTS {TABLE}")
            connection.execute(f"CREATE TABLE {TABLE} (id bigserial PRIMARY KEY, webhook text NOT NULL, "
                               "event_id text, campaign text, received_at timestamptz NOT NULL, body text NOT NULL)")

    @staticmethod
    def stored_rows(dsn: str) -> tuple[int, int]:
        """Rows and distinct event ids in the table."""
        import psycopg

        with psycopg.connect(dsn) as connection:
            return connection.execute(f"SELECT count(*), count(DISTINCT event_id) FROM {TABLE}").fetchone()


class SqliteStore:
    """``store(path, campaign, documents)``: INSERT + COMMIT on this thread's connection."""

    BUSY_TIMEOUT_SECONDS = 30.0  # wrk's own timeout: a request waits for the lock, it is not refused

    def __init__(self, database: Path):
        self.database = Path(database)
        self._local = threading.local()
        self._sql = f"INSERT INTO {TABLE} {INSERT_COLUMNS} VALUES (?, ?, ?, ?, ?)"

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.database, timeout=self.BUSY_TIMEOUT_SECONDS, check_same_thread=False)
        connection.execute("PRAGMA synchronous = FULL")  # per connection; journal_mode is per database
        return connection

    def __call__(self, path: str, campaign: str | None, documents: list) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self._connect()
        try:
            connection.executemany(self._sql, rows_of(path, campaign, documents))  # opens the transaction
            connection.commit()
        except Exception:
            self._local.connection = None
            connection.close()
            raise

    @classmethod
    def create_table(cls, database: Path) -> None:
        with sqlite3.connect(database) as connection:
            mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise RuntimeError(f"SQLite refused WAL mode for {database} (got {mode})")
            connection.execute(f"DROP TABLE IF EXISTS {TABLE}")
            connection.execute(f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, webhook TEXT NOT NULL, event_id TEXT, "
                               "campaign TEXT, received_at TEXT NOT NULL, body TEXT NOT NULL)")
        connection.close()

    @staticmethod
    def stored_rows(database: Path) -> tuple[int, int]:
        connection = sqlite3.connect(database)
        try:
            return connection.execute(f"SELECT count(*), count(DISTINCT event_id) FROM {TABLE}").fetchone()
        finally:
            connection.close()
