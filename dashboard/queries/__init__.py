"""Every number the dashboard, its downloads and ``dlrlens report`` show (no Streamlit here).

Plain functions ``(store, filters, ...) -> pandas.DataFrame``, one module per question, over
the relations of the store's read interface (:class:`dlrlens.store.reader.Store`; nothing here
touches ``data/`` itself). None raises on empty data: they return an empty frame with the
documented columns (KPIs: one row of zeros/NaN). Every result is cached per (question,
arguments, data version) by the store.

KPI definitions (identical on screen, in downloads and in reports; the wording users see is
``dashboard.catalog.KPIS``). Every per-message one is duplicate-insensitive: the
same receipt stored twice changes nothing.

* Message: one delivery_message_id.
* Campaign: the message's ``campaign`` label (from its earliest labelled receipt), else the
  name of its batch_id (imported, else Mobivate's campaign list), else its batch_id, else
  ``(none)``; a log record without any receipt: the name of its log campaignId
  (:func:`dlrlens.store.sends.campaign_sql`).
* Sent time: the earliest ``created`` of its receipts; date filters and buckets use it.
  Charts over time (:func:`trend`, :func:`failure_reasons_over_time`) cover sent times in
  [:data:`CHARTED_FROM`, :data:`CHARTED_TO`) only; :func:`uncharted_messages` counts the
  others (a far-off ``created`` already stored), which every other figure includes.
* Outcome: the final receipt (category != pending) with the latest created decides (ties:
  latest received_at, then status name); no final receipt -> ``pending``. ``reason`` is the
  deciding status of a failed message; ``last_status`` is the deciding status of a finished
  message, or the latest status of a pending one (where it is stuck).
* Regressions: messages whose latest intermediate receipt is created after their deciding
  final receipt.
* Delivery rate = delivered / (delivered + failed + unknown); delivered of all = delivered / messages.
* Latency: created of the first DELIVERED receipt minus sent time, for delivered messages with
  an earlier receipt only; percentiles by linear interpolation (quantile_cont == numpy), exact.
* Per-receipt figures (receipts = distinct receipt_id, duplicate_rows = stored rows minus
  receipts, webhook lag = received_at - created of the first stored copy) come from the raw
  receipts: :func:`data_health`, and :func:`kpis` / :func:`campaigns` with
  ``receipt_figures=True`` (slow at scale; without it those columns are NaN).

Modules (everything is re-exported here: ``from dashboard import queries; queries.kpis(...)``):

* :mod:`~dashboard.queries.campaign_table`: :func:`campaign_table` (the Campaigns page's table and
  the report's Campaigns sheet, defined once).
* :mod:`~dashboard.queries.kpis`: :func:`kpis`, :func:`kpis_with_change`, :func:`campaigns`,
  :func:`outcome_breakdown`.
* :mod:`~dashboard.queries.trend`: :func:`trend`, :func:`uncharted_messages`,
  :func:`uncharted_note`, :func:`pending_ages`.
* :mod:`~dashboard.queries.failures`: :func:`failure_reasons`,
  :func:`failure_reasons_by_campaign`, :func:`failure_reasons_over_time`.
* :mod:`~dashboard.queries.latency`: :func:`latency_by_campaign`, :func:`latency_distribution`,
  :func:`latencies`, :func:`slowest_latencies`, :func:`latencies_file`.
* :mod:`~dashboard.queries.lookup`: :func:`message_lookup`, :func:`message_summary`,
  :func:`message_detail`.
* :mod:`~dashboard.queries.options`: :func:`campaign_choices`, :func:`label_choices`,
  :func:`campaign_names`, :func:`label_pairs`. Lists meant for widgets are bounded whatever the
  data holds (ranked, searched and limited in DuckDB: at most :data:`OPTION_LIMIT` values reach
  Python); :func:`campaign_names` and :func:`label_pairs` list everything.
* :mod:`~dashboard.queries.cost`: :func:`cost_by`, :func:`total_cost`, :func:`receipts_missing`,
  :func:`sync_state` (Mobivate's send records joined to the receipts).
* :mod:`~dashboard.queries.geography`: :func:`delivery_by` country, network, sender ID, route;
  :func:`send_choices`.
* :mod:`~dashboard.queries.health`: :func:`data_health`, and the collector's status files
  (:func:`maintenance_status`, :func:`rejected_summary`, read by :mod:`dlrlens.store.status`).
* :mod:`~dashboard.queries.funnel`: :func:`funnel`, :func:`unlinked_events`,
  :func:`clicks_over_time`, :func:`click_breakdown`, :func:`top_links`, :func:`message_replies`,
  :func:`campaigns_with_funnel`
  (clicks and replies: the campaign funnel).
* :mod:`~dashboard.queries.alerts`: :func:`alerts_overview`, :func:`alert_channel_failures`, and the
  silence form's :func:`add_silence` / :func:`end_silence` (``data/alerts.sqlite`` through
  :mod:`dlrlens.store.alert_state`).
* :mod:`~dashboard.queries._common`: column lists, limits and helpers they share.

How the figures stay fast over 100 M receipts (derived per-message state, fresh tail, exact
percentiles from kept partials): :mod:`dlrlens.store.reader`.
"""

from dlrlens.store.reader import CHARTED_FROM, CHARTED_TO, QUANTILES, Store
from dlrlens.store.selection import OUTCOMES, Filters, zone_info
from dashboard.queries._common import (AGE_BUCKETS, AUTO_HOUR_BUCKETS_UP_TO, COUNT_KPIS, KPI_COLUMNS,
                                       LATENCY_COLUMNS, MAX_FILLED_BUCKETS, NO_CAMPAIGN, OPTION_LIMIT,
                                       RECEIPT_KPIS, TREND_COLUMNS, bucket_start, latency_quantiles)
from dashboard.queries.failures import failure_reasons, failure_reasons_by_campaign, failure_reasons_over_time
from dashboard.queries.health import data_health, maintenance_status, rejected_summary
from dashboard.queries.kpis import campaigns, kpis, kpis_with_change, outcome_breakdown
from dashboard.queries.latency import (LATENCY_ROW_COLUMNS, latencies, latencies_file, latency_by_campaign,
                                       latency_distribution, slowest_latencies)
from dashboard.queries.lookup import (DETAIL_COLUMNS, LOOKUP_COLUMNS, SUMMARY_COLUMNS, message_detail,
                                      message_lookup, message_summary)
from dashboard.queries.options import (Choices, campaign_choices, campaign_names, label_choices,
                                       label_pairs)
from dashboard.queries.trend import pending_ages, trend, uncharted_messages, uncharted_note
from dashboard.queries.funnel import (BREAKDOWNS, FUNNEL_TABLE_COLUMNS, REPLY_COLUMNS, campaigns_with_funnel,
                                      click_breakdown, clicks_over_time, funnel, message_replies, top_links,
                                      unlinked_events)
from dashboard.queries.alerts import add_silence, alert_channel_failures, alerts_overview, end_silence
from dashboard.queries.cost import (COST_TABLE_COLUMNS, MISSING_COLUMNS, SUBMISSION_COLUMNS, campaigns_with_cost, cost_by,
                                    receipts_missing, submission_latency,
                                    sync_state, total_cost, where_table)
from dashboard.queries.geography import DIMENSIONS, delivery_by, send_choices
from dashboard.queries.campaign_table import campaign_table

__all__ = [
    # the store and the selection
    "Store", "Filters", "zone_info", "OUTCOMES", "CHARTED_FROM", "CHARTED_TO", "QUANTILES",
    # column lists and limits
    "AGE_BUCKETS", "AUTO_HOUR_BUCKETS_UP_TO", "COUNT_KPIS", "KPI_COLUMNS", "LATENCY_COLUMNS",
    "MAX_FILLED_BUCKETS", "NO_CAMPAIGN", "OPTION_LIMIT", "RECEIPT_KPIS", "TREND_COLUMNS",
    "LATENCY_ROW_COLUMNS", "DETAIL_COLUMNS", "LOOKUP_COLUMNS",
    # questions
    "kpis", "kpis_with_change", "campaigns", "outcome_breakdown",
    "trend", "uncharted_messages", "uncharted_note", "pending_ages", "bucket_start",
    "failure_reasons", "failure_reasons_by_campaign", "failure_reasons_over_time",
    "latency_quantiles", "latency_by_campaign", "latency_distribution", "latencies", "slowest_latencies",
    "latencies_file",
    "message_lookup", "message_summary", "message_detail", "SUMMARY_COLUMNS",
    "Choices", "campaign_choices", "label_choices", "campaign_names", "label_pairs",
    "data_health", "maintenance_status", "rejected_summary",
    # the campaign funnel (clicks and replies)
    "BREAKDOWNS", "FUNNEL_TABLE_COLUMNS", "REPLY_COLUMNS", "campaigns_with_funnel", "funnel", "unlinked_events", "clicks_over_time",
    "click_breakdown", "top_links", "message_replies",
    "alerts_overview", "alert_channel_failures", "add_silence", "end_silence",
    # Mobivate's send records joined to the receipts (names, cost, country, network)
    "COST_TABLE_COLUMNS", "MISSING_COLUMNS", "cost_by", "total_cost", "receipts_missing", "sync_state",
    "campaigns_with_cost", "where_table", "SUBMISSION_COLUMNS", "submission_latency",
    "DIMENSIONS", "delivery_by", "send_choices",
    # the Campaigns table (page, downloads, report): receipt, funnel and cost columns
    "campaign_table",
]
