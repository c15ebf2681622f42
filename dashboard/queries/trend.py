"""The questions over time: the trend chart, what it leaves out, and pending messages by age.

* :func:`trend`: messages per outcome and delivery rate per local hour or day.
* :func:`uncharted_messages` / :func:`uncharted_note`: messages sent outside the charted span
  (:data:`CHARTED_FROM` to :data:`CHARTED_TO`), which every other figure counts.
* :func:`pending_ages`: pending messages by age and the status they are stuck at.

Contract: buckets are local to the filters' zone (tz-aware ``bucket_start``), every bucket
from the filters' (or the data's) first to last one is present, empty ones with zeros.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone

import pandas as pd

from dlrlens.store.reader import CHARTED_FROM, CHARTED_TO, Store
from dlrlens.store.selection import OUTCOMES, Filters
from dashboard import _sql
from dashboard.queries._common import (AGE_BUCKETS, TREND_COLUMNS, all_buckets, charted, counts_as_int, in_zone,
                                       per_bucket)

UTC = timezone.utc


def trend(store: Store, f: Filters, bucket: str | None = None) -> pd.DataFrame:
    """Per local hour/day bucket (``bucket`` 'hour'|'day'; auto: hour when the range is at
    most 3 days): bucket_start (tz-aware in f.tz), messages, delivered, failed, unknown,
    pending, delivery_rate. Buckets without messages are included with zeros, from the
    filter's start to its end (or the data's first/last bucket). Only messages sent in the
    charted span (:data:`CHARTED_FROM` to :data:`CHARTED_TO`): :func:`uncharted_messages`
    counts the others."""
    def compute():
        df, chosen = per_bucket(store, f, bucket, _sql.counts_select())
        df = in_zone(df[TREND_COLUMNS], ["bucket_start"], f.tz)
        index = all_buckets(charted(f, bounded=False), chosen, df["bucket_start"])
        df = df.set_index("bucket_start").reindex(index)
        df.index.name = "bucket_start"
        df = counts_as_int(df, ["messages", "delivered", "failed", "unknown", "pending"])
        df["delivery_rate"] = df["delivery_rate"].astype("float64")
        return df.reset_index()[TREND_COLUMNS]
    return store.cached("trend", (f, bucket), compute)


def uncharted_messages(store: Store, f: Filters, outcome: str | None = None) -> int:
    """How many messages matching ``f`` (with ``outcome`` too, when given: 'failed' for the
    failure chart) are sent outside the charted span [:data:`CHARTED_FROM`,
    :data:`CHARTED_TO`): every figure counts them, the charts over time (:func:`trend`,
    :func:`failure_reasons_over_time`) leave them out; :func:`uncharted_note` says so.

    Reads only the derived files and tail messages outside the span (few or none)."""
    if outcome is not None and outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}; choose from {', '.join(OUTCOMES)}")

    def compute():
        outside = []
        if f.start is None or f.start < CHARTED_FROM:
            outside.append(replace(f, end=CHARTED_FROM if f.end is None else min(f.end, CHARTED_FROM)))
        if f.end is None or f.end > CHARTED_TO:
            outside.append(replace(f, start=CHARTED_TO if f.start is None else max(f.start, CHARTED_TO)))
        total = 0
        for part in outside:
            if part.start is not None and part.end is not None and part.start >= part.end:
                continue
            sql, params = store.filtered_counts_sql(part)
            where = ""
            if outcome is not None:
                params["uncharted_outcome"] = outcome
                where = "WHERE outcome = $uncharted_outcome"
            total += int(store.query(f"SELECT coalesce(sum(messages), 0)::BIGINT AS n FROM ({sql}) {where}",
                                     params)["n"].iloc[0])
        return total
    return store.cached("uncharted_messages", (f, outcome), compute)


def uncharted_note(count: int, outcome: str | None = None) -> str | None:
    """The sentence a page shows under a chart over time that leaves out ``count`` messages
    (:func:`uncharted_messages`); None when it leaves out none."""
    if not count:
        return None
    noun = ("message" if count == 1 else "messages") if outcome is None else (
        f"{outcome} message" if count == 1 else f"{outcome} messages")
    return (f"{count:,} {noun} sent before {CHARTED_FROM:%Y-%m-%d} or from {CHARTED_TO:%Y-%m-%d} on (by the "
            f"created time of their first receipt) {'is' if count == 1 else 'are'} not charted over time; "
            f"the other figures count {'it' if count == 1 else 'them'}.")


def pending_ages(store: Store, f: Filters, now: datetime | None = None) -> pd.DataFrame:
    """Pending messages by age (now - sent time) and the status they are stuck at.

    One row per (age_bucket, last_status) with messages > 0, ordered by age bucket
    (:data:`AGE_BUCKETS`) then messages descending. Sum ``messages`` by ``age_bucket`` for
    the bucket totals.
    """
    now = now if now is not None else datetime.now(UTC)

    def compute():
        # One definition of a pending message's age, shared with the alerts (pending_age rules).
        df = store.pending_by_age(f, now, (3600, 86400, 259200)).drop(columns="grp")
        df["age_bucket"] = [AGE_BUCKETS[i] for i in df["bucket_order"]]
        return df[["age_bucket", "messages", "last_status"]].reset_index(drop=True)
    return store.cached("pending_ages", (f, now), compute)

