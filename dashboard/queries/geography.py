"""Where messages fail: delivery figures by the recipient's country and original network, the
sender ID and the route, from Mobivate's send records joined to the receipts
(:meth:`dlrlens.store.reader.Store.joined_messages_sql`). Cost by the same dimensions is
:func:`dashboard.queries.cost.cost_by`.

Only messages with receipts count here (the receipt-based KPIs); a message without a send
record (not synced, or outside the synced days) is in ``(unknown)``, as is a number that did
not parse. Delivery rate = delivered / (delivered + failed + unknown), as everywhere.
"""

from __future__ import annotations

import pandas as pd

from dlrlens.store.reader import Store
from dlrlens.store.selection import SEND_DIMENSIONS, Filters
from dashboard.queries._common import counts_as_int, empty_frame

UNKNOWN = "(unknown)"
# The dimensions, as a page names them: column of the joined relation -> label.
DIMENSIONS = {"country": "Country", "network": "Original network", "originator": "Sender ID", "route_id": "Route"}
DELIVERY_COLUMNS = ["messages", "delivered", "failed", "unknown", "pending", "delivery_rate", "top_failure"]
VALUE_LIMIT = 200


def delivery_by(store: Store, f: Filters, dimension: str, limit: int = VALUE_LIMIT) -> pd.DataFrame:
    """Per value of ``dimension`` (a key of :data:`DIMENSIONS`): :data:`DELIVERY_COLUMNS`
    (``top_failure``: the most frequent failure reason), the busiest ``limit`` values first."""
    if dimension not in DIMENSIONS:
        raise ValueError(f"unknown dimension {dimension!r}; choose from {', '.join(DIMENSIONS)}")

    def compute():
        sql, params = store.joined_messages_sql(f)
        return store.query(f"""
            SELECT coalesce({dimension}, '{UNKNOWN}') AS {dimension},
                   count(*) AS messages,
                   count(*) FILTER (WHERE outcome = 'delivered') AS delivered,
                   count(*) FILTER (WHERE outcome = 'failed') AS failed,
                   count(*) FILTER (WHERE outcome = 'unknown') AS unknown,
                   count(*) FILTER (WHERE outcome = 'pending') AS pending,
                   mode(last_status) FILTER (WHERE outcome = 'failed') AS top_failure
            FROM ({sql}) WHERE has_receipt
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
