"""Clicks and replies for the funnel tests and benchmarks, and the funnel's oracle.

* :func:`demo_events`: clicks and replies (stored-row dicts) for a set of receipt rows: clicks
  by messageId, by clientRef within batchId, unlinked ones, retried (same id within 60 s) and
  repeated (same id later) clicks; replies by inReplyTo, by batch only (some from a number that
  also replied by inReplyTo to a message of that batch), unlinked, stored twice,
  opt-out keywords in odd case and spacing, and text that only contains one.
* :func:`write_events`: rows as Parquet files of the ``clicks`` / ``replies`` tables.
* :func:`oracle_funnel`: the funnel by its plain definition, in pandas, over the messages of an
  independent message definition (:class:`tests.support.baseline.BaselineStore`) and the raw
  event rows: no SQL of :mod:`dlrlens.store.events` or :mod:`dashboard.queries.funnel`.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from dlrlens.store import layout
from dlrlens.store.wal import log_document
from dlrlens.store.writer import records_to_table, utc_day, write_parquet_atomically

KEYWORDS = ("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT")
REPLY_TEXTS = ["Thanks", "STOP", " stop ", "S t o p", "Stop please", "unsubscribe", "QUIT", "end", "yes"]


def click_row(click_id: str, at, message_id=None, batch_id=None, client_ref=None, url="https://x.example/a",
              country="United Kingdom", os="Android", browser="Chrome", mobile_hash=None) -> dict:
    return {"click_id": click_id, "received_at": at, "message_id": message_id, "batch_id": batch_id,
            "client_ref": client_ref, "url": url, "browser": browser, "os": os, "country": country, "iso2l": "UK",
            "mobile_hash": mobile_hash, "mobile_masked": "44770****123", "mobile": None, "ip_address": None,
            "extra": None, "campaign": None, "labels": "{}"}


def reply_row(reply_id: str, created, body: str, in_reply_to=None, batch=None, originator_hash=None,
              received_at=None) -> dict:
    return {"reply_id": reply_id, "created": created, "received_at": received_at or created + timedelta(seconds=1),
            "in_reply_to": in_reply_to, "logical_message_id": batch, "recipient": "60777", "body": body,
            "originator_hash": originator_hash, "originator_masked": "44770****456", "originator": None,
            "owner_user_id": "U1", "extra": None, "campaign": None, "labels": "{}"}


def demo_events(receipt_rows: list[dict], seed: int = 3, click_share: float = 0.12,
                reply_share: float = 0.03) -> tuple[list[dict], list[dict]]:
    """(clicks, replies) rows for the messages of ``receipt_rows`` (see the module docstring)."""
    rng = random.Random(seed)
    first: dict[str, dict] = {}
    for row in sorted(receipt_rows, key=lambda r: (r["created"], r["received_at"])):
        first.setdefault(row["delivery_message_id"], row)
    clicks: list[dict] = []
    replies: list[dict] = []
    urls = [f"https://shop.example.com/p{n}" for n in range(6)]
    for n, (mid, row) in enumerate(sorted(first.items())):
        at = row["created"] + timedelta(seconds=rng.uniform(5, 3600))
        kind = dict(url=rng.choice(urls), country=rng.choice(["United Kingdom", "France", None]),
                    os=rng.choice(["Android", "iOS"]), browser=rng.choice(["Chrome", "Safari"]))
        if rng.random() < click_share:
            by_reference = rng.random() < 0.25 and row["client_reference"]
            target = (dict(message_id=None if rng.random() < 0.5 else f"wrong-{n}", batch_id=row["batch_id"],
                           client_ref=row["client_reference"]) if by_reference
                      else dict(message_id=mid, batch_id=row["batch_id"], client_ref=row["client_reference"]))
            clicks.append(click_row(f"c{n}", at, **target, **kind))
            if rng.random() < 0.2:
                clicks.append(click_row(f"c{n}", at + timedelta(seconds=rng.uniform(0, 59)), **target, **kind))
            if rng.random() < 0.2:
                clicks.append(click_row(f"c{n}", at + timedelta(minutes=rng.uniform(2, 90)), **target, **kind))
        if rng.random() < reply_share:
            body = rng.choice(REPLY_TEXTS)
            replies.append(reply_row(f"r{n}", at, body, in_reply_to=mid, batch=row["batch_id"],
                                     originator_hash=f"h{n}"))
            if rng.random() < 0.2:
                replies.append(reply_row(f"r{n}", at, body, in_reply_to=mid, batch=row["batch_id"],
                                         originator_hash=f"h{n}", received_at=at + timedelta(seconds=30)))
            if n % 3 == 0 and row["batch_id"]:  # the same number again, by batch only (no extra draw)
                replies.append(reply_row(f"rs{n}", at + timedelta(minutes=5), "STOP", batch=row["batch_id"],
                                         originator_hash=f"h{n}"))
        if rng.random() < reply_share / 2 and row["batch_id"]:
            replies.append(reply_row(f"rb{n}", at, rng.choice(REPLY_TEXTS), batch=row["batch_id"],
                                     originator_hash=f"h{rng.randrange(5)}"))
    base = min(r["created"] for r in first.values()) if first else None
    for n in range(max(3, len(first) // 50)):
        at = base + timedelta(hours=rng.uniform(0, 48))
        clicks.append(click_row(f"ghost-{n}", at, message_id=f"ghost-{n}", batch_id="no-batch", client_ref="x"))
        replies.append(reply_row(f"rghost-{n}", at, "STOP", in_reply_to=f"ghost-{n}", batch="no-batch"))
    return clicks, replies


def write_events(data_dir: Path, table: str, rows: list[dict], name: str) -> None:
    """``rows`` as the table's Parquet files (one per UTC day of its partition column), ``name``.parquet."""
    spec = layout.TABLES[table]
    by_day: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        doc = log_document(row)
        by_day[utc_day(doc[spec.day_column])].append(doc)
    for day, docs in by_day.items():
        write_parquet_atomically(records_to_table(docs, table),
                                 layout.table_partition_dir(data_dir, table, day) / f"{name}.parquet")


def _event_frame(data_dir: Path, table: str) -> pd.DataFrame:
    paths = sorted((Path(data_dir) / layout.TABLES[table].directory).glob("date=*/*.parquet"))
    if not paths:
        return pd.DataFrame(columns=layout.TABLES[table].schema.names)
    return pd.concat([pq.read_table(p).to_pandas() for p in paths], ignore_index=True)


def oracle_events(data_dir: Path, all_messages: pd.DataFrame, keywords=KEYWORDS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(clicks, replies): distinct events with ``linked_id`` (and ``linked_batch``, ``opt_out``
    for replies), by the plain definition."""
    clicks = _event_frame(data_dir, "clicks").sort_values(["click_id", "received_at"], kind="stable")
    gap = clicks.groupby("click_id")["received_at"].diff()
    clicks = clicks[gap.isna() | (gap > pd.Timedelta(seconds=60))].copy()
    ids = set(all_messages["delivery_message_id"])
    by_reference = (all_messages.dropna(subset=["batch_id", "client_reference"])
                    .groupby(["batch_id", "client_reference"])["delivery_message_id"].min().to_dict())
    clicks["linked_id"] = [m if m in ids else by_reference.get((b, r)) for m, b, r in
                           zip(clicks["message_id"], clicks["batch_id"], clicks["client_ref"])]
    replies = (_event_frame(data_dir, "replies").sort_values(["reply_id", "received_at", "created"], kind="stable")
               .drop_duplicates("reply_id").copy())
    batches = set(all_messages["batch_id"].dropna())
    replies["linked_id"] = [m if m in ids else None for m in replies["in_reply_to"]]
    replies["linked_batch"] = [b if pd.isna(m) and b in batches else None
                               for m, b in zip(replies["linked_id"], replies["logical_message_id"])]
    # A batch-linked reply from a number that also replied by inReplyTo to a message of that
    # batch belongs to that message (the smallest id).
    batch_of = dict(zip(all_messages["delivery_message_id"], all_messages["batch_id"]))
    replied_to: dict = {}
    for m, who in zip(replies["linked_id"], replies["originator_hash"]):
        if m is not None and not pd.isna(who) and not pd.isna(batch_of.get(m)):
            key = (batch_of[m], who)
            replied_to[key] = min(replied_to.get(key, m), m)
    for i in replies.index[replies["linked_batch"].notna() & replies["originator_hash"].notna()]:
        found = replied_to.get((replies.at[i, "linked_batch"], replies.at[i, "originator_hash"]))
        if found is not None:
            replies.at[i, "linked_id"], replies.at[i, "linked_batch"] = found, None
    replies["opt_out"] = [body is not None and re.sub(r"[ \t\n\r\f\v]", "", body).upper() in keywords
                          for body in replies["body"]]
    return clicks, replies


def oracle_funnel(messages: pd.DataFrame, all_messages: pd.DataFrame, data_dir: Path, by_campaign: bool,
                  keywords=KEYWORDS) -> pd.DataFrame:
    """The funnel of the (already filtered) ``messages``, linking against ``all_messages``."""
    clicks, replies = oracle_events(data_dir, all_messages, keywords)
    groups = messages["campaign"] if by_campaign else pd.Series("all", index=messages.index)
    # A batch-linked reply belongs to its batch's first message (of all), when that one matches.
    first_of_batch = (all_messages.dropna(subset=["batch_id"]).sort_values(["sent_at", "delivery_message_id"])
                      .groupby("batch_id")["delivery_message_id"].first().to_dict())
    group_of = dict(zip(messages["delivery_message_id"], groups))
    batch_campaign = {batch: group_of[first] for batch, first in first_of_batch.items() if first in group_of}
    rows = []
    for group, part in messages.groupby(groups):
        mids = set(part["delivery_message_id"])
        delivered = part[part["outcome"] == "delivered"]
        mine = clicks[clicks["linked_id"].isin(mids)]
        first_click = mine.groupby("linked_id")["received_at"].min()
        clicked = delivered[delivered["delivery_message_id"].isin(first_click.index)]
        delays = [(first_click[m] - d).total_seconds() for m, d in
                  zip(clicked["delivery_message_id"], clicked["delivered_at"])]
        linked = replies[replies["linked_id"].isin(mids)]
        pairs = replies[replies["linked_batch"].map(lambda b: batch_campaign.get(b)) == group].copy()
        pairs["who"] = pairs["originator_hash"].fillna(pairs["reply_id"])
        pair_opt = pairs.groupby(["linked_batch", "who"])["opt_out"].any()
        rows.append({
            "grp": group, "messages": len(part), "delivered": len(delivered), "clicked": len(clicked),
            "clicks": len(mine),
            "replied": linked["linked_id"].nunique() + len(pair_opt),
            "opted_out": linked[linked["opt_out"]]["linked_id"].nunique() + int(pair_opt.sum()),
            "click_delay_p50_s": float(np.quantile(delays, 0.5)) if delays else np.nan,
            "click_delay_p95_s": float(np.quantile(delays, 0.95)) if delays else np.nan,
        })
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["click_rate"] = df["clicked"] / df["delivered"].where(df["delivered"] > 0)
    df["opt_out_rate"] = df["opted_out"] / df["delivered"].where(df["delivered"] > 0)
    return df
