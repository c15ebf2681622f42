"""The message questions: one message's receipts (Message lookup) and every message's row.

Contract: :func:`message_lookup` returns every distinct receipt of the messages a term names
(:data:`LOOKUP_COLUMNS`); :func:`message_detail` one row per message (:data:`DETAIL_COLUMNS`).
Both read the raw receipts (bounded: by the term, by the oldest message's sent day).
"""

from __future__ import annotations

import pandas as pd

from dlrlens.store import pseudonym, sends
from dlrlens.store.reader import Store
from dlrlens.store.selection import Filters, zone_info
from dlrlens.store.sql import distinct_receipts_sql
from dashboard.queries._common import empty_frame, in_zone

LOOKUP_COLUMNS = ["delivery_message_id", "batch_id", "client_reference", "created", "received_at", "status",
                  "status_code", "category", "part", "parts", "hlr", "campaign", "labels", "receipt_id", "copies"]
# message_summary: one row per message a lookup finds, what support asks first.
SUMMARY_COLUMNS = ["delivery_message_id", "campaign", "outcome", "reason", "last_status", "sent_at", "delivered_at",
                   "latency_s", "receipts", "duplicates_hidden"]
DETAIL_COLUMNS = ["delivery_message_id", "campaign", "batch_id", "client_reference", "sent_at", "outcome",
                  "reason", "last_status", "delivered_at", "latency_s", "receipts"]


def message_lookup(store: Store, term: str, limit: int = 5000, tz: str = "UTC") -> pd.DataFrame:
    """Every distinct receipt of the messages whose delivery_message_id, client_reference or
    batch_id equals ``term`` (trimmed, in any case), or sent to the phone number ``term`` (through
    the keyed hash of Mobivate's send records, :func:`dlrlens.store.pseudonym.lookup_hash`: the
    number itself is not stored), ordered by delivery_message_id, created, received_at.

    Columns: :data:`LOOKUP_COLUMNS`; ``campaign`` is the message's campaign (see the
    definitions), ``labels`` the receipt's own, ``copies`` how many stored copies it has.
    At most ``limit`` rows; times shown in ``tz``. Reads the raw receipts.
    """
    term = (term or "").strip()
    if not term:
        return empty_frame(LOOKUP_COLUMNS)
    zone_info(tz)

    def compute():
        _find(store, term)
        df = store.query(f"""
            SELECT r.delivery_message_id, r.batch_id, r.client_reference, r.created, r.received_at,
                   r.status, r.status_code, r.category, r.part, r.parts, r.hlr, m.campaign, r.labels,
                   r.receipt_id, r.copies
            FROM ({distinct_receipts_sql('lookup_rows')}) r
            JOIN {store.messages_for_ids('lookup_ids')} m ON r.delivery_message_id = m.delivery_message_id
            ORDER BY r.delivery_message_id, r.created, r.received_at, r.receipt_id
            LIMIT $limit""", {"limit": int(limit)})
        return in_zone(df, ["created", "received_at"], tz)
    return store.cached("message_lookup", (term, limit, tz), compute)


def _find(store: Store, term: str) -> None:
    """Temp tables ``lookup_rows`` (every stored row of the messages ``term`` names: their
    delivery_message_id, client_reference or batch_id equals it in any case, since ids are
    pasted from e-mails and tickets in whatever case they were written; or ``term`` is the
    phone number a message was sent to, through the keyed hash of the send records) and
    ``lookup_ids``."""
    raw = store.raw_sql()
    number_hash = pseudonym.lookup_hash(store.key_dir, term)
    by_number = (f" OR delivery_message_id IN (SELECT message_id FROM {sends.sends_sql(store.data_dir)} "
                 f"WHERE recipient_hash = $number_hash)") if number_hash else ""
    store.query(f"""CREATE OR REPLACE TEMP TABLE lookup_rows AS
                    SELECT * FROM {raw} WHERE delivery_message_id IN (
                        SELECT delivery_message_id FROM {raw}
                        WHERE lower(delivery_message_id) = $term OR lower(client_reference) = $term
                           OR lower(batch_id) = $term {by_number})""",
                {"term": term.lower(), **({"number_hash": number_hash} if number_hash else {})})
    store.query("CREATE OR REPLACE TEMP TABLE lookup_ids AS SELECT DISTINCT delivery_message_id FROM lookup_rows")


def message_summary(store: Store, term: str, limit: int = 1000, tz: str = "UTC") -> pd.DataFrame:
    """One row per message ``term`` names (as :func:`message_lookup` finds them), sent first
    first: :data:`SUMMARY_COLUMNS`. ``reason`` is a failed message's deciding status,
    ``last_status`` the deciding (or, pending, latest) status, ``latency_s`` its time to
    deliver (NaN unless it counts as one), ``receipts`` its distinct receipts and
    ``duplicates_hidden`` the stored copies beyond them. Times in ``tz``."""
    term = (term or "").strip()
    if not term:
        return empty_frame(SUMMARY_COLUMNS)
    zone_info(tz)

    def compute():
        _find(store, term)
        df = store.query(f"""
            SELECT m.delivery_message_id, m.campaign, m.outcome, m.reason, m.last_status, m.sent_at,
                   m.delivered_at, m.latency_s, r.receipts, r.stored - r.receipts AS duplicates_hidden
            FROM {store.messages_for_ids('lookup_ids')} m
            JOIN (SELECT delivery_message_id, count(DISTINCT receipt_id) AS receipts, count(*) AS stored
                  FROM lookup_rows GROUP BY ALL) r USING (delivery_message_id)
            ORDER BY m.sent_at, m.delivery_message_id LIMIT $limit""", {"limit": int(limit)})
        for column in ("receipts", "duplicates_hidden"):
            df[column] = df[column].astype("int64")
        return in_zone(df[SUMMARY_COLUMNS], ["sent_at", "delivered_at"], tz)
    return store.cached("message_summary", (term, limit, tz), compute)


def message_detail(store: Store, f: Filters, limit: int | None = None) -> pd.DataFrame:
    """One row per message matching ``f`` (newest sent first; at most ``limit``):
    :data:`DETAIL_COLUMNS`, times in f.tz. ``latency_s`` is NaN unless it counts as a latency.
    ``receipts`` (distinct) comes from the raw receipts of the partitions from the oldest
    message's sent day on."""
    def compute():
        sql, params = store.filtered_messages_sql(f)
        limit_sql = ""
        if limit is not None:
            params["limit"] = int(limit)
            limit_sql = "LIMIT $limit"
        columns = [c for c in DETAIL_COLUMNS if c != "receipts"]
        store.query(f"CREATE OR REPLACE TEMP TABLE detail AS SELECT {', '.join(columns)} FROM ({sql}) "
                    f"ORDER BY sent_at DESC, delivery_message_id {limit_sql}", params)
        # The partition name (YYYY-MM-DD, zero-padded) of the oldest message's UTC day, by
        # DuckDB: Python's strftime writes year 999 as "999" and fails past year 9999.
        since_day = store.query("SELECT strftime(min(sent_at), '%Y-%m-%d') AS day FROM detail")["day"].iloc[0]
        since_day = None if pd.isna(since_day) else since_day
        df = store.query(f"""
            SELECT d.*, coalesce(r.receipts, 0) AS receipts FROM detail d
            LEFT JOIN (SELECT delivery_message_id, count(DISTINCT receipt_id) AS receipts FROM {store.raw_sql(since_day)}
                       WHERE delivery_message_id IN (SELECT delivery_message_id FROM detail) GROUP BY ALL) r
                   USING (delivery_message_id)
            ORDER BY d.sent_at DESC, d.delivery_message_id""")
        return in_zone(df[DETAIL_COLUMNS], ["sent_at", "delivered_at"], f.tz)
    return store.cached("message_detail", (f, limit), compute)
