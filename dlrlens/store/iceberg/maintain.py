"""Keeping the receipts table's metadata bounded: snapshot expiry and orphan-file cleanup.

Every flush of every collector worker is a commit, and every commit adds a snapshot (about 1 KB
in the table's metadata file, which each commit and each reader rewrites or reads whole), a
manifest list, a manifest and a metadata file to the object store. :class:`TableMaintenance`
keeps that bounded; each collector's maintenance process runs it
(:mod:`dlrlens.store.maintenance`, ``DLRLENS_ICEBERG_MAINTENANCE_SECONDS``). There is no
leader and no lock shared between machines: any number of maintainers may run at once, because

* **expiry** (:meth:`TableMaintenance.expire`) is an ordinary catalog commit made with
  pyiceberg's own ``table.maintenance.expire_snapshots()``: it removes the snapshots superseded
  longer ago than the retention (:func:`expirable_snapshots` says which), applied by the catalog to its current
  metadata, so it never undoes a collector's append. When another maintainer removed some of
  them first, the catalog refuses the commit; the maintainer reloads, chooses again and retries
  (a few times, then at its next run). Expiry keeps exactly-once intact whatever the retention:
  a collector decides what it already committed from the ``dlrlens.committed.<collector>/<slot>``
  table properties, which expiry never touches (the contract is in
  :mod:`dlrlens.store.iceberg.table`), so a segment replayed a week after a crash is still
  known. The snapshots it keeps whatever their age: the current one (and any branch or tag
  head: pyiceberg protects them), those recording a migrated file (``dlrlens migrate`` reads
  them; one per file, made once), and those of a slot committed only by step 1 (before the
  property existed), until that slot commits again.
* **orphan-file cleanup** (:meth:`TableMaintenance.remove_orphan_files`) lists the table's
  location, *then* loads the table's metadata, and deletes the files that no retained snapshot
  (nor the metadata log) references and that are older than the grace period. pyiceberg 0.12
  has no such operation (its expiry removes snapshots from the metadata, not their files), so
  this is written here. A file of a commit in flight is younger than the grace (a commit takes
  seconds; its data files are written just before), so it is never taken for an orphan; two
  maintainers deleting the same orphan is harmless (the second finds it gone).

The rest keeps itself bounded through the table's properties
(:data:`dlrlens.store.iceberg.table.TABLE_PROPERTIES`, which :meth:`TableMaintenance.run` sets
on a table made before them): manifests are merged by the committers (so a manifest list does
not grow by one entry per commit) and each committer deletes the metadata files older than the
last 20.

Data files are not compacted here: each commit adds one small data file per UTC day it holds,
and those stay referenced by the current snapshot (see the README's measured figures).
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, dataclass, field

from pyarrow import fs as pafs
from pyiceberg.exceptions import CommitFailedException, NoSuchTableError
from pyiceberg.io.pyarrow import PyArrowFileIO
from pyiceberg.table import Table
from pyiceberg.table.metadata import TableMetadata

from dlrlens.store.iceberg.table import (COMMITTED_PREFIX, SEGMENT_KEY, SOURCE_KEY, TABLE_PROPERTIES, open_catalog,
                                         parse_segment_value, receipts_table)

log = logging.getLogger("dlrlens.collector")

CONFLICT_ATTEMPTS = 4
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
    (``snap-*.avro``), manifest (other ``*.avro`` under ``metadata/``), data, or other."""
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
    return "other"


class TableMaintenance:
    """Expiry and orphan-file cleanup of catalog ``catalog_name``'s receipts table (see the module
    docstring). Keeps, between runs, what it read of immutable manifest lists and manifests."""

    def __init__(self, catalog_name: str, *, retention_seconds: float, orphan_grace_seconds: float, clock=time.time):
        if retention_seconds < 0:
            raise ValueError("the snapshot retention cannot be negative")
        if orphan_grace_seconds <= 0:
            raise ValueError("the orphan-file grace must be positive")
        self.catalog_name = catalog_name
        self.retention_seconds = retention_seconds
        self.orphan_grace_seconds = orphan_grace_seconds
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
        self.expire(result)
        self.remove_orphan_files(result)
        table = self._table
        result.snapshots = len(table.metadata.snapshots)
        with table.io.new_input(table.metadata_location).open() as metadata:
            result.metadata_bytes = len(metadata.read())
        result.seconds = round(time.perf_counter() - started, 3)
        return result.as_dict()

    def _fresh_table(self) -> Table | None:
        if self._table is None:
            try:
                self._table = receipts_table(open_catalog(self.catalog_name), create=False)
            except NoSuchTableError:
                return None
        else:
            self._table = self._table.refresh()
        return self._table

    def ensure_properties(self) -> int:
        """Set :data:`~dlrlens.store.iceberg.table.TABLE_PROPERTIES` the table lacks (a table made
        before them); how many. Setting them twice at once is harmless (same values)."""
        missing = {name: value for name, value in TABLE_PROPERTIES.items()
                   if self._table.metadata.properties.get(name) != value}
        if missing:
            with self._table.transaction() as transaction:
                transaction.set_properties(missing)
            log.info("event=iceberg_properties_set properties=%s", ",".join(sorted(missing)))
        return len(missing)

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
        table = self._table
        filesystem, root = self._filesystem(table)
        started = self.clock()
        listed = [info for info in filesystem.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
                  if info.type == pafs.FileType.File]
        result.objects = len(listed)
        result.object_bytes = sum(info.size or 0 for info in listed)
        kinds: dict[str, int] = {}
        for info in listed:
            kind = object_kind(info.path)
            kinds[kind] = kinds.get(kind, 0) + 1
        result.by_kind = kinds
        # References as of after the listing: a file listed then committed is referenced here.
        table = self._fresh_table()
        referenced = self._referenced(table)
        cutoff = started - self.orphan_grace_seconds
        for info in listed:
            if info.path in referenced:
                continue
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

    def _filesystem(self, table: Table) -> tuple[pafs.FileSystem, str]:
        io = table.io
        if not isinstance(io, PyArrowFileIO):
            raise RuntimeError(f"orphan-file cleanup lists the table's files through pyarrow, but this catalog's FileIO "
                               f"is {type(io).__name__}: set its py-io-impl to pyiceberg.io.pyarrow.PyArrowFileIO")
        scheme, netloc, root = io.parse_location(table.metadata.location, io.properties)
        return io.fs_by_scheme(scheme, netloc), root.rstrip("/")

    def _path(self, table: Table, uri: str) -> str:
        return table.io.parse_location(uri, table.io.properties)[2]

    def _referenced(self, table: Table) -> set[str]:
        """Every file the table's metadata references (as listed paths): metadata files of the
        log, manifest lists, manifests and data files of every retained snapshot, statistics."""
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
                            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=False))
            lists.add(snapshot.manifest_list)
            manifests.update(self._manifest_lists[snapshot.manifest_list])
        for manifest in manifests:
            uris.update(self._manifests[manifest])
        uris |= lists | manifests
        # Forget what no retained snapshot references any more (it never will again).
        self._manifest_lists = {path: value for path, value in self._manifest_lists.items() if path in lists}
        self._manifests = {path: value for path, value in self._manifests.items() if path in manifests}
        return {self._path(table, uri) for uri in uris}
