"""The Campaigns KPIs as one SQL query over a receipts relation, for engines other than DuckDB.

Other engines (Sail, Spark) read the same Iceberg table as the dashboard; this module gives them
the same figures from the same definitions, never a second hand-written copy:

* :func:`campaign_kpis_sql` composes the store's own SQL builders, unchanged: the per-message
  state exactly as a rebuild computes it (:func:`dlrlens.store.derive.receipt_units_sql`,
  :func:`~dlrlens.store.derive.merge_sql`, :func:`~dlrlens.store.derive.messages_view_sql`),
  the counts and shares (:func:`dlrlens.store.derive.rollup_sql` and
  :func:`dlrlens.store.sql.counts_select`), the latency percentiles
  (:func:`dlrlens.store.reader.quantiles_by_group_sql`) and the per-receipt KPIs
  (:func:`dlrlens.store.sql.distinct_receipts_sql`, :func:`dashboard._sql.receipt_kpis_sql`).
  Its columns: ``campaign``, then every column of :data:`dashboard.catalog.KPI_COLUMNS`, one row
  per campaign, by messages descending. In DuckDB it gives exactly the Campaigns table.
* :func:`campaign_kpis_sql` with ``dialect="spark"`` translates that query with sqlglot (a SQL
  parser and transpiler), plus the rewrites in :func:`_spark_rewrites` for what sqlglot 30 leaves
  in DuckDB's words or what Sail 0.7 does not take (each found by running the query on Sail).

Scope: every receipt of the relation (no date range, no filter), like ``dlrlens report`` without
options. The campaign is the message's label, else its batch id, else ``(none)``: campaign names
imported with ``dlrlens campaigns import`` or synced from Mobivate live in a data directory, not in
the table. The funnel columns are not generated here yet (the clicks and replies tables are in the
catalog, :mod:`dlrlens.store.iceberg.table`), and the cost columns come from Mobivate's send
records, which the Iceberg store does not hold yet.

sqlglot is imported only by the Spark translation (the ``engines`` extra).
"""

from __future__ import annotations

from dlrlens.store import derive
from dlrlens.store.reader import QUANTILES, quantiles_by_group_sql
from dlrlens.store.sql import counts_select, distinct_receipts_sql
from dashboard._sql import receipt_kpis_sql
from dashboard.catalog import KPI_COLUMNS

DIALECTS = ("duckdb", "spark")


def campaign_kpis_sql(receipts: str = "receipts", dialect: str = "duckdb") -> str:
    """Campaign and every KPI column per campaign over the stored receipt rows of the relation
    named ``receipts`` (a table or view with the receipt columns), in ``dialect``."""
    if dialect not in DIALECTS:
        raise ValueError(f"dialect must be one of {', '.join(DIALECTS)}, not {dialect!r}")
    receipts_only = derive.merge_sql(derive.receipt_units_sql(receipts, events=False), events=False)
    messages = derive.messages_view_sql(f"({receipts_only})", sends=False)
    counts = (f"SELECT {counts_select('campaign')} "
              f"FROM ({derive.rollup_sql(messages, t='sent_at')}) GROUP BY ALL")
    quantiles = quantiles_by_group_sql(messages, "campaign", [f"latency_{name}_s" for name, _ in QUANTILES])
    per_receipt = receipt_kpis_sql(messages, f"({distinct_receipts_sql(receipts)})", "campaign")
    sql = f"""
        WITH counts AS ({counts}), quantiles AS ({quantiles}), per_receipt AS ({per_receipt})
        SELECT counts.grp AS campaign, {', '.join(KPI_COLUMNS)}
        FROM counts LEFT JOIN quantiles USING (grp) LEFT JOIN per_receipt USING (grp)
        ORDER BY messages DESC, campaign
    """
    return sql if dialect == "duckdb" else _to_spark(sql, receipts)


def _to_spark(sql: str, receipts: str) -> str:
    import sqlglot
    from sqlglot.optimizer.qualify import qualify

    tree = sqlglot.parse_one(sql, read="duckdb")
    # Qualifying against the receipts' columns expands `SELECT * EXCLUDE (...)`, which Sail 0.7
    # does not parse, into the columns it stands for.
    tree = qualify(tree, schema={receipts: derive.receipt_sql_types()}, dialect="duckdb",
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
    if isinstance(node, exp.PercentileCont):
        # DuckDB's quantile_cont(x, q) is Spark's exact percentile(x, q): both interpolate linearly
        # between the closest ranks (sqlglot would write percentile_cont(x, q), not Spark SQL).
        return exp.Anonymous(this="percentile", expressions=[node.this.copy(), node.expression.copy()])
    group = node.args.get("group") if isinstance(node, exp.Select) else None
    if group is not None and group.args.get("all"):
        # GROUP BY ALL (not in Sail 0.7): the select list's expressions that aggregate nothing.
        keys = [column.unalias().copy() for column in node.expressions if not column.find(exp.AggFunc)]
        node.set("group", exp.Group(expressions=keys))
    return node
