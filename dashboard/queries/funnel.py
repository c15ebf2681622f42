"""The campaign funnel: sent -> delivered -> clicked -> replied -> opted out.

* :func:`campaigns_with_funnel`: the Campaigns table (:func:`dashboard.queries.campaigns`)
  with the funnel columns appended (the Campaigns page and ``dlrlens report``).
* :func:`funnel`: one row of :data:`FUNNEL_COLUMNS` (``messages`` and ``delivered`` first) over
  the messages matching the filters, or one row per campaign (``by_campaign``).
* :func:`unlinked_events`: clicks and replies that match no stored message.
* :func:`clicks_over_time`, :func:`click_breakdown` (country, OS, browser), :func:`top_links`:
  the clicks of the messages matching the filters.
* :func:`message_replies`: the replies to given messages (Message lookup), text included: the
  page masks it.

Definitions (the words people read are ``dashboard.catalog.FUNNEL_TERMS`` / ``FUNNEL_KPIS``;
linkage and duplicates: :mod:`dlrlens.store.events`): figures are per message and follow the
message's filters (sent time, campaign, outcome, status, labels), whenever the click or reply
came. Only the charts over time bucket clicks by their own (arrival) time.

Contract: counts int64, shares and seconds float64; without data :func:`funnel` gives one row of
zeros/NaN overall and no rows per campaign. Linkage is against every stored message (not only the
filtered ones), so "unlinked" means unknown, not filtered out.
"""

from __future__ import annotations

import pandas as pd

from dlrlens.store import events
from dlrlens.store.reader import Store
from dlrlens.store.selection import Filters
from dlrlens.store.sql import filtered_messages_sql, time_conditions
from dashboard import _sql
from dashboard.catalog import FUNNEL_COLUMNS
from dashboard.queries._common import KPI_COLUMNS, choose_bucket, counts_as_int, empty_frame, in_zone
from dashboard.queries.kpis import campaigns

FUNNEL_TABLE_COLUMNS = ["messages", "delivered"] + FUNNEL_COLUMNS
BREAKDOWNS = ("country", "os", "browser")
BREAKDOWN_COLUMNS = ["value", "clicks", "clicked", "share"]
TOP_LINK_COLUMNS = ["url", "clicks", "clicked"]
TIME_COLUMNS = ["bucket_start", "clicks", "clicked"]
REPLY_COLUMNS = ["delivery_message_id", "created", "received_at", "originator_masked", "body", "opt_out", "linked_by"]
UNLINKED_COLUMNS = ["clicks", "unlinked_clicks", "replies", "unlinked_replies", "batch_linked_replies"]
_COUNTS = ["messages", "delivered", "clicked", "clicks", "replied", "opted_out"]


# The message columns a linked event carries, so that the sidebar's filters apply to events
# without joining the messages again (dlrlens.store.sql.filtered_messages_sql over the frames).
_MESSAGE_COLUMNS = "delivery_message_id, campaign, sent_at, outcome, last_status, label_sets, delivered_at"
LINKED = ("funnel_clicks", "funnel_replies")  # the table names every funnel query reads them by
# The stored event columns the funnel reads (Parquet reads no other).
_READ_CLICK = "click_id, received_at, message_id, batch_id, client_ref, url, browser, os, country"
_READ_REPLY = "reply_id, created, received_at, in_reply_to, logical_message_id, body, originator_hash, originator_masked"


def _linked(store: Store, keywords: tuple[str, ...]) -> dict[str, pd.DataFrame]:
    """The distinct clicks and replies of the store's snapshot linked to every stored message,
    each with its message's columns (:data:`_MESSAGE_COLUMNS`; a batch-linked reply: its batch's
    first message's), under the :data:`LINKED` names (pass as ``tables`` to :meth:`Store.query`).

    Linked once per data version and kept: clicks and replies are a few percent of receipts, and
    every funnel question is then a filter over these frames, with no other pass over the messages
    but the pre-aggregated counts (messages, delivered)."""
    def compute():
        every = f"(SELECT {_MESSAGE_COLUMNS}, batch_id, client_reference FROM {store.messages_sql()})"
        columns = ", ".join(f"m.{c}" for c in _MESSAGE_COLUMNS.split(", "))
        clicks = store.query(f"""
            WITH m AS MATERIALIZED {every},
            lc AS ({events.linked_clicks_sql(store.clicks_sql(_READ_CLICK), 'm')})
            SELECT lc.click_id, lc.received_at, lc.url, lc.browser, lc.os, lc.country, lc.linked_id, {columns}
            FROM lc LEFT JOIN m ON m.delivery_message_id = lc.linked_id""")
        replies = store.query(f"""
            WITH m AS MATERIALIZED {every},
            firsts AS (SELECT batch_id, arg_min(delivery_message_id, (sent_at, delivery_message_id)) AS first_id
                       FROM m WHERE batch_id IS NOT NULL GROUP BY ALL),
            lr AS ({events.linked_replies_sql(store.replies_sql(_READ_REPLY), 'm', keywords)})
            SELECT lr.reply_id, lr.created, lr.received_at, lr.originator_masked, lr.body, lr.linked_id,
                   lr.linked_batch, lr.linked_by, lr.opt_out,
                   CASE WHEN lr.linked_id IS NOT NULL THEN lr.linked_id
                        ELSE lr.linked_batch || chr(31) || coalesce(lr.originator_hash, lr.reply_id) END AS replier,
                   {columns}
            FROM lr LEFT JOIN firsts b ON b.batch_id = lr.linked_batch
                    LEFT JOIN m ON m.delivery_message_id = coalesce(lr.linked_id, b.first_id)""")
        return {LINKED[0]: clicks, LINKED[1]: replies}
    return store.cached("funnel_linked", (keywords,), compute)


def _filtered_events(store: Store, f: Filters, table: str, params: dict) -> str:
    """SQL of the linked events of ``table`` (a :data:`LINKED` name) whose message matches ``f``."""
    source = f"(SELECT * FROM {table} WHERE delivery_message_id IS NOT NULL)"
    return filtered_messages_sql(f, params, source, store.label_condition(f))


def _funnel_sql(store: Store, f: Filters, by_campaign: bool) -> tuple[str, dict]:
    counts, params = store.filtered_counts_sql(f)
    clicks = _filtered_events(store, f, LINKED[0], params)
    replies = _filtered_events(store, f, LINKED[1], params)
    key = "campaign" if by_campaign else "NULL::VARCHAR"
    delay = "(epoch_us(first_click) - epoch_us(delivered_at)) / 1e6"
    sql = f"""
        WITH counts AS (
            SELECT {key} AS grp, sum(messages)::BIGINT AS messages,
                   coalesce(sum(messages) FILTER (WHERE outcome = 'delivered'), 0)::BIGINT AS delivered
            FROM ({counts}) GROUP BY ALL HAVING sum(messages) > 0),
        per_message AS (
            SELECT {key} AS grp, delivery_message_id, any_value(outcome) AS outcome,
                   any_value(delivered_at) AS delivered_at, count(*) AS clicks, min(received_at) AS first_click
            FROM ({clicks}) GROUP BY ALL),
        by_click AS (
            SELECT grp, count(*) FILTER (WHERE outcome = 'delivered') AS clicked, sum(clicks) AS clicks,
                   quantile_cont({delay}, 0.50) FILTER (WHERE outcome = 'delivered') AS click_delay_p50_s,
                   quantile_cont({delay}, 0.95) FILTER (WHERE outcome = 'delivered') AS click_delay_p95_s
            FROM per_message GROUP BY ALL),
        per_replier AS (SELECT {key} AS grp, replier, bool_or(opt_out) AS opt_out FROM ({replies}) GROUP BY ALL),
        by_reply AS (SELECT grp, count(*) AS replied, count(*) FILTER (WHERE opt_out) AS opted_out
                     FROM per_replier GROUP BY ALL)
        SELECT c.grp, c.messages, c.delivered, coalesce(k.clicked, 0) AS clicked, coalesce(k.clicks, 0) AS clicks,
               coalesce(r.replied, 0) AS replied, coalesce(r.opted_out, 0) AS opted_out,
               k.click_delay_p50_s, k.click_delay_p95_s
        FROM counts c LEFT JOIN by_click k ON k.grp IS NOT DISTINCT FROM c.grp
                      LEFT JOIN by_reply r ON r.grp IS NOT DISTINCT FROM c.grp
    """
    return sql, params


def funnel(store: Store, f: Filters, by_campaign: bool = False,
           keywords: tuple[str, ...] | None = None) -> pd.DataFrame:
    """The funnel figures (:data:`FUNNEL_TABLE_COLUMNS`) of the messages matching ``f``: one row,
    or one row per campaign (``campaign`` first, most messages first). ``keywords``: the opt-out
    keywords (default :func:`dlrlens.store.events.opt_out_keywords`, from the environment)."""
    keywords = keywords or events.opt_out_keywords()

    def compute():
        sql, params = _funnel_sql(store, f, by_campaign)
        df = store.query(sql, params, tables=_linked(store, keywords))
        if df.empty and not by_campaign:
            df = pd.DataFrame([{"grp": None, **dict.fromkeys(_COUNTS, 0)}])
        if df.empty:
            return empty_frame(["campaign"] + FUNNEL_TABLE_COLUMNS)
        df = counts_as_int(df, _COUNTS)
        delivered = df["delivered"].where(df["delivered"] > 0)
        df["click_rate"] = (df["clicked"] / delivered).astype("float64")
        df["opt_out_rate"] = (df["opted_out"] / delivered).astype("float64")
        for column in ("click_delay_p50_s", "click_delay_p95_s"):
            df[column] = df.get(column, pd.Series(dtype="float64")).astype("float64")
        if not by_campaign:
            return df[FUNNEL_TABLE_COLUMNS].reset_index(drop=True)
        df = df.rename(columns={"grp": "campaign"}).sort_values(["messages", "campaign"], ascending=[False, True])
        return df[["campaign"] + FUNNEL_TABLE_COLUMNS].reset_index(drop=True)
    return store.cached("funnel", (f, by_campaign, keywords), compute)


def campaigns_with_funnel(store: Store, f: Filters, *, receipt_figures: bool = False) -> pd.DataFrame:
    """:func:`dashboard.queries.campaigns` (campaign + every KPI column) followed by the
    :data:`~dashboard.catalog.FUNNEL_COLUMNS` of each campaign, same rows, same order."""
    with store.pinned():
        table = campaigns(store, f, receipt_figures=receipt_figures)
        per_campaign = funnel(store, f, by_campaign=True)
    if table.empty:
        return empty_frame(["campaign"] + KPI_COLUMNS + FUNNEL_COLUMNS)
    merged = table.merge(per_campaign[["campaign"] + FUNNEL_COLUMNS], on="campaign", how="left")
    return counts_as_int(merged, ["clicked", "clicks", "replied", "opted_out"])


def _clicks_of(store: Store, f: Filters) -> tuple[str, dict, dict[str, pd.DataFrame]]:
    """SQL of the (linked) clicks of the messages matching ``f``, its parameters and tables."""
    params: dict = {}
    return (_filtered_events(store, f, LINKED[0], params), params,
            _linked(store, events.DEFAULT_OPT_OUT_KEYWORDS))


def unlinked_events(store: Store, f: Filters) -> pd.DataFrame:
    """One row (:data:`UNLINKED_COLUMNS`): clicks and replies that arrived (clicks) or were
    created (replies) within f's date range, and how many of them match no stored message
    (``unlinked_*``) or only a batch (``batch_linked_replies``). Only the date range applies:
    an unlinked event has no campaign, outcome or labels of a message."""
    def compute():
        clicks, replies = LINKED
        params: dict = {}
        click_time = " AND ".join(["TRUE"] + time_conditions(f, params, "received_at"))
        reply_time = " AND ".join(["TRUE"] + time_conditions(f, params, "created"))
        df = store.query(f"""
            SELECT (SELECT count(*) FROM {clicks} WHERE {click_time}) AS clicks,
                   (SELECT count(*) FROM {clicks} WHERE {click_time} AND linked_id IS NULL) AS unlinked_clicks,
                   (SELECT count(*) FROM {replies} WHERE {reply_time}) AS replies,
                   (SELECT count(*) FROM {replies} WHERE {reply_time} AND linked_by IS NULL) AS unlinked_replies,
                   (SELECT count(*) FROM {replies} WHERE {reply_time} AND linked_by = 'batch')
                       AS batch_linked_replies""", params, tables=_linked(store, events.DEFAULT_OPT_OUT_KEYWORDS))
        return counts_as_int(df, UNLINKED_COLUMNS)[UNLINKED_COLUMNS]
    return store.cached("unlinked_events", (f,), compute)


def clicks_over_time(store: Store, f: Filters, bucket: str | None = None) -> tuple[pd.DataFrame, str]:
    """(:data:`TIME_COLUMNS` per local bucket of the click's arrival time, in f.tz; only buckets
    with clicks), and the bucket size (``hour`` up to 3 days of range, else ``day``)."""
    chosen = choose_bucket(store, f, bucket)

    def compute():
        sql, params, tables = _clicks_of(store, f)
        params["tz"] = f.tz
        df = store.query(f"""SELECT {_sql.bucket_sql(chosen, 'received_at')} AS bucket_start, count(*) AS clicks,
                                    count(DISTINCT linked_id) AS clicked
                             FROM ({sql}) GROUP BY ALL ORDER BY bucket_start""", params, tables)
        return in_zone(counts_as_int(df, ["clicks", "clicked"]), ["bucket_start"], f.tz)[TIME_COLUMNS]
    return store.cached("clicks_over_time", (f, chosen), compute), chosen


def click_breakdown(store: Store, f: Filters, by: str) -> pd.DataFrame:
    """:data:`BREAKDOWN_COLUMNS` by ``by`` (country, os or browser; missing values as
    ``(unknown)``), most clicks first; ``share`` of all the clicks."""
    if by not in BREAKDOWNS:
        raise ValueError(f"by must be one of {BREAKDOWNS}, not {by!r}")

    def compute():
        sql, params, tables = _clicks_of(store, f)
        df = store.query(f"""SELECT coalesce(NULLIF(trim({by}), ''), '(unknown)') AS value, count(*) AS clicks,
                                    count(DISTINCT linked_id) AS clicked
                             FROM ({sql}) GROUP BY ALL ORDER BY clicks DESC, value""", params, tables)
        df = counts_as_int(df, ["clicks", "clicked"])
        total = int(df["clicks"].sum()) if len(df) else 0
        df["share"] = (df["clicks"] / total).astype("float64") if total else pd.Series(dtype="float64")
        return df[BREAKDOWN_COLUMNS]
    return store.cached("click_breakdown", (f, by), compute)


def top_links(store: Store, f: Filters, limit: int = 20) -> pd.DataFrame:
    """:data:`TOP_LINK_COLUMNS`: the ``limit`` most clicked URLs (ties: by URL)."""
    def compute():
        sql, params, tables = _clicks_of(store, f)
        params["limit"] = int(limit)
        df = store.query(f"""SELECT coalesce(url, '(none)') AS url, count(*) AS clicks,
                                    count(DISTINCT linked_id) AS clicked
                             FROM ({sql}) GROUP BY ALL ORDER BY clicks DESC, url LIMIT $limit""", params, tables)
        return counts_as_int(df, ["clicks", "clicked"])[TOP_LINK_COLUMNS]
    return store.cached("top_links", (f, limit), compute)


def message_replies(store: Store, message_ids: list[str], tz: str = "UTC",
                    keywords: tuple[str, ...] | None = None) -> pd.DataFrame:
    """:data:`REPLY_COLUMNS`: the distinct replies to the messages ``message_ids`` (linked by
    inReplyTo), by message and created. ``body`` is the reply text: personal data, the page
    masks it unless asked."""
    keywords = keywords or events.opt_out_keywords()
    ids = tuple(sorted(set(message_ids)))
    if not ids:
        return empty_frame(REPLY_COLUMNS)

    def compute():
        df = store.query(f"""SELECT linked_id AS delivery_message_id, created, received_at, originator_masked, body,
                                    opt_out, linked_by
                             FROM {LINKED[1]} WHERE list_contains($ids, linked_id)
                             ORDER BY delivery_message_id, created, reply_id""", {"ids": list(ids)},
                         _linked(store, keywords))
        return in_zone(df, ["created", "received_at"], tz)[REPLY_COLUMNS]
    return store.cached("message_replies", (ids, tz, keywords), compute)
