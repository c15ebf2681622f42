"""SQL builders behind :mod:`dashboard.queries` (private).

Two derived tables carry every KPI definition (see the README / query API):

* ``receipts``: one row per distinct ``receipt_id`` (:func:`distinct_receipts_sql`).
* ``messages``: one row per ``delivery_message_id`` with its campaign, sent time, outcome,
  reason, latency, ... (:func:`messages_sql`). This is the ONLY place where per-message
  facts are derived; every query reads them from here, so swapping this builder (for
  example for an incrementally maintained table at scale) changes nothing else.

Every builder returns SQL text with named ``$parameters``; user values are always bound.
"""

from __future__ import annotations

# The order that decides between receipts of one message: latest created wins,
# ties broken by received_at, then receipt_id (deterministic).
RECEIPT_ORDER = "struct_pack(c := created, r := received_at, i := receipt_id)"

FINAL = "category <> 'pending'"


def seconds_between(earlier: str, later: str) -> str:
    """Exact difference of two TIMESTAMPTZ expressions in (fractional) seconds."""
    return f"((epoch_us({later}) - epoch_us({earlier})) / 1e6)"


def distinct_receipts_sql(source: str) -> str:
    """One row per receipt_id from ``source`` (a table or read_parquet call).

    Of several stored copies the first received one is kept (its received_at is when the
    receipt first reached us, which is what webhook lag measures); ``copies`` counts them.
    Blank campaign labels count as none; missing labels as ``{}``.
    """
    return f"""
        SELECT * EXCLUDE (campaign, labels, copy_rank),
               NULLIF(trim(campaign), '') AS campaign,
               coalesce(labels, '{{}}') AS labels
        FROM (
            SELECT *,
                   count(*) OVER (PARTITION BY receipt_id) AS copies,
                   row_number() OVER (PARTITION BY receipt_id
                                      ORDER BY received_at, campaign NULLS LAST, labels NULLS LAST) AS copy_rank
            FROM {source}
        )
        WHERE copy_rank = 1
    """


def messages_sql(receipts: str = "receipts") -> str:
    """Per-message facts from the distinct receipts (the KPI definitions live here).

    Columns: delivery_message_id, campaign, batch_id, client_reference, sent_at, outcome,
    reason, last_status, latest_status, final_created, delivered_at, latency_s, receipts,
    stored_rows, regressions.
    """
    earliest = "struct_pack(c := created, r := received_at, i := receipt_id)"
    return f"""
        WITH with_final AS (
            SELECT *, max(created) FILTER (WHERE {FINAL})
                          OVER (PARTITION BY delivery_message_id) AS final_created
            FROM {receipts}
        ),
        per_message AS (
            SELECT delivery_message_id,
                   min(created) AS sent_at,
                   arg_min(campaign, {earliest}) FILTER (WHERE campaign IS NOT NULL) AS campaign_label,
                   arg_min(batch_id, {earliest}) FILTER (WHERE batch_id IS NOT NULL) AS batch_id,
                   arg_min(client_reference, {earliest}) FILTER (WHERE client_reference IS NOT NULL)
                       AS client_reference,
                   arg_max(category, {RECEIPT_ORDER}) FILTER (WHERE {FINAL}) AS final_category,
                   arg_max(status, {RECEIPT_ORDER}) FILTER (WHERE {FINAL}) AS final_status,
                   arg_max(status, {RECEIPT_ORDER}) AS latest_status,
                   any_value(final_created) AS final_created,
                   min(created) FILTER (WHERE category = 'delivered') AS first_delivered_at,
                   count(*) AS receipts,
                   sum(copies)::BIGINT AS stored_rows,
                   count(*) FILTER (WHERE category = 'pending' AND created > final_created) AS regressions
            FROM with_final
            GROUP BY delivery_message_id
        )
        SELECT delivery_message_id,
               coalesce(campaign_label, batch_id, '(none)') AS campaign,
               batch_id,
               client_reference,
               sent_at,
               coalesce(final_category, 'pending') AS outcome,
               CASE WHEN final_category = 'failed' THEN final_status END AS reason,
               coalesce(final_status, latest_status) AS last_status,
               latest_status,
               final_created,
               CASE WHEN final_category = 'delivered' THEN first_delivered_at END AS delivered_at,
               CASE WHEN final_category = 'delivered' AND first_delivered_at > sent_at
                    THEN {seconds_between('sent_at', 'first_delivered_at')} END AS latency_s,
               receipts,
               stored_rows,
               regressions
        FROM per_message
    """


def filtered_messages_sql(f, params: dict) -> str:
    """SELECT over ``messages`` restricted by Filters ``f``; adds its bound values to ``params``."""
    conditions = ["TRUE"]
    if f.start is not None:
        params["start"] = f.start
        conditions.append("sent_at >= $start")
    if f.end is not None:
        params["end"] = f.end
        conditions.append("sent_at < $end")
    if f.campaigns:
        params["campaigns"] = list(f.campaigns)
        conditions.append("list_contains($campaigns, campaign)")
    if f.outcomes:
        params["outcomes"] = list(f.outcomes)
        conditions.append("list_contains($outcomes, outcome)")
    if f.statuses:
        params["statuses"] = list(f.statuses)
        conditions.append("list_contains($statuses, last_status)")
    for i, (key, value) in enumerate(f.labels):
        params[f"label_path_{i}"] = json_pointer(key)
        params[f"label_value_{i}"] = value
        conditions.append(
            f"delivery_message_id IN (SELECT delivery_message_id FROM receipts "
            f"WHERE json_extract_string(labels, $label_path_{i}) = $label_value_{i})"
        )
    return "SELECT * FROM messages WHERE " + " AND ".join(conditions)


def json_pointer(key: str) -> str:
    """RFC 6901 pointer to a top-level key (any characters allowed in ``key``)."""
    return "/" + key.replace("~", "~0").replace("/", "~1")


def bucket_sql(bucket: str, column: str = "sent_at") -> str:
    """TIMESTAMPTZ start of the local (``$tz``) hour or day containing ``column``.

    Days: local midnight converted back to an instant. Hours: the instant minus the local
    minutes/seconds, which is exact across DST changes and for half-hour zones.
    """
    local = f"timezone($tz, {column})"
    if bucket == "day":
        return f"timezone($tz, date_trunc('day', {local}))"
    if bucket == "hour":
        return f"({column} - ({local} - date_trunc('hour', {local})))"
    raise ValueError(f"bucket must be 'hour' or 'day', not {bucket!r}")


def outcome_counts_sql() -> str:
    """Aggregates over filtered messages: counts per outcome and the delivery rate."""
    return """
        count(*) AS messages,
        count(*) FILTER (WHERE outcome = 'delivered') AS delivered,
        count(*) FILTER (WHERE outcome = 'failed') AS failed,
        count(*) FILTER (WHERE outcome = 'unknown') AS unknown,
        count(*) FILTER (WHERE outcome = 'pending') AS pending,
        count(*) FILTER (WHERE outcome = 'delivered')
            / NULLIF(count(*) FILTER (WHERE outcome <> 'pending'), 0) AS delivery_rate
    """


def latency_stats_sql(prefix: str = "latency_", suffix: str = "_s") -> str:
    """Percentiles and within-threshold shares of latency_s over filtered messages."""
    n = "count(latency_s)"
    return f"""
        quantile_cont(latency_s, 0.50) AS {prefix}p50{suffix},
        quantile_cont(latency_s, 0.90) AS {prefix}p90{suffix},
        quantile_cont(latency_s, 0.95) AS {prefix}p95{suffix},
        quantile_cont(latency_s, 0.99) AS {prefix}p99{suffix},
        {n} AS latency_messages,
        count(*) FILTER (WHERE latency_s <= 10) / NULLIF({n}, 0) AS within_10s,
        count(*) FILTER (WHERE latency_s <= 60) / NULLIF({n}, 0) AS within_1m,
        count(*) FILTER (WHERE latency_s <= 300) / NULLIF({n}, 0) AS within_5m,
        count(*) FILTER (WHERE latency_s <= 3600) / NULLIF({n}, 0) AS within_1h
    """


def kpi_sql(filtered: str, group: str | None) -> str:
    """Every KPI over ``filtered`` messages, overall (``group`` None: exactly one row) or per
    ``group``, an expression over the message columns qualified with ``fm.`` (exposed as ``grp``)."""
    key = f"{group} AS grp, " if group else ""
    group_by = "GROUP BY ALL" if group else ""
    join_on = "USING (grp)" if group else "ON TRUE"
    lag = seconds_between("r.created", "r.received_at")
    return f"""
        WITH fm AS ({filtered}),
        per_message AS (
            SELECT {key}
                   {outcome_counts_sql()},
                   count(*) FILTER (WHERE outcome = 'delivered') / NULLIF(count(*), 0) AS delivered_of_all,
                   {latency_stats_sql()},
                   count(*) FILTER (WHERE outcome = 'delivered' AND latency_s IS NULL) AS delivered_without_earlier,
                   coalesce(sum(receipts), 0)::BIGINT AS receipts,
                   coalesce(sum(stored_rows) - sum(receipts), 0)::BIGINT AS duplicate_rows,
                   coalesce(sum(regressions), 0)::BIGINT AS regressions
            FROM fm {group_by}
        ),
        per_receipt AS (
            SELECT {key}
                   quantile_cont({lag}, 0.50) AS webhook_lag_p50_s,
                   quantile_cont({lag}, 0.95) AS webhook_lag_p95_s
            FROM receipts r JOIN fm ON r.delivery_message_id = fm.delivery_message_id
            {group_by}
        )
        SELECT * FROM per_message LEFT JOIN per_receipt {join_on}
    """
