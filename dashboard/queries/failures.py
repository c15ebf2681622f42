"""The failure questions: which failure reasons, per campaign and over time.

Contract: a failed message's reason is its deciding final status (see :mod:`dashboard.queries`);
shares are of the failed messages (per campaign in :func:`failure_reasons_by_campaign`);
``meaning`` is Mobivate's documented text ('' when undocumented).
"""

from __future__ import annotations

import pandas as pd

from dlrlens.statuses import status_table
from dlrlens.store.reader import Store
from dlrlens.store.selection import Filters
from dashboard.queries._common import in_zone, per_bucket


def failure_reasons(store: Store, f: Filters) -> pd.DataFrame:
    """reason, messages, share (of failed messages), meaning (from statuses.csv; '' if undocumented)."""
    def compute():
        sql, params = store.filtered_counts_sql(f)
        df = store.query(f"""
            SELECT last_status AS reason, sum(messages)::BIGINT AS messages,
                   sum(messages)::BIGINT / sum(sum(messages)::BIGINT) OVER () AS share
            FROM ({sql}) WHERE outcome = 'failed' GROUP BY last_status HAVING sum(messages) > 0
            ORDER BY messages DESC, reason""", params)
        meanings = _meanings()
        df["meaning"] = [meanings.get(r, "") for r in df["reason"]]
        return df
    return store.cached("failure_reasons", (f,), compute)


def failure_reasons_by_campaign(store: Store, f: Filters) -> pd.DataFrame:
    """campaign, reason, messages, share (of that campaign's failed messages)."""
    def compute():
        sql, params = store.filtered_counts_sql(f)
        return store.query(f"""
            SELECT campaign, last_status AS reason, sum(messages)::BIGINT AS messages,
                   sum(messages)::BIGINT / sum(sum(messages)::BIGINT) OVER (PARTITION BY campaign) AS share
            FROM ({sql}) WHERE outcome = 'failed' GROUP BY campaign, last_status HAVING sum(messages) > 0
            ORDER BY campaign, messages DESC, reason""", params)
    return store.cached("failure_reasons_by_campaign", (f,), compute)


def failure_reasons_over_time(store: Store, f: Filters, bucket: str | None = None) -> pd.DataFrame:
    """bucket_start (tz-aware in f.tz), reason, messages: failed messages per reason per bucket
    (charted ones only, as in :func:`trend`)."""
    def compute():
        df, _ = per_bucket(store, f, bucket, "last_status AS reason, sum(messages)::BIGINT AS messages",
                           where="WHERE outcome = 'failed'", order="bucket_start, messages DESC, reason")
        return in_zone(df, ["bucket_start"], f.tz)
    return store.cached("failure_reasons_over_time", (f, bucket), compute)


def _meanings() -> dict[str, str]:
    return {s.name: s.meaning for s in status_table()}
