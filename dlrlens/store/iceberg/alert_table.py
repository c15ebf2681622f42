"""The alert state shared by every collector's alerts process and the dashboard, as an Iceberg
table: ``<namespace>.alert_state`` (:data:`ALERT_TABLE`), issue #10.

**What it holds.** The whole state of :mod:`dlrlens.store.alert_state` (alerts, the
notifications outbox and history, silences, meta) as small rows ``(kind, key, payload)``
(:meth:`dlrlens.store.alert_state.AlertState.rows`: JSON payloads, a bounded history),
unpartitioned, rewritten whole by each commit: one overwrite replacing the previous snapshot's
single data file (one snapshot a commit). Each process keeps a working copy in its own ``data/alerts.sqlite`` (so
``/metrics`` and the Alerts page read it as on the local store).

**Coordination: catalog commits only** (no leader, no lock between machines), as the derived
table (:mod:`dlrlens.store.iceberg.derived`): the table's ``commit.retry.num-retries`` is 0, so
a commit based on a snapshot that is no longer the table's is refused
(``CommitFailedException``) instead of being re-applied by pyiceberg on top of the winner's.
Every change follows one pattern (:meth:`SharedAlertState.round`, :meth:`SharedAlertState.change`):
load the table's current snapshot S, import it into the working copy (replacing it), change the
copy, export it and commit an overwrite based on S. A refused commit changed nothing in the
table: the caller discards its change (an evaluation round) or starts again on the new snapshot
(a silence, a delivery's outcome: :data:`CHANGE_ATTEMPTS` times with back-off). Within one data
directory the working copy is guarded by ``alerts-shared.lock`` (:data:`COPY_LOCK`) from import
to commit, so a dashboard sharing the directory never replaces it under an evaluation.

Reads of the table go through the catalog (its timeouts: :mod:`dlrlens.store.iceberg.table`)
and pyarrow's S3 client (the catalog's FileIO settings); a failure raises, and the caller
reports it (the alerts process: ``event=alerts_failed``, recorded in the working copy's meta).

Snapshots and files stay bounded through the maintenance (:mod:`dlrlens.store.iceberg.maintain`
expires this table's snapshots and deletes its orphan files like the others').

Imports nothing from the alert engine (:mod:`dlrlens.alerts`): it moves rows, it does not
evaluate.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import CommitFailedException, NoSuchTableError, ValidationException
from pyiceberg.table import Table, TableProperties

from dlrlens.store import files
from dlrlens.store.alert_state import AlertState
from dlrlens.store.iceberg.table import live_data_entries, namespaced_table, open_catalog, upload_data_file

log = logging.getLogger("dlrlens.store")

ALERT_TABLE = "alert_state"
COPY_LOCK = "alerts-shared.lock"   # under the data directory: the working copy, from import to commit
COMMITTER_KEY = "dlrlens.committer"  # snapshot summary: who committed (for people)
ROW_SCHEMA = pa.schema([pa.field("kind", pa.string(), nullable=False), pa.field("key", pa.string(), nullable=False),
                        pa.field("payload", pa.string(), nullable=False)])
ALERT_TABLE_PROPERTIES = {
    # Every commit replaces the one data file: no manifests pile up; metadata files as the others.
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "20",
    # A refused commit must stay refused (see the module docstring): no retry by pyiceberg.
    TableProperties.COMMIT_NUM_RETRIES: "0",
}
CHANGE_ATTEMPTS = 5
CHANGE_BACKOFF_SECONDS = 0.2  # before the 2nd attempt of a change; doubles, with jitter
REFRESH_SECONDS = 5.0         # a reader's working copy is refreshed at most this often
REFRESH_RETRY_SECONDS = 30.0  # ... and after a failure (a refresh against a dead catalog waits for its timeouts)


class Refused(Exception):
    """The catalog refused a commit: the table moved on from the snapshot it was based on."""


@dataclass
class Loaded:
    """The table as loaded for one change: the commit is based on ``snapshot_id``."""

    table: Table
    snapshot_id: int | None  # None: nothing committed yet
    rows: list[tuple[str, str, str]]


def alert_table(catalog: Catalog, create: bool = True) -> Table | None:
    """The alert-state table (created when missing and ``create``; the loser of a creation race
    finds the winner's), or None when missing and not ``create``."""
    try:
        return namespaced_table(catalog, ALERT_TABLE, create,
                                lambda: dict(schema=ROW_SCHEMA, properties=ALERT_TABLE_PROPERTIES))
    except NoSuchTableError:
        return None


def _message(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:300] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"


class SharedAlertState:
    """The alert state of catalog ``catalog_name`` shared through :data:`ALERT_TABLE`, with its
    working copy in ``data_dir`` (:attr:`local`); ``committer`` names this process in the
    snapshots it commits. Thread-safe (changes are serialised by :data:`COPY_LOCK`)."""

    Refused = Refused  # for callers that do not import this module (the alert engine)

    def __init__(self, catalog_name: str, data_dir: str | Path, committer: str = ""):
        self.catalog_name = catalog_name
        self.data_dir = Path(data_dir)
        self.local = AlertState(self.data_dir)
        self.committer = committer
        self._table: Table | None = None
        self._guard = threading.Lock()  # flock is per open file: threads of one process need their own
        self.last_refresh: float | None = None  # monotonic
        self.last_error: str | None = None  # of the last refresh (None: it worked)
        self.commit_seconds: list[float] = []  # of the last commits (the README's figure), newest last

    # -- the table

    def load(self) -> Loaded:
        """The table's current snapshot and its rows (creates the table on first use)."""
        if self._table is None:
            self._table = alert_table(open_catalog(self.catalog_name))
        else:
            self._table = self._table.refresh()
        table = self._table
        snapshot = table.current_snapshot()
        if snapshot is None:
            return Loaded(table, None, [])
        data = table.scan(snapshot_id=snapshot.snapshot_id).to_arrow()
        return Loaded(table, snapshot.snapshot_id,
                      list(zip(data.column("kind").to_pylist(), data.column("key").to_pylist(),
                               data.column("payload").to_pylist())))

    def commit(self, loaded: Loaded) -> int:
        """Export the working copy and commit it as an overwrite of the whole table, based on
        ``loaded``'s snapshot; the new snapshot's id. Raises :class:`Refused` when the table
        moved on meanwhile (nothing committed)."""
        rows = self.local.rows()
        data = pa.Table.from_pylist([{"kind": k, "key": key, "payload": p} for k, key, p in rows], schema=ROW_SCHEMA)
        started = time.perf_counter()
        try:
            # One snapshot replacing the previous data file(s) by the new one (pyiceberg's
            # Table.overwrite makes two per commit, a delete and an append: twice the snapshots).
            # The first commit too: the catalog refuses a second "first" like any stale commit.
            table = loaded.table
            with table.transaction() as transaction:
                with transaction.update_snapshot(
                        snapshot_properties={COMMITTER_KEY: self.committer or "?"}).overwrite() as overwrite:
                    for entry in live_data_entries(table):
                        overwrite.delete_data_file(entry.data_file)
                    if data.num_rows:
                        overwrite.append_data_file(upload_data_file(table, data, ROW_SCHEMA))
        except (CommitFailedException, ValidationException) as exc:
            self._table = None  # reload: pyiceberg's Table may hold its failed attempt's metadata
            raise Refused(_message(exc)) from None
        self.commit_seconds = (self.commit_seconds + [time.perf_counter() - started])[-20:]
        snapshot = loaded.table.current_snapshot()
        return snapshot.snapshot_id

    # -- changes

    @contextmanager
    def _copy_locked(self):
        with self._guard, files.locked(self.data_dir / COPY_LOCK, wait=True):
            yield

    @contextmanager
    def round(self):
        """Load the table, import it into the working copy, yield the :class:`Loaded` (the
        caller changes the copy and :meth:`commit`\\ s it), all under :data:`COPY_LOCK`.
        Imports clear this process's own meta (its last round's error)."""
        with self._copy_locked():
            loaded = self.load()
            self.local.replace(loaded.rows, keep_local_meta=False)
            self.last_refresh, self.last_error = time.monotonic(), None
            yield loaded

    def change(self, apply, attempts: int = CHANGE_ATTEMPTS):
        """Apply ``apply(state)`` (an :class:`~dlrlens.store.alert_state.AlertState`: the
        working copy just imported) and commit, starting again on the new snapshot when the
        commit is refused, up to ``attempts`` times with back-off; what ``apply`` returned.
        Raises :class:`Refused` when every attempt was, and whatever the catalog raised."""
        for attempt in range(1, attempts + 1):
            with self.round() as loaded:
                result = apply(self.local)
                try:
                    self.commit(loaded)
                    return result
                except Refused as exc:
                    if attempt == attempts:
                        raise
                    log.info("event=alert_state_commit_refused attempt=%d error=%r", attempt, str(exc))
            time.sleep(CHANGE_BACKOFF_SECONDS * 2 ** (attempt - 1) * random.uniform(0.5, 1.5))
        raise AssertionError("unreachable")

    def refresh(self) -> None:
        """Import the table's current state into the working copy (raises on a failure)."""
        with self.round():
            pass

    def refresh_if_due(self, every: float = REFRESH_SECONDS) -> None:
        """:meth:`refresh` unless one ran less than ``every`` seconds ago (after a failure:
        :data:`REFRESH_RETRY_SECONDS`); a failure is logged and kept in :attr:`last_error`,
        the working copy serves what it holds."""
        now = time.monotonic()
        wait = max(every, REFRESH_RETRY_SECONDS) if self.last_error else every
        if self.last_refresh is not None and now - self.last_refresh < wait:
            return
        try:
            self.refresh()
        except Exception as exc:  # a page must still answer from the working copy
            self._table = None
            self.last_refresh, self.last_error = now, _message(exc)
            log.warning("event=alert_state_refresh_failed error=%r", self.last_error)


_SHARED: dict[tuple[str, str], SharedAlertState] = {}
_SHARED_LOCK = threading.Lock()


def shared_alert_state(catalog_name: str, data_dir: str | Path, committer: str = "") -> SharedAlertState:
    """This process's :class:`SharedAlertState` of ``catalog_name`` with its working copy in
    ``data_dir`` (one per pair: a reader's refresh schedule lives in it)."""
    key = (catalog_name, str(Path(data_dir).resolve()))
    with _SHARED_LOCK:
        found = _SHARED.get(key)
        if found is None:
            found = _SHARED[key] = SharedAlertState(catalog_name, data_dir, committer)
        return found
