"""The Campaigns table as one SQL query over the Iceberg tables, for engines other than DuckDB.

Other engines (Sail, Spark) read the same Iceberg tables as the dashboard; this module gives them
the same figures from the same definitions, never a second hand-written copy:

* :func:`campaign_kpis_sql` composes the store's and the dashboard's own SQL builders, unchanged:
  the per-message state exactly as a rebuild computes it (:func:`dlrlens.store.derive.receipt_units_sql`,
  :func:`~dlrlens.store.derive.merge_sql`, :func:`~dlrlens.store.derive.messages_view_sql`);
  campaign names as every relation of the store gets them (:func:`dlrlens.store.sends.names_of_sql`,
  :func:`dlrlens.store.reader.named_sql`: a message's campaign is its label, else its batchId,
  shown by the batchId's imported name, else Mobivate's; a message only in Mobivate's log by its
  campaignId's); each message's send record (:func:`dlrlens.store.sends.one_record_per_message_sql`,
  its MT record, the log's first, as :func:`dlrlens.store.sends.sends_sql` picks it, with the
  columns :data:`dlrlens.store.derive.SEND_VIEW_COLUMNS` of the derived state), and the messages
  the log knows without any receipt (:func:`dlrlens.store.reader.log_only_messages_sql`); the counts
  and shares (:func:`dlrlens.store.derive.rollup_sql`, :func:`dlrlens.store.sql.counts_select`), the
  latency percentiles (:func:`dlrlens.store.reader.quantiles_by_group_sql`), the per-receipt
  KPIs (:func:`dlrlens.store.sql.distinct_receipts_sql`, :func:`dashboard._sql.receipt_kpis_sql`);
  the cost figures (:func:`dlrlens.store.derive.cost_rollup_sql`, the cubes of
  :mod:`dashboard.queries.geography`, :func:`dashboard.queries.cost.cost_sql`: costs summed per
  campaign and currency, rounded to 6 decimals) and the times from submission
  (:func:`dlrlens.store.reader.submission_latency_sql`), joined as
  :func:`dashboard.queries.cost.campaigns_with_cost` joins them; the funnel: distinct clicks and
  replies (:func:`dlrlens.store.events.distinct_clicks_sql`, ``distinct_replies_sql``) linked to
  their messages at query time as the test oracle links them
  (:func:`dlrlens.store.derive.linked_clicks_at_query_sql`, ``linked_replies_at_query_sql``, over
  :func:`dlrlens.store.events.linked_clicks_sql` / ``linked_replies_sql``: the store keeps the
  link in its derived state instead) and counted by :func:`dashboard.queries.funnel.funnel_sql`.
  Its columns (:func:`campaign_columns`): ``campaign``, every column of
  :data:`dashboard.catalog.KPI_COLUMNS`, of :data:`~dashboard.catalog.FUNNEL_COLUMNS`, then the
  cost columns (:data:`~dashboard.catalog.COST_COLUMNS`, the time from submission p50 / p95): one
  row per campaign and currency, in the report's order. In DuckDB it gives exactly the report's
  Campaigns sheet.
* :func:`campaign_kpis_sql` with ``dialect="spark"`` translates that query with sqlglot (a SQL
  parser and transpiler), plus the rewrites in :func:`_spark_rewrites` for what sqlglot 30 leaves
  in DuckDB's words or what Sail 0.7 does not take (each found by running the query on Sail).

Scope: every receipt, send record, click and reply of the tables (no date range, no filter), like
``dlrlens report`` without options. A table that does not exist (no ``dlrlens sync`` or names
import yet, no click or reply yet) is given as None: no rows (without send records: the figures
of the receipts alone, cost columns empty, every message without cost). Receipts missing depend
on a time: the caller gives the cut-off (the report's "now" minus
``DLRLENS_RECEIPTS_MISSING_AFTER``), else that column is left out. Opt-outs are matched with
``opt_out_keywords``, by default this process's ``DLRLENS_OPT_OUT_KEYWORDS`` (the store matches
with the keywords its derived state was built with: the maintenance's setting).

sqlglot is imported only by the Spark translation (the ``engines`` extra).
"""

from __future__ import annotations

from datetime import datetime

from dlrlens.store import derive, events
from dlrlens.store import sends as sends_module  # (sends: an argument, the table's name)
from dlrlens.store.reader import (QUANTILES, log_only_messages_sql, named_sql, quantiles_by_group_sql,
                                  submission_latency_sql)
from dlrlens.store.sql import counts_select, distinct_receipts_sql, string_literal
from dashboard._sql import receipt_kpis_sql
from dashboard.catalog import COST_COLUMNS, FUNNEL_COLUMNS, KPI_COLUMNS, unit
from dashboard.queries.cost import (CAMPAIGN_COUNT_COLUMNS, SUBMISSION_COLUMNS, SUBMISSION_QUANTILE_COLUMNS, cost_sql,
                                    submission_key_sql)
from dashboard.queries.funnel import funnel_sql
from dashboard.queries.geography import log_only_cube_sql, receipts_cube_sql

DIALECTS = ("duckdb", "spark")
# The send record tables (dlrlens.store.iceberg.send_tables) by argument, with their columns.
SEND_TABLE_SCHEMAS = {"sends": sends_module.SEND_SCHEMA, "campaigns": sends_module.CAMPAIGN_SCHEMA,
                      "names": sends_module.NAME_SCHEMA}
# Each send record column of a message (derive.SEND_VIEW_COLUMNS) as the send record's column
# it is (the derived state keeps them so: derive.SEND_FIELDS, derive.SEND_RECORD_FIELDS).
RECORD_COLUMNS = {column: derive.SEND_RECORD_FIELDS[derive.SEND_FIELDS[column]] for column in derive.SEND_VIEW_COLUMNS}


# The funnel's counts: 0, not empty, for a campaign without clicks or replies (campaigns_with_funnel).
FUNNEL_COUNT_COLUMNS = [c for c in FUNNEL_COLUMNS if unit(c) == "count"]


def campaign_columns(receipts_missing: bool = True) -> list[str]:
    """The columns of :func:`campaign_kpis_sql` (``receipts_missing`` only with a ``missing_before``)."""
    cost = [c for c in COST_COLUMNS if receipts_missing or c != "receipts_missing"]
    return ["campaign", *KPI_COLUMNS, *FUNNEL_COLUMNS, *cost, *SUBMISSION_COLUMNS]


def campaign_kpis_sql(receipts: str = "receipts", dialect: str = "duckdb", *, sends: str | None = None,
                      campaigns: str | None = None, names: str | None = None, clicks: str | None = None,
                      replies: str | None = None, missing_before: datetime | None = None,
                      opt_out_keywords: tuple[str, ...] | None = None) -> str:
    """The Campaigns table (:func:`campaign_columns`) in ``dialect``, over the tables (or views)
    named ``receipts`` (the stored receipt rows), ``sends``, ``campaigns`` and ``names``
    (Mobivate's send records, its campaign list, the imported names: the tables of
    :mod:`dlrlens.store.iceberg.send_tables`), ``clicks`` and ``replies``; None: a table that
    does not exist, no rows. ``missing_before``: the receipts-missing cut-off (the report's
    "now" minus ``DLRLENS_RECEIPTS_MISSING_AFTER``); None leaves that column out.
    ``opt_out_keywords``: default :func:`dlrlens.store.events.opt_out_keywords`."""
    if dialect not in DIALECTS:
        raise ValueError(f"dialect must be one of {', '.join(DIALECTS)}, not {dialect!r}")
    if missing_before is not None and missing_before.utcoffset() is None:
        raise ValueError("missing_before must be an aware datetime (UTC)")
    send_tables = {"sends": sends, "campaigns": campaigns, "names": names}
    event_tables = {"clicks": clicks, "replies": replies}
    messages = "SELECT * FROM campaign_messages"  # each message with receipts, named, with its send record
    rollup = derive.rollup_sql(messages, t="sent_at")
    counts = f"SELECT {counts_select('campaign')} FROM ({rollup}) GROUP BY ALL"
    quantiles = quantiles_by_group_sql(messages, "campaign", [f"latency_{name}_s" for name, _ in QUANTILES])
    per_receipt = receipt_kpis_sql(messages, f"({distinct_receipts_sql(receipts)})", "campaign")
    funnel = _funnel_sql(rollup, clicks, replies, opt_out_keywords or events.opt_out_keywords())
    funnel_columns = ", ".join(f"coalesce(funnel.{c}, 0) AS {c}" if c in FUNNEL_COUNT_COLUMNS else f"funnel.{c}"
                               for c in FUNNEL_COLUMNS)
    # campaigns_with_funnel, then campaigns_with_cost (dashboard.queries): the campaigns' rows
    # and their cost rows, one per campaign and currency; a campaign only in the log has a row
    # of zero counts.
    columns = []
    for column in campaign_columns(missing_before is not None)[1:]:
        if column in KPI_COLUMNS or column in FUNNEL_COLUMNS:
            value = f"coalesce(k.{column}, 0)" if column in CAMPAIGN_COUNT_COLUMNS else f"k.{column}"
        elif column == "messages_without_cost":  # a campaign without a cost row: all its messages
            value = "coalesce(c.messages_without_cost, k.messages, 0)"
        else:
            value = f"coalesce(c.{column}, 0)" if column in CAMPAIGN_COUNT_COLUMNS else f"c.{column}"
        columns.append(f"{value} AS {column}")
    sql = f"""
        WITH {_messages_ctes(receipts, send_tables)},
        kpi_counts AS ({counts}), quantiles AS ({quantiles}), per_receipt AS ({per_receipt}),
        funnel AS (SELECT grp, {', '.join(FUNNEL_COLUMNS)} FROM ({funnel}) WHERE NOT total),
        kpis AS (SELECT kpi_counts.grp AS campaign, {', '.join(KPI_COLUMNS)}, {funnel_columns}
                 FROM kpi_counts LEFT JOIN quantiles USING (grp) LEFT JOIN per_receipt USING (grp)
                      LEFT JOIN funnel USING (grp)),
        cost_rows AS ({_cost_rows_sql(messages, missing_before)})
        SELECT coalesce(k.campaign, c.grp) AS campaign, {', '.join(columns)}
        FROM kpis k FULL OUTER JOIN cost_rows c ON c.grp = k.campaign
        ORDER BY k.messages IS NULL, k.messages DESC, campaign, c.currency NULLS LAST
    """
    if dialect == "duckdb":
        return sql
    schema = {receipts: derive.receipt_sql_types()}
    schema |= {name: sends_module.sql_types(SEND_TABLE_SCHEMAS[key]) for key, name in send_tables.items() if name}
    schema |= {name: events.sql_types(table) for table, name in event_tables.items() if name}
    return _to_spark(sql, schema)


def _messages_ctes(receipts: str, send_tables: dict[str, str | None]) -> str:
    """The common table expressions of the messages: ``names_in_force`` (campaign_id, name),
    ``records`` (each message's MT send record), ``campaign_messages`` (each message with
    receipts, named, with :data:`dlrlens.store.derive.SEND_VIEW_COLUMNS`), ``log_only`` (the
    messages Mobivate's log knows without any receipt, named) and ``every_message`` (what
    events link to)."""
    relation = {key: name or f"({sends_module.empty_select(SEND_TABLE_SCHEMAS[key])})"
                for key, name in send_tables.items()}
    names_in_force = (f"SELECT campaign_id, name FROM {sends_module.names_of_sql(relation['names'], relation['campaigns'])} "
                      f"WHERE name IS NOT NULL")
    records = sends_module.one_record_per_message_sql(relation["sends"], sends_module.MT_RECORD)
    record_columns = ", ".join(f"s.{record} AS {column}" for column, record in RECORD_COLUMNS.items())
    receipts_only = derive.merge_sql(derive.receipt_units_sql(receipts, events=False), events=False)
    unnamed = f"""
        SELECT m.*, {record_columns}
        FROM ({derive.messages_view_sql(f"({receipts_only})", sends=False)}) m
        LEFT JOIN records s ON s.message_id = m.delivery_message_id"""
    log_only_rows = f"""(
        SELECT s.message_id AS delivery_message_id, {record_columns}
        FROM records s LEFT JOIN (SELECT DISTINCT delivery_message_id FROM {receipts}) r
             ON r.delivery_message_id = s.message_id
        WHERE r.delivery_message_id IS NULL)"""
    return f"""names_in_force AS ({names_in_force}), records AS {records},
        campaign_messages AS {named_sql(f"({unnamed})", "names_in_force")},
        log_only AS {named_sql(log_only_messages_sql(log_only_rows), "names_in_force")},
        every_message AS (SELECT {derive.LINKED_MESSAGE_COLUMNS} FROM campaign_messages)"""


def _funnel_sql(rollup: str, clicks: str | None, replies: str | None, keywords: tuple[str, ...]) -> str:
    """:func:`dashboard.queries.funnel.funnel_sql` of the messages of ``rollup`` (their counts)
    and every distinct click and reply of the tables ``clicks`` and ``replies`` linked to
    ``every_message`` at query time."""
    rows = {table: f"(SELECT {columns} FROM {name or f'({events.empty_sql(table)})'})"
            for table, name, columns in (("clicks", clicks, derive.CLICK_COLUMNS),
                                         ("replies", replies, derive.REPLY_COLUMNS))}
    linked_clicks = derive.linked_clicks_at_query_sql(f"({events.distinct_clicks_sql(rows['clicks'])})",
                                                      "every_message")
    linked_replies = derive.linked_replies_at_query_sql(f"({events.distinct_replies_sql(rows['replies'])})",
                                                        "every_message", keywords)
    return funnel_sql(rollup, f"SELECT * FROM ({linked_clicks}) WHERE linked_by IS NOT NULL",
                      f"SELECT * FROM ({linked_replies}) WHERE linked_by IS NOT NULL")


def _cost_rows_sql(messages: str, missing_before: datetime | None) -> str:
    """The cost rows (:func:`dashboard.queries.cost.cost_by` ``campaign``'s, group column
    ``grp``) of the ``messages`` and ``log_only``, receipts missing before ``missing_before``."""
    cut_off = "NULL::TIMESTAMPTZ" if missing_before is None else \
        f"{string_literal(missing_before.isoformat())}::TIMESTAMPTZ"
    cost = cost_sql(f"({receipts_cube_sql(f'({derive.cost_rollup_sql(messages)})')})",
                    f"({log_only_cube_sql('log_only', cut_off)})", "campaign")
    submission = quantiles_by_group_sql(submission_latency_sql(messages), submission_key_sql("campaign", "currency"),
                                        SUBMISSION_QUANTILE_COLUMNS)
    return f"""
        WITH cost AS ({cost}), submission AS ({submission})
        SELECT cost.*, {', '.join(f"submission.{c}" for c in SUBMISSION_COLUMNS)}
        FROM cost LEFT JOIN submission ON submission.grp = {submission_key_sql("cost.grp", "cost.currency")}"""


def _to_spark(sql: str, schema: dict[str, dict[str, str]]) -> str:
    import sqlglot
    from sqlglot.optimizer.qualify import qualify

    tree = sqlglot.parse_one(sql, read="duckdb")
    # Qualifying against the receipts' columns expands `SELECT * EXCLUDE (...)`, which Sail 0.7
    # does not parse, into the columns it stands for.
    tree = qualify(tree, schema=schema, dialect="duckdb",
                   quote_identifiers=False, validate_qualify_columns=False)
    # A rewritten node's own children are not visited again: a second pass reaches them.
    for _ in range(2):
        tree = tree.transform(_spark_rewrites)
    return tree.sql(dialect="spark", pretty=True)


def _spark_rewrites(node):
    """What sqlglot 30 does not translate from DuckDB to Spark SQL that Sail 0.7 runs."""
    from sqlglot import exp

    if isinstance(node, exp.Anonymous) and node.name.lower() == "epoch_us":
        return exp.UnixMicros(this=node.expressions[0].copy())  # Spark: unix_micros
    if isinstance(node, exp.Anonymous) and node.name.lower() == "hash":
        # A message's key (the events' message_key): Spark's hash has 32 bits, xxhash64 64 as DuckDB's.
        return exp.Anonymous(this="xxhash64", expressions=[e.copy() for e in node.expressions])
    if isinstance(node, exp.Tuple) and isinstance(node.parent, (exp.ArgMin, exp.ArgMax)):
        # arg_min(x, (a, b)): DuckDB orders by the tuple, Spark by a struct (Spark reads (a, b) as no value).
        return exp.Struct(expressions=[e.copy() for e in node.expressions])
    if isinstance(node, exp.PercentileCont):
        # DuckDB's quantile_cont(x, q) is Spark's exact percentile(x, q): both interpolate linearly
        # between the closest ranks (sqlglot would write percentile_cont(x, q), not Spark SQL).
        return exp.Anonymous(this="percentile", expressions=[node.this.copy(), node.expression.copy()])
    if isinstance(node, exp.Union) and node.args.get("by_name"):
        # UNION ALL BY NAME (not in Spark SQL): both sides' columns in one order, a column one
        # side lacks NULL there (the sides are plain selects once qualified).
        sides = [node.left, node.right]
        if all(isinstance(side, exp.Select) for side in sides):
            by_name = [{column.alias_or_name: column for column in side.expressions} for side in sides]
            order = list(dict.fromkeys(name for columns in by_name for name in columns))
            for side, columns in zip(sides, by_name):
                side.set("expressions", [columns[name].copy() if name in columns else exp.alias_(exp.Null(), name)
                                         for name in order])
            node.set("by_name", None)
        return node
    group = node.args.get("group") if isinstance(node, exp.Select) else None
    if group is not None and group.args.get("all"):
        # GROUP BY ALL (not in Sail 0.7): the select list's expressions that aggregate nothing.
        keys = [column.unalias().copy() for column in node.expressions if not column.find(exp.AggFunc)]
        node.set("group", exp.Group(expressions=keys))
    return node
