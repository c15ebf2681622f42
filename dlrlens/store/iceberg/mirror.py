"""The read side of the Iceberg backend: a local cache of the tables' data files, read by the
ordinary :class:`~dlrlens.store.reader.Store`.

DuckDB's ``httpfs`` extension (to read S3 directly) is downloaded on first use, which a machine
without internet cannot do; pyiceberg's FileIO (pyarrow's S3 client) is already here. So:

* :meth:`Mirror.sync` asks the catalog for the current snapshot of each table the collectors
  write (receipts, clicks, replies: :data:`~dlrlens.store.iceberg.table.WRITTEN_TABLES`), lets
  pyiceberg plan its data files, and copies each file not cached yet to
  ``cache/iceberg/<catalog>/<table>/date=YYYY-MM-DD/i-<hash of its path>.parquet`` (the day is
  the file's partition value: the UTC day of the table's day column, exactly the local layout).
  Data files never change in Iceberg (a rewrite has a new path), so a cached file is never
  fetched again; a file the snapshot no longer holds is removed from the cache. The cached
  clicks and replies are read and absorbed by the derived state exactly as a local data
  directory's (:mod:`dlrlens.store.events`), so the Funnel page works on the Iceberg store.
* The derived per-message state: on an empty cache (or one whose state would have more than
  :data:`~dlrlens.store.iceberg.derived.ADOPT_MIN_ROWS` receipt rows to absorb that the
  committed state holds already), the state the collectors' maintenance committed to the
  derived table is adopted (:func:`dlrlens.store.iceberg.derived.adopt`: downloaded with its
  companions, a local manifest written from it) instead of rebuilt from every receipt. Then it is kept up to date locally from the cached receipts
  (:func:`dlrlens.store.derive.update_derived` after each sync that added files, or that removed
  files whose rows a compaction output of the table's maintenance now holds: its lineage names
  them; a rebuild after any other removal). When the derived table cannot be read or adopted,
  the state is computed locally as if it did not exist (a warning is logged). The adopted
  state's manifest names the cached receipt, click and reply files the committed state
  absorbed (by each table's sequence number it recorded,
  :data:`~dlrlens.store.iceberg.derived.EVENTS_SEQUENCE_KEY`); the local update absorbs the
  rest. A committed state that recorded nothing for the events (an older dlrlens) makes it
  absorb every cached event file again, which changes nothing for the events it held already
  (the derived state is duplicate-insensitive, :mod:`dlrlens.store.derive`). An event file
  that leaves a table (nothing removes one: events are not compacted) makes the state be rebuilt.
* :class:`IcebergStore` is a :class:`~dlrlens.store.reader.Store` over the cache that syncs before
  it looks at the data (at most every ``sync_seconds``). Every figure is computed by the same
  code as for a local data directory, so it is the same on the same receipts.

When the catalog or object store is unreachable, the store serves what is cached and keeps the
error (:attr:`Mirror.last_error`); it tries again at a query :data:`SYNC_RETRY_SECONDS` later
(a sync against an unreachable store may block a query for its timeouts).
Several processes may share a cache: a sync holds ``mirror.lock``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from datetime import date, timedelta
from pathlib import Path

from pyiceberg.exceptions import NoSuchTableError

from dlrlens.store import compaction, derive, events, files, layout, sends
from dlrlens.store.iceberg import derived, send_tables
from dlrlens.store.iceberg.table import RECEIPTS_TABLE, WRITTEN_TABLES, live_data_entries, open_catalog, written_table
from dlrlens.store.reader import Store

log = logging.getLogger("dlrlens.store")

CACHED_PREFIX = "i-"
# {cached send-record or campaign file: the data files of its partition it was made from}
SEND_TABLES_STATE = "send-tables.json"
SYNC_SECONDS = 2.0
# After a failed sync: a sync against an unreachable store can block for its timeouts and retries
# (seconds), so a dashboard that asks every few seconds tries again only this much later.
SYNC_RETRY_SECONDS = 30.0
COPY_CHUNK = 8 << 20


def cache_dir(data_dir: Path, catalog_name: str) -> Path:
    """Where the cache of catalog ``catalog_name`` lives under the local directory ``data_dir``."""
    return Path(data_dir) / layout.ICEBERG_CACHE_DIR / catalog_name


def cached_name(file_path: str) -> str:
    """The cache's name for the data file at ``file_path`` (an object-store URI). A compaction
    output of the table's maintenance (``c-*.parquet``) keeps the prefix of the local store's
    compaction outputs, whose lineage (its inputs' cached names) the derived state reads."""
    prefix = compaction.OUTPUT_PREFIX if file_path.rsplit("/", 1)[-1].startswith(compaction.OUTPUT_PREFIX) \
        else CACHED_PREFIX
    return f"{prefix}{hashlib.sha256(file_path.encode()).hexdigest()[:32]}.parquet"


def partition_day(days_since_epoch: int) -> str:
    day = date(1970, 1, 1) + timedelta(days=int(days_since_epoch))
    return f"{day.year:04d}-{day.month:02d}-{day.day:02d}"


class MirrorError(Exception):
    """The table holds something the cache cannot represent (say, row-level deletes)."""


class Mirror:
    """The cache of one catalog's tables under ``root`` (a data-directory layout)."""

    def __init__(self, catalog_name: str, root: Path):
        self.catalog_name = catalog_name
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._catalog = None
        self._tables: dict[str, object] = {}  # table name -> its pyiceberg Table, as last loaded
        self._synced: tuple | None = None  # the tables' snapshot ids the cache last matched
        self.last_error: str | None = None
        self.last_sync_at: float | None = None
        self._last_attempt: float | None = None  # monotonic
        self._files: dict[str, tuple[str, int, int]] = {}  # what _planned said of the receipts at the last sync
        self._probe: int | None = None
        self.receipts_snapshot: int | None = None   # the receipts snapshot of the last sync
        self.receipts_sequence: int | None = None   # ... and its sequence number
        self.events_sequences: dict[str, int] = {}   # clicks/replies -> their snapshot's sequence number
        self._event_files: dict[str, tuple[str, int, int]] = {}  # as _files, of the clicks and replies

    def sync(self) -> dict:
        """Make the cache match the tables' current snapshots. Returns what was done:
        ``{"snapshot"`` (the receipts table's), ``"files", "fetched", "removed", "adopted"}``.
        Raises when the catalog, the object store or the cache fails (the cache then still holds
        a consistent earlier state)."""
        with files.locked(self.root / "mirror.lock", wait=True):
            tables = {name: self._fresh_table(name) for name in WRITTEN_TABLES}
            keyed = {name: self._fresh_table(name, keyed=True) for name in send_tables.KEYED_TABLES}
            snapshots = {name: table.current_snapshot() if table is not None else None
                         for name, table in (tables | keyed).items()}
            synced = tuple(snapshot.snapshot_id if snapshot is not None else None for snapshot in snapshots.values())
            snapshot = snapshots[RECEIPTS_TABLE]
            snapshot_id = snapshot.snapshot_id if snapshot is not None else None
            if snapshot_id is not None and synced == self._synced:
                return {"snapshot": snapshot_id, "files": None, "fetched": 0, "removed": 0, "adopted": None}
            planned = {name: self._planned(tables[name], snapshots[name], name) if snapshots[name] is not None else {}
                       for name in WRITTEN_TABLES}
            sends_changed = self._sync_send_tables(keyed, snapshots)
            wanted = {relative: (name, uri) for name, found in planned.items()
                      for relative, (uri, _, _) in found.items()}
            cached = self._cached()
            fetched = 0
            for relative, (name, source) in sorted(wanted.items()):
                if relative not in cached:
                    self._fetch(tables[name], source, self.root / relative)
                    fetched += 1
            removed = [relative for relative in cached if relative not in wanted]
            for relative in removed:
                (self.root / relative).unlink(missing_ok=True)
            self._files = planned[RECEIPTS_TABLE]
            self._event_files = {relative: found for name in events.EVENT_TABLES
                                 for relative, found in planned[name].items()}
            self.events_sequences = {name: snapshots[name].sequence_number for name in events.EVENT_TABLES
                                     if snapshots[name] is not None}
            self.receipts_snapshot = snapshot_id
            self.receipts_sequence = snapshot.sequence_number if snapshot is not None else None
            adopted = None
            if removed and not self._compacted(removed, self._files):
                derive.rebuild_derived(self.root)  # rows left a table: the state must forget them
            elif fetched or removed or sends_changed:
                adopted = self._adopt_if_behind(tables[RECEIPTS_TABLE]) if tables[RECEIPTS_TABLE] is not None else None
                derive.update_derived(self.root, wait=True)
            self._synced = synced
            self.last_sync_at = time.time()
            return {"snapshot": snapshot_id, "files": len(wanted), "fetched": fetched, "removed": len(removed),
                    "adopted": adopted, "send_files_changed": sends_changed}

    def _sync_send_tables(self, tables: dict, snapshots: dict) -> int:
        """Make the cache's send-record and campaign files (``sends/<source>/<day>.parquet``,
        ``campaigns/*.parquet``) and ``sync.json`` match the send tables' ``snapshots``
        (:mod:`~dlrlens.store.iceberg.send_tables`): a file is written again when its partition's
        data files changed (a replaced file is re-read by the derived state, which absorbs the
        records stamped since), removed when its partition is gone. Returns the files changed."""
        state_path = self.root / SEND_TABLES_STATE
        try:
            known = json.loads(state_path.read_bytes())
        except (OSError, ValueError):
            known = {}
        wanted: dict[str, tuple[str, list[str]]] = {}
        for name, table in tables.items():
            if snapshots[name] is not None:
                for relative, uris in send_tables.cached_files(table, name, snapshots[name]).items():
                    wanted[relative] = (name, uris)
        changed = 0
        for relative, (name, uris) in sorted(wanted.items()):
            if known.get(relative) != uris or not (self.root / relative).exists():
                send_tables.write_cached(tables[name], name, uris, self.root / relative)
                changed += 1
        for relative in sorted(set(known) - set(wanted)):
            (self.root / relative).unlink(missing_ok=True)
            changed += 1
        status = send_tables.sync_status(tables[send_tables.SENDS_TABLE]) \
            if tables[send_tables.SENDS_TABLE] is not None else None
        if status is not None and status != sends.sync_status(self.root):
            files.publish_bytes(self.root / sends.SYNC_STATUS, json.dumps(status, sort_keys=True).encode())
        if changed or not state_path.exists():
            files.publish_bytes(state_path, json.dumps({k: v for k, (_, v) in sorted(wanted.items())}).encode())
        return changed

    @property
    def probe(self) -> int:
        """This process's :func:`dlrlens.store.derive.hash_probe`."""
        if self._probe is None:
            con = derive.connect({"threads": 1})
            try:
                self._probe = derive.hash_probe(con)
            finally:
                con.close()
        return self._probe

    def _adopt_if_behind(self, receipts) -> dict | None:
        """Adopt the committed derived state when the cache has none of its own (or one hashed
        by another DuckDB), or when it would absorb at least ``ADOPT_MIN_ROWS`` receipt rows the
        committed state holds already. What :func:`derived.adopt` did, or None. Never raises:
        the local state is the fallback."""
        manifest = derive.Manifest.load(self.root)
        usable = manifest is not None and manifest.hash_probe == self.probe
        if usable:
            to_read = set(derive.unabsorbed(self.root, {p: (0, 0) for p in self._files}, manifest.absorbed)[0])
            if sum(self._files[p][2] for p in to_read if p in self._files) < derived.ADOPT_MIN_ROWS:
                return None  # the common case: no catalog call beyond the receipts table's
        if receipts.metadata.format_version < 2:
            return None  # no sequence numbers: what the committed state absorbed cannot be told
        try:
            table = derived.derived_table(open_catalog(self.catalog_name))
            committed = derived.committed_state(table) if table is not None else None
            if committed is None or committed.receipts_sequence is None:
                return None
            if usable:
                covered = sum(rows for path, (_, sequence, rows) in self._files.items()
                              if path in to_read and sequence <= committed.receipts_sequence)
                if covered < derived.ADOPT_MIN_ROWS:
                    return None
            return self._adopt(table, committed)
        except Exception as exc:  # the local state is always a correct fallback
            log.warning("event=derived_adoption_failed error=%r",
                        f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
            return None

    def adopt(self, table, committed) -> dict:
        """:func:`derived.adopt` of ``committed`` (the derived ``table``'s state) into this cache,
        as of its last :meth:`sync` (a process sharing the cache does not sync meanwhile)."""
        with files.locked(self.root / "mirror.lock", wait=True):
            return self._adopt(table, committed)

    def _adopt(self, table, committed) -> dict:
        sequences = {relative: sequence for relative, (_, sequence, _) in (self._files | self._event_files).items()}
        return derived.adopt(self.root, table, committed, sequences, self.probe)

    def _fresh_table(self, name: str, keyed: bool = False):
        """Table ``name`` (of the collectors' tables, or ``keyed``: of the send tables) refreshed
        now, or None before anything made it."""
        table = self._tables.get(name)
        if table is not None:
            table = table.refresh()
        else:
            if self._catalog is None:
                self._catalog = open_catalog(self.catalog_name)
            try:
                table = (send_tables.keyed_table if keyed else written_table)(self._catalog, name, create=False)
            except NoSuchTableError:
                return None  # nothing written yet
        self._tables[name] = table
        return table

    def _planned(self, table, snapshot, name: str = RECEIPTS_TABLE) -> dict[str, tuple[str, int, int]]:
        """{cache path relative to the root: (data file URI, data sequence number, rows)} of the
        data files of ``snapshot`` of table ``name``."""
        wanted = {}
        try:
            entries = live_data_entries(table, snapshot)
        except ValueError as exc:
            raise MirrorError(str(exc)) from None
        for entry in entries:
            data_file = entry.data_file
            day = data_file.partition[0]
            if day is None:
                raise MirrorError(f"a data file of the {name} table has no day partition: {data_file.file_path}")
            partition = f"{layout.TABLES[name].directory}/{layout.PARTITION_PREFIX}{partition_day(day)}"
            wanted[f"{partition}/{cached_name(data_file.file_path)}"] = (data_file.file_path, entry.sequence_number,
                                                                         data_file.record_count)
        return wanted

    def _cached(self) -> set[str]:
        found = set(derive.receipt_files(self.root))
        for table in events.EVENT_TABLES:
            found.update(events.event_files(self.root, table))
        return {path for path in found if Path(path).name.startswith((CACHED_PREFIX, compaction.OUTPUT_PREFIX))}

    def _compacted(self, removed: list[str], wanted: dict) -> bool:
        """Whether every ``removed`` file's rows are in a compaction output the receipts table
        holds (its lineage names it; ``wanted``: the receipts table's files): then the derived
        state, duplicate-insensitive, needs no rebuild."""
        merged: set[str] = set()
        for relative in wanted:
            if Path(relative).name.startswith(compaction.OUTPUT_PREFIX):
                merged.update(f"{Path(relative).parent.as_posix()}/{name}"
                              for name in compaction.lineage(self.root / relative))
        return all(relative in merged for relative in removed)

    def _fetch(self, table, source: str, target: Path) -> None:
        with files.publishing(target) as publication:
            with table.io.new_input(source).open() as remote, open(publication.temp, "wb") as local:
                shutil.copyfileobj(remote, local, COPY_CHUNK)

    def sync_if_due(self, every: float) -> None:
        """:meth:`sync` unless one ran less than ``every`` seconds ago; a failure is logged and
        kept in :attr:`last_error` (the cache serves what it holds)."""
        now = time.monotonic()
        wait = max(every, SYNC_RETRY_SECONDS) if self.last_error else every
        if self._last_attempt is not None and now - self._last_attempt < wait:
            return
        self._last_attempt = now
        try:
            self.sync()
        except Exception as exc:  # a query must still answer from the cache
            self._tables.clear()
            self._catalog = None
            self.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            log.warning("event=iceberg_sync_failed error=%r", self.last_error)
        else:
            self.last_error = None


class IcebergStore(Store):
    """A :class:`~dlrlens.store.reader.Store` over the Iceberg tables of catalog ``catalog_name``,
    cached under ``data_dir`` (see the module docstring)."""

    def __init__(self, catalog_name: str, data_dir: str | Path, settings: dict | None = None,
                 sync_seconds: float = SYNC_SECONDS):
        self.mirror = Mirror(catalog_name, cache_dir(Path(data_dir), catalog_name))
        self.sync_seconds = sync_seconds
        self.mirror.sync_if_due(0)
        super().__init__(self.mirror.root, settings)
        self.key_dir = Path(data_dir)

    def _state(self):
        self.mirror.sync_if_due(self.sync_seconds)
        return super()._state()

    def has_data(self) -> bool:
        self.mirror.sync_if_due(self.sync_seconds)
        return super().has_data()
