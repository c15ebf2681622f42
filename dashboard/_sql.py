"""SQL builders behind :mod:`dashboard.queries` (private).

Two relations carry every KPI definition (see the README / query API):

* ``messages``: one row per ``delivery_message_id`` with its campaign, sent time, outcome,
  reason, latency, ... Normally the derived per-message state maintained by the collector
  (``dlrlens/store/derive.py``), merged with the receipts not absorbed yet. :func:`messages_sql`
  is the same definition written straightforwardly over the raw receipt rows: the baseline
  the tests and the benchmark compare the fast path with.
* ``receipts``: one row per distinct ``receipt_id`` (:func:`distinct_receipts_sql`), for the
  per-receipt figures (receipts, duplicate rows, webhook lag), which are not per message.

Every per-message definition is duplicate-insensitive: it is a min / max / union over the
message's stored rows, so a receipt stored twice (or absorbed twice) changes nothing. Where
rows tie, the order is (created, received_at, then the value or status name).

Every builder returns SQL text with named ``$parameters``; user values are always bound.
"""

from __future__ import annotations

FINAL = "category <> 'pending'"
LATENCY_THRESHOLDS = (("within_10s", 10), ("within_1m", 60), ("within_5m", 300), ("within_1h", 3600))
QUANTILES = (("p50", 0.50), ("p90", 0.90), ("p95", 0.95), ("p99", 0.99))


def seconds_between(earlier: str, later: str) -> str:
    """Exact difference of two TIMESTAMPTZ expressions in (fractional) seconds."""
    return f"((epoch_us({later}) - epoch_us({earlier})) / 1e6)"


def raw_rows_sql(source: str) -> str:
    """Stored receipt rows of ``source`` with blank campaign labels as none and missing labels as ``{}``."""
    return f"""
        SELECT * EXCLUDE (campaign, labels), NULLIF(trim(campaign), '') AS campaign,
               coalesce(labels, '{{}}') AS labels
        FROM {source}
    """


def distinct_receipts_sql(source: str) -> str:
    """One row per receipt_id from ``source`` (a table or read_parquet call).

    Of several stored copies the first received one is kept (its received_at is when the
    receipt first reached us, which is what webhook lag measures); ``copies`` counts them.
    """
    return f"""
        SELECT * EXCLUDE (copy_rank)
        FROM (
            SELECT *,
                   count(*) OVER (PARTITION BY receipt_id) AS copies,
                   row_number() OVER (PARTITION BY receipt_id
                                      ORDER BY received_at, campaign NULLS LAST, labels NULLS LAST) AS copy_rank
            FROM ({raw_rows_sql(source)})
        )
        WHERE copy_rank = 1
    """


def messages_sql(rows: str) -> str:
    """The straightforward per-message definition over stored receipt rows ``rows`` (a
    relation with the contract's columns, e.g. ``read_parquet(...)``): GROUP BY message.

    Columns: delivery_message_id, campaign, batch_id, client_reference, sent_at, outcome,
    reason, last_status, final_created, delivered_at, latency_us, latency_s, regressions
    (1 when the message's latest pending row is created after its deciding final row),
    label_sets (JSON list of its distinct labels texts), receipts (distinct), stored_rows.
    """
    def first(column: str) -> str:
        key = f"{{'c': created, 'r': received_at, 'v': {column}}}"
        return f"arg_min({column}, {key}) FILTER (WHERE {column} IS NOT NULL)"

    final_key = "{'c': created, 'r': received_at, 's': status, 'k': category}"
    latest_key = "{'c': created, 'r': received_at, 's': status}"
    return f"""
        WITH per_message AS (
            SELECT delivery_message_id,
                   min(created) AS sent_at,
                   {first('campaign')} AS campaign_label,
                   {first('batch_id')} AS batch_id,
                   {first('client_reference')} AS client_reference,
                   arg_max(category, {final_key}) FILTER (WHERE {FINAL}) AS final_category,
                   arg_max(status, {final_key}) FILTER (WHERE {FINAL}) AS final_status,
                   max(created) FILTER (WHERE {FINAL}) AS final_created,
                   arg_max(status, {latest_key}) AS latest_status,
                   min(created) FILTER (WHERE category = 'delivered') AS first_delivered_at,
                   max(created) FILTER (WHERE category = 'pending') AS last_pending_created,
                   to_json(list_sort(list_distinct(list(labels))))::VARCHAR AS label_sets,
                   count(DISTINCT receipt_id) AS receipts,
                   count(*) AS stored_rows
            FROM ({raw_rows_sql(rows)})
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
               final_created,
               CASE WHEN final_category = 'delivered' THEN first_delivered_at END AS delivered_at,
               CASE WHEN final_category = 'delivered' AND first_delivered_at > sent_at
                    THEN epoch_us(first_delivered_at) - epoch_us(sent_at) END AS latency_us,
               CASE WHEN final_category = 'delivered' AND first_delivered_at > sent_at
                    THEN {seconds_between('sent_at', 'first_delivered_at')} END AS latency_s,
               coalesce(last_pending_created > final_created, false)::INTEGER AS regressions,
               label_sets,
               receipts,
               stored_rows
        FROM per_message
    """


def raw_label_condition(rows: str):
    """Label filter of the baseline: some stored row of the message carries the label."""
    def condition(i: int, key: str, value: str, params: dict) -> str:
        params[f"label_path_{i}"] = json_pointer(key)
        params[f"label_value_{i}"] = value
        return (f"delivery_message_id IN (SELECT delivery_message_id FROM ({raw_rows_sql(rows)}) "
                f"WHERE json_extract_string(labels, $label_path_{i}) = $label_value_{i})")
    return condition


def time_conditions(f, params: dict, column: str = "sent_at") -> list[str]:
    """Filters ``f``'s [start, end) on ``column``; adds the bound values to ``params``."""
    conditions = []
    if f.start is not None:
        params["start"] = f.start
        conditions.append(f"{column} >= $start")
    if f.end is not None:
        params["end"] = f.end
        conditions.append(f"{column} < $end")
    return conditions


def dimension_conditions(f, params: dict, label_condition=None) -> list[str]:
    """Filters ``f``'s campaigns, outcomes, statuses (``last_status``) and labels, as SQL
    conditions on a relation with those columns; adds the bound values to ``params``.

    ``label_condition(i, key, value, params)`` gives the SQL condition for label pair ``i``
    (binding what it needs in ``params``).
    """
    conditions = ["TRUE"]
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
        conditions.append(label_condition(i, key, value, params))
    return conditions


def filtered_messages_sql(f, params: dict, source: str = "messages", label_condition=None) -> str:
    """SELECT over the messages ``source`` restricted by Filters ``f`` (see
    :func:`dimension_conditions`); adds its bound values to ``params``."""
    conditions = time_conditions(f, params) + dimension_conditions(f, params, label_condition)
    return f"SELECT * FROM {source} WHERE " + " AND ".join(conditions)


def counts_select(group: str | None = None) -> str:
    """The SELECT list of every per-message count and share, aggregating a *counts relation*
    (rows as ``dlrlens.store.derive.rollup_sql`` makes them: signed partial counts), optionally
    with ``group`` (an expression, exposed as ``grp``) first."""
    def total(column: str, where: str | None = None) -> str:
        filtered = f" FILTER (WHERE {where})" if where else ""
        return f"coalesce(sum({column}){filtered}, 0)::BIGINT"

    shares = ",\n".join(f"{total(name)} / NULLIF({total('latency_messages')}, 0) AS {name}"
                        for name, _ in LATENCY_THRESHOLDS)
    key = f"{group} AS grp, " if group else ""
    return f"""
        {key}{total('messages')} AS messages,
        {total('messages', "outcome = 'delivered'")} AS delivered,
        {total('messages', "outcome = 'failed'")} AS failed,
        {total('messages', "outcome = 'unknown'")} AS unknown,
        {total('messages', "outcome = 'pending'")} AS pending,
        {total('messages', "outcome = 'delivered'")}
            / NULLIF({total('messages', "outcome <> 'pending'")}, 0) AS delivery_rate,
        {total('messages', "outcome = 'delivered'")} / NULLIF({total('messages')}, 0) AS delivered_of_all,
        {total('latency_messages')} AS latency_messages,
        {shares},
        {total('delivered_without_earlier')} AS delivered_without_earlier,
        {total('regressions')} AS regressions
    """


def contains_pattern(text: str) -> str:
    """An ILIKE pattern for :func:`contains_condition`: any text containing ``text`` as
    typed (its ``%``, ``_`` and ``\\`` match themselves)."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def contains_condition(column: str, param: str) -> str:
    """``column`` matches the :func:`contains_pattern` bound to ``$param``, in any case."""
    return f"{column} ILIKE ${param} ESCAPE '\\'"


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


def receipt_kpis_sql(filtered: str, receipts: str, group: str | None) -> str:
    """The per-receipt KPIs (receipts, duplicate_rows, webhook lag) of ``filtered`` messages,
    from ``receipts`` (distinct receipts with ``copies``), overall or per ``group`` (a
    message column)."""
    key = f"fm.{group} AS grp, " if group else ""
    group_by = "GROUP BY ALL" if group else ""
    lag = seconds_between("r.created", "r.received_at")
    return f"""
        SELECT {key}
               count(*) AS receipts,
               coalesce(sum(r.copies) - count(*), 0)::BIGINT AS duplicate_rows,
               quantile_cont({lag}, 0.50) AS webhook_lag_p50_s,
               quantile_cont({lag}, 0.95) AS webhook_lag_p95_s
        FROM {receipts} r JOIN ({filtered}) fm ON r.delivery_message_id = fm.delivery_message_id
        {group_by}
    """
