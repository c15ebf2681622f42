"""Derived per-message state: one row per message, kept up to date from the receipt files.

The dashboard's figures are per message (outcome, campaign, sent time, latency, ...). Deriving
them from 100 M raw receipts on every query is far too slow, so the collector maintains them
here and the dashboard reads them (plus the few receipt files not absorbed yet, see
``dlrlens/store/reader.py``).

Duplicate-insensitive state
    Every column is an idempotent, mergeable aggregate over the message's stored rows (every
    stored copy of a receipt counts as a row): absorbing the same row twice changes nothing,
    and the state of rows A merged with the state of rows B equals the state of A + B. So a
    receipt file may be absorbed twice (a compaction output holding rows already absorbed, a
    flush file re-created by a log replay) and partial states computed anywhere (the
    reader's fresh tail) merge exactly. The definitions (the same as the straightforward
    baseline in ``tests/support/baseline.py``; order = (created, received_at, then the value)):

    * sent_at: min(created); first_received: the least received_at among rows created then;
    * campaign label / batch_id / client_reference: the value of the first row (in that order)
      that has one (campaign labels trimmed, blank = none);
    * deciding final: the last row with a final category by (created, received_at, status,
      category) -> outcome, final status (the failure reason of a failed message);
    * latest status: the last row by (created, received_at, status) (a pending message's
      last_status: where it is stuck);
    * first delivered: min(created) over delivered rows; latency = first delivered - sent_at
      of a delivered message, when positive;
    * regression: the message's latest pending row is created after its deciding final row;
    * label sets: every distinct ``labels`` text of its rows (for the any-receipt label filter).

    Not here: counts of distinct receipts, stored copies and webhook lag (per receipt, not
    mergeable per message): the dashboard computes them from the raw receipts (Data health).

Clicks and replies
    The click and reply tables (:mod:`dlrlens.store.events`) are absorbed too, each event a unit
    of the message it names: a click of its ``message_id`` (``click_list``: its distinct stored
    copies, :data:`CLICK_ITEM`), a reply of its ``in_reply_to`` (``reply_list``: each reply's
    first received copy, with whether its text is an opt-out keyword, :data:`REPLY_ITEM`); both
    lists are sets, so they merge like the rest. An event whose message has no receipt (yet),
    or that names none (NULL id: all of them in one row), has a row without receipt state (no
    ``sent_at``): such rows live in one *unplaced* file (``sent=none/u-<ns>.parquet``), are no
    messages, and move to their message's file when its receipts are absorbed (the id index
    finds them like any stored row). The keywords replies were matched with are the
    manifest's ``opt_out_keywords``; another ``DLRLENS_OPT_OUT_KEYWORDS`` rebuilds the state.
    Linking by reference (a click's batch and clientRef) or by batch (a reply without a known
    inReplyTo) stays with the reader, over the few unplaced events
    (:meth:`dlrlens.store.reader.Store.linked_clicks_sql`).

Send records
    Mobivate's send records (:mod:`dlrlens.store.sends`: the message log and history a sync
    stores) are absorbed too: a record is a unit of its ``message_id`` (``send_key``,
    :data:`SEND_ITEM`: of a message's MT records the max keeps the log's over the history's,
    then the latest ``modified``, then the latest ``created``; MO records are no messages of
    ours), stored flat as :data:`SEND_COLUMNS` (``log_created``, ``cost``, ``currency``,
    ``country``, ...). So the cost and "where" figures never join at query time. A message
    the log knows without any receipt has a row without receipt state in the unplaced file
    (like an event's): it is no message for the receipt-based figures, and the cost figures
    read those rows by their ``log_created``. A sync replaces a day's file when a record of
    it changes: the manifest's ``absorbed`` names a send file with its size and mtime
    (:func:`send_files`), so a replaced file is read again, and its old name pruned. Only its
    records stamped (``changed_at``, see :mod:`dlrlens.store.sends`) after the latest stamp
    absorbed from that path (the manifest's ``send_stamps``) are absorbed again, and those
    without a stamp: at 100 M receipts, a day file of 447 k records with 101 changed took
    66.6 s to absorb whole, 12.1 s so. (Absorbing a record twice would change nothing either way.)

    Each key is stored flat, and only where it carries information (``*_created``/``*_received``
    of a label are NULL when they equal the first row's; the latest status is NULL once a final
    receipt exists; ...), which keeps the files small; :func:`state_units_sql` expands them.

On disk (``data/derived/``)::

    derived/manifest.json                                the state in force (atomically replaced)
    derived/messages/sent=YYYY-MM-DD/d-<ns>.parquet      messages sent that UTC day
    derived/messages/sent=YYYY-MM-DD/hHH-<ns>.parquet    ... that hour, on the current UTC day
    derived/messages/sent=none/u-<ns>.parquet            events and send records of no stored message (above)
    derived/{rollup,hist,latency,clicks,replies,cost,subhist,sublatency}/<same name>   companions of each messages file
    derived.lock                                         flock: one updater at a time

Messages files are immutable, sorted by ``id_hash`` (DuckDB's ``hash(delivery_message_id)``:
:class:`IdIndex` finds a message's row from it), and replaced by new files with new names.
The current day is split by sent hour so that absorbing fresh receipts rewrites small files;
a day that turns cold is coalesced into one file. Each messages file has companions,
written with it, that the dashboard reads instead of the messages when the file lies inside a
query's range: ``rollup`` (message counts per 15-minute sent slot, campaign, outcome, last
status and label set, :func:`rollup_sql`), ``hist`` (latency counts per bucket,
:func:`hist_sql`) and ``latency`` (every latency, sorted by bucket, :func:`latency_values_sql`);
``clicks`` and ``replies`` hold every distinct event of the file's messages with the message's
columns and row number (:func:`clicks_companion_sql`, :func:`replies_companion_sql`), sorted by
sent time: the funnel's questions filter and count them, and skip the rows of messages the
reader's fresh tail supersedes. ``cost`` holds message counts and summed cost per campaign,
outcome, last status, label set, currency, country, network, sender ID, route and whether the
message has a send record (:func:`cost_rollup_sql`); ``subhist`` and ``sublatency`` are
``hist`` and ``latency`` for the time from submission (:func:`submission_view_sql`), the values
by those dimensions too (:data:`SUBMISSION_GROUPS`).

The manifest (:class:`Manifest`) lists the files in force, the receipt files absorbed, and
files retired by a rewrite: those are deleted only after :data:`GRACE_SECONDS`, so that a
reader holding an older manifest can finish its query.

:func:`update_derived` absorbs receipt files not absorbed yet (the maintenance process calls
it every few seconds): it merges their messages' partial state with the stored rows of the
same messages (a late receipt may belong to a message sent days ago) and rewrites the files
concerned. :func:`rebuild_derived` recomputes everything from the raw receipts (``dlrlens
rebuild``); both give the same state, row for row.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from dlrlens.store import events, layout
from dlrlens.store.sql import LATENCY_THRESHOLDS
from dlrlens.store.compaction import OUTPUT_PREFIX, lineage
from dlrlens.store.files import locked, publishing

log = logging.getLogger("dlrlens.collector")

UTC = timezone.utc
DERIVED_DIR = "derived"
MESSAGES_DIR = f"{DERIVED_DIR}/messages"
SENDS_DIR = "sends"  # dlrlens.store.sends.SENDS_DIR (that module imports this one)
MANIFEST_NAME = "manifest.json"
LOCK_NAME = "derived.lock"
SPILL_DIR = Path("tmp") / "derive"
SENT_PREFIX = "sent="
UNPLACED_KEY = f"{SENT_PREFIX}none/u"  # the file of rows with events but no receipt (no sent time)
FORMAT = 3  # 2: clicks and replies absorbed; 3: send records absorbed (log_* columns; companions cost, sub*)

GRACE_SECONDS = 600.0  # retired derived files outlive the manifest that dropped them this long
HOT_DAYS = 1  # the current UTC day is kept as one file per sent hour (fresh receipts rewrite small files)
MAX_BATCH_ROWS = 5_000_000  # receipt rows absorbed per update at most (bounded time and memory)
REBUILD_BUCKET_ROWS = 8_000_000  # a rebuild groups this many receipts by message at a time
ROW_GROUP_ROWS = 65_536
HASH_PROBE_TEXT = "dlrlens-id-hash-probe"

# Settings of the DuckDB connection used by updates inside the collector (small: it shares the
# machine with the webhook) and by rebuilds (the whole machine, spilling to disk).
UPDATE_SETTINGS = {"threads": 1, "memory_limit": "1GB"}
REBUILD_SETTINGS = {"memory_limit": "4GB"}

# --------------------------------------------------------------------------- SQL

# A "unit" is a partial state of one message: delivery_message_id, first_key, campaign_key,
# batch_key, cref_key, final_key, latest_key (lexicographic struct keys), first_delivered,
# max_pending, label_sets. A receipt row is a unit; units merge with combine_sql.
# The stored columns of a message's send record, with their field in SEND_ITEM.
SEND_FIELDS = {"log_from_log": "p", "log_modified": "m", "log_created": "c", "log_status": "s", "originator": "o",
               "route_id": "rt", "cost": "co", "currency": "cu", "log_campaign_id": "ci", "country": "n",
               "network": "w", "recipient_masked": "k"}
SEND_COLUMNS = tuple(SEND_FIELDS)
STORED_COLUMNS = (
    # what queries read
    "id_hash", "delivery_message_id", "sent_at", "campaign", "outcome", "last_status", "latency_us",
    "regression", "final_created", "first_delivered_at", "batch_id", "client_reference", "label_sets",
    # the rest of the mergeable state
    "first_received", "campaign_label", "campaign_created", "campaign_received", "batch_created",
    "batch_received", "cref_created", "cref_received", "final_received", "final_status", "final_category",
    "latest_created", "latest_received", "latest_status", "max_pending_created",
    # the message's clicks and replies (see "Clicks and replies" in the module docstring)
    "click_list", "reply_list",
    # the message's send record (see "Send records" in the module docstring)
    *SEND_COLUMNS,
)

# One click / reply as a list element of the state. Struct order is sort order: a click list
# sorted by (click_id, received_at, ...) puts a click's copies together, in arrival order; a
# reply list by (reply_id, received_at, created), the first received copy first.
CLICK_ITEM = ("STRUCT(i VARCHAR, r TIMESTAMPTZ, b VARCHAR, f VARCHAR, u VARCHAR, w VARCHAR, o VARCHAR, "
              "n VARCHAR)")  # click_id, received_at, batch_id, client_ref, url, browser, os, country
REPLY_ITEM = ("STRUCT(i VARCHAR, r TIMESTAMPTZ, c TIMESTAMPTZ, l VARCHAR, h VARCHAR, x BOOLEAN)")
# reply_id, received_at, created, logical_message_id, originator_hash, opt_out
# A message's MT send record as a mergeable key: the max picks the message log's record over
# the history's (p), then one with a modified time (hm) and the latest (m), then the latest
# created (c); the other fields only break ties, deterministically.
SEND_ITEM = ("STRUCT(p BOOLEAN, hm BOOLEAN, m TIMESTAMPTZ, c TIMESTAMPTZ, s VARCHAR, o VARCHAR, rt VARCHAR, "
             "co DOUBLE, cu VARCHAR, ci VARCHAR, n VARCHAR, w VARCHAR, k VARCHAR)")
NO_SEND = f"NULL::{SEND_ITEM}"
NO_CLICKS = f"[]::{CLICK_ITEM}[]"
NO_REPLIES = f"[]::{REPLY_ITEM}[]"
# The delivered time of a delivered message, from stored columns (NULL otherwise).
DELIVERED_AT_SQL = "CASE WHEN outcome = 'delivered' THEN coalesce(first_delivered_at, final_created) END"


def receipt_units_sql(source: str, events: bool = True) -> str:
    """Units from stored receipt rows of ``source`` (a table, view or ``read_parquet(...)``);
    without the event lists and send record when not ``events`` (receipts only, e.g. for other
    engines: :mod:`dashboard.engine_sql`)."""
    return f"""
        SELECT delivery_message_id,
               {{'c': created, 'r': received_at}} AS first_key,
               CASE WHEN nullif(trim(campaign), '') IS NOT NULL
                    THEN {{'c': created, 'r': received_at, 'v': trim(campaign)}} END AS campaign_key,
               CASE WHEN batch_id IS NOT NULL THEN {{'c': created, 'r': received_at, 'v': batch_id}} END AS batch_key,
               CASE WHEN client_reference IS NOT NULL
                    THEN {{'c': created, 'r': received_at, 'v': client_reference}} END AS cref_key,
               CASE WHEN category <> 'pending'
                    THEN {{'c': created, 'r': received_at, 's': status, 'k': category}} END AS final_key,
               {{'c': created, 'r': received_at, 's': status}} AS latest_key,
               CASE WHEN category = 'delivered' THEN created END AS first_delivered,
               CASE WHEN category = 'pending' THEN created END AS max_pending,
               [coalesce(labels, '{{}}')] AS label_sets
               {f", {NO_CLICKS} AS click_list, {NO_REPLIES} AS reply_list, {NO_SEND} AS send_key" if events else ""}
        FROM {source}
    """


def _event_unit_sql(message_id: str, click_list: str, reply_list: str, source: str, where: str = "TRUE",
                    send_key: str = NO_SEND) -> str:
    """Units of event (or send record) rows of ``source``: a message id and its click / reply
    list (send key), nothing else."""
    return f"""
        SELECT {message_id} AS delivery_message_id,
               NULL::STRUCT(c TIMESTAMPTZ, r TIMESTAMPTZ) AS first_key,
               NULL::STRUCT(c TIMESTAMPTZ, r TIMESTAMPTZ, v VARCHAR) AS campaign_key,
               NULL::STRUCT(c TIMESTAMPTZ, r TIMESTAMPTZ, v VARCHAR) AS batch_key,
               NULL::STRUCT(c TIMESTAMPTZ, r TIMESTAMPTZ, v VARCHAR) AS cref_key,
               NULL::STRUCT(c TIMESTAMPTZ, r TIMESTAMPTZ, s VARCHAR, k VARCHAR) AS final_key,
               NULL::STRUCT(c TIMESTAMPTZ, r TIMESTAMPTZ, s VARCHAR) AS latest_key,
               NULL::TIMESTAMPTZ AS first_delivered, NULL::TIMESTAMPTZ AS max_pending,
               []::VARCHAR[] AS label_sets, {click_list} AS click_list, {reply_list} AS reply_list,
               {send_key} AS send_key
        FROM {source} WHERE {where}
    """


def click_units_sql(source: str) -> str:
    """Units from stored click rows of ``source``: each belongs to its ``message_id`` (NULL:
    to the one row of clicks without one)."""
    item = "{'i': click_id, 'r': received_at, 'b': batch_id, 'f': client_ref, 'u': url, 'w': browser, 'o': os, 'n': country}"
    return _event_unit_sql("message_id", f"[{item}]::{CLICK_ITEM}[]", NO_REPLIES, source)


def reply_units_sql(source: str, keywords: tuple[str, ...]) -> str:
    """Units from stored reply rows of ``source``: each belongs to its ``in_reply_to`` (NULL: to
    the one row of replies without one); ``x``: whether its text is one of ``keywords``."""
    item = (f"{{'i': reply_id, 'r': received_at, 'c': created, 'l': logical_message_id, 'h': originator_hash, "
            f"'x': {events.opt_out_sql('body', keywords)}}}")
    return _event_unit_sql("in_reply_to", NO_CLICKS, f"[{item}]::{REPLY_ITEM}[]", source)


# Each SEND_ITEM field from a send record (a dlrlens.store.sends.SEND_SCHEMA row).
SEND_RECORD_FIELDS = {"p": "source = 'log'", "hm": "modified IS NOT NULL", "m": "modified", "c": "created",
                      "s": "status", "o": "originator", "rt": "route_id", "co": "cost", "cu": "currency",
                      "ci": "campaign_id", "n": "country", "w": "network", "k": "recipient_masked"}


def send_units_sql(source: str) -> str:
    """Units from stored send records of ``source`` (:data:`dlrlens.store.sends.SEND_SCHEMA`
    rows): each MT record belongs to its ``message_id`` (an MO record is no message of ours)."""
    key = _send_key_sql(SEND_RECORD_FIELDS)
    return _event_unit_sql("message_id", NO_CLICKS, NO_REPLIES, source, "coalesce(direction, 'MT') = 'MT'", key)


def _send_key_sql(fields: dict[str, str]) -> str:
    """A :data:`SEND_ITEM` from {field: SQL expression} (fields in the item's order)."""
    order = ("p", "hm", "m", "c", "s", "o", "rt", "co", "cu", "ci", "n", "w", "k")
    return "{" + ", ".join(f"'{k}': {fields[k]}" for k in order) + f"}}::{SEND_ITEM}"


def state_units_sql(source: str) -> str:
    """Units from stored derived rows of ``source`` (expands the flat, NULL-when-implied columns)."""
    return f"""
        SELECT delivery_message_id,
               CASE WHEN sent_at IS NOT NULL THEN {{'c': sent_at, 'r': first_received}} END AS first_key,
               CASE WHEN campaign_label IS NOT NULL
                    THEN {{'c': coalesce(campaign_created, sent_at), 'r': coalesce(campaign_received, first_received),
                          'v': campaign_label}} END AS campaign_key,
               CASE WHEN batch_id IS NOT NULL
                    THEN {{'c': coalesce(batch_created, sent_at), 'r': coalesce(batch_received, first_received),
                          'v': batch_id}} END AS batch_key,
               CASE WHEN client_reference IS NOT NULL
                    THEN {{'c': coalesce(cref_created, sent_at), 'r': coalesce(cref_received, first_received),
                          'v': client_reference}} END AS cref_key,
               CASE WHEN final_category IS NOT NULL
                    THEN {{'c': final_created, 'r': final_received, 's': final_status, 'k': final_category}}
                    END AS final_key,
               CASE WHEN latest_status IS NOT NULL
                    THEN {{'c': latest_created, 'r': latest_received, 's': latest_status}} END AS latest_key,
               coalesce(first_delivered_at, CASE WHEN final_category = 'delivered' THEN final_created END)
                   AS first_delivered,
               max_pending_created AS max_pending,
               from_json(label_sets, '["VARCHAR"]') AS label_sets,
               coalesce(click_list, {NO_CLICKS}) AS click_list,
               coalesce(reply_list, {NO_REPLIES}) AS reply_list,
               CASE WHEN log_created IS NOT NULL THEN {_send_key_sql({
                   **{key: column for column, key in SEND_FIELDS.items()}, "hm": "log_modified IS NOT NULL"})}
                    END AS send_key
        FROM {source}
    """


_COMBINE_EVENTS = """, list_sort(list_distinct(flatten(list(click_list)))) AS click_list,
               list_sort(list_distinct(flatten(list(reply_list)))) AS reply_list,
               max(send_key) AS send_key"""
_FINISH_EVENTS = """, CASE WHEN len(click_list) > 0 THEN click_list END AS click_list,
               CASE WHEN len(reply_list) > 0 THEN reply_list END AS reply_list, """ + ", ".join(
    f"send_key.{key} AS {column}" for column, key in SEND_FIELDS.items())


def combine_sql(units: str, events: bool = True) -> str:
    """Merge the units of ``units`` (a query) into one unit per message (``events``: as
    :func:`receipt_units_sql`)."""
    grouped = f"""
        SELECT delivery_message_id,
               min(first_key) AS first_key,
               min(campaign_key) AS campaign_key,
               min(batch_key) AS batch_key,
               min(cref_key) AS cref_key,
               max(final_key) AS final_key,
               max(latest_key) AS latest_key,
               min(first_delivered) AS first_delivered,
               max(max_pending) AS max_pending,
               list_sort(list_distinct(flatten(list(label_sets)))) AS label_sets
               {_COMBINE_EVENTS if events else ""}
        FROM ({units}) GROUP BY delivery_message_id
    """
    if not events:
        return grouped
    # Of each reply only its first received copy is kept (the list is sorted by reply_id, then
    # received_at): still mergeable, a later copy never replaces it.
    return f"""
        SELECT * REPLACE (list_filter(reply_list, lambda x, i: i = 1 OR x.i <> reply_list[i - 1].i) AS reply_list)
        FROM ({grouped})
    """


def _label_key(name: str, key: str) -> str:
    """Stored created/received of a label key: NULL when it is the message's first row."""
    differs = f"({key}.c <> first_key.c OR {key}.r <> first_key.r)"
    return (f"CASE WHEN {differs} THEN {key}.c END AS {name}_created, "
            f"CASE WHEN {differs} THEN {key}.r END AS {name}_received")


def finish_sql(units: str, extra: str = "", events: bool = True) -> str:
    """Stored derived rows (:data:`STORED_COLUMNS`, then ``extra`` expressions) from combined
    units (``events``: as :func:`receipt_units_sql`; without, no event lists)."""
    return f"""
        SELECT hash(delivery_message_id) AS id_hash,
               delivery_message_id,
               first_key.c AS sent_at,
               coalesce(campaign_key.v, batch_key.v, '(none)') AS campaign,
               coalesce(final_key.k, 'pending') AS outcome,
               coalesce(final_key.s, latest_key.s) AS last_status,
               CASE WHEN final_key.k = 'delivered' AND first_delivered > first_key.c
                    THEN epoch_us(first_delivered) - epoch_us(first_key.c) END AS latency_us,
               coalesce(max_pending > final_key.c, false) AS regression,
               final_key.c AS final_created,
               CASE WHEN final_key.k = 'delivered' AND first_delivered = final_key.c THEN NULL
                    ELSE first_delivered END AS first_delivered_at,
               batch_key.v AS batch_id,
               cref_key.v AS client_reference,
               to_json(label_sets)::VARCHAR AS label_sets,
               first_key.r AS first_received,
               campaign_key.v AS campaign_label,
               {_label_key('campaign', 'campaign_key')},
               {_label_key('batch', 'batch_key')},
               {_label_key('cref', 'cref_key')},
               final_key.r AS final_received,
               final_key.s AS final_status,
               final_key.k AS final_category,
               CASE WHEN final_key IS NULL THEN latest_key.c END AS latest_created,
               CASE WHEN final_key IS NULL THEN latest_key.r END AS latest_received,
               CASE WHEN final_key IS NULL THEN latest_key.s END AS latest_status,
               CASE WHEN max_pending <= final_key.c THEN NULL ELSE max_pending END AS max_pending_created
               {_FINISH_EVENTS if events else ""}
               {extra}
        FROM ({units})
    """


def merge_sql(*unit_queries: str, extra: str = "", events: bool = True) -> str:
    """Stored derived rows merging every message's units from all ``unit_queries``."""
    return finish_sql(combine_sql(" UNION ALL ".join(f"({q})" for q in unit_queries), events), extra, events)


# The send record columns of a message the queries use (NULL: no MT send record).
SEND_VIEW_COLUMNS = ("log_created", "log_status", "cost", "currency", "country", "network", "originator", "route_id",
                     "log_campaign_id", "recipient_masked")


def messages_view_sql(source: str, sends: bool = True) -> str:
    """The per-message columns queries use, from stored derived rows of ``source`` (with the
    send record's :data:`SEND_VIEW_COLUMNS` unless not ``sends``: rows merged without them)."""
    return f"""
        SELECT delivery_message_id, campaign, batch_id, client_reference, sent_at, outcome,
               CASE WHEN outcome = 'failed' THEN last_status END AS reason,
               last_status, final_created,
               {DELIVERED_AT_SQL} AS delivered_at,
               latency_us, latency_us / 1e6 AS latency_s, regression::INTEGER AS regressions, label_sets
               {"".join(", " + c for c in SEND_VIEW_COLUMNS) if sends else ""}
        FROM {source} WHERE sent_at IS NOT NULL
    """


# Companions of each messages file: pre-aggregates the dashboard reads instead of the messages
# when a file lies wholly inside a query's range (same name under derived/<kind>/).
COMPANIONS = ("rollup", "hist", "latency", "clicks", "replies", "cost", "subhist", "sublatency")
SLOT_MICROS = 15 * 60 * 1_000_000  # rollup time slots: every zone's hours and days are unions of them
LATENCY_BUCKET_BITS = 5  # latency buckets: 2**5 per octave of microseconds


def within_sql(latency_s: str = "latency_s") -> str:
    """The :data:`LATENCY_THRESHOLDS` counts (``count(*) FILTER (...) AS within_...``) over the
    latency in seconds ``latency_s``."""
    return ", ".join(f"count(*) FILTER (WHERE {latency_s} <= {seconds}) AS {name}"
                     for name, seconds in LATENCY_THRESHOLDS)


def latency_bucket_sql(x: str = "latency_us") -> str:
    """An integer bucket of the positive BIGINT ``x``, exactly monotone (integer arithmetic on
    the exact floor(log2(x))): values below 2**bits are their own bucket, above the octave
    and the next ``bits`` bits decide."""
    bits = LATENCY_BUCKET_BITS
    guess = f"floor(log2({x}))::INTEGER"
    exponent = (f"({guess} - ({x} < (1::BIGINT << {guess}))::INTEGER "
                f"+ ({x} >= (1::BIGINT << ({guess} + 1)))::INTEGER)")
    return (f"(CASE WHEN {x} < {1 << bits} THEN {x} "
            f"ELSE ({exponent} << {bits}) + (({x} >> ({exponent} - {bits})) & {(1 << bits) - 1}) END)")


def slot_sql(column: str = "sent_at") -> str:
    """Start of the 15-minute UTC slot holding ``column``."""
    return f"to_timestamp((epoch_us({column}) // {SLOT_MICROS}) * {SLOT_MICROS // 1_000_000})"


def rollup_sql(view: str, t: str | None = None) -> str:
    """Message counts of the messages ``view`` (:func:`messages_view_sql` columns) per time
    ``t`` (default the 15-minute slot), campaign, outcome, last status and label set: the
    additive pieces of every count the dashboard shows."""
    t = t or slot_sql()
    return f"""
        SELECT {t} AS t, campaign, outcome, last_status, label_sets,
               count(*) AS messages,
               count(latency_us) AS latency_messages,
               {within_sql()},
               count(*) FILTER (WHERE outcome = 'delivered' AND latency_us IS NULL) AS delivered_without_earlier,
               sum(regressions)::BIGINT AS regressions
        FROM ({view}) GROUP BY ALL
    """


LATENCY_GROUPS = "campaign, label_sets, last_status"  # the columns latencies are counted by
# ... and the times from submission (submission_view_sql): its histogram (subhist) by these, its
# values (sublatency) also by the send record's dimensions. The histogram by every dimension had
# 20.7 M rows at 100 M receipts (0.5 per message: the dimensions multiply), so a percentile under
# a country, network, sender or route filter counts the values instead.
SUBMISSION_HIST_GROUPS = "campaign, label_sets, last_status, currency"
SUBMISSION_GROUPS = f"{SUBMISSION_HIST_GROUPS}, country, network, originator, route_id"


def hist_sql(view: str, groups: str = LATENCY_GROUPS) -> str:
    """Latencies (``latency_us``) of the messages ``view`` counted per ``groups`` and latency
    bucket."""
    return f"""
        SELECT {groups}, {latency_bucket_sql()} AS b, count(*) AS n
        FROM ({view}) WHERE latency_us IS NOT NULL GROUP BY ALL
    """


def latency_values_sql(view: str, groups: str = LATENCY_GROUPS) -> str:
    """Every latency of the messages ``view`` with its bucket and ``groups`` columns."""
    return f"""
        SELECT {latency_bucket_sql()} AS b, latency_us, {groups}
        FROM ({view}) WHERE latency_us IS NOT NULL
    """


def submission_view_sql(view: str, extra: str = "") -> str:
    """The time from submission of the messages ``view`` as ``latency_us``: first DELIVERED
    receipt minus the send record's created time, of delivered messages whose send record was
    created before (the rest have none); with :data:`SUBMISSION_GROUPS` (and ``extra``, e.g.
    ``sent_at, ``)."""
    return f"""
        SELECT {extra}{SUBMISSION_GROUPS}, epoch_us(delivered_at) - epoch_us(log_created) AS latency_us
        FROM ({view}) WHERE outcome = 'delivered' AND delivered_at > log_created
    """


# What the cost figures are counted by (cost_rollup_sql).
COST_GROUPS = "campaign, outcome, last_status, label_sets, currency, country, network, originator, route_id, in_log"


def cost_rollup_sql(view: str, extra: str = "") -> str:
    """Messages, the sum of their cost and how many have a cost (``priced``: a sum over none is
    empty, not 0) per :data:`COST_GROUPS` (``in_log``: whether the message has an MT send
    record; and ``extra``, e.g. ``sent_at, ``) of the messages ``view``: the additive pieces of
    the cost and "where" figures (``dashboard/queries/cost.py``)."""
    return f"""
        SELECT {extra}{COST_GROUPS.replace("in_log", "log_created IS NOT NULL AS in_log")},
               count(*) AS messages, sum(cost) AS cost, count(cost) AS priced
        FROM ({view}) GROUP BY ALL
    """


# The columns of a message that filters and funnel figures use, beside each of its events.
EVENT_MESSAGE_COLUMNS = "m_row, id_hash, sent_at, campaign, outcome, last_status, label_sets"
CLICK_FIELDS = {"click_id": "i", "received_at": "r", "batch_id": "b", "client_ref": "f", "url": "u", "browser": "w",
                "os": "o", "country": "n"}
REPLY_FIELDS = {"reply_id": "i", "received_at": "r", "created": "c", "logical_message_id": "l",
                "originator_hash": "h", "opt_out": "x"}


def click_rows_sql(rows: str, columns: str, fields: tuple[str, ...], placed: bool) -> str:
    """The distinct clicks (:mod:`dlrlens.store.events`: copies of a click within
    CLICK_RETRY_SECONDS of the previous copy are that click; its first copy counts) of the
    stored rows ``rows``, one row each: ``columns`` of the row, then ``fields`` of the click (names
    of :data:`CLICK_FIELDS`). ``placed``: rows of messages (with receipts), else rows without."""
    retry = events.CLICK_RETRY_SECONDS * 1_000_000
    distinct = (f"list_filter(click_list, lambda x, i: i = 1 OR x.i <> click_list[i - 1].i "
                f"OR epoch_us(x.r) - epoch_us(click_list[i - 1].r) > {retry})")
    return _event_rows_sql(rows, columns, "click_list", distinct, CLICK_FIELDS, fields, placed)


def reply_rows_sql(rows: str, columns: str, fields: tuple[str, ...], placed: bool) -> str:
    """:func:`click_rows_sql` for the distinct replies (names of :data:`REPLY_FIELDS`)."""
    return _event_rows_sql(rows, columns, "reply_list", "reply_list", REPLY_FIELDS, fields, placed)


def _event_rows_sql(rows: str, columns: str, column: str, items: str, names: dict, fields, placed: bool) -> str:
    picked = ", ".join(f"e.{names[f]} AS {f}" for f in fields)
    where = "sent_at IS NOT NULL" if placed else "sent_at IS NULL"
    return f"""
        SELECT * EXCLUDE (e), {picked}
        FROM (SELECT {columns}, unnest({items}) AS e FROM {rows} WHERE {column} IS NOT NULL AND {where})
    """


# The values the funnel counts clicks by (the breakdowns' groups and the first_* flags).
CLICK_DIMENSIONS = {
    "url": "coalesce(url, '(none)')",
    "country": "coalesce(NULLIF(trim(country), ''), '(unknown)')",
    "os": "coalesce(NULLIF(trim(os), ''), '(unknown)')",
    "browser": "coalesce(NULLIF(trim(browser), ''), '(unknown)')",
}
# Columns computed per click from its message's clicks (click_flags_sql), with their types.
CLICK_FLAGS = {"first_click": "BOOLEAN", **{f"first_{name}": "BOOLEAN" for name in CLICK_DIMENSIONS},
               "first_click_delay_us": "BIGINT", "click_slot": "BIGINT"}


def click_flags_sql(rows: str, message: str) -> str:
    """``rows`` (clicks with received_at, url, browser, os, country and their message's outcome
    and delivered_at) with :data:`CLICK_FLAGS`: ``first_click`` marks the earliest click of its
    message (``message``: a column naming it), ``first_<dimension>`` its earliest click of each
    value of :data:`CLICK_DIMENSIONS`; ``first_click_delay_us``: delivery to that first click of
    a delivered message (else NULL); ``click_slot``: the click's 15-minute slot number (epoch
    microseconds // :data:`SLOT_MICROS`). Counting flagged rows counts distinct messages, so per
    value and per time slot the counts add up: a distinct count over 5 M clicks cost 1-2.5 s of
    CPU per question at 100 M receipts, a flag count 0.2 s; the delay and slot columns spare
    decoding two timestamp columns per question (0.3 -> 0.15 s)."""
    order = "received_at, url, browser, os, country"
    flags = ", ".join(f"row_number() OVER (PARTITION BY {message}, {expr} ORDER BY {order}) = 1 AS first_{name}"
                      for name, expr in CLICK_DIMENSIONS.items())
    return f"""
        SELECT *, CASE WHEN first_click AND outcome = 'delivered'
                       THEN epoch_us(received_at) - epoch_us(delivered_at) END AS first_click_delay_us,
               epoch_us(received_at) // {SLOT_MICROS} AS click_slot
        FROM (SELECT *, row_number() OVER (PARTITION BY {message} ORDER BY {order}) = 1 AS first_click, {flags}
              FROM ({rows}))
    """


# The columns of the messages events are linked against at query time (linked_clicks_at_query_sql).
LINKED_MESSAGE_COLUMNS = ("delivery_message_id, batch_id, client_reference, campaign, sent_at, outcome, last_status, "
                          "label_sets, delivered_at")
_LINKED_MESSAGE = "m.delivery_message_id, m.campaign, m.sent_at, m.outcome, m.last_status, m.label_sets"
CLICK_COLUMNS = "click_id, received_at, message_id, batch_id, client_ref, url, browser, os, country"
REPLY_COLUMNS = "reply_id, created, received_at, in_reply_to, logical_message_id, body, originator_hash"


def linked_clicks_at_query_sql(clicks: str, messages: str) -> str:
    """The distinct clicks ``clicks`` (:data:`CLICK_COLUMNS` of
    :func:`dlrlens.store.events.distinct_clicks_sql`) linked at query time against ``messages``
    (a table or CTE name with :data:`LINKED_MESSAGE_COLUMNS`: every message), with the columns
    of :meth:`dlrlens.store.reader.Store.linked_clicks_sql` (and ``delivery_message_id``): the
    straightforward link, without the derived state (the test oracle's, other engines')."""
    linked = f"""
        SELECT CASE WHEN lc.linked_id IS NOT NULL THEN hash(lc.linked_id) END AS message_key, lc.linked_by,
               {_LINKED_MESSAGE}, m.delivered_at, lc.received_at, lc.url, lc.browser, lc.os, lc.country
        FROM ({events.linked_clicks_sql(clicks, messages)}) lc LEFT JOIN {messages} m ON m.delivery_message_id = lc.linked_id"""
    return click_flags_sql(linked, "message_key")


def linked_replies_at_query_sql(replies: str, messages: str, keywords: tuple[str, ...]) -> str:
    """:func:`linked_clicks_at_query_sql` for the distinct replies ``replies``
    (:data:`REPLY_COLUMNS`), opt-outs by ``keywords``: the columns of
    :meth:`dlrlens.store.reader.Store.linked_replies_sql` (a batch-linked reply with its
    batch's first sent message's)."""
    return f"""
        WITH firsts AS (SELECT batch_id, arg_min(delivery_message_id, (sent_at, delivery_message_id)) AS first_id
                        FROM {messages} WHERE batch_id IS NOT NULL GROUP BY ALL),
        lr AS ({events.linked_replies_sql(replies, messages, keywords)})
        SELECT CASE WHEN coalesce(lr.linked_id, b.first_id) IS NOT NULL
                    THEN hash(coalesce(lr.linked_id, b.first_id)) END AS message_key,
               lr.linked_id, lr.linked_by,
               CASE WHEN lr.linked_id IS NOT NULL THEN lr.linked_id
                    ELSE lr.linked_batch || chr(31) || coalesce(lr.originator_hash, lr.reply_id) END AS replier,
               {_LINKED_MESSAGE}, lr.reply_id, lr.created, lr.received_at, lr.opt_out
        FROM lr LEFT JOIN firsts b ON b.batch_id = lr.linked_batch
                LEFT JOIN {messages} m ON m.delivery_message_id = coalesce(lr.linked_id, b.first_id)"""


def clicks_companion_sql(rows: str) -> str:
    """The ``clicks`` companion of the stored rows ``rows`` (with ``m_row``): every distinct
    click of its messages with the message's columns and :data:`CLICK_FLAGS`, what the Funnel
    page filters and counts."""
    clicks = click_rows_sql(rows, f"{EVENT_MESSAGE_COLUMNS}, {DELIVERED_AT_SQL} AS delivered_at, "
                                  f"delivery_message_id AS flag_message",
                            ("received_at", "url", "browser", "os", "country"), placed=True)
    return f"SELECT * EXCLUDE (flag_message) FROM ({click_flags_sql(clicks, 'flag_message')})"


def replies_companion_sql(rows: str) -> str:
    """The ``replies`` companion: every distinct reply to the messages of ``rows`` (by
    inReplyTo) with the message's columns (and id and batch: batch-linked replies of the same
    number are matched against these, see :func:`dlrlens.store.events.linked_replies_sql`)."""
    return reply_rows_sql(rows, f"{EVENT_MESSAGE_COLUMNS}, delivery_message_id, batch_id",
                          ("reply_id", "created", "received_at", "originator_hash", "opt_out"), placed=True)


def companion_path(path: str, kind: str) -> str:
    """The ``kind`` companion of the messages file ``path`` (relative to the data directory)."""
    return f"{DERIVED_DIR}/{kind}/" + path[len(MESSAGES_DIR) + 1:]


def receipt_sql_types() -> dict[str, str]:
    """{column: DuckDB type} of the receipt columns (:data:`dlrlens.store.layout.RECEIPT_SCHEMA`)."""
    types = {"string": "VARCHAR", "int32": "INTEGER", "timestamp[us, tz=UTC]": "TIMESTAMPTZ"}
    return {f.name: types[str(f.type)] for f in layout.RECEIPT_SCHEMA}


def empty_receipts_sql() -> str:
    """A query with the receipt columns (:data:`dlrlens.store.layout.RECEIPT_SCHEMA`) and no rows."""
    columns = ", ".join(f"NULL::{sql_type} AS {name}" for name, sql_type in receipt_sql_types().items())
    return f"SELECT {columns} WHERE FALSE"


def parquet_source(param: str = "files") -> str:
    """``read_parquet`` over the receipt (or derived) files bound to ``$param``."""
    return f"read_parquet(${param}, hive_partitioning = false, union_by_name = true)"


# --------------------------------------------------------------------------- DuckDB


def connect(settings: dict | None = None, spill_dir: Path | None = None):
    """A DuckDB connection in UTC, without progress bar, with ``settings`` (threads, memory)."""
    import duckdb

    config = {k: v for k, v in (settings or {}).items()}
    if spill_dir is not None:
        # DuckDB creates the directory itself when it first spills (its parent must exist).
        spill_dir.parent.mkdir(parents=True, exist_ok=True)
        config["temp_directory"] = str(spill_dir)
    con = duckdb.connect(":memory:", config=config)
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    return con


def hash_probe(con) -> int:
    """This DuckDB's ``hash`` of a fixed text: files hashed by another version are recognised."""
    return int(con.execute("SELECT hash($t)", {"t": HASH_PROBE_TEXT}).fetchone()[0])


# --------------------------------------------------------------------------- manifest


@dataclass
class DerivedFile:
    """One derived file in force: ``path`` relative to the data directory."""

    path: str
    rows: int
    sent_min_us: int
    sent_max_us: int

    @cached_property
    def day(self) -> str:
        return Path(self.path).parent.name[len(SENT_PREFIX):]

    @cached_property
    def kind(self) -> str:
        """``d`` (a whole sent day) or ``hHH`` (one sent hour)."""
        return Path(self.path).name.split("-", 1)[0]

    @cached_property
    def placed(self) -> bool:
        """False for the file of rows with events but no receipt (:data:`UNPLACED_KEY`): not
        messages, no sent time; only the funnel's unlinked events read it."""
        return self.kind != "u"

    @cached_property
    def range_us(self) -> tuple[int, int]:
        """[start, end) of the sent times this file's key covers, in epoch microseconds."""
        if not self.placed:
            return -1, -1
        day = int(datetime.strptime(self.day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()) * 1_000_000
        if self.kind == "d":
            return day, day + 86_400_000_000
        hour = day + int(self.kind[1:]) * 3_600_000_000
        return hour, hour + 3_600_000_000


@dataclass
class Manifest:
    """``derived/manifest.json``: what the derived state holds (see the module docstring).

    ``version`` grows by one with every change; ``absorbed`` holds receipt file paths relative
    to the data directory; ``retired`` maps derived files no longer in force to when they were
    retired (epoch seconds); ``hash_probe`` is :func:`hash_probe` of the writer.
    """

    version: int = 0
    files: list[DerivedFile] = field(default_factory=list)
    absorbed: set[str] = field(default_factory=set)
    retired: dict[str, float] = field(default_factory=dict)
    hash_probe: int | None = None
    updated_at: str = ""
    opt_out_keywords: tuple[str, ...] = ()  # the keywords replies were matched with (reply_list's x)
    send_stamps: dict[str, int] = field(default_factory=dict)  # send file -> latest changed_at absorbed (epoch us)

    @staticmethod
    def path(data_dir: Path) -> Path:
        return Path(data_dir) / DERIVED_DIR / MANIFEST_NAME

    @classmethod
    def load(cls, data_dir: Path) -> "Manifest | None":
        """The manifest in force, or None when there is none (or it is unreadable)."""
        try:
            raw = json.loads(cls.path(data_dir).read_bytes())
        except (OSError, ValueError):
            return None
        if raw.get("format") != FORMAT:
            return None
        return cls(version=int(raw["version"]),
                   files=[DerivedFile(**f) for f in raw["files"]],
                   absorbed=set(raw["absorbed"]),
                   retired={str(k): float(v) for k, v in raw.get("retired", {}).items()},
                   hash_probe=raw.get("hash_probe"),
                   updated_at=raw.get("updated_at", ""),
                   opt_out_keywords=tuple(raw.get("opt_out_keywords", ())),
                   send_stamps={str(k): int(v) for k, v in raw.get("send_stamps", {}).items()})

    def save(self, data_dir: Path) -> None:
        """Replace the manifest atomically (readers see the old one or this one)."""
        self.updated_at = datetime.now(UTC).isoformat()
        body = {"format": FORMAT, "version": self.version, "updated_at": self.updated_at,
                "hash_probe": self.hash_probe, "opt_out_keywords": list(self.opt_out_keywords),
                "files": [{"path": f.path, "rows": f.rows, "sent_min_us": f.sent_min_us, "sent_max_us": f.sent_max_us}
                          for f in sorted(self.files, key=lambda f: f.path)],
                "absorbed": sorted(self.absorbed),
                "send_stamps": dict(sorted(self.send_stamps.items())),
                "retired": dict(sorted(self.retired.items()))}
        layout.atomic_write_bytes(self.path(data_dir), json.dumps(body, separators=(",", ":")).encode())


# --------------------------------------------------------------------------- receipt files


LISTING_SETTLE_SECONDS = 2.0  # a partition directory changed this recently is listed again (receipt_files)


def receipt_files(data_dir: Path, listings: dict | None = None) -> dict[str, tuple[int, int]]:
    """{path relative to the data directory: (size, mtime_ns)} of every visible receipt file,
    by partition, then name; files (partitions) vanishing meanwhile are left out. The one
    listing of the receipt files: the maintenance absorbs them, the reader
    (:class:`dlrlens.store.reader.Store`) reads the ones not absorbed yet.

    ``listings``: a dict the caller keeps between calls (a reader listing at every query),
    updated here. A partition directory is then listed again only when its mtime changed
    (files are only ever added, renamed into place or removed, which all change it) or is
    recent (:data:`LISTING_SETTLE_SECONDS`: the kernel's timestamps are coarse, a change in the
    same tick would go unnoticed)."""
    root = layout.receipts_dir(Path(data_dir))
    now = time.time()
    found: dict[str, tuple[int, int]] = {}
    try:
        partitions = sorted(e.name for e in os.scandir(root)
                            if e.name.startswith(layout.PARTITION_PREFIX) and e.is_dir())
    except FileNotFoundError:
        return found
    if listings is None:
        for partition in partitions:
            found.update(partition_files(data_dir, partition))
        return found
    listed: dict[str, tuple[int, dict[str, tuple[int, int]]]] = {}
    for partition in partitions:
        try:
            mtime = os.stat(root / partition).st_mtime_ns
        except FileNotFoundError:
            continue
        cached = listings.get(partition)
        if cached is None or cached[0] != mtime or now - mtime / 1e9 < LISTING_SETTLE_SECONDS:
            cached = (mtime, partition_files(data_dir, partition))
        listed[partition] = cached
        found.update(cached[1])
    listings.clear()
    listings.update(listed)
    return found


SENDS_KEY = "sends"  # the send record files among the absorbed tables (units_sql, update_derived)


def send_files(data_dir: Path) -> dict[str, str]:
    """{path relative to the data directory: its key in the manifest's ``absorbed``} of every
    send record file (:mod:`dlrlens.store.sends`). A sync replaces a day's file when its records
    change, so the key holds the file's size and mtime: a replaced file is read again (its
    records stamped since, see :func:`units_sql`) and its old key pruned."""
    root = Path(data_dir) / SENDS_DIR
    found = {}
    for source in sorted(os.listdir(root)) if root.is_dir() else ():
        for name, (_, size, mtime_ns) in sorted(layout.visible_files(root / source).items()):
            if name.endswith(".parquet"):
                relative = f"{SENDS_DIR}/{source}/{name}"
                found[relative] = f"{relative}@{size}:{mtime_ns}"
    return found


def unabsorbed_send_files(listing: dict[str, str], absorbed: set[str]) -> list[str]:
    """The send files of ``listing`` (:func:`send_files`) whose current key ``absorbed`` lacks."""
    return [path for path, key in listing.items() if key not in absorbed]


def absorbed_keys(event_files: dict[str, list[str]], send_listing: dict[str, str]) -> set[str]:
    """The manifest's ``absorbed`` entries of the event files ``event_files`` ({table: relative
    paths}): a click or reply file by its path, a send file (:data:`SENDS_KEY`) by its key in
    ``send_listing``."""
    return ({p for table, found in event_files.items() if table != SENDS_KEY for p in found}
            | {send_listing[p] for p in event_files.get(SENDS_KEY, ())})


def latest_stamp(data_dir: Path, relative: str) -> int | None:
    """The latest ``changed_at`` (epoch microseconds) of the send file ``relative``, from its
    Parquet statistics; None without stamps."""
    try:
        metadata = pq.read_metadata(Path(data_dir) / relative)
    except OSError:
        return None
    found = _column_range(metadata, "changed_at")
    return found[1] if found else None


def partition_files(data_dir: Path, partition: str) -> dict[str, tuple[int, int]]:
    """:func:`receipt_files` of one partition directory (``date=YYYY-MM-DD``), sorted."""
    listed = layout.visible_files(layout.receipts_dir(Path(data_dir)) / partition)
    return {f"{layout.RECEIPTS_DIR}/{partition}/{name}": (size, mtime_ns)
            for name, (_, size, mtime_ns) in sorted(listed.items())}


def _compaction_inputs(data_dir: Path, relative: str) -> list[str] | None:
    """The inputs (relative paths) a compaction output was made from; None for other files."""

    path = Path(relative)
    if not path.name.startswith(OUTPUT_PREFIX):
        return None
    try:
        names = lineage(Path(data_dir) / path)
    except (OSError, ValueError):
        return None
    return [str(path.parent / name) for name in names] or None


def unabsorbed(data_dir: Path, listing: dict[str, tuple[int, int]], absorbed: set[str],
               reading: set[str] | None = None) -> tuple[list[str], list[str]]:
    """Split the visible receipt files not in ``absorbed`` into (to read, covered).

    A compaction output is *covered* (its rows are already in the state, or about to be) when
    each of its inputs is absorbed, covered, or in ``reading`` (default: every other file that
    is to be read). Covered outputs need not be read: compaction keeps exactly its inputs' rows.
    """
    new = [path for path in listing if path not in absorbed]
    outputs = {path: _compaction_inputs(data_dir, path) for path in new}
    plain = {path for path, inputs in outputs.items() if inputs is None}
    reading = plain if reading is None else reading
    known = set(absorbed) | reading
    covered: list[str] = []
    # An output's inputs are older outputs or flush files: ascending names settle chains.
    for path in sorted(p for p, inputs in outputs.items() if inputs is not None):
        if all(name in known for name in outputs[path]):
            covered.append(path)
            known.add(path)
    to_read = [path for path in new if path not in known or path in reading]
    return sorted(set(to_read)), covered


# --------------------------------------------------------------------------- id index


class IdIndex:
    """Where each message may be: per derived file, the sorted upper 32 bits of the
    ``id_hash`` of its rows (4 bytes a message).

    Derived files are sorted by id_hash, so a value's position in the array is its row
    number. A match is a candidate: the caller compares the real ids (about one message in
    2**32 / rows-per-file matches by chance, and is merely read). Loaded once per (immutable)
    file, dropped when the file leaves the manifest. Files hashed by a different DuckDB
    (``trust_stored`` False) are hashed again here.
    """

    def __init__(self):
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
        self._lock = threading.Lock()

    def sync(self, data_dir: Path, paths: list[str], con=None, trust_stored: bool = True) -> None:
        with self._lock:
            for stale in set(self._arrays) - set(paths):
                del self._arrays[stale]
            for path in paths:
                if path not in self._arrays:
                    self._arrays[path] = self._load(Path(data_dir) / path, con, trust_stored)

    @staticmethod
    def _load(full: Path, con, trust_stored: bool) -> tuple[np.ndarray, np.ndarray | None]:
        if trust_stored:
            hashes = pq.read_table(full, columns=["id_hash"]).column(0).to_numpy()
            if len(hashes) < 2 or bool(np.all(hashes[1:] >= hashes[:-1])):
                return (hashes >> np.uint64(32)).astype(np.uint32), None
        if con is None:
            con = connect({"threads": 1})
        found = con.execute("SELECT hash(delivery_message_id) >> 32 AS h, file_row_number AS n "
                            "FROM read_parquet($f, file_row_number = true)", {"f": str(full)}).fetchnumpy()
        order = np.argsort(found["h"], kind="stable")
        return found["h"][order].astype(np.uint32), found["n"][order].astype(np.int64)

    def locate(self, hashes: np.ndarray) -> dict[str, np.ndarray]:
        """{file: row numbers} of the rows whose id_hash may be one of ``hashes``."""
        keys = np.unique((np.asarray(hashes, dtype=np.uint64) >> np.uint64(32)).astype(np.uint32))
        found: dict[str, np.ndarray] = {}
        if not len(keys):
            return found
        with self._lock:
            items = list(self._arrays.items())
        for path, (sorted_keys, positions) in items:
            left = np.searchsorted(sorted_keys, keys, side="left")
            right = np.searchsorted(sorted_keys, keys, side="right")
            hit = right > left
            if not hit.any():
                continue
            rows = np.concatenate([np.arange(a, b) for a, b in zip(left[hit], right[hit])])
            found[path] = np.sort(positions[rows] if positions is not None else rows)
        return found

    def memory_bytes(self) -> int:
        return sum(a.nbytes + (p.nbytes if p is not None else 0) for a, p in self._arrays.values())


# --------------------------------------------------------------------------- placement


def hot_from(now: datetime | None = None) -> datetime:
    """Start of the first UTC day kept as hour files (the last :data:`HOT_DAYS` days)."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=HOT_DAYS - 1)


def file_kind_sql() -> str:
    """SQL: the kind of file a stored row belongs in: ``hHH`` from ``$hot_from`` on, except on
    the days in ``$day_files`` (hot days already held in one day file: a day is never split
    both ways), else ``d``."""
    day = "strftime(sent_at, '%Y-%m-%d')"
    return (f"CASE WHEN sent_at IS NULL THEN 'u' "
            f"WHEN sent_at >= $hot_from AND NOT list_contains($day_files::VARCHAR[], {day}) "
            f"THEN 'h' || strftime(sent_at, '%H') ELSE 'd' END")


def sent_day_sql() -> str:
    """SQL: the sent day of a stored row, ``none`` for a row without receipts."""
    return "coalesce(strftime(sent_at, '%Y-%m-%d'), 'none')"


def file_key_sql() -> str:
    """SQL: the file a stored row belongs in, ``sent=YYYY-MM-DD/<kind>`` (:func:`file_kind_sql`),
    :data:`UNPLACED_KEY` for a row without receipts."""
    return f"'{SENT_PREFIX}' || {sent_day_sql()} || '/' || {file_kind_sql()}"


def day_files(files: list["DerivedFile"], hot_start: datetime) -> list[str]:
    """Hot days held in a day file (after a rebuild with another clock, say)."""
    return sorted({f.day for f in files if f.kind == "d"
                   and datetime.strptime(f.day, "%Y-%m-%d").replace(tzinfo=UTC) >= hot_start})


def file_key(f: DerivedFile, hot_start: datetime) -> str:
    """The key an existing file's rows belong to now: a cold day's hour files join its day file."""
    if not f.placed:
        return UNPLACED_KEY
    day = datetime.strptime(f.day, "%Y-%m-%d").replace(tzinfo=UTC)
    if day < hot_start:
        return f"{SENT_PREFIX}{f.day}/d"
    return f"{SENT_PREFIX}{f.day}/{f.kind}"


# --------------------------------------------------------------------------- writing


def _write_derived(con, data_dir: Path, key: str, select_sql: str) -> DerivedFile | None:
    """Write the rows of ``select_sql`` (stored columns) sorted by id_hash as a new messages
    file for ``key``, with its companions; None when there are none. Each file is complete and
    durable when it appears; the messages file appears last."""
    data_dir = Path(data_dir)
    directory, kind = key.split("/")
    target = data_dir / MESSAGES_DIR / directory / f"{kind}-{time.time_ns()}.parquet"
    relative = str(target.relative_to(data_dir))
    options = f"FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {ROW_GROUP_ROWS}"
    # Each file is published when the stack closes, in reverse order of entering: the
    # companions first, the messages file last. An error removes every one not published.
    with ExitStack() as stack:
        messages = stack.enter_context(publishing(target))
        con.execute(f"COPY (SELECT {', '.join(STORED_COLUMNS)} FROM ({select_sql}) ORDER BY id_hash) "
                    f"TO '{messages.temp}' ({options})")
        metadata = pq.read_metadata(messages.temp)
        if metadata.num_rows == 0:
            messages.discard()
            return None
        tmps = {c: stack.enter_context(publishing(data_dir / companion_path(relative, c))).temp for c in COMPANIONS}
        view = messages_view_sql(f"read_parquet('{messages.temp}')")
        con.execute(f"COPY ({rollup_sql(view)} ORDER BY t, campaign) TO '{tmps['rollup']}' ({options})")
        con.execute(f"COPY ({hist_sql(view)} ORDER BY campaign, b) TO '{tmps['hist']}' ({options})")
        # Sorted by bucket: a query fetching a few buckets reads a few row groups.
        con.execute(f"COPY ({latency_values_sql(view)} ORDER BY b, latency_us) TO '{tmps['latency']}' "
                    f"(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 16384)")
        # Events by sent time: a query over a range of sent times reads its row groups.
        numbered = f"(SELECT *, file_row_number AS m_row FROM read_parquet('{messages.temp}', file_row_number = true))"
        con.execute(f"COPY ({clicks_companion_sql(numbered)} ORDER BY sent_at) TO '{tmps['clicks']}' ({options})")
        con.execute(f"COPY ({replies_companion_sql(numbered)} ORDER BY sent_at) TO '{tmps['replies']}' ({options})")
        con.execute(f"COPY ({cost_rollup_sql(view)} ORDER BY campaign) TO '{tmps['cost']}' ({options})")
        submission = submission_view_sql(view)
        con.execute(f"COPY ({hist_sql(submission, SUBMISSION_HIST_GROUPS)} ORDER BY campaign, b) "
                    f"TO '{tmps['subhist']}' ({options})")
        con.execute(f"COPY ({latency_values_sql(submission, SUBMISSION_GROUPS)} ORDER BY b, latency_us) "
                    f"TO '{tmps['sublatency']}' (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 16384)")
    return described_file(relative, metadata)


def described_file(relative: str, metadata) -> DerivedFile:
    """The :class:`DerivedFile` of the messages file ``relative`` from its Parquet ``metadata``
    (rows; sent-time range from the row groups' statistics, -1 when it has none: the unplaced
    file)."""
    sent_min_us, sent_max_us = _column_range(metadata, "sent_at") or (-1, -1)
    return DerivedFile(path=relative, rows=metadata.num_rows, sent_min_us=sent_min_us, sent_max_us=sent_max_us)


def _column_range(metadata, name: str) -> tuple[int, int] | None:
    """(min, max) of the timestamp column ``name`` in epoch microseconds, from the row groups'
    statistics in Parquet ``metadata``; None when the file has no such column or no values."""
    names = metadata.schema.to_arrow_schema().names
    if name not in names:
        return None
    column = names.index(name)
    stats = [metadata.row_group(i).column(column).statistics for i in range(metadata.num_row_groups)]
    stats = [s for s in stats if s is not None and s.has_min_max]
    if not stats:
        return None
    return min(_micros(s.min) for s in stats), max(_micros(s.max) for s in stats)




def _all_paths(path: str) -> list[str]:
    """A messages file and its companions (relative paths)."""
    return [path] + [companion_path(path, c) for c in COMPANIONS]


def _micros(value) -> int:
    if isinstance(value, datetime):
        return int(value.timestamp() * 1_000_000) if value.tzinfo else int(
            value.replace(tzinfo=UTC).timestamp() * 1_000_000)
    return int(value)


def _retire(manifest: Manifest, paths, now: float) -> None:
    for path in paths:
        manifest.retired.setdefault(path, now)


def _delete_expired(data_dir: Path, manifest: Manifest, now: float, grace: float) -> int:
    """Delete retired files (and companions) past the grace period, and leftovers of crashed
    writers (files in no manifest list, older than the grace period). Returns files deleted."""
    deleted = 0
    for path, retired_at in list(manifest.retired.items()):
        if now - retired_at >= grace:
            for each in _all_paths(path):
                (Path(data_dir) / each).unlink(missing_ok=True)
            del manifest.retired[path]
            deleted += 1
    in_force = {each for f in manifest.files for each in _all_paths(f.path)}
    in_force |= {each for path in manifest.retired for each in _all_paths(path)}
    for kind in ("messages", *COMPANIONS):
        root = Path(data_dir) / DERIVED_DIR / kind
        for day_dir in root.iterdir() if root.is_dir() else ():
            for entry in day_dir.iterdir() if day_dir.is_dir() else ():
                if str(entry.relative_to(data_dir)) in in_force:
                    continue
                try:
                    old = now - entry.stat().st_mtime >= grace
                except FileNotFoundError:
                    continue
                if old:
                    entry.unlink(missing_ok=True)
                    deleted += kind == "messages"
            if day_dir.is_dir() and not any(day_dir.iterdir()):
                day_dir.rmdir()
    return deleted


# --------------------------------------------------------------------------- locking


def _locked(data_dir: Path, wait: bool):
    """Hold ``data/derived.lock``; yields False without waiting when busy and ``wait`` is False."""
    return locked(Path(data_dir) / LOCK_NAME, wait=wait)


# --------------------------------------------------------------------------- update


class _Updater:
    """Cached per data directory in the updating process: its connection and id index."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.con = connect(UPDATE_SETTINGS, self.data_dir / SPILL_DIR)
        self.index = IdIndex()
        self.probe = hash_probe(self.con)


_updaters: dict[str, _Updater] = {}
_updaters_lock = threading.Lock()


def _updater(data_dir: Path) -> _Updater:
    key = str(Path(data_dir).resolve())
    with _updaters_lock:
        if key not in _updaters:
            _updaters[key] = _Updater(Path(data_dir))
        return _updaters[key]


def update_derived(data_dir: Path, *, now: datetime | None = None, grace_seconds: float = GRACE_SECONDS,
                   max_batch_rows: int = MAX_BATCH_ROWS, wait: bool = False) -> dict:
    """Absorb the receipt files not absorbed yet into the derived state; return what was done.

    Bounded work per call (at most ``max_batch_rows`` receipt rows, oldest partitions first);
    ``backlog_files`` says how many files are left for the next call. Without a manifest (or
    with one hashed by another DuckDB version) it rebuilds. Returns ``{"skipped": "busy"}`` at
    once when another process holds the lock (unless ``wait``). ``now`` (default the clock)
    decides which days are hot.
    """
    data_dir = Path(data_dir)
    started = time.perf_counter()
    with _locked(data_dir, wait) as acquired:
        if not acquired:
            return {"skipped": "busy"}
        updater = _updater(data_dir)
        manifest = Manifest.load(data_dir)
        # Replies were matched with other opt-out keywords: every reply list is recomputed.
        if manifest is None or manifest.hash_probe != updater.probe or manifest.opt_out_keywords != events.opt_out_keywords():
            return _rebuild_locked(data_dir, now=now, grace_seconds=grace_seconds, started=started,
                                   settings=UPDATE_SETTINGS)
        return _update_locked(updater, manifest, now=now, grace=grace_seconds, max_rows=max_batch_rows,
                              started=started)


def _update_locked(updater: _Updater, manifest: Manifest, *, now, grace: float, max_rows: int,
                   started: float) -> dict:
    data_dir, con = updater.data_dir, updater.con
    wall = time.time()
    hot_start = hot_from(now)
    listing = receipt_files(data_dir)
    to_read, _ = unabsorbed(data_dir, listing, manifest.absorbed)
    batch = _take_batch(data_dir, to_read, max_rows)
    _, covered = unabsorbed(data_dir, listing, manifest.absorbed, reading=set(batch))
    # Event files are never compacted and small next to receipts: every new one, each update.
    event_listing = {table: events.event_files(data_dir, table) for table in events.EVENT_TABLES}
    new_events = {table: [p for p in found if p not in manifest.absorbed] for table, found in event_listing.items()}
    # Send record files are bounded like receipts: a backfill sync may bring millions of records.
    send_listing = send_files(data_dir)
    new_sends = unabsorbed_send_files(send_listing, manifest.absorbed)
    new_events[SENDS_KEY] = _take_batch(data_dir, new_sends, max_rows) if new_sends else []
    stamps_read = {p: latest_stamp(data_dir, p) for p in new_events[SENDS_KEY]}
    event_batch = [p for found in new_events.values() for p in found]
    result = {"absorbed_files": len(batch), "covered_files": len(covered), "event_files": len(event_batch),
              "receipts": 0, "messages": 0, "rewritten_files": 0,
              "backlog_files": len(to_read) - len(batch) + len(new_sends) - len(new_events[SENDS_KEY])}
    by_key: dict[str, list[DerivedFile]] = {}
    for f in manifest.files:
        by_key.setdefault(file_key(f, hot_start), []).append(f)
    numbers = {f.path: i for i, f in enumerate(manifest.files)}
    rewrite: set[str] = set()
    for table in ("merged_partial", "old", "merged", "superseded"):
        con.execute(f"DROP TABLE IF EXISTS {table}")
    con.execute("CREATE TEMP TABLE superseded (file_no INTEGER, row BIGINT)")
    absorbing = bool(batch or event_batch)
    if absorbing:
        absorb(con, data_dir, batch, numbers, updater.index, extra=f", {file_key_sql()} AS file_key",
               params={"hot_from": hot_start, "day_files": day_files(manifest.files, hot_start)},
               event_files=new_events, keywords=manifest.opt_out_keywords, send_stamps=manifest.send_stamps)
        result["receipts"] = sum(_rows(data_dir / p) for p in batch)
        result["messages"] = con.execute("SELECT count(*) FROM merged").fetchone()[0]
        rewrite |= {k for (k,) in con.execute("SELECT DISTINCT file_key FROM merged").fetchall()}
        by_number = {i: f for f, i in numbers.items()}
        rewrite |= {file_key(next(x for x in manifest.files if x.path == by_number[n]), hot_start)
                    for (n,) in con.execute("SELECT DISTINCT file_no FROM superseded").fetchall()}
    # A cold day still in hour files (or in several files) is coalesced into one day file.
    rewrite |= {key for key, files in by_key.items()
                if key.endswith("/d") and (len(files) > 1 or any(f.kind != "d" for f in files))}
    new_files: list[DerivedFile] = []
    for key in sorted(rewrite):
        parts = [f"""SELECT {', '.join(STORED_COLUMNS)} FROM read_parquet('{data_dir / f.path}', file_row_number = true)
                     WHERE file_row_number NOT IN (SELECT row FROM superseded WHERE file_no = {numbers[f.path]})"""
                 for f in by_key.get(key, [])]
        if absorbing:
            parts.append(f"SELECT {', '.join(STORED_COLUMNS)} FROM merged WHERE file_key = '{key}'")
        if not parts:
            continue
        written = _write_derived(con, data_dir, key, " UNION ALL ".join(parts))
        if written is not None:
            new_files.append(written)
    replaced = {f.path for key in rewrite for f in by_key.get(key, [])}
    send_keys = set(send_listing.values())
    pruned = {p for p in manifest.absorbed if p not in listing and p not in send_keys
              and not any(p in found for found in event_listing.values())}
    changed = bool(rewrite or absorbing or covered or pruned)
    if changed:
        manifest.files = [f for f in manifest.files if f.path not in replaced] + new_files
        manifest.absorbed = ((manifest.absorbed - pruned) | set(batch) | set(covered)
                             | absorbed_keys(new_events, send_listing))
        manifest.send_stamps = _send_stamps(manifest.send_stamps, stamps_read, send_listing)
        _retire(manifest, replaced, wall)
    deleted = _delete_expired(data_dir, manifest, wall, grace)
    if changed or deleted:
        manifest.version += 1
        manifest.hash_probe = updater.probe
        manifest.save(data_dir)
    for table in ("merged_partial", "old", "merged", "superseded"):
        con.execute(f"DROP TABLE IF EXISTS {table}")
    result.update(rewritten_files=len(new_files), pruned=len(pruned), deleted_files=deleted,
                  version=manifest.version, seconds=round(time.perf_counter() - started, 3))
    return result


def units_sql(data_dir: Path, receipts: str | None, event_files: dict[str, list[str]], keywords: tuple[str, ...],
              where: str = "TRUE", send_stamps: dict[str, int] | None = None) -> str:
    """The units of the receipt rows of ``receipts`` (a source, None: none) and of the event
    files ``event_files`` ({table: relative paths}; :data:`SENDS_KEY`: send record files, of
    which only the records stamped after ``send_stamps[path]`` or without a stamp), rows
    restricted by ``where`` (on ``delivery_message_id``)."""
    parts = [f"SELECT * FROM ({receipt_units_sql(receipts)}) WHERE {where}"] if receipts else []
    clicks = [str(Path(data_dir) / p) for p in event_files.get("clicks", ())]
    replies = [str(Path(data_dir) / p) for p in event_files.get("replies", ())]
    if clicks:
        source = events.rows_sql(clicks, "clicks", "click_id, received_at, message_id, batch_id, client_ref, url, browser, os, country")
        parts.append(f"SELECT * FROM ({click_units_sql(source)}) WHERE {where}")
    if replies:
        source = events.rows_sql(replies, "replies", "reply_id, received_at, created, in_reply_to, logical_message_id, "
                                              "originator_hash, body")
        parts.append(f"SELECT * FROM ({reply_units_sql(source, keywords)}) WHERE {where}")
    records = list(event_files.get(SENDS_KEY, ()))
    if records:
        parts.append(f"SELECT * FROM ({send_units_sql(_send_records_sql(data_dir, records, send_stamps or {}))}) "
                     f"WHERE {where}")
    return " UNION ALL ".join(f"({p})" for p in parts) or receipt_units_sql(f"({empty_receipts_sql()})")


def _send_records_sql(data_dir: Path, records: list[str], send_stamps: dict[str, int]) -> str:
    """The rows of the send files ``records`` (relative paths) not absorbed yet: of a file with
    a stamp in ``send_stamps``, those stamped later or not at all."""
    whole = [p for p in records if p not in send_stamps]
    parts = []
    if whole:
        listed = ", ".join(f"'{Path(data_dir) / p}'" for p in whole)
        parts.append(f"SELECT * FROM read_parquet([{listed}], hive_partitioning = false, union_by_name = true)")
    for p in records:
        if p in send_stamps:
            parts.append(f"SELECT * FROM read_parquet('{Path(data_dir) / p}', hive_partitioning = false) "
                         f"WHERE changed_at IS NULL OR epoch_us(changed_at) > {int(send_stamps[p])}")
    return "(" + " UNION ALL BY NAME ".join(parts) + ")"


def absorb(con, data_dir: Path, files: list[str], numbers: dict[str, int], index: IdIndex, *,
           merged: str = "merged", old: str = "old", trust_stored: bool = True, extra: str = "",
           params: dict | None = None, event_files: dict[str, list[str]] | None = None,
           keywords: tuple[str, ...] | None = None, send_stamps: dict[str, int] | None = None) -> None:
    """Merge the receipt ``files`` and the ``event_files`` ({clicks|replies: relative paths};
    replies matched against ``keywords``) with the stored state of their messages, on
    ``con``: the one way to absorb receipts into per-message state, for the maintenance
    (:func:`update_derived`) and for the reader's fresh tail (:class:`dlrlens.store.reader.Store`).

    Makes temp table ``old``: the stored derived rows of the files' messages (``file_no`` as in
    ``numbers``, the derived files in force; ``file_row_number``; the stored columns), found
    through ``index`` (synced to those files; ``trust_stored`` as in :meth:`IdIndex.sync`; a
    hash match of another id stays out); adds their (file_no, row) to table ``superseded``
    (which must exist); and makes temp table ``merged``: the files' partial state merged with
    ``old``, stored columns plus ``extra`` (computed with ``params``). Duplicate-insensitive: a
    row absorbed again changes nothing. ``send_stamps``: see :func:`units_sql`.
    """
    data_dir = Path(data_dir)
    partial = f"{merged}_partial"
    units = units_sql(data_dir, parquet_source() if files else None, event_files or {},
                      keywords or events.DEFAULT_OPT_OUT_KEYWORDS, send_stamps=send_stamps)
    con.execute(f"CREATE OR REPLACE TEMP TABLE {partial} AS {combine_sql(units)}",
                {"files": [str(data_dir / p) for p in files]} if files else {})
    located: dict[str, np.ndarray] = {}
    if numbers:
        hashes = con.execute(f"SELECT hash(delivery_message_id) AS h FROM {partial}").fetchnumpy()["h"]
        index.sync(data_dir, list(numbers), con, trust_stored=trust_stored)
        located = index.locate(hashes)
    con.execute(f"CREATE OR REPLACE TEMP TABLE {old} AS {stored_rows_at_sql(data_dir, located, numbers, partial)}")
    con.execute(f"INSERT INTO superseded SELECT file_no, file_row_number FROM {old}")
    con.execute(f"CREATE OR REPLACE TEMP TABLE {merged} AS "
                f"{merge_sql(f'SELECT * FROM {partial}', state_units_sql(old), extra=extra)}", params or {})
    con.execute(f"DROP TABLE {partial}")


def stored_rows_at_sql(data_dir: Path, located: dict[str, np.ndarray], numbers: dict[str, int], messages: str) -> str:
    """SELECT file_no, file_row_number and every stored column of the rows at ``located``
    whose message is in table ``messages``."""
    columns = ", ".join(STORED_COLUMNS)
    parts = [f"""SELECT {numbers[path]} AS file_no, file_row_number, {columns}
                 FROM read_parquet('{data_dir / path}', file_row_number = true)
                 WHERE file_row_number IN (SELECT unnest({_int_list(rows)}))"""
             for path, rows in located.items()]
    if not parts:
        empty = merge_sql(receipt_units_sql(f"({empty_receipts_sql()})"))
        return f"SELECT NULL::INTEGER AS file_no, NULL::BIGINT AS file_row_number, {columns} FROM ({empty})"
    # The one row of events without a message id (delivery_message_id NULL) merges like any other.
    return (f"SELECT * FROM ({' UNION ALL '.join(parts)}) "
            f"WHERE delivery_message_id IN (SELECT delivery_message_id FROM {messages}) "
            f"OR (delivery_message_id IS NULL AND EXISTS (SELECT 1 FROM {messages} WHERE delivery_message_id IS NULL))")


def _int_list(values: np.ndarray) -> str:
    return "[" + ",".join(str(int(v)) for v in values) + "]::BIGINT[]"


def _rows(path: Path) -> int:
    try:
        return pq.read_metadata(path).num_rows
    except OSError:
        return 0


def _send_stamps(stamps: dict[str, int], read: dict[str, int | None], listing: dict[str, str]) -> dict[str, int]:
    """``stamps`` (send file -> latest changed_at absorbed) after absorbing the files of
    ``read`` ({path: its latest stamp, read from the file before its rows were: a replacement
    in between is then merely read again next time}), without the files no longer listed."""
    out = {p: v for p, v in stamps.items() if p in listing}
    for p, latest in read.items():
        if latest is not None:
            out[p] = max(latest, out.get(p, latest))
        else:
            out.pop(p, None)
    return out


def _take_batch(data_dir: Path, to_read: list[str], max_rows: int) -> list[str]:
    """The files of this update: the first of ``to_read`` (sorted: oldest partitions or days
    first), at most ``max_rows`` rows (and at least one file)."""
    batch, rows = [], 0
    for path in to_read:  # sorted: receipts/date=YYYY-MM-DD/name
        n = _rows(data_dir / path)
        if batch and rows + n > max_rows:
            break
        batch.append(path)
        rows += n
    return batch


# --------------------------------------------------------------------------- rebuild


def rebuild_derived(data_dir: Path, *, now: datetime | None = None, grace_seconds: float = GRACE_SECONDS,
                    settings: dict | None = None) -> dict:
    """Recompute the whole derived state from every receipt file; return what was done.

    Waits for a running update to finish. Gives exactly the state incremental updates give.
    """
    data_dir = Path(data_dir)
    started = time.perf_counter()
    with _locked(data_dir, wait=True):
        return _rebuild_locked(data_dir, now=now, grace_seconds=grace_seconds, started=started,
                               settings=settings)


def _rebuild_locked(data_dir: Path, *, now, grace_seconds: float, started: float,
                    settings: dict | None = None) -> dict:
    import duckdb

    old = Manifest.load(data_dir)
    hot_start = hot_from(now)
    keywords = events.opt_out_keywords()
    spill = data_dir / SPILL_DIR / f"rebuild-{os.getpid()}"
    shutil.rmtree(spill, ignore_errors=True)
    con = connect(settings or REBUILD_SETTINGS, spill / "duckdb")
    con.execute("SET preserve_insertion_order = false")
    try:
        for attempt in (1, 2, 3):
            listing = receipt_files(data_dir)
            event_listing = {table: list(events.event_files(data_dir, table)) for table in events.EVENT_TABLES}
            send_listing = send_files(data_dir)
            stamps_read = {p: latest_stamp(data_dir, p) for p in send_listing}
            event_listing[SENDS_KEY] = list(send_listing)
            try:
                files = _rebuild_files(con, data_dir, listing, event_listing, keywords, hot_start, spill)
                break
            except duckdb.IOException:
                # A file vanished under us (compaction): list again. Nothing is in force yet.
                shutil.rmtree(spill / "state", ignore_errors=True)
                if attempt == 3:
                    raise
        messages = sum(f.rows for f in files)
        receipts = sum(_rows(data_dir / p) for p in listing)
        absorbed = set(listing) | absorbed_keys(event_listing, send_listing)
        manifest = Manifest(version=(old.version + 1) if old else 1, files=files, absorbed=absorbed,
                            retired=dict(old.retired) if old else {}, hash_probe=hash_probe(con),
                            opt_out_keywords=keywords,
                            send_stamps=_send_stamps({}, stamps_read, send_listing))
        if old:
            _retire(manifest, [f.path for f in old.files], time.time())
        manifest.save(data_dir)
        deleted = _delete_expired(data_dir, manifest, time.time(), grace_seconds)
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)
    # The updating process's index and connection start afresh after a rebuild.
    with _updaters_lock:
        _updaters.pop(str(data_dir.resolve()), None)
    return {"rebuilt": True, "absorbed_files": len(listing), "receipts": receipts, "messages": messages,
            "rewritten_files": len(files), "deleted_files": deleted, "version": manifest.version,
            "seconds": round(time.perf_counter() - started, 3)}


def _rebuild_files(con, data_dir: Path, listing: dict, event_listing: dict[str, list[str]],
                   keywords: tuple[str, ...], hot_start: datetime, spill: Path) -> list[DerivedFile]:
    """Every message's state from the receipt files in ``listing`` and the event files in
    ``event_listing``, written as derived files.

    Large data is split by hash(delivery_message_id) into buckets of about
    :data:`REBUILD_BUCKET_ROWS` receipts (one pass writes them to ``spill``), so that each
    bucket's GROUP BY fits in memory; each bucket's states go to per-file staging parts,
    which are then sorted into the derived files.
    """
    if not listing and not any(event_listing.values()):
        return []
    paths = [str(data_dir / p) for p in listing]
    rows = sum(_rows(Path(p)) for p in paths)
    buckets = max(1, -(-rows // REBUILD_BUCKET_ROWS))
    keys = f"{sent_day_sql()} AS sent_day, {file_kind_sql()} AS kind"
    params = {"hot_from": hot_start, "day_files": []}
    state = spill / "state"
    state.mkdir(parents=True, exist_ok=True)
    if buckets == 1:
        sources = [parquet_source() if paths else None]
        bucket_params = [{"files": paths} if paths else {}]
    else:
        needed = ("delivery_message_id, created, received_at, campaign, batch_id, client_reference, status, "
                  "category, labels")
        con.execute(f"COPY (SELECT {needed}, hash(delivery_message_id) % {buckets} AS bucket "
                    f"FROM read_parquet($files, union_by_name = true)) TO '{spill / 'receipts'}' "
                    f"(FORMAT parquet, COMPRESSION zstd, PARTITION_BY (bucket))", {"files": paths})
        sources = [f"read_parquet('{spill / 'receipts' / f'bucket={k}' / '*.parquet'}')" for k in range(buckets)]
        bucket_params = [{} for _ in range(buckets)]
    for k, (source, extra_params) in enumerate(zip(sources, bucket_params)):
        # Events are few next to receipts: each bucket reads them all and keeps its own.
        units = units_sql(data_dir, source, event_listing, keywords,
                          where="TRUE" if buckets == 1 else f"hash(delivery_message_id) % {buckets} = {k}")
        con.execute(f"COPY ({merge_sql(units, extra=', ' + keys)}) TO '{state / f'part={k}'}' "
                    f"(FORMAT parquet, COMPRESSION zstd, PARTITION_BY (sent_day, kind))", {**params, **extra_params})
        if buckets > 1:
            shutil.rmtree(spill / "receipts" / f"bucket={k}", ignore_errors=True)
    files = []
    by_key: dict[str, list[Path]] = {}
    for part in state.glob("part=*/sent_day=*/kind=*/*.parquet"):
        key = f"{SENT_PREFIX}{part.parent.parent.name.split('=', 1)[1]}/{part.parent.name.split('=', 1)[1]}"
        by_key.setdefault(key, []).append(part)
    for key, parts in sorted(by_key.items()):
        listed = ", ".join(f"'{p}'" for p in parts)
        written = _write_derived(con, data_dir, key, f"SELECT * FROM read_parquet([{listed}], hive_partitioning = false)")
        if written is not None:
            files.append(written)
    return files
