"""The read interface of the store: :class:`Store`, one read-only DuckDB connection over a data
directory, and the relations every figure is computed from.

Contract: a :class:`Store` never writes ``data/`` (its scratch files live in ``$TMPDIR``); every
query sees one consistent snapshot of the data (:meth:`Store.refresh`, :meth:`Store.pinned`);
a file that vanishes under a query (compaction, a derived file retired past its grace) makes it
start over on a fresh snapshot, never fail. It serves SQL relations, not questions: the
``messages`` relation (:meth:`Store.messages_sql`, :meth:`Store.filtered_messages_sql`), the
signed counts relation (:meth:`Store.counts_sql`), latency histograms and exact percentiles
(:meth:`Store.latency_quantiles`), the stored receipt rows (:meth:`Store.raw_sql`), and a
result cache per data version (:meth:`Store.cached`). The questions (KPIs, trends, ...) are
the dashboard's (``dashboard/queries/``); the definitions are in ``dashboard/queries/__init__.py``.

How it stays fast over 100 M receipts: the maintenance process keeps the per-message state in
``data/derived/`` (:mod:`dlrlens.store.derive`). A :class:`Store` reads those files straight
from disk (nothing is copied into memory) and merges in the *fresh tail*, the receipt files
the state has not absorbed yet (:func:`dlrlens.store.derive.receipt_files`,
:func:`dlrlens.store.derive.unabsorbed`): their messages' partial state is merged with the
stored rows of the same messages (found through an id-hash index), and those stored rows are
left out, exactly as the maintenance absorbs them (:func:`dlrlens.store.derive.absorb`).
Without derived data (fresh install) everything is tail: slower, but the same numbers.
Results are cached per (function, arguments, data version). Exact percentiles also keep, per
derived file (immutable: a rewrite has a new name), its latency counts and the latency values
a percentile needed (:meth:`Store.latency_counts`), so after a data change only new files,
the fresh tail and messages outside the files are read again.

Imports nothing from the collector or the dashboard.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from dlrlens.store import derive, events, layout, sends
from dlrlens.store.selection import Filters, zone_info
from dlrlens.store.sql import (counts_select, dimension_conditions, filtered_messages_sql, json_pointer,
                               known_statuses, seconds_between, send_conditions, string_literal, time_conditions,
                               unknown_status_condition)

UTC = timezone.utc

# The span of sent times the charts over time cover (see the dashboard's uncharted_messages).
# Receipts already stored may carry any created the collector's parser took (years 1 to 9999: a
# sender's clock gone wrong, a 9999-12-31 or 1970-01-01 placeholder): bucketing those means millions of empty
# days, instants past Python's year 9999 or pandas' nanosecond range (1677-2262). Every other
# figure counts such messages; time charts leave them out and say how many. The span starts
# after the epoch: a created of 0 is a placeholder, not a send (and the derived 15-minute
# slots of instants before it are rounded towards it, see dlrlens.store.derive.slot_sql).
CHARTED_FROM = datetime(2000, 1, 1, tzinfo=timezone.utc)
CHARTED_TO = datetime(2100, 1, 1, tzinfo=timezone.utc)
# Exact percentiles (Store.latency_quantiles): name and q of each.
QUANTILES = (("p50", 0.50), ("p90", 0.90), ("p95", 0.95), ("p99", 0.99))

STORE_SETTINGS = {"threads": 2, "memory_limit": "2GB"}
MAX_BUCKET_RUNS = 2  # latency value reads: at most this many bucket ranges
RESULT_CACHE_ENTRIES = 256
MATERIALIZED_TABLES = 8  # relations several questions of a page share, kept as temp tables (Store.materialized)
# Latency partials kept per derived file (Store.latency_counts): groupings (group, filters) and
# latency values (8 bytes each, plus an 8-byte key) at most. Campaigns over all time at 100 M
# receipts keeps ~0.6 M counts and ~0.4 M values.
LATENCY_CACHE_SPECS = 8
LATENCY_CACHE_VALUES = 8_000_000
_NO_KEYS = np.zeros(0, np.int64)


# --------------------------------------------------------------------------- store


@dataclass
class _Snapshot:
    """One data version: the derived files in force, the fresh tail merged into temp tables."""

    version: str
    manifest: derive.Manifest | None
    files: list[derive.DerivedFile]
    tail: list[str]  # receipt files (relative) not absorbed by the manifest
    touched: dict[str, int]  # derived file -> its number in table ``superseded``
    numbers: dict[str, int]
    receipt_files: dict[str, tuple[int, int]]  # every visible receipt file (absolute) -> (size, mtime_ns)
    raw_files: list[str] | None = None  # the same without compaction inputs already merged (lazy)
    event_files: dict[str, list[str]] = field(default_factory=dict)  # clicks/replies files (absolute)
    unplaced: list[derive.DerivedFile] = field(default_factory=list)  # rows of events without receipts
    merged_tail: bool = False  # whether the tail tables hold anything (receipts, events or send records)
    pooled: bool = False  # whether tables pool_clicks / pool_replies are this snapshot's (Store.linked_clicks_sql)
    pool_linked_clicks: bool = False  # whether pool_clicks holds clicks linked by reference


@dataclass
class _Regions:
    """A query's time range split in two. Inside: the companions of the derived files
    ``used`` (rows restricted by ``slots``, a condition on their slot ``t``) hold it
    pre-aggregated; :meth:`inside` is that region as a condition on a sent time column (for
    the fresh tail's corrections). Outside (``outside``, a condition on sent_at): read from the
    messages relation ``raw``."""

    used: list[derive.DerivedFile]
    spans: list[list[int]]  # the used files' time ranges, merged (epoch microseconds)
    bounds: tuple[int | None, int | None]  # the query's [start, end)
    dirty: list[int]  # slots (starts) not to take pre-aggregated
    slots: str
    outside: str
    raw: str | None  # None: nothing outside (every file overlapping the range is used)

    def inside(self, column: str = "sent_at") -> str:
        start, end = self.bounds
        if self.raw is None:
            # Nothing is read outside the companions: the tail's corrections cover the range.
            return " AND ".join(["TRUE"] + ([f"{column} >= {_at(start)}"] if start is not None else [])
                                + ([f"{column} < {_at(end)}"] if end is not None else []))
        covered = " OR ".join(f"({column} >= {_at(lo)} AND {column} < {_at(hi)})" for lo, hi in self.spans) or "FALSE"
        conditions = [f"({covered})"]
        conditions += [f"{column} >= {_at(start)}"] if start is not None else []
        conditions += [f"{column} < {_at(end)}"] if end is not None else []
        if self.dirty:
            dirty = "[" + ", ".join(_at(d) for d in self.dirty) + "]::TIMESTAMPTZ[]"
            conditions.append(f"NOT list_contains({dirty}, {derive.slot_sql(column)})")
        return " AND ".join(conditions)


@dataclass
class _FileLatency:
    """One derived file's latency partials for one grouping (see :meth:`Store.latency_counts`).

    Keys are ``group code << 32 | bucket``. ``count_keys``/``counts``: the file's latency
    count per key (sorted, positive). ``value_keys``/``values``: the latencies of the keys in
    ``fetched`` (sorted by key, then value), read when a percentile first needed them."""

    identity: tuple[int, int]  # the hist companion's (size, mtime_ns)
    count_keys: np.ndarray
    counts: np.ndarray
    fetched: np.ndarray = field(default_factory=lambda: _NO_KEYS)
    value_keys: np.ndarray = field(default_factory=lambda: _NO_KEYS)
    values: np.ndarray = field(default_factory=lambda: _NO_KEYS)

    def forget_values(self) -> None:
        self.fetched = self.value_keys = self.values = _NO_KEYS


@dataclass
class _LatencyCounts:
    """Pass 1 of the exact percentiles: latency counts per key (group code << 32 | bucket),
    sorted by key, net of the fresh tail (positive only); with what pass 2 needs."""

    spec: tuple
    regions: _Regions
    files: dict[str, _FileLatency]
    keys: np.ndarray
    counts: np.ndarray
    kind: "_LatencyKind"


MEASURES = ("messages", "latency_messages", "within_10s", "within_1m", "within_5m", "within_1h",
            "delivered_without_earlier", "regressions")


# Stored derived columns a query can use (the rest only matters for merging).
_QUERY_COLUMNS = ("delivery_message_id", "campaign", "batch_id", "client_reference", "sent_at", "outcome",
                  "last_status", "final_created", "first_delivered_at", "latency_us", "regression", "label_sets",
                  *derive.SEND_VIEW_COLUMNS)


@dataclass(frozen=True)
class _LatencyKind:
    """A latency the exact percentiles are taken of: its companions (counts per bucket, and
    values sorted by bucket), the fresh tail's corrections table, the columns its counts
    companion has (``groups``; its values have :attr:`columns`), how its rows
    (``latency_us``) come from a messages view, and how a counts row counts (``count``)."""

    hist: str
    values: str
    tail: str
    groups: str
    columns: str
    view: object  # messages view SQL -> latency rows SQL
    count: str = "sum(n)"


DELIVERY = _LatencyKind("hist", "latency", "tail_latency", derive.LATENCY_GROUPS, derive.LATENCY_GROUPS,
                        lambda view, extra="": view)
SUBMISSION = _LatencyKind("subhist", "sublatency", "tail_submission", derive.SUBMISSION_HIST_GROUPS,
                          derive.SUBMISSION_GROUPS, derive.submission_view_sql)
# Under a country, network, sender or route filter the values are counted (see derive.SUBMISSION_HIST_GROUPS).
SUBMISSION_BY_SEND = _LatencyKind("sublatency", "sublatency", "tail_submission", derive.SUBMISSION_GROUPS,
                                  derive.SUBMISSION_GROUPS, derive.submission_view_sql, count="count(*)")
COST_MEASURES = ("messages", "cost", "priced")


class Store:
    """One read-only DuckDB connection over a data directory (cache one per dashboard session).

    Thread-safe: queries are serialised by a lock. Every query first makes sure the snapshot
    matches the data on disk (a directory listing and the manifest); use :meth:`pinned` to
    keep one snapshot for a group of queries (e.g. one page render).
    """

    def __init__(self, data_dir: str | Path, settings: dict | None = None):
        self.data_dir = Path(data_dir)
        # Whose number key (dlrlens.store.pseudonym) hashes a number looked up: the data
        # directory's; an Iceberg store's cache lives under the one that holds it.
        self.key_dir = self.data_dir
        self._prefix = os.path.join(str(self.data_dir), "")  # + a relative path: str(data_dir / path)
        self._lock = threading.RLock()
        self._spill = Path(os.environ.get("TMPDIR", "/tmp")) / f"dlrlens-store-{os.getpid()}-{id(self)}"
        self._con = derive.connect(settings or STORE_SETTINGS, self._spill)
        self._con.execute("SET parquet_metadata_cache = true")
        self._probe = derive.hash_probe(self._con)
        self._index = derive.IdIndex()
        self._snapshot: _Snapshot | None = None
        self._pins = 0
        self._results: OrderedDict = OrderedDict()
        self._per_partition: dict[tuple, pd.DataFrame] = {}
        self._listings: dict = {}  # derive.receipt_files' listings per partition
        self._manifest_cache = None
        # Latency partials per derived file (see latency_counts): {(group, conditions, params):
        # {hist companion path: _FileLatency}}, least recently used first; they outlive data
        # versions (a file never changes), unlike the results.
        self._latency_partials: OrderedDict[tuple, dict[str, _FileLatency]] = OrderedDict()
        self._materialized: OrderedDict[tuple, str] = OrderedDict()  # (name, args, version) -> temp table
        self._materialized_count = 0
        self._group_codes: dict = {}
        self._group_names: list = []
        self._has_names = False  # whether campaign_names holds a row (see _named)
        self._names_version = ""
        self._con.execute("CREATE OR REPLACE TEMP TABLE campaign_names (campaign_id VARCHAR, name VARCHAR)")
        self._empty_tables()

    # -- files and versions

    def _files(self) -> dict[str, tuple[int, int]]:
        """{path relative to the data directory: (size, mtime_ns)} of every visible receipt
        file (:func:`dlrlens.store.derive.receipt_files`; a partition directory is listed again
        only when it changed)."""
        return derive.receipt_files(self.data_dir, self._listings)

    def _state(self) -> tuple[str, derive.Manifest | None, dict[str, tuple[int, int]]]:
        # The manifest first: a receipt file absorbed after this read is then still read as tail.
        manifest = self._manifest()
        files = self._files()
        digest = hashlib.sha256(f"{manifest.version if manifest else -1}\n".encode())
        prefix = self._prefix
        for path, (size, mtime) in files.items():
            digest.update(f"{prefix}{path}\0{size}\0{mtime}\n".encode())
        for listing in (events.event_files(self.data_dir, table) for table in events.EVENT_TABLES):
            for path, (size, mtime) in listing.items():
                digest.update(f"{prefix}{path}\0{size}\0{mtime}\n".encode())
        # Mobivate's send records and campaign names are data too (names, cost, country).
        digest.update(sends.version(self.data_dir).encode())
        return f"{len(files)}-{digest.hexdigest()[:16]}", manifest, files

    def _manifest(self) -> derive.Manifest | None:
        """The manifest in force, parsed again only when the file was replaced."""
        try:
            st = os.stat(derive.Manifest.path(self.data_dir))
        except FileNotFoundError:
            self._manifest_cache = None
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._manifest_cache is None or self._manifest_cache[0] != key:
            self._manifest_cache = (key, derive.Manifest.load(self.data_dir))
        return self._manifest_cache[1]

    def version(self) -> str:
        """Changes whenever the visible data changes (receipt files or derived state)."""
        return self._state()[0]

    def has_data(self) -> bool:
        """False if the data directory or any receipt file is missing."""
        return bool(self._files())

    # -- snapshot

    def refresh(self) -> str:
        """Make the snapshot match the data on disk; return its version."""
        with self._lock:
            if self._pins and self._snapshot is not None:
                return self._snapshot.version
            for attempt in (1, 2):
                version, manifest, files = self._state()
                if self._snapshot is not None and version == self._snapshot.version:
                    return version
                try:
                    self._prepare(version, manifest, files)
                except duckdb.IOException:
                    # A file vanished between listing and reading (compaction, or an atomic
                    # replace by the collector): list again and retry once.
                    if attempt == 2:
                        raise
                    continue
                return version
        raise AssertionError("unreachable")

    def _empty_tables(self) -> None:
        empty = derive.merge_sql(derive.receipt_units_sql(f"({derive.empty_receipts_sql()})"))
        self._con.execute(f"CREATE OR REPLACE TEMP TABLE tail_messages AS {empty}")
        self._con.execute(f"CREATE OR REPLACE TEMP TABLE tail_old AS "
                          f"{derive.stored_rows_at_sql(self.data_dir, {}, {}, 'tail_messages')}")
        self._con.execute("CREATE OR REPLACE TEMP TABLE superseded (file_no INTEGER, row BIGINT)")
        self._tail_corrections()

    def _prepare(self, version: str, manifest: derive.Manifest | None, files: dict[str, tuple[int, int]]) -> None:
        """Merge the fresh tail (:func:`dlrlens.store.derive.absorb`): ``tail_messages`` (merged
        state of every message it touches), ``tail_old`` (the derived rows those replace) and
        ``superseded`` (where they are)."""
        self._snapshot = None
        derived = list(manifest.files) if manifest else []
        numbers = {f.path: i for i, f in enumerate(derived)}
        absorbed = manifest.absorbed if manifest else set()
        tail, _ = derive.unabsorbed(self.data_dir, files, absorbed)
        # Listed after the version: event files are only ever added, so a listing newer than
        # the version's is harmless.
        event_listing = {table: events.event_files(self.data_dir, table) for table in events.EVENT_TABLES}
        tail_events = {table: [p for p in found if p not in absorbed] for table, found in event_listing.items()}
        tail_events[derive.SENDS_KEY] = derive.unabsorbed_send_files(derive.send_files(self.data_dir), absorbed)
        self._load_names()
        self._empty_tables()
        merged_tail = bool(tail or any(tail_events.values()))
        if merged_tail:
            derive.absorb(self._con, self.data_dir, tail, numbers, self._index, merged="tail_messages", old="tail_old",
                          trust_stored=manifest is not None and manifest.hash_probe == self._probe,
                          event_files=tail_events, keywords=self.opt_out_keywords(manifest),
                          send_stamps=manifest.send_stamps if manifest else {})
        self._tail_corrections()
        touched = {derived[n].path: n
                   for (n,) in self._con.execute("SELECT DISTINCT file_no FROM superseded").fetchall()}
        self._snapshot = _Snapshot(version=version, manifest=manifest, files=[f for f in derived if f.placed],
                                   tail=tail, touched=touched, numbers=numbers, receipt_files=self._absolute(files),
                                   event_files={table: list(self._absolute(found))
                                                for table, found in event_listing.items()},
                                   unplaced=[f for f in derived if not f.placed], merged_tail=merged_tail)

    @staticmethod
    def opt_out_keywords(manifest: derive.Manifest | None) -> tuple[str, ...]:
        """The opt-out keywords of the figures: those the derived state matched replies with
        (the maintenance's ``DLRLENS_OPT_OUT_KEYWORDS``), else this process's setting."""
        return manifest.opt_out_keywords if manifest and manifest.opt_out_keywords else events.opt_out_keywords()

    def _load_names(self) -> None:
        """Table ``campaign_names`` (campaign_id, name): the campaign names in force
        (:func:`dlrlens.store.sends.names_sql`: imported, else Mobivate's)."""
        version = sends.version(self.data_dir)
        if version == self._names_version:
            return
        self._con.execute(f"CREATE OR REPLACE TEMP TABLE campaign_names AS SELECT campaign_id, name "
                          f"FROM {sends.names_sql(self.data_dir)} WHERE name IS NOT NULL")
        self._has_names = self._con.execute("SELECT count(*) FROM campaign_names").fetchall()[0][0] > 0
        self._names_version = version

    def _named(self, relation: str, columns: str = "*") -> str:
        """``relation`` (SQL with a ``campaign`` column; ``columns`` of it) with each campaign
        that is a batchId with a name shown by its name: THE place every relation of this
        store gets campaign names (see :func:`dlrlens.store.sends.campaign_sql`; a message's
        stored campaign is its label, else its batchId, else ``(none)``). Identity without names."""
        if not self._has_names:
            return f"(SELECT {columns} FROM {relation})"
        return named_sql(relation, "campaign_names", columns)

    def _absolute(self, files: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
        """``files`` (see :meth:`_files`) by absolute path."""
        prefix = self._prefix
        return {f"{prefix}{path}": stat for path, stat in files.items()}

    @contextmanager
    def pinned(self):
        """Within the block every query sees the same snapshot (refreshed once on entry)."""
        with self._lock:
            self.refresh()
            self._pins += 1
        try:
            yield self
        finally:
            with self._lock:
                self._pins -= 1

    def query(self, sql: str, params: dict | None = None, tables: dict[str, pd.DataFrame] | None = None) -> pd.DataFrame:
        """Run ``sql`` on a current snapshot (``tables``: data frames visible by name meanwhile)."""
        return self._execute(sql, params, tables, lambda con: con.execute(sql, params or {}).df())

    def query_arrays(self, sql: str, params: dict | None = None,
                     tables: dict[str, pd.DataFrame] | None = None) -> dict[str, np.ndarray]:
        """:meth:`query` as NumPy arrays by column, text columns as codes into the
        :meth:`group_name` table (for large results of a few distinct texts: no Python
        string per row)."""
        table = self._execute(sql, params, tables, lambda con: con.sql(sql, params=params or {}).to_arrow_table())
        out = {}
        for name in table.column_names:
            column = table.column(name)
            if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                encoded = column.combine_chunks().dictionary_encode()
                out[name] = self._codes(encoded.dictionary.to_pylist())[encoded.indices.to_numpy(zero_copy_only=False)]
            else:
                out[name] = column.to_numpy()
        return out

    def _execute(self, sql: str, params: dict | None, tables: dict[str, pd.DataFrame] | None, fetch):
        """``fetch(connection)`` on a current snapshot with ``tables`` registered meanwhile."""
        with self._lock:
            self.refresh()
            for name, frame in (tables or {}).items():
                self._con.register(name, frame)
            try:
                return fetch(self._con)
            finally:
                for name in tables or {}:
                    self._con.unregister(name)

    def cached(self, name: str, args: tuple, compute):
        """``compute()`` once per (name, args, data version); a copy of the result each call.

        A file that vanished mid-computation (a derived file retired longer than the grace
        period ago while an old snapshot was in use) makes it start over on a fresh snapshot.
        """
        for attempt in (1, 2):
            try:
                with self.pinned():
                    key = (name, args, self._snapshot.version)
                    if key in self._results:
                        self._results.move_to_end(key)
                    else:
                        self._results[key] = compute()
                        while len(self._results) > RESULT_CACHE_ENTRIES:
                            self._results.popitem(last=False)
                    return _copy(self._results[key])
            except duckdb.IOException:
                with self._lock:
                    if attempt == 2 or self._pins:
                        raise  # an enclosing pinned block starts over, or it is not a vanished file
                    self._snapshot = None
        raise AssertionError("unreachable")

    # -- relations

    def messages_sql(self, f: "Filters | None" = None, exclude: frozenset = frozenset()) -> str:
        """The ``messages`` relation (see :func:`dlrlens.store.derive.messages_view_sql`) of this
        snapshot, reading only the derived files (but ``exclude``) that can hold messages sent
        in f's range."""
        snap = self._snapshot
        start_us = epoch_micros(f.start) if f is not None and f.start is not None else None
        end_us = epoch_micros(f.end) if f is not None and f.end is not None else None
        columns = ", ".join(_QUERY_COLUMNS)
        wanted = [x for x in snap.files if x.path not in exclude
                  and (start_us is None or x.sent_max_us >= start_us) and (end_us is None or x.sent_min_us < end_us)]
        parts = []
        untouched = [x for x in wanted if x.path not in snap.touched]
        if untouched:
            parts.append(f"SELECT {columns} FROM read_parquet({self._paths(untouched)})")
        for x in wanted:
            if x.path in snap.touched:
                parts.append(self._unsuperseded_sql(x, columns))
        parts.append(f"SELECT {columns} FROM tail_messages")
        return self._named("(" + derive.messages_view_sql("(" + " UNION ALL ".join(parts) + ")") + ")")

    def filtered_messages_sql(self, f: Filters) -> tuple[str, dict]:
        """SQL of the messages matching ``f`` (:meth:`messages_sql` restricted by every filter)
        and its parameters."""
        params: dict = {}
        return filtered_messages_sql(f, params, self.messages_sql(f), self.label_condition(f)), params

    def materialized(self, name: str, args: tuple, sql: str, params: dict | None = None) -> str:
        """The name of a temp table holding the rows of ``sql``, made once per (``name``,
        ``args``, data version) and kept (the :data:`MATERIALIZED_TABLES` most recently used):
        for a relation several questions of a page share (the cost pieces of one set of
        filters). Ask within :meth:`pinned` and use the table there."""
        with self._lock:
            self.refresh()
            key = (name, args, self._snapshot.version)
            if key not in self._materialized:
                self._materialized_count += 1
                table = f"materialized_{self._materialized_count}"
                self._con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS {sql}", params or {})
                self._materialized[key] = table
                while len(self._materialized) > MATERIALIZED_TABLES:
                    _, old = self._materialized.popitem(last=False)
                    self._con.execute(f"DROP TABLE IF EXISTS {old}")
            self._materialized.move_to_end(key)
            return self._materialized[key]

    def cost_counts_sql(self, f: Filters, params: dict) -> str:
        """The cost relation of the messages (with receipts) sent in f's range: rows of
        :func:`dlrlens.store.derive.cost_rollup_sql` (:data:`dlrlens.store.derive.COST_GROUPS`,
        messages, cost, priced), signed: sum them. From the derived files' ``cost`` companions,
        the fresh tail's corrections and the messages outside the files; every dimension filter
        is the caller's."""
        columns = f"{derive.COST_GROUPS}, {', '.join(COST_MEASURES)}"
        pieces = self._pieces(f, params, "cost", derive.cost_rollup_sql, f"SELECT {columns} FROM tail_cost WHERE {{inside}}")
        return "(" + " UNION ALL ".join(f"SELECT {columns} FROM ({sql})" for sql in pieces) + ")"

    def log_only_sql(self, f: Filters, params: dict) -> str:
        """The messages Mobivate's log knows (an MT send record) created in f's range that
        have no receipt at all, one row each: delivery_message_id, campaign (the name of the
        record's campaignId, else the id, else ``(none)``: see
        :func:`dlrlens.store.sends.campaign_sql`), outcome, last_status and label_sets (NULL),
        and :data:`dlrlens.store.derive.SEND_VIEW_COLUMNS`. They live in the unplaced derived
        file (no sent time from a receipt); adds the bound times to ``params``."""
        rows = self._unplaced_rows_sql(", ".join(("delivery_message_id", *derive.SEND_VIEW_COLUMNS)))
        where = " AND ".join(["log_created IS NOT NULL"] + time_conditions(f, params, column="log_created"))
        return self._named(log_only_messages_sql(rows, where))

    def label_condition(self, f: Filters):
        """The label-pair condition builder for :func:`dlrlens.store.sql.dimension_conditions`."""
        return _label_condition(self, f)

    def label_sets_sql(self) -> tuple[str, dict]:
        """SQL of label_sets (JSON list of labels texts), messages: every distinct label set in
        use; and its parameters."""
        params: dict = {}
        counts = self.counts_sql(Filters(), params)
        return (f"SELECT label_sets, sum(messages)::BIGINT AS messages FROM {counts} "
                f"GROUP BY ALL HAVING sum(messages) > 0"), params

    # -- pre-aggregated relations (see _Regions)

    def _regions(self, f: "Filters", params: dict, cuts: tuple[int, ...] = (), by_slot: bool = False) -> "_Regions":
        """Split f's time range between the derived files' pre-aggregated companions and the
        messages (see :class:`_Regions`). ``cuts`` (epoch microseconds) are instants where a
        figure changes (age buckets): nothing pre-aggregated may straddle one.

        Per file (``by_slot`` False): files wholly inside the range and holding no cut.
        Per 15-minute slot (``by_slot``, for the rollups, which have slots): every slot of the
        files overlapping the range, but *dirty* slots, which hold a cut or a range boundary
        that is not on a slot boundary (local days and hours of every zone are on one)."""
        snap = self._snapshot
        start_us = epoch_micros(f.start) if f.start is not None else None
        end_us = epoch_micros(f.end) if f.end is not None else None
        slot = derive.SLOT_MICROS
        dirty: set[int] = set()
        used = []
        for x in snap.files:
            lo, hi = x.range_us
            if by_slot:
                if (start_us is None or hi > start_us) and (end_us is None or lo < end_us):
                    used.append(x)
            elif ((start_us is None or start_us <= lo) and (end_us is None or hi <= end_us)
                  and not any(lo <= c < hi for c in cuts)):
                used.append(x)
        if by_slot:
            dirty = {b - b % slot for b in (start_us, end_us) if b is not None and b % slot}
            dirty |= {c - c % slot for c in cuts}
        spans: list[list[int]] = []
        for lo, hi in sorted(x.range_us for x in used):
            if spans and spans[-1][1] == lo:
                spans[-1][1] = hi
            else:
                spans.append([lo, hi])
        # Computed instants, written as literals (no parameters: a piece may be left out).
        dirty_list = "[" + ", ".join(_at(d) for d in sorted(dirty)) + "]::TIMESTAMPTZ[]"
        slots = " AND ".join(["TRUE"] + ([f"t >= {_at(start_us)}"] if start_us is not None else [])
                             + ([f"t < {_at(end_us)}"] if end_us is not None else [])
                             + [f"NOT list_contains({dirty_list}, t)"])
        clean = frozenset(x.path for x in used if not any(x.range_us[0] <= d < x.range_us[1] for d in dirty))
        rest = [x for x in snap.files if x.path not in clean
                and (start_us is None or x.range_us[1] > start_us) and (end_us is None or x.range_us[0] < end_us)]
        regions = _Regions(used=used, spans=spans, bounds=(start_us, end_us), dirty=sorted(dirty),
                           slots=slots if by_slot else "TRUE", outside="", raw=None)
        if rest or not used:
            # Messages outside the companions: read them (tail messages there included).
            regions.raw = self.messages_sql(f, exclude=clean)
            times = ([f"sent_at >= {_at(start_us)}"] if start_us is not None else []) + (
                [f"sent_at < {_at(end_us)}"] if end_us is not None else [])
            regions.outside = " AND ".join(["TRUE"] + times + [f"NOT ({regions.inside()})"])
        return regions

    def _companions(self, files, kind: str) -> str:
        return self._named("read_parquet([" + ", ".join(string_literal(self.data_dir / derive.companion_path(x.path, kind))
                                                        for x in files) + "])")

    def _pieces(self, f: "Filters", params: dict, kind: str, make, tail: str, cuts: tuple[int, ...] = (),
                by_slot: bool = False) -> list[str]:
        """SQL pieces whose (signed) sum is ``make`` over f's messages: the ``kind`` companions
        of the files (slots) used; the fresh tail's corrections inside them (``tail``, a query
        with ``{inside}``: its merged messages minus the stored rows they replace, see
        :meth:`_tail_corrections`); ``make`` over the messages outside."""
        regions = self._regions(f, params, cuts, by_slot)
        stored = [f"SELECT * FROM {self._companions(regions.used, kind)} WHERE {regions.slots}"] if regions.used else []
        return stored + self._computed_pieces(regions, kind, make, tail)

    def _computed_pieces(self, regions: "_Regions", kind: str, make, tail: str) -> list[str]:
        """The pieces of :meth:`_pieces` computed at query time: the fresh tail's corrections
        inside the companions used, ``make`` over the messages outside them."""
        pieces = []
        if regions.used and self._snapshot.merged_tail:
            pieces.append(tail.format(inside=regions.inside("t" if kind == "rollup" else "sent_at")))
        if regions.raw is not None:
            pieces.append(make(f"SELECT * FROM {regions.raw} WHERE {regions.outside}"))
        return pieces

    def _tail_corrections(self) -> None:
        """Tables ``tail_counts`` and ``tail_latency``: the fresh tail's merged messages (+1)
        and the stored rows they replace (-1), as counts rows (t = exact sent time) and latency
        rows; the companions' figures plus these are exact."""
        new = self._named("(" + derive.messages_view_sql("tail_messages") + ")")
        old = self._named("(" + derive.messages_view_sql("tail_old") + ")")
        negated = ", ".join(f"-{m} AS {m}" for m in MEASURES)
        self._con.execute(f"""
            CREATE OR REPLACE TEMP TABLE tail_counts AS
            SELECT * FROM ({derive.rollup_sql(new, t="sent_at")})
            UNION ALL
            SELECT t, campaign, outcome, last_status, label_sets, {negated}
            FROM ({derive.rollup_sql(old, t="sent_at")})""")

        for kind in (DELIVERY, SUBMISSION):
            def latency(view: str, sign: int) -> str:
                return (f"SELECT sent_at, {derive.latency_bucket_sql()} AS b, latency_us, {kind.columns}, {sign} AS n "
                        f"FROM ({kind.view(view, 'sent_at, ')}) WHERE latency_us IS NOT NULL")
            self._con.execute(f"CREATE OR REPLACE TEMP TABLE {kind.tail} AS {latency(new, 1)} UNION ALL {latency(old, -1)}")
        negated = ", ".join(f"-{m} AS {m}" for m in COST_MEASURES)
        self._con.execute(f"""
            CREATE OR REPLACE TEMP TABLE tail_cost AS
            SELECT * FROM ({derive.cost_rollup_sql(new, 'sent_at, ')})
            UNION ALL
            SELECT * REPLACE ({negated}) FROM ({derive.cost_rollup_sql(old, 'sent_at, ')})""")

    def counts_sql(self, f: "Filters", params: dict, cuts: tuple[int, ...] = ()) -> str:
        """The counts relation of the messages sent in f's range (every dimension filter is
        the caller's): rows as :func:`dlrlens.store.derive.rollup_sql` makes them, signed; sum them.
        ``t`` is a 15-minute slot start, or the exact sent time; slots never straddle ``cuts``."""
        columns = "t, campaign, outcome, last_status, label_sets, " + ", ".join(MEASURES)
        exact = lambda view: derive.rollup_sql(view, t="sent_at")  # noqa: E731 (computed rows keep sent_at)
        pieces = self._pieces(f, params, "rollup", exact, "SELECT * FROM tail_counts WHERE {inside}", cuts, by_slot=True)
        return "(" + " UNION ALL ".join(f"SELECT {columns} FROM ({sql})" for sql in pieces) + ")"

    def filtered_counts_sql(self, f: "Filters", cuts: tuple[int, ...] = ()) -> tuple[str, dict]:
        """:meth:`counts_sql` restricted to f's campaigns, outcomes, statuses and labels."""
        params: dict = {}
        relation = self.counts_sql(f, params, cuts)
        conditions = dimension_conditions(f, params, self.label_condition(f))
        return f"SELECT * FROM {relation} WHERE {' AND '.join(conditions)}", params

    def hist_sql(self, f: "Filters", params: dict) -> str:
        """Latency counts (campaign, label_sets, last_status, b, n; signed: sum n) of the
        messages sent in f's range."""
        tail = "SELECT campaign, label_sets, last_status, b, n FROM tail_latency WHERE {inside}"
        return "(" + " UNION ALL ".join(f"SELECT campaign, label_sets, last_status, b, n FROM ({sql})"
                                        for sql in self._pieces(f, params, "hist", derive.hist_sql, tail)) + ")"

    def latency_bucket_counts(self, f: Filters, group: str) -> pd.DataFrame:
        """grp (``group``: an expression over campaign, label_sets, last_status), b (the latency
        bucket, :func:`dlrlens.store.derive.latency_bucket_sql`), n: how many latencies of the
        messages matching ``f`` (whatever its outcomes: only delivered messages have one) fall
        in each bucket; non-empty buckets only, by grp and b. From the pre-aggregated histograms."""
        params: dict = {}
        conditions = " AND ".join(dimension_conditions(replace(f, outcomes=()), params, self.label_condition(f)))
        return self.query(f"SELECT {group} AS grp, b, sum(n)::BIGINT AS n "
                          f"FROM {self.hist_sql(f, params)} WHERE {conditions} GROUP BY ALL "
                          f"HAVING sum(n) > 0 ORDER BY grp, b", params)

    # -- exact percentiles, from latency partials per derived file

    def latency_quantiles(self, f: Filters, group: str | None, names, kind: _LatencyKind = DELIVERY,
                          count: str | None = None) -> pd.DataFrame:
        """Exact ``quantile_cont(latency_s, q)`` for each q of :data:`QUANTILES` over the
        messages matching ``f``, overall or per ``group`` (a text expression over the kind's
        group columns, e.g. campaign): columns grp and ``names`` (one per quantile), one row
        per group with latencies. Empty (with those columns) when f's outcomes leave out
        delivered messages: only they have a latency. ``kind``: :data:`DELIVERY` (time to
        deliver, from the first receipt) or :data:`SUBMISSION` (from the send record's
        created time; f's send filters apply). ``count``: also a column of that name, how many
        latencies each group has."""
        if f.outcomes and "delivered" not in f.outcomes:
            return _quantile_frame(names, count)
        return self._quantiles(f, group, names, kind, count)

    def _quantiles(self, f: Filters, group: str | None, names, kind: _LatencyKind = DELIVERY,
                   count: str | None = None) -> pd.DataFrame:
        """:meth:`latency_quantiles` by the exact two-pass method (:func:`_exact_quantiles`)."""
        return _exact_quantiles(self, f, group, names, kind, count)

    def latency_counts(self, f: "Filters", group: str, conditions: str, params: dict,
                       kind: _LatencyKind = DELIVERY) -> "_LatencyCounts":
        """Pass 1 of :meth:`latency_quantiles`: the latency counts of the messages matching
        ``f`` per (``group``, bucket), for the rows meeting ``conditions`` (SQL on the
        ``kind``'s group columns with ``params``). ``group``: a text expression.

        Each used derived file's counts are computed once and kept (:class:`_FileLatency`, by
        the companion's path, size and mtime: derived files are immutable), so a query reads
        only new files, the fresh tail's corrections and the messages outside the files."""
        with self._lock:
            regions = self._regions(f, params)
            spec = (kind.hist, group, conditions, json.dumps(params, sort_keys=True, default=str), self._names_version)
            files = self._file_latency(spec, regions.used, group, conditions, params, kind)
            keys = [x.count_keys for x in files.values()]
            counts = [x.counts for x in files.values()]
            tail = f"SELECT {kind.groups}, b, n FROM {kind.tail} WHERE {{inside}}"
            computed = self._computed_pieces(regions, kind.hist, lambda view: derive.hist_sql(kind.view(view), kind.groups),
                                             tail)
            if computed:
                union = " UNION ALL ".join(f"SELECT {kind.groups}, b, n FROM ({sql})" for sql in computed)
                fresh = self.query_arrays(f"SELECT {group} AS grp, b, sum(n)::BIGINT AS n FROM ({union}) "
                                          f"WHERE {conditions} GROUP BY ALL", params)
                keys.append(_keys(fresh))
                counts.append(fresh["n"].astype(np.int64))
            key, count = _net(np.concatenate(keys or [_NO_KEYS]), np.concatenate(counts or [_NO_KEYS]))
            return _LatencyCounts(spec=spec, regions=regions, files=files, keys=key, counts=count, kind=kind)

    def latency_values(self, counts: "_LatencyCounts", group: str, conditions: str, params: dict,
                       wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pass 2 of :meth:`latency_quantiles`: every latency in the (group, bucket) ``wanted``
        keys, as (keys, latency_us, signed count) arrays (unsorted; equal values may repeat).

        A file's values of a key are read once and kept with its counts; only keys the file
        was never asked for are read (one scan over the files concerned)."""
        with self._lock:
            wanted = np.unique(wanted)
            need = {}
            for path, partial in counts.files.items():
                present = partial.count_keys[_members(partial.count_keys, wanted)]
                missing = present[~_members(present, partial.fetched)]
                if len(missing):
                    need[path] = missing
            kind = counts.kind
            if need:
                self._fetch_latency_values(counts.files, need, group, conditions, params, kind)
            keys, values, signs = [], [], []
            for partial in counts.files.values():
                hit = _members(partial.value_keys, wanted)
                keys.append(partial.value_keys[hit])
                values.append(partial.values[hit])
                signs.append(np.ones(len(keys[-1]), np.int64))
            tail = f"SELECT b, latency_us, {kind.columns}, n FROM {kind.tail} WHERE {{inside}}"
            computed = lambda view: f"SELECT *, 1 AS n FROM ({derive.latency_values_sql(kind.view(view), kind.columns)})"  # noqa: E731
            pieces = self._computed_pieces(counts.regions, kind.values, computed, tail)
            if pieces:
                wanted_frame = self._key_frame(wanted)
                union = " UNION ALL ".join(f"SELECT b, latency_us, {kind.columns}, n FROM ({sql}) "
                                           f"WHERE {_bucket_runs(wanted_frame['b'])}" for sql in pieces)
                fresh = self.query_arrays(f"SELECT * FROM (SELECT {group} AS grp, b, latency_us, n FROM ({union}) "
                                          f"WHERE {conditions}) SEMI JOIN wanted USING (grp, b)",
                                          params, tables={"wanted": wanted_frame})
                keys.append(_keys(fresh))
                values.append(fresh["latency_us"].astype(np.int64))
                signs.append(fresh["n"].astype(np.int64))
            self._bound_latency_cache(counts.spec)
            return tuple(np.concatenate(part or [_NO_KEYS]) for part in (keys, values, signs))

    def _file_latency(self, spec: tuple, used: list[derive.DerivedFile], group: str, conditions: str,
                      params: dict, kind: _LatencyKind) -> dict[str, "_FileLatency"]:
        """{hist companion path: its partial} for ``used``, reading the counts of files not kept yet."""
        kept = self._latency_partials.pop(spec, {})
        self._latency_partials[spec] = kept  # most recently used last
        identities = {}
        for x in used:
            path = str(self.data_dir / derive.companion_path(x.path, kind.hist))
            try:
                st = os.stat(path)
            except FileNotFoundError as exc:  # retired and deleted: Store.cached starts over
                raise duckdb.IOException(f"derived file vanished: {path}") from exc
            identities[path] = (st.st_size, st.st_mtime_ns)
        for path in [p for p in kept if p not in identities or kept[p].identity != identities[p]]:
            del kept[path]  # left the manifest (or, never expected, changed in place)
        missing = [p for p in identities if p not in kept]
        if missing:
            # file_index: the file's position in the list read (DuckDB's virtual column).
            source = f"read_parquet([{', '.join(string_literal(p) for p in missing)}])"
            found = self.query_arrays(f"SELECT file_index, {group} AS grp, b, {kind.count}::BIGINT AS n "
                                      f"FROM {self._named(source, 'file_index, *')} "
                                      f"WHERE {conditions} GROUP BY ALL", params)
            keys, n = _keys(found), found["n"].astype(np.int64)
            for path, rows in zip(missing, _rows_by_file(found["file_index"], len(missing))):
                key, count = _net(keys[rows], n[rows])
                kept[path] = _FileLatency(identity=identities[path], count_keys=key, counts=count)
        return {p: kept[p] for p in identities}

    def _fetch_latency_values(self, files: dict[str, "_FileLatency"], need: dict[str, np.ndarray], group: str,
                              conditions: str, params: dict, kind: _LatencyKind) -> None:
        """Read the latency values of the keys ``need`` ({hist companion path: keys}) from the
        latency companions into the files' partials."""
        paths = list(need)
        latency = [p.replace(f"/{derive.DERIVED_DIR}/{kind.hist}/", f"/{derive.DERIVED_DIR}/{kind.values}/", 1)
                   for p in paths]
        # One scan for every key missing somewhere (a semi-join on two columns, as cheap as the
        # plain read); each file then keeps only the keys it was asked for.
        wanted = self._key_frame(np.unique(np.concatenate(list(need.values()))))
        found = self.query_arrays(
            f"SELECT * FROM (SELECT file_index, {group} AS grp, b, latency_us "
            f"FROM {self._named('read_parquet([' + ', '.join(string_literal(p) for p in latency) + '])', 'file_index, *')} "
            f"WHERE {_bucket_runs(wanted['b'])} AND {conditions}) SEMI JOIN wanted USING (grp, b)",
            params, tables={"wanted": wanted})
        keys, values = _keys(found), found["latency_us"].astype(np.int64)
        for (path, asked), rows in zip(need.items(), _rows_by_file(found["file_index"], len(paths))):
            partial = files[path]
            rows = rows[_members(keys[rows], asked)]
            key = np.concatenate([partial.value_keys, keys[rows]])
            value = np.concatenate([partial.values, values[rows]])
            by_key = np.lexsort((value, key))
            partial.value_keys, partial.values = key[by_key], value[by_key]
            partial.fetched = np.union1d(partial.fetched, asked)

    def _bound_latency_cache(self, current: tuple) -> None:
        """Keep at most :data:`LATENCY_CACHE_SPECS` groupings and :data:`LATENCY_CACHE_VALUES`
        latency values: the least recently used groupings go first, then the current one's values."""
        while len(self._latency_partials) > LATENCY_CACHE_SPECS:
            self._latency_partials.popitem(last=False)
        def held() -> int:
            return sum(len(x.values) for files in self._latency_partials.values() for x in files.values())
        while held() > LATENCY_CACHE_VALUES and next(iter(self._latency_partials)) != current:
            self._latency_partials.popitem(last=False)
        if held() > LATENCY_CACHE_VALUES:  # one grouping alone is too much: read its values each time
            for partial in self._latency_partials[current].values():
                partial.forget_values()

    def _codes(self, values: list) -> np.ndarray:
        """This store's integer codes of group values (campaign names, or the overall group's
        text), given in order of appearance and kept: a latency key is ``code << 32 | bucket``."""
        codes = self._group_codes
        for value in values:
            if value not in codes:
                codes[value] = len(self._group_names)
                self._group_names.append(value)
        return np.array([codes[v] for v in values], np.int64)

    def _key_frame(self, keys: np.ndarray) -> pd.DataFrame:
        """grp (the group value) and b of integer keys (see :meth:`_codes`)."""
        return pd.DataFrame({"grp": self.group_name(keys), "b": keys & 0xFFFFFFFF})

    def group_name(self, keys: np.ndarray) -> np.ndarray:
        """The group values of integer keys (see :meth:`_codes`)."""
        names = np.empty(len(self._group_names), dtype=object)
        names[:] = self._group_names
        return names[keys >> 32] if len(keys) else np.array([], object)

    def scratch_path(self, name: str) -> Path:
        """A path for a temporary file of this store (in its spill directory, made if needed)."""
        self._spill.mkdir(parents=True, exist_ok=True)
        return self._spill / f"{threading.get_ident()}-{time.monotonic_ns()}-{name}"

    @contextmanager
    def time_zone(self, name: str):
        """Within the block (and this store's lock) TIMESTAMPTZ values print in zone ``name``;
        UTC again after it."""
        zone_info(name)
        with self._lock:
            self._con.execute(f"SET TimeZone = '{name}'")
            try:
                yield
            finally:
                self._con.execute("SET TimeZone = 'UTC'")

    def clear_cache(self, partials: bool = False) -> None:
        """Forget cached results (benchmarks: measure computing, not the cache); with
        ``partials`` also what is kept per derived file (the latency partials), as after a start."""
        with self._lock:
            self._results.clear()
            self._per_partition.clear()
            if partials:
                self._latency_partials.clear()

    def _unsuperseded_sql(self, x: derive.DerivedFile, columns: str, kind: str | None = None) -> str:
        """``columns`` of the derived file ``x`` (or of its ``kind`` companion, whose rows name
        their message's row in ``m_row``) but the rows of messages the fresh tail supersedes."""
        if kind is None:
            source = f"read_parquet({string_literal(self.data_dir / x.path)}, file_row_number = true)"
            row = "file_row_number"
        else:
            source, row = f"read_parquet({string_literal(self.data_dir / derive.companion_path(x.path, kind))})", "m_row"
        return (f"SELECT {columns} FROM {source} WHERE {row} NOT IN "
                f"(SELECT row FROM superseded WHERE file_no = {self._snapshot.numbers[x.path]})")

    def _paths(self, files) -> str:
        return "[" + ", ".join(string_literal(self.data_dir / x.path) for x in files) + "]"

    def per_partition(self, name: str, select: str, params: dict | None = None,
                      received_since: datetime | None = None) -> dict[str, pd.DataFrame]:
        """{partition: ``select`` (SQL over ``{source}``, the partition's stored receipt rows)},
        cached per partition while its files do not change. For figures that add up over
        partitions: copies of a receipt share its created day, so distinct counts do.

        ``received_since``: only rows received at or after it are needed (the rest may be left
        out). Parquet's row-group statistics then skip what was received earlier, whatever its
        created day: at 100 M receipts the alerts' first evaluation read every partition in full
        (33.9 s CPU of 35.4). A kept answer serves any later ``received_since`` (it holds more
        rows than asked: ``select`` must filter by time itself)."""
        self.raw_sql()
        snap = self._snapshot
        groups: dict[str, list[str]] = {}
        for path in snap.raw_files:
            groups.setdefault(Path(path).parent.name, []).append(path)
        out = {}
        for partition, paths in sorted(groups.items()):
            key = (name, partition, tuple((p, *snap.receipt_files[p]) for p in sorted(paths)))
            kept = self._per_partition.get(key)
            if kept is None or not _covers(kept[0], received_since):
                stale = [k for k in self._per_partition if k[:2] == (name, partition)]
                for k in stale:
                    del self._per_partition[k]
                source = "read_parquet([" + ", ".join(string_literal(p) for p in paths) + "], union_by_name = true)"
                since = None
                if received_since is not None:
                    # From the start of the day before: questions with nearby windows (a rule's
                    # window, its baseline days) share one read instead of each reading again.
                    since = _day_floor(received_since) - timedelta(days=1)
                    source = f"(SELECT * FROM {source} WHERE received_at >= $received_since)"
                bound = dict(params or {}, **({"received_since": since} if since else {}))
                kept = (since, self._con.execute(select.format(source=source), bound).df())
                self._per_partition[key] = kept
            out[partition] = kept[1]
        return out

    # -- questions asked both by the dashboard and by the alerts (dlrlens.alerts): one definition

    def window_counts(self, f: Filters, windows: list[tuple[datetime, datetime]], group: str | None = None,
                      group_params: dict | None = None) -> pd.DataFrame:
        """Every count and share of :func:`dlrlens.store.sql.counts_select` (messages per outcome,
        delivery_rate, ...) of the messages matching f's dimension filters (its own range is
        ignored) sent in each of ``windows`` ([start, end) pairs, aware; they may overlap), per
        group: columns w (the window's index), grp, then the counts; only (w, grp) with messages.

        ``group``: an SQL expression over the counts relation's columns (campaign, outcome,
        last_status, label_sets) giving a LIST of the row's group values (a message counts in
        each: a message carrying two label sets counts under both values, as the label filter
        finds it under both); None: one group, ``'all'``. ``group_params``: its bound values.
        Exact at any window boundary: the boundaries are cuts no pre-aggregated slot straddles.
        Cached per data version (rules sharing windows and grouping share the answer)."""
        key = (f, tuple(windows), group, tuple(sorted((group_params or {}).items())))
        return self.cached("window_counts", key, lambda: self._window_counts(f, windows, group, group_params))

    def _window_counts(self, f: Filters, windows: list[tuple[datetime, datetime]], group: str | None,
                       group_params: dict | None) -> pd.DataFrame:
        if not windows:
            return self.query(f"SELECT 0 AS w, {counts_select('NULL::VARCHAR')} FROM (SELECT 1) WHERE FALSE")
        # One counts relation per cluster of overlapping windows (the current window, each
        # baseline day): the rollups are sorted by slot, so only those hours are read, not the
        # days between (measured: 1.8 -> see tests/benchmarks/alerts.py).
        clusters: list[list[datetime]] = []
        for start, end in sorted(windows):
            if clusters and start <= clusters[-1][1]:
                clusters[-1][1] = max(clusters[-1][1], end)
            else:
                clusters.append([start, end])
        edges = sorted({epoch_micros(x) for pair in windows for x in pair})
        parts, params = [], {}
        for start, end in clusters:
            lo, hi = epoch_micros(start), epoch_micros(end)
            part, part_params = self.filtered_counts_sql(replace(f, start=start, end=end),
                                                         tuple(c for c in edges if lo <= c <= hi))
            parts.append(f"SELECT * FROM ({part})")
            params.update(part_params)  # the same dimension parameters in every part
        sql = " UNION ALL ".join(parts)
        params.update(group_params or {})
        table = pd.DataFrame({"w": range(len(windows)), "ws": [s for s, _ in windows], "we": [e for _, e in windows]})
        table["ws"] = pd.to_datetime(table["ws"], utc=True)
        table["we"] = pd.to_datetime(table["we"], utc=True)
        groups = group or "['all']"
        return self.query(
            f"SELECT w, {counts_select('g')} FROM ("
            f"  SELECT x.w, unnest({groups}) AS g, c.* FROM ({sql}) c JOIN alert_windows x ON c.t >= x.ws AND c.t < x.we"
            f") GROUP BY ALL HAVING sum(messages) <> 0 ORDER BY w, grp", params, tables={"alert_windows": table})

    def pending_by_age(self, f: Filters, now: datetime, ages_seconds: tuple[int, ...], group: str | None = None,
                       group_params: dict | None = None) -> pd.DataFrame:
        """Pending messages matching ``f`` by age (``now`` - each message's own sent time) and the
        status they are stuck at: columns grp (see :meth:`window_counts`; ``'all'`` without
        ``group``), bucket_order (0: younger than ages_seconds[0], 1: older than that but younger
        than ages_seconds[1], ..., len(ages_seconds): older than the last), last_status,
        messages; rows with messages only, by grp, bucket_order, messages descending. Cached
        per data version."""
        key = (f, now, tuple(ages_seconds), group, tuple(sorted((group_params or {}).items())))
        return self.cached("pending_by_age", key, lambda: self._pending_by_age(f, now, ages_seconds, group, group_params))

    def _pending_by_age(self, f: Filters, now: datetime, ages_seconds: tuple[int, ...], group: str | None,
                        group_params: dict | None) -> pd.DataFrame:
        # The age buckets' edges: no pre-aggregated slot may straddle one.
        cuts = tuple(epoch_micros(now) - limit * 1_000_000 for limit in ages_seconds)
        sql, params = self.filtered_counts_sql(f, cuts)
        params.update(group_params or {})
        params["now"] = now
        age = seconds_between("t", "$now")
        order = " ".join(f"WHEN {age} < {limit} THEN {i}" for i, limit in enumerate(ages_seconds))
        bucket = f"CASE {order} ELSE {len(ages_seconds)} END" if ages_seconds else "0"
        return self.query(f"""
            SELECT g AS grp, {bucket} AS bucket_order, last_status, sum(messages)::BIGINT AS messages
            FROM (SELECT unnest({group or "['all']"}) AS g, * FROM ({sql}) WHERE outcome = 'pending')
            GROUP BY ALL HAVING sum(messages) > 0 ORDER BY grp, bucket_order, messages DESC, last_status""", params)

    def receipts_received(self, windows: list[tuple[datetime, datetime]]) -> list[int]:
        """How many receipt rows were stored with a ``received_at`` in each of ``windows``
        ([start, end) pairs, aware), counted by whole UTC minutes: a window covers the minutes
        from the one holding its start up to the one holding its end, that one excluded.
        Copies count (a Mobivate retry is traffic too): what "receipts arrived" means for the
        alerts. Per-minute counts are kept per day partition while its files do not change,
        so a repeated question reads only the partitions written since."""
        if not windows:
            return []
        with self.pinned():
            minutes = self._arrivals_per_minute(min(start for start, _ in windows))
        out = []
        for start, end in windows:
            lo, hi = _minute_floor(start), _minute_floor(end)
            out.append(int(minutes[(minutes["minute"] >= lo) & (minutes["minute"] < hi)]["rows"].sum()))
        return out

    def _arrivals_per_minute(self, since: datetime) -> pd.DataFrame:
        # Whole minutes: a window counts from the minute holding its start.
        parts = self.per_partition("arrivals_per_minute", """
            SELECT date_trunc('minute', received_at) AS minute, count(*) AS rows FROM {source} GROUP BY ALL""",
            received_since=_minute_floor(since).to_pydatetime())
        frames = [p for p in parts.values() if len(p)]
        if not frames:
            return pd.DataFrame({"minute": pd.Series([], dtype="datetime64[us, UTC]"), "rows": pd.Series([], dtype="int64")})
        minutes = pd.concat(frames, ignore_index=True)
        minutes["minute"] = pd.to_datetime(minutes["minute"], utc=True)
        return minutes

    def unknown_statuses(self, start: datetime, end: datetime) -> pd.DataFrame:
        """status, status_code, receipts (distinct), first_received_at: the receipts received in
        [start, end) whose status is not in Mobivate's status table
        (:func:`dlrlens.store.sql.unknown_status_condition`), most frequent first. Such
        receipts are rare: they are read per day partition and kept while its files do not
        change, then counted exactly for the window."""
        with self.pinned():
            parts = self.per_partition("unknown_status_receipts", f"""
                SELECT status, status_code, receipt_id, received_at FROM {{source}}
                WHERE {unknown_status_condition()}""", known_statuses(), received_since=start)
        frames = [p for p in parts.values() if len(p)]
        columns = {"status": pd.Series([], dtype=object), "status_code": pd.Series([], dtype="Int32"),
                   "receipts": pd.Series([], dtype="int64"), "first_received_at": pd.Series([], dtype="datetime64[us, UTC]")}
        if not frames:
            return pd.DataFrame(columns)
        rows = pd.concat(frames, ignore_index=True)
        rows["received_at"] = pd.to_datetime(rows["received_at"], utc=True)
        rows = rows[(rows["received_at"] >= pd.Timestamp(start)) & (rows["received_at"] < pd.Timestamp(end))]
        if rows.empty:
            return pd.DataFrame(columns)
        found = (rows.groupby(["status", "status_code"], dropna=False)
                 .agg(receipts=("receipt_id", "nunique"), first_received_at=("received_at", "min")).reset_index())
        return found.sort_values(["receipts", "status"], ascending=[False, True]).reset_index(drop=True)

    def raw_sql(self, since_day: str | None = None, partitions: set[str] | None = None) -> str:
        """``read_parquet`` over the stored receipt rows (compaction inputs whose rows are
        already in a compacted file left out), optionally only partitions from ``since_day``
        or only the named ``partitions``."""
        snap = self._snapshot
        if snap.raw_files is None:
            from dlrlens.store.compaction import stored_files

            visible = set(snap.receipt_files)
            snap.raw_files = [str(p) for p in stored_files(self.data_dir) if str(p) in visible]
        files = [p for p in snap.raw_files
                 if (since_day is None or Path(p).parent.name[len(layout.PARTITION_PREFIX):] >= since_day)
                 and (partitions is None or Path(p).parent.name in partitions)]
        if not files:
            return f"({derive.empty_receipts_sql()})"
        listed = ", ".join(string_literal(p) for p in files)
        return f"read_parquet([{listed}], hive_partitioning = false, union_by_name = true)"

    def event_rows_sql(self, table: str, columns: str = "*") -> str:
        """The stored rows of the event table ``table`` (``clicks``, ``replies``: see
        :mod:`dlrlens.store.events`) in this snapshot, as a relation (duplicates included); only
        ``columns`` (a SELECT list with the table's id and times) when given."""
        return events.rows_sql(self._snapshot.event_files.get(table, []), table, columns)

    def clicks_sql(self, columns: str = "*") -> str:
        """Distinct clicks of this snapshot (:func:`dlrlens.store.events.distinct_clicks_sql`)."""
        return f"({events.distinct_clicks_sql(self.event_rows_sql('clicks', columns))})"

    def replies_sql(self, columns: str = "*") -> str:
        """Distinct replies of this snapshot (:func:`dlrlens.store.events.distinct_replies_sql`)."""
        return f"({events.distinct_replies_sql(self.event_rows_sql('replies', columns))})"

    # -- clicks and replies, linked to their messages (see dlrlens.store.events)

    def _companion_rows_sql(self, kind: str, columns: str, make, named: bool = True) -> str:
        """``columns`` of the ``kind`` companions (clicks, replies) of every derived file, but
        the rows of messages the fresh tail supersedes, plus ``make`` over the tail's merged
        messages (``make``: :func:`dlrlens.store.derive.clicks_companion_sql` or its replies twin)."""
        snap = self._snapshot
        parts = []
        untouched = [x for x in snap.files if x.path not in snap.touched]
        if untouched:
            listed = ", ".join(string_literal(self.data_dir / derive.companion_path(x.path, kind)) for x in untouched)
            parts.append(f"SELECT {columns} FROM read_parquet([{listed}])")
        parts += [self._unsuperseded_sql(x, columns, kind) for x in snap.files if x.path in snap.touched]
        parts.append(f"SELECT {columns} FROM ({make('(SELECT *, NULL::BIGINT AS m_row FROM tail_messages)')})")
        relation = "(" + " UNION ALL ".join(parts) + ")"
        return self._named(relation) if named else relation

    def _unplaced_rows_sql(self, columns: str = ", ".join(derive.STORED_COLUMNS)) -> str:
        """``columns`` of the stored rows without receipts (events, send records of messages
        without any receipt yet): those of the unplaced derived file but the ones the tail
        supersedes, and the tail's own."""
        snap = self._snapshot
        parts = [self._unsuperseded_sql(x, columns) for x in snap.unplaced]
        parts.append(f"SELECT {columns} FROM tail_messages WHERE sent_at IS NULL")
        return "(" + " UNION ALL ".join(parts) + ")"

    def _pool(self) -> None:
        """Tables ``pool_clicks`` and ``pool_replies``: the events no message of this snapshot
        has by id (clicks without ``message_id`` or with an unknown one, replies likewise by
        ``in_reply_to``), linked by reference / batch (:func:`dlrlens.store.events.linked_clicks_sql`,
        :func:`~dlrlens.store.events.linked_replies_sql`) in the columns of
        :meth:`linked_clicks_sql` / :meth:`linked_replies_sql`. Few by design (Mobivate sends
        both ids), made once per snapshot when first asked. Only when some carry a batch id are
        the messages of those batches looked up (a scan of the derived files' batch_id)."""
        with self._lock:
            if not self._snapshot.pooled:
                self._make_pool()

    def _make_pool(self) -> None:
        snap = self._snapshot
        rows = self._unplaced_rows_sql()
        clicks = derive.click_rows_sql(rows, "delivery_message_id AS message_id", tuple(derive.CLICK_FIELDS), placed=False)
        replies = derive.reply_rows_sql(rows, "delivery_message_id AS in_reply_to", tuple(derive.REPLY_FIELDS),
                                        placed=False)
        self._con.execute(f"CREATE OR REPLACE TEMP TABLE pool_raw_clicks AS {clicks}")
        self._con.execute(f"CREATE OR REPLACE TEMP TABLE pool_raw_replies AS {replies}")
        batches = """SELECT batch_id FROM pool_raw_clicks WHERE batch_id IS NOT NULL AND client_ref IS NOT NULL
                     UNION SELECT logical_message_id FROM pool_raw_replies WHERE logical_message_id IS NOT NULL"""
        message_columns = "delivery_message_id, batch_id, client_reference, campaign, sent_at, outcome, last_status, label_sets, delivered_at"
        any_batch = self._con.execute(f"SELECT count(*) FROM ({batches})").fetchone()[0] > 0
        self._con.execute(f"CREATE OR REPLACE TEMP TABLE pool_messages AS SELECT {message_columns} "
                          f"FROM {self.messages_sql()} WHERE {f'batch_id IN ({batches})' if any_batch else 'FALSE'}")
        message = "m.campaign, m.sent_at, m.outcome, m.last_status, m.label_sets"
        no_flags = ", ".join(f"NULL::{kind} AS {flag}" for flag, kind in derive.CLICK_FLAGS.items())
        self._con.execute(f"""
            CREATE OR REPLACE TEMP TABLE pool_clicks AS
            SELECT CASE WHEN lc.linked_id IS NOT NULL THEN hash(lc.linked_id) END AS message_key, lc.linked_by,
                   {message}, m.delivered_at, lc.received_at, lc.url, lc.browser, lc.os, lc.country, {no_flags}
            FROM ({events.linked_clicks_sql('SELECT * FROM pool_raw_clicks', 'pool_messages')}) lc
            LEFT JOIN pool_messages m ON m.delivery_message_id = lc.linked_id""")
        snap.pool_linked_clicks = self._con.execute(
            "SELECT count(*) FROM pool_clicks WHERE message_key IS NOT NULL").fetchone()[0] > 0
        # The same number's replies by inReplyTo to messages of those batches decide a
        # batch-only reply's message: they go in with the pool (and out again after linking).
        direct = self._companion_rows_sql(
            "replies", "reply_id, received_at, created, delivery_message_id AS in_reply_to, "
            "NULL::VARCHAR AS logical_message_id, originator_hash, opt_out, batch_id", derive.replies_companion_sql,
            named=False)
        self._con.execute(f"""
            CREATE OR REPLACE TEMP TABLE pool_replies AS
            WITH firsts AS (SELECT batch_id, arg_min(delivery_message_id, (sent_at, delivery_message_id)) AS first_id
                            FROM pool_messages WHERE batch_id IS NOT NULL GROUP BY ALL),
            candidates AS (SELECT * EXCLUDE (opt_out), opt_out AS stored_opt_out, TRUE AS pooled FROM pool_raw_replies
                           UNION ALL BY NAME
                           SELECT * EXCLUDE (batch_id, opt_out), opt_out AS stored_opt_out, FALSE AS pooled FROM {direct}
                           WHERE batch_id IN (SELECT batch_id FROM firsts)),
            lr AS ({events.linked_replies_sql('SELECT * FROM candidates', 'pool_messages',
                                              opt_out='d.stored_opt_out')})
            SELECT CASE WHEN coalesce(lr.linked_id, b.first_id) IS NOT NULL
                        THEN hash(coalesce(lr.linked_id, b.first_id)) END AS message_key, lr.linked_id, lr.linked_by,
                   CASE WHEN lr.linked_id IS NOT NULL THEN lr.linked_id
                        ELSE lr.linked_batch || chr(31) || coalesce(lr.originator_hash, lr.reply_id) END AS replier,
                   {message}, lr.reply_id, lr.created, lr.received_at, lr.opt_out
            FROM lr LEFT JOIN firsts b ON b.batch_id = lr.linked_batch
                    LEFT JOIN pool_messages m ON m.delivery_message_id = coalesce(lr.linked_id, b.first_id)
            WHERE lr.pooled""")
        snap.pooled = True

    def linked_clicks_sql(self) -> str:
        """Every distinct click of this snapshot (:mod:`dlrlens.store.events`) with its message's
        columns: message_key (``hash(delivery_message_id)`` of its message, NULL: unlinked),
        linked_by (message, reference, NULL), campaign, sent_at, outcome, last_status, label_sets,
        delivered_at (NULL when unlinked), received_at, url, browser, os, country and
        :data:`dlrlens.store.derive.CLICK_FLAGS` (NULL when unlinked). Clicks by message id come
        pre-joined from the derived state's ``clicks`` companions."""
        self._pool()
        flags = ", ".join(derive.CLICK_FLAGS)
        stored = self._companion_rows_sql(
            "clicks", "id_hash AS message_key, 'message' AS linked_by, campaign, sent_at, outcome, last_status, "
            f"label_sets, delivered_at, received_at, url, browser, os, country, {flags}", derive.clicks_companion_sql)
        every = f"(SELECT * FROM {stored} UNION ALL SELECT * FROM pool_clicks)"
        if not self._snapshot.pool_linked_clicks:
            return every
        # Messages with clicks linked by reference too: their flags over all their clicks.
        pooled = "(SELECT DISTINCT message_key FROM pool_clicks WHERE message_key IS NOT NULL)"
        recomputed = derive.click_flags_sql(f"SELECT * EXCLUDE ({flags}) FROM {every} WHERE message_key IN {pooled}",
                                            "message_key")
        return (f"(SELECT * FROM {every} WHERE message_key IS NULL OR message_key NOT IN {pooled} "
                f"UNION ALL SELECT * FROM ({recomputed}))")

    def linked_replies_sql(self) -> str:
        """Every distinct reply of this snapshot with its message's columns: message_key,
        linked_id (the message, NULL: batch-linked or unlinked), linked_by (message, batch,
        NULL), replier (one per message, or per batch and number for a batch-linked reply),
        campaign, sent_at, outcome, last_status, label_sets (of a batch-linked reply: its batch's
        first message's), reply_id, created, received_at, opt_out."""
        self._pool()
        stored = self._companion_rows_sql(
            "replies", "id_hash AS message_key, delivery_message_id AS linked_id, 'message' AS linked_by, "
            "delivery_message_id AS replier, campaign, sent_at, outcome, last_status, label_sets, reply_id, created, "
            "received_at, opt_out", derive.replies_companion_sql)
        return f"(SELECT * FROM {stored} UNION ALL SELECT * FROM pool_replies)"

    def messages_for_ids(self, ids_table: str) -> str:
        """The ``messages`` rows of the ids in table ``ids_table`` (column delivery_message_id),
        found through the id index instead of a scan of every derived file."""
        snap = self._snapshot
        hashes = self._con.execute(f"SELECT hash(delivery_message_id) AS h FROM {ids_table}").fetchnumpy()["h"]
        located = {}
        if snap.files and len(hashes):
            self._index.sync(self.data_dir, list(snap.numbers), self._con,
                             trust_stored=snap.manifest.hash_probe == self._probe)
            located = self._index.locate(hashes)
        stored = derive.stored_rows_at_sql(self.data_dir, located, snap.numbers, ids_table)
        columns = ", ".join(_QUERY_COLUMNS)
        rows = (f"SELECT {columns} FROM ({stored}) s "
                f"WHERE NOT EXISTS (SELECT 1 FROM superseded x "
                f"WHERE x.file_no = s.file_no AND x.row = s.file_row_number) "
                f"UNION ALL SELECT {columns} FROM tail_messages "
                f"WHERE delivery_message_id IN (SELECT delivery_message_id FROM {ids_table})")
        return self._named("(" + derive.messages_view_sql(f"({rows})") + ")")

    def data_range(self) -> tuple[datetime, datetime] | None:
        """Earliest and latest message sent time (UTC) within the charted span
        [:data:`CHARTED_FROM`, :data:`CHARTED_TO`), or None without such messages (for
        defaults such as the date range: a year-9999 receipt must not set them)."""
        return self.cached("data_range", (), self._data_range)

    def _data_range(self):
        snap = self._snapshot
        low, high = epoch_micros(CHARTED_FROM), epoch_micros(CHARTED_TO)
        # A file's sent range from the manifest when it lies inside the span (derived files
        # hold one sent day or hour, so only files of implausible days do not): read the rest.
        inside = [x for x in snap.files if x.path not in snap.touched and low <= x.sent_min_us
                  and x.sent_max_us < high]
        lows, highs = [x.sent_min_us for x in inside], [x.sent_max_us for x in inside]
        kept = {x.path for x in inside}
        rest = [self._unsuperseded_sql(x, "sent_at") if x.path in snap.touched
                else f"SELECT sent_at FROM read_parquet({string_literal(self.data_dir / x.path)})"
                for x in snap.files if x.path not in kept]
        rest.append("SELECT sent_at FROM tail_messages")
        # fetchall, not fetchone: a result left unfinished blocks the connection's next
        # register() (DuckDB 2), e.g. the label filter's catalog.
        lo, hi = self._con.execute(f"SELECT epoch_us(min(sent_at)), epoch_us(max(sent_at)) "
                                   f"FROM ({' UNION ALL '.join(rest)}) WHERE sent_at >= $low AND sent_at < $high",
                                   {"low": CHARTED_FROM, "high": CHARTED_TO}).fetchall()[0]
        lows += [lo] if lo is not None else []
        highs += [hi] if hi is not None else []
        if not lows:
            return None
        return _instant(min(lows)), _instant(max(highs))

    def close(self) -> None:
        with self._lock:
            self._con.close()
            shutil.rmtree(self._spill, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()



def _covers(since_kept: datetime | None, since_asked: datetime | None) -> bool:
    """A per-partition answer kept for rows received since ``since_kept`` (None: all) holds
    every row an ask for ``since_asked`` needs."""
    return since_kept is None or (since_asked is not None and since_kept <= since_asked)


def _net(keys: np.ndarray, counts: np.ndarray, values: np.ndarray | None = None):
    """Sum signed ``counts`` per key (per (key, value) with ``values``) and keep positive sums:
    (keys, counts) or (keys, values, counts), sorted."""
    order = np.lexsort((values, keys)) if values is not None else np.argsort(keys, kind="stable")
    keys, counts = keys[order], counts[order]
    changes = keys[1:] != keys[:-1]
    if values is not None:
        values = values[order]
        changes |= values[1:] != values[:-1]
    starts = np.flatnonzero(np.concatenate([[True], changes])) if len(keys) else _NO_KEYS
    sums = np.add.reduceat(counts, starts) if len(keys) else _NO_KEYS
    keep = sums > 0
    if values is None:
        return keys[starts][keep], sums[keep]
    return keys[starts][keep], values[starts][keep], sums[keep]


def _keys(found: dict[str, np.ndarray]) -> np.ndarray:
    """Latency keys (group code << 32 | bucket) of :meth:`Store.query_arrays` columns grp, b."""
    return (found["grp"].astype(np.int64) << 32) | found["b"].astype(np.int64)


def _members(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """Which of ``values`` are in the sorted array ``sorted_set`` (``np.isin`` for a sorted set)."""
    at = np.searchsorted(sorted_set, values)
    hit = at < len(sorted_set)
    hit[hit] = sorted_set[at[hit]] == values[hit]
    return hit


def _rows_by_file(file_index: np.ndarray, files: int) -> list[np.ndarray]:
    """Row numbers of each of ``files`` files from a ``file_index`` column."""
    file_index = file_index.astype(np.int64)
    order = np.argsort(file_index, kind="stable")
    bounds = np.searchsorted(file_index[order], np.arange(files + 1))
    return [order[bounds[i]:bounds[i + 1]] for i in range(files)]


def _bucket_runs(buckets: pd.Series) -> str:
    """A condition on ``b`` covering ``buckets``: at most :data:`MAX_BUCKET_RUNS` ranges, each
    a filter the Parquet reader can skip row groups with (latency files are sorted by bucket)."""
    runs = [[b, b] for b in sorted(set(int(b) for b in buckets))]
    while len(runs) > MAX_BUCKET_RUNS:  # join the two runs closest to each other
        i = min(range(len(runs) - 1), key=lambda k: runs[k + 1][0] - runs[k][1])
        runs[i:i + 2] = [[runs[i][0], runs[i + 1][1]]]
    return "(" + (" OR ".join(f"b BETWEEN {lo} AND {hi}" for lo, hi in runs) or "FALSE") + ")"


def _at(micros: int) -> str:
    """SQL literal of the instant ``micros`` (epoch microseconds, UTC session)."""
    return f"make_timestamp({int(micros)})::TIMESTAMPTZ"


def _day_floor(moment: datetime) -> datetime:
    return pd.Timestamp(moment).tz_convert("UTC").floor("D").to_pydatetime()


def _minute_floor(moment: datetime) -> pd.Timestamp:
    return pd.Timestamp(moment).tz_convert("UTC").floor("min")


def epoch_micros(moment: datetime) -> int:
    """Epoch microseconds of the aware ``moment`` (exact: no float)."""
    delta = moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _instant(micros: int) -> datetime:
    """The UTC datetime of epoch microseconds ``micros`` (inside Python's years 1-9999)."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(micros))


def _copy(value):
    if isinstance(value, pd.DataFrame):
        return value.copy()
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return list(value)
    return value


# --------------------------------------------------------------------------- labels


def _label_condition(store: Store, f: Filters):
    """Label pair i matches a message whose label sets hold a labels text with that pair: the
    (few) matching label-set texts are found once over the catalog, then compared as strings."""
    if not f.labels:
        return None
    catalog = _label_catalog(store)

    def condition(i: int, key: str, value: str, params: dict) -> str:
        matching = store.query(
            "SELECT label_sets FROM (SELECT label_sets::VARCHAR AS label_sets FROM catalog) "
            "WHERE EXISTS (SELECT 1 FROM unnest(from_json(label_sets, '[\"VARCHAR\"]')) t(l) "
            "WHERE json_extract_string(l, $path) = $value)",
            {"path": json_pointer(key), "value": value}, tables={"catalog": catalog[["label_sets"]]})
        params[f"label_sets_{i}"] = matching["label_sets"].tolist()
        return f"list_contains($label_sets_{i}, label_sets)"
    return condition


def _label_catalog(store: Store) -> pd.DataFrame:
    """The rows of :meth:`Store.label_sets_sql` (the label filter matches pairs against them)."""
    return store.cached("label_catalog", (), lambda: store.query(*store.label_sets_sql()))


def named_sql(relation: str, names: str, columns: str = "*") -> str:
    """``relation`` (SQL with a ``campaign`` column; ``columns`` of it) with each campaign that
    is a campaign id of ``names`` (a relation of ``campaign_id``, ``name``: the names in force,
    :func:`dlrlens.store.sends.names_sql`) shown by its name: :meth:`Store._named`'s SQL, also
    other engines' (:mod:`dashboard.engine_sql`)."""
    return (f"(SELECT r.* REPLACE (coalesce(cn.name, r.campaign) AS campaign) FROM (SELECT {columns} FROM {relation}) r "
            f"LEFT JOIN {names} cn ON cn.campaign_id = r.campaign)")


def log_only_messages_sql(rows: str, where: str = "TRUE") -> str:
    """The messages of ``rows`` (send record rows without receipts: ``delivery_message_id``
    and :data:`dlrlens.store.derive.SEND_VIEW_COLUMNS`) meeting ``where``, with the columns
    of a message the cost cubes read: ``campaign`` (the record's campaignId, else ``(none)``;
    unnamed: see :func:`named_sql`), ``outcome``, ``last_status`` and ``label_sets`` (NULL)."""
    return f"""(
        SELECT *, coalesce(log_campaign_id, '{sends.NO_CAMPAIGN}') AS campaign, NULL::VARCHAR AS outcome,
               NULL::VARCHAR AS last_status, NULL::VARCHAR AS label_sets
        FROM {rows} WHERE {where})"""


# --------------------------------------------------------------------------- exact percentiles


def _exact_quantiles(store: Store, f: Filters, group: str | None, names, kind: _LatencyKind = DELIVERY,
                     count: str | None = None) -> pd.DataFrame:
    """:meth:`Store.latency_quantiles` (columns grp and ``names``, one per :data:`QUANTILES`).

    Two passes instead of DuckDB's sort of every value: (1) the latency counts per (group,
    bucket) (:meth:`Store.latency_counts`: the pre-aggregated histograms, kept per derived
    file); (2) only the values at the ranks floor(rn) and ceil(rn), rn = (n - 1) * q, from the
    buckets that hold them (:meth:`Store.latency_values`: read from the latency files sorted
    by bucket once per file and bucket, then kept); then interpolated bit for bit as DuckDB
    does (see :func:`_interpolation`). Identical to DuckDB's own result: the ranks are counted
    in the same doubles, and the values are the same integers.
    """
    interpolate = _interpolation()
    if interpolate is None:
        return _quantiles_by_duckdb(store, f, group, names, kind, count)
    grp = group or "'all'"  # a text: the keys code group values (Store.query_arrays)
    params: dict = {}
    conditions = dimension_conditions(replace(f, outcomes=()), params, store.label_condition(f))
    if kind is SUBMISSION and f.has_send_filters():
        kind = SUBMISSION_BY_SEND
        conditions += send_conditions(f, params)
    conditions = " AND ".join(conditions)
    with store.pinned():
        counts = store.latency_counts(f, grp, conditions, params, kind)
        if not len(counts.keys):
            return _quantile_frame(names, count)
        # Pass 1 -> per group and quantile the ranks floor(rn) and ceil(rn) (0-based, over the
        # group's latencies in bucket order), and the bucket (key) and position in it of each.
        keys, n = counts.keys, counts.counts
        upto = np.cumsum(n)
        first = np.flatnonzero(np.concatenate([[True], (keys[1:] >> 32) != (keys[:-1] >> 32)]))
        before_group = upto[first] - n[first]
        totals = np.add.reduceat(n, first)
        rows = []  # (group index, quantile index, rn, rank low, rank high)
        for k, (_, q) in enumerate(QUANTILES):
            rn = (totals - 1).astype(np.float64) * q
            rows.append((np.arange(len(first)), np.full(len(first), k), rn,
                         np.floor(rn).astype(np.int64), np.ceil(rn).astype(np.int64)))
        group_no, quantile, rn, low, high = (np.concatenate(part) for part in zip(*rows))
        targets = np.concatenate([before_group[group_no] + low, before_group[group_no] + high])
        at = np.searchsorted(upto, targets, side="right")
        wanted_keys, wanted_pos = keys[at], targets - (upto[at] - n[at])
        # Pass 2: the values at those positions.
        value_keys, values, signs = store.latency_values(counts, grp, conditions, params, wanted_keys)
    value_keys, values, signs = _net(value_keys, signs, values)
    value_upto = np.cumsum(signs)
    starts = np.searchsorted(value_keys, wanted_keys, side="left")
    found = starts < len(value_keys)
    found[found] = value_keys[starts[found]] == wanted_keys[found]
    if not found.all():  # the histograms and the values disagree: never seen
        return _quantiles_by_duckdb(store, f, group, names, kind, count)
    at = np.searchsorted(value_upto, value_upto[starts] - signs[starts] + wanted_pos, side="right")
    if not (at < len(value_keys)).all() or not (value_keys[np.minimum(at, len(value_keys) - 1)] == wanted_keys).all():
        return _quantiles_by_duckdb(store, f, group, names, kind, count)
    picked = values[at]
    low_values, high_values = picked[:len(group_no)], picked[len(group_no):]
    groups = store.group_name(keys[first])
    out = {g: [math.nan] * len(names) for g in groups}
    for g, k, r, lo_us, hi_us in zip(groups[group_no], quantile, rn, low_values, high_values):
        d = r - math.floor(r)
        lo = int(lo_us) / 1e6
        out[g][k] = lo if d == 0 else interpolate(lo, int(hi_us) / 1e6, d)
    frame = pd.DataFrame([[g, *v] for g, v in out.items()], columns=["grp"] + names)
    if count:
        frame[count] = totals
    return frame


def _quantiles_by_duckdb(store: Store, f: Filters, group: str | None, names, kind: _LatencyKind = DELIVERY,
                         count: str | None = None) -> pd.DataFrame:
    """:meth:`Store.latency_quantiles` by DuckDB's ``quantile_cont`` over the messages."""
    sql, params = store.filtered_messages_sql(f)
    if kind is SUBMISSION:
        sql = f"SELECT * FROM ({submission_latency_sql(sql)}) WHERE {' AND '.join(['TRUE'] + send_conditions(f, params))}"
    return store.query(quantiles_by_group_sql(sql, group, names, count), params)


def submission_latency_sql(messages: str) -> str:
    """The times from submission (:func:`dlrlens.store.derive.submission_view_sql`) of the
    messages ``messages`` (a query) with ``latency_s``: what :func:`quantiles_by_group_sql`
    takes the percentiles of (kind :data:`SUBMISSION`)."""
    return f"SELECT *, latency_us / 1e6 AS latency_s FROM ({derive.submission_view_sql(messages)})"


def quantiles_by_group_sql(messages: str, group: str | None, names, count: str | None = None) -> str:
    """``quantile_cont(latency_s, q)`` for each q of :data:`QUANTILES` (columns ``names``) over
    the messages with a latency in ``messages`` (a query), overall or per ``group`` (column
    ``grp``): the straightforward percentiles, which the fast path reproduces bit for bit."""
    columns = ", ".join(f"quantile_cont(latency_s, {q}) AS {name}" for name, (_, q) in zip(names, QUANTILES))
    columns += f", count(latency_s) AS {count}" if count else ""
    return f"SELECT {group or '0'} AS grp, {columns} FROM ({messages}) WHERE latency_s IS NOT NULL GROUP BY ALL"


def _quantile_frame(names, count: str | None = None) -> pd.DataFrame:
    """No percentiles: the columns grp and ``names`` (and ``count``), no rows."""
    return pd.DataFrame({"grp": pd.Series([], dtype=object), **{n: pd.Series([], dtype="float64") for n in names},
                         **({count: pd.Series([], dtype="int64")} if count else {})})


def _fused_interpolation(lo: float, hi: float, d: float) -> float:
    """fma(lo, 1 - d, hi * d): DuckDB's ``lo * (1.0 - d) + hi * d`` as its build contracts it."""
    return float(Fraction(lo) * Fraction(1.0 - d) + Fraction(hi * d))


def _plain_interpolation(lo: float, hi: float, d: float) -> float:
    return lo * (1.0 - d) + hi * d


@lru_cache(maxsize=1)
def _interpolation():
    """The interpolation that reproduces this DuckDB's quantile_cont bit for bit (its double
    formula may or may not be compiled to a fused multiply-add), checked on random cases;
    None if neither does (then DuckDB computes the percentiles itself)."""
    rng = np.random.default_rng(7)
    cases = [(float(a) / 1e6, float(a + b) / 1e6, float(d))
             for a, b, d in zip(rng.integers(1, 10**10, 300), rng.integers(1, 10**9, 300), rng.random(300))]
    con = derive.connect({"threads": 1})
    try:
        want = [con.execute("SELECT quantile_cont(x, $d) FROM (SELECT unnest([$lo, $hi]) AS x)",
                            {"lo": lo, "hi": hi, "d": d}).fetchone()[0] for lo, hi, d in cases]
    finally:
        con.close()
    for candidate in (_fused_interpolation, _plain_interpolation):
        if all(candidate(lo, hi, d) == w for (lo, hi, d), w in zip(cases, want)):
            return candidate
    return None

