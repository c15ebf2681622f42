"""What the question modules of :mod:`dashboard.queries` share (private): the column lists,
limits, frame helpers and the local time buckets of the charts over time.

Contract: nothing here reads data but through the :class:`~dlrlens.store.reader.Store` it is
given; every helper returns frames with the documented columns, empty without data.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

import pandas as pd

from dlrlens.store import derive
from dlrlens.store.reader import CHARTED_FROM, CHARTED_TO, QUANTILES, Store
from dlrlens.store.selection import Filters
from dashboard import _sql

AGE_BUCKETS = ("<1 h", "1-24 h", "1-3 d", ">3 d")
NO_CAMPAIGN = "(none)"
AUTO_HOUR_BUCKETS_UP_TO = timedelta(days=3)
MAX_FILLED_BUCKETS = 5000
# Filter widgets list at most this many values (the busiest first) and find others by a search
# on the server: every rerun sends a widget's options to the browser.
OPTION_LIMIT = 200

# The KPI vocabulary has one owner: the catalog (column, label, unit, definition).
from dashboard.catalog import COUNT_KPIS, KPI_COLUMNS, LATENCY_COLUMNS, RECEIPT_KPIS, TREND_COLUMNS  # noqa: E402,F401

# --------------------------------------------------------------------------- frames


def latency_quantiles(store: Store, f: Filters, group: str | None,
                      prefix: str = "latency_", suffix: str = "_s") -> pd.DataFrame:
    """Exact ``quantile_cont(latency_s, q)`` for q in p50/p90/p95/p99 over the messages
    matching ``f``, overall or per ``group`` (a column: campaign): columns grp and
    ``{prefix}p50{suffix}`` ... ``{prefix}p99{suffix}``, one row per group with latencies
    (:meth:`dlrlens.store.reader.Store.latency_quantiles`)."""
    return store.latency_quantiles(f, group, [f"{prefix}{name}{suffix}" for name, _ in QUANTILES])


def in_zone(df: pd.DataFrame, columns, tz: str) -> pd.DataFrame:
    """Show timestamp columns (UTC from DuckDB) in ``tz``."""
    for column in columns:
        if column in df:
            df[column] = pd.to_datetime(df[column], utc=True).dt.tz_convert(tz)
    return df


def empty_frame(columns) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=object) for c in columns})


def counts_as_int(df: pd.DataFrame, columns) -> pd.DataFrame:
    for column in columns:
        if column in df:
            df[column] = df[column].fillna(0).astype("int64")
    return df


# --------------------------------------------------------------------------- time buckets


def charted(f: Filters, bounded: bool = True) -> Filters:
    """``f`` with its range cut to the charted span [:data:`CHARTED_FROM`, :data:`CHARTED_TO`)
    (empty, start == end, where they do not meet). ``bounded`` False leaves an end that ``f``
    leaves open open (the data's first or last bucket then decides where a chart ends)."""
    start = CHARTED_FROM if f.start is None else min(max(f.start, CHARTED_FROM), CHARTED_TO)
    end = CHARTED_TO if f.end is None else max(min(f.end, CHARTED_TO), start)
    return replace(f, start=start if bounded or f.start is not None else None,
                   end=end if bounded or f.end is not None else None)


def choose_bucket(store: Store, f: Filters, bucket: str | None) -> str:
    if bucket is not None:
        if bucket not in ("hour", "day"):
            raise ValueError(f"bucket must be 'hour' or 'day', not {bucket!r}")
        return bucket
    window = charted(f, bounded=False)
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
    :func:`charted`), (None, None) without any: the first and last counts slots with
    messages, then the messages of those two slots."""
    f = charted(f)
    sql, params = store.filtered_counts_sql(f)
    row = store.query(f"SELECT min(t) AS lo, max(t) AS hi FROM (SELECT t FROM ({sql}) GROUP BY t "
                      f"HAVING sum(messages) > 0)", params).iloc[0]
    if pd.isna(row["lo"]):
        return None, None
    slot = timedelta(microseconds=derive.SLOT_MICROS)
    edges = []
    for moment in (row["lo"].to_pydatetime(), row["hi"].to_pydatetime()):
        edge = replace(f, start=max(moment, f.start), end=min(moment + slot, f.end))
        sql, params = store.filtered_messages_sql(edge)
        edges.append(store.query(f"SELECT min(sent_at) AS lo, max(sent_at) AS hi FROM ({sql})", params).iloc[0])
    return edges[0]["lo"], edges[1]["hi"]


def bucket_start(moment: datetime, bucket: str, tz: str) -> pd.Timestamp:
    """Start of the local ``bucket`` containing ``moment`` (same rule as the SQL)."""
    local = pd.Timestamp(moment).tz_convert(tz)
    if bucket == "day":
        return local.normalize()
    return local - pd.Timedelta(minutes=local.minute, seconds=local.second,
                                microseconds=local.microsecond, nanoseconds=local.nanosecond)


def all_buckets(f: Filters, bucket: str, present: pd.Series) -> pd.DatetimeIndex:
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


def per_bucket(store: Store, f: Filters, bucket: str | None, select: str, where: str = "",
               order: str = "bucket_start") -> tuple[pd.DataFrame, str]:
    """The per-message counts grouped by local time bucket (``bucket`` as in
    :func:`dashboard.queries.trend`): ``bucket_start`` (before :func:`in_zone`) plus ``select``,
    only buckets with messages; and the bucket size chosen. Charted messages only (see
    :func:`dashboard.queries.uncharted_messages`)."""
    chosen = choose_bucket(store, f, bucket)
    sql, params = store.filtered_counts_sql(charted(f))
    params["tz"] = f.tz
    df = store.query(f"SELECT {_sql.bucket_sql(chosen, 't')} AS bucket_start, {select} FROM ({sql}) {where} "
                     f"GROUP BY ALL HAVING sum(messages) > 0 ORDER BY {order}", params)
    return df, chosen
