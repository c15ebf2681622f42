"""The Iceberg catalog and the collector's tables: receipts, clicks and replies.

The tables ``<namespace>.receipts``, ``<namespace>.clicks`` and ``<namespace>.replies``
(:data:`WRITTEN_TABLES`; namespace ``DLRLENS_ICEBERG_NAMESPACE``, default ``dlrlens``) hold
exactly the local contract's columns of that table (:data:`dlrlens.store.layout.TABLES`: the
schema's field ids 1..n in its order, required where the contract says not null), partitioned
by the UTC day of the table's day column (``created`` for receipts and replies, ``received_at``
for clicks; Iceberg's ``day`` transform: the same days as the local ``date=`` folders).
Each is created on first use by whichever process gets there first (a second creator finds it),
with :data:`TABLE_PROPERTIES` (kept bounded: manifests merged, old metadata files deleted;
compaction conflicts only with what removes its inputs).

Idempotent commits (each table on its own): every commit dlrlens makes records what it holds in its snapshot summary,
under :data:`SEGMENT_KEY` (log segments of one collector slot: ``<collector>/<slot>/<id>[,<id>...]``)
or :data:`SOURCE_KEY` (a file copied by ``dlrlens migrate``).

The contract that lets snapshots expire without breaking exactly-once (see
:mod:`dlrlens.store.iceberg.maintain`), per table: a collector's log slot
(``<collector id>/<slot>``) is written by one process at a time (the slot's lock), which commits
its segments oldest first and deletes a segment from its log only once every table holds its
rows. Each commit of a slot's segments to a table sets, in the same catalog commit as the
append, the table property ``dlrlens.committed.<collector>/<slot> = <id>,<id>,...``
(:func:`committed_property`) to the ids of the slot's segments that the table holds and its
log may still hold: the segments of that commit, plus those of the slot's earlier commits to
the table still in the log (a crash between a segment's commits to the three tables leaves it
there until its replay is through: :mod:`dlrlens.store.iceberg.publisher`). So at any time
every segment of a slot that is both in a table and still in a log is named by that table's
property: it survives snapshot expiry, and it is what :func:`committed_segments` reads (one dictionary lookup, not a walk over the snapshots). Only a
slot without that property (committed by step 1, before it existed) falls back to the
summaries of the snapshots, which expiry therefore keeps
(:func:`dlrlens.store.iceberg.maintain.expirable_snapshots`). Migration keys live only in
summaries: expiry keeps the snapshots that carry them (one per migrated file, made once).
``dlrlens migrate`` records the files of a batch in one value, one per line
(:data:`SOURCE_SEPARATOR`).

REST catalogs are opened as :class:`RestCatalog`: pyiceberg's, with a timeout on every request
and, when requests are signed (SigV4), the payload hash that SeaweedFS's catalog needs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.catalog import PY_CATALOG_IMPL, Catalog, CatalogType, infer_catalog_type, load_catalog
from pyiceberg.catalog.rest import SIGV4
from pyiceberg.catalog.rest import RestCatalog as PyIcebergRestCatalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.io.pyarrow import parquet_file_to_data_file
from pyiceberg.manifest import DataFile, DataFileContent, ManifestEntry
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.transforms import DayTransform
from pyiceberg.types import DoubleType, IntegerType, LongType, NestedField, StringType, TimestamptzType
from pyiceberg.utils.config import Config
from pyiceberg.utils.properties import property_as_bool
from requests import Session
from requests.adapters import HTTPAdapter

from dlrlens.store import layout

NAMESPACE_ENV = "DLRLENS_ICEBERG_NAMESPACE"
DEFAULT_NAMESPACE = "dlrlens"
RECEIPTS_TABLE = "receipts"
CLICKS_TABLE = "clicks"
REPLIES_TABLE = "replies"
# The tables the collectors append to, in the order a flush commits a segment's rows to them.
WRITTEN_TABLES = (RECEIPTS_TABLE, CLICKS_TABLE, REPLIES_TABLE)
SEGMENT_KEY = "dlrlens.segment"   # <collector id>/<slot>/<segment id>[,<segment id>...]: flushed log segments
SOURCE_KEY = "dlrlens.source"     # migrate: <source id>/<receipt file relative to its data directory>, per line
SOURCE_SEPARATOR = "\n"          # a summary value may list several keys, one per line (no key holds one)
COMMITTED_PREFIX = "dlrlens.committed."  # table property: + <collector id>/<slot> = the slot's last commit
# Set when the table is created (and on older tables by the maintenance): what keeps its metadata
# bounded without a job of its own. Fast appends would add one manifest per commit to every later
# snapshot's manifest list (tens of thousands a day); merge appends fold them once 20 have piled
# up. Every commit writes a whole new metadata file: the committer deletes those older than the
# 20 the metadata log keeps (a reader loads the newest, so 20 commits are ample).
TABLE_PROPERTIES = {
    "commit.manifest-merge.enabled": "true",
    "commit.manifest.min-count-to-merge": "20",
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "20",
    # The maintenance's compaction replaces files by one holding the same rows: it conflicts only
    # with a commit that removed those files, not with the collectors' appends meanwhile (under
    # the default, serializable, every append would make it start over).
    "write.delete.isolation-level": "snapshot",
}



class _RaceLostMetadataDeletes(logging.Filter):
    """With ``write.metadata.delete-after-commit.enabled`` each committer deletes the metadata
    files that fell out of the metadata log; with several committers the one that retried on
    fresh metadata also tries those the other already deleted, and pyiceberg warns for each
    (several lines a commit with busy collectors). Demoted to debug: a file that really could
    not be deleted is unreferenced, and the orphan-file cleanup deletes it (visibly) later."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and record.getMessage().startswith("Failed to delete metadata file"):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


logging.getLogger("pyiceberg.catalog").addFilter(_RaceLostMetadataDeletes())
# (connect, read) seconds of each request to a REST catalog: a commit answers in well under a
# second on a healthy catalog; the collector retries a failed commit with back-off.
REST_TIMEOUT = (5, 60)

_TYPES = {pa.string(): StringType(), layout.UTC_TIMESTAMP: TimestamptzType(), pa.int32(): IntegerType(),
          pa.int64(): LongType(), pa.float64(): DoubleType()}


def iceberg_schema(schema: pa.Schema) -> Schema:
    """A flat Arrow schema of the local contract as an Iceberg schema (field ids 1..n in its
    order, required where the contract says not null)."""
    return Schema(*(NestedField(field_id=number, name=f.name, field_type=_TYPES[f.type], required=not f.nullable)
                    for number, f in enumerate(schema, start=1)))


def table_schema(name: str = RECEIPTS_TABLE) -> Schema:
    """The contract schema of table ``name`` (:data:`~dlrlens.store.layout.TABLES`) as an
    Iceberg schema (field ids 1..n)."""
    return iceberg_schema(layout.TABLES[name].schema)


def receipt_schema() -> Schema:
    """:data:`~dlrlens.store.layout.RECEIPT_SCHEMA` as an Iceberg schema (field ids 1..n)."""
    return table_schema(RECEIPTS_TABLE)


def day_partitioning(schema: Schema, name: str = RECEIPTS_TABLE) -> PartitionSpec:
    """Table ``name``'s partitioning: the UTC day of its day column (``<column>_day``)."""
    column = layout.TABLES[name].day_column
    return PartitionSpec(PartitionField(source_id=schema.find_field(column).field_id, field_id=1000,
                                        transform=DayTransform(), name=f"{column}_day"))


def namespace() -> str:
    return os.environ.get(NAMESPACE_ENV) or DEFAULT_NAMESPACE


def check_configured(name: str) -> None:
    """Raise ValueError naming what to set when catalog ``name`` is not configured (without
    contacting it: it may be down while a collector starts)."""
    if not Config().get_catalog_config(name):
        open_catalog(name)  # raises the explanatory ValueError


def open_catalog(name: str) -> Catalog:
    """The pyiceberg catalog ``name``, configured in ``.pyiceberg.yaml`` or by
    ``PYICEBERG_CATALOG__<NAME>__*`` variables, read now (pyiceberg itself reads them once, when
    first imported)."""
    properties = Config().get_catalog_config(name)
    if not properties:
        raise ValueError(f"no Iceberg catalog named {name!r} is configured: describe it in .pyiceberg.yaml "
                         f"(catalog: {name}: ...) or with PYICEBERG_CATALOG__{name.upper()}__* variables")
    flat = {key: str(value) for key, value in properties.items() if not isinstance(value, dict)}
    if PY_CATALOG_IMPL not in flat and infer_catalog_type(name, flat) == CatalogType.REST:
        return RestCatalog(name, **flat)
    return load_catalog(name, **flat)


class _CatalogRequests(HTTPAdapter):
    """What dlrlens adds to every request of a REST catalog (in front of pyiceberg's own
    adapter, which may sign the request): a timeout, and the payload hash when signing.

    * pyiceberg's REST client sets no timeout: a catalog that accepts connections and never
      answers would hold a collector's flush (and its backlog) for ever.
    * With SigV4 signing (``rest.sigv4-enabled``), pyiceberg 0.12 signs a request body without
      the ``x-amz-content-sha256`` header. SeaweedFS's catalog then refuses every request with a
      body (creating a namespace or table, committing: 403, "The request signature we
      calculated does not match", measured with ``weed`` 4.48), as a signer must send that
      header to S3-style servers; Iceberg's Java and Go clients send it. Sent here before
      pyiceberg signs, so the signature covers it.
    """

    def __init__(self, inner: HTTPAdapter, hash_payloads: bool):
        super().__init__()
        self.inner, self.hash_payloads = inner, hash_payloads

    def send(self, request, **kwargs):
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = REST_TIMEOUT
        if self.hash_payloads and request.body:
            body = request.body.encode() if isinstance(request.body, str) else request.body
            request.headers["x-amz-content-sha256"] = hashlib.sha256(body).hexdigest()
        return self.inner.send(request, **kwargs)

    def close(self):
        self.inner.close()
        super().close()


class RestCatalog(PyIcebergRestCatalog):
    """pyiceberg's REST catalog with timeouts and hashed signed payloads (:class:`_CatalogRequests`)."""

    def _create_session(self) -> Session:
        session = super()._create_session()
        signing = property_as_bool(self.properties, SIGV4, False)
        session.mount(self.uri, _CatalogRequests(session.get_adapter(self.uri), hash_payloads=signing))
        return session


def receipts_table(catalog: Catalog, create: bool = True) -> Table:
    """The receipts table, created (with its namespace) when missing and ``create``."""
    return written_table(catalog, RECEIPTS_TABLE, create)


def written_table(catalog: Catalog, name: str, create: bool = True) -> Table:
    """Table ``name`` of :data:`WRITTEN_TABLES`, created (with its namespace) when missing and ``create``."""
    if name not in WRITTEN_TABLES:
        raise ValueError(f"dlrlens writes the tables {', '.join(WRITTEN_TABLES)}, not {name!r}")
    schema = table_schema(name)
    return namespaced_table(catalog, name, create, lambda: dict(
        schema=schema, partition_spec=day_partitioning(schema, name), properties=TABLE_PROPERTIES))


def namespaced_table(catalog: Catalog, name: str, create: bool, arguments) -> Table:
    """Table ``name`` of the namespace (:func:`namespace`); when missing and ``create``, made by
    :func:`create_table` with ``arguments()``; else NoSuchTableError."""
    identifier = (namespace(), name)
    try:
        return catalog.load_table(identifier)
    except NoSuchTableError:
        if not create:
            raise
    return create_table(catalog, identifier, **arguments())


def ensure_namespace(catalog: Catalog, name: str) -> None:
    """Create namespace ``name`` unless it exists (another process may create it meanwhile)."""
    try:
        catalog.create_namespace(name)
    except Exception:
        if not catalog.namespace_exists(name):
            raise


def create_table(catalog: Catalog, identifier: tuple[str, str], **arguments) -> Table:
    """Create table ``identifier`` (and its namespace) with pyiceberg's ``create_table``
    ``arguments``. Several processes may get here at once: the loser of the race finds what the
    winner made (a SQL catalog reports the race as an integrity error, not as "already exists");
    the creation's error is raised when there is no table after it."""
    ensure_namespace(catalog, identifier[0])
    try:
        return catalog.create_table(identifier, **arguments)
    except Exception as exc:
        try:
            return catalog.load_table(identifier)
        except NoSuchTableError:
            raise exc from None


def committed_keys(table: Table, key: str, seen: dict[int, str | None] | None = None) -> set[str]:
    """Values of summary property ``key`` over every snapshot of ``table`` (as loaded); a value
    listing several, one per line (:data:`SOURCE_SEPARATOR`), counts each.

    ``seen`` (snapshot id -> value), kept by the caller between calls, saves re-reading the
    summaries of snapshots already looked at."""
    seen = {} if seen is None else seen
    current = set()
    for snapshot in table.metadata.snapshots:
        current.add(snapshot.snapshot_id)
        if snapshot.snapshot_id not in seen:
            summary = snapshot.summary
            seen[snapshot.snapshot_id] = summary.additional_properties.get(key) if summary is not None else None
    for expired in [snapshot_id for snapshot_id in seen if snapshot_id not in current]:
        del seen[expired]  # a long-lived caller's memory follows the table's, not its history
    return {each for value in seen.values() if value is not None for each in value.split(SOURCE_SEPARATOR)}


def segment_value(slot_key: str, segment_ids: list[str]) -> str:
    """The :data:`SEGMENT_KEY` summary value of a commit of ``segment_ids`` of ``slot_key``
    (``<collector>/<slot>``)."""
    return f"{slot_key}/{','.join(segment_ids)}"


def parse_segment_value(value: str) -> tuple[str, list[str]]:
    """(``<collector>/<slot>``, segment ids) of a :data:`SEGMENT_KEY` summary value."""
    slot_key, _, ids = value.rpartition("/")
    return slot_key, ids.split(",")


def committed_property(slot_key: str) -> str:
    """The table property holding the ids of slot ``slot_key``'s last commit."""
    return COMMITTED_PREFIX + slot_key


def committed_segments(table: Table, slot_key: str, seen: dict[int, str | None] | None = None) -> set[str]:
    """Ids of the segments of slot ``slot_key`` (``<collector>/<slot>``) that the table holds
    and that a log may still hold (see the module docstring): the slot's
    :func:`committed_property`; without it (a slot committed only before the property
    existed, or never), the ids in the summaries of the table's snapshots (``seen`` as for
    :func:`committed_keys`)."""
    recorded = table.metadata.properties.get(committed_property(slot_key))
    if recorded is not None:
        return set(recorded.split(",")) if recorded else set()
    found: set[str] = set()
    for value in committed_keys(table, SEGMENT_KEY, seen):
        owner, ids = parse_segment_value(value)
        if owner == slot_key:
            found.update(ids)
    return found


def live_data_entries(table: Table, snapshot=None) -> list[ManifestEntry]:
    """The manifest entries of the data files ``snapshot`` (default: the current one) holds,
    each with the snapshot that added its file and its data sequence number (the commit's
    place in the table's history: a file with a sequence number at most a snapshot's was in
    that snapshot, if it is still live). Raises ValueError on row-level delete files, which
    dlrlens neither writes nor reads."""
    snapshot = snapshot if snapshot is not None else table.current_snapshot()
    if snapshot is None:
        return []
    entries = []
    for manifest in snapshot.manifests(table.io):
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
            if entry.data_file.content != DataFileContent.DATA:
                raise ValueError(f"the table {'.'.join(table.name())} has row-level deletes, which dlrlens does not read")
            entries.append(entry)
    return entries


def arrow_schema_with_field_ids(schema: pa.Schema = layout.RECEIPT_SCHEMA) -> pa.Schema:
    """A contract schema (default: the receipts') with each column's Iceberg field id
    (:func:`iceberg_schema`) in the field metadata, which Parquet writers turn into field ids:
    how Iceberg readers (pyiceberg, Spark, Trino) match a data file's columns when the file was
    not written by pyiceberg."""
    return pa.schema([f.with_metadata({b"PARQUET:field_id": str(number).encode()})
                      for number, f in enumerate(schema, start=1)])


def upload_data_file(table: Table, rows: pa.Table, schema: pa.Schema, folder: str = "") -> DataFile:
    """``rows`` written as a new Parquet data file of ``table`` under ``<location>/data/<folder>``
    (zstd, with the field ids of ``schema``, a flat contract schema whose ids are 1..n in its
    order: :func:`arrow_schema_with_field_ids`), described for a commit; of a partitioned table,
    the rows must share one partition (read from the file's statistics). Not committed: the
    caller's commit adds it (or the orphan-file cleanup deletes it)."""
    uri = f"{table.metadata.location.rstrip('/')}/data/{folder}{uuid.uuid4().hex}.parquet"
    with table.io.new_output(uri).create() as remote:
        pq.write_table(rows.cast(arrow_schema_with_field_ids(schema)), remote, compression="zstd")
    return parquet_file_to_data_file(table.io, table.metadata, uri)


def arrow_rows(table: pa.Table, name: str = RECEIPTS_TABLE) -> pa.Table:
    """Rows of table ``name`` cast to its contract schema (what an append expects)."""
    schema = layout.TABLES[name].schema
    return table.select(schema.names).cast(schema)


def arrow_receipts(table: pa.Table) -> pa.Table:
    """Receipt rows cast to the contract schema (what an append expects)."""
    return arrow_rows(table, RECEIPTS_TABLE)

