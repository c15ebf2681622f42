"""SQL fragments of the read interface (:mod:`dlrlens.store.reader`) over the stored data.

Two relations carry every figure:

* ``messages``: one row per ``delivery_message_id`` with its campaign, sent time, outcome,
  reason, latency, ... The reader builds it from the derived per-message state
  (:mod:`dlrlens.store.derive`) merged with the receipts not absorbed yet; the conditions
  here (:func:`time_conditions`, :func:`dimension_conditions`,
  :func:`filtered_messages_sql`) restrict it by a :class:`~dlrlens.store.selection.Filters`.
* ``receipts``: one row per distinct ``receipt_id`` (:func:`distinct_receipts_sql`) over the
  stored rows (:meth:`dlrlens.store.reader.Store.raw_sql`), for the per-receipt figures
  (receipts, duplicate rows, webhook lag), which are not per message.

The per-message counts and shares over a counts relation (:func:`counts_select`: messages per
outcome, delivery rate, ...) are defined here once: the dashboard's questions and the alerts
(:mod:`dlrlens.alerts`) both aggregate with it.

Every builder returns SQL text with named ``$parameters``; user values are always bound.
"""

from __future__ import annotations

# "Delivered within" figures: (column, seconds). A delivered message counts in a column when its
# latency is at most that many seconds. The rollups store these columns
# (dlrlens.store.derive.within_sql); the dashboard's straightforward definition
# (dashboard/_sql.py) and counts_select use the same thresholds.
LATENCY_THRESHOLDS = (("within_10s", 10), ("within_1m", 60), ("within_5m", 300), ("within_1h", 3600))


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


def string_literal(text) -> str:
    """``text`` (a path, say) as an SQL string literal, for the places DuckDB takes no
    parameter (``read_parquet`` lists built from file names, ``COPY ... TO``)."""
    return "'" + str(text).replace("'", "''") + "'"


def json_pointer(key: str) -> str:
    """RFC 6901 pointer to a top-level key (any characters allowed in ``key``)."""
    return "/" + key.replace("~", "~0").replace("/", "~1")


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


def known_statuses() -> dict:
    """The parameter ``known`` of :func:`unknown_status_condition`: the status names of
    Mobivate's table (:func:`dlrlens.statuses.status_table`)."""
    from dlrlens.statuses import status_table

    return {"known": [s.name for s in status_table()]}


def unknown_status_condition(column: str = "status") -> str:
    """A receipt status not in Mobivate's table (bind :func:`known_statuses`): the Data health
    page lists them and the ``unknown_status`` alert fires on them."""
    return f"NOT list_contains($known, {column})"


def label_values_sql(path_param: str) -> str:
    """The LIST of values a counts or messages row's label sets (``label_sets``, a JSON list of
    label objects as text) hold for the key whose :func:`json_pointer` is bound to
    ``$path_param``: none, one, or several distinct values (the label filter finds a message
    under each)."""
    return (f"list_distinct(list_filter(list_transform(from_json(label_sets, '[\"VARCHAR\"]'), "
            f"lambda l: json_extract_string(l, ${path_param})), lambda v: v IS NOT NULL))")


def send_conditions(f, params: dict) -> list[str]:
    """Filters ``f``'s countries, networks, senders and routes as SQL conditions on the joined
    relations (columns country, network, originator, route_id); adds the bound values to ``params``.
    ``(unknown)`` matches a message without the value (no send record, or a number that did
    not parse)."""
    from dlrlens.store.selection import SEND_DIMENSIONS

    conditions = []
    for column, name in SEND_DIMENSIONS.items():
        values = list(getattr(f, name))
        if values:
            params[name] = values
            conditions.append(f"list_contains($%s, coalesce({column}, '(unknown)'))" % name)
    return conditions
