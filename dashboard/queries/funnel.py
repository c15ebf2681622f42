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

from dlrlens.store import derive
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


def _linked(store: Store, table: str) -> str:
    """Every distinct click or reply (``table``) with its message's columns, unlinked ones
    included (:meth:`dlrlens.store.reader.Store.linked_clicks_sql` / ``linked_replies_sql``:
    the derived state keeps them joined, so no question links them again)."""
    return store.linked_clicks_sql() if table == "clicks" else store.linked_replies_sql()


def _filtered_events(store: Store, f: Filters, table: str, params: dict) -> str:
    """SQL of the linked events of ``table`` (clicks, replies) whose message matches ``f``."""
    # Linked (so with its message's columns). Not "sent_at IS NOT NULL": that reads a timestamp
    # per click, where the stored events' constant linked_by costs nothing (0.22 -> 0.10 s of a
    # scan of 5 M clicks).
    source = f"(SELECT * FROM {_linked(store, table)} WHERE linked_by IS NOT NULL)"
    return filtered_messages_sql(f, params, source, store.label_condition(f))


def _funnel_sql(store: Store, f: Filters) -> tuple[str, dict]:
    """:func:`funnel_sql` of the messages matching ``f`` and its parameters."""
    counts, params = store.filtered_counts_sql(f)
    clicks = _filtered_events(store, f, "clicks", params)
    replies = _filtered_events(store, f, "replies", params)
    return funnel_sql(counts, clicks, replies), params


def funnel_sql(counts: str, clicks: str, replies: str) -> str:
    """The funnel figures in total (``total`` true, ``grp`` NULL) and per campaign (``grp``): the
    messages of the counts relation ``counts`` (:meth:`Store.counts_sql` rows), their linked
    ``clicks`` and ``replies`` (:meth:`Store.linked_clicks_sql` / ``linked_replies_sql`` rows of
    those messages), in one pass over the clicks and replies (GROUPING SETS); columns total,
    grp, :data:`FUNNEL_TABLE_COLUMNS`."""
    levels = "GROUP BY GROUPING SETS ((), (campaign))"
    first = "first_click AND outcome = 'delivered'"
    return f"""
        WITH counts AS (
            SELECT grouping(campaign) = 1 AS total, campaign AS grp, sum(messages)::BIGINT AS messages,
                   coalesce(sum(messages) FILTER (WHERE outcome = 'delivered'), 0)::BIGINT AS delivered
            FROM ({counts}) {levels} HAVING sum(messages) > 0),
        by_click AS (
            SELECT grouping(campaign) = 1 AS total, campaign AS grp, count(*) FILTER (WHERE {first}) AS clicked,
                   count(*) AS clicks,
                   -- both quantiles in one pass over the values
                   -- (on the stored microseconds: a division per value first cost 0.1 s at 5 M clicks)
                   quantile_cont(first_click_delay_us, [0.50, 0.95]) AS click_delays
            FROM ({clicks}) {levels}),
        per_replier AS (SELECT campaign, replier, bool_or(opt_out) AS opt_out FROM ({replies}) GROUP BY ALL),
        by_reply AS (SELECT grouping(campaign) = 1 AS total, campaign AS grp, count(*) AS replied,
                            count(*) FILTER (WHERE opt_out) AS opted_out
                     FROM per_replier {levels})
        SELECT c.total, c.grp, c.messages, c.delivered, coalesce(k.clicked, 0) AS clicked,
               coalesce(k.clicks, 0) AS clicks, coalesce(r.replied, 0) AS replied,
               coalesce(r.opted_out, 0) AS opted_out,
               coalesce(k.clicked, 0) / CASE WHEN c.delivered > 0 THEN c.delivered END AS click_rate,
               coalesce(r.opted_out, 0) / CASE WHEN c.delivered > 0 THEN c.delivered END AS opt_out_rate,
               k.click_delays[1] / 1e6 AS click_delay_p50_s, k.click_delays[2] / 1e6 AS click_delay_p95_s
        FROM counts c LEFT JOIN by_click k ON k.total = c.total AND k.grp IS NOT DISTINCT FROM c.grp
                      LEFT JOIN by_reply r ON r.total = c.total AND r.grp IS NOT DISTINCT FROM c.grp
    """


def funnel(store: Store, f: Filters, by_campaign: bool = False) -> pd.DataFrame:
    """The funnel figures (:data:`FUNNEL_TABLE_COLUMNS`) of the messages matching ``f``: one row,
    or one row per campaign (``campaign`` first, most messages first). Opt-outs by the keywords
    the store's replies were matched with (:meth:`dlrlens.store.reader.Store.opt_out_keywords`).
    Both are computed (and cached) together: the page shows both."""
    def compute():
        sql, params = _funnel_sql(store, f)
        df = store.query(sql, params)
        df = counts_as_int(df, _COUNTS)
        for column in ("click_rate", "opt_out_rate", "click_delay_p50_s", "click_delay_p95_s"):
            df[column] = df[column].astype("float64")
        return df

    df = store.cached("funnel", (f,), compute)
    if not by_campaign:
        total = df[df["total"]]
        if total.empty:
            total = pd.DataFrame([dict.fromkeys(_COUNTS, 0)]).astype("int64").assign(
                click_rate=float("nan"), opt_out_rate=float("nan"), click_delay_p50_s=float("nan"),
                click_delay_p95_s=float("nan"))
        return total[FUNNEL_TABLE_COLUMNS].reset_index(drop=True)
    df = df[~df["total"]]
    if df.empty:
        return empty_frame(["campaign"] + FUNNEL_TABLE_COLUMNS)
    df = df.rename(columns={"grp": "campaign"}).sort_values(["messages", "campaign"], ascending=[False, True])
    return df[["campaign"] + FUNNEL_TABLE_COLUMNS].reset_index(drop=True)


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


def _clicks_of(store: Store, f: Filters) -> tuple[str, dict]:
    """SQL of the (linked) clicks of the messages matching ``f`` and its parameters."""
    params: dict = {}
    return _filtered_events(store, f, "clicks", params), params


def unlinked_events(store: Store, f: Filters) -> pd.DataFrame:
    """One row (:data:`UNLINKED_COLUMNS`): clicks and replies that arrived (clicks) or were
    created (replies) within f's date range, and how many of them match no stored message
    (``unlinked_*``) or only a batch (``batch_linked_replies``). Only the date range applies:
    an unlinked event has no campaign, outcome or labels of a message."""
    def compute():
        clicks, replies = _linked(store, "clicks"), _linked(store, "replies")
        params: dict = {}
        click_time = " AND ".join(["TRUE"] + time_conditions(f, params, "received_at"))
        reply_time = " AND ".join(["TRUE"] + time_conditions(f, params, "created"))
        df = store.query(f"""
            SELECT (SELECT count(*) FROM {clicks} WHERE {click_time}) AS clicks,
                   (SELECT count(*) FROM {clicks} WHERE {click_time} AND linked_by IS NULL) AS unlinked_clicks,
                   (SELECT count(*) FROM {replies} WHERE {reply_time}) AS replies,
                   (SELECT count(*) FROM {replies} WHERE {reply_time} AND linked_by IS NULL) AS unlinked_replies,
                   (SELECT count(*) FROM {replies} WHERE {reply_time} AND linked_by = 'batch')
                       AS batch_linked_replies""", params)
        return counts_as_int(df, UNLINKED_COLUMNS)[UNLINKED_COLUMNS]
    return store.cached("unlinked_events", (f,), compute)


def clicks_over_time(store: Store, f: Filters, bucket: str | None = None) -> tuple[pd.DataFrame, str]:
    """(:data:`TIME_COLUMNS` per local bucket of the click's arrival time, in f.tz; only buckets
    with clicks), and the bucket size (``hour`` up to 3 days of range, else ``day``).
    ``clicked``: messages whose first click came in the bucket (so the buckets add up to the
    clicked messages)."""
    chosen = choose_bucket(store, f, bucket)

    def compute():
        sql, params = _clicks_of(store, f)
        params["tz"] = f.tz
        # Per 15-minute slot first (every zone's hours and days are unions of them): the zone's
        # buckets are then computed for a few thousand slots, not for every click.
        df = store.query(f"""SELECT {_sql.bucket_sql(chosen, 'slot')} AS bucket_start, sum(clicks)::BIGINT AS clicks,
                                    sum(clicked)::BIGINT AS clicked
                             FROM (SELECT to_timestamp(click_slot * {derive.SLOT_MICROS // 1_000_000}) AS slot,
                                          clicks, clicked
                                   FROM (SELECT click_slot, count(*) AS clicks,
                                                count(*) FILTER (WHERE first_click) AS clicked
                                         FROM ({sql}) GROUP BY ALL))
                             GROUP BY ALL ORDER BY bucket_start""", params)
        return in_zone(counts_as_int(df, ["clicks", "clicked"]), ["bucket_start"], f.tz)[TIME_COLUMNS]
    return store.cached("clicks_over_time", (f, chosen), compute), chosen


def click_breakdown(store: Store, f: Filters, by: str) -> pd.DataFrame:
    """:data:`BREAKDOWN_COLUMNS` by ``by`` (country, os or browser; missing values as
    ``(unknown)``), most clicks first; ``share`` of all the clicks."""
    if by not in BREAKDOWNS:
        raise ValueError(f"by must be one of {BREAKDOWNS}, not {by!r}")

    def compute():
        sql, params = _clicks_of(store, f)
        df = store.query(f"""SELECT {derive.CLICK_DIMENSIONS[by]} AS value, count(*) AS clicks,
                                    count(*) FILTER (WHERE first_{by}) AS clicked
                             FROM ({sql}) GROUP BY ALL ORDER BY clicks DESC, value""", params)
        df = counts_as_int(df, ["clicks", "clicked"])
        total = int(df["clicks"].sum()) if len(df) else 0
        df["share"] = (df["clicks"] / total).astype("float64") if total else pd.Series(dtype="float64")
        return df[BREAKDOWN_COLUMNS]
    return store.cached("click_breakdown", (f, by), compute)


def top_links(store: Store, f: Filters, limit: int = 20) -> pd.DataFrame:
    """:data:`TOP_LINK_COLUMNS`: the ``limit`` most clicked URLs (ties: by URL)."""
    def compute():
        sql, params = _clicks_of(store, f)
        params["limit"] = int(limit)
        df = store.query(f"""SELECT {derive.CLICK_DIMENSIONS['url']} AS url, count(*) AS clicks,
                                    count(*) FILTER (WHERE first_url) AS clicked
                             FROM ({sql}) GROUP BY ALL ORDER BY clicks DESC, url LIMIT $limit""", params)
        return counts_as_int(df, ["clicks", "clicked"])[TOP_LINK_COLUMNS]
    return store.cached("top_links", (f, limit), compute)


def message_replies(store: Store, message_ids: list[str], tz: str = "UTC") -> pd.DataFrame:
    """:data:`REPLY_COLUMNS`: the distinct replies to the messages ``message_ids`` (linked by
    inReplyTo, or a batch-only reply of a number that replied to one of them), by message and
    created. ``body`` is the reply text: personal data, the page masks it unless asked."""
    ids = tuple(sorted(set(message_ids)))
    if not ids:
        return empty_frame(REPLY_COLUMNS)

    def compute():
        texts = store.replies_sql("reply_id, received_at, created, originator_masked, body")
        df = store.query(f"""
            WITH linked AS (SELECT * FROM {_linked(store, "replies")} WHERE list_contains($ids, linked_id))
            SELECT l.linked_id AS delivery_message_id, l.created, l.received_at, t.originator_masked, t.body,
                   l.opt_out, l.linked_by
            FROM linked l LEFT JOIN (SELECT * FROM {texts} WHERE reply_id IN (SELECT reply_id FROM linked)) t
                 ON t.reply_id = l.reply_id
            ORDER BY delivery_message_id, l.created, l.reply_id""", {"ids": list(ids)})
        return in_zone(df, ["created", "received_at"], tz)[REPLY_COLUMNS]
    return store.cached("message_replies", (ids, tz), compute)
