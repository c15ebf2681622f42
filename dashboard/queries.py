"""Every number the dashboard, its downloads and ``dlrlens report`` show (no Streamlit here).

Plain functions ``(store, filters, ...) -> pandas.DataFrame`` over the collector's Parquet
files (see ``collector/layout.py``), computed with DuckDB. None raises on empty data: they
return an empty frame with the documented columns (KPIs: one row of zeros/NaN).

KPI definitions (identical on screen, in downloads and in reports; the wording users see is
``dashboard.report.KPI_DEFINITIONS``):

* Message: one delivery_message_id. Stored rows are deduplicated by receipt_id first.
* Campaign: the message's ``campaign`` label (the one on its earliest labelled receipt), else
  its batch_id, else ``(none)``.
* Sent time: the earliest ``created`` of its receipts; date filters and buckets use it.
* Outcome: the final receipt (category != pending) with the latest created decides (ties:
  latest received_at, then receipt_id); no final receipt -> ``pending``. ``reason`` is the
  deciding status of a failed message; ``last_status`` is the deciding status of a finished
  message, or the latest status of a pending one (where it is stuck).
* Regressions: intermediate receipts created after the message's deciding final receipt.
* Delivery rate = delivered / (delivered + failed + unknown); delivered of all = delivered / messages.
* Latency: created of the first DELIVERED receipt minus sent time, for delivered messages with
  an earlier receipt only; percentiles by linear interpolation (quantile_cont == numpy).
* Webhook lag: received_at - created over distinct receipts (first stored copy).

Reading while the collector writes: a :class:`Store` snapshots the visible files into two
in-memory tables (``receipts``, ``messages``) and rebuilds them when :meth:`Store.version`
changes. A file that vanishes mid-read (compaction, atomic replace) triggers one retry
with a fresh file list.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import lru_cache
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo, available_timezones

import duckdb
import numpy as np
import pandas as pd

from collector import layout
from collector.statuses import status_table
from dashboard import _sql

UTC = timezone.utc

OUTCOMES = ("delivered", "failed", "unknown", "pending")
AGE_BUCKETS = ("<1 h", "1-24 h", "1-3 d", ">3 d")
NO_CAMPAIGN = "(none)"
AUTO_HOUR_BUCKETS_UP_TO = timedelta(days=3)
MAX_FILLED_BUCKETS = 5000

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
TREND_COLUMNS = ["bucket_start", "messages", "delivered", "failed", "unknown", "pending", "delivery_rate"]
LATENCY_COLUMNS = ["latency_messages", "p50_s", "p90_s", "p95_s", "p99_s",
                   "within_10s", "within_1m", "within_5m", "within_1h"]
LOOKUP_COLUMNS = ["delivery_message_id", "batch_id", "client_reference", "created", "received_at", "status",
                  "status_code", "category", "part", "parts", "hlr", "campaign", "labels", "receipt_id", "copies"]
DETAIL_COLUMNS = ["delivery_message_id", "campaign", "batch_id", "client_reference", "sent_at", "outcome",
                  "reason", "last_status", "delivered_at", "latency_s", "receipts"]


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
        return replace(self, start=self.start - (self.end - self.start), end=self.start)


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


class Store:
    """One read-only DuckDB connection over a data directory (cache one per dashboard session).

    Thread-safe: queries are serialised by a lock. Every query first makes sure the
    in-memory snapshot matches the visible files (a cheap stat); use :meth:`pinned` to keep
    one snapshot for a group of queries (e.g. one page render).
    """

    def __init__(self, data_dir: str | Path):
        self.data_dir = Path(data_dir)
        self._lock = threading.RLock()
        self._con = duckdb.connect(":memory:")
        self._con.execute("SET TimeZone = 'UTC'")
        self._con.register("_empty_arrow", layout.RECEIPT_SCHEMA.empty_table())
        self._con.execute("CREATE TABLE empty_receipts AS SELECT * FROM _empty_arrow")
        self._con.unregister("_empty_arrow")
        self._snapshot: str | None = None
        self._pins = 0

    # -- files

    def _files(self) -> list[tuple[str, int, int]]:
        """(path, size, mtime_ns) of every visible receipt file; vanished ones skipped."""
        found = []
        for path in sorted(glob.glob(layout.parquet_glob(self.data_dir))):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            found.append((path, st.st_size, st.st_mtime_ns))
        return found

    @staticmethod
    def _version_of(files: list[tuple[str, int, int]]) -> str:
        digest = hashlib.sha256()
        for path, size, mtime in files:
            digest.update(f"{path}\0{size}\0{mtime}\n".encode())
        return f"{len(files)}-{digest.hexdigest()[:16]}"

    def version(self) -> str:
        """Changes whenever the set of visible files (names, sizes, mtimes) changes."""
        return self._version_of(self._files())

    def has_data(self) -> bool:
        """False if the data directory or any receipt file is missing."""
        return bool(self._files())

    # -- snapshot

    def refresh(self) -> str:
        """Make the in-memory tables match the visible files; return their version."""
        with self._lock:
            if self._pins and self._snapshot is not None:
                return self._snapshot
            for attempt in (1, 2):
                files = self._files()
                version = self._version_of(files)
                if version == self._snapshot:
                    return version
                try:
                    self._build([path for path, _, _ in files])
                except duckdb.IOException:
                    # A file vanished between listing and reading (compaction or atomic
                    # replace by the collector): list again and retry once.
                    if attempt == 2:
                        raise
                    continue
                self._snapshot = version
                return version
        raise AssertionError("unreachable")

    def _build(self, paths: list[str]) -> None:
        if paths:
            source = "read_parquet($files, hive_partitioning = false, union_by_name = true)"
            params = {"files": paths}
        else:
            source, params = "empty_receipts", {}
        con = self._con
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(f"CREATE OR REPLACE TABLE receipts AS {_sql.distinct_receipts_sql(source)}", params)
            con.execute(f"CREATE OR REPLACE TABLE messages AS {_sql.messages_sql('receipts')}")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

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

    def query(self, sql: str, params: dict | None = None) -> pd.DataFrame:
        """Run ``sql`` (over tables ``receipts`` and ``messages``) on a current snapshot."""
        with self._lock:
            self.refresh()
            return self._con.execute(sql, params or {}).df()

    def data_range(self) -> tuple[datetime, datetime] | None:
        """Earliest and latest message sent time (UTC), or None without data."""
        row = self.query("SELECT min(sent_at) AS lo, max(sent_at) AS hi FROM messages").iloc[0]
        if pd.isna(row["lo"]):
            return None
        return row["lo"].to_pydatetime(), row["hi"].to_pydatetime()

    def close(self) -> None:
        with self._lock:
            self._con.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------- helpers


def _filtered(f: Filters) -> tuple[str, dict]:
    params: dict = {}
    return _sql.filtered_messages_sql(f, params), params


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


def _choose_bucket(store: Store, f: Filters, bucket: str | None) -> str:
    if bucket is not None:
        if bucket not in ("hour", "day"):
            raise ValueError(f"bucket must be 'hour' or 'day', not {bucket!r}")
        return bucket
    if f.start is not None and f.end is not None:
        span = f.end - f.start
    else:
        sql, params = _filtered(f)
        row = store.query(f"SELECT min(sent_at) AS lo, max(sent_at) AS hi FROM ({sql})", params).iloc[0]
        if pd.isna(row["lo"]):
            return "day"
        lo = f.start if f.start is not None else row["lo"]
        hi = f.end if f.end is not None else row["hi"]
        span = pd.Timestamp(hi) - pd.Timestamp(lo)
    return "hour" if span <= AUTO_HOUR_BUCKETS_UP_TO else "day"


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


# --------------------------------------------------------------------------- KPIs


def _kpi_frame(store: Store, f: Filters, group: str | None) -> pd.DataFrame:
    sql, params = _filtered(f)
    df = store.query(_sql.kpi_sql(sql, group), params)
    df = _counts_as_int(df, COUNT_KPIS)
    for column in KPI_COLUMNS:
        if column not in COUNT_KPIS:
            df[column] = df[column].astype("float64")
    return df


def kpis(store: Store, f: Filters) -> pd.DataFrame:
    """One row with every column of :data:`KPI_COLUMNS` (zeros and NaN without data)."""
    return _kpi_frame(store, f, None)[KPI_COLUMNS].reset_index(drop=True)


def kpis_with_change(store: Store, f: Filters) -> pd.DataFrame:
    """metric, value, previous, change (value - previous), relative_change (change / previous).

    ``previous`` is the same KPI over :meth:`Filters.previous_period` (NaN when there is none).
    """
    current = kpis(store, f).iloc[0]
    before = f.previous_period()
    previous = kpis(store, before).iloc[0] if before is not None else pd.Series(np.nan, index=KPI_COLUMNS)
    out = pd.DataFrame({
        "metric": KPI_COLUMNS,
        "value": [float(current[m]) for m in KPI_COLUMNS],
        "previous": [float(previous[m]) for m in KPI_COLUMNS],
    })
    out["change"] = out["value"] - out["previous"]
    out["relative_change"] = out["change"] / out["previous"].where(out["previous"] != 0)
    return out


def campaigns(store: Store, f: Filters) -> pd.DataFrame:
    """One row per campaign (sorted by messages, descending): campaign + every KPI column."""
    df = _kpi_frame(store, f, "fm.campaign").rename(columns={"grp": "campaign"})
    if df.empty:
        return _empty(["campaign"] + KPI_COLUMNS)
    df = df.sort_values(["messages", "campaign"], ascending=[False, True])
    return df[["campaign"] + KPI_COLUMNS].reset_index(drop=True)


def campaign_names(store: Store) -> list[str]:
    """Every campaign in the data, sorted (for the filter widget)."""
    df = store.query("SELECT DISTINCT campaign FROM messages ORDER BY campaign")
    return df["campaign"].tolist()


def outcome_breakdown(store: Store, f: Filters) -> pd.DataFrame:
    """outcome (all four, fixed order), messages, share (of all messages; NaN without any)."""
    sql, params = _filtered(f)
    counts = store.query(f"SELECT outcome, count(*) AS messages FROM ({sql}) GROUP BY outcome", params)
    messages = counts.set_index("outcome")["messages"].reindex(list(OUTCOMES), fill_value=0).astype("int64")
    total = int(messages.sum())
    return pd.DataFrame({
        "outcome": list(OUTCOMES),
        "messages": messages.to_numpy(),
        "share": messages.to_numpy() / total if total else np.nan,
    })


# --------------------------------------------------------------------------- over time


def trend(store: Store, f: Filters, bucket: str | None = None) -> pd.DataFrame:
    """Per local hour/day bucket (``bucket`` 'hour'|'day'; auto: hour when the range is at
    most 3 days): bucket_start (tz-aware in f.tz), messages, delivered, failed, unknown,
    pending, delivery_rate. Buckets without messages are included with zeros, from the
    filter's start to its end (or the data's first/last bucket)."""
    bucket = _choose_bucket(store, f, bucket)
    sql, params = _filtered(f)
    params["tz"] = f.tz
    df = store.query(
        f"SELECT {_sql.bucket_sql(bucket)} AS bucket_start, {_sql.outcome_counts_sql()} "
        f"FROM ({sql}) GROUP BY ALL ORDER BY bucket_start", params)
    df = _in_zone(df, ["bucket_start"], f.tz)
    index = _all_buckets(f, bucket, df["bucket_start"])
    df = df.set_index("bucket_start").reindex(index)
    df.index.name = "bucket_start"
    df = _counts_as_int(df, ["messages", "delivered", "failed", "unknown", "pending"])
    df["delivery_rate"] = df["delivery_rate"].astype("float64")
    return df.reset_index()[TREND_COLUMNS]


def failure_reasons_over_time(store: Store, f: Filters, bucket: str | None = None) -> pd.DataFrame:
    """bucket_start (tz-aware in f.tz), reason, messages: failed messages per reason per bucket."""
    bucket = _choose_bucket(store, f, bucket)
    sql, params = _filtered(f)
    params["tz"] = f.tz
    df = store.query(
        f"SELECT {_sql.bucket_sql(bucket)} AS bucket_start, reason, count(*) AS messages "
        f"FROM ({sql}) WHERE outcome = 'failed' GROUP BY ALL ORDER BY bucket_start, messages DESC, reason",
        params)
    return _in_zone(df, ["bucket_start"], f.tz)


def pending_ages(store: Store, f: Filters, now: datetime | None = None) -> pd.DataFrame:
    """Pending messages by age (now - sent time) and the status they are stuck at.

    One row per (age_bucket, last_status) with messages > 0, ordered by age bucket
    (:data:`AGE_BUCKETS`) then messages descending. Sum ``messages`` by ``age_bucket`` for
    the bucket totals.
    """
    sql, params = _filtered(f)
    params["now"] = now if now is not None else datetime.now(UTC)
    age = _sql.seconds_between("sent_at", "$now")
    df = store.query(f"""
        SELECT CASE WHEN {age} < 3600 THEN 0 WHEN {age} < 86400 THEN 1
                    WHEN {age} < 259200 THEN 2 ELSE 3 END AS bucket_order,
               last_status, count(*) AS messages
        FROM ({sql}) WHERE outcome = 'pending'
        GROUP BY ALL ORDER BY bucket_order, messages DESC, last_status""", params)
    df["age_bucket"] = [AGE_BUCKETS[i] for i in df["bucket_order"]]
    return df[["age_bucket", "messages", "last_status"]]


# --------------------------------------------------------------------------- failures


def failure_reasons(store: Store, f: Filters) -> pd.DataFrame:
    """reason, messages, share (of failed messages), meaning (from statuses.csv; '' if undocumented)."""
    sql, params = _filtered(f)
    df = store.query(f"""
        SELECT reason, count(*) AS messages, count(*) / sum(count(*)) OVER () AS share
        FROM ({sql}) WHERE outcome = 'failed' GROUP BY reason ORDER BY messages DESC, reason""", params)
    meanings = _meanings()
    df["meaning"] = [meanings.get(r, "") for r in df["reason"]]
    return df


def failure_reasons_by_campaign(store: Store, f: Filters) -> pd.DataFrame:
    """campaign, reason, messages, share (of that campaign's failed messages)."""
    sql, params = _filtered(f)
    return store.query(f"""
        SELECT campaign, reason, count(*) AS messages,
               count(*) / sum(count(*)) OVER (PARTITION BY campaign) AS share
        FROM ({sql}) WHERE outcome = 'failed' GROUP BY campaign, reason
        ORDER BY campaign, messages DESC, reason""", params)


# --------------------------------------------------------------------------- latency


def latencies(store: Store, f: Filters) -> pd.DataFrame:
    """campaign, delivery_message_id, latency_s, sent_at: each delivered message with an earlier receipt."""
    sql, params = _filtered(f)
    df = store.query(f"""
        SELECT campaign, delivery_message_id, latency_s, sent_at FROM ({sql})
        WHERE latency_s IS NOT NULL ORDER BY campaign, latency_s, delivery_message_id""", params)
    return _in_zone(df, ["sent_at"], f.tz)


def latency_by_campaign(store: Store, f: Filters) -> pd.DataFrame:
    """campaign, latency_messages, p50_s, p90_s, p95_s, p99_s, within_10s/1m/5m/1h.

    Campaigns with delivered messages but no latency sample have latency_messages 0 and NaN.
    """
    sql, params = _filtered(f)
    df = store.query(f"""
        SELECT campaign, {_sql.latency_stats_sql(prefix='', suffix='_s')}
        FROM ({sql}) WHERE outcome = 'delivered' GROUP BY campaign
        ORDER BY latency_messages DESC, campaign""", params)
    df = _counts_as_int(df, ["latency_messages"])
    return df[["campaign"] + LATENCY_COLUMNS]


# --------------------------------------------------------------------------- messages


def message_lookup(store: Store, term: str, limit: int = 5000, tz: str = "UTC") -> pd.DataFrame:
    """Every distinct receipt of the messages whose delivery_message_id, client_reference or
    batch_id equals ``term`` (trimmed), ordered by delivery_message_id, created, received_at.

    Columns: :data:`LOOKUP_COLUMNS`; ``campaign`` is the message's campaign (see the
    definitions), ``labels`` the receipt's own, ``copies`` how many stored copies it has.
    At most ``limit`` rows; times shown in ``tz``.
    """
    term = (term or "").strip()
    if not term:
        return _empty(LOOKUP_COLUMNS)
    zone_info(tz)
    df = store.query(f"""
        WITH ids AS (
            SELECT DISTINCT delivery_message_id FROM receipts
            WHERE delivery_message_id = $term OR client_reference = $term OR batch_id = $term
        )
        SELECT r.delivery_message_id, r.batch_id, r.client_reference, r.created, r.received_at,
               r.status, r.status_code, r.category, r.part, r.parts, r.hlr, m.campaign, r.labels,
               r.receipt_id, r.copies
        FROM receipts r
        JOIN ids ON r.delivery_message_id = ids.delivery_message_id
        JOIN messages m ON r.delivery_message_id = m.delivery_message_id
        ORDER BY r.delivery_message_id, r.created, r.received_at, r.receipt_id
        LIMIT $limit""", {"term": term, "limit": int(limit)})
    return _in_zone(df, ["created", "received_at"], tz)


def message_detail(store: Store, f: Filters, limit: int | None = None) -> pd.DataFrame:
    """One row per message matching ``f`` (newest sent first; at most ``limit``):
    :data:`DETAIL_COLUMNS`, times in f.tz. ``latency_s`` is NaN unless it counts as a latency."""
    sql, params = _filtered(f)
    limit_sql = ""
    if limit is not None:
        params["limit"] = int(limit)
        limit_sql = "LIMIT $limit"
    df = store.query(
        f"SELECT {', '.join(DETAIL_COLUMNS)} FROM ({sql}) "
        f"ORDER BY sent_at DESC, delivery_message_id {limit_sql}", params)
    return _in_zone(df, ["sent_at", "delivered_at"], f.tz)


def label_pairs(store: Store) -> pd.DataFrame:
    """key, value, messages: every webhook URL label seen (except ``campaign``), most used first."""
    return store.query("""
        SELECT j.key AS key, j.value ->> '$' AS value, count(DISTINCT r.delivery_message_id) AS messages
        FROM receipts r, json_each(r.labels) j
        WHERE j.key <> 'campaign'
        GROUP BY ALL ORDER BY key, messages DESC, value""")


# --------------------------------------------------------------------------- health


def data_health(store: Store, since: datetime | None = None) -> dict[str, pd.DataFrame]:
    """How the data itself looks, over receipts received at or after ``since`` (all if None).

    * ``summary``: one row: receipts (distinct), stored_rows, duplicate_rows, regressions,
      last_received_at, last_created_at, messages.
    * ``per_minute``: minute (UTC), receipts received (distinct) in the last 24 h of data
      (from ``since`` when given).
    * ``unknown_statuses``: status, status_code, receipts: statuses not in Mobivate's table.
    """
    with store.pinned():
        params = {"since": since} if since is not None else {}
        since_sql = "received_at >= $since" if since is not None else "TRUE"
        summary = store.query(f"""
            SELECT count(*) AS receipts,
                   coalesce(sum(copies), 0)::BIGINT AS stored_rows,
                   coalesce(sum(copies) - count(*), 0)::BIGINT AS duplicate_rows,
                   count(*) FILTER (WHERE r.category = 'pending' AND r.created > m.final_created) AS regressions,
                   max(received_at) AS last_received_at,
                   max(created) AS last_created_at,
                   count(DISTINCT r.delivery_message_id) AS messages
            FROM receipts r JOIN messages m ON r.delivery_message_id = m.delivery_message_id
            WHERE {since_sql}""", params)
        minute_params = dict(params)
        if since is None:
            window = "received_at >= (SELECT max(received_at) FROM receipts) - INTERVAL 24 HOUR"
        else:
            window = since_sql
        per_minute = store.query(f"""
            SELECT date_trunc('minute', received_at) AS minute, count(*) AS receipts
            FROM receipts WHERE {window} GROUP BY ALL ORDER BY minute""", minute_params)
        unknown = store.query(f"""
            SELECT status, status_code, count(*) AS receipts FROM receipts
            WHERE {since_sql} AND NOT list_contains($known, status)
            GROUP BY ALL ORDER BY receipts DESC, status""",
            dict(params, known=[s.name for s in status_table()]))
    summary = _counts_as_int(summary, ["receipts", "stored_rows", "duplicate_rows", "regressions", "messages"])
    return {"summary": summary, "per_minute": per_minute, "unknown_statuses": unknown}


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
