"""Keeping the tables bounded: compaction, snapshot expiry and orphan-file cleanup.

Of the receipts, clicks and replies tables: all three (the local store compacts receipts only;
on the Iceberg store every flush of every collector worker with events adds a small data file
per day to the clicks and replies tables, which every reader caches and lists); of the derived
table, the send tables (:mod:`dlrlens.store.iceberg.send_tables`) and the alert-state table
(:mod:`dlrlens.store.iceberg.alert_table`, a commit per alert evaluation round): expiry and
orphan-file cleanup (their commits replace files whole).

Every flush of every collector worker is a commit, and every commit adds a snapshot (about 1 KB
in the table's metadata file, which each commit and each reader rewrites or reads whole), a
manifest list, a manifest, a metadata file and a small data file per UTC day it holds to the
object store. :class:`TableMaintenance` keeps that bounded; each collector's maintenance process
runs it (:mod:`dlrlens.store.maintenance`, ``DLRLENS_ICEBERG_MAINTENANCE_SECONDS``). There is no
leader and no lock shared between machines: any number of maintainers may run at once, because
every change is an ordinary catalog commit, applied by the catalog to its current metadata (so
it never undoes a collector's append) or refused when it conflicts, and then chosen again on
fresh metadata:

* **compaction** (:meth:`TableMaintenance.compact`) merges each day partition's small data
  files by the local store's policy (a settled day into one file, an active one by size tiers:
  :func:`dlrlens.store.compaction.choose_merge`), written as the local compaction writes
  (sorted, the same encodings, the inputs' lineage), in one commit that removes the inputs and
  adds the output (pyiceberg's overwrite with explicit files). Two maintainers merging the same
  files: the second commit is refused (pyiceberg validates that the files it removes are still
  there), its output deleted; a row is never doubled. Readers follow without a rebuild
  (:mod:`dlrlens.store.iceberg.mirror` reads the lineage). The collectors' appends meanwhile do
  not conflict with it (``write.delete.isolation-level = snapshot``).
* **expiry** (:meth:`TableMaintenance.expire`) is pyiceberg's own
  ``table.maintenance.expire_snapshots()``: it removes the snapshots superseded longer ago than
  the retention (:func:`expirable_snapshots` says which). When another maintainer removed some
  of them first the catalog refuses the commit; the maintainer reloads, chooses again and
  retries (a few times, then at its next run). Expiry keeps exactly-once intact whatever the
  retention: a collector decides what it already committed from the
  ``dlrlens.committed.<collector>/<slot>`` table properties, which expiry never touches (the
  contract is in :mod:`dlrlens.store.iceberg.table`), so a segment replayed a week after a crash
  is still known. The snapshots it keeps whatever their age: the current one (and any branch or
  tag head: pyiceberg protects them), those recording a migrated file (``dlrlens migrate``
  reads them; one per file, made once), and those of a slot committed only by step 1 (before
  the property existed), until that slot commits again.
* **orphan-file cleanup** (:meth:`TableMaintenance.remove_orphan_files`) lists the table's
  location, *then* loads the table's metadata, and deletes the files that no retained snapshot
  (nor the metadata log) references and that are older than the grace period: those of expired
  snapshots, compaction inputs once no snapshot holds them, leftovers of failed commits.
  pyiceberg 0.12 has no such operation (its expiry removes snapshots from the metadata, not
  their files), so it is written here. A file of a commit in flight is younger than the grace (a
  commit takes seconds; its files are written just before), so it is never taken for an orphan;
  two maintainers deleting the same orphan is harmless (the second finds it gone).

The rest keeps itself bounded through the table's properties
(:data:`dlrlens.store.iceberg.table.TABLE_PROPERTIES`, which :meth:`TableMaintenance.run` sets
on a table made before them): manifests are merged by the committers (so a manifest list does
not grow by one entry per commit) and each committer deletes the metadata files older than the
last 20.
"""

from __future__ import annotations

import logging
import random
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

from pyarrow import fs as pafs
from pyiceberg.exceptions import CommitFailedException, NoSuchTableError, ValidationException
from pyiceberg.io.pyarrow import PyArrowFileIO, parquet_file_to_data_file
from pyiceberg.manifest import DataFile
from pyiceberg.catalog import Catalog
from pyiceberg.table import Table
from pyiceberg.table.metadata import TableMetadata

from dlrlens.store import compaction, derive, layout
from dlrlens.store.iceberg import derived, send_tables
from dlrlens.store.iceberg.alert_table import ALERT_TABLE, ALERT_TABLE_PROPERTIES, alert_table
from dlrlens.store.iceberg.mirror import COPY_CHUNK, Mirror, cache_dir, cached_name
from dlrlens.store.iceberg.publisher import collector_id
from dlrlens.store.iceberg.table import (COMMITTED_PREFIX, RECEIPTS_TABLE, SEGMENT_KEY, SOURCE_KEY, TABLE_PROPERTIES,
                                         WRITTEN_TABLES, arrow_schema_with_field_ids, live_data_entries,
                                         open_catalog, parse_segment_value, written_table)

log = logging.getLogger("dlrlens.collector")

CONFLICT_ATTEMPTS = 6  # then the next run tries again (an error in the maintenance status)
# Compaction: a data file committed this recently is left for the next run (the flushes of the
# current minute); a day partition without a new file for SETTLE_SECONDS merges into one file.
COMPACT_MIN_AGE_SECONDS = 60.0
COMPACTED_KEY = "dlrlens.compacted"  # summary of a compaction commit: the files it replaced
# pyiceberg (and its SQL catalog) checks each snapshot to remove against every snapshot of the
# table: a table with tens of thousands (step 1 without maintenance) is brought down in commits
# of this many, oldest first.
EXPIRE_BATCH = 1000


@dataclass
class MaintenanceResult:
    """What one :meth:`TableMaintenance.run` did, and the table's size after it."""

    expired_snapshots: int = 0
    snapshots: int = 0              # in the table after the run
    kept_for_migration: int = 0     # past the retention, kept: they record migrated files
    kept_for_step1_slots: int = 0   # past the retention, kept: a slot without its property
    metadata_bytes: int = 0         # the current metadata file
    objects: int = 0                # files under the table's location, before the cleanup
    object_bytes: int = 0
    orphans_deleted: int = 0
    orphan_bytes_deleted: int = 0
    orphans_waiting: int = 0        # unreferenced, younger than the grace
    files_compacted: int = 0        # data files replaced by compaction outputs
    compaction_outputs: int = 0
    data_files: int = 0             # in the current snapshot after the run
    conflicts: int = 0              # commits refused because another writer committed first
    properties_set: int = 0
    seconds: float = 0.0
    by_kind: dict = field(default_factory=dict)  # objects per kind (see object_kind), before the cleanup

    def as_dict(self) -> dict:
        return asdict(self)


def expirable_snapshots(metadata: TableMetadata, superseded_before_ms: int) -> tuple[list[int], dict]:
    """Ids of the snapshots of ``metadata`` that expiry may remove, oldest first, and how many
    it keeps for another reason than their age (``{"migration": n, "step1_slot": n}``; see the
    module docstring).

    A snapshot's age is counted from the moment it was **superseded** (its child's commit), not
    from its own: a commit in flight started from the snapshot that was current when it began,
    and pyiceberg's retry of a commit that lost a race needs that snapshot still there. So a
    retention longer than a commit takes (seconds) never fails a collector's commit, even on a
    table that was idle for hours. The current snapshot (and any branch or tag head) is kept:
    pyiceberg refuses to remove them anyway."""
    protected = {ref.snapshot_id for ref in metadata.refs.values()}
    superseded_at: dict[int, int] = {}
    for snapshot in metadata.snapshots:
        if snapshot.parent_snapshot_id is not None:
            earlier = superseded_at.get(snapshot.parent_snapshot_id, snapshot.timestamp_ms)
            superseded_at[snapshot.parent_snapshot_id] = min(earlier, snapshot.timestamp_ms)
    slots_with_property = {name[len(COMMITTED_PREFIX):] for name in metadata.properties
                           if name.startswith(COMMITTED_PREFIX)}
    expirable, kept = [], {"migration": 0, "step1_slot": 0}
    for snapshot in sorted(metadata.snapshots, key=lambda s: s.timestamp_ms):
        if snapshot.snapshot_id in protected:
            continue
        # Not a head and no child left: its child was expired, so it was superseded even earlier.
        if superseded_at.get(snapshot.snapshot_id, snapshot.timestamp_ms) >= superseded_before_ms:
            continue
        summary = snapshot.summary.additional_properties if snapshot.summary is not None else {}
        if SOURCE_KEY in summary:
            kept["migration"] += 1
            continue
        segments = summary.get(SEGMENT_KEY)
        if segments is not None and parse_segment_value(segments)[0] not in slots_with_property:
            kept["step1_slot"] += 1
            continue
        expirable.append(snapshot.snapshot_id)
    return expirable, kept


def object_kind(path: str) -> str:
    """What a file under a table's location is: metadata (``*.metadata.json``), manifest_list
    (``snap-*.avro``), manifest (other ``*.avro`` under ``metadata/``), data, companion (of a
    derived data file), or other."""
    name = path.rsplit("/", 1)[-1]
    if "/metadata/" in path:
        if name.endswith(".metadata.json"):
            return "metadata"
        if name.startswith("snap-") and name.endswith(".avro"):
            return "manifest_list"
        if name.endswith(".avro"):
            return "manifest"
    elif "/data/" in path:
        return "data"
    elif derived.companion_of(path) is not None:
        return "companion"
    return "other"


def table_files(table: Table) -> tuple[pafs.FileSystem, list[pafs.FileInfo]]:
    """The filesystem of ``table``'s location and the files under it (paths as that filesystem
    names them: ``bucket/key`` on S3), listed through pyarrow (pyiceberg's FileIO cannot list)."""
    io = table.io
    if not isinstance(io, PyArrowFileIO):
        raise RuntimeError(f"orphan-file cleanup lists the table's files through pyarrow, but this catalog's FileIO "
                           f"is {type(io).__name__}: set its py-io-impl to pyiceberg.io.pyarrow.PyArrowFileIO")
    scheme, netloc, root = io.parse_location(table.metadata.location, io.properties)
    filesystem = io.fs_by_scheme(scheme, netloc)
    found = filesystem.get_file_info(pafs.FileSelector(root.rstrip("/"), recursive=True, allow_not_found=True))
    return filesystem, [info for info in found if info.type == pafs.FileType.File]


def count_by_kind(files: list[pafs.FileInfo]) -> dict[str, int]:
    """How many of ``files`` are of each :func:`object_kind`."""
    kinds: dict[str, int] = {}
    for info in files:
        kind = object_kind(info.path)
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


NUMBER_KEY_PROPERTY = "dlrlens.number-key"  # the receipts table's: the fingerprint of the deployment's number key


class NumberKeyMismatch(RuntimeError):
    """This collector's number key is not the one the other collectors hash numbers with."""


def check_number_key(table: Table, fingerprint: str) -> str:
    """Compare ``fingerprint`` (:func:`dlrlens.store.pseudonym.key_fingerprint` of this
    collector's ``keys/msisdn.key``) with the one the receipts ``table`` records, recording it
    when none is (the first maintainer's): ``"recorded"``, ``"same"``, or ``"unknown"`` when
    another maintainer's commit came first (compared at the next run). Raises
    :class:`NumberKeyMismatch` when they differ: the hashes of numbers this collector writes
    (clickers, repliers, synced recipients) then match no other collector's, so lookups by
    number and counts of distinct numbers go wrong. Nothing is refused: the receipts and
    events flow as before; the error says what to copy where."""
    recorded = table.metadata.properties.get(NUMBER_KEY_PROPERTY)
    if recorded is None:
        try:
            with table.transaction() as transaction:
                transaction.set_properties({NUMBER_KEY_PROPERTY: fingerprint})
        except CommitFailedException:  # a properties-only commit is not retried by pyiceberg
            return "unknown"
        log.info("event=number_key_recorded fingerprint=%s", fingerprint)
        return "recorded"
    if recorded != fingerprint:
        raise NumberKeyMismatch(
            f"this collector's number key (keys/msisdn.key, fingerprint {fingerprint}) differs from the one the "
            f"table's other writers use (fingerprint {recorded}): hashes of phone numbers will not match across "
            f"collectors. Copy keys/msisdn.key from a collector whose key matches into this one's --data and restart it")
    return "same"


def _maintained_tables() -> dict[str, tuple[dict[str, str], Callable[[Catalog], Table | None]]]:
    """Every table the maintenance keeps bounded: name -> (the properties it makes sure the table
    has, how to load it: None, or NoSuchTableError, before a commit made it)."""
    tables = {name: (TABLE_PROPERTIES, partial(written_table, name=name, create=False)) for name in WRITTEN_TABLES}
    tables[derived.DERIVED_TABLE] = (derived.DERIVED_TABLE_PROPERTIES, derived.derived_table)
    tables |= {name: (send_tables.TABLE_PROPERTIES, partial(send_tables.keyed_table, name=name, create=False))
               for name in send_tables.KEYED_TABLES}
    tables[ALERT_TABLE] = (ALERT_TABLE_PROPERTIES, partial(alert_table, create=False))
    return tables


MAINTAINED_TABLES = _maintained_tables()


class TableMaintenance:
    """Compaction, expiry and orphan-file cleanup of catalog ``catalog_name``'s receipts table
    (or its clicks or replies table: ``table`` = ``clicks``, ``replies``; outputs sorted by arrival
    and id, :func:`dlrlens.store.compaction.sort_keys`), or expiry and orphan-file cleanup of a
    send table (:data:`~dlrlens.store.iceberg.send_tables.KEYED_TABLES`) or of its derived table (``table`` =
    :data:`~dlrlens.store.iceberg.derived.DERIVED_TABLE`: its files are replaced by the
    :class:`DerivedPublisher`'s commits, never compacted); see the module docstring. Keeps,
    between runs, what it read of immutable manifest lists and manifests."""

    def __init__(self, catalog_name: str, *, retention_seconds: float, orphan_grace_seconds: float,
                 compact: bool = True, work_dir: Path | None = None, clock=time.time, table: str = RECEIPTS_TABLE):
        if table not in MAINTAINED_TABLES:
            raise ValueError(f"dlrlens maintains the tables {', '.join(MAINTAINED_TABLES)}, not {table!r}")
        self.table_name = table
        self.properties, self._load = MAINTAINED_TABLES[table]
        if retention_seconds < 0:
            raise ValueError("the snapshot retention cannot be negative")
        if orphan_grace_seconds <= 0:
            raise ValueError("the orphan-file grace must be positive")
        self.catalog_name = catalog_name
        self.retention_seconds = retention_seconds
        self.orphan_grace_seconds = orphan_grace_seconds
        self.compact_files = compact and table in WRITTEN_TABLES
        self.work_dir = Path(work_dir) if work_dir is not None else None  # compaction's scratch (default: /tmp)
        if self.work_dir is not None:  # one maintainer per data directory: what is there was a crashed run's
            shutil.rmtree(self.work_dir, ignore_errors=True)
            self.work_dir.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self._table: Table | None = None
        self._manifest_lists: dict[str, tuple[str, ...]] = {}   # manifest list -> its manifests
        self._manifests: dict[str, tuple[str, ...]] = {}        # manifest -> its data files

    def run(self) -> dict:
        """Set missing table properties, expire, remove orphans; the :class:`MaintenanceResult`
        as a dict. Does nothing (``{"skipped": "no table"}``) before the first commit made the table."""
        started = time.perf_counter()
        result = MaintenanceResult()
        if self._fresh_table() is None:
            return {"skipped": "no table"}
        result.properties_set = self.ensure_properties()
        if self.compact_files:
            self.compact(result)
        self.expire(result)
        self.remove_orphan_files(result)
        table = self._table
        result.snapshots = len(table.metadata.snapshots)
        result.data_files = sum(len(files) for files in self._live_data_files(table).values())
        with table.io.new_input(table.metadata_location).open() as metadata:
            result.metadata_bytes = len(metadata.read())
        result.seconds = round(time.perf_counter() - started, 3)
        return result.as_dict()

    def _fresh_table(self) -> Table | None:
        if self._table is None:
            try:
                self._table = self._load(open_catalog(self.catalog_name))
            except NoSuchTableError:
                return None
            if self._table is None:
                return None
        else:
            self._table = self._table.refresh()
        return self._table

    @property
    def table(self) -> Table | None:
        """The table as the last run saw it (None before a run found it)."""
        return self._table

    def ensure_properties(self) -> int:
        """Set the properties of the table's kind (:data:`MAINTAINED_TABLES`) it lacks (a table
        made before them); how many. Setting them twice at once is harmless (same values)."""
        missing = {name: value for name, value in self.properties.items()
                   if self._table.metadata.properties.get(name) != value}
        if missing:
            with self._table.transaction() as transaction:
                transaction.set_properties(missing)
            log.info("event=iceberg_properties_set properties=%s", ",".join(sorted(missing)))
        return len(missing)

    def compact(self, result: MaintenanceResult) -> None:
        """Merge each day partition's small data files, by the local store's policy
        (:func:`dlrlens.store.compaction.choose_merge`: a settled day into one file, an active one
        by size tiers), each merge one catalog commit that replaces its inputs by one sorted file
        with the same rows (written like the local compaction's outputs, lineage included).
        A merge whose inputs another maintainer replaced first is refused (pyiceberg validates
        that the files it removes are still there) and dropped: no row is ever doubled.

        Files that ``dlrlens migrate`` added are left as they are: they are the local store's
        compacted files already, and the migration's snapshots, which expiry keeps, would keep
        a replaced one alive beside its replacement for ever."""
        table = self._fresh_table()
        now = self.clock()
        migrated = {snapshot.snapshot_id for snapshot in table.metadata.snapshots
                    if snapshot.summary is not None and SOURCE_KEY in snapshot.summary.additional_properties}
        for files in self._live_data_files(table).values():
            names = {cached_name(f.file_path): (f, added) for f, added, by in files if by not in migrated}
            sizes = {name: (f.file_size_in_bytes, added) for name, (f, added) in names.items()}
            chosen = compaction.choose_merge(sizes, now=now, min_age_seconds=COMPACT_MIN_AGE_SECONDS,
                                             settle_seconds=compaction.SETTLE_SECONDS)
            if len(chosen) < 2:
                continue
            if self._rewrite(table, [names[name][0] for name in chosen]):
                result.files_compacted += len(chosen)
                result.compaction_outputs += 1
            else:
                result.conflicts += 1
            table = self._fresh_table()

    def _live_data_files(self, table: Table) -> dict[object, list[tuple[DataFile, float, int]]]:
        """The current snapshot's data files by partition, each with when it was committed (epoch
        seconds; 0 when the snapshot that added it has expired: long ago) and by which snapshot."""
        snapshot = table.current_snapshot()
        if snapshot is None:
            return {}
        committed = {s.snapshot_id: s.timestamp_ms / 1000 for s in table.metadata.snapshots}
        by_partition: dict[object, list[tuple[DataFile, float, int]]] = {}
        for entry in live_data_entries(table, snapshot):
            by_partition.setdefault(tuple(entry.data_file.partition), []).append(
                (entry.data_file, committed.get(entry.snapshot_id, 0.0), entry.snapshot_id))
        return by_partition

    def _rewrite(self, table: Table, inputs: list[DataFile]) -> bool:
        """Replace ``inputs`` (one partition's) by their merge in one commit; False when another
        writer replaced or removed them first."""
        io = table.io
        with tempfile.TemporaryDirectory(prefix="dlrlens-iceberg-compact-", dir=self.work_dir) as scratch:
            partition = Path(scratch) / "partition"
            partition.mkdir()
            for data_file in inputs:
                with io.new_input(data_file.file_path).open() as remote, \
                        open(partition / cached_name(data_file.file_path), "wb") as local:
                    shutil.copyfileobj(remote, local, COPY_CHUNK)
            receipts = self.table_name == RECEIPTS_TABLE
            merged, rows = compaction.merge_files(
                sorted(partition.iterdir()), Path(scratch) / "spill",
                arrow_schema_with_field_ids(layout.TABLES[self.table_name].schema),
                compaction.sort_keys(self.table_name), None if receipts else compaction.EVENT_WRITER_OPTIONS)
            if rows != sum(f.record_count for f in inputs):
                raise RuntimeError(f"compaction merged {rows} rows of {sum(f.record_count for f in inputs)}")
            # Beside its inputs, named like the local compaction's outputs (the mirror keys on it).
            target = f"{inputs[0].file_path.rsplit('/', 1)[0]}/{compaction.OUTPUT_PREFIX}{uuid.uuid4().hex}.parquet"
            with open(merged, "rb") as local, io.new_output(target).create() as remote:
                shutil.copyfileobj(local, remote, COPY_CHUNK)
        output = parquet_file_to_data_file(io, table.metadata, target)
        try:
            with table.transaction() as transaction:
                properties = {COMPACTED_KEY: str(len(inputs))}
                with transaction.update_snapshot(snapshot_properties=properties).overwrite() as rewrite:
                    for data_file in inputs:
                        rewrite.delete_data_file(data_file)
                    rewrite.append_data_file(output)
        except (CommitFailedException, ValidationException) as exc:
            # Certainly not committed (pyiceberg says so of these two): the output is no one's.
            log.info("event=iceberg_compaction_conflict files=%d error=%r", len(inputs), str(exc).splitlines()[0][:200])
            io.delete(target)
            return False
        log.info("event=iceberg_compacted files=%d rows=%d bytes_before=%d bytes_after=%d", len(inputs), rows,
                 sum(f.file_size_in_bytes for f in inputs), output.file_size_in_bytes)
        return True

    def expire(self, result: MaintenanceResult) -> None:
        """Remove the snapshots superseded longer ago than the retention (:func:`expirable_snapshots`),
        :data:`EXPIRE_BATCH` per commit, retrying a refused commit on fresh metadata."""
        superseded_before_ms = int((self.clock() - self.retention_seconds) * 1000)
        attempt = 0
        while True:
            table = self._fresh_table()
            expirable, kept = expirable_snapshots(table.metadata, superseded_before_ms)
            result.kept_for_migration, result.kept_for_step1_slots = kept["migration"], kept["step1_slot"]
            if not expirable:
                return
            chunk = expirable[:EXPIRE_BATCH]
            try:
                table.maintenance.expire_snapshots().by_ids(chunk).commit()
            except (CommitFailedException, ValueError) as exc:
                # Another maintainer removed some of them first (the SQL catalog says ValueError:
                # it applies the removal to its current metadata), or the table moved meanwhile.
                result.conflicts += 1
                attempt += 1
                if attempt >= CONFLICT_ATTEMPTS:
                    raise
                log.info("event=iceberg_expiry_conflict attempt=%d error=%r", attempt, str(exc).splitlines()[0][:200])
                time.sleep(random.uniform(0.05, 0.3) * attempt)
                continue
            attempt = 0
            result.expired_snapshots += len(chunk)

    def remove_orphan_files(self, result: MaintenanceResult) -> None:
        """Delete the files under the table's location that nothing retained references and that
        are older than the grace (see the module docstring)."""
        started = self.clock()
        filesystem, listed = table_files(self._table)
        result.objects = len(listed)
        result.object_bytes = sum(info.size or 0 for info in listed)
        result.by_kind = count_by_kind(listed)
        # References as of after the listing: a file listed then committed is referenced here.
        table = self._fresh_table()
        referenced = self._referenced(table)
        cutoff = started - self.orphan_grace_seconds
        for info in listed:
            if info.path in referenced or derived.companion_of(info.path) in referenced:
                continue  # a derived data file's companion lives as long as it does
            if info.mtime is None or info.mtime.timestamp() >= cutoff:
                result.orphans_waiting += 1
                continue
            try:
                filesystem.delete_file(info.path)
            except FileNotFoundError:
                continue  # another maintainer got there first
            result.orphans_deleted += 1
            result.orphan_bytes_deleted += info.size or 0
        if result.orphans_deleted:
            log.info("event=iceberg_orphans_deleted files=%d bytes=%d", result.orphans_deleted,
                     result.orphan_bytes_deleted)

    def _path(self, table: Table, uri: str) -> str:
        return table.io.parse_location(uri, table.io.properties)[2]

    def _referenced(self, table: Table) -> set[str]:
        """Every file the table's metadata references (as listed paths): metadata files of the
        log, manifest lists, manifests and the live data files of every retained snapshot,
        statistics. A manifest's entry marking a file deleted does not count: the file is live in
        the snapshot before, which references it itself while it is retained."""
        metadata = table.metadata
        uris = {table.metadata_location, *(entry.metadata_file for entry in metadata.metadata_log)}
        uris.update(stats.statistics_path for stats in metadata.statistics)
        uris.update(stats.statistics_path for stats in metadata.partition_statistics)
        lists: set[str] = set()
        manifests: set[str] = set()
        for snapshot in metadata.snapshots:
            if snapshot.manifest_list not in self._manifest_lists:
                found = snapshot.manifests(table.io)
                self._manifest_lists[snapshot.manifest_list] = tuple(m.manifest_path for m in found)
                for manifest in found:
                    if manifest.manifest_path not in self._manifests:
                        self._manifests[manifest.manifest_path] = tuple(
                            entry.data_file.file_path
                            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True))
            lists.add(snapshot.manifest_list)
            manifests.update(self._manifest_lists[snapshot.manifest_list])
        for manifest in manifests:
            uris.update(self._manifests[manifest])
        uris |= lists | manifests
        # Forget what no retained snapshot references any more (it never will again).
        self._manifest_lists = {path: value for path, value in self._manifest_lists.items() if path in lists}
        self._manifests = {path: value for path, value in self._manifests.items() if path in manifests}
        return {self._path(table, uri) for uri in uris}


class DerivedPublisher:
    """One collector's share of the derived table (:mod:`dlrlens.store.iceberg.derived`): its own
    mirror of the receipts table under ``data_dir`` (the cache a reader on that directory
    uses), whose derived state each :meth:`run` brings up to date and commits, or adopts from
    the table when another maintainer committed first."""

    MAX_UPDATES = 100  # update_derived rounds per run (each at most derive.MAX_BATCH_ROWS receipts)

    def __init__(self, catalog_name: str, data_dir: Path):
        self.catalog_name = catalog_name
        self.committer = collector_id(data_dir)
        self.mirror = Mirror(catalog_name, cache_dir(Path(data_dir), catalog_name))

    def run(self) -> dict:
        """Sync the mirror, absorb every receipt file of it, adopt the table's state if it does
        not build on it, commit. What was done, as a dict (``refused``: another maintainer
        committed first; the next run adopts its state)."""
        started = time.perf_counter()
        sync = self.mirror.sync()
        if sync["snapshot"] is None:
            return {"skipped": "no receipts table"}
        backlog = self._absorb()
        if backlog:
            return {"skipped": "backlog", "backlog_files": backlog}
        root = self.mirror.root
        catalog = open_catalog(self.catalog_name)
        table = derived.derived_table(catalog)
        committed = derived.committed_state(table) if table is not None else None
        state = derived.CommitState.load(root)
        adopted = sync["adopted"]  # a mirror on an empty cache adopts as any reader's does
        replacing = None
        if committed is not None and (state is None or not state.builds_on(committed)):
            try:
                adopted = self.mirror.adopt(table, committed)
            except derived.AdoptionError as exc:
                log.warning("event=derived_state_not_adopted error=%r", str(exc))
                replacing = committed.snapshot_id  # the commit replaces that state whole
            else:
                backlog = self._absorb()
                if backlog:
                    return {"adopted": adopted, "skipped": "backlog", "backlog_files": backlog}
        outcome = derived.commit(catalog, root, self.committer, receipts_snapshot=self.mirror.receipts_snapshot,
                                 receipts_sequence=self.mirror.receipts_sequence, probe=self.mirror.probe,
                                 replacing=replacing, events_sequences=self.mirror.events_sequences)
        return {**asdict(outcome), "adopted": adopted, "receipts_snapshot": self.mirror.receipts_snapshot,
                "seconds": round(time.perf_counter() - started, 3)}

    def _absorb(self) -> int:
        """Absorb the mirror's receipt files; how many are left (0 unless there were too many)."""
        left = 0
        for _ in range(self.MAX_UPDATES):
            left = derive.update_derived(self.mirror.root, wait=True).get("backlog_files", 0)
            if not left:
                break
        return left
