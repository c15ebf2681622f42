"""The store's questions the alerts share with the dashboard (``Store.window_counts``,
``Store.pending_by_age``, ``Store.receipts_received``, ``Store.unknown_statuses``) give the
dashboard's figures exactly, with the derived per-message state in force (pre-aggregated
slots, windows cutting through them) and without it (everything fresh tail)."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest

from dashboard import queries
from dlrlens.store import derive
from dlrlens.store.reader import Store
from dlrlens.store.selection import Filters
from tests.support.alert_streams import stream
from tests.support.factory import receipt, utc, write_receipts

AT = utc(2026, 11, 20, 12, 7, 30)  # not on a 15-minute slot


@pytest.fixture(params=["derived", "tail only"])
def data(tmp_path, request):
    rows = stream("a", AT - timedelta(hours=5), AT, delivered=0.9, pending=0.05)
    rows += stream("b", AT - timedelta(hours=3), AT + timedelta(minutes=20), delivered=0.6, labels={"team": "x"})
    rows += [receipt(f"u{i}", "BRAND_NEW", AT - timedelta(minutes=i), received_at=AT - timedelta(minutes=i))
             for i in range(5)]
    write_receipts(tmp_path, rows)
    if request.param == "derived":
        derive.rebuild_derived(tmp_path)
    return tmp_path


WINDOWS = [(AT - timedelta(minutes=30), AT), (AT - timedelta(hours=2, minutes=3), AT - timedelta(minutes=41)),
           (AT - timedelta(hours=4), AT)]  # overlapping, cutting through slots


def test_window_counts_are_the_dashboards_kpis_per_window_and_campaign(data):
    with Store(data) as store:
        counts = store.window_counts(Filters(), WINDOWS, "[campaign]")
        for i, (start, end) in enumerate(WINDOWS):
            expected = queries.campaigns(store, Filters(start=start, end=end)).set_index("campaign")
            got = counts[counts["w"] == i].set_index("grp")
            assert sorted(got.index) == sorted(expected.index)
            for column in ("messages", "delivered", "failed", "unknown", "pending", "delivery_rate"):
                assert got[column].to_dict() == pytest.approx(expected[column].to_dict()), (i, column)


def test_window_counts_by_label_match_the_label_filter(data):
    with Store(data) as store:
        from dlrlens.store.sql import json_pointer, label_values_sql

        counts = store.window_counts(Filters(), WINDOWS[:1], label_values_sql("p"), {"p": json_pointer("team")})
        expected = queries.kpis(store, Filters(start=WINDOWS[0][0], end=AT, labels=(("team", "x"),)))
    assert list(counts["grp"]) == ["x"]
    assert int(counts["messages"].iloc[0]) == int(expected["messages"].iloc[0])
    assert float(counts["delivery_rate"].iloc[0]) == pytest.approx(float(expected["delivery_rate"].iloc[0]))


def test_pending_by_age_is_what_the_overview_shows(data):
    with Store(data) as store:
        ages = queries.pending_ages(store, Filters(), now=AT)
        mine = store.pending_by_age(Filters(), AT, (3600, 86400, 259200))
    assert int(ages["messages"].sum()) == int(mine["messages"].sum()) > 0
    older = store_older(data, 1800)
    assert 0 < older < int(ages["messages"].sum())


def store_older(data, seconds: int) -> int:
    with Store(data) as store:
        df = store.pending_by_age(Filters(), AT, (seconds,))
    return int(df[df["bucket_order"] == 1]["messages"].sum())


def test_receipt_arrivals_and_unknown_statuses(data):
    with Store(data) as store:
        store.refresh()
        raw = store.query(f"SELECT received_at FROM {store.raw_sql()}")
        raw["received_at"] = pd.to_datetime(raw["received_at"], utc=True)
        start, end = AT - timedelta(minutes=30), AT
        lo, hi = pd.Timestamp(start).floor("min"), pd.Timestamp(end).floor("min")
        expected = int(((raw["received_at"] >= lo) & (raw["received_at"] < hi)).sum())
        assert store.receipts_received([(start, end), (end, end + timedelta(days=1))]) == [
            expected, int((raw["received_at"] >= hi).sum())]
        unknown = store.unknown_statuses(AT - timedelta(minutes=3, seconds=1), AT)
    assert unknown[["status", "receipts"]].values.tolist() == [["BRAND_NEW", 3]]


def test_an_earlier_window_after_a_later_one_is_counted_in_full(tmp_path):
    # The per-partition answers are kept for rows received since the day before a window: a
    # later question about an older window (alerts check --at in the past) must read again.
    rows = [receipt(f"old{i}", "DELIVERED", AT - timedelta(days=3, minutes=i), received_at=AT - timedelta(days=3))
            for i in range(4)]
    rows += [receipt(f"new{i}", "BRAND_NEW", AT - timedelta(minutes=i), received_at=AT - timedelta(minutes=i))
             for i in range(3)]
    write_receipts(tmp_path, rows)
    recent = (AT - timedelta(hours=1), AT + timedelta(minutes=1))
    older = (AT - timedelta(days=3, hours=1), AT - timedelta(days=2))
    with Store(tmp_path) as store:
        assert store.receipts_received([recent]) == [3]
        assert store.receipts_received([older, recent]) == [4, 3]
        assert store.unknown_statuses(*recent)["receipts"].tolist() == [3]
        assert store.unknown_statuses(AT - timedelta(days=4), AT + timedelta(minutes=1))["receipts"].tolist() == [3]
        assert store.receipts_received([recent]) == [3]
