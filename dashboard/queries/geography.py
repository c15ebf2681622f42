"""Where messages fail: delivery figures by the recipient's country and original network, the
sender ID and the route, from Mobivate's send records joined to the receipts (the derived
state keeps each message's record: :meth:`dlrlens.store.reader.Store.cost_counts_sql`). Cost
by the same dimensions is :func:`dashboard.queries.cost.cost_by`.

Only messages with receipts count here (the receipt-based KPIs); a message without a send
record (not synced, or outside the synced days) is in ``(unknown)``, as is a number that did
not parse. Delivery rate = delivered / (delivered + failed + unknown), as everywhere.
"""

from __future__ import annotations

import pandas as pd

from dlrlens.store import derive
from dlrlens.store.reader import Store
from dlrlens.store.selection import SEND_DIMENSIONS, Filters
from dlrlens.store.sql import dimension_conditions, send_conditions
from dashboard.queries._common import counts_as_int, empty_frame

UNKNOWN = "(unknown)"
# The dimensions, as a page names them: column of the joined relation -> label.
DIMENSIONS = {"country": "Country", "network": "Original network", "originator": "Sender ID", "route_id": "Route"}
DELIVERY_COLUMNS = ["messages", "delivered", "failed", "unknown", "pending", "delivery_rate", "top_failure"]
VALUE_LIMIT = 200


def message_rows_sql(store: Store, f: Filters, group: str, with_log_only: bool = False) -> tuple[str, dict]:
    """SQL of the messages matching ``f`` (every filter, the send filters too) by ``group`` (an
    SQL expression over :data:`dlrlens.store.derive.COST_GROUPS`), as rows: grp, currency,
    outcome, last_status, in_log, has_receipt, messages (how many), cost (their sum),
    log_created; and its parameters. Messages with receipts come pre-aggregated (one row a
    group of equal values, log_created NULL); ``with_log_only`` adds the messages the log
    knows without any receipt, one row each (has_receipt false, outcome NULL). Call it
    inside ``store.pinned()``."""
    params: dict = {}
    conditions = " AND ".join(dimension_conditions(f, params, store.label_condition(f)) + send_conditions(f, params))
    counts = store.cost_counts_sql(f, params)
    rows = f"""
        SELECT {group} AS grp, currency, outcome, last_status, in_log, TRUE AS has_receipt, messages, cost,
               NULL::TIMESTAMPTZ AS log_created
        FROM (SELECT {derive.COST_GROUPS}, sum(messages) AS messages, sum(cost) AS cost
              FROM {counts} WHERE {conditions} GROUP BY ALL HAVING sum(messages) <> 0)"""
    if with_log_only:
        rows += f"""
        UNION ALL
        SELECT {group}, currency, outcome, last_status, TRUE, FALSE, 1, cost, log_created
        FROM {store.log_only_sql(f, params)} WHERE {conditions}"""
    return rows, params


def delivery_by(store: Store, f: Filters, dimension: str, limit: int = VALUE_LIMIT) -> pd.DataFrame:
    """Per value of ``dimension`` (a key of :data:`DIMENSIONS`): :data:`DELIVERY_COLUMNS`
    (``top_failure``: the most frequent failure reason), the busiest ``limit`` values first."""
    if dimension not in DIMENSIONS:
        raise ValueError(f"unknown dimension {dimension!r}; choose from {', '.join(DIMENSIONS)}")

    def compute():
        with store.pinned():
            rows, params = message_rows_sql(store, f, f"coalesce({dimension}, '{UNKNOWN}')")
            return store.query(f"""
                WITH r AS (SELECT grp, outcome, last_status, sum(messages) AS n FROM ({rows}) GROUP BY ALL)
                SELECT grp AS {dimension},
                       sum(n) AS messages,
                       coalesce(sum(n) FILTER (WHERE outcome = 'delivered'), 0) AS delivered,
                       coalesce(sum(n) FILTER (WHERE outcome = 'failed'), 0) AS failed,
                       coalesce(sum(n) FILTER (WHERE outcome = 'unknown'), 0) AS unknown,
                       coalesce(sum(n) FILTER (WHERE outcome = 'pending'), 0) AS pending,
                       -- the most frequent failure reason; a tie goes to the first by name
                       arg_max(last_status, (n, -rank_by_name)) FILTER (WHERE outcome = 'failed') AS top_failure
                FROM (SELECT *, dense_rank() OVER (PARTITION BY grp ORDER BY last_status) AS rank_by_name FROM r)
                GROUP BY ALL ORDER BY messages DESC, {dimension} LIMIT {int(limit)}""", params)

    df = store.cached("delivery_by", (f, dimension, limit), compute)
    if df.empty:
        return empty_frame([dimension] + DELIVERY_COLUMNS)
    df = counts_as_int(df, ["messages", "delivered", "failed", "unknown", "pending"])
    finished = df["delivered"] + df["failed"] + df["unknown"]
    df["delivery_rate"] = df["delivered"] / finished.where(finished > 0)
    return df[[dimension] + DELIVERY_COLUMNS]


def send_choices(store: Store, f: Filters, dimension: str, limit: int = VALUE_LIMIT) -> list[str]:
    """The values of ``dimension`` in the send records (busiest first, at most ``limit``), for
    the sidebar's filters; ``(unknown)`` included when some message has none."""
    if dimension not in SEND_DIMENSIONS:
        raise ValueError(f"unknown dimension {dimension!r}")
    return delivery_by(store, f, dimension, limit)[dimension].tolist()
