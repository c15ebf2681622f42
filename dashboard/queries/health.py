"""The data health questions: how the stored data itself looks, and the collector's status.

* :func:`data_health`: receipts, duplicates, regressions, arrivals per minute, unknown statuses.
* :func:`maintenance_status`, :func:`rejected_summary`: the collector's status files (read by
  :mod:`dlrlens.store.status`) as the page shows them.

Contract: per-receipt figures come from the raw receipts (distinct receipt_id); over all data
they are summed per day partition, each computed once while its files do not change.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd

from dlrlens.store.reader import Store
from dlrlens.store.selection import Filters
from dlrlens.store.sql import distinct_receipts_sql, known_statuses, unknown_status_condition
from dlrlens.store import status
from dashboard.queries._common import counts_as_int


def data_health(store: Store, since: datetime | None = None) -> dict[str, pd.DataFrame]:
    """How the data itself looks, over receipts received at or after ``since`` (all if None).

    * ``summary``: one row: receipts (distinct), stored_rows, duplicate_rows, regressions
      (messages with a regression among those with a receipt in scope), last_received_at,
      last_created_at, messages (with a receipt in scope).
    * ``per_minute``: minute (UTC), receipts received (distinct) in the last 24 h of data
      (from ``since`` when given).
    * ``unknown_statuses``: status, status_code, receipts: statuses not in Mobivate's table.

    Reads the raw receipts. Over all data (``since`` None) the per-receipt figures are summed
    over day partitions, each computed once while its files do not change.
    """
    known = known_statuses()

    def compute():
        if since is None:
            return _health_overall(store, known)
        rows = f"SELECT * FROM {store.raw_sql()} WHERE received_at >= $since"
        store.query(f"CREATE OR REPLACE TEMP TABLE health_receipts AS {distinct_receipts_sql(f'({rows})')}",
                    {"since": since})
        store.query("CREATE OR REPLACE TEMP TABLE health_ids AS SELECT DISTINCT delivery_message_id FROM health_receipts")
        summary = store.query(f"""
            SELECT (SELECT count(*) FROM health_receipts) AS receipts,
                   (SELECT coalesce(sum(copies), 0) FROM health_receipts)::BIGINT AS stored_rows,
                   (SELECT coalesce(sum(copies) - count(*), 0) FROM health_receipts)::BIGINT AS duplicate_rows,
                   (SELECT coalesce(sum(regressions), 0) FROM {store.messages_for_ids('health_ids')})::BIGINT
                       AS regressions,
                   (SELECT max(received_at) FROM health_receipts) AS last_received_at,
                   (SELECT max(created) FROM health_receipts) AS last_created_at,
                   (SELECT count(*) FROM health_ids) AS messages""")
        per_minute = store.query("""
            SELECT date_trunc('minute', received_at) AS minute, count(*) AS receipts
            FROM health_receipts GROUP BY ALL ORDER BY minute""")
        unknown = store.query(f"""
            SELECT status, status_code, count(*) AS receipts FROM health_receipts
            WHERE {unknown_status_condition()}
            GROUP BY ALL ORDER BY receipts DESC, status""", known)
        store.query("DROP TABLE health_receipts")
        summary = counts_as_int(summary, ["receipts", "stored_rows", "duplicate_rows", "regressions", "messages"])
        return {"summary": summary, "per_minute": per_minute, "unknown_statuses": unknown}
    return store.cached("data_health", (since,), compute)


def _health_overall(store: Store, known: dict) -> dict[str, pd.DataFrame]:
    totals = store.per_partition("health_totals", """
        SELECT count(DISTINCT receipt_id) AS receipts, count(*) AS stored_rows,
               max(received_at) AS last_received_at, max(created) AS last_created_at FROM {source}""")
    unknown = store.per_partition("health_unknown", """
        SELECT status, status_code, count(DISTINCT receipt_id) AS receipts FROM {source}
        WHERE """ + unknown_status_condition() + " GROUP BY ALL", known)
    columns = ["receipts", "stored_rows", "last_received_at", "last_created_at"]
    per = pd.concat(list(totals.values()), ignore_index=True) if totals else pd.DataFrame(columns=columns)
    sql, params = store.filtered_counts_sql(Filters())
    messages = store.query(f"SELECT coalesce(sum(messages), 0)::BIGINT AS messages, "
                           f"coalesce(sum(regressions), 0)::BIGINT AS regressions FROM ({sql})", params).iloc[0]
    receipts, stored = int(per["receipts"].sum()), int(per["stored_rows"].sum())
    last_received = per["last_received_at"].max() if len(per) else pd.NaT
    summary = pd.DataFrame({
        "receipts": [receipts], "stored_rows": [stored], "duplicate_rows": [stored - receipts],
        "regressions": [int(messages["regressions"])], "last_received_at": [last_received],
        "last_created_at": [per["last_created_at"].max() if len(per) else pd.NaT],
        "messages": [int(messages["messages"])]})
    if pd.isna(last_received):
        per_minute = pd.DataFrame({"minute": pd.Series([], dtype="datetime64[us, UTC]"),
                                   "receipts": pd.Series([], dtype="int64")})
    else:
        # A receipt's copies share its partition: the partitions received into lately suffice.
        cutoff = pd.Timestamp(last_received) - pd.Timedelta(hours=24)
        recent = {name for name, row in totals.items() if len(row) and row["last_received_at"].iloc[0] >= cutoff}
        per_minute = store.query(f"""
            SELECT date_trunc('minute', received_at) AS minute, count(*) AS receipts
            FROM ({distinct_receipts_sql(store.raw_sql(partitions=recent))})
            WHERE received_at >= $cutoff GROUP BY ALL ORDER BY minute""", {"cutoff": cutoff.to_pydatetime()})
    unknown_all = pd.concat([u for u in unknown.values() if len(u)] or [
        pd.DataFrame({"status": pd.Series([], dtype=object), "status_code": pd.Series([], dtype="Int32"),
                      "receipts": pd.Series([], dtype="int64")})], ignore_index=True)
    unknown_all = (unknown_all.groupby(["status", "status_code"], dropna=False, as_index=False)["receipts"].sum()
                   .sort_values(["receipts", "status"], ascending=[False, True]).reset_index(drop=True))
    return {"summary": summary, "per_minute": per_minute, "unknown_statuses": unknown_all}



def maintenance_status(data_dir: str | Path) -> dict | None:
    """The collector's maintenance process as it last reported (``maintenance.json``, see
    ``dlrlens.store.maintenance.Maintainer.status_document``); ``None`` before its first report.

    Keys: updated_at, derive_at, compact_at (last successes), last_error_at (UTC Timestamps or
    NaT), errors (failed tasks since it started), last_error (text or None), interval_seconds
    ({"derive": s, "compact": s}).
    """
    doc = status.maintenance_status(Path(data_dir))
    if doc is None:
        return None  # not written yet, or being replaced: it is rewritten every few seconds
    try:
        successes = doc.get("last_success_at") or {}

        def moment(value) -> pd.Timestamp:
            return pd.Timestamp(value).tz_convert("UTC") if value else pd.NaT

        return {"updated_at": moment(doc.get("updated_at")), "derive_at": moment(successes.get("derive")),
                "compact_at": moment(successes.get("compact")), "last_error_at": moment(doc.get("last_error_at")),
                "errors": int(sum((doc.get("errors") or {}).values())), "last_error": doc.get("last_error"),
                "interval_seconds": dict(doc.get("interval_seconds") or {})}
    except (ValueError, TypeError, AttributeError):
        return None  # not ours


def rejected_summary(data_dir: str | Path) -> pd.DataFrame:
    """reason, count, last_at: refused webhook requests per reason.

    ``count`` is the larger of the writers' persisted counters (``stats/*.json`` key
    ``rejected``, summed over writers; monotonic) and the number of kept bodies
    (``rejected/<reason>/*.body``, pruned to the newest N). ``last_at`` is the time of the
    newest kept body (UTC, from its file name, else its mtime), NaT if none is kept.
    """
    counted = status.sum_counters(status.writer_counters(Path(data_dir)).values())["rejected"]
    kept = status.kept_rejected(Path(data_dir))
    rows = []
    for reason in sorted(set(counted) | set(kept)):
        held = kept.get(reason, {"kept": 0, "newest_at": None})
        rows.append({"reason": reason, "count": max(counted.get(reason, 0), held["kept"]),
                     "last_at": pd.Timestamp(held["newest_at"]) if held["newest_at"] is not None else pd.NaT})
    if not rows:
        return pd.DataFrame({"reason": pd.Series([], dtype=object), "count": pd.Series([], dtype="int64"),
                             "last_at": pd.Series([], dtype="datetime64[us, UTC]")})
    df = pd.DataFrame(rows)
    df["last_at"] = pd.to_datetime(df["last_at"], utc=True)
    return df.sort_values(["count", "reason"], ascending=[False, True]).reset_index(drop=True)
