"""Clicks and replies on the read side: their files, their distinct rows, and how they link to
messages (the campaign funnel's relations). Tables and columns: :data:`dlrlens.store.layout.TABLES`.

Linkage happens at query time, against the ``messages`` relation of the moment, so an event
that arrived before its message's receipts links up as soon as they are stored, with nothing
rewritten:

* a click belongs to the message whose ``delivery_message_id`` is its ``message_id``; else to
  the message of its ``batch_id`` whose ``client_reference`` is its ``client_ref`` (several:
  the smallest ``delivery_message_id``); else it is *unlinked*;
* a reply belongs to the message ``in_reply_to``; else, when its ``logical_message_id`` is the
  ``batch_id`` of a known message, to that batch (a *batch-linked* reply: the receipts do not
  say which number got which message, so it counts as one message per batch and replier),
  unless the same number (``originator_hash``) also replied by ``in_reply_to`` to a message of
  that batch: then it belongs to that message (the smallest id of several), so one person's
  two replies never count as two replied messages; else it is unlinked.

Distinct rows (duplicates never count twice):

* a click has no id and no time from Mobivate: ``click_id`` hashes its fields, and a copy
  received within :data:`CLICK_RETRY_SECONDS` of the previous copy of the same id is a retry
  (counted once), a later one is a new click (a person clicking the same link again);
* a reply counts once per ``reply_id`` (Mobivate's id), its first received copy.

Opt-out: a reply whose text, without any whitespace and upper-cased, is one of the keywords
(:data:`DEFAULT_OPT_OUT_KEYWORDS`, or ``DLRLENS_OPT_OUT_KEYWORDS``: :func:`opt_out_keywords`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from dlrlens.store import files, layout
from dlrlens.store.sql import string_literal

DEFAULT_OPT_OUT_KEYWORDS = ("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT")
OPT_OUT_ENV = "DLRLENS_OPT_OUT_KEYWORDS"
CLICK_RETRY_SECONDS = 60
EVENT_TABLES = ("clicks", "replies")
# The whitespace ignored in a reply (ASCII: DuckDB's regular expressions and Python agree on it).
_SPACE_CLASS = r"[ \t\n\r\f\v]"
_SPACE = re.compile(_SPACE_CLASS)


def normalise_reply(text: str | None) -> str | None:
    """A reply as opt-out keywords are matched: whitespace removed, upper-cased."""
    return None if text is None else _SPACE.sub("", text).upper()


def parse_keywords(text: str) -> tuple[str, ...]:
    """Comma-separated opt-out keywords, normalised (:func:`normalise_reply`); at least one."""
    keywords = tuple(dict.fromkeys(k for k in (normalise_reply(part) for part in text.split(",")) if k))
    if not keywords:
        raise ValueError("expected at least one keyword, e.g. STOP,UNSUBSCRIBE")
    return keywords


def opt_out_keywords(environ=os.environ) -> tuple[str, ...]:
    """The configured opt-out keywords (``DLRLENS_OPT_OUT_KEYWORDS``, else the defaults)."""
    text = environ.get(OPT_OUT_ENV, "")
    return parse_keywords(text) if text.strip() else DEFAULT_OPT_OUT_KEYWORDS


def opt_out_sql(body: str, keywords: tuple[str, ...]) -> str:
    """SQL: whether the reply text ``body`` (a column) is one of ``keywords`` (FALSE for no text)."""
    listed = "[" + ", ".join(string_literal(k) for k in keywords) + "]::VARCHAR[]"
    return f"coalesce(list_contains({listed}, upper(regexp_replace({body}, '{_SPACE_CLASS}', '', 'g'))), FALSE)"


def event_files(data_dir: Path, table: str) -> dict[str, tuple[int, int]]:
    """{path relative to the data directory: (size, mtime_ns)} of every visible file of
    ``table`` (``clicks`` or ``replies``)."""
    directory = layout.TABLES[table].directory
    root = Path(data_dir) / directory
    found: dict[str, tuple[int, int]] = {}
    try:
        partitions = sorted(e.name for e in os.scandir(root) if e.name.startswith(layout.PARTITION_PREFIX)
                            and e.is_dir())
    except FileNotFoundError:
        return found
    for partition in partitions:
        for name, (_, size, mtime) in sorted(files.visible_files(root / partition).items()):
            found[f"{directory}/{partition}/{name}"] = (size, mtime)
    return found


def sql_types(table: str) -> dict[str, str]:
    """{column: DuckDB type} of ``table`` (``clicks``, ``replies``)."""
    types = {"string": "VARCHAR", "int32": "INTEGER", "timestamp[us, tz=UTC]": "TIMESTAMPTZ"}
    return {f.name: types[str(f.type)] for f in layout.TABLES[table].schema}


def empty_sql(table: str) -> str:
    """A query with ``table``'s columns and no rows."""
    return "SELECT " + ", ".join(f"NULL::{kind} AS {name}" for name, kind in sql_types(table).items()) + " WHERE FALSE"


def rows_sql(paths: list[str], table: str, columns: str = "*") -> str:
    """The stored rows of ``table`` in the files ``paths`` (absolute), as a relation; only
    ``columns`` (a SELECT list) when given (Parquet reads only those)."""
    if not paths:
        return f"(SELECT {columns} FROM ({empty_sql(table)}))"
    listed = ", ".join(string_literal(p) for p in paths)
    return f"(SELECT {columns} FROM read_parquet([{listed}], hive_partitioning = false, union_by_name = true))"


def distinct_clicks_sql(rows: str) -> str:
    """One row per click (see the module docstring), ``copies`` = stored copies merged into it."""
    return f"""
        SELECT * EXCLUDE (new_click, click_no), count(*) OVER (PARTITION BY click_id, click_no) AS copies
        FROM (
            SELECT *, sum(new_click::INTEGER) OVER (PARTITION BY click_id ORDER BY received_at
                                                    ROWS UNBOUNDED PRECEDING) AS click_no
            FROM (
                SELECT *, coalesce(epoch_us(received_at) - lag(epoch_us(received_at))
                          OVER (PARTITION BY click_id ORDER BY received_at), {CLICK_RETRY_SECONDS * 1_000_001})
                          > {CLICK_RETRY_SECONDS * 1_000_000} AS new_click
                FROM {rows}
            )
        )
        QUALIFY row_number() OVER (PARTITION BY click_id, click_no ORDER BY received_at) = 1
    """


def distinct_replies_sql(rows: str) -> str:
    """One row per reply_id, its first received copy."""
    return f"""
        SELECT * FROM {rows}
        QUALIFY row_number() OVER (PARTITION BY reply_id ORDER BY received_at, created) = 1
    """


def linked_clicks_sql(clicks: str, messages: str) -> str:
    """Distinct ``clicks`` (:func:`distinct_clicks_sql`) with ``linked_id``: the message of
    ``messages`` each belongs to, or NULL (unlinked); ``linked_by``: message, reference or NULL."""
    return f"""
        SELECT c.*, coalesce(a.delivery_message_id, b.delivery_message_id) AS linked_id,
               CASE WHEN a.delivery_message_id IS NOT NULL THEN 'message'
                    WHEN b.delivery_message_id IS NOT NULL THEN 'reference' END AS linked_by
        FROM ({clicks}) c
        LEFT JOIN (SELECT delivery_message_id FROM {messages}) a ON a.delivery_message_id = c.message_id
        LEFT JOIN (SELECT batch_id, client_reference, min(delivery_message_id) AS delivery_message_id
                   FROM {messages} WHERE batch_id IS NOT NULL AND client_reference IS NOT NULL GROUP BY ALL) b
               ON a.delivery_message_id IS NULL AND b.batch_id = c.batch_id AND b.client_reference = c.client_ref
    """


def linked_replies_sql(replies: str, messages: str, keywords: tuple[str, ...] = (), opt_out: str | None = None) -> str:
    """Distinct ``replies`` (:func:`distinct_replies_sql`) with ``linked_id`` (the message
    replied to, or of a batch-linked reply the message of its batch its number replied to by
    ``in_reply_to``), ``linked_batch`` (a reply linked to its batch only), ``linked_by``
    (message, batch or NULL: unlinked) and ``opt_out`` (its ``body`` is one of ``keywords``;
    or ``opt_out``, an expression over the reply ``d``, when given)."""
    opt_out = opt_out or opt_out_sql("d.body", keywords)
    return f"""
        WITH r AS ({replies}),
        direct AS (
            SELECT r.*, a.delivery_message_id AS direct_id, a.batch_id AS direct_batch
            FROM r LEFT JOIN (SELECT delivery_message_id, batch_id FROM {messages}) a
                   ON a.delivery_message_id = r.in_reply_to),
        -- the messages each number replied to by inReplyTo, per batch
        same_number AS (
            SELECT direct_batch AS batch_id, originator_hash, min(direct_id) AS message_id FROM direct
            WHERE direct_id IS NOT NULL AND direct_batch IS NOT NULL AND originator_hash IS NOT NULL
            GROUP BY ALL)
        SELECT d.* EXCLUDE (direct_id, direct_batch),
               coalesce(d.direct_id, n.message_id) AS linked_id,
               CASE WHEN d.direct_id IS NULL AND n.message_id IS NULL THEN b.batch_id END AS linked_batch,
               CASE WHEN d.direct_id IS NOT NULL THEN 'message'
                    WHEN b.batch_id IS NOT NULL THEN 'batch' END AS linked_by,
               {opt_out} AS opt_out
        FROM direct d
        LEFT JOIN (SELECT DISTINCT batch_id FROM {messages} WHERE batch_id IS NOT NULL) b
               ON d.direct_id IS NULL AND b.batch_id = d.logical_message_id
        LEFT JOIN same_number n
               ON b.batch_id IS NOT NULL AND n.batch_id = b.batch_id AND n.originator_hash = d.originator_hash
    """
