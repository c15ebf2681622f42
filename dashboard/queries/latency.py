"""The latency questions: time to deliver per campaign, its spread, and the measured messages.

* :func:`latency_by_campaign`: exact percentiles and "delivered within" shares per campaign.
* :func:`latency_distribution`: latencies counted per bucket (CDF and histogram charts).
* :func:`latencies`, :func:`slowest_latencies`, :func:`latencies_file`: the messages measured.

Contract: a latency counts only for a delivered message with an earlier receipt (see
:mod:`dashboard.queries`); percentiles are exact, equal to DuckDB's ``quantile_cont``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dlrlens.store import derive
from dlrlens.store.reader import Store
from dlrlens.store.selection import Filters
from dlrlens.store.sql import string_literal
from dashboard import _sql, safe_text
from dashboard.queries._common import LATENCY_COLUMNS, counts_as_int, in_zone, latency_quantiles

LATENCY_ROW_COLUMNS = ["campaign", "delivery_message_id", "latency_s", "sent_at"]


def _latency_rows_sql(store: Store, f: Filters) -> tuple[str, dict]:
    sql, params = store.filtered_messages_sql(f)
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
        return in_zone(store.query(sql, params), ["sent_at"], f.tz)
    return store.cached("latencies", (f, limit), compute)


def slowest_latencies(store: Store, f: Filters, limit: int) -> pd.DataFrame:
    """The ``limit`` measured messages that took longest to deliver (:func:`latencies`
    columns; latency_s descending, then delivery_message_id)."""
    def compute():
        sql, params = store.filtered_messages_sql(f)
        params["limit"] = int(limit)
        df = store.query(f"SELECT {', '.join(LATENCY_ROW_COLUMNS)} FROM ({sql}) WHERE latency_s IS NOT NULL "
                         f"ORDER BY latency_s DESC, delivery_message_id LIMIT $limit", params)
        return in_zone(df, ["sent_at"], f.tz)
    return store.cached("slowest_latencies", (f, limit), compute)


def latencies_file(store: Store, f: Filters, fmt: str, metadata: dict[str, str] | None = None) -> bytes:
    """Every row of :func:`latencies` as a ``csv``, ``csv.gz`` or ``parquet`` file, written by DuckDB
    straight from the query (never a DataFrame: a month at scale is millions of rows). CSV
    times are in f.tz with their offset (``2026-11-27 14:22:02.5+01``); Parquet keeps the
    UTC instant with its type, and ``metadata`` as its key-value metadata (e.g. the scope).
    Not cached: built when someone asks for it."""
    options = {"csv": "FORMAT csv, HEADER true", "csv.gz": "FORMAT csv, HEADER true, COMPRESSION gzip",
               "parquet": "FORMAT parquet, COMPRESSION zstd"}.get(fmt)
    if options is None:
        raise ValueError(f"format must be csv, csv.gz or parquet, not {fmt!r}")
    if fmt == "parquet" and metadata:
        pairs = ", ".join(f"{key}: {string_literal(value)}" for key, value in metadata.items()
                          if key.isidentifier())
        options += f", KV_METADATA {{{pairs}}}"
    with store.pinned():
        sql, params = _latency_rows_sql(store, f)
        if fmt.startswith("csv"):  # text cells as data, never formulas (dashboard/safe_text.py)
            probe = store.query(f"SELECT * FROM ({sql}) LIMIT 0", params)
            sql = safe_text.csv_safe_select(sql, [c for c in probe if safe_text.is_text_column(probe[c])])
        target = store.scratch_path(f"latencies.{fmt}")
        try:
            with store.time_zone(f.tz if fmt.startswith("csv") else "UTC"):
                store.query(f"COPY ({sql}) TO {string_literal(target)} ({options})", params)
            return target.read_bytes()
        finally:
            target.unlink(missing_ok=True)


def latency_by_campaign(store: Store, f: Filters) -> pd.DataFrame:
    """campaign, latency_messages, p50_s, p90_s, p95_s, p99_s, within_10s/1m/5m/1h.

    Campaigns with delivered messages but no latency sample have latency_messages 0 and NaN.
    """
    def compute():
        sql, params = store.filtered_counts_sql(f)
        df = store.query(f"SELECT {_sql.counts_select('campaign')} FROM ({sql}) WHERE outcome = 'delivered' "
                         f"GROUP BY ALL HAVING sum(messages) > 0", params).rename(columns={"grp": "campaign"})
        quantiles = latency_quantiles(store, f, "campaign", prefix="", suffix="_s")
        df = df.merge(quantiles.rename(columns={"grp": "campaign"}), on="campaign", how="left")
        df = counts_as_int(df, ["latency_messages"])
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
        else:
            counts = store.latency_bucket_counts(f, "campaign" if by_campaign else "0")
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

