"""dashboard.queries against hand-built receipt sets with known answers (see the KPI definitions)."""

from __future__ import annotations

import gzip
import io
import math
import os
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from dashboard import queries as q
from dashboard.queries import Filters, Store
from tests.support.factory import demo_rows, message, receipt, utc, write_receipts

T0 = utc(2026, 11, 3, 12, 0)


def at(seconds: float):
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


@pytest.fixture
def store(data_dir):
    with Store(data_dir) as s:
        yield s


def kpi(store, f=Filters()):
    """Every KPI including the per-receipt ones (raw path)."""
    return q.kpis(store, f, receipt_figures=True).iloc[0]


def detail(store, f=Filters()):
    return q.message_detail(store, f).set_index("delivery_message_id")


# --------------------------------------------------------------------------- empty data


def test_missing_data_dir_gives_empty_results_with_documented_columns(store):
    f = Filters()
    assert not store.has_data()
    assert store.data_range() is None
    row = kpi(store)
    assert row["messages"] == 0 and row["receipts"] == 0 and row["duplicate_rows"] == 0
    assert math.isnan(row["delivery_rate"]) and math.isnan(row["latency_p50_s"])
    assert list(q.kpis(store, f).columns) == q.KPI_COLUMNS
    assert list(q.campaigns(store, f).columns) == ["campaign"] + q.KPI_COLUMNS
    assert list(q.trend(store, f).columns) == q.TREND_COLUMNS and q.trend(store, f).empty
    assert q.outcome_breakdown(store, f)["messages"].tolist() == [0, 0, 0, 0]
    assert list(q.pending_ages(store, f).columns) == ["age_bucket", "messages", "last_status"]
    assert list(q.failure_reasons(store, f).columns) == ["reason", "messages", "share", "meaning"]
    assert list(q.failure_reasons_by_campaign(store, f).columns) == ["campaign", "reason", "messages", "share"]
    assert list(q.failure_reasons_over_time(store, f).columns) == ["bucket_start", "reason", "messages"]
    assert list(q.latencies(store, f).columns)[:3] == ["campaign", "delivery_message_id", "latency_s"]
    assert list(q.latency_by_campaign(store, f).columns) == ["campaign"] + q.LATENCY_COLUMNS
    assert list(q.message_lookup(store, "X").columns) == q.LOOKUP_COLUMNS
    assert list(q.message_detail(store, f).columns) == q.DETAIL_COLUMNS
    assert list(q.label_pairs(store).columns) == ["key", "value", "messages"]
    assert q.campaign_names(store) == []
    health = q.data_health(store)
    assert health["summary"].iloc[0]["receipts"] == 0 and health["per_minute"].empty
    assert q.kpis_with_change(store, f)["value"].iloc[0] == 0


def test_empty_receipts_directory_has_no_data(data_dir, store):
    (data_dir / "receipts" / "date=2026-11-03").mkdir(parents=True)
    (data_dir / "receipts" / "date=2026-11-03" / ".x.parquet.1.tmp").write_bytes(b"partial")
    assert not store.has_data()
    assert kpi(store)["messages"] == 0


# --------------------------------------------------------------------------- dedupe & ordering


def test_same_receipt_in_two_files_counts_once(data_dir, store):
    rows = message("M1", T0, [("ACCEPTED", 0), ("DELIVERED", 30)])
    write_receipts(data_dir, rows, "a")
    write_receipts(data_dir, rows, "b")  # replay: every receipt stored twice
    write_receipts(data_dir, [rows[1]], "c")  # and the DELIVERED one a third time
    row = kpi(store)
    assert row["messages"] == 1 and row["delivered"] == 1
    assert row["receipts"] == 2
    assert row["duplicate_rows"] == 3
    assert row["latency_p50_s"] == 30.0
    lookup = q.message_lookup(store, "M1")
    assert lookup["copies"].tolist() == [2, 3]
    health = q.data_health(store)["summary"].iloc[0]
    assert (health["receipts"], health["stored_rows"], health["duplicate_rows"]) == (2, 5, 3)


def test_out_of_order_arrival_does_not_change_the_outcome(data_dir, store):
    # DELIVERED reaches us before ACCEPTED: the created times still decide.
    write_receipts(data_dir, [
        receipt("M1", "DELIVERED", at(12), received_at=at(13)),
        receipt("M1", "ACCEPTED", at(0), received_at=at(600)),
    ])
    d = detail(store).loc["M1"]
    assert d["outcome"] == "delivered"
    assert d["sent_at"] == pd.Timestamp(T0)
    assert d["latency_s"] == 12.0
    assert kpi(store)["regressions"] == 0


def test_intermediate_receipt_after_final_is_a_regression_not_an_outcome(data_dir, store):
    write_receipts(data_dir, message("M1", T0, [("ACCEPTED", 0), ("DELIVERED", 5), ("RETRY", 9), ("INTERIM_QUEUED", 11)])
                   + message("M2", T0, [("ACCEPTED", 0), ("RETRY", 5)]))
    d = detail(store)
    assert d.loc["M1", "outcome"] == "delivered" and d.loc["M1", "last_status"] == "DELIVERED"
    assert d.loc["M2", "outcome"] == "pending" and d.loc["M2", "last_status"] == "RETRY"
    row = kpi(store)
    assert row["regressions"] == 1  # M1: RETRY and INTERIM_QUEUED after its DELIVERED; M2 has no final
    assert row["pending"] == 1 and row["delivery_rate"] == 1.0 and row["delivered_of_all"] == 0.5


def test_latest_final_receipt_decides(data_dir, store):
    write_receipts(data_dir,
                   message("UP", T0, [("ACCEPTED", 0), ("EXPIRED", 5), ("DELIVERED", 20)])
                   + message("DOWN", T0, [("ACCEPTED", 0), ("DELIVERED", 5), ("UNDELIVERABLE", 20)])
                   # Same created: the later received one decides.
                   + [receipt("TIE", "ACCEPTED", at(0)),
                      receipt("TIE", "REJECTED", at(7), received_at=at(9)),
                      receipt("TIE", "DELIVERED", at(7), received_at=at(8))])
    d = detail(store)
    assert d.loc["UP", "outcome"] == "delivered" and pd.isna(d.loc["UP", "reason"])
    assert d.loc["UP", "latency_s"] == 20.0  # first DELIVERED receipt
    assert d.loc["DOWN", "outcome"] == "failed" and d.loc["DOWN", "reason"] == "UNDELIVERABLE"
    assert pd.isna(d.loc["DOWN", "latency_s"])
    assert d.loc["TIE", "outcome"] == "failed" and d.loc["TIE", "reason"] == "REJECTED"
    row = kpi(store)
    assert (row["delivered"], row["failed"]) == (1, 2)
    assert row["delivery_rate"] == pytest.approx(1 / 3)


def test_unrecognised_status_is_an_unknown_outcome(data_dir, store):
    write_receipts(data_dir,
                   message("M1", T0, [("ACCEPTED", 0), ("carrier_lost", 5)])
                   + message("M2", T0, [("ACCEPTED", 0), ("UNKNOWN", 5)])
                   + message("M3", T0, [("ACCEPTED", 0), ("DELIVERED", 5)]))
    d = detail(store)
    assert d.loc["M1", "outcome"] == "unknown" and d.loc["M1", "last_status"] == "CARRIER_LOST"
    assert d.loc["M2", "outcome"] == "unknown"
    row = kpi(store)
    assert row["unknown"] == 2 and row["delivery_rate"] == pytest.approx(1 / 3)
    unknown = q.data_health(store)["unknown_statuses"]
    assert unknown[["status", "receipts"]].values.tolist() == [["CARRIER_LOST", 1]]  # documented UNKNOWN is not listed


def test_message_with_only_a_delivered_receipt_has_no_latency(data_dir, store):
    write_receipts(data_dir, message("ONLY", T0, [("DELIVERED", 0)])
                   + message("M2", T0, [("ACCEPTED", 0), ("DELIVERED", 4)]))
    row = kpi(store)
    assert row["delivered"] == 2
    assert row["latency_messages"] == 1 and row["delivered_without_earlier"] == 1
    assert row["latency_p50_s"] == 4.0 and row["within_10s"] == 1.0
    assert q.latencies(store, Filters())["delivery_message_id"].tolist() == ["M2"]


# --------------------------------------------------------------------------- campaigns & filters


def test_campaign_falls_back_to_batch_id_then_none(data_dir, store):
    write_receipts(data_dir, [
        # The label sits on a later receipt only: it still wins over the batch id.
        receipt("L", "ACCEPTED", at(0), batch_id="B1"),
        receipt("L", "DELIVERED", at(5), batch_id="B1", campaign="spring"),
        # Different labels: the earliest labelled receipt's.
        receipt("TWO", "ACCEPTED", at(1), campaign="first"),
        receipt("TWO", "DELIVERED", at(2), campaign="second"),
        receipt("BATCH", "DELIVERED", at(0), batch_id="B7"),
        receipt("BLANK", "DELIVERED", at(0), batch_id="B7", campaign="  "),
        receipt("NONE", "DELIVERED", at(0)),
    ])
    d = detail(store)
    assert d["campaign"].to_dict() == {"L": "spring", "TWO": "first", "BATCH": "B7", "BLANK": "B7", "NONE": "(none)"}
    assert q.campaign_names(store) == ["(none)", "B7", "first", "spring"]
    per = q.campaigns(store, Filters()).set_index("campaign")
    assert per.loc["B7", "messages"] == 2 and per.loc["spring", "latency_p50_s"] == 5.0
    only = q.kpis(store, Filters(campaigns=("B7", "spring"))).iloc[0]
    assert only["messages"] == 3


def test_outcome_and_status_filters(data_dir, store):
    write_receipts(data_dir,
                   message("D", T0, [("ACCEPTED", 0), ("DELIVERED", 5)])
                   + message("F1", T0, [("ACCEPTED", 0), ("EXPIRED", 5)])
                   + message("F2", T0, [("ACCEPTED", 0), ("REJECTED", 5)])
                   + message("P", T0, [("ACCEPTED", 0)]))
    assert set(detail(store, Filters(outcomes=("failed",))).index) == {"F1", "F2"}
    assert set(detail(store, Filters(statuses=("expired", "ACCEPTED"))).index) == {"F1", "P"}
    assert set(detail(store, Filters(outcomes=("delivered", "pending"))).index) == {"D", "P"}
    with pytest.raises(ValueError):
        Filters(outcomes=("lost",))


def test_label_filters_match_any_receipt_and_all_pairs(data_dir, store):
    write_receipts(data_dir, [
        receipt("A", "ACCEPTED", at(0), labels={"env": "prod"}),
        receipt("A", "DELIVERED", at(5), labels={"env": "prod", "team": "x/y"}),
        receipt("B", "DELIVERED", at(0), labels={"env": "prod"}),
        receipt("C", "DELIVERED", at(0), labels={"env": "staging", "team": "x/y"}, campaign="c1"),
        receipt("Q", "DELIVERED", at(0), labels={"it's": "a \"quote\""}),
    ])
    assert set(detail(store, Filters(labels=(("env", "prod"),))).index) == {"A", "B"}
    assert set(detail(store, Filters(labels=(("env", "prod"), ("team", "x/y")))).index) == {"A"}
    assert set(detail(store, Filters(labels=(("campaign", "c1"),))).index) == {"C"}
    assert set(detail(store, Filters(labels=(("it's", 'a "quote"'),))).index) == {"Q"}
    assert detail(store, Filters(labels=(("env", "' OR 1=1 --"),))).empty
    pairs = q.label_pairs(store)
    assert pairs.values.tolist() == [["env", "prod", 2], ["env", "staging", 1], ["it's", 'a "quote"', 1],
                                     ["team", "x/y", 2]]


def test_hostile_filter_values_are_bound_not_interpolated(data_dir, store):
    write_receipts(data_dir, message("M1", T0, [("DELIVERED", 0)], campaign="c"))
    assert kpi(store, Filters(campaigns=("c' OR '1'='1",)))["messages"] == 0
    assert q.message_lookup(store, "M1' OR '1'='1").empty
    assert kpi(store, Filters(campaigns=("c",)))["messages"] == 1


# --------------------------------------------------------------------------- time


def test_date_filters_use_the_sent_time(data_dir, store):
    # Sent just before the window, delivered inside it: not in the window.
    write_receipts(data_dir, message("EARLY", utc(2026, 11, 2, 23, 59), [("ACCEPTED", 0), ("DELIVERED", 120)])
                   + message("IN", utc(2026, 11, 3, 0, 0), [("ACCEPTED", 0), ("DELIVERED", 3)])
                   + message("END", utc(2026, 11, 4, 0, 0), [("ACCEPTED", 0)]))
    f = Filters(start=utc(2026, 11, 3), end=utc(2026, 11, 4))
    assert set(detail(store, f).index) == {"IN"}
    assert store.data_range() == (utc(2026, 11, 2, 23, 59), utc(2026, 11, 4))


def test_day_buckets_follow_the_time_zone(data_dir, store):
    write_receipts(data_dir, message("LATE", utc(2026, 11, 1, 23, 30), [("ACCEPTED", 0), ("DELIVERED", 5)])
                   + message("NOON", utc(2026, 11, 2, 12, 0), [("ACCEPTED", 0), ("EXPIRED", 5)]))
    utc_days = q.trend(store, Filters(), bucket="day")
    assert [(str(b), m) for b, m in zip(utc_days["bucket_start"], utc_days["messages"])] == [
        ("2026-11-01 00:00:00+00:00", 1), ("2026-11-02 00:00:00+00:00", 1)]
    berlin = q.trend(store, Filters(tz="Europe/Berlin"), bucket="day")
    assert [(str(b), m, d) for b, m, d in zip(berlin["bucket_start"], berlin["messages"], berlin["delivered"])] == [
        ("2026-11-02 00:00:00+01:00", 2, 1)]
    assert berlin["delivery_rate"].tolist() == [0.5]
    assert str(berlin["bucket_start"].dt.tz) == "Europe/Berlin"
    # Local-day filter: Berlin's 2 November includes the message sent 23:30 UTC on the 1st.
    zone = q.zone_info("Europe/Berlin")
    f = Filters(start=pd.Timestamp("2026-11-02", tz=zone), end=pd.Timestamp("2026-11-03", tz=zone),
                tz="Europe/Berlin")
    assert set(detail(store, f).index) == {"LATE", "NOON"}
    assert str(detail(store, f).loc["LATE", "sent_at"]) == "2026-11-02 00:30:00+01:00"


def test_hour_buckets_across_a_dst_change_and_empty_hours_filled(data_dir, store):
    # Berlin leaves summer time on 2026-10-25 at 01:00 UTC: 02:30 local happens twice.
    write_receipts(data_dir, message("SUMMER", utc(2026, 10, 25, 0, 30), [("DELIVERED", 0)])
                   + message("WINTER", utc(2026, 10, 25, 1, 30), [("DELIVERED", 0)])
                   + message("LATER", utc(2026, 10, 25, 3, 10), [("DELIVERED", 0)]))
    t = q.trend(store, Filters(tz="Europe/Berlin"), bucket="hour")
    assert [str(b) for b in t["bucket_start"]] == [
        "2026-10-25 02:00:00+02:00", "2026-10-25 02:00:00+01:00", "2026-10-25 03:00:00+01:00",
        "2026-10-25 04:00:00+01:00"]
    assert t["messages"].tolist() == [1, 1, 0, 1]
    assert math.isnan(t["delivery_rate"].iloc[2])
    # Half-hour zone: local hours start at :30 UTC.
    india = q.trend(store, Filters(tz="Asia/Kolkata"), bucket="hour")
    assert [str(b) for b in india["bucket_start"]][:2] == ["2026-10-25 06:00:00+05:30", "2026-10-25 07:00:00+05:30"]
    assert india["messages"].sum() == 3


def test_trend_fills_the_filter_range_and_picks_the_bucket(data_dir, store):
    write_receipts(data_dir, message("M", utc(2026, 11, 3, 5, 10), [("ACCEPTED", 0), ("DELIVERED", 1)]))
    two_days = Filters(start=utc(2026, 11, 2), end=utc(2026, 11, 4))
    hourly = q.trend(store, two_days)
    assert len(hourly) == 48 and hourly["messages"].sum() == 1
    assert hourly.loc[hourly["messages"] == 1, "bucket_start"].iloc[0] == pd.Timestamp("2026-11-03 05:00", tz="UTC")
    week = Filters(start=utc(2026, 11, 1), end=utc(2026, 11, 8))
    daily = q.trend(store, week)
    assert len(daily) == 7 and daily["messages"].tolist() == [0, 0, 1, 0, 0, 0, 0]
    with pytest.raises(ValueError):
        q.trend(store, week, bucket="minute")


def test_previous_period():
    f = Filters(start=utc(2026, 11, 10), end=utc(2026, 11, 17), campaigns=("a",), tz="Europe/Berlin")
    p = f.previous_period()
    assert (p.start, p.end, p.campaigns, p.tz) == (utc(2026, 11, 3), utc(2026, 11, 10), ("a",), "Europe/Berlin")
    assert Filters(start=utc(2026, 11, 10)).previous_period() is None
    assert Filters().previous_period() is None


def test_filters_validate_zone_and_normalise_values():
    with pytest.raises(ValueError, match="time zone"):
        Filters(tz="Mars/Olympus")
    f = Filters(start=pd.Timestamp("2026-11-02 00:00"), campaigns=["a", "b"], statuses=[" expired"],
                labels=[["env", "prod"]], tz="Europe/Berlin")
    assert f.start == utc(2026, 11, 1, 23, 0)  # naive: wall-clock time in tz
    assert f.campaigns == ("a", "b") and f.statuses == ("EXPIRED",) and f.labels == (("env", "prod"),)
    assert hash(f) == hash(Filters(start=utc(2026, 11, 1, 23), campaigns=("a", "b"), statuses=("EXPIRED",),
                                   labels=(("env", "prod"),), tz="Europe/Berlin"))


def test_kpis_with_change_compares_with_the_previous_period(data_dir, store):
    write_receipts(data_dir,
                   message("OLD1", utc(2026, 11, 1, 10), [("ACCEPTED", 0), ("DELIVERED", 5)])
                   + message("OLD2", utc(2026, 11, 1, 11), [("ACCEPTED", 0), ("EXPIRED", 5)])
                   + message("NEW", utc(2026, 11, 2, 10), [("ACCEPTED", 0), ("DELIVERED", 5)]))
    out = q.kpis_with_change(store, Filters(start=utc(2026, 11, 2), end=utc(2026, 11, 3))).set_index("metric")
    assert list(out.columns)[:4] == ["value", "previous", "change", "relative_change"]
    assert out.loc["messages", ["value", "previous", "change"]].tolist() == [1, 2, -1]
    assert out.loc["delivery_rate", ["value", "previous", "change"]].tolist() == [1.0, 0.5, 0.5]
    assert out.loc["messages", "relative_change"] == -0.5
    no_previous = q.kpis_with_change(store, Filters()).set_index("metric")
    assert no_previous.loc["messages", "value"] == 3 and math.isnan(no_previous.loc["messages", "previous"])


def test_pending_ages(data_dir, store):
    now = utc(2026, 11, 10, 12, 0)
    rows = []
    for i, age in enumerate([timedelta(minutes=59, seconds=59), timedelta(hours=1), timedelta(hours=23),
                             timedelta(hours=24), timedelta(hours=71), timedelta(hours=72), timedelta(days=9)]):
        rows += message(f"P{i}", now - age, [("ACCEPTED", 0)] + ([("INTERIM_QUEUED", 1)] if i == 6 else []))
    rows += message("DONE", now - timedelta(days=9), [("ACCEPTED", 0), ("DELIVERED", 2)])
    write_receipts(data_dir, rows)
    ages = q.pending_ages(store, Filters(), now=now)
    assert ages.values.tolist() == [["<1 h", 1, "ACCEPTED"], ["1-24 h", 2, "ACCEPTED"], ["1-3 d", 2, "ACCEPTED"],
                                    [">3 d", 1, "ACCEPTED"], [">3 d", 1, "INTERIM_QUEUED"]]


def test_per_receipt_figures_are_opt_in(data_dir, store):
    """receipts, duplicate_rows and webhook lag need the raw receipts: NaN unless asked for."""
    rows = message("M1", T0, [("ACCEPTED", 0), ("DELIVERED", 30)], campaign="c")
    write_receipts(data_dir, rows, "a")
    write_receipts(data_dir, rows, "b")
    quick = q.kpis(store, Filters()).iloc[0]
    assert (quick["messages"], quick["delivered"], quick["latency_p50_s"]) == (1, 1, 30.0)
    assert all(math.isnan(quick[column]) for column in q.RECEIPT_KPIS)
    assert q.campaigns(store, Filters())[q.RECEIPT_KPIS].isna().all().all()
    full = q.kpis(store, Filters(), receipt_figures=True).iloc[0]
    assert (full["receipts"], full["duplicate_rows"], full["webhook_lag_p50_s"]) == (2, 2, 2.0)
    per_campaign = q.campaigns(store, Filters(), receipt_figures=True).set_index("campaign")
    assert per_campaign.loc["c", "receipts"] == 2
    changes = q.kpis_with_change(store, Filters(start=T0, end=T0 + timedelta(days=1)),
                                 receipt_figures=True).set_index("metric")
    assert changes.loc["receipts", "value"] == 2 and changes.loc["receipts", "previous"] == 0


def test_latency_distribution(data_dir, store):
    rows = []
    for i, seconds in enumerate([1.0, 1.0, 1.05, 5.0, 100.0]):
        rows += message(f"M{i}", T0, [("ACCEPTED", 0), ("DELIVERED", seconds)], campaign="odd" if i % 2 else "even")
    write_receipts(data_dir, rows)
    overall = q.latency_distribution(store, Filters())
    assert overall["messages"].tolist() == [2, 1, 1, 1]  # 1.0 and 1.05 fall in different 2 % buckets
    assert overall["cumulative_share"].tolist() == [0.4, 0.6, 0.8, 1.0]
    assert (overall["from_s"] <= [1.0, 1.05, 5.0, 100.0]).all() and (overall["to_s"] > [1.0, 1.05, 5.0, 100.0]).all()
    by = q.latency_distribution(store, Filters(), by_campaign=True)
    assert by.groupby("campaign")["messages"].sum().to_dict() == {"even": 3, "odd": 2}


def test_latency_distribution_counts_every_measured_message(data_dir, store):
    rng = np.random.default_rng(5)
    rows = []
    for i, seconds in enumerate(np.round(rng.lognormal(2, 2, size=60), 3)):
        rows += message(f"M{i:02d}", T0 + timedelta(minutes=i), [("ACCEPTED", 0), ("DELIVERED", float(seconds))],
                        campaign=("a", "b", "c")[i % 3])
    rows += message("ONLY", T0, [("DELIVERED", 0)], campaign="a")  # delivered, no time to deliver
    write_receipts(data_dir, rows)
    f = Filters()
    assert q.latency_distribution(store, f)["messages"].sum() == q.kpis(store, f)["latency_messages"].iloc[0] == 60
    per_campaign = q.latency_distribution(store, f, by_campaign=True).groupby("campaign")["messages"].sum()
    expected = q.latency_by_campaign(store, f).set_index("campaign")["latency_messages"]
    assert per_campaign.to_dict() == expected.to_dict() == {"a": 20, "b": 20, "c": 20}


def test_every_measured_message_is_listed_in_part_on_screen_and_whole_in_files(data_dir, store):
    rows = []
    for i, seconds in enumerate([4.0, 30.0, 2.5, 90.0, 7.0, 1.0, 600.0]):
        rows += message(f"M{i}", T0 + timedelta(hours=i), [("ACCEPTED", 0), ("DELIVERED", seconds)],
                        campaign="ab"[i % 2])
    rows += message("P", T0, [("ACCEPTED", 0)])  # pending: not measured
    write_receipts(data_dir, rows)
    f = Filters(tz="Europe/Berlin")
    every = q.latencies(store, f)
    assert len(every) == 7 and every["campaign"].tolist() == ["a"] * 4 + ["b"] * 3
    pd.testing.assert_frame_equal(q.latencies(store, f, limit=3), every.head(3), check_exact=True)
    assert q.slowest_latencies(store, f, 2)["latency_s"].tolist() == [600.0, 90.0]
    csv = pd.read_csv(io.BytesIO(q.latencies_file(store, f, "csv")))
    assert csv["delivery_message_id"].tolist() == every["delivery_message_id"].tolist()
    assert csv["latency_s"].tolist() == every["latency_s"].tolist()
    # Times in the chosen zone with their offset: T0 is 12:00 UTC, 13:00 in Berlin in November.
    assert csv.loc[csv["delivery_message_id"] == "M0", "sent_at"].item() == "2026-11-03 13:00:00+01"
    gzipped = pd.read_csv(io.BytesIO(gzip.decompress(q.latencies_file(store, f, "csv.gz"))))
    pd.testing.assert_frame_equal(gzipped, csv)
    parquet = pd.read_parquet(io.BytesIO(q.latencies_file(store, f, "parquet")))
    assert parquet["latency_s"].tolist() == every["latency_s"].tolist()
    assert (pd.to_datetime(parquet["sent_at"], utc=True) == every["sent_at"].dt.tz_convert("UTC")).all()
    with pytest.raises(ValueError):
        q.latencies_file(store, f, "xlsx")


# --------------------------------------------------------------------------- latency & lag


def test_latency_percentiles_match_numpy(data_dir, store):
    rng = np.random.default_rng(3)
    latencies = np.round(rng.lognormal(3, 1.5, size=97), 6)
    rows = []
    for i, latency in enumerate(latencies):
        rows += message(f"M{i:03d}", T0 + timedelta(minutes=i), [("ACCEPTED", 0), ("DELIVERED", float(latency))],
                        campaign="odd" if i % 2 else "even")
    write_receipts(data_dir, rows)
    row = kpi(store)
    for p in (50, 90, 95, 99):
        assert row[f"latency_p{p}_s"] == pytest.approx(np.percentile(latencies, p), abs=1e-6)
    for column, limit in (("within_10s", 10), ("within_1m", 60), ("within_5m", 300), ("within_1h", 3600)):
        assert row[column] == pytest.approx(np.mean(latencies <= limit))
    by = q.latency_by_campaign(store, Filters()).set_index("campaign")
    odd = latencies[1::2]
    assert by.loc["odd", "latency_messages"] == len(odd)
    assert by.loc["odd", "p90_s"] == pytest.approx(np.percentile(odd, 90), abs=1e-6)
    assert by.loc["even", "within_1m"] == pytest.approx(np.mean(latencies[0::2] <= 60))
    lat = q.latencies(store, Filters())
    assert sorted(lat["latency_s"].round(6)) == pytest.approx(sorted(latencies))


def test_latency_threshold_is_inclusive(data_dir, store):
    write_receipts(data_dir, message("TEN", T0, [("ACCEPTED", 0), ("DELIVERED", 10)])
                   + message("MORE", T0, [("ACCEPTED", 0), ("DELIVERED", 10.001)]))
    row = kpi(store)
    assert row["within_10s"] == 0.5 and row["within_1m"] == 1.0


def test_webhook_lag_uses_the_first_stored_copy(data_dir, store):
    rows = [receipt("M", "ACCEPTED", at(0), received_at=at(1)),
            receipt("M", "INTERIM_QUEUED", at(1), received_at=at(4)),
            receipt("M", "DELIVERED", at(2), received_at=at(12))]
    write_receipts(data_dir, rows, "first")
    late_copy = dict(rows[0], received_at=at(500))  # Mobivate retry of the same receipt
    write_receipts(data_dir, [late_copy], "retry")
    row = kpi(store)
    lags = [1, 3, 10]
    assert row["webhook_lag_p50_s"] == pytest.approx(np.percentile(lags, 50))
    assert row["webhook_lag_p95_s"] == pytest.approx(np.percentile(lags, 95))
    assert row["duplicate_rows"] == 1


# --------------------------------------------------------------------------- failures, lookup, health


def test_failure_reasons(data_dir, store):
    rows = []
    for i, (status, campaign) in enumerate([("EXPIRED", "a"), ("EXPIRED", "a"), ("EXPIRED", "b"),
                                            ("UNDELIVERABLE", "a"), ("FAILED_WEIRD", "b")]):
        rows += message(f"F{i}", T0 + timedelta(hours=i), [("ACCEPTED", 0), (status, 5)], campaign=campaign)
    rows += message("D", T0, [("ACCEPTED", 0), ("DELIVERED", 5)], campaign="a")
    write_receipts(data_dir, rows)
    reasons = q.failure_reasons(store, Filters())
    assert reasons[["reason", "messages"]].values.tolist() == [["EXPIRED", 3], ["UNDELIVERABLE", 1]]
    assert reasons["share"].tolist() == [0.75, 0.25]
    assert reasons["meaning"].iloc[0].startswith("the network gave up")
    # FAILED_WEIRD is not documented: an unknown outcome, not a failure reason.
    assert detail(store).loc["F4", "outcome"] == "unknown"
    by = q.failure_reasons_by_campaign(store, Filters())
    assert by.values.tolist() == [["a", "EXPIRED", 2, 2 / 3], ["a", "UNDELIVERABLE", 1, 1 / 3], ["b", "EXPIRED", 1, 1.0]]
    over = q.failure_reasons_over_time(store, Filters(), bucket="day")
    assert over[["reason", "messages"]].values.tolist() == [["EXPIRED", 3], ["UNDELIVERABLE", 1]]
    assert str(over["bucket_start"].iloc[0]) == "2026-11-03 00:00:00+00:00"


def test_message_lookup_by_any_identifier(data_dir, store):
    write_receipts(data_dir,
                   message("M1", T0, [("ACCEPTED", 0), ("DELIVERED", 5)], batch_id="B1", client_reference="r1",
                           campaign="c", labels={"env": "prod"}, hlr={"mcc": "505"})
                   + message("M2", T0, [("ACCEPTED", 0)], batch_id="B1", client_reference="r2"))
    by_ref = q.message_lookup(store, " r1 ")
    assert by_ref["status"].tolist() == ["ACCEPTED", "DELIVERED"]
    assert by_ref["campaign"].tolist() == ["c", "c"] and by_ref["hlr"].iloc[0] == '{"mcc": "505"}'
    by_batch = q.message_lookup(store, "B1")
    assert by_batch["delivery_message_id"].tolist() == ["M1", "M1", "M2"]
    assert by_batch["campaign"].tolist() == ["c", "c", "B1"]
    assert len(q.message_lookup(store, "M2")) == 1
    assert q.message_lookup(store, "").empty and q.message_lookup(store, "nope").empty
    berlin = q.message_lookup(store, "M2", tz="Europe/Berlin")
    assert str(berlin["created"].iloc[0]) == "2026-11-03 13:00:00+01:00"


def test_outcome_breakdown_and_detail_columns(data_dir, store):
    write_receipts(data_dir,
                   message("D", T0, [("ACCEPTED", 0), ("DELIVERED", 5)], campaign="c", batch_id="B", client_reference="r")
                   + message("F", T0, [("ACCEPTED", 0), ("EXPIRED", 5)])
                   + message("P", T0, [("ACCEPTED", 0)]))
    breakdown = q.outcome_breakdown(store, Filters())
    assert breakdown.values.tolist() == [["delivered", 1, 1 / 3], ["failed", 1, 1 / 3], ["unknown", 0, 0.0],
                                         ["pending", 1, 1 / 3]]
    d = detail(store).loc["D"]
    assert (d["campaign"], d["batch_id"], d["client_reference"], d["outcome"], d["last_status"], d["receipts"]) == (
        "c", "B", "r", "delivered", "DELIVERED", 2)
    assert d["delivered_at"] == pd.Timestamp(at(5)) and d["latency_s"] == 5.0
    assert len(q.message_detail(store, Filters(), limit=2)) == 2


def test_data_health(data_dir, store):
    rows = message("M", T0, [("ACCEPTED", 0), ("DELIVERED", 5), ("RETRY", 8)])
    write_receipts(data_dir, rows, "a")
    write_receipts(data_dir, rows[:1], "b")
    health = q.data_health(store)
    s = health["summary"].iloc[0]
    assert (s["receipts"], s["stored_rows"], s["duplicate_rows"], s["regressions"], s["messages"]) == (3, 4, 1, 1, 1)
    assert s["last_received_at"] == pd.Timestamp(at(10)) and s["last_created_at"] == pd.Timestamp(at(8))
    assert health["per_minute"]["receipts"].tolist() == [3]
    later = q.data_health(store, since=at(5))["summary"].iloc[0]
    assert (later["receipts"], later["regressions"]) == (2, 1)


def test_rejected_summary(tmp_path):
    assert q.rejected_summary(tmp_path / "none").empty
    (tmp_path / "stats").mkdir()
    (tmp_path / "stats" / "w0.json").write_text('{"rejected": {"bad_json": 7, "too_large": 1}}')
    (tmp_path / "stats" / "w1.json").write_text('{"rejected": {"bad_json": 3}}')
    (tmp_path / "stats" / "broken.json").write_text('{"rejec')
    folder = tmp_path / "rejected" / "bad_signature"
    folder.mkdir(parents=True)
    for stem in ("20261103T101500000000Z-aaaa", "20261103T111500123456Z-bbbb"):
        (folder / f"{stem}.body").write_bytes(b"x")
        (folder / f"{stem}.json").write_text("{}")
    out = q.rejected_summary(tmp_path)
    assert out[["reason", "count"]].values.tolist() == [["bad_json", 10], ["bad_signature", 2], ["too_large", 1]]
    assert out.set_index("reason").at["bad_signature", "last_at"] == pd.Timestamp("2026-11-03 11:15:00.123456", tz="UTC")
    assert pd.isna(out.set_index("reason").at["bad_json", "last_at"])


# --------------------------------------------------------------------------- files changing under us


def test_version_tracks_files_and_results_follow(data_dir, store):
    empty_version = store.version()
    [first] = write_receipts(data_dir, message("M1", T0, [("DELIVERED", 0)]), "one")
    v1 = store.version()
    assert v1 != empty_version and store.version() == v1
    assert kpi(store)["messages"] == 1
    [second] = write_receipts(data_dir, message("M2", T0, [("EXPIRED", 0)]), "two")
    assert store.version() != v1
    assert kpi(store)["messages"] == 2
    # Compaction: both files merged into one, the old ones removed.
    write_receipts(data_dir, message("M1", T0, [("DELIVERED", 0)]) + message("M2", T0, [("EXPIRED", 0)]), "merged")
    first.unlink()
    second.unlink()
    row = kpi(store)
    assert (row["messages"], row["duplicate_rows"]) == (2, 0)
    os.unlink(data_dir / "receipts" / "date=2026-11-03" / "merged.parquet")
    assert kpi(store)["messages"] == 0 and not store.has_data()


def test_file_vanishing_during_read_is_retried_once(data_dir, store, monkeypatch):
    write_receipts(data_dir, message("M1", T0, [("DELIVERED", 0)]), "stays")
    [doomed] = write_receipts(data_dir, message("M2", T0, [("EXPIRED", 0)]), "doomed")
    real_files = Store._files
    calls = []

    def stale_then_real(self):
        listed = real_files(self)
        if not calls:
            doomed.unlink()  # compaction removes it right after we listed it
        calls.append(len(listed))
        return listed

    monkeypatch.setattr(Store, "_files", stale_then_real)
    assert kpi(store)["messages"] == 1
    assert calls[:2] == [2, 1]


def test_pinned_store_keeps_one_snapshot(data_dir, store):
    write_receipts(data_dir, message("M1", T0, [("DELIVERED", 0)]))
    with store.pinned():
        assert kpi(store)["messages"] == 1
        write_receipts(data_dir, message("M2", T0, [("DELIVERED", 0)]))
        assert kpi(store)["messages"] == 1
    assert kpi(store)["messages"] == 2


# --------------------------------------------------------------------------- whole data set


def test_demo_data_is_consistent(data_dir, store):
    rows = demo_rows(400, seed=11)
    write_receipts(data_dir, rows[:200])
    write_receipts(data_dir, rows[200:])
    row = kpi(store)
    assert row["messages"] == len({r["delivery_message_id"] for r in rows})
    assert row["receipts"] == len({r["receipt_id"] for r in rows})
    assert row["duplicate_rows"] == len(rows) - row["receipts"]
    assert row["delivered"] + row["failed"] + row["unknown"] + row["pending"] == row["messages"]
    per = q.campaigns(store, Filters(), receipt_figures=True)
    for column in ("messages", "delivered", "failed", "receipts", "duplicate_rows", "regressions", "latency_messages"):
        assert per[column].sum() == row[column]
    assert q.trend(store, Filters(), bucket="day")["messages"].sum() == row["messages"]
    assert q.trend(store, Filters(tz="America/New_York"), bucket="hour")["messages"].sum() == row["messages"]
    assert q.failure_reasons(store, Filters())["messages"].sum() == row["failed"]
    assert q.pending_ages(store, Filters())["messages"].sum() == row["pending"]
    assert len(q.latencies(store, Filters())) == row["latency_messages"]


# --------------------------------------------------------------------------- against a reference model


def reference_messages(rows: list[dict]) -> dict[str, dict]:
    """The KPI definitions written out in plain Python, one message at a time.

    Per message, over every stored row (a copy counts like its original: the definitions are
    min/max over rows, so copies change nothing): ties of created are broken by received_at,
    then by the value (label) or the status name.
    """
    by_message: dict[str, list[dict]] = {}
    for r in rows:
        by_message.setdefault(r["delivery_message_id"], []).append(r)
    out = {}
    for mid, stored in by_message.items():
        sent = min(r["created"] for r in stored)
        finals = sorted((r for r in stored if r["category"] != "pending"),
                        key=lambda r: (r["created"], r["received_at"], r["status"], r["category"]))
        labelled = sorted((r for r in stored if r["campaign"]), key=lambda r: (r["created"], r["received_at"], r["campaign"]))
        batches = sorted((r for r in stored if r["batch_id"]), key=lambda r: (r["created"], r["received_at"], r["batch_id"]))
        campaign = labelled[0]["campaign"] if labelled else batches[0]["batch_id"] if batches else "(none)"
        outcome = finals[-1]["category"] if finals else "pending"
        latency = None
        if outcome == "delivered":
            first_delivered = min(r["created"] for r in stored if r["category"] == "delivered")
            if first_delivered > sent:
                latency = (first_delivered - sent).total_seconds()
        regression = bool(finals) and any(r["category"] == "pending" and r["created"] > finals[-1]["created"]
                                          for r in stored)
        out[mid] = dict(campaign=campaign, outcome=outcome, latency=latency, regressions=int(regression),
                        reason=finals[-1]["status"] if outcome == "failed" else None)
    return out


receipt_steps = st.lists(
    st.tuples(st.sampled_from(["M1", "M2", "M3"]),
              st.sampled_from(["ACCEPTED", "INTERIM_QUEUED", "RETRY", "DELIVERED", "EXPIRED", "REJECTED", "UNKNOWN", "ODD"]),
              st.integers(0, 20),             # created offset (s): ties happen
              st.integers(0, 30),             # arrival delay (s)
              st.sampled_from([None, "x", "y"]),  # campaign label
              st.sampled_from([None, "B1"]),
              st.integers(1, 2)),             # stored copies
    min_size=1, max_size=14)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=receipt_steps)
def test_matches_reference_model(tmp_path_factory, steps):
    note(f"steps={steps!r}")
    data = tmp_path_factory.mktemp("ref")
    rows = []
    for mid, status, offset, delay, campaign, batch, copies in steps:
        r = receipt(mid, status, at(offset), received_at=at(offset + delay), campaign=campaign, batch_id=batch)
        rows += [r] + [dict(r, received_at=r["received_at"] + timedelta(seconds=1))] * (copies - 1)
    write_receipts(data, rows)
    expected = reference_messages(rows)
    with Store(data) as s:
        got = q.message_detail(s, Filters()).set_index("delivery_message_id")
        row = q.kpis(s, Filters(), receipt_figures=True).iloc[0]
    assert set(got.index) == set(expected)
    for mid, want in expected.items():
        assert got.loc[mid, "campaign"] == want["campaign"]
        assert got.loc[mid, "outcome"] == want["outcome"]
        assert (None if pd.isna(got.loc[mid, "reason"]) else got.loc[mid, "reason"]) == want["reason"]
        assert (None if pd.isna(got.loc[mid, "latency_s"]) else got.loc[mid, "latency_s"]) == want["latency"]
    assert row["regressions"] == sum(m["regressions"] for m in expected.values())
    assert row["duplicate_rows"] == len(rows) - len({r["receipt_id"] for r in rows})
    latencies = [m["latency"] for m in expected.values() if m["latency"] is not None]
    if latencies:
        assert row["latency_p90_s"] == pytest.approx(np.percentile(latencies, 90))
    else:
        assert math.isnan(row["latency_p90_s"])
