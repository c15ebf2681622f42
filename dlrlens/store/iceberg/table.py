"""The Iceberg catalog and the receipts table.

The table ``<namespace>.receipts`` (namespace ``DLRLENS_ICEBERG_NAMESPACE``, default ``dlrlens``)
holds exactly the local contract's columns (:data:`dlrlens.store.layout.RECEIPT_SCHEMA`, field
ids 1..n in that order, required where the contract says not null), partitioned by the UTC day
of ``created`` (Iceberg's ``day`` transform: the same days as the local ``date=`` folders).
It is created on first use by whichever process gets there first (a second creator finds it).

Idempotent commits: every commit dlrlens makes records what it holds in its snapshot summary,
under :data:`SEGMENT_KEY` (a collector's log segment) or :data:`SOURCE_KEY` (a file copied by
``dlrlens migrate``). Before committing, a writer reads the keys of every snapshot of the
table (:func:`committed_keys`) and skips what is already there. This relies on snapshots
being kept: snapshot expiry (not part of step 1) must keep them longer than the oldest
segment a collector can still replay. ``dlrlens migrate`` records the files of a batch in one
value, one per line (:data:`SOURCE_SEPARATOR`).

REST catalogs are opened as :class:`RestCatalog`: pyiceberg's, with a timeout on every request
and, when requests are signed (SigV4), the payload hash that SeaweedFS's catalog needs.
"""

from __future__ import annotations

import hashlib
import os

import pyarrow as pa
from pyiceberg.catalog import PY_CATALOG_IMPL, Catalog, CatalogType, infer_catalog_type, load_catalog
from pyiceberg.catalog.rest import SIGV4
from pyiceberg.catalog.rest import RestCatalog as PyIcebergRestCatalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.transforms import DayTransform
from pyiceberg.types import IntegerType, NestedField, StringType, TimestamptzType
from pyiceberg.utils.config import Config
from pyiceberg.utils.properties import property_as_bool
from requests import Session
from requests.adapters import HTTPAdapter

from dlrlens.store import layout

NAMESPACE_ENV = "DLRLENS_ICEBERG_NAMESPACE"
DEFAULT_NAMESPACE = "dlrlens"
RECEIPTS_TABLE = "receipts"
SEGMENT_KEY = "dlrlens.segment"   # <collector id>/<slot>/<segment id>: one flushed log segment
SOURCE_KEY = "dlrlens.source"     # migrate: <source id>/<receipt file relative to its data directory>, per line
SOURCE_SEPARATOR = "\n"          # a summary value may list several keys, one per line (no key holds one)
PARTITION_NAME = "created_day"
# (connect, read) seconds of each request to a REST catalog: a commit answers in well under a
# second on a healthy catalog; the collector retries a failed commit with back-off.
REST_TIMEOUT = (5, 60)

_TYPES = {pa.string(): StringType(), layout.UTC_TIMESTAMP: TimestamptzType(), pa.int32(): IntegerType()}


def receipt_schema() -> Schema:
    """:data:`~dlrlens.store.layout.RECEIPT_SCHEMA` as an Iceberg schema (field ids 1..n)."""
    return Schema(*(NestedField(field_id=number, name=f.name, field_type=_TYPES[f.type], required=not f.nullable)
                    for number, f in enumerate(layout.RECEIPT_SCHEMA, start=1)))


def receipt_partitioning(schema: Schema) -> PartitionSpec:
    created = schema.find_field("created").field_id
    return PartitionSpec(PartitionField(source_id=created, field_id=1000, transform=DayTransform(),
                                        name=PARTITION_NAME))


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
    identifier = (namespace(), RECEIPTS_TABLE)
    try:
        return catalog.load_table(identifier)
    except NoSuchTableError:
        if not create:
            raise
    # Several collectors may get here at once: the loser of a race finds what the winner made
    # (a SQL catalog reports the race as an integrity error, not as "already exists").
    try:
        catalog.create_namespace(identifier[0])
    except Exception:
        if not catalog.namespace_exists(identifier[0]):
            raise
    schema = receipt_schema()
    try:
        return catalog.create_table(identifier, schema=schema, partition_spec=receipt_partitioning(schema))
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
    for snapshot in table.metadata.snapshots:
        if snapshot.snapshot_id not in seen:
            summary = snapshot.summary
            seen[snapshot.snapshot_id] = summary.additional_properties.get(key) if summary is not None else None
    return {each for value in seen.values() if value is not None for each in value.split(SOURCE_SEPARATOR)}


def arrow_receipts(table: pa.Table) -> pa.Table:
    """Receipt rows cast to the contract schema (what an append expects)."""
    return table.select(layout.RECEIPT_SCHEMA.names).cast(layout.RECEIPT_SCHEMA)

