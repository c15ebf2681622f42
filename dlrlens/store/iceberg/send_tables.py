"""Mobivate's send records, its campaign list and imported campaign names as Iceberg tables:
the Iceberg store's counterpart of a data directory's ``sends/`` and ``campaigns/`` files
(:mod:`dlrlens.store.sends`).

Tables (in the namespace of the others, :func:`dlrlens.store.iceberg.table.namespace`), each
with exactly the local files' columns (:data:`KEYED_TABLES`):

* ``sends`` (:data:`~dlrlens.store.sends.SEND_SCHEMA`): partitioned by ``source`` and the UTC
  day of ``created``. A partition stands for one local day file,
  ``sends/<source>/YYYY-MM-DD.parquet``, and holds one data file.
* ``campaigns`` (Mobivate's campaign list) and ``campaign_names`` (names imported from a CSV):
  unpartitioned, one data file each (``campaigns/mobivate.parquet``, ``campaigns/imported.parquet``).

**Writers** (:class:`IcebergSends`: what ``dlrlens sync``, the collectors' periodic sync and a
names import store through on the Iceberg store; the same methods as
:class:`dlrlens.store.sends.LocalSends`). The records brought for a partition are merged with
the local files' rules (:func:`~dlrlens.store.sends.merge_sends`: one row per message id, the
latest ``modified`` wins, a taken row stamped ``changed_at``) into the rows the table's current
snapshot holds there, and every partition that changed gets a new data file in **one overwrite
commit based on that snapshot** (its old file out). Several collectors may sync the same
window at once: the tables' ``commit.retry.num-retries`` is 0, so the catalog refuses a commit
when another one landed since the snapshot it read, and the writer reads and merges again on
the new snapshot (up to :data:`COMMIT_ATTEMPTS` attempts, with back-off). A merge that changes
nothing commits nothing: syncing a window again, from any number of collectors, leaves the
tables as they are. A catalog or object store that fails raises (after the attempts, for a
refusal): the sync records the error and backs off (:func:`dlrlens.store.sends.periodic_sync`);
files uploaded for a commit that did not land are deleted (or left to the orphan cleanup).

The last sync's outcome (what ``sync.json`` says) is the ``sends`` table's property
:data:`SYNC_STATUS_PROPERTY`, so that every dashboard shows it.

**Readers**: :class:`~dlrlens.store.iceberg.mirror.Mirror` caches each partition as the local
file it stands for (:func:`cached_files`, :func:`write_cached`), where the reader and the
derived state read it as on a local store.

Imports neither app nor the command line.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.manifest import DataFile
from pyiceberg.partitioning import UNPARTITIONED_PARTITION_SPEC, PartitionField, PartitionSpec
from pyiceberg.table import Table
from pyiceberg.transforms import DayTransform, IdentityTransform

from dlrlens.store import files, sends
from dlrlens.store.iceberg.table import iceberg_schema, live_data_entries, namespaced_table, open_catalog, \
    upload_data_file

log = logging.getLogger("dlrlens.sync")

SENDS_TABLE = "sends"
CAMPAIGNS_TABLE = "campaigns"
NAMES_TABLE = "campaign_names"
SYNC_STATUS_PROPERTY = "dlrlens.sync-status"
WRITER_KEY = "dlrlens.send-records"  # snapshot summary: what the commit stored (table: partitions)
COMMIT_ATTEMPTS = 6
BACKOFF_SECONDS = 0.2  # doubled after each refusal (with jitter): 0.2 .. 3.2 s, ~6 s in all
EPOCH = date(1970, 1, 1)
TABLE_PROPERTIES = {
    # A commit refused because another landed first must stay refused: the writer merges again
    # on the new snapshot (pyiceberg's own retry would re-apply the stale merge).
    "commit.retry.num-retries": "0",
    "commit.manifest-merge.enabled": "true",
    "commit.manifest.min-count-to-merge": "20",
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "20",
}


@dataclass(frozen=True)
class KeyedTable:
    """One of the tables of this module: its name, the local files' schema, their merge rule and
    where a partition's rows live in a data directory."""

    name: str
    schema: pa.Schema
    merge: Callable[[pa.Table | None, list[dict]], tuple[pa.Table, bool]]
    cached: Callable[[tuple], str]  # partition (as in the table's data files) -> local relative path
    partitioned: bool = False

    def partition_spec(self) -> PartitionSpec:
        if not self.partitioned:
            return UNPARTITIONED_PARTITION_SPEC
        schema = iceberg_schema(self.schema)
        return PartitionSpec(
            PartitionField(source_id=schema.find_field("source").field_id, field_id=1000,
                           transform=IdentityTransform(), name="source"),
            PartitionField(source_id=schema.find_field("created").field_id, field_id=1001,
                           transform=DayTransform(), name="created_day"))

    def directory(self, partition: tuple) -> str:
        """The data files' folder under the table's ``data/`` for ``partition``."""
        if not self.partitioned:
            return ""
        source, day = partition
        return f"source={source}/created_day={day_text(day)}/"


def day_text(days_since_epoch: int) -> str:
    return date.fromordinal(EPOCH.toordinal() + int(days_since_epoch)).isoformat()


KEYED_TABLES = {
    SENDS_TABLE: KeyedTable(SENDS_TABLE, sends.SEND_SCHEMA, sends.merge_sends,
                            lambda partition: f"{sends.SENDS_DIR}/{partition[0]}/{day_text(partition[1])}.parquet",
                            partitioned=True),
    CAMPAIGNS_TABLE: KeyedTable(CAMPAIGNS_TABLE, sends.CAMPAIGN_SCHEMA, sends.merge_campaigns,
                                lambda partition: sends.MOBIVATE_CAMPAIGNS),
    NAMES_TABLE: KeyedTable(NAMES_TABLE, sends.NAME_SCHEMA, sends.merge_names,
                            lambda partition: sends.IMPORTED_NAMES),
}


def keyed_table(catalog: Catalog, name: str, create: bool = True) -> Table:
    """Table ``name`` of :data:`KEYED_TABLES`, created (with its namespace) when missing and
    ``create``; NoSuchTableError otherwise. A creator racing another finds what it made."""
    spec = KEYED_TABLES[name]
    return namespaced_table(catalog, name, create, lambda: dict(
        schema=iceberg_schema(spec.schema), partition_spec=spec.partition_spec(), properties=TABLE_PROPERTIES))


def partition_files(table: Table, snapshot=None) -> dict[tuple, list[DataFile]]:
    """The data files of ``snapshot`` (default: the current one) by partition (a tuple: ``()``
    for an unpartitioned table, ``(source, days since 1970-01-01)`` for ``sends``)."""
    found: dict[tuple, list[DataFile]] = {}
    for entry in live_data_entries(table, snapshot):
        found.setdefault(tuple(entry.data_file.partition), []).append(entry.data_file)
    for data_files in found.values():
        data_files.sort(key=lambda f: f.file_path)
    return found


def cached_files(table: Table, name: str, snapshot=None) -> dict[str, list[str]]:
    """{local relative path: the data file URIs it is made of} of ``snapshot`` of table ``name``."""
    spec = KEYED_TABLES[name]
    return {spec.cached(partition): [f.file_path for f in data_files]
            for partition, data_files in partition_files(table, snapshot).items()}


def read_rows(table: Table, name: str, uris: list[str]) -> pa.Table | None:
    """The rows of the data files ``uris`` of table ``name`` in the local schema, one per key:
    a partition holds one file; should it hold more (a writer outside dlrlens), the later files'
    rows are merged into the first's by the table's rule. None without files."""
    spec = KEYED_TABLES[name]
    merged = None
    for uri in uris:
        with table.io.new_input(uri).open() as stream:
            rows = pq.read_table(stream).select(spec.schema.names).cast(spec.schema)
        merged = rows if merged is None else spec.merge(merged, rows.to_pylist())[0]
    return merged


def write_cached(table: Table, name: str, uris: list[str], target: Path) -> None:
    """Publish the rows of ``uris`` (one partition of table ``name``) atomically as the local file ``target``."""
    rows = read_rows(table, name, uris)
    target.parent.mkdir(parents=True, exist_ok=True)
    files.publish_table(rows, target, compression="zstd")


def sync_status(table: Table) -> dict | None:
    """The last sync's outcome recorded with the ``sends`` table, or None."""
    value = table.metadata.properties.get(SYNC_STATUS_PROPERTY)
    try:
        return json.loads(value) if value else None
    except ValueError:
        return None


class IcebergSends:
    """Where a sync and a names import store on the Iceberg store of catalog ``catalog_name``
    (see the module docstring). Counts as :class:`dlrlens.store.sends.LocalSends` does: files
    (here partitions) changed."""

    def __init__(self, catalog_name: str, sleep: Callable[[float], None] = time.sleep):
        self.catalog_name = catalog_name
        self.sleep = sleep
        self._catalog: Catalog | None = None
        self.refusals = 0  # commits the catalog refused (another writer first), this object's life

    def store_rows(self, rows: list[dict]) -> int:
        by_partition = {(source, (day - EPOCH).days): day_rows
                        for (source, day), day_rows in sends.send_partitions(rows).items()}
        return self._store(SENDS_TABLE, by_partition)

    def store_campaigns(self, rows: list[dict]) -> int:
        return self._store(CAMPAIGNS_TABLE, {(): rows} if rows else {})

    def store_names(self, rows: list[dict]) -> int:
        return self._store(NAMES_TABLE, {(): rows} if rows else {})

    def record_status(self, status: dict) -> None:
        self._commit(SENDS_TABLE, lambda table: {}, {SYNC_STATUS_PROPERTY: json.dumps(status, sort_keys=True)})

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = open_catalog(self.catalog_name)
        return self._catalog

    def _store(self, name: str, by_partition: dict[tuple, list[dict]]) -> int:
        if not by_partition:
            return 0
        spec = KEYED_TABLES[name]

        def changes(table: Table) -> dict[tuple, tuple[pa.Table, list[DataFile]]]:
            current = partition_files(table)
            changed = {}
            for partition, rows in sorted(by_partition.items()):
                old = current.get(partition, [])
                merged, dirty = spec.merge(read_rows(table, name, [f.file_path for f in old]), rows)
                if dirty:
                    changed[partition] = (merged, old)
            return changed

        return self._commit(name, changes)

    def _commit(self, name: str, changes, properties: dict[str, str] | None = None) -> int:
        """Commit what ``changes(table)`` says ({partition: (its new rows, its old files)}) and
        ``properties`` in one commit based on the snapshot read; again on a refusal. Returns the
        partitions replaced."""
        spec = KEYED_TABLES[name]
        delay = BACKOFF_SECONDS
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            table = keyed_table(self.catalog, name)
            changed = changes(table)
            if not changed and not properties:
                return 0
            added: list[DataFile] = []
            try:
                for partition, (rows, _) in changed.items():
                    added.append(upload_data_file(table, rows, spec.schema, spec.directory(partition)))
                with table.transaction() as transaction:
                    if changed:
                        summary = {WRITER_KEY: f"{name}: {len(changed)}"}
                        with transaction.update_snapshot(snapshot_properties=summary).overwrite() as overwrite:
                            for _, old in changed.values():
                                for data_file in old:
                                    overwrite.delete_data_file(data_file)
                            for data_file in added:
                                overwrite.append_data_file(data_file)
                    if properties:
                        transaction.set_properties(properties)
            except (CommitFailedException, ValidationException) as exc:
                # Certainly not committed (pyiceberg says so of these two): the uploads are no one's.
                self._delete(table, [data_file.file_path for data_file in added])
                self.refusals += 1
                log.info("event=send_table_commit_refused table=%s attempt=%d error=%r", name, attempt,
                         str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
                if attempt == COMMIT_ATTEMPTS:
                    raise
                self.sleep(delay * (1 + random.random()))
                delay *= 2
                continue
            except BaseException:
                # Perhaps committed (a timeout after the catalog took it): the orphan-file cleanup
                # deletes what no snapshot references.
                self._catalog = None
                raise
            return len(changed)
        raise AssertionError("unreachable")

    @staticmethod
    def _delete(table: Table, uris: list[str]) -> None:
        for uri in uris:
            try:
                table.io.delete(uri)
            except Exception as exc:  # noqa: BLE001 - the orphan-file cleanup deletes it later
                log.warning("event=send_table_upload_not_deleted error=%r", f"{type(exc).__name__}: {str(exc)[:200]}")
