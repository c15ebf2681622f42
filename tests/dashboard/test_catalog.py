"""The KPI catalog: one entry per KPI, the column lists derived from it, and agreement with
what the store computes (percentiles, within-thresholds) and what the queries return."""

from __future__ import annotations

import pytest

from dashboard import catalog, queries
from dlrlens.store.derive import LATENCY_THRESHOLDS
from dlrlens.store.reader import QUANTILES


def test_every_kpi_is_written_once_and_completely():
    columns = [k.column for k in catalog.KPIS]
    assert len(columns) == len(set(columns)) and len({k.label for k in catalog.KPIS}) == len(columns)
    for kpi in catalog.KPIS:
        assert kpi.unit in catalog.UNITS and kpi.label and kpi.definition.endswith("."), kpi
    assert catalog.kpi("delivery_rate").unit == "share"
    with pytest.raises(KeyError, match="not a KPI"):
        catalog.kpi("share")
    with pytest.raises(ValueError):
        catalog.Kpi("x", "X", "percent", "A percentage.")


def test_column_lists_keep_their_order():
    """The lists the query layer builds its tables with, column for column (order matters)."""
    assert catalog.KPI_COLUMNS == [
        "messages", "delivered", "failed", "unknown", "pending", "delivery_rate", "delivered_of_all",
        "latency_p50_s", "latency_p90_s", "latency_p95_s", "latency_p99_s", "latency_messages",
        "delivered_without_earlier", "within_10s", "within_1m", "within_5m", "within_1h",
        "webhook_lag_p50_s", "webhook_lag_p95_s", "receipts", "duplicate_rows", "regressions",
    ]
    assert catalog.COUNT_KPIS == [
        "messages", "delivered", "failed", "unknown", "pending", "latency_messages",
        "delivered_without_earlier", "receipts", "duplicate_rows", "regressions",
    ]
    assert catalog.RECEIPT_KPIS == ["webhook_lag_p50_s", "webhook_lag_p95_s", "receipts", "duplicate_rows"]
    assert catalog.TREND_COLUMNS == ["bucket_start", "messages", "delivered", "failed", "unknown", "pending",
                                     "delivery_rate"]
    assert catalog.LATENCY_COLUMNS == ["latency_messages", "p50_s", "p90_s", "p95_s", "p99_s",
                                       "within_10s", "within_1m", "within_5m", "within_1h"]
    for name in ("KPI_COLUMNS", "COUNT_KPIS", "RECEIPT_KPIS", "TREND_COLUMNS", "LATENCY_COLUMNS"):
        assert getattr(queries, name) == getattr(catalog, name), name


def test_units_of_other_columns():
    assert catalog.SHARE_COLUMNS == {"delivery_rate", "delivered_of_all", "within_10s", "within_1m", "within_5m",
                                     "within_1h", "click_rate", "opt_out_rate", "share"}
    assert catalog.SECONDS_COLUMNS == {k.column for k in catalog.ALL_KPIS if k.column.endswith("_s")} | {
        "p50_s", "p90_s", "p95_s", "p99_s", "latency_s"}
    assert catalog.unit("p95_s") == "seconds" and catalog.unit("campaign") is None
    assert catalog.definition("campaign") is None and catalog.label("campaign") is None


def test_the_catalog_names_what_the_store_computes():
    assert catalog.LATENCY_PERCENTILE_KPIS == [f"latency_{name}_s" for name, _ in QUANTILES]
    assert catalog.WITHIN_KPIS == [name for name, _ in LATENCY_THRESHOLDS]
