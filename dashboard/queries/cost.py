"""Cost, receipts missing and time from submission: the questions over Mobivate's send records
joined to the receipts. The derived state keeps each message's send record
(:mod:`dlrlens.store.derive`), so no question joins: the cost figures add up the per-file
pre-aggregates (:meth:`dlrlens.store.reader.Store.cost_counts_sql`) and the messages the log
knows without a receipt (:meth:`~dlrlens.store.reader.Store.log_only_sql`); the percentiles
of the time from submission are exact, from per-file partials
(:meth:`~dlrlens.store.reader.Store.latency_quantiles` with ``SUBMISSION``).

Definitions (the wording users see: ``dashboard.catalog.COST_KPIS``):

* A message's sent time is its earliest receipt, else its log ``created`` (a message whose
  receipts never arrived was billed, so it is counted in the period it was sent).
* ``cost``: sum of the log's cost; ``currency``: the log's. Grouped by (campaign, currency):
  two currencies are never added. ``cost_per_delivered`` = cost / delivered messages of that
  currency; ``failed_cost``: cost of the messages whose outcome is failed or unknown.
* ``messages_without_cost``: messages with receipts and no log record (per campaign, on each
  of its currency rows; a campaign without any priced message has one row, currency empty).
* ``receipts_missing``: MT log records with no receipt at all, created more than the grace
  (``DLRLENS_RECEIPTS_MISSING_AFTER``, default 24 h) before ``now``. Never part of the
  receipt-based KPIs.
* ``latency_from_submission_p50_s`` / ``_p95_s``: median / 95th percentile of first DELIVERED receipt minus log created,
  over delivered messages with a log record (when positive).

Every function returns the documented columns, empty without data.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pandas as pd

from dlrlens.store import sends
from dlrlens.store.reader import QUANTILES, SUBMISSION, Store
from dlrlens.store.selection import Filters
from dashboard.catalog import COST_COLUMNS
from dashboard.queries._common import counts_as_int, empty_frame, in_zone
from dashboard.queries.geography import UNKNOWN, log_only_cube, receipts_cube, send_record_conditions

DEFAULT_MISSING_AFTER = timedelta(hours=24)
MISSING_LIST_LIMIT = 1000
SUBMISSION_COLUMNS = ["latency_from_submission_p50_s", "latency_from_submission_p95_s"]
COST_TABLE_COLUMNS = ["campaign", "messages", "delivered", *COST_COLUMNS, *SUBMISSION_COLUMNS]
MISSING_COLUMNS = ["campaign", "delivery_message_id", "log_created", "log_status", "originator", "country",
                   "network", "recipient_masked", "cost", "currency"]


def missing_after_setting() -> timedelta:
    """``DLRLENS_RECEIPTS_MISSING_AFTER`` (default 24 h; a bad value falls back to it)."""
    from dlrlens.mobivate import MobivateSettings

    try:
        return timedelta(seconds=MobivateSettings.from_env().receipts_missing_after)
    except ValueError:
        return DEFAULT_MISSING_AFTER


def _missing_before(now: datetime | None, missing_after: timedelta | None) -> datetime:
    now = now or datetime.now(timezone.utc)
    return now - (missing_after_setting() if missing_after is None else missing_after)


# Every percentile the store computes, named; the pages show SUBMISSION_COLUMNS of them.
SUBMISSION_QUANTILE_COLUMNS = [f"latency_from_submission_{name}_s" for name, _ in QUANTILES]
_NO_CURRENCY = "\x1e"  # stands for a NULL currency in a percentile group key
_KEY_SEPARATOR = "\x1f"


def submission_key_sql(group: str, currency: str) -> str:
    """The key the times from submission are grouped by: the text ``group`` and ``currency``
    (SQL expressions) in one text (:func:`_submission_quantiles`)."""
    return f"{group} || '{_KEY_SEPARATOR}' || coalesce({currency}, '{_NO_CURRENCY}')"


def _submission_quantiles(store: Store, f: Filters, group: str) -> pd.DataFrame:
    """Columns key (``group`` value and currency joined by :data:`_KEY_SEPARATOR`),
    :data:`SUBMISSION_COLUMNS` and ``latency_from_submission_messages``: the p50 / p95 of the
    time from submission (Mobivate's log created time to the first DELIVERED receipt) over
    the delivered messages with a log record created before it, per ``group`` (an SQL text
    expression) and currency; exact (:meth:`Store.latency_quantiles`)."""
    key = submission_key_sql(group, "currency")
    df = store.latency_quantiles(f, key, SUBMISSION_QUANTILE_COLUMNS, kind=SUBMISSION, count="latency_from_submission_messages")
    return df.rename(columns={"grp": "key"})[["key", *SUBMISSION_COLUMNS, "latency_from_submission_messages"]]


def submission_latency(store: Store, f: Filters) -> pd.DataFrame:
    """One row: ``latency_from_submission_messages`` (delivered messages with a log record
    created before their first DELIVERED receipt) and the p50 / p95 of their time from
    submission (:data:`SUBMISSION_COLUMNS`), whatever the currency: the Latency page shows
    them beside the time to deliver, which starts at the first receipt."""
    def compute():
        df = store.latency_quantiles(f, None, SUBMISSION_QUANTILE_COLUMNS, kind=SUBMISSION,
                                     count="latency_from_submission_messages")
        if df.empty:  # one row whatever: no percentiles, no messages
            return pd.DataFrame([{name: math.nan for name in SUBMISSION_COLUMNS} | {"latency_from_submission_messages": 0}])
        return df[[*SUBMISSION_COLUMNS, "latency_from_submission_messages"]].reset_index(drop=True)
    df = store.cached("submission_latency", (f,), compute)
    df["latency_from_submission_messages"] = df["latency_from_submission_messages"].astype("int64")
    return df


# Summed costs are rounded to a millionth of the currency: a sum of floating-point costs depends
# on the order it adds them in, which follows the files' layout (the local store's and an Iceberg
# store's cache of the same records differed in the 16th digit: 1.9400000000000002 against
# 1.94). Mobivate prices to 4-5 decimals, so the rounding loses nothing and the same records give
# the same figure on every store.
COST_DECIMALS = 6


def cost_sql(receipts: str, log_only: str, group: str) -> str:
    """Cost figures per (``grp``: the expression ``group``, currency) over the cubes
    ``receipts`` and ``log_only`` (:func:`dashboard.queries.geography.receipts_cube`,
    :func:`~dashboard.queries.geography.log_only_cube`): :data:`COST_TABLE_COLUMNS` but campaign
    and the times from submission. A sum of costs over messages none of which has one is
    empty, as SQL's sum is."""
    failed = "outcome IN ('failed', 'unknown')"
    return f"""
        WITH j AS (SELECT {group} AS grp, *, TRUE AS has_receipt, FALSE AS missing FROM {receipts}
                   UNION ALL BY NAME
                   SELECT {group} AS grp, *, FALSE AS has_receipt FROM {log_only}),
        per_currency AS (
            SELECT grp, currency,
                   coalesce(sum(messages) FILTER (WHERE has_receipt), 0) AS messages,
                   coalesce(sum(messages) FILTER (WHERE outcome = 'delivered'), 0) AS delivered,
                   CASE WHEN sum(priced) > 0 THEN round(sum(cost), {COST_DECIMALS}) END AS cost,
                   CASE WHEN sum(priced) FILTER (WHERE {failed}) > 0
                        THEN round(sum(cost) FILTER (WHERE {failed}), {COST_DECIMALS}) END AS failed_cost,
                   coalesce(sum(messages) FILTER (WHERE NOT has_receipt AND missing), 0) AS receipts_missing
            FROM j GROUP BY ALL),
        per_group AS (
            SELECT grp, coalesce(sum(messages) FILTER (WHERE has_receipt AND NOT in_log), 0) AS messages_without_cost,
                   count(DISTINCT currency) AS currencies
            FROM j GROUP BY ALL)
        SELECT p.*, p.cost / CASE WHEN p.delivered > 0 THEN p.delivered END AS cost_per_delivered,
               g.messages_without_cost
        FROM per_currency p JOIN per_group g USING (grp)
        -- the rows without a currency (messages without a log record) join the campaign's
        -- currency rows, unless it has none
        WHERE p.currency IS NOT NULL OR g.currencies = 0
    """


def cost_by(store: Store, f: Filters, group: str | None, now: datetime | None = None,
            missing_after: timedelta | None = None) -> pd.DataFrame:
    """Cost figures per ``group`` (a column of the messages: campaign, or of their send record: country, network,
    originator, route_id; None: column ``total``, one value) and currency, sorted by group
    then currency: the group column, then :data:`COST_TABLE_COLUMNS` but campaign (the time
    from submission only per campaign and in total: the pages show it there, beside the time
    to deliver). ``messages``/``delivered``: messages with receipts billed in that currency
    (of a group without any priced message: all of its messages, currency empty)."""
    if group not in (None, "campaign", "country", "network", "originator", "route_id"):
        raise ValueError(f"cannot group cost by {group!r}")
    column = group or "total"
    before = _missing_before(now, missing_after)
    with_submission = group in (None, "campaign")
    columns = [column] + [c for c in COST_TABLE_COLUMNS if c != "campaign"
                          and (with_submission or c not in SUBMISSION_COLUMNS)]

    # a message without the value (no send record, a number that did not parse) is (unknown)
    expression = {None: "'all'", "campaign": "campaign"}.get(group, f"coalesce({group}, '{UNKNOWN}')")

    def compute():
        with store.pinned():
            figures = store.query(cost_sql(receipts_cube(store, f), log_only_cube(store, f, before), expression))
            if not with_submission:
                return figures.rename(columns={"grp": column})
            quantiles = _submission_quantiles(store, f, expression)
        figures["key"] = figures["grp"] + _KEY_SEPARATOR + figures["currency"].fillna(_NO_CURRENCY)
        return figures.merge(quantiles.drop(columns="latency_from_submission_messages"), on="key", how="left") \
            .drop(columns="key").rename(columns={"grp": column})

    df = store.cached("cost_by", (f, group, before.replace(second=0, microsecond=0)), compute)
    if df.empty:
        return empty_frame(columns)
    df = counts_as_int(df, ["messages", "delivered", "messages_without_cost", "receipts_missing"])
    for name in ("cost", "failed_cost", "cost_per_delivered", *(SUBMISSION_COLUMNS if with_submission else ())):
        df[name] = df[name].astype("float64")
    return df.sort_values([column, "currency"], na_position="last").reset_index(drop=True)[columns]


def total_cost(store: Store, f: Filters, **kw) -> pd.DataFrame:
    """:func:`cost_by` over every message: one row per currency (column ``total`` dropped)."""
    return cost_by(store, f, None, **kw).drop(columns=["total"])


def receipts_missing(store: Store, f: Filters, now: datetime | None = None,
                     missing_after: timedelta | None = None, limit: int = MISSING_LIST_LIMIT) -> pd.DataFrame:
    """The MT messages of Mobivate's log without any receipt past the grace, newest first
    (:data:`MISSING_COLUMNS`, at most ``limit``; the recipient masked), with their log status."""
    before = _missing_before(now, missing_after)

    def compute():
        params: dict = {"missing_before": before}
        with store.pinned():
            log_only = store.log_only_sql(f, params)
            return store.query(f"SELECT {', '.join(MISSING_COLUMNS)} FROM {log_only} "
                               f"WHERE log_created < $missing_before AND {send_record_conditions(store, f, params)} "
                               f"ORDER BY log_created DESC, delivery_message_id LIMIT {int(limit)}", params)

    df = store.cached("receipts_missing", (f, before.replace(second=0, microsecond=0), limit), compute)
    if df.empty:
        return empty_frame(MISSING_COLUMNS)
    return in_zone(df, ["log_created"], f.tz)


def sync_state(store: Store) -> dict | None:
    """The last sync of Mobivate's send records (``data/sync.json``), or None before any."""
    return sends.sync_status(store.data_dir)


# The counts of the campaign table with cost: 0, not empty, on a row of a campaign only in the log.
CAMPAIGN_COUNT_COLUMNS = ("messages", "delivered", "failed", "unknown", "pending", "regressions", "latency_messages",
                          "delivered_without_earlier", "messages_without_cost", "receipts_missing")


def campaigns_with_cost(per_campaign: pd.DataFrame, cost: pd.DataFrame) -> pd.DataFrame:
    """The campaign table (:func:`dashboard.queries.campaigns`) with the cost columns
    (:data:`dashboard.catalog.COST_COLUMNS`, then :data:`SUBMISSION_COLUMNS`) of
    :func:`cost_by` ``campaign``: one row per campaign and currency (the receipt KPIs repeated
    on each). A campaign only in Mobivate's log (no receipt at all) gets a row with zero
    counts; one with receipts and no log record keeps one row, currency empty, its messages
    in ``messages_without_cost``."""
    extra = SUBMISSION_COLUMNS
    cost = cost[["campaign", *COST_COLUMNS, *extra]]
    merged = per_campaign.merge(cost, on="campaign", how="outer", sort=False)
    no_record = merged["currency"].isna() & merged["messages_without_cost"].isna()
    if "messages" in merged:
        merged.loc[no_record, "messages_without_cost"] = merged.loc[no_record, "messages"]
    merged = counts_as_int(merged, [c for c in CAMPAIGN_COUNT_COLUMNS if c in merged])
    order = {name: i for i, name in enumerate(per_campaign["campaign"])}
    merged["_order"] = merged["campaign"].map(order).fillna(len(order))
    return merged.sort_values(["_order", "campaign", "currency"], na_position="last").drop(columns="_order") \
        .reset_index(drop=True)


def where_table(store: Store, f: Filters, dimension: str, **kw) -> pd.DataFrame:
    """Delivery figures (:func:`dashboard.queries.geography.delivery_by`) and cost
    (:func:`cost_by`: currency, cost, cost_per_delivered, failed_cost) per value of
    ``dimension``: one row per value and currency."""
    from dashboard.queries.geography import delivery_by

    delivery = delivery_by(store, f, dimension)
    cost = cost_by(store, f, dimension, **kw)[[dimension, "currency", "cost", "cost_per_delivered", "failed_cost",
                                               "receipts_missing"]]
    merged = delivery.merge(cost, on=dimension, how="left")
    return counts_as_int(merged, ["messages", "delivered", "failed", "unknown", "pending", "receipts_missing"])
