"""The derived per-message state as an Iceberg table, so that a reader with an empty cache does
not rebuild it (issue #10, step 2).

The table ``<namespace>.receipts_messages`` (:data:`DERIVED_TABLE`) holds the messages files of
:mod:`dlrlens.store.derive` as its data files, byte for byte as the derived state wrote them
(``<table location>/data/<committer>/sent=YYYY-MM-DD/<kind>-<ns>.parquet``). Its schema is
taken from the files, every column optional, and widened (``union_by_name``) when a newer
dlrlens writes files with more columns; files carry no field ids, so the table has a name
mapping (``schema.name-mapping.default``) and any Iceberg reader finds the columns by name.
Each data file's companions (``derived/<kind>/...`` for each kind of
:data:`dlrlens.store.derive.COMPANIONS`) are stored beside it, at
``<table location>/companions/<kind>/<committer>/sent=.../<name>`` (:func:`companion_uri`):
not Iceberg data (they are pre-aggregates of the data file, each kind with its own columns),
uploaded before the commit that adds their data file and kept by the orphan-file cleanup as
long as it (:func:`companion_of`). A reader downloads them rather than computing them:
measured at 1 M receipts, recomputing them (through ``derive``'s writer, which also rewrites
the messages file) took 8.3 of a 9.2-s cold open; see the README for the figures. A companion
kind the writer did not store (an older dlrlens) makes the reader compute that file's
companions itself, with ``derive``'s writer.

**What a snapshot means.** Every commit's summary records :data:`RECEIPTS_SEQUENCE_KEY`: the
sequence number of the receipts table's snapshot whose data files the state has absorbed,
all of them (and :data:`RECEIPTS_SNAPSHOT_KEY`, its id, for people). Iceberg gives each data
file the sequence number of the commit that added it and never changes it (merging manifests
keeps it), and the receipts table only ever loses files to compaction, which keeps their rows
in its output. So the receipt files absorbed are exactly the live files with a sequence number
at most that one: one number, however many files (a list would add 100 KB a snapshot at 1 M
receipts). A compaction output committed later is read again by whoever adopts the state:
the state is duplicate-insensitive (``derive``'s docstring), so the figures do not change.
The clicks and replies tables likewise: :data:`EVENTS_SEQUENCE_KEY` records, per table, the
sequence number of its snapshot whose data files the state has absorbed, all of them (those
tables only ever gain files: nothing compacts them). A state committed without it (an older
dlrlens) says nothing of events: its adopter absorbs every cached event file again, which
changes nothing for those it held.
Also recorded: the writer's :func:`dlrlens.store.derive.hash_probe` (``id_hash`` is DuckDB's
``hash``: a reader whose DuckDB hashes differently does not adopt, it rebuilds) and
:data:`dlrlens.store.derive.FORMAT` and the opt-out keywords replies were matched with (a
reader with other keywords rebuilds).

**Who commits** (:func:`commit`, driven by :class:`dlrlens.store.iceberg.maintain.DerivedPublisher`
in each collector's maintenance process): a maintainer keeps its own mirror of the receipts
table with its own derived state, and remembers in ``derived-commit.json`` beside it
(:class:`CommitState`) which snapshot of this table its state builds on and which of its
messages files is which data file. Each round it absorbs every receipt file of its mirror, then
commits one overwrite: the data files its updates replaced go, its new files come, based on that
snapshot. The table's ``commit.retry.num-retries`` is 0, so when another maintainer committed
first the catalog refuses the commit (the snapshot it builds on is no longer the table's) and
pyiceberg does not re-apply it on top of the winner's (which would hold both maintainers'
rewrites of the same messages): the loser deletes what it uploaded and adopts the winner's
state, then commits what it absorbed beyond it. No leader, no lock: the catalog's
compare-and-swap decides. A state that cannot be adopted (written by a DuckDB that hashes
differently, another derived format, or missing columns this dlrlens stores) is replaced
whole by the next commit.

**Who adopts** (:func:`adopt`): a reader (:class:`dlrlens.store.iceberg.mirror.Mirror`) with no
derived state, or with more than :data:`ADOPT_MIN_ROWS` receipt rows to absorb that the
committed state already holds, and a maintainer that lost a race. It downloads the committed
messages files it does not hold already, with their companions, and writes a local manifest whose absorbed files are its cached receipt
files with a sequence number at most the recorded one (and its cached click and reply files at
most their table's recorded one); :func:`dlrlens.store.derive.update_derived`
then absorbs the rest as usual.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import CommitFailedException, NoSuchTableError, ValidationException
from pyiceberg.io.pyarrow import parquet_file_to_data_file
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table, TableProperties

from dlrlens.store import derive, events, files, layout
from dlrlens.store.iceberg.table import RECEIPTS_TABLE, ensure_namespace, live_data_entries, namespace

log = logging.getLogger("dlrlens.store")

DERIVED_TABLE = f"{RECEIPTS_TABLE}_messages"
RECEIPTS_SEQUENCE_KEY = "dlrlens.receipts-sequence"  # the receipts snapshot's sequence number absorbed
RECEIPTS_SNAPSHOT_KEY = "dlrlens.receipts-snapshot"  # ... and its id
EVENTS_SEQUENCE_KEY = "dlrlens.events-sequences"     # clicks=<n>,replies=<n>: those tables' snapshots absorbed
HASH_PROBE_KEY = "dlrlens.hash-probe"                # derive.hash_probe of the writer
FORMAT_KEY = "dlrlens.derived-format"                # derive.FORMAT of the writer
KEYWORDS_KEY = "dlrlens.opt-out-keywords"            # the opt-out keywords its replies were matched with
COMMITTER_KEY = "dlrlens.committer"                  # the collector whose maintenance committed
SEND_STAMPS_KEY = "dlrlens.send-stamps"              # JSON {send file: latest changed_at absorbed}
STATE_NAME = "derived-commit.json"
COMPANIONS_DIR = "companions"  # beside data/ under the table's location: each data file's companions
ADOPT_DIR = "tmp/adopt"  # under the mirror's root: downloads whose companions are computed here
# Adopting costs a download of every committed file the reader lacks (1.6 s for the 110 files of
# 1 M receipts); absorbing costs ~15 s per million receipt rows (a rebuild of 1 M took 16 s):
# a reader with fewer rows than this to absorb absorbs them.
ADOPT_MIN_ROWS = 1_000_000
# A file whose companions were not all stored is written again with them: DuckDB with all cores
# (a reader on an empty cache has nothing else to do), little memory (one messages file at a time).
ADOPT_SETTINGS = {"memory_limit": "1GB"}
DERIVED_TABLE_PROPERTIES = {
    "commit.manifest-merge.enabled": "true",
    "commit.manifest.min-count-to-merge": "20",
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "20",
    # A refused commit must stay refused (see the module docstring): no retry by pyiceberg.
    TableProperties.COMMIT_NUM_RETRIES: "0",
}
METRICS_PREFIX = "write.metadata.metrics.column."
COPY_CHUNK = 8 << 20
# Objects are small (a day's messages file and its companions): an adoption waits on requests
# more than on bandwidth, so it fetches several files at once.
FETCH_THREADS = 4


class AdoptionError(Exception):
    """The committed state cannot become this process's (another derived format or hash, or a
    column this dlrlens stores is missing): the caller keeps or rebuilds its own."""


def derived_table(catalog: Catalog) -> Table | None:
    """The derived table, or None before the first commit made it."""
    try:
        return catalog.load_table((namespace(), DERIVED_TABLE))
    except NoSuchTableError:
        return None


def _table_schema(schema: pa.Schema) -> pa.Schema:
    """A messages file's schema as the table's: every column optional (a column without nulls in
    one file may have some in the next), without the file's metadata."""
    return pa.schema([pa.field(f.name, f.type, nullable=True) for f in schema])


def _unstatted(schema: pa.Schema) -> dict[str, str]:
    """Table properties turning off the column statistics Iceberg cannot hold: an unsigned 64-bit
    column (``id_hash``) maps to Iceberg's signed ``long``, whose bounds cannot hold its values."""
    return {METRICS_PREFIX + f.name: "none" for f in schema if pa.types.is_uint64(f.type)}


def _create(catalog: Catalog, schema: pa.Schema) -> Table:
    """Create the table from a messages file's schema; the loser of a race finds the winner's."""
    identifier = (namespace(), DERIVED_TABLE)
    ensure_namespace(catalog, identifier[0])
    try:
        table = catalog.create_table(identifier, schema=_table_schema(schema),
                                     properties={**DERIVED_TABLE_PROPERTIES, **_unstatted(schema)})
    except Exception as exc:
        found = derived_table(catalog)
        if found is None:
            raise exc from None
        return found
    with table.transaction() as transaction:  # the files carry no field ids: readers map by name
        transaction.set_properties({TableProperties.DEFAULT_NAME_MAPPING:
                                    table.schema().name_mapping.model_dump_json()})
    return table


def _widen(table: Table, schemas: list[pa.Schema]) -> Table:
    """Add to the table's schema the columns of ``schemas`` it lacks (a newer dlrlens's), as
    one catalog commit; a race with another maintainer doing the same is refused and raises."""
    known = set(table.schema().column_names)
    wanted: dict[str, pa.Field] = {}
    for schema in schemas:
        for f in _table_schema(schema):
            if f.name not in known:
                wanted.setdefault(f.name, f)
    if not wanted:
        return table
    new = pa.schema(list(wanted.values()))
    with table.transaction() as transaction:
        with transaction.update_schema() as update:
            update.union_by_name(new)
        if _unstatted(new):
            transaction.set_properties(_unstatted(new))
    log.info("event=derived_table_widened columns=%s", ",".join(sorted(wanted)))
    return table


@dataclass
class Committed:
    """The derived table's current snapshot, as a reader or maintainer needs it."""

    table_uuid: str
    snapshot_id: int
    receipts_sequence: int | None
    receipts_snapshot: int | None
    hash_probe: int | None
    format: int | None
    opt_out_keywords: tuple[str, ...]
    files: dict[str, DataFile]  # data file URI -> its DataFile
    columns: list[str]
    events_sequences: dict[str, int] = field(default_factory=dict)  # clicks/replies -> sequence absorbed
    send_stamps: dict[str, int] = field(default_factory=dict)  # cached send file -> latest stamp absorbed

    def absorbed_sequence(self, table: str) -> int | None:
        """The sequence number of table ``table``'s snapshot whose files this state absorbed
        (None: unknown, none counts as absorbed)."""
        return self.receipts_sequence if table == RECEIPTS_TABLE else self.events_sequences.get(table)

    @property
    def rows(self) -> int:
        return sum(f.record_count for f in self.files.values())


def committed_state(table: Table) -> Committed | None:
    """The state the derived table holds now (None before its first commit)."""
    snapshot = table.current_snapshot()
    if snapshot is None:
        return None
    summary = snapshot.summary.additional_properties if snapshot.summary is not None else {}

    def number(key: str) -> int | None:
        value = summary.get(key)
        return int(value) if value not in (None, "") else None

    return Committed(table_uuid=str(table.metadata.table_uuid), snapshot_id=snapshot.snapshot_id,
                     receipts_sequence=number(RECEIPTS_SEQUENCE_KEY), receipts_snapshot=number(RECEIPTS_SNAPSHOT_KEY),
                     hash_probe=number(HASH_PROBE_KEY), format=number(FORMAT_KEY),
                     opt_out_keywords=tuple(k for k in summary.get(KEYWORDS_KEY, "").split(",") if k),
                     files={e.data_file.file_path: e.data_file for e in live_data_entries(table, snapshot)},
                     columns=list(table.schema().column_names),
                     events_sequences=parse_events_sequences(summary.get(EVENTS_SEQUENCE_KEY, "")),
                     send_stamps=parse_send_stamps(summary.get(SEND_STAMPS_KEY, "")))


def parse_send_stamps(value: str) -> dict[str, int]:
    """{send file: latest stamp (epoch us)} of a :data:`SEND_STAMPS_KEY` summary value ({} for
    none or an unreadable one: the adopter then absorbs the send files again, which changes nothing)."""
    try:
        found = json.loads(value) if value else {}
        return {str(path): int(stamp) for path, stamp in found.items()}
    except (ValueError, TypeError, AttributeError):
        return {}


def events_sequences_value(sequences: dict[str, int]) -> str:
    """The :data:`EVENTS_SEQUENCE_KEY` summary value of ``sequences`` ({table: sequence number})."""
    return ",".join(f"{name}={number}" for name, number in sorted(sequences.items()))


def parse_events_sequences(value: str) -> dict[str, int]:
    """{table: sequence number} of an :data:`EVENTS_SEQUENCE_KEY` summary value ({} for none)."""
    found = {}
    for part in value.split(","):
        name, equals, number = part.partition("=")
        if equals and number.strip().isdigit():
            found[name.strip()] = int(number)
    return found


def unadoptable(committed: Committed, probe: int) -> str | None:
    """Why ``committed`` cannot become the state of a process whose :func:`derive.hash_probe`
    is ``probe`` (None when it can)."""
    if committed.receipts_sequence is None:
        return "it records no receipts snapshot (not written by dlrlens)"
    if committed.format != derive.FORMAT:
        return f"derived format {committed.format}, this dlrlens reads {derive.FORMAT}"
    if committed.hash_probe != probe:
        return "written by a DuckDB that hashes message ids differently"
    if committed.opt_out_keywords != events.opt_out_keywords():
        return "its replies were matched with other opt-out keywords (DLRLENS_OPT_OUT_KEYWORDS)"
    missing = [c for c in derive.STORED_COLUMNS if c not in committed.columns]
    if missing:
        return f"its files lack columns this dlrlens stores: {', '.join(missing)}"
    return None


@dataclass
class CommitState:
    """``derived-commit.json`` beside a local derived state adopted from or committed to the
    table: the table snapshot the local state builds on, the receipts sequence number it holds
    at least, and which local messages file (path relative to the root) is which data file."""

    table_uuid: str
    snapshot_id: int
    receipts_sequence: int
    files: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def path(root: Path) -> Path:
        return Path(root) / STATE_NAME

    @classmethod
    def load(cls, root: Path) -> "CommitState | None":
        try:
            raw = json.loads(cls.path(root).read_bytes())
            return cls(table_uuid=str(raw["table_uuid"]), snapshot_id=int(raw["snapshot_id"]),
                       receipts_sequence=int(raw["receipts_sequence"]), files=dict(raw["files"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, root: Path) -> None:
        body = {"table_uuid": self.table_uuid, "snapshot_id": self.snapshot_id,
                "receipts_sequence": self.receipts_sequence, "files": dict(sorted(self.files.items()))}
        layout.atomic_write_bytes(self.path(root), json.dumps(body).encode())

    def builds_on(self, committed: Committed | None) -> bool:
        return committed is not None and (self.table_uuid, self.snapshot_id) == (committed.table_uuid,
                                                                                 committed.snapshot_id)


def _local_name(uri: str) -> tuple[str, str]:
    """(``sent=YYYY-MM-DD``, ``<kind>-<ns>.parquet``) of a data file of the table."""
    parts = uri.rsplit("/", 2)
    if len(parts) != 3 or not parts[1].startswith(derive.SENT_PREFIX) or not parts[2].endswith(".parquet"):
        raise AdoptionError(f"a data file of the derived table is not named like a messages file: {uri}")
    return parts[1], parts[2]


def companion_uri(data_uri: str, kind: str) -> str:
    """Where the ``kind`` companion of the data file ``data_uri`` is stored:
    ``<location>/companions/<kind>/<committer>/sent=.../<name>`` for ``<location>/data/<committer>/sent=.../<name>``."""
    head, found, rest = data_uri.rpartition("/data/")
    if not found:
        raise ValueError(f"not a data file of the derived table: {data_uri}")
    return f"{head}/{COMPANIONS_DIR}/{kind}/{rest}"


def companion_of(path: str) -> str | None:
    """The data file whose companion ``path`` (as :func:`companion_uri` names them, with or
    without a scheme) is, or None for another file: the orphan-file cleanup keeps a companion
    exactly as long as its data file, whatever its kind (a newer dlrlens may store more)."""
    head, found, tail = path.rpartition(f"/{COMPANIONS_DIR}/")
    kind, slash, rest = tail.partition("/")
    return f"{head}/data/{rest}" if found and slash and kind else None


class _MissingCompanion(Exception):
    """A committed messages file without one of the companions this dlrlens writes (its writer
    knew fewer kinds): the reader writes them itself."""


def _download(table: Table, uri: str, target: Path) -> None:
    try:
        remote = table.io.new_input(uri).open()
    except FileNotFoundError:
        raise _MissingCompanion(uri) from None
    with remote, open(target, "wb") as local:
        shutil.copyfileobj(remote, local, COPY_CHUNK)


def _fetch_as_committed(root: Path, table: Table, uri: str, relative: str) -> derive.DerivedFile:
    """Download the data file ``uri`` and its stored companions to ``relative`` (a messages
    path under ``root``) and theirs, published as :mod:`dlrlens.store.derive` publishes (the
    companions first, the messages file last). Raises :class:`_MissingCompanion` (nothing
    published) when a companion is not stored."""
    with contextlib.ExitStack() as stack:
        messages = stack.enter_context(files.publishing(root / relative))  # published last
        _download(table, uri, messages.temp)
        metadata = pq.read_metadata(messages.temp)
        # The Arrow schema's names: the Parquet schema's are leaf columns (a list's are its fields').
        _check_columns(uri, metadata.schema.to_arrow_schema())
        for kind in derive.COMPANIONS:
            companion = stack.enter_context(files.publishing(root / derive.companion_path(relative, kind)))
            _download(table, companion_uri(uri, kind), companion.temp)
    return derive.described_file(relative, metadata)


def _check_columns(uri: str, schema: pa.Schema) -> None:
    """Raise :class:`AdoptionError` when the committed file ``uri`` (its Arrow ``schema``) lacks
    a column this dlrlens stores."""
    missing = [c for c in derive.STORED_COLUMNS if c not in schema.names]
    if missing:
        raise AdoptionError(f"the committed file {uri} lacks columns {', '.join(missing)}")


def _fetch_all(root: Path, table: Table, uris: list[str]) -> dict[str, derive.DerivedFile]:
    """:func:`_fetch_as_committed` of each of ``uris`` under its own name, :data:`FETCH_THREADS`
    at a time; those that cannot be (a companion not stored, the name taken here) are left out."""
    def fetch(uri: str) -> derive.DerivedFile | None:
        sent, name = _local_name(uri)
        relative = f"{derive.MESSAGES_DIR}/{sent}/{name}"
        if any((root / path).exists() for path in derive._all_paths(relative)):
            return None
        try:
            return _fetch_as_committed(root, table, uri, relative)
        except _MissingCompanion:
            return None

    with ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="dlrlens-adopt") as pool:
        found = dict(zip(uris, pool.map(fetch, uris)))
    return {uri: written for uri, written in found.items() if written is not None}


def _rewritten(root: Path, table: Table, con, uri: str, scratch: Path) -> derive.DerivedFile | None:
    """Download the data file ``uri`` and write it again through :mod:`dlrlens.store.derive`'s
    writer, which computes every companion this dlrlens knows (a new name)."""
    sent, name = _local_name(uri)
    local = scratch / name
    _download(table, uri, local)
    _check_columns(uri, pq.read_schema(local))
    shape = derive.DerivedFile(path=f"{derive.MESSAGES_DIR}/{sent}/{name}", rows=0, sent_min_us=0, sent_max_us=0)
    try:
        return derive._write_derived(con, root, f"{derive.SENT_PREFIX}{shape.day}/{shape.kind}",
                                     f"SELECT * FROM read_parquet('{local}')")
    finally:
        local.unlink()


def adopt(root: Path, table: Table, committed: Committed, file_sequences: dict[str, int], probe: int) -> dict:
    """Make ``committed`` the derived state under ``root`` (a mirror's cache: see the module
    docstring). ``file_sequences``: {cached file (relative path, under its table's directory:
    ``receipts/``, ``clicks/``, ``replies/``): its data sequence number} of every receipt,
    click and reply file under ``root``. Raises :class:`AdoptionError` (nothing
    changed) when the state cannot be adopted."""
    reason = unadoptable(committed, probe)
    if reason is not None:
        raise AdoptionError(f"the committed derived state cannot be adopted: {reason}")
    started = time.perf_counter()
    root = Path(root)
    scratch = root / ADOPT_DIR
    with files.locked(root / derive.LOCK_NAME, wait=True):
        old = derive.Manifest.load(root)
        state = CommitState.load(root)
        in_force = {f.path: f for f in old.files} if old is not None else {}
        reusable = ({uri: in_force[path] for path, uri in state.files.items() if path in in_force}
                    if state is not None and state.table_uuid == committed.table_uuid else {})
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        con = None
        adopted: dict[str, str] = {}
        kept: list[derive.DerivedFile] = []
        downloaded = rewritten = 0
        try:
            for uri in committed.files:
                if uri in reusable:
                    kept.append(reusable[uri])
                    adopted[reusable[uri].path] = uri
            wanted = sorted(uri for uri in committed.files if uri not in reusable)
            fetched = _fetch_all(root, table, wanted)
            for uri in wanted:
                written = fetched.get(uri)
                if written is None:  # a companion kind its writer did not store (or a name taken here)
                    con = con or derive.connect(ADOPT_SETTINGS, scratch / "duckdb")
                    written = _rewritten(root, table, con, uri, scratch)
                    rewritten += 1
                downloaded += 1
                if written is not None:
                    kept.append(written)
                    adopted[written.path] = uri
        finally:
            if con is not None:
                con.close()
            shutil.rmtree(scratch, ignore_errors=True)
        now = time.time()
        send_listing = derive.send_files(root)
        manifest = derive.Manifest(version=(old.version + 1) if old is not None else 1, files=kept,
                                   absorbed=absorbed_files(committed, file_sequences) | absorbed_sends(
                                       root, committed, send_listing),
                                   retired=dict(old.retired) if old is not None else {}, hash_probe=probe,
                                   opt_out_keywords=committed.opt_out_keywords,
                                   send_stamps={path: stamp for path, stamp in committed.send_stamps.items()
                                                if path in send_listing})
        for f in in_force.values():
            if f.path not in adopted:
                manifest.retired.setdefault(f.path, now)
        manifest.save(root)
        CommitState(committed.table_uuid, committed.snapshot_id, committed.receipts_sequence, adopted).save(root)
    seconds = round(time.perf_counter() - started, 3)
    log.info("event=derived_state_adopted snapshot=%d files=%d downloaded=%d rewritten=%d absorbed=%d seconds=%.2f",
             committed.snapshot_id, len(kept), downloaded, rewritten, len(manifest.absorbed), seconds)
    return {"adopted": committed.snapshot_id, "files": len(kept), "downloaded": downloaded, "rewritten": rewritten,
            "absorbed_files": len(manifest.absorbed), "seconds": seconds}


def absorbed_files(committed: Committed, file_sequences: dict[str, int]) -> set[str]:
    """Those of the cached files ``file_sequences`` (as :func:`adopt` takes them) whose rows
    ``committed`` holds: a sequence number at most the one it recorded for their table."""
    absorbed = set()
    for path, sequence in file_sequences.items():
        table = next((name for name, spec in layout.TABLES.items() if path.startswith(spec.directory + "/")), None)
        limit = committed.absorbed_sequence(table) if table is not None else None
        if limit is not None and sequence <= limit:
            absorbed.add(path)
    return absorbed


def absorbed_sends(root: Path, committed: Committed, send_listing: dict[str, str]) -> set[str]:
    """The manifest keys of the cached send files (``send_listing``: :func:`derive.send_files`)
    whose every record ``committed`` absorbed: their latest stamp is at most the one it recorded
    for them. The others keep the recorded stamp, so only their records stamped since are absorbed
    (a send table's partition keeps its stamps growing whoever merges into it)."""
    absorbed = set()
    for path, key in send_listing.items():
        recorded = committed.send_stamps.get(path)
        latest = derive.latest_stamp(root, path) if recorded is not None else None
        if latest is not None and latest <= recorded:
            absorbed.add(key)
    return absorbed


@dataclass
class CommitResult:
    """What one :func:`commit` did."""

    committed: int | None = None   # the new snapshot's id
    added: int = 0
    removed: int = 0
    refused: bool = False          # another maintainer committed first: adopt its state next
    replaced_whole: bool = False   # the table's state could not be built on (see unadoptable)
    unchanged: bool = False


def _upload(table: Table, source: Path, uri: str) -> None:
    with open(source, "rb") as local, table.io.new_output(uri).create(overwrite=True) as remote:
        shutil.copyfileobj(local, remote, COPY_CHUNK)


def commit(catalog: Catalog, root: Path, committer: str, *, receipts_snapshot: int, receipts_sequence: int,
           probe: int, replacing: int | None = None, events_sequences: dict[str, int] | None = None) -> CommitResult:
    """Commit the derived state under ``root`` (every receipt, click and reply file of the mirror
    absorbed, the mirror at ``receipts_snapshot``; ``events_sequences``: {clicks|replies: the
    sequence number of the mirror's snapshot of that table}) as one overwrite of the derived table, based on the snapshot
    its :class:`CommitState` builds on (none: the table has no state yet): refused when that is
    not the table's current snapshot, by this function or, when another commit lands meanwhile,
    by the catalog. ``replacing``: the id of a snapshot whose state could not be adopted
    (:func:`unadoptable`), which the commit replaces whole (refused likewise when the table
    moved on from it). Creates the table at the first commit."""
    root = Path(root)
    result = CommitResult()
    with files.locked(root / derive.LOCK_NAME, wait=True):  # the manifest stays put while it is uploaded
        manifest = derive.Manifest.load(root)
        if manifest is None:
            raise RuntimeError(f"no derived state to commit under {root}")
        table = derived_table(catalog)
        committed = committed_state(table) if table is not None else None
        current = committed.snapshot_id if committed is not None else None
        state = CommitState.load(root)
        if state is not None and (committed is None or state.table_uuid != committed.table_uuid):
            state = None  # a state of a table dropped since
        base = replacing if replacing is not None else state.snapshot_id if state is not None else None
        if base != current:
            log.info("event=derived_commit_refused reason=%r", "another maintainer committed first")
            result.refused = True
            return result
        local = {f.path: f for f in manifest.files}
        existing = committed.files if committed is not None else {}
        kept = ({path: uri for path, uri in state.files.items() if path in local and uri in existing}
                if state is not None and replacing is None else {})
        removed = [existing[uri] for uri in sorted(set(existing) - set(kept.values()))]
        added = sorted(path for path in local if path not in kept)
        result.replaced_whole = replacing is not None
        builds_on = state is not None and replacing is None
        if not removed and not added:
            result.unchanged = True
            return result
        sequence = max(receipts_sequence, state.receipts_sequence if builds_on else receipts_sequence)
        schemas = [pq.read_schema(root / path) for path in added]
        if table is None:
            table = _create(catalog, schemas[0])
            if table.current_snapshot() is not None:  # another maintainer created it and committed first
                result.refused = True
                return result
        uploads: dict[str, str] = {}   # local messages path -> its data file
        uploaded: list[str] = []       # every object written, companions included
        location = table.metadata.location.rstrip("/")
        try:
            table = _widen(table, schemas)
            for path in added:
                uri = f"{location}/data/{committer}/{path[len(derive.MESSAGES_DIR) + 1:]}"
                if uri in existing:  # never overwrite (nor, refused, delete) an object the table holds
                    uri = f"{location}/data/{committer}/{uuid.uuid4().hex[:8]}/{path[len(derive.MESSAGES_DIR) + 1:]}"
                # The companions first: a data file is never without them once committed.
                for kind in derive.COMPANIONS:
                    _upload(table, root / derive.companion_path(path, kind), companion_uri(uri, kind))
                    uploaded.append(companion_uri(uri, kind))
                _upload(table, root / path, uri)
                uploaded.append(uri)
                uploads[path] = uri
            data_files = [parquet_file_to_data_file(table.io, table.metadata, uri) for uri in uploads.values()]
            summary = {RECEIPTS_SEQUENCE_KEY: str(sequence), RECEIPTS_SNAPSHOT_KEY: str(receipts_snapshot),
                       HASH_PROBE_KEY: str(probe), FORMAT_KEY: str(derive.FORMAT), COMMITTER_KEY: committer,
                       KEYWORDS_KEY: ",".join(manifest.opt_out_keywords)}
            if events_sequences:
                summary[EVENTS_SEQUENCE_KEY] = events_sequences_value(events_sequences)
            if manifest.send_stamps:
                summary[SEND_STAMPS_KEY] = json.dumps(manifest.send_stamps, sort_keys=True, separators=(",", ":"))
            with table.transaction() as transaction:
                with transaction.update_snapshot(snapshot_properties=summary).overwrite() as overwrite:
                    for data_file in removed:
                        overwrite.delete_data_file(data_file)
                    for data_file in data_files:
                        overwrite.append_data_file(data_file)
        except (CommitFailedException, ValidationException) as exc:
            # Certainly not committed (pyiceberg says so of these two): what was uploaded is no one's.
            log.info("event=derived_commit_refused error=%r", str(exc).splitlines()[0][:200])
            for uri in uploaded:
                table.io.delete(uri)
            result.refused = True
            return result
        snapshot = table.current_snapshot()
        CommitState(str(table.metadata.table_uuid), snapshot.snapshot_id, sequence, {**kept, **uploads}).save(root)
    result.committed, result.added, result.removed = snapshot.snapshot_id, len(added), len(removed)
    log.info("event=derived_state_committed snapshot=%d added=%d removed=%d receipts_sequence=%d replaced_whole=%s",
             snapshot.snapshot_id, len(added), len(removed), sequence, result.replaced_whole)
    return result
