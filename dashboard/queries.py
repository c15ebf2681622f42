"""Every number the dashboard, its downloads and ``dlrlens report`` show (no Streamlit here).

Plain functions ``(store, filters, ...) -> pandas.DataFrame`` over the collector's data (see
``dlrlens/store/layout.py``), computed with DuckDB. None raises on empty data: they return an
empty frame with the documented columns (KPIs: one row of zeros/NaN).

KPI definitions (identical on screen, in downloads and in reports; the wording users see is
``dashboard.report.KPI_DEFINITIONS``). Every per-message one is duplicate-insensitive: the
same receipt stored twice changes nothing.

* Message: one delivery_message_id.
* Campaign: the message's ``campaign`` label (from its earliest labelled receipt), else its
  batch_id, else ``(none)``.
* Sent time: the earliest ``created`` of its receipts; date filters and buckets use it.
  Charts over time (:func:`trend`, :func:`failure_reasons_over_time`) cover sent times in
  [:data:`CHARTED_FROM`, :data:`CHARTED_TO`) only; :func:`uncharted_messages` counts the
  others (a far-off ``created`` already stored), which every other figure includes.
* Outcome: the final receipt (category != pending) with the latest created decides (ties:
  latest received_at, then status name); no final receipt -> ``pending``. ``reason`` is the
  deciding status of a failed message; ``last_status`` is the deciding status of a finished
  message, or the latest status of a pending one (where it is stuck).
* Regressions: messages whose latest intermediate receipt is created after their deciding
  final receipt.
* Delivery rate = delivered / (delivered + failed + unknown); delivered of all = delivered / messages.
* Latency: created of the first DELIVERED receipt minus sent time, for delivered messages with
  an earlier receipt only; percentiles by linear interpolation (quantile_cont == numpy), exact.
* Per-receipt figures (receipts = distinct receipt_id, duplicate_rows = stored rows minus
  receipts, webhook lag = received_at - created of the first stored copy) come from the raw
  receipts: :func:`data_health`, and :func:`kpis` / :func:`campaigns` with
  ``receipt_figures=True`` (slow at scale; without it those columns are NaN).

How it stays fast over 100 M receipts: the collector maintains the per-message state in
``data/derived/`` (``dlrlens/store/derive.py``). A :class:`Store` reads those files straight
from disk (nothing is copied into memory) and merges in the *fresh tail*, the receipt files
the state has not absorbed yet: their messages' partial state is merged with the stored rows
of the same messages (found through an id-hash index), and those stored rows are left out.
Without derived data (fresh install) everything is tail: slower, but the same numbers.
Results are cached per (function, arguments, data version). Exact percentiles also keep, per
derived file (immutable: a rewrite has a new name), its latency counts and the latency values
a percentile needed (:meth:`Store.latency_counts`), so after a data change only new files,
the fresh tail and messages outside the files are read again.

Lists meant for widgets are bounded whatever the data holds: :func:`campaign_choices` and
:func:`label_choices` rank, search and ``LIMIT`` in DuckDB (at most :data:`OPTION_LIMIT`
values reach Python); :func:`campaign_names` and :func:`label_pairs` list everything.
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
from fractions import Fraction
from functools import lru_cache
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo, available_timezones

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from dlrlens.store import derive, layout
from dlrlens.statuses import status_table
from dashboard import _sql, safe_text

UTC = timezone.utc

OUTCOMES = ("delivered", "failed", "unknown", "pending")
AGE_BUCKETS = ("<1 h", "1-24 h", "1-3 d", ">3 d")
NO_CAMPAIGN = "(none)"
AUTO_HOUR_BUCKETS_UP_TO = timedelta(days=3)
MAX_FILLED_BUCKETS = 5000
# The span of sent times the charts over time cover (see uncharted_messages). Receipts already
# stored may carry any created the collector's parser took (years 1 to 9999: a sender's clock
# gone wrong, a 9999-12-31 or 1970-01-01 placeholder): bucketing those means millions of empty
# days, instants past Python's year 9999 or pandas' nanosecond range (1677-2262). Every other
# figure counts such messages; time charts leave them out and say how many. The span starts
# after the epoch: a created of 0 is a placeholder, not a send (and the derived 15-minute
# slots of instants before it are rounded towards it, see dlrlens.store.derive.slot_sql).
CHARTED_FROM = datetime(2000, 1, 1, tzinfo=timezone.utc)
CHARTED_TO = datetime(2100, 1, 1, tzinfo=timezone.utc)
# Filter widgets list at most this many values (the busiest first) and find others by a search
# on the server: every rerun sends a widget's options to the browser.
OPTION_LIMIT = 200

COUNT_KPIS = [
    "messages", "delivered", "failed", "unknown", "pending", "latency_messages",
    "delivered_without_earlier", "receipts", "duplicate_rows", "regressions",
]
KPI_COLUMNS = [
    "messages", "delivered", "failed", "unknown", "pending", "delivery_rate", "delivered_of_all",
    "latency_p50_s", "latency_p90_s", "latency_p95_s", "latency_p99_s", "latency_messages",
    "delivered_without_earlier", "within_10s", "within_1m", "within_5m", "within_1h",
    "webhook_lag_p50_s", "webhook_lag_p95_s", "receipts", "duplicate_rows", "regressions",
]
RECEIPT_KPIS = ["webhook_lag_p50_s", "webhook_lag_p95_s", "receipts", "duplicate_rows"]
TREND_COLUMNS = ["bucket_start", "messages", "delivered", "failed", "unknown", "pending", "delivery_rate"]
LATENCY_COLUMNS = ["latency_messages", "p50_s", "p90_s", "p95_s", "p99_s",
                   "within_10s", "within_1m", "within_5m", "within_1h"]
LOOKUP_COLUMNS = ["delivery_message_id", "batch_id", "client_reference", "created", "received_at", "status",
                  "status_code", "category", "part", "parts", "hlr", "campaign", "labels", "receipt_id", "copies"]
DETAIL_COLUMNS = ["delivery_message_id", "campaign", "batch_id", "client_reference", "sent_at", "outcome",
                  "reason", "last_status", "delivered_at", "latency_s", "receipts"]

STORE_SETTINGS = {"threads": 2, "memory_limit": "2GB"}
LISTING_SETTLE_SECONDS = 2.0
MAX_BUCKET_RUNS = 2  # latency value reads: at most this many bucket ranges
RESULT_CACHE_ENTRIES = 256
# Latency partials kept per derived file (Store.latency_counts): groupings (group, filters) and
# latency values (8 bytes each, plus an 8-byte key) at most. Campaigns over all time at 100 M
# receipts keeps ~0.6 M counts and ~0.4 M values.
LATENCY_CACHE_SPECS = 8
LATENCY_CACHE_VALUES = 8_000_000
_NO_KEYS = np.zeros(0, np.int64)

# --------------------------------------------------------------------------- filters


@dataclass(frozen=True)
class Filters:
    """What to look at. Hashable (usable as a cache key); lists are turned into tuples.

    ``start`` (inclusive) and ``end`` (exclusive) compare with a message's sent time; a naive
    datetime is taken as wall-clock time in ``tz``. ``statuses`` match a message's
    ``last_status`` (failure reason of a failed message, latest status of a pending one).
    Raises ValueError for an unknown zone or outcome.
    """

    start: datetime | None = None
    end: datetime | None = None
    campaigns: tuple[str, ...] = ()
    outcomes: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    tz: str = "UTC"

    def __post_init__(self):
        zone = zone_info(self.tz)
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, pd.Timestamp):
                    value = value.to_pydatetime()
                if value.tzinfo is None:
                    value = value.replace(tzinfo=zone)
                object.__setattr__(self, name, value)
        object.__setattr__(self, "campaigns", tuple(self.campaigns))
        object.__setattr__(self, "outcomes", tuple(self.outcomes))
        object.__setattr__(self, "statuses", tuple(s.strip().upper() for s in self.statuses))
        object.__setattr__(self, "labels", tuple((str(k), str(v)) for k, v in self.labels))
        unknown = set(self.outcomes) - set(OUTCOMES)
        if unknown:
            raise ValueError(f"unknown outcome(s) {sorted(unknown)}; choose from {', '.join(OUTCOMES)}")

    def previous_period(self) -> "Filters | None":
        """The same filters over the equally long period right before [start, end), or None."""
        if self.start is None or self.end is None:
            return None
        try:
            return replace(self, start=self.start - (self.end - self.start), end=self.start)
        except OverflowError:  # it would begin before year 1: there is no such period
            return None


def zone_info(name: str) -> ZoneInfo:
    """The IANA zone ``name``; ValueError with a clear message if there is none."""
    if name != "UTC" and name not in _zone_names():
        raise ValueError(f"unknown time zone {name!r} (use an IANA name such as Europe/Berlin)")
    return ZoneInfo(name)


@lru_cache(maxsize=1)
def _zone_names() -> frozenset[str]:
    # "localtime" is the host's zone file, not an IANA name (DuckDB does not know it).
    return frozenset(available_timezones()) - {"localtime"}


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


MEASURES = ("messages", "latency_messages", "within_10s", "within_1m", "within_5m", "within_1h",
            "delivered_without_earlier", "regressions")


# Stored derived columns a query can use (the rest only matters for merging).
_QUERY_COLUMNS = ("delivery_message_id", "campaign", "batch_id", "client_reference", "sent_at", "outcome",
                  "last_status", "final_created", "first_delivered_at", "latency_us", "regression", "label_sets")


class Store:
    """One read-only DuckDB connection over a data directory (cache one per dashboard session).

    Thread-safe: queries are serialised by a lock. Every query first makes sure the snapshot
    matches the data on disk (a directory listing and the manifest); use :meth:`pinned` to
    keep one snapshot for a group of queries (e.g. one page render).
    """

    duckdb_quantiles = False  # percentiles by the exact two-pass method (see latency_quantiles)

    def __init__(self, data_dir: str | Path, settings: dict | None = None):
        self.data_dir = Path(data_dir)
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
        self._listings: dict[str, tuple[int, list]] = {}
        self._manifest_cache = None
        # Latency partials per derived file (see latency_counts): {(group, conditions, params):
        # {hist companion path: _FileLatency}}, least recently used first; they outlive data
        # versions (a file never changes), unlike the results.
        self._latency_partials: OrderedDict[tuple, dict[str, _FileLatency]] = OrderedDict()
        self._group_codes: dict = {}
        self._group_names: list = []
        self._empty_tables()

    # -- files and versions

    def _files(self) -> list[tuple[str, int, int]]:
        """(path, size, mtime_ns) of every visible receipt file; vanished ones skipped.

        A partition directory is listed again only when its mtime changed (files are only
        ever added, renamed into place or removed, which all change it) or is recent (the
        kernel's timestamps are coarse: a change in the same tick would go unnoticed)."""
        root = layout.receipts_dir(self.data_dir)
        now = time.time()
        found = []
        try:
            partitions = sorted(e.name for e in os.scandir(root)
                                if e.name.startswith(layout.PARTITION_PREFIX) and e.is_dir())
        except FileNotFoundError:
            return found
        listed: dict[str, tuple[int, list]] = {}
        for partition in partitions:
            directory = root / partition
            try:
                mtime = os.stat(directory).st_mtime_ns
            except FileNotFoundError:
                continue
            cached = self._listings.get(partition)
            if cached is None or cached[0] != mtime or now - mtime / 1e9 < LISTING_SETTLE_SECONDS:
                files = []
                for rel, (size, file_mtime) in derive.partition_files(self.data_dir, partition).items():
                    files.append((str(self.data_dir / rel), size, file_mtime))
                cached = (mtime, files)
            listed[partition] = cached
            found += cached[1]
        self._listings = listed
        return found

    def _state(self) -> tuple[str, derive.Manifest | None, list[tuple[str, int, int]]]:
        # The manifest first: a receipt file absorbed after this read is then still read as tail.
        manifest = self._manifest()
        files = self._files()
        digest = hashlib.sha256(f"{manifest.version if manifest else -1}\n".encode())
        for path, size, mtime in files:
            digest.update(f"{path}\0{size}\0{mtime}\n".encode())
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

    def _prepare(self, version: str, manifest: derive.Manifest | None, files: list[tuple[str, int, int]]) -> None:
        """Merge the fresh tail: ``tail_messages`` (merged state of every message it touches)
        and ``superseded`` (the derived rows those replace)."""
        self._snapshot = None
        listing = {str(Path(path).relative_to(self.data_dir)): (size, mtime) for path, size, mtime in files}
        derived = list(manifest.files) if manifest else []
        numbers = {f.path: i for i, f in enumerate(derived)}
        tail, _ = derive.unabsorbed(self.data_dir, listing, manifest.absorbed if manifest else set())
        con = self._con
        self._empty_tables()
        if tail:
            con.execute(f"CREATE OR REPLACE TEMP TABLE tail_partial AS "
                        f"{derive.combine_sql(derive.receipt_units_sql(derive.parquet_source()))}",
                        {"files": [str(self.data_dir / p) for p in tail]})
            located: dict[str, np.ndarray] = {}
            if derived:
                hashes = con.execute("SELECT hash(delivery_message_id) AS h FROM tail_partial").fetchnumpy()["h"]
                self._index.sync(self.data_dir, list(numbers), con, trust_stored=manifest.hash_probe == self._probe)
                located = self._index.locate(hashes)
            con.execute(f"CREATE OR REPLACE TEMP TABLE tail_old AS "
                        f"{derive.stored_rows_at_sql(self.data_dir, located, numbers, 'tail_partial')}")
            con.execute("INSERT INTO superseded SELECT file_no, file_row_number FROM tail_old")
            con.execute(f"CREATE OR REPLACE TEMP TABLE tail_messages AS "
                        f"{derive.merge_sql('SELECT * FROM tail_partial', derive.state_units_sql('tail_old'))}")
            con.execute("DROP TABLE tail_partial")
        self._tail_corrections()
        touched = {derived[n].path: n for (n,) in con.execute("SELECT DISTINCT file_no FROM superseded").fetchall()}
        self._snapshot = _Snapshot(version=version, manifest=manifest, files=derived, tail=tail, touched=touched,
                                   numbers=numbers, receipt_files={path: (size, mtime) for path, size, mtime in files})

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
        start_us = _micros(f.start) if f is not None and f.start is not None else None
        end_us = _micros(f.end) if f is not None and f.end is not None else None
        columns = ", ".join(_QUERY_COLUMNS)
        wanted = [x for x in snap.files if x.path not in exclude
                  and (start_us is None or x.sent_max_us >= start_us) and (end_us is None or x.sent_min_us < end_us)]
        parts = []
        untouched = [x for x in wanted if x.path not in snap.touched]
        if untouched:
            parts.append(f"SELECT {columns} FROM read_parquet({self._paths(untouched)})")
        for x in wanted:
            if x.path in snap.touched:
                parts.append(self._touched_sql(x, columns))
        parts.append(f"SELECT {columns} FROM tail_messages")
        return "(" + derive.messages_view_sql("(" + " UNION ALL ".join(parts) + ")") + ")"

    def label_condition(self, f: "Filters"):
        """The label-pair condition builder for :func:`_sql.dimension_conditions`."""
        return _label_condition(self, f)

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
        start_us = _micros(f.start) if f.start is not None else None
        end_us = _micros(f.end) if f.end is not None else None
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
        return "read_parquet([" + ", ".join(_quote(self.data_dir / derive.companion_path(x.path, kind))
                                            for x in files) + "])"

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
        if regions.used and self._snapshot.tail:
            pieces.append(tail.format(inside=regions.inside("t" if kind == "rollup" else "sent_at")))
        if regions.raw is not None:
            pieces.append(make(f"SELECT * FROM {regions.raw} WHERE {regions.outside}"))
        return pieces

    def _tail_corrections(self) -> None:
        """Tables ``tail_counts`` and ``tail_latency``: the fresh tail's merged messages (+1)
        and the stored rows they replace (-1), as counts rows (t = exact sent time) and latency
        rows; the companions' figures plus these are exact."""
        new, old = derive.messages_view_sql("tail_messages"), derive.messages_view_sql("tail_old")
        negated = ", ".join(f"-{m} AS {m}" for m in MEASURES)
        self._con.execute(f"""
            CREATE OR REPLACE TEMP TABLE tail_counts AS
            SELECT * FROM ({derive.rollup_sql(new, t="sent_at")})
            UNION ALL
            SELECT t, campaign, outcome, last_status, label_sets, {negated}
            FROM ({derive.rollup_sql(old, t="sent_at")})""")

        def latency(view: str, sign: int) -> str:
            return (f"SELECT sent_at, {derive.latency_bucket_sql()} AS b, latency_us, campaign, label_sets, "
                    f"last_status, {sign} AS n FROM ({view}) WHERE latency_us IS NOT NULL")
        self._con.execute(f"CREATE OR REPLACE TEMP TABLE tail_latency AS {latency(new, 1)} UNION ALL {latency(old, -1)}")

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
        conditions = _sql.dimension_conditions(f, params, self.label_condition(f))
        return f"SELECT * FROM {relation} WHERE {' AND '.join(conditions)}", params

    def hist_sql(self, f: "Filters", params: dict) -> str:
        """Latency counts (campaign, label_sets, last_status, b, n; signed: sum n) of the
        messages sent in f's range."""
        tail = "SELECT campaign, label_sets, last_status, b, n FROM tail_latency WHERE {inside}"
        return "(" + " UNION ALL ".join(f"SELECT campaign, label_sets, last_status, b, n FROM ({sql})"
                                        for sql in self._pieces(f, params, "hist", derive.hist_sql, tail)) + ")"

    # -- latency partials per derived file (exact percentiles, see latency_quantiles)

    def latency_counts(self, f: "Filters", group: str, conditions: str, params: dict) -> "_LatencyCounts":
        """Pass 1 of :func:`latency_quantiles`: the latency counts of the messages matching
        ``f`` per (``group``, bucket), for the rows meeting ``conditions`` (SQL on campaign,
        label_sets, last_status with ``params``). ``group``: a text expression.

        Each used derived file's counts are computed once and kept (:class:`_FileLatency`, by
        the companion's path, size and mtime: derived files are immutable), so a query reads
        only new files, the fresh tail's corrections and the messages outside the files."""
        with self._lock:
            regions = self._regions(f, params)
            spec = (group, conditions, json.dumps(params, sort_keys=True, default=str))
            files = self._file_latency(spec, regions.used, group, conditions, params)
            keys = [x.count_keys for x in files.values()]
            counts = [x.counts for x in files.values()]
            tail = "SELECT campaign, label_sets, last_status, b, n FROM tail_latency WHERE {inside}"
            computed = self._computed_pieces(regions, "hist", derive.hist_sql, tail)
            if computed:
                union = " UNION ALL ".join(f"SELECT campaign, label_sets, last_status, b, n FROM ({sql})"
                                           for sql in computed)
                fresh = self.query_arrays(f"SELECT {group} AS grp, b, sum(n)::BIGINT AS n FROM ({union}) "
                                          f"WHERE {conditions} GROUP BY ALL", params)
                keys.append(_keys(fresh))
                counts.append(fresh["n"].astype(np.int64))
            key, count = _net(np.concatenate(keys or [_NO_KEYS]), np.concatenate(counts or [_NO_KEYS]))
            return _LatencyCounts(spec=spec, regions=regions, files=files, keys=key, counts=count)

    def latency_values(self, counts: "_LatencyCounts", group: str, conditions: str, params: dict,
                       wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pass 2 of :func:`latency_quantiles`: every latency in the (group, bucket) ``wanted``
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
            if need:
                self._fetch_latency_values(counts.files, need, group, conditions, params)
            keys, values, signs = [], [], []
            for partial in counts.files.values():
                hit = _members(partial.value_keys, wanted)
                keys.append(partial.value_keys[hit])
                values.append(partial.values[hit])
                signs.append(np.ones(len(keys[-1]), np.int64))
            tail = "SELECT b, latency_us, campaign, label_sets, last_status, n FROM tail_latency WHERE {inside}"
            computed = lambda view: f"SELECT *, 1 AS n FROM ({derive.latency_values_sql(view)})"  # noqa: E731
            pieces = self._computed_pieces(counts.regions, "latency", computed, tail)
            if pieces:
                wanted_frame = self._key_frame(wanted)
                union = " UNION ALL ".join(f"SELECT b, latency_us, campaign, label_sets, last_status, n FROM ({sql}) "
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
                      params: dict) -> dict[str, "_FileLatency"]:
        """{hist companion path: its partial} for ``used``, reading the counts of files not kept yet."""
        kept = self._latency_partials.pop(spec, {})
        self._latency_partials[spec] = kept  # most recently used last
        identities = {}
        for x in used:
            path = str(self.data_dir / derive.companion_path(x.path, "hist"))
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
            found = self.query_arrays(f"SELECT file_index, {group} AS grp, b, sum(n)::BIGINT AS n "
                                      f"FROM read_parquet([{', '.join(_quote(p) for p in missing)}]) "
                                      f"WHERE {conditions} GROUP BY ALL", params)
            keys, n = _keys(found), found["n"].astype(np.int64)
            for path, rows in zip(missing, _rows_by_file(found["file_index"], len(missing))):
                key, count = _net(keys[rows], n[rows])
                kept[path] = _FileLatency(identity=identities[path], count_keys=key, counts=count)
        return {p: kept[p] for p in identities}

    def _fetch_latency_values(self, files: dict[str, "_FileLatency"], need: dict[str, np.ndarray], group: str,
                              conditions: str, params: dict) -> None:
        """Read the latency values of the keys ``need`` ({hist companion path: keys}) from the
        latency companions into the files' partials."""
        paths = list(need)
        latency = [p.replace(f"/{derive.DERIVED_DIR}/hist/", f"/{derive.DERIVED_DIR}/latency/", 1) for p in paths]
        # One scan for every key missing somewhere (a semi-join on two columns, as cheap as the
        # plain read); each file then keeps only the keys it was asked for.
        wanted = self._key_frame(np.unique(np.concatenate(list(need.values()))))
        found = self.query_arrays(
            f"SELECT * FROM (SELECT file_index, {group} AS grp, b, latency_us "
            f"FROM read_parquet([{', '.join(_quote(p) for p in latency)}]) "
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

    def _touched_sql(self, x: derive.DerivedFile, columns: str) -> str:
        return (f"SELECT {columns} FROM read_parquet({_quote(self.data_dir / x.path)}, file_row_number = true) "
                f"WHERE file_row_number NOT IN "
                f"(SELECT row FROM superseded WHERE file_no = {self._snapshot.touched[x.path]})")

    def _paths(self, files) -> str:
        return "[" + ", ".join(_quote(self.data_dir / x.path) for x in files) + "]"

    def per_partition(self, name: str, select: str, params: dict | None = None) -> dict[str, pd.DataFrame]:
        """{partition: ``select`` (SQL over ``{source}``, the partition's stored receipt rows)},
        cached per partition while its files do not change. For figures that add up over
        partitions: copies of a receipt share its created day, so distinct counts do."""
        self.raw_sql()
        snap = self._snapshot
        groups: dict[str, list[str]] = {}
        for path in snap.raw_files:
            groups.setdefault(Path(path).parent.name, []).append(path)
        out = {}
        for partition, paths in sorted(groups.items()):
            key = (name, partition, tuple((p, *snap.receipt_files[p]) for p in sorted(paths)))
            if key not in self._per_partition:
                stale = [k for k in self._per_partition if k[:2] == (name, partition)]
                for k in stale:
                    del self._per_partition[k]
                source = "read_parquet([" + ", ".join(_quote(p) for p in paths) + "], union_by_name = true)"
                self._per_partition[key] = self._con.execute(select.format(source=source), params or {}).df()
            out[partition] = self._per_partition[key]
        return out

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
        listed = ", ".join(_quote(p) for p in files)
        return f"read_parquet([{listed}], hive_partitioning = false, union_by_name = true)"

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
        return "(" + derive.messages_view_sql(f"({rows})") + ")"

    def data_range(self) -> tuple[datetime, datetime] | None:
        """Earliest and latest message sent time (UTC) within the charted span
        [:data:`CHARTED_FROM`, :data:`CHARTED_TO`), or None without such messages (for
        defaults such as the date range: a year-9999 receipt must not set them)."""
        return self.cached("data_range", (), self._data_range)

    def _data_range(self):
        snap = self._snapshot
        low, high = _micros(CHARTED_FROM), _micros(CHARTED_TO)
        # A file's sent range from the manifest when it lies inside the span (derived files
        # hold one sent day or hour, so only files of implausible days do not): read the rest.
        inside = [x for x in snap.files if x.path not in snap.touched and low <= x.sent_min_us
                  and x.sent_max_us < high]
        lows, highs = [x.sent_min_us for x in inside], [x.sent_max_us for x in inside]
        kept = {x.path for x in inside}
        rest = [self._touched_sql(x, "sent_at") if x.path in snap.touched
                else f"SELECT sent_at FROM read_parquet({_quote(self.data_dir / x.path)})"
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


class BaselineStore(Store):
    """The straightforward definition: every query groups the raw receipt rows by message
    (:func:`_sql.messages_sql`) and takes percentiles with DuckDB's ``quantile_cont``. No
    derived state, no tail, no index. Slow at scale: for tests and benchmarks only."""

    duckdb_quantiles = True

    def __init__(self, data_dir: str | Path, settings: dict | None = None, materialize: bool = False,
                 columns: str = "*"):
        # materialize: group by message once per data version (tests, benchmarks), not per query;
        # columns: of the messages to keep then (leaving out unused ones skips their aggregates).
        self.materialize, self.columns = materialize, columns
        super().__init__(data_dir, settings)

    def _prepare(self, version, manifest, files) -> None:
        self._snapshot = None
        self._empty_tables()
        self._snapshot = _Snapshot(version=version, manifest=None, files=[], tail=[], touched={}, numbers={},
                                   receipt_files={path: (size, mtime) for path, size, mtime in files})
        if self.materialize:
            self._con.execute(f"CREATE OR REPLACE TEMP TABLE baseline_messages AS "
                              f"SELECT {self.columns} FROM ({_sql.messages_sql(self.raw_sql())})")

    def messages_sql(self, f=None) -> str:
        if self.materialize:
            return "baseline_messages"
        return f"({_sql.messages_sql(self.raw_sql())})"

    def label_condition(self, f):
        return _sql.raw_label_condition(self.raw_sql())

    def counts_sql(self, f, params: dict, cuts=()) -> str:
        time = " AND ".join(["TRUE"] + _sql.time_conditions(f, params))
        return f"({derive.rollup_sql(f'SELECT * FROM {self.messages_sql()} WHERE {time}', t='sent_at')})"

    def filtered_counts_sql(self, f, cuts=()) -> tuple[str, dict]:
        messages, params = _filtered(self, f)
        return derive.rollup_sql(messages, t="sent_at"), params

    def messages_for_ids(self, ids_table: str) -> str:
        return (f"(SELECT * FROM {self.messages_sql()} "
                f"WHERE delivery_message_id IN (SELECT delivery_message_id FROM {ids_table}))")

    def _data_range(self):
        lo, hi = self._con.execute(f"SELECT epoch_us(min(sent_at)), epoch_us(max(sent_at)) FROM {self.messages_sql()} "
                                   f"WHERE sent_at >= $low AND sent_at < $high",
                                   {"low": CHARTED_FROM, "high": CHARTED_TO}).fetchall()[0]  # see Store
        return None if lo is None else (_instant(lo), _instant(hi))


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


def _quote(path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _at(micros: int) -> str:
    """SQL literal of the instant ``micros`` (epoch microseconds, UTC session)."""
    return f"make_timestamp({int(micros)})::TIMESTAMPTZ"


def _micros(moment: datetime) -> int:
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


# --------------------------------------------------------------------------- helpers


def _filtered(store: Store, f: Filters) -> tuple[str, dict]:
    """SQL of the messages matching ``f`` (fast path) and its parameters."""
    params: dict = {}
    return _sql.filtered_messages_sql(f, params, store.messages_sql(f), store.label_condition(f)), params


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
            {"path": _sql.json_pointer(key), "value": value}, tables={"catalog": catalog[["label_sets"]]})
        params[f"label_sets_{i}"] = matching["label_sets"].tolist()
        return f"list_contains($label_sets_{i}, label_sets)"
    return condition


def _label_sets_sql(store: Store) -> tuple[str, dict]:
    """SQL of label_sets (JSON list of labels texts), messages: every distinct label set in
    use; and its parameters."""
    params: dict = {}
    counts = store.counts_sql(Filters(), params)
    return (f"SELECT label_sets, sum(messages)::BIGINT AS messages FROM {counts} "
            f"GROUP BY ALL HAVING sum(messages) > 0"), params


def _label_catalog(store: Store) -> pd.DataFrame:
    """The rows of :func:`_label_sets_sql` (the label filter matches pairs against them)."""
    return store.cached("label_catalog", (), lambda: store.query(*_label_sets_sql(store)))


def _label_pairs_sql(sets: str) -> str:
    """key, value, messages of every URL label pair (but ``campaign``) over the label sets
    ``sets`` (a query like :func:`_label_sets_sql`); a message counts once per pair."""
    return f"""
        WITH pairs AS (
            SELECT DISTINCT s.label_sets, s.messages, j.key AS key, j.value ->> '$' AS value
            FROM ({sets}) s, unnest(from_json(s.label_sets::VARCHAR, '["VARCHAR"]')) t(l), json_each(t.l) j
            WHERE j.key <> 'campaign')
        SELECT key, value, sum(messages)::BIGINT AS messages FROM pairs GROUP BY ALL"""


def _counts(store: Store, f: Filters, cuts: tuple[int, ...] = ()) -> tuple[str, dict]:
    """SQL of the counts relation of the messages matching ``f`` (see :meth:`Store.counts_sql`;
    aggregate it with :func:`_sql.counts_select`) and its parameters."""
    return store.filtered_counts_sql(f, cuts)


def _in_zone(df: pd.DataFrame, columns, tz: str) -> pd.DataFrame:
    """Show timestamp columns (UTC from DuckDB) in ``tz``."""
    for column in columns:
        if column in df:
            df[column] = pd.to_datetime(df[column], utc=True).dt.tz_convert(tz)
    return df


def _empty(columns) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=object) for c in columns})


def _counts_as_int(df: pd.DataFrame, columns) -> pd.DataFrame:
    for column in columns:
        if column in df:
            df[column] = df[column].fillna(0).astype("int64")
    return df


def _charted(f: Filters, bounded: bool = True) -> Filters:
    """``f`` with its range cut to the charted span [:data:`CHARTED_FROM`, :data:`CHARTED_TO`)
    (empty, start == end, where they do not meet). ``bounded`` False leaves an end that ``f``
    leaves open open (the data's first or last bucket then decides where a chart ends)."""
    start = CHARTED_FROM if f.start is None else min(max(f.start, CHARTED_FROM), CHARTED_TO)
    end = CHARTED_TO if f.end is None else max(min(f.end, CHARTED_TO), start)
    return replace(f, start=start if bounded or f.start is not None else None,
                   end=end if bounded or f.end is not None else None)


def _choose_bucket(store: Store, f: Filters, bucket: str | None) -> str:
    if bucket is not None:
        if bucket not in ("hour", "day"):
            raise ValueError(f"bucket must be 'hour' or 'day', not {bucket!r}")
        return bucket
    window = _charted(f, bounded=False)
    if window.start is not None and window.end is not None:
        span = window.end - window.start
    else:
        lo, hi = _sent_span(store, f)
        if lo is None:
            return "day"
        lo = window.start if window.start is not None else lo
        hi = window.end if window.end is not None else hi
        span = pd.Timestamp(hi) - pd.Timestamp(lo)
    return "hour" if span <= AUTO_HOUR_BUCKETS_UP_TO else "day"


def _sent_span(store: Store, f: Filters):
    """(first, last) exact sent time of the charted messages matching ``f`` (see
    :func:`_charted`), (None, None) without any: the first and last counts slots with
    messages, then the messages of those two slots."""
    f = _charted(f)
    sql, params = _counts(store, f)
    row = store.query(f"SELECT min(t) AS lo, max(t) AS hi FROM (SELECT t FROM ({sql}) GROUP BY t "
                      f"HAVING sum(messages) > 0)", params).iloc[0]
    if pd.isna(row["lo"]):
        return None, None
    slot = timedelta(microseconds=derive.SLOT_MICROS)
    edges = []
    for moment in (row["lo"].to_pydatetime(), row["hi"].to_pydatetime()):
        edge = replace(f, start=max(moment, f.start), end=min(moment + slot, f.end))
        sql, params = _filtered(store, edge)
        edges.append(store.query(f"SELECT min(sent_at) AS lo, max(sent_at) AS hi FROM ({sql})", params).iloc[0])
    return edges[0]["lo"], edges[1]["hi"]


def bucket_start(moment: datetime, bucket: str, tz: str) -> pd.Timestamp:
    """Start of the local ``bucket`` containing ``moment`` (same rule as the SQL)."""
    local = pd.Timestamp(moment).tz_convert(tz)
    if bucket == "day":
        return local.normalize()
    return local - pd.Timedelta(minutes=local.minute, seconds=local.second,
                                microseconds=local.microsecond, nanoseconds=local.nanosecond)


def _all_buckets(f: Filters, bucket: str, present: pd.Series) -> pd.DatetimeIndex:
    """Every bucket from the filter's (or the data's) first to last one, in ``f.tz``."""
    present = pd.DatetimeIndex(present)
    if present.empty and (f.start is None or f.end is None):
        return present
    first = bucket_start(f.start, bucket, f.tz) if f.start is not None else present.min()
    last = bucket_start(f.end - timedelta(microseconds=1), bucket, f.tz) if f.end is not None else present.max()
    if bucket == "hour":
        steps = pd.date_range(first.tz_convert("UTC"), last.tz_convert("UTC"), freq="h")
        wanted = steps.tz_convert(f.tz)
    else:
        days = pd.date_range(first.tz_localize(None).normalize(), last.tz_localize(None).normalize(), freq="D")
        wanted = days.tz_localize(f.tz, ambiguous=True, nonexistent="shift_forward")
    if len(wanted) > MAX_FILLED_BUCKETS:
        wanted = wanted[:0]
    return wanted.union(present.tz_convert(f.tz)) if len(present) else wanted


def _meanings() -> dict[str, str]:
    return {s.name: s.meaning for s in status_table()}


# --------------------------------------------------------------------------- exact percentiles


def latency_quantiles(store: Store, f: Filters, group: str | None,
                      prefix: str = "latency_", suffix: str = "_s") -> pd.DataFrame:
    """Exact ``quantile_cont(latency_s, q)`` for q in p50/p90/p95/p99 over the messages
    matching ``f``, overall or per ``group`` (a column: campaign): columns grp and the four
    percentiles, one row per group with latencies.

    Two passes instead of DuckDB's sort of every value: (1) the latency counts per (group,
    bucket) (:meth:`Store.latency_counts`: the pre-aggregated histograms, kept per derived
    file); (2) only the values at the ranks floor(rn) and ceil(rn), rn = (n - 1) * q, from the
    buckets that hold them (:meth:`Store.latency_values`: read from the latency files sorted
    by bucket once per file and bucket, then kept); then interpolated bit for bit as DuckDB
    does (see :func:`_interpolation`). Identical to DuckDB's own result: the ranks are counted
    in the same doubles, and the values are the same integers.
    """
    names = [f"{prefix}{name}{suffix}" for name, _ in _sql.QUANTILES]
    empty = pd.DataFrame({"grp": pd.Series([], dtype=object), **{n: pd.Series([], dtype="float64") for n in names}})
    if f.outcomes and "delivered" not in f.outcomes:
        return empty  # only delivered messages have a latency
    interpolate = _interpolation()
    if store.duckdb_quantiles or interpolate is None:
        return _quantiles_by_duckdb(store, f, group, names)
    grp = group or "'all'"  # a text: the keys code group values (Store.query_arrays)
    params: dict = {}
    conditions = " AND ".join(_sql.dimension_conditions(replace(f, outcomes=()), params, store.label_condition(f)))
    with store.pinned():
        counts = store.latency_counts(f, grp, conditions, params)
        if not len(counts.keys):
            return empty
        # Pass 1 -> per group and quantile the ranks floor(rn) and ceil(rn) (0-based, over the
        # group's latencies in bucket order), and the bucket (key) and position in it of each.
        keys, n = counts.keys, counts.counts
        upto = np.cumsum(n)
        first = np.flatnonzero(np.concatenate([[True], (keys[1:] >> 32) != (keys[:-1] >> 32)]))
        before_group = upto[first] - n[first]
        totals = np.add.reduceat(n, first)
        rows = []  # (group index, quantile index, rn, rank low, rank high)
        for k, (_, q) in enumerate(_sql.QUANTILES):
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
        return _quantiles_by_duckdb(store, f, group, names)
    at = np.searchsorted(value_upto, value_upto[starts] - signs[starts] + wanted_pos, side="right")
    if not (at < len(value_keys)).all() or not (value_keys[np.minimum(at, len(value_keys) - 1)] == wanted_keys).all():
        return _quantiles_by_duckdb(store, f, group, names)
    picked = values[at]
    low_values, high_values = picked[:len(group_no)], picked[len(group_no):]
    groups = store.group_name(keys[first])
    out = {g: [math.nan] * len(names) for g in groups}
    for g, k, r, lo_us, hi_us in zip(groups[group_no], quantile, rn, low_values, high_values):
        d = r - math.floor(r)
        lo = int(lo_us) / 1e6
        out[g][k] = lo if d == 0 else interpolate(lo, int(hi_us) / 1e6, d)
    return pd.DataFrame([[g, *v] for g, v in out.items()], columns=["grp"] + names)


def _quantiles_by_duckdb(store: Store, f: Filters, group: str | None, names) -> pd.DataFrame:
    sql, params = _filtered(store, f)
    columns = ", ".join(f"quantile_cont(latency_s, {q}) AS {name}" for name, (_, q) in zip(names, _sql.QUANTILES))
    return store.query(f"SELECT {group or '0'} AS grp, {columns} FROM ({sql}) WHERE latency_s IS NOT NULL "
                       f"GROUP BY ALL", params)


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


# --------------------------------------------------------------------------- KPIs


def _kpi_frame(store: Store, f: Filters, group: str | None, receipt_figures: bool) -> pd.DataFrame:
    sql, params = _counts(store, f)
    having = "HAVING sum(messages) > 0" if group else ""
    df = store.query(f"SELECT {_sql.counts_select(group)} FROM ({sql}) {'GROUP BY ALL' if group else ''} {having}",
                     params)
    if group is None:
        df["grp"] = 0
    quantiles = latency_quantiles(store, f, group)
    if group is None:
        quantiles["grp"] = 0
    df = df.merge(quantiles, on="grp", how="left")
    if receipt_figures:
        messages, params = _filtered(store, f)
        distinct = f"({_sql.distinct_receipts_sql(store.raw_sql())})"
        per_receipt = store.query(_sql.receipt_kpis_sql(messages, distinct, group), params)
        if group is None:
            per_receipt["grp"] = 0
        df = df.merge(per_receipt, on="grp", how="left")
    else:
        for column in RECEIPT_KPIS:
            df[column] = np.nan
    counts = [c for c in COUNT_KPIS if receipt_figures or c not in RECEIPT_KPIS]
    df = _counts_as_int(df, counts)
    for column in KPI_COLUMNS:
        if column not in counts:
            df[column] = df[column].astype("float64")
    return df


def kpis(store: Store, f: Filters, *, receipt_figures: bool = False) -> pd.DataFrame:
    """One row with every column of :data:`KPI_COLUMNS` (zeros and NaN without data).

    The per-receipt columns (:data:`RECEIPT_KPIS`: receipts, duplicate_rows, webhook lag) are
    NaN unless ``receipt_figures``: they need a pass over the raw receipts (slow at scale).
    """
    return store.cached("kpis", (f, receipt_figures),
                        lambda: _kpi_frame(store, f, None, receipt_figures)[KPI_COLUMNS].reset_index(drop=True))


def kpis_with_change(store: Store, f: Filters, *, receipt_figures: bool = False) -> pd.DataFrame:
    """metric, value, previous, change (value - previous), relative_change (change / previous).

    ``previous`` is the same KPI over :meth:`Filters.previous_period` (NaN when there is none).
    """
    with store.pinned():
        current = kpis(store, f, receipt_figures=receipt_figures).iloc[0]
        before = f.previous_period()
        previous = (kpis(store, before, receipt_figures=receipt_figures).iloc[0] if before is not None
                    else pd.Series(np.nan, index=KPI_COLUMNS))
    out = pd.DataFrame({
        "metric": KPI_COLUMNS,
        "value": [float(current[m]) for m in KPI_COLUMNS],
        "previous": [float(previous[m]) for m in KPI_COLUMNS],
    })
    out["change"] = out["value"] - out["previous"]
    out["relative_change"] = out["change"] / out["previous"].where(out["previous"] != 0)
    return out


def campaigns(store: Store, f: Filters, *, receipt_figures: bool = False) -> pd.DataFrame:
    """One row per campaign (sorted by messages, descending): campaign + every KPI column
    (per-receipt columns NaN unless ``receipt_figures``, see :func:`kpis`)."""
    def compute():
        df = _kpi_frame(store, f, "campaign", receipt_figures).rename(columns={"grp": "campaign"})
        if df.empty:
            return _empty(["campaign"] + KPI_COLUMNS)
        df = df.sort_values(["messages", "campaign"], ascending=[False, True])
        return df[["campaign"] + KPI_COLUMNS].reset_index(drop=True)
    return store.cached("campaigns", (f, receipt_figures), compute)


def campaign_names(store: Store) -> list[str]:
    """Every campaign in the data, sorted. Unbounded (one name per campaign): a widget offers
    :func:`campaign_choices` instead."""
    def compute():
        sql, params = _campaign_totals(store)
        return store.query(f"SELECT value FROM ({sql}) ORDER BY value", params)["value"].tolist()
    return store.cached("campaign_names", (), compute)


@dataclass(frozen=True)
class Choices:
    """Some of the values a filter can take: ``values``, most messages first (then by
    name), at most the limit asked for; ``total``, how many values match in all."""

    values: tuple[str, ...]
    total: int


def campaign_choices(store: Store, search: str = "", limit: int = OPTION_LIMIT,
                     among: tuple[str, ...] | None = None) -> Choices:
    """The campaigns a filter widget offers: with the most messages (all time) first, only
    those whose name contains ``search`` (trimmed; any case, ``%``/``_`` literal), or only
    those of ``among`` (a link's values: which exist?). At most ``limit``: the ranking and
    the limit are applied in DuckDB, so only ``limit`` names ever reach Python."""
    return _choices(store, "campaign_choices", _campaign_totals, search, limit, among)


def label_choices(store: Store, search: str = "", limit: int = OPTION_LIMIT,
                  among: tuple[str, ...] | None = None) -> Choices:
    """:func:`campaign_choices` for the URL label pairs, as ``key=value`` texts (``search``
    matches that text; ``among`` lists such texts)."""
    return _choices(store, "label_choices", _label_totals, search, limit, among)


def _choices(store: Store, name: str, totals, search: str, limit: int, among: tuple[str, ...] | None) -> Choices:
    """:func:`campaign_choices` over ``totals(store)``: SQL with columns value and messages,
    and its parameters."""
    search = (search or "").strip()
    among = None if among is None else tuple(dict.fromkeys(str(v) for v in among))
    if among == ():
        return Choices((), 0)

    def compute():
        sql, params = totals(store)
        conditions = ["TRUE"]
        if search:
            params["choice_pattern"] = _sql.contains_pattern(search)
            conditions.append(_sql.contains_condition("value", "choice_pattern"))
        if among is not None:
            params["choice_among"] = list(among)
            conditions.append("list_contains($choice_among, value)")
        params["choice_limit"] = int(limit)
        # count(*) OVER (): how many match, computed in DuckDB before the LIMIT.
        df = store.query(f"SELECT value, count(*) OVER () AS total FROM ({sql}) WHERE {' AND '.join(conditions)} "
                         f"ORDER BY messages DESC, value LIMIT $choice_limit", params)
        return Choices(tuple(df["value"]), int(df["total"].iloc[0]) if len(df) else 0)
    return store.cached(name, (search, int(limit), among), compute)


def _campaign_totals(store: Store) -> tuple[str, dict]:
    """value (campaign), messages: every campaign with messages (all time)."""
    sql, params = _counts(store, Filters())
    return (f"SELECT campaign AS value, sum(messages)::BIGINT AS messages FROM ({sql}) "
            f"GROUP BY campaign HAVING sum(messages) > 0"), params


def outcome_breakdown(store: Store, f: Filters) -> pd.DataFrame:
    """outcome (all four, fixed order), messages, share (of all messages; NaN without any)."""
    def compute():
        sql, params = _counts(store, f)
        counts = store.query(f"SELECT outcome, sum(messages)::BIGINT AS messages FROM ({sql}) GROUP BY outcome",
                             params)
        messages = counts.set_index("outcome")["messages"].reindex(list(OUTCOMES), fill_value=0).astype("int64")
        total = int(messages.sum())
        return pd.DataFrame({
            "outcome": list(OUTCOMES),
            "messages": messages.to_numpy(),
            "share": messages.to_numpy() / total if total else np.nan,
        })
    return store.cached("outcome_breakdown", (f,), compute)


# --------------------------------------------------------------------------- over time


def _per_bucket(store: Store, f: Filters, bucket: str | None, select: str, where: str = "",
                order: str = "bucket_start") -> tuple[pd.DataFrame, str]:
    """The per-message counts grouped by local time bucket (``bucket`` as in :func:`trend`):
    ``bucket_start`` (before :func:`_in_zone`) plus ``select``, only buckets with messages; and
    the bucket size chosen. Charted messages only (see :func:`uncharted_messages`)."""
    chosen = _choose_bucket(store, f, bucket)
    sql, params = _counts(store, _charted(f))
    params["tz"] = f.tz
    df = store.query(f"SELECT {_sql.bucket_sql(chosen, 't')} AS bucket_start, {select} FROM ({sql}) {where} "
                     f"GROUP BY ALL HAVING sum(messages) > 0 ORDER BY {order}", params)
    return df, chosen


def trend(store: Store, f: Filters, bucket: str | None = None) -> pd.DataFrame:
    """Per local hour/day bucket (``bucket`` 'hour'|'day'; auto: hour when the range is at
    most 3 days): bucket_start (tz-aware in f.tz), messages, delivered, failed, unknown,
    pending, delivery_rate. Buckets without messages are included with zeros, from the
    filter's start to its end (or the data's first/last bucket). Only messages sent in the
    charted span (:data:`CHARTED_FROM` to :data:`CHARTED_TO`): :func:`uncharted_messages`
    counts the others."""
    def compute():
        df, chosen = _per_bucket(store, f, bucket, _sql.counts_select())
        df = _in_zone(df[TREND_COLUMNS], ["bucket_start"], f.tz)
        index = _all_buckets(_charted(f, bounded=False), chosen, df["bucket_start"])
        df = df.set_index("bucket_start").reindex(index)
        df.index.name = "bucket_start"
        df = _counts_as_int(df, ["messages", "delivered", "failed", "unknown", "pending"])
        df["delivery_rate"] = df["delivery_rate"].astype("float64")
        return df.reset_index()[TREND_COLUMNS]
    return store.cached("trend", (f, bucket), compute)


def failure_reasons_over_time(store: Store, f: Filters, bucket: str | None = None) -> pd.DataFrame:
    """bucket_start (tz-aware in f.tz), reason, messages: failed messages per reason per bucket
    (charted ones only, as in :func:`trend`)."""
    def compute():
        df, _ = _per_bucket(store, f, bucket, "last_status AS reason, sum(messages)::BIGINT AS messages",
                            where="WHERE outcome = 'failed'", order="bucket_start, messages DESC, reason")
        return _in_zone(df, ["bucket_start"], f.tz)
    return store.cached("failure_reasons_over_time", (f, bucket), compute)


def uncharted_messages(store: Store, f: Filters, outcome: str | None = None) -> int:
    """How many messages matching ``f`` (with ``outcome`` too, when given: 'failed' for the
    failure chart) are sent outside the charted span [:data:`CHARTED_FROM`,
    :data:`CHARTED_TO`): every figure counts them, the charts over time (:func:`trend`,
    :func:`failure_reasons_over_time`) leave them out; :func:`uncharted_note` says so.

    Reads only the derived files and tail messages outside the span (few or none)."""
    if outcome is not None and outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}; choose from {', '.join(OUTCOMES)}")

    def compute():
        outside = []
        if f.start is None or f.start < CHARTED_FROM:
            outside.append(replace(f, end=CHARTED_FROM if f.end is None else min(f.end, CHARTED_FROM)))
        if f.end is None or f.end > CHARTED_TO:
            outside.append(replace(f, start=CHARTED_TO if f.start is None else max(f.start, CHARTED_TO)))
        total = 0
        for part in outside:
            if part.start is not None and part.end is not None and part.start >= part.end:
                continue
            sql, params = _counts(store, part)
            where = ""
            if outcome is not None:
                params["uncharted_outcome"] = outcome
                where = "WHERE outcome = $uncharted_outcome"
            total += int(store.query(f"SELECT coalesce(sum(messages), 0)::BIGINT AS n FROM ({sql}) {where}",
                                     params)["n"].iloc[0])
        return total
    return store.cached("uncharted_messages", (f, outcome), compute)


def uncharted_note(count: int, outcome: str | None = None) -> str | None:
    """The sentence a page shows under a chart over time that leaves out ``count`` messages
    (:func:`uncharted_messages`); None when it leaves out none."""
    if not count:
        return None
    noun = ("message" if count == 1 else "messages") if outcome is None else (
        f"{outcome} message" if count == 1 else f"{outcome} messages")
    return (f"{count:,} {noun} sent before {CHARTED_FROM:%Y-%m-%d} or from {CHARTED_TO:%Y-%m-%d} on (by the "
            f"created time of their first receipt) {'is' if count == 1 else 'are'} not charted over time; "
            f"the other figures count {'it' if count == 1 else 'them'}.")


def pending_ages(store: Store, f: Filters, now: datetime | None = None) -> pd.DataFrame:
    """Pending messages by age (now - sent time) and the status they are stuck at.

    One row per (age_bucket, last_status) with messages > 0, ordered by age bucket
    (:data:`AGE_BUCKETS`) then messages descending. Sum ``messages`` by ``age_bucket`` for
    the bucket totals.
    """
    now = now if now is not None else datetime.now(UTC)

    def compute():
        limits = (3600, 86400, 259200)
        # The age buckets' edges: no pre-aggregated slot may straddle one.
        cuts = tuple(_micros(now) - limit * 1_000_000 for limit in limits)
        sql, params = _counts(store, f, cuts)
        params["now"] = now
        age = _sql.seconds_between("t", "$now")
        df = store.query(f"""
            SELECT CASE WHEN {age} < {limits[0]} THEN 0 WHEN {age} < {limits[1]} THEN 1
                        WHEN {age} < {limits[2]} THEN 2 ELSE 3 END AS bucket_order,
                   last_status, sum(messages)::BIGINT AS messages
            FROM ({sql}) WHERE outcome = 'pending'
            GROUP BY ALL HAVING sum(messages) > 0 ORDER BY bucket_order, messages DESC, last_status""", params)
        df["age_bucket"] = [AGE_BUCKETS[i] for i in df["bucket_order"]]
        return df[["age_bucket", "messages", "last_status"]]
    return store.cached("pending_ages", (f, now), compute)


# --------------------------------------------------------------------------- failures


def failure_reasons(store: Store, f: Filters) -> pd.DataFrame:
    """reason, messages, share (of failed messages), meaning (from statuses.csv; '' if undocumented)."""
    def compute():
        sql, params = _counts(store, f)
        df = store.query(f"""
            SELECT last_status AS reason, sum(messages)::BIGINT AS messages,
                   sum(messages)::BIGINT / sum(sum(messages)::BIGINT) OVER () AS share
            FROM ({sql}) WHERE outcome = 'failed' GROUP BY last_status HAVING sum(messages) > 0
            ORDER BY messages DESC, reason""", params)
        meanings = _meanings()
        df["meaning"] = [meanings.get(r, "") for r in df["reason"]]
        return df
    return store.cached("failure_reasons", (f,), compute)


def failure_reasons_by_campaign(store: Store, f: Filters) -> pd.DataFrame:
    """campaign, reason, messages, share (of that campaign's failed messages)."""
    def compute():
        sql, params = _counts(store, f)
        return store.query(f"""
            SELECT campaign, last_status AS reason, sum(messages)::BIGINT AS messages,
                   sum(messages)::BIGINT / sum(sum(messages)::BIGINT) OVER (PARTITION BY campaign) AS share
            FROM ({sql}) WHERE outcome = 'failed' GROUP BY campaign, last_status HAVING sum(messages) > 0
            ORDER BY campaign, messages DESC, reason""", params)
    return store.cached("failure_reasons_by_campaign", (f,), compute)


# --------------------------------------------------------------------------- latency


LATENCY_ROW_COLUMNS = ["campaign", "delivery_message_id", "latency_s", "sent_at"]


def _latency_rows_sql(store: Store, f: Filters) -> tuple[str, dict]:
    sql, params = _filtered(store, f)
    return (f"SELECT {', '.join(LATENCY_ROW_COLUMNS)} FROM ({sql}) WHERE latency_s IS NOT NULL "
            f"ORDER BY campaign, latency_s, delivery_message_id"), params


def latencies(store: Store, f: Filters, limit: int | None = None) -> pd.DataFrame:
    """campaign, delivery_message_id, latency_s, sent_at: each delivered message with an
    earlier receipt, ordered by campaign, latency_s, delivery_message_id; the first ``limit``.

    One row a message: over a month at scale that is millions of rows, so the dashboard
    shows a ``limit`` and offers every row through :func:`latencies_file`."""
    def compute():
        sql, params = _latency_rows_sql(store, f)
        if limit is not None:
            sql += " LIMIT $limit"
            params["limit"] = int(limit)
        return _in_zone(store.query(sql, params), ["sent_at"], f.tz)
    return store.cached("latencies", (f, limit), compute)


def slowest_latencies(store: Store, f: Filters, limit: int) -> pd.DataFrame:
    """The ``limit`` measured messages that took longest to deliver (:func:`latencies`
    columns; latency_s descending, then delivery_message_id)."""
    def compute():
        sql, params = _filtered(store, f)
        params["limit"] = int(limit)
        df = store.query(f"SELECT {', '.join(LATENCY_ROW_COLUMNS)} FROM ({sql}) WHERE latency_s IS NOT NULL "
                         f"ORDER BY latency_s DESC, delivery_message_id LIMIT $limit", params)
        return _in_zone(df, ["sent_at"], f.tz)
    return store.cached("slowest_latencies", (f, limit), compute)


def latencies_file(store: Store, f: Filters, fmt: str) -> bytes:
    """Every row of :func:`latencies` as a ``csv``, ``csv.gz`` or ``parquet`` file, written by DuckDB
    straight from the query (never a DataFrame: a month at scale is millions of rows). CSV
    times are in f.tz with their offset (``2026-11-27 14:22:02.5+01``); Parquet keeps the
    UTC instant with its type. Not cached: built when someone asks for it."""
    options = {"csv": "FORMAT csv, HEADER true", "csv.gz": "FORMAT csv, HEADER true, COMPRESSION gzip",
               "parquet": "FORMAT parquet, COMPRESSION zstd"}.get(fmt)
    if options is None:
        raise ValueError(f"format must be csv, csv.gz or parquet, not {fmt!r}")
    with store.pinned():
        sql, params = _latency_rows_sql(store, f)
        if fmt.startswith("csv"):  # text cells as data, never formulas (dashboard/safe_text.py)
            probe = store.query(f"SELECT * FROM ({sql}) LIMIT 0", params)
            sql = safe_text.csv_safe_select(sql, [c for c in probe if safe_text.is_text_column(probe[c])])
        target = store.scratch_path(f"latencies.{fmt}")
        try:
            with store.time_zone(f.tz if fmt.startswith("csv") else "UTC"):
                store.query(f"COPY ({sql}) TO {_quote(target)} ({options})", params)
            return target.read_bytes()
        finally:
            target.unlink(missing_ok=True)


def latency_by_campaign(store: Store, f: Filters) -> pd.DataFrame:
    """campaign, latency_messages, p50_s, p90_s, p95_s, p99_s, within_10s/1m/5m/1h.

    Campaigns with delivered messages but no latency sample have latency_messages 0 and NaN.
    """
    def compute():
        sql, params = _counts(store, f)
        df = store.query(f"SELECT {_sql.counts_select('campaign')} FROM ({sql}) WHERE outcome = 'delivered' "
                         f"GROUP BY ALL HAVING sum(messages) > 0", params).rename(columns={"grp": "campaign"})
        quantiles = latency_quantiles(store, f, "campaign", prefix="", suffix="_s")
        df = df.merge(quantiles.rename(columns={"grp": "campaign"}), on="campaign", how="left")
        df = _counts_as_int(df, ["latency_messages"])
        df = df.sort_values(["latency_messages", "campaign"], ascending=[False, True])
        return df[["campaign"] + LATENCY_COLUMNS].reset_index(drop=True)
    return store.cached("latency_by_campaign", (f,), compute)


def latency_distribution(store: Store, f: Filters, by_campaign: bool = False) -> pd.DataFrame:
    """How the times to deliver are spread, without fetching every message: the count of
    latencies per bucket (1/32 of an octave of microseconds: about 2 % wide), from the
    pre-aggregated histograms. Columns: campaign (when ``by_campaign``), from_s, to_s
    (the bucket's [from, to) in seconds), messages, cumulative_share (of the group's
    latencies up to ``to_s``). For CDF and histogram charts over millions of messages."""
    def compute():
        if f.outcomes and "delivered" not in f.outcomes:
            counts = pd.DataFrame({"grp": [], "b": [], "n": []})
        elif store.duckdb_quantiles:
            sql, params = _filtered(store, f)
            grp = "campaign" if by_campaign else "0"
            counts = store.query(f"SELECT {grp} AS grp, {derive.latency_bucket_sql()} AS b, "
                                 f"count(*) AS n FROM ({sql}) WHERE latency_us IS NOT NULL GROUP BY ALL "
                                 f"ORDER BY grp, b", params)
        else:
            params: dict = {}
            conditions = " AND ".join(_sql.dimension_conditions(replace(f, outcomes=()), params,
                                                                store.label_condition(f)))
            counts = store.query(f"SELECT {'campaign' if by_campaign else '0'} AS grp, b, sum(n)::BIGINT AS n "
                                 f"FROM {store.hist_sql(f, params)} WHERE {conditions} GROUP BY ALL "
                                 f"HAVING sum(n) > 0 ORDER BY grp, b", params)
        b = counts["b"].to_numpy(np.int64)
        bits = derive.LATENCY_BUCKET_BITS
        exponent = b >> bits
        small = b < (1 << bits)
        shift = np.where(small, 0, exponent - bits)
        low = np.where(small, b, ((1 << bits) + (b & ((1 << bits) - 1))) << shift)
        high = np.where(small, b + 1, ((1 << bits) + (b & ((1 << bits) - 1)) + 1) << shift)
        out = pd.DataFrame({"campaign": counts["grp"], "from_s": low / 1e6, "to_s": high / 1e6,
                            "messages": counts["n"].astype("int64")})
        totals = out.groupby("campaign")["messages"].transform("sum")
        out["cumulative_share"] = out.groupby("campaign")["messages"].cumsum() / totals
        return out if by_campaign else out.drop(columns="campaign")
    return store.cached("latency_distribution", (f, by_campaign), compute)


# --------------------------------------------------------------------------- messages


def message_lookup(store: Store, term: str, limit: int = 5000, tz: str = "UTC") -> pd.DataFrame:
    """Every distinct receipt of the messages whose delivery_message_id, client_reference or
    batch_id equals ``term`` (trimmed), ordered by delivery_message_id, created, received_at.

    Columns: :data:`LOOKUP_COLUMNS`; ``campaign`` is the message's campaign (see the
    definitions), ``labels`` the receipt's own, ``copies`` how many stored copies it has.
    At most ``limit`` rows; times shown in ``tz``. Reads the raw receipts.
    """
    term = (term or "").strip()
    if not term:
        return _empty(LOOKUP_COLUMNS)
    zone_info(tz)

    def compute():
        raw = store.raw_sql()
        store.query(f"""CREATE OR REPLACE TEMP TABLE lookup_rows AS
                        SELECT * FROM {raw} WHERE delivery_message_id IN (
                            SELECT delivery_message_id FROM {raw}
                            WHERE delivery_message_id = $term OR client_reference = $term OR batch_id = $term)""",
                    {"term": term})
        store.query("CREATE OR REPLACE TEMP TABLE lookup_ids AS SELECT DISTINCT delivery_message_id FROM lookup_rows")
        df = store.query(f"""
            SELECT r.delivery_message_id, r.batch_id, r.client_reference, r.created, r.received_at,
                   r.status, r.status_code, r.category, r.part, r.parts, r.hlr, m.campaign, r.labels,
                   r.receipt_id, r.copies
            FROM ({_sql.distinct_receipts_sql('lookup_rows')}) r
            JOIN {store.messages_for_ids('lookup_ids')} m ON r.delivery_message_id = m.delivery_message_id
            ORDER BY r.delivery_message_id, r.created, r.received_at, r.receipt_id
            LIMIT $limit""", {"limit": int(limit)})
        return _in_zone(df, ["created", "received_at"], tz)
    return store.cached("message_lookup", (term, limit, tz), compute)


def message_detail(store: Store, f: Filters, limit: int | None = None) -> pd.DataFrame:
    """One row per message matching ``f`` (newest sent first; at most ``limit``):
    :data:`DETAIL_COLUMNS`, times in f.tz. ``latency_s`` is NaN unless it counts as a latency.
    ``receipts`` (distinct) comes from the raw receipts of the partitions from the oldest
    message's sent day on."""
    def compute():
        sql, params = _filtered(store, f)
        limit_sql = ""
        if limit is not None:
            params["limit"] = int(limit)
            limit_sql = "LIMIT $limit"
        columns = [c for c in DETAIL_COLUMNS if c != "receipts"]
        store.query(f"CREATE OR REPLACE TEMP TABLE detail AS SELECT {', '.join(columns)} FROM ({sql}) "
                    f"ORDER BY sent_at DESC, delivery_message_id {limit_sql}", params)
        # The partition name (YYYY-MM-DD, zero-padded) of the oldest message's UTC day, by
        # DuckDB: Python's strftime writes year 999 as "999" and fails past year 9999.
        since_day = store.query("SELECT strftime(min(sent_at), '%Y-%m-%d') AS day FROM detail")["day"].iloc[0]
        since_day = None if pd.isna(since_day) else since_day
        df = store.query(f"""
            SELECT d.*, coalesce(r.receipts, 0) AS receipts FROM detail d
            LEFT JOIN (SELECT delivery_message_id, count(DISTINCT receipt_id) AS receipts FROM {store.raw_sql(since_day)}
                       WHERE delivery_message_id IN (SELECT delivery_message_id FROM detail) GROUP BY ALL) r
                   USING (delivery_message_id)
            ORDER BY d.sent_at DESC, d.delivery_message_id""")
        return _in_zone(df[DETAIL_COLUMNS], ["sent_at", "delivered_at"], f.tz)
    return store.cached("message_detail", (f, limit), compute)


def label_pairs(store: Store) -> pd.DataFrame:
    """key, value, messages: every webhook URL label seen (except ``campaign``), by key, most
    used first. Unbounded (a row per pair): a widget offers :func:`label_choices` instead."""
    def compute():
        sets, params = _label_sets_sql(store)
        return store.query(f"SELECT * FROM ({_label_pairs_sql(sets)}) ORDER BY key, messages DESC, value", params)
    return store.cached("label_pairs", (), compute)


def _label_totals(store: Store) -> tuple[str, dict]:
    """value (``key=value``), messages: every URL label pair (see :func:`label_pairs`), in
    SQL (the label sets are never fetched)."""
    sets, params = _label_sets_sql(store)
    return f"SELECT key || '=' || value AS value, messages FROM ({_label_pairs_sql(sets)})", params


# --------------------------------------------------------------------------- health


def data_health(store: Store, since: datetime | None = None) -> dict[str, pd.DataFrame]:
    """How the data itself looks, over receipts received at or after ``since`` (all if None).

    * ``summary``: one row: receipts (distinct), stored_rows, duplicate_rows, regressions
      (messages with a regression among those with a receipt in scope), last_received_at,
      last_created_at, messages (with a receipt in scope).
    * ``per_minute``: minute (UTC), receipts received (distinct) in the last 24 h of data
      (from ``since`` when given).
    * ``unknown_statuses``: status, status_code, receipts: statuses not in Mobivate's table.

    Reads the raw receipts. Over all data (``since`` None) the per-receipt figures are summed
    over day partitions, each computed once while its files do not change.
    """
    known = {"known": [s.name for s in status_table()]}

    def compute():
        if since is None:
            return _health_overall(store, known)
        rows = f"SELECT * FROM {store.raw_sql()} WHERE received_at >= $since"
        store.query(f"CREATE OR REPLACE TEMP TABLE health_receipts AS {_sql.distinct_receipts_sql(f'({rows})')}",
                    {"since": since})
        store.query("CREATE OR REPLACE TEMP TABLE health_ids AS SELECT DISTINCT delivery_message_id FROM health_receipts")
        summary = store.query(f"""
            SELECT (SELECT count(*) FROM health_receipts) AS receipts,
                   (SELECT coalesce(sum(copies), 0) FROM health_receipts)::BIGINT AS stored_rows,
                   (SELECT coalesce(sum(copies) - count(*), 0) FROM health_receipts)::BIGINT AS duplicate_rows,
                   (SELECT coalesce(sum(regressions), 0) FROM {store.messages_for_ids('health_ids')})::BIGINT
                       AS regressions,
                   (SELECT max(received_at) FROM health_receipts) AS last_received_at,
                   (SELECT max(created) FROM health_receipts) AS last_created_at,
                   (SELECT count(*) FROM health_ids) AS messages""")
        per_minute = store.query("""
            SELECT date_trunc('minute', received_at) AS minute, count(*) AS receipts
            FROM health_receipts GROUP BY ALL ORDER BY minute""")
        unknown = store.query("""
            SELECT status, status_code, count(*) AS receipts FROM health_receipts
            WHERE NOT list_contains($known, status)
            GROUP BY ALL ORDER BY receipts DESC, status""", known)
        store.query("DROP TABLE health_receipts")
        summary = _counts_as_int(summary, ["receipts", "stored_rows", "duplicate_rows", "regressions", "messages"])
        return {"summary": summary, "per_minute": per_minute, "unknown_statuses": unknown}
    return store.cached("data_health", (since,), compute)


def _health_overall(store: Store, known: dict) -> dict[str, pd.DataFrame]:
    totals = store.per_partition("health_totals", """
        SELECT count(DISTINCT receipt_id) AS receipts, count(*) AS stored_rows,
               max(received_at) AS last_received_at, max(created) AS last_created_at FROM {source}""")
    unknown = store.per_partition("health_unknown", """
        SELECT status, status_code, count(DISTINCT receipt_id) AS receipts FROM {source}
        WHERE NOT list_contains($known, status) GROUP BY ALL""", known)
    columns = ["receipts", "stored_rows", "last_received_at", "last_created_at"]
    per = pd.concat(list(totals.values()), ignore_index=True) if totals else pd.DataFrame(columns=columns)
    sql, params = _counts(store, Filters())
    messages = store.query(f"SELECT coalesce(sum(messages), 0)::BIGINT AS messages, "
                           f"coalesce(sum(regressions), 0)::BIGINT AS regressions FROM ({sql})", params).iloc[0]
    receipts, stored = int(per["receipts"].sum()), int(per["stored_rows"].sum())
    last_received = per["last_received_at"].max() if len(per) else pd.NaT
    summary = pd.DataFrame({
        "receipts": [receipts], "stored_rows": [stored], "duplicate_rows": [stored - receipts],
        "regressions": [int(messages["regressions"])], "last_received_at": [last_received],
        "last_created_at": [per["last_created_at"].max() if len(per) else pd.NaT],
        "messages": [int(messages["messages"])]})
    if pd.isna(last_received):
        per_minute = pd.DataFrame({"minute": pd.Series([], dtype="datetime64[us, UTC]"),
                                   "receipts": pd.Series([], dtype="int64")})
    else:
        # A receipt's copies share its partition: the partitions received into lately suffice.
        cutoff = pd.Timestamp(last_received) - pd.Timedelta(hours=24)
        recent = {name for name, row in totals.items() if len(row) and row["last_received_at"].iloc[0] >= cutoff}
        per_minute = store.query(f"""
            SELECT date_trunc('minute', received_at) AS minute, count(*) AS receipts
            FROM ({_sql.distinct_receipts_sql(store.raw_sql(partitions=recent))})
            WHERE received_at >= $cutoff GROUP BY ALL ORDER BY minute""", {"cutoff": cutoff.to_pydatetime()})
    unknown_all = pd.concat([u for u in unknown.values() if len(u)] or [
        pd.DataFrame({"status": pd.Series([], dtype=object), "status_code": pd.Series([], dtype="Int32"),
                      "receipts": pd.Series([], dtype="int64")})], ignore_index=True)
    unknown_all = (unknown_all.groupby(["status", "status_code"], dropna=False, as_index=False)["receipts"].sum()
                   .sort_values(["receipts", "status"], ascending=[False, True]).reset_index(drop=True))
    return {"summary": summary, "per_minute": per_minute, "unknown_statuses": unknown_all}


def maintenance_status(data_dir: str | Path) -> dict | None:
    """The collector's maintenance process as it last reported (``maintenance.json``, see
    ``dlrlens.store.maintenance.Maintainer.status_document``); ``None`` before its first report.

    Keys: updated_at, derive_at, compact_at (last successes), last_error_at (UTC Timestamps or
    NaT), errors (failed tasks since it started), last_error (text or None), interval_seconds
    ({"derive": s, "compact": s}).
    """
    try:
        doc = json.loads((Path(data_dir) / layout.MAINTENANCE_STATUS).read_text())
        successes = doc.get("last_success_at") or {}

        def moment(value) -> pd.Timestamp:
            return pd.Timestamp(value).tz_convert("UTC") if value else pd.NaT

        return {"updated_at": moment(doc.get("updated_at")), "derive_at": moment(successes.get("derive")),
                "compact_at": moment(successes.get("compact")), "last_error_at": moment(doc.get("last_error_at")),
                "errors": int(sum((doc.get("errors") or {}).values())), "last_error": doc.get("last_error"),
                "interval_seconds": dict(doc.get("interval_seconds") or {})}
    except (OSError, ValueError, TypeError, AttributeError):
        return None  # not written yet, or being replaced: it is rewritten every few seconds


def rejected_summary(data_dir: str | Path) -> pd.DataFrame:
    """reason, count, last_at: refused webhook requests per reason.

    ``count`` is the larger of the writers' persisted counters (``stats/*.json`` key
    ``rejected``, summed over writers; monotonic) and the number of kept bodies
    (``rejected/<reason>/*.body``, pruned to the newest N). ``last_at`` is the time of the
    newest kept body (UTC, from its file name, else its mtime), NaT if none is kept.
    """
    root = Path(data_dir)
    counted: dict[str, int] = {}
    for stats in sorted((root / layout.STATS_DIR).glob("*.json")):
        try:
            rejected = json.loads(stats.read_text()).get("rejected", {})
            for reason, n in rejected.items():
                counted[reason] = counted.get(reason, 0) + int(n)
        except (OSError, ValueError, AttributeError, TypeError):
            continue  # being replaced or not ours: counters are best effort
    kept: dict[str, tuple[int, pd.Timestamp | None]] = {}
    rejected_root = root / layout.REJECTED_DIR
    if rejected_root.is_dir():
        for folder in sorted(p for p in rejected_root.iterdir() if p.is_dir()):
            bodies = sorted(folder.glob("*.body"))
            kept[folder.name] = (len(bodies), _body_time(bodies[-1]) if bodies else None)
    rows = []
    for reason in sorted(set(counted) | set(kept)):
        n_kept, last_at = kept.get(reason, (0, None))
        rows.append({"reason": reason, "count": max(counted.get(reason, 0), n_kept),
                     "last_at": last_at if last_at is not None else pd.NaT})
    if not rows:
        return pd.DataFrame({"reason": pd.Series([], dtype=object), "count": pd.Series([], dtype="int64"),
                             "last_at": pd.Series([], dtype="datetime64[us, UTC]")})
    df = pd.DataFrame(rows)
    df["last_at"] = pd.to_datetime(df["last_at"], utc=True)
    return df.sort_values(["count", "reason"], ascending=[False, True]).reset_index(drop=True)


def _body_time(path: Path) -> pd.Timestamp | None:
    """Time from a kept body's name (``YYYYmmddTHHMMSSffffffZ-<id>.body``), else its mtime."""
    try:
        return pd.Timestamp(datetime.strptime(path.name.split("-")[0], "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC))
    except ValueError:
        try:
            return pd.Timestamp(path.stat().st_mtime, unit="s", tz="UTC")
        except OSError:
            return None
