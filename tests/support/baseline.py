"""The test oracle: every figure by the straightforward definition, for the tests and the
query benchmark to compare the store's fast path with (:class:`BaselineStore`).

Every query groups the raw receipt rows by message (:func:`messages_sql`) and takes
percentiles with DuckDB's ``quantile_cont``: no derived state, no fresh tail, no id index, no
partials. The production read path (:class:`dlrlens.store.reader.Store`) knows nothing of it:
the oracle overrides the store's relation methods instead. Slow at scale.

The per-message definitions here are the ones ``dlrlens/store/derive.py`` keeps incrementally
(order = (created, received_at, then the value)); see the KPI definitions in
``dashboard/queries/__init__.py``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd

from dlrlens.store import derive, events, reader, sends
from dlrlens.store.reader import CHARTED_FROM, CHARTED_TO, DELIVERY, SUBMISSION, Store, _instant, _Snapshot
from dlrlens.store.sql import (dimension_conditions, json_pointer, raw_rows_sql, seconds_between, send_conditions,
                               time_conditions)

FINAL = "category <> 'pending'"


def messages_sql(rows: str) -> str:
    """The straightforward per-message definition over stored receipt rows ``rows`` (a
    relation with the contract's columns, e.g. ``read_parquet(...)``): GROUP BY message.

    Columns: delivery_message_id, campaign, batch_id, client_reference, sent_at, outcome,
    reason, last_status, final_created, delivered_at, latency_us, latency_s, regressions
    (1 when the message's latest pending row is created after its deciding final row),
    label_sets (JSON list of its distinct labels texts), receipts (distinct), stored_rows.
    """
    def first(column: str) -> str:
        key = f"{{'c': created, 'r': received_at, 'v': {column}}}"
        return f"arg_min({column}, {key}) FILTER (WHERE {column} IS NOT NULL)"

    final_key = "{'c': created, 'r': received_at, 's': status, 'k': category}"
    latest_key = "{'c': created, 'r': received_at, 's': status}"
    return f"""
        WITH per_message AS (
            SELECT delivery_message_id,
                   min(created) AS sent_at,
                   {first('campaign')} AS campaign_label,
                   {first('batch_id')} AS batch_id,
                   {first('client_reference')} AS client_reference,
                   arg_max(category, {final_key}) FILTER (WHERE {FINAL}) AS final_category,
                   arg_max(status, {final_key}) FILTER (WHERE {FINAL}) AS final_status,
                   max(created) FILTER (WHERE {FINAL}) AS final_created,
                   arg_max(status, {latest_key}) AS latest_status,
                   min(created) FILTER (WHERE category = 'delivered') AS first_delivered_at,
                   max(created) FILTER (WHERE category = 'pending') AS last_pending_created,
                   to_json(list_sort(list_distinct(list(labels))))::VARCHAR AS label_sets,
                   count(DISTINCT receipt_id) AS receipts,
                   count(*) AS stored_rows
            FROM ({raw_rows_sql(rows)})
            GROUP BY delivery_message_id
        )
        SELECT delivery_message_id,
               coalesce(campaign_label, batch_id, '(none)') AS campaign,
               batch_id,
               client_reference,
               sent_at,
               coalesce(final_category, 'pending') AS outcome,
               CASE WHEN final_category = 'failed' THEN final_status END AS reason,
               coalesce(final_status, latest_status) AS last_status,
               final_created,
               CASE WHEN final_category = 'delivered' THEN first_delivered_at END AS delivered_at,
               CASE WHEN final_category = 'delivered' AND first_delivered_at > sent_at
                    THEN epoch_us(first_delivered_at) - epoch_us(sent_at) END AS latency_us,
               CASE WHEN final_category = 'delivered' AND first_delivered_at > sent_at
                    THEN {seconds_between('sent_at', 'first_delivered_at')} END AS latency_s,
               coalesce(last_pending_created > final_created, false)::INTEGER AS regressions,
               label_sets,
               receipts,
               stored_rows
        FROM per_message
    """


def send_records_sql(data_dir: Path) -> str:
    """A message's send record, straightforwardly: of its MT records (log and history), the
    log's, then the latest modified (:func:`dlrlens.store.sends.sends_sql`)."""
    return sends.sends_sql(data_dir, where=sends.MT_RECORD)


def joined_sql(messages: str, all_messages: str, data_dir: Path, log_window: str = "TRUE") -> str:
    """One row per message: the receipts' messages ``messages`` (a ``messages`` relation, SQL)
    with their MT send record when there is one (``in_log`` false: cost unknown), and the MT
    send records meeting ``log_window`` (SQL on ``created``) whose message has no receipt at
    all in ``all_messages`` (``has_receipt`` false, ``outcome`` NULL).

    Columns: delivery_message_id, campaign (:func:`campaign_sql`), batch_id, campaign_id,
    sent_at (the earliest receipt, else the log's created), outcome, last_status, latency_s,
    label_sets, delivered_at (the first DELIVERED receipt's created), has_receipt, in_log, log_created, log_status,
    cost, currency, country, network, originator, route_id, recipient_hash, recipient_masked.
    """
    send_columns = ("s.created AS log_created, s.status AS log_status, s.cost, s.currency, s.country, s.network, "
                    "s.originator, s.route_id, s.recipient_hash, s.recipient_masked, s.campaign_id")
    return f"""(
        WITH s AS (SELECT * FROM {send_records_sql(data_dir)}),
             n AS (SELECT * FROM {sends.names_sql(data_dir)}),
             j AS (
                SELECT m.delivery_message_id,
                       CASE WHEN m.campaign IS DISTINCT FROM coalesce(m.batch_id, '{sends.NO_CAMPAIGN}')
                            THEN m.campaign END AS label,
                       m.batch_id, coalesce(m.sent_at, s.created) AS sent_at, m.outcome, m.last_status,
                       m.latency_s, m.label_sets, m.delivered_at,
                       TRUE AS has_receipt, s.message_id IS NOT NULL AS in_log, {send_columns}
                FROM {messages} m LEFT JOIN s ON s.message_id = m.delivery_message_id
                UNION ALL
                SELECT s.message_id, NULL, NULL, s.created, NULL, NULL, NULL, NULL, NULL,
                       FALSE, TRUE, {send_columns}
                FROM s WHERE {log_window}
                  AND s.message_id NOT IN (SELECT delivery_message_id FROM {all_messages}))
        SELECT j.* EXCLUDE (label),
               {sends.campaign_sql("j.label", "j.batch_id", "CASE WHEN NOT j.has_receipt THEN j.campaign_id END",
                             "nb.name", "CASE WHEN NOT j.has_receipt THEN nc.name END")} AS campaign
        FROM j LEFT JOIN n nb ON nb.campaign_id = j.batch_id
               LEFT JOIN n nc ON nc.campaign_id = j.campaign_id)"""


def raw_label_condition(rows: str):
    """Label filter of the baseline: some stored row of the message carries the label."""
    def condition(i: int, key: str, value: str, params: dict) -> str:
        params[f"label_path_{i}"] = json_pointer(key)
        params[f"label_value_{i}"] = value
        return (f"delivery_message_id IN (SELECT delivery_message_id FROM ({raw_rows_sql(rows)}) "
                f"WHERE json_extract_string(labels, $label_path_{i}) = $label_value_{i})")
    return condition


class BaselineStore(Store):
    """The straightforward definition: every query groups the raw receipt rows by message
    (:func:`messages_sql`) and takes percentiles with DuckDB's ``quantile_cont``. No derived
    state, no tail, no index. Slow at scale: for tests and benchmarks only."""

    def __init__(self, data_dir: str | Path, settings: dict | None = None, materialize: bool = False,
                 columns: str = "*"):
        # materialize: group by message once per data version (tests, benchmarks), not per query;
        # columns: of the messages to keep then (leaving out unused ones skips their aggregates).
        self.materialize, self.columns = materialize, columns
        super().__init__(data_dir, settings)

    def _prepare(self, version, manifest, files) -> None:
        self._snapshot = None
        self._empty_tables()
        self._snapshot = _Snapshot(version=version, manifest=None, files=[], tail=[], touched={}, numbers={},
                                   receipt_files=self._absolute(files),
                                   event_files={table: list(self._absolute(events.event_files(self.data_dir, table)))
                                                for table in events.EVENT_TABLES})
        if self.materialize:
            self._con.execute(f"CREATE OR REPLACE TEMP TABLE baseline_messages AS "
                              f"SELECT {self.columns} FROM ({messages_sql(self.raw_sql())})")

    def messages_sql(self, f=None) -> str:
        if self.materialize:
            return "baseline_messages"
        return f"({messages_sql(self.raw_sql())})"

    def label_condition(self, f):
        return raw_label_condition(self.raw_sql())

    def counts_sql(self, f, params: dict, cuts=()) -> str:
        time = " AND ".join(["TRUE"] + time_conditions(f, params))
        return f"({derive.rollup_sql(f'SELECT * FROM {self.messages_sql()} WHERE {time}', t='sent_at')})"

    def filtered_counts_sql(self, f, cuts=()) -> tuple[str, dict]:
        messages, params = self.filtered_messages_sql(f)
        return derive.rollup_sql(messages, t="sent_at"), params

    def latency_bucket_counts(self, f, group: str) -> pd.DataFrame:
        sql, params = self.filtered_messages_sql(f)
        return self.query(f"SELECT {group} AS grp, {derive.latency_bucket_sql()} AS b, "
                          f"count(*) AS n FROM ({sql}) WHERE latency_us IS NOT NULL GROUP BY ALL "
                          f"ORDER BY grp, b", params)

    def _quantiles(self, f, group, names, kind=DELIVERY, count=None) -> pd.DataFrame:
        if kind is SUBMISSION:
            params: dict = {}
            conditions = (time_conditions(f, params) + send_conditions(f, params)
                          + dimension_conditions(replace(f, outcomes=()), params, self.label_condition(f)))
            rows = f"SELECT * FROM {self._joined(f, params)} WHERE has_receipt AND {' AND '.join(conditions)}"
            sql = f"SELECT *, latency_us / 1e6 AS latency_s FROM ({derive.submission_view_sql(rows)})"
            return self.query(reader.quantiles_by_group_sql(sql, group, names, count), params)
        return reader._quantiles_by_duckdb(self, f, group, names, kind, count)

    # Mobivate's send records: joined to the messages at query time (the store keeps each
    # message's record in its derived state instead).
    def _joined(self, f, params: dict) -> str:
        window = " AND ".join(["TRUE"] + time_conditions(f, params, column="created"))
        return joined_sql(self.messages_sql(), self.messages_sql(), self.data_dir, window)

    def cost_counts_sql(self, f, params: dict) -> str:
        time = " AND ".join(["TRUE"] + time_conditions(f, params))
        return f"({derive.cost_rollup_sql(f'SELECT * FROM {self._joined(f, params)} WHERE has_receipt AND {time}')})"

    def log_only_sql(self, f, params: dict) -> str:
        time = " AND ".join(["TRUE"] + time_conditions(f, params))
        return f"(SELECT * FROM {self._joined(f, params)} WHERE NOT has_receipt AND {time})"

    # Clicks and replies: linked at query time against every message (the store keeps the link
    # in its derived state instead).
    # (delivery_message_id too: the baseline's label filter looks up the raw rows by message)
    def _every_message(self) -> str:
        return f"(SELECT {derive.LINKED_MESSAGE_COLUMNS} FROM {self.messages_sql()})"

    def linked_clicks_sql(self) -> str:
        return (f"(WITH m AS MATERIALIZED {self._every_message()} "
                f"{derive.linked_clicks_at_query_sql(self.clicks_sql(derive.CLICK_COLUMNS), 'm')})")

    def linked_replies_sql(self) -> str:
        linked = derive.linked_replies_at_query_sql(self.replies_sql(derive.REPLY_COLUMNS), "m", events.opt_out_keywords())
        return f"(WITH m AS MATERIALIZED {self._every_message()} SELECT * FROM ({linked}))"

    def messages_for_ids(self, ids_table: str) -> str:
        return (f"(SELECT * FROM {self.messages_sql()} "
                f"WHERE delivery_message_id IN (SELECT delivery_message_id FROM {ids_table}))")

    def _data_range(self):
        lo, hi = self._con.execute(f"SELECT epoch_us(min(sent_at)), epoch_us(max(sent_at)) FROM {self.messages_sql()} "
                                   f"WHERE sent_at >= $low AND sent_at < $high",
                                   {"low": CHARTED_FROM, "high": CHARTED_TO}).fetchall()[0]  # see Store
        return None if lo is None else (_instant(lo), _instant(hi))
