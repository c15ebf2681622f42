"""SQL builders behind :mod:`dashboard.queries` (private): the questions' own SQL over the
relations the store serves (:mod:`dlrlens.store.reader`; the engine-level fragments, the
``receipts`` relation and the filter conditions, are in :mod:`dlrlens.store.sql`).

* :func:`counts_select` (re-exported from :mod:`dlrlens.store.sql`, its one definition): every
  per-message count and share from a *counts relation* (:meth:`dlrlens.store.reader.Store.counts_sql`).
* :func:`receipt_kpis_sql`: the per-receipt KPIs (receipts, duplicate rows, webhook lag).
* :func:`bucket_sql`: local hour and day buckets of the charts over time.
* :func:`contains_pattern` / :func:`contains_condition`: the option widgets' search.

Every builder returns SQL text with named ``$parameters``; user values are always bound.
"""

from __future__ import annotations

# counts_select (every per-message count and share, the delivery rate among them) is defined once,
# in the store, where the alerts (dlrlens.alerts) read it too.
from dlrlens.store.sql import counts_select, seconds_between  # noqa: F401


def contains_pattern(text: str) -> str:
    """An ILIKE pattern for :func:`contains_condition`: any text containing ``text`` as
    typed (its ``%``, ``_`` and ``\\`` match themselves)."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def contains_condition(column: str, param: str) -> str:
    """``column`` matches the :func:`contains_pattern` bound to ``$param``, in any case."""
    return f"{column} ILIKE ${param} ESCAPE '\\'"


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
