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

from dlrlens.store.reader import Store
from dlrlens.store.selection import SEND_DIMENSIONS, Filters
from dlrlens.store.sql import dimension_conditions, send_conditions
from dashboard.queries._common import counts_as_int, empty_frame

UNKNOWN = "(unknown)"
# The dimensions, as a page names them: column of the send record -> label.
DIMENSIONS = {"country": "Country", "network": "Original network", "originator": "Sender ID", "route_id": "Route"}
DELIVERY_COLUMNS = ["messages", "delivered", "failed", "unknown", "pending", "delivery_rate", "top_failure"]
VALUE_LIMIT = 200


# The columns of the cost cubes: a message's campaign and send record dimensions.
CUBE_COLUMNS = "campaign, outcome, last_status, currency, country, network, originator, route_id, in_log"


def send_record_conditions(store: Store, f: Filters, params: dict) -> str:
    """Every filter of ``f`` but the time range (campaigns, outcomes, statuses, labels, and the
    send filters: country, network, sender, route) as one SQL condition; binds into ``params``."""
    return " AND ".join(dimension_conditions(f, params, store.label_condition(f)) + send_conditions(f, params))


def receipts_cube(store: Store, f: Filters) -> str:
    """A temp table of the messages with receipts matching ``f`` (every filter, the send
    filters too): per :data:`CUBE_COLUMNS`, ``messages``, ``cost`` (their sum) and ``priced``
    (how many have a cost). Made once per filters and data version (a page asks several
    questions of it: cost by campaign, by country, delivery by route, ...) from the derived
    files' pre-aggregated ``cost`` companions (:meth:`Store.cost_counts_sql`). Use it within
    ``store.pinned()``."""
    params: dict = {}
    conditions = send_record_conditions(store, f, params)
    return store.materialized("receipts_cube", (f,), receipts_cube_sql(store.cost_counts_sql(f, params), conditions),
                              params)


def receipts_cube_sql(cost_counts: str, conditions: str = "TRUE") -> str:
    """:func:`receipts_cube`'s rows from ``cost_counts`` (rows of
    :func:`dlrlens.store.derive.cost_rollup_sql`, signed) meeting ``conditions``."""
    return f"""
        SELECT {CUBE_COLUMNS}, sum(messages) AS messages, sum(cost) AS cost, sum(priced) AS priced
        FROM {cost_counts} WHERE {conditions}
        GROUP BY ALL HAVING sum(messages) <> 0"""


def log_only_cube(store: Store, f: Filters, missing_before) -> str:
    """:func:`receipts_cube` for the messages Mobivate's log knows without any receipt, created
    in f's range (:meth:`Store.log_only_sql`; outcome and status NULL), with ``missing``:
    whether created before ``missing_before``."""
    params: dict = {"missing_before": missing_before}
    log_only = store.log_only_sql(f, params)
    conditions = send_record_conditions(store, f, params)
    return store.materialized("log_only_cube", (f, missing_before),
                              log_only_cube_sql(log_only, "$missing_before", conditions), params)


def log_only_cube_sql(log_only: str, missing_before: str, conditions: str = "TRUE") -> str:
    """:func:`log_only_cube`'s rows from ``log_only`` (:meth:`Store.log_only_sql`'s rows)
    meeting ``conditions``; ``missing_before``: an SQL expression of that time."""
    return f"""
        SELECT {CUBE_COLUMNS.replace("in_log", "TRUE AS in_log")}, log_created < {missing_before} AS missing,
               count(*) AS messages, sum(cost) AS cost, count(cost) AS priced
        FROM {log_only} WHERE {conditions} GROUP BY ALL"""


def delivery_by(store: Store, f: Filters, dimension: str, limit: int = VALUE_LIMIT) -> pd.DataFrame:
    """Per value of ``dimension`` (a key of :data:`DIMENSIONS`): :data:`DELIVERY_COLUMNS`
    (``top_failure``: the most frequent failure reason), the busiest ``limit`` values first."""
    if dimension not in DIMENSIONS:
        raise ValueError(f"unknown dimension {dimension!r}; choose from {', '.join(DIMENSIONS)}")

    def compute():
        with store.pinned():
            cube = receipts_cube(store, f)
            return store.query(f"""
                WITH r AS (SELECT coalesce({dimension}, '{UNKNOWN}') AS grp, outcome, last_status, sum(messages) AS n
                           FROM {cube} GROUP BY ALL)
                SELECT grp AS {dimension},
                       sum(n) AS messages,
                       coalesce(sum(n) FILTER (WHERE outcome = 'delivered'), 0) AS delivered,
                       coalesce(sum(n) FILTER (WHERE outcome = 'failed'), 0) AS failed,
                       coalesce(sum(n) FILTER (WHERE outcome = 'unknown'), 0) AS unknown,
                       coalesce(sum(n) FILTER (WHERE outcome = 'pending'), 0) AS pending,
                       -- the most frequent failure reason; a tie goes to the first by name
                       arg_max(last_status, (n, -rank_by_name)) FILTER (WHERE outcome = 'failed') AS top_failure
                FROM (SELECT *, dense_rank() OVER (PARTITION BY grp ORDER BY last_status) AS rank_by_name FROM r)
                GROUP BY ALL ORDER BY messages DESC, {dimension} LIMIT {int(limit)}""")

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
