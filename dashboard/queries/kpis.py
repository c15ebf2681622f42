"""The KPI questions: the figures of the KPI cards and the Campaigns table.

* :func:`kpis`: one row of every KPI column (:data:`KPI_COLUMNS`) over the messages matching
  the filters; :func:`kpis_with_change` the same against the previous period.
* :func:`campaigns`: the same columns per campaign.
* :func:`outcome_breakdown`: messages per outcome.

Contract (see the definitions in :mod:`dashboard.queries`): counts are int64, shares and
percentiles float64; without data one row of zeros/NaN (:func:`kpis`) or no rows. The
per-receipt columns (:data:`RECEIPT_KPIS`) are NaN unless ``receipt_figures``.
"""

from __future__ import annotations

from datetime import timezone

import numpy as np
import pandas as pd

from dlrlens.store.reader import Store
from dlrlens.store.selection import OUTCOMES, Filters
from dashboard import _sql
from dashboard.queries._common import (COUNT_KPIS, KPI_COLUMNS, RECEIPT_KPIS, counts_as_int, empty_frame,
                                       latency_quantiles)


def _kpi_frame(store: Store, f: Filters, group: str | None, receipt_figures: bool) -> pd.DataFrame:
    sql, params = store.filtered_counts_sql(f)
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
        messages, params = store.filtered_messages_sql(f)
        per_receipt = store.query(_sql.receipt_kpis_sql(messages, _distinct_receipts_of(store, f, messages), group),
                                  params)
        if group is None:
            per_receipt["grp"] = 0
        df = df.merge(per_receipt, on="grp", how="left")
    else:
        for column in RECEIPT_KPIS:
            df[column] = np.nan
    counts = [c for c in COUNT_KPIS if receipt_figures or c not in RECEIPT_KPIS]
    df = counts_as_int(df, counts)
    for column in KPI_COLUMNS:
        if column not in counts:
            df[column] = df[column].astype("float64")
    return df


def _distinct_receipts_of(store: Store, f: Filters, messages: str) -> str:
    """The distinct receipts of the messages ``messages`` (SQL), with what the per-receipt KPIs
    need: delivery_message_id, created, received_at of the first received copy, copies (as
    :func:`dlrlens.store.sql.distinct_receipts_sql` gives them: copies of a receipt share its
    message and created time, both in its receipt_id). Only the partitions from f's first
    UTC day are read (a receipt is created no earlier than its message's sent time), the
    messages' receipts are picked before grouping, and a grouping replaces the window over
    every stored row: at 100 M receipts the window over all of them ran out of the store's
    2 GB for a 30-day Campaigns table and took 212 s for 7 days."""
    since = f.start.astimezone(timezone.utc).date().isoformat() if f.start is not None else None
    return f"""(
        SELECT delivery_message_id, created, min(received_at) AS received_at, count(*) AS copies
        FROM {store.raw_sql(since_day=since)}
        WHERE delivery_message_id IN (SELECT delivery_message_id FROM ({messages}))
        GROUP BY receipt_id, delivery_message_id, created)"""


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
            return empty_frame(["campaign"] + KPI_COLUMNS)
        df = df.sort_values(["messages", "campaign"], ascending=[False, True])
        return df[["campaign"] + KPI_COLUMNS].reset_index(drop=True)
    return store.cached("campaigns", (f, receipt_figures), compute)




def outcome_breakdown(store: Store, f: Filters) -> pd.DataFrame:
    """outcome (all four, fixed order), messages, share (of all messages; NaN without any)."""
    def compute():
        sql, params = store.filtered_counts_sql(f)
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

