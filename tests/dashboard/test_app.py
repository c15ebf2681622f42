"""The Streamlit dashboard: pages, filters, the URL mirror and downloads.

Pages run in-process with ``streamlit.testing.v1.AppTest`` on Parquet files written by
``tests/support/factory.py`` into ``tmp_path``; the data folder reaches the app through
``DLRLENS_DATA``. Expected numbers come from two places: a small data set whose counts are
known by construction (``known_data``) and ``dashboard.queries`` itself (the cards must show
exactly what the queries compute).
"""

from __future__ import annotations

import gzip
import io
import json
import re
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import openpyxl
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from streamlit import dataframe_util
from streamlit.testing.v1 import AppTest

from dlrlens.store import layout
from dlrlens.statuses import status_table
from dashboard import charts, downloads, queries, report, state
from dashboard.queries import Filters, Store
from dashboard.safe_text import md_text
from dashboard.state import FilterState
from dlrlens.cli import dashboard_command
from tests.support.factory import demo_rows, message, utc, write_receipts
from tests.support.funnel import demo_events, write_events

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
PAGES = {
    "overview": "views/overview.py",
    "campaigns": "views/campaigns.py",
    "failures": "views/failures.py",
    "latency": "views/latency.py",
    "funnel": "views/funnel.py",
    "lookup": "views/lookup.py",
    "health": "views/health.py",
}
TITLES = {"overview": "Overview", "campaigns": "Campaigns", "failures": "Failures", "latency": "Latency",
          "funnel": "Funnel", "lookup": "Message lookup", "health": "Data health"}
UTC = timezone.utc
NOW = datetime.now(UTC).replace(second=0, microsecond=0)
# A whole UTC day ten days ago: "gamma"'s only message is sent there at 02:00 UTC, which is the
# previous evening in New York and the same morning in Tokyo.
GAMMA_DAY = (NOW - timedelta(days=10)).date()


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def known_rows() -> list[dict]:
    """Nine messages whose counts per window, campaign, outcome and label are known:

    ======  ========  ==========  ===========  =========
    id      campaign  sent        outcome      env label
    ======  ========  ==========  ===========  =========
    A1      alpha     now - 2 h   delivered    prod
    A2      alpha     now - 2 h   failed       prod
    A3      alpha     now - 3 d   delivered    prod
    A4      alpha     now - 20 d  pending      prod
    B1      beta      now - 3 h   delivered    staging
    B2      beta      now - 3 d   failed       staging
    B3      beta      now - 60 d  unknown      staging
    B4      beta      now - 60 d  delivered    staging
    C1      gamma     GAMMA_DAY   delivered    prod
    ======  ========  ==========  ===========  =========
    """
    alpha = dict(campaign="alpha", batch_id="BA", labels={"env": "prod"})
    beta = dict(campaign="beta", batch_id="BB", labels={"env": "staging"})
    gamma = dict(campaign="gamma", batch_id="BC", labels={"env": "prod"})
    return [
        *message("A1", NOW - timedelta(hours=2), [("ACCEPTED", 0), ("DELIVERED", 5)], client_reference="ref-a1", **alpha),
        *message("A2", NOW - timedelta(hours=2), [("ACCEPTED", 0), ("UNDELIVERABLE", 30)], **alpha),
        *message("A3", NOW - timedelta(days=3), [("ACCEPTED", 0), ("DELIVERED", 60)], **alpha),
        *message("A4", NOW - timedelta(days=20), [("ACCEPTED", 0)], **alpha),
        *message("B1", NOW - timedelta(hours=3), [("ACCEPTED", 0), ("DELIVERED", 10)], **beta),
        *message("B2", NOW - timedelta(days=3), [("ACCEPTED", 0), ("EXPIRED", 3600)], **beta),
        *message("B3", NOW - timedelta(days=60), [("ACCEPTED", 0), ("UNKNOWN", 20)], **beta),
        *message("B4", NOW - timedelta(days=60), [("ACCEPTED", 0), ("DELIVERED", 120)], **beta),
        *message("C1", datetime.combine(GAMMA_DAY, datetime.min.time(), UTC) + timedelta(hours=2),
                 [("ACCEPTED", 0), ("DELIVERED", 5)], **gamma),
    ]


@pytest.fixture(scope="module")
def known_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("known") / "data"
    write_receipts(root, known_rows())
    return root


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    """The factory's realistic mix (old data: November 2026, five days)."""
    root = tmp_path_factory.mktemp("demo") / "data"
    rows = demo_rows(300)
    write_receipts(root, rows)
    clicks, replies = demo_events(rows)
    write_events(root, "clicks", clicks, "c")
    write_events(root, "replies", replies, "r")
    return root


@pytest.fixture
def empty_data(tmp_path) -> Path:
    root = tmp_path / "data"
    (root / "receipts").mkdir(parents=True)
    return root


@pytest.fixture
def missing_data(tmp_path) -> Path:
    return tmp_path / "not-created-yet"


@pytest.fixture
def store_of():
    opened = []

    def open_store(root: Path) -> Store:
        opened.append(Store(root))
        return opened[-1]

    yield open_store
    for store in opened:
        store.close()


# ---------------------------------------------------------------------------------------------
# AppTest helpers
# ---------------------------------------------------------------------------------------------


def run_app(monkeypatch, data_dir: Path, page: str = "overview", query: dict | None = None) -> AppTest:
    """The app on ``page`` over ``data_dir``, opened with URL ``query``; fails on any exception."""
    monkeypatch.setenv("DLRLENS_DATA", str(data_dir))
    at = AppTest.from_file(str(APP), default_timeout=30)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    at.run()
    if page != "overview":
        at.switch_page(PAGES[page]).run()
    assert_ok(at)
    return at


def assert_ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def cards(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def infos(at: AppTest) -> str:
    return " ".join(i.value for i in at.info)


def download_keys(at: AppTest) -> set[str]:
    return {b.key for b in at.get("download_button")}


def table(at: AppTest, key: str) -> pd.DataFrame:
    """The exact values behind the table ``downloads.show_table(..., key)`` shows."""
    return at.container(key=f"table_{key}").dataframe[0].value


def table_text(at: AppTest, key: str) -> pd.DataFrame:
    """That table's cells as the screen prints them (the Styler's display values)."""
    proto = at.container(key=f"table_{key}").dataframe[0].proto
    return dataframe_util.convert_arrow_bytes_to_pandas_df(proto.arrow_data.styler.display_values)


# ---------------------------------------------------------------------------------------------
# Every page, every data situation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_demo_data(monkeypatch, demo_data, page):
    at = run_app(monkeypatch, demo_data, page)
    if page == "lookup":
        at.text_input(key="lookup_term").set_value("B001").run()  # a batch: many messages
        assert_ok(at)
    assert at.title[0].value == TITLES[page]
    assert not at.info  # data present and "all time" chosen: nothing to explain
    if page in ("overview", "campaigns", "failures", "latency", "funnel", "health"):
        assert at.get("plotly_chart") or at.dataframe, "the page shows figures or tables"
    # Every table shown has its CSV and Excel buttons.
    keys = download_keys(at)
    table_rows = {k.removesuffix("_csv") for k in keys if k.endswith("_csv")} - \
        {k.removesuffix("_parquet") for k in keys if k.endswith("_parquet")}  # minus the export row
    assert all(f"{row}_xlsx" in keys for row in table_rows)
    assert len(at.dataframe) == len(table_rows) > 0


@pytest.mark.parametrize("page", PAGES)
def test_every_page_explains_an_empty_data_folder(monkeypatch, empty_data, page):
    at = run_app(monkeypatch, empty_data, page)
    assert "holds no delivery receipts yet" in infos(at)
    assert "dlrlens simulate" in infos(at)
    assert not at.get("plotly_chart")


@pytest.mark.parametrize("page", PAGES)
def test_every_page_explains_a_missing_data_folder(monkeypatch, missing_data, page):
    at = run_app(monkeypatch, missing_data, page)
    assert "does not exist yet" in infos(at)
    assert "dlrlens collector" in infos(at)
    assert not missing_data.exists()  # the dashboard only reads


def test_health_cards_show_the_data_health_numbers(monkeypatch, demo_data, store_of):
    summary = queries.data_health(store_of(demo_data))["summary"].iloc[0]
    shown = cards(run_app(monkeypatch, demo_data, "health"))
    assert shown["Receipts"] == charts.format_count(summary["receipts"])
    assert shown["Duplicate rows"] == charts.format_count(summary["duplicate_rows"])
    assert shown["Regressions"] == charts.format_count(summary["regressions"])
    assert shown["Messages"] == "300"
    assert int(summary["duplicate_rows"]) > 0 and int(summary["regressions"]) > 0  # the demo data has both


def test_last_receipt_card_names_the_time_briefly(monkeypatch, demo_data, store_of):
    """The card's chip holds a short time (a full timestamp was cut off); the help has it all."""
    last = queries.data_health(store_of(demo_data))["summary"].iloc[0]["last_received_at"]
    card = next(m for m in run_app(monkeypatch, demo_data, "health").metric if m.label == "Since the last receipt")
    # The demo data is older than today: month, day and minute.
    assert card.proto.delta == "at " + pd.Timestamp(last).tz_convert("UTC").strftime("%b %d %H:%M")
    assert pd.Timestamp(last).tz_convert("UTC").strftime("%Y-%m-%d %H:%M:%S UTC") in card.proto.help


def test_health_page_lists_rejected_requests_even_without_receipts(monkeypatch, empty_data):
    body = empty_data / "rejected" / "bad_secret" / "20261127T120000000000Z-abc.body"
    body.parent.mkdir(parents=True)
    body.write_bytes(b"{}")
    at = run_app(monkeypatch, empty_data, "health")
    rejected = table(at, "rejected")
    assert rejected["reason"].tolist() == ["bad_secret"]
    assert rejected["count"].tolist() == [1]


def test_health_page_shows_maintenance_and_a_current_failure(monkeypatch, empty_data):
    now = pd.Timestamp.now(tz="UTC")
    status = {"pid": 1, "updated_at": (now - pd.Timedelta(seconds=3)).isoformat(),
              "interval_seconds": {"derive": 5.0, "compact": 60.0}, "runs": {"derive": 40, "compact": 2},
              "errors": {"derive": 3, "compact": 0},
              "last_success_at": {"derive": (now - pd.Timedelta(seconds=65)).isoformat(),
                                  "compact": (now - pd.Timedelta(minutes=10)).isoformat()},
              "last_error": "derive: OSError: disk full", "last_error_at": (now - pd.Timedelta(seconds=3)).isoformat()}
    (empty_data / layout.MAINTENANCE_STATUS).write_text(json.dumps(status))
    at = run_app(monkeypatch, empty_data, "health")
    shown = cards(at)
    # 65 s before the page started; rendering two pages on a busy machine may take a few seconds.
    assert re.fullmatch(r"1 min [5-9] s ago", shown["Derived state updated"]) and shown["Maintenance errors"] == "3"
    assert re.fullmatch(r"10 min( [1-9] s)? ago", shown["Last compaction"])
    # The error text is shown as text (it may quote stored data): Markdown-escaped.
    assert any(md_text("derive: OSError: disk full") in e.value for e in at.error), "derive has not succeeded since"
    assert not at.warning, "it reported 3 s ago"

    status["last_error_at"] = (now - pd.Timedelta(seconds=90)).isoformat()  # derive succeeded since
    status["updated_at"] = (now - pd.Timedelta(minutes=30)).isoformat()
    (empty_data / layout.MAINTENANCE_STATUS).write_text(json.dumps(status))
    at = run_app(monkeypatch, empty_data, "health")
    assert not at.error
    assert any("has not reported for 30 min" in w.value for w in at.warning)


def test_health_page_says_when_maintenance_has_not_reported(monkeypatch, empty_data):
    at = run_app(monkeypatch, empty_data, "health")
    assert any("has not reported yet" in c.value for c in at.caption)


# ---------------------------------------------------------------------------------------------
# KPI cards and filters
# ---------------------------------------------------------------------------------------------

CARD_FORMATS = {
    "Messages": ("messages", charts.format_count),
    "Delivered": ("delivered", charts.format_count),
    "Failed": ("failed", charts.format_count),
    "Unknown": ("unknown", charts.format_count),
    "Pending": ("pending", charts.format_count),
    "Delivery rate": ("delivery_rate", charts.format_percent),
    "Time to deliver p50": ("latency_p50_s", charts.format_duration),
    "Time to deliver p95": ("latency_p95_s", charts.format_duration),
}


def expected_cards(store: Store, f: Filters) -> dict[str, str]:
    row = queries.kpis(store, f).iloc[0]
    return {label: fmt(row[column]) for label, (column, fmt) in CARD_FORMATS.items()}


def test_kpi_cards_show_the_queries_numbers(monkeypatch, demo_data, store_of):
    at = run_app(monkeypatch, demo_data)
    assert at.session_state[state.KEY_RANGE] == "all"  # demo data is older than 7 days
    assert cards(at) == expected_cards(store_of(demo_data), Filters())
    assert cards(at)["Messages"] == "300"


def test_known_data_defaults_to_last_7_days_and_compares_with_the_week_before(monkeypatch, known_data):
    at = run_app(monkeypatch, known_data)
    assert at.session_state[state.KEY_RANGE] == "7d"
    shown = cards(at)
    assert (shown["Messages"], shown["Delivered"], shown["Failed"], shown["Pending"]) == ("5", "3", "2", "0")
    assert shown["Delivery rate"] == "60.0%"
    # The week before holds one message, C1 (delivered, 10 days ago).
    deltas = {m.label: m.proto.delta for m in at.metric}
    assert (deltas["Messages"], deltas["Delivered"], deltas["Failed"]) == ("+4", "+2", "+2")
    assert deltas["Delivery rate"] == "-40.0 pp"  # 60 % against 100 %
    # C1 took 5 s; this week's p50 is the median of A1 5 s, B1 10 s and A3 60 s.
    assert deltas["Time to deliver p50"] == "+5.0 s"
    # The KPI table under the figures prints each row in its KPI's unit, as the cards do.
    kpis = table_text(at, "kpis").set_index("metric")
    assert kpis.at["delivery_rate", "value"] == shown["Delivery rate"] == "60.0%"
    assert kpis.at["delivery_rate", "previous"] == "100.0%"
    assert kpis.at["delivery_rate", "change"] == "-40.0 pp"
    assert (kpis.at["latency_p50_s", "value"], kpis.at["latency_p50_s", "change"]) == ("10.0 s", "+5.0 s")
    assert (kpis.at["messages", "value"], kpis.at["messages", "change"]) == ("5", "+4")
    assert kpis.at["messages", "relative_change"] == "+400.0%"


@pytest.mark.parametrize(("preset", "messages"), [("24h", "3"), ("7d", "5"), ("30d", "7"), ("all", "9")])
def test_date_presets_change_the_cards(monkeypatch, known_data, preset, messages):
    at = run_app(monkeypatch, known_data)
    at.selectbox(key=state.KEY_RANGE).select(preset).run()
    assert_ok(at)
    assert cards(at)["Messages"] == messages


@pytest.mark.parametrize(("widget", "choice", "expected"), [
    (state.KEY_CAMPAIGNS, ["alpha"], {"Messages": "4", "Delivered": "2", "Failed": "1", "Pending": "1"}),
    (state.KEY_CAMPAIGNS, ["beta", "gamma"], {"Messages": "5", "Delivered": "3", "Unknown": "1"}),
    (state.KEY_OUTCOMES, ["failed"], {"Messages": "2", "Delivered": "0", "Failed": "2"}),
    (state.KEY_OUTCOMES, ["delivered", "unknown"], {"Messages": "6", "Delivery rate": "83.3%"}),
    (state.KEY_LABELS, ["env=staging"], {"Messages": "4", "Unknown": "1", "Failed": "1"}),
    (state.KEY_STATUSES, ["EXPIRED"], {"Messages": "1", "Failed": "1"}),
])
def test_filters_change_the_cards(monkeypatch, known_data, store_of, widget, choice, expected):
    at = run_app(monkeypatch, known_data, query={"range": "all"})
    control = at.get("pills")[0] if widget == state.KEY_OUTCOMES else at.multiselect(key=widget)
    control.set_value(choice).run()
    assert_ok(at)
    shown = cards(at)
    assert {label: shown[label] for label in expected} == expected
    assert shown == expected_cards(store_of(known_data), state.filters_for(at.session_state))


def test_time_zone_moves_custom_days(monkeypatch, known_data):
    """gamma's message is sent at 02:00 UTC on GAMMA_DAY: that day in UTC and in Tokyo, the
    evening before in New York."""
    at = run_app(monkeypatch, known_data, query={"range": "custom", "from": GAMMA_DAY.isoformat(),
                                                  "to": GAMMA_DAY.isoformat()})
    assert cards(at)["Messages"] == "1"
    at.selectbox(key=state.KEY_TZ).select("America/New_York").run()
    assert_ok(at)
    assert cards(at)["Messages"] == "0"
    assert "No messages match these filters" in infos(at)  # friendly, not an empty chart
    at.date_input(key=state.KEY_DATES).set_value((GAMMA_DAY - timedelta(days=1), GAMMA_DAY - timedelta(days=1))).run()
    assert cards(at)["Messages"] == "1"
    at.selectbox(key=state.KEY_TZ).select("Asia/Tokyo").run()
    assert cards(at)["Messages"] == "0"


def test_time_zone_shifts_trend_buckets(monkeypatch, known_data):
    at = run_app(monkeypatch, known_data, query={"range": "30d", "tz": "Asia/Tokyo"})
    trend = table(at, "trend")
    assert str(trend["bucket_start"].dt.tz) == "Asia/Tokyo"
    assert (trend["bucket_start"].dt.hour == 0).all()  # local midnights
    assert trend["messages"].sum() == 7


def test_new_data_shows_on_the_next_run(monkeypatch, tmp_path):
    """Results are cached by data version, so a new Parquet file is never hidden by the cache."""
    root = tmp_path / "data"
    write_receipts(root, message("X1", NOW - timedelta(hours=1), [("ACCEPTED", 0), ("DELIVERED", 3)]))
    at = run_app(monkeypatch, root, query={"range": "24h", "live": "1"})
    assert cards(at)["Messages"] == "1"
    write_receipts(root, message("X2", NOW - timedelta(minutes=30), [("ACCEPTED", 0), ("FAILED_NOROUTE", 3)]))
    at.run()
    assert_ok(at)
    assert (cards(at)["Messages"], cards(at)["Failed"]) == ("2", "1")
    assert at.session_state[state.KEY_RANGE] == "24h" and at.session_state[state.KEY_LIVE] is True


# ---------------------------------------------------------------------------------------------
# The URL mirror
# ---------------------------------------------------------------------------------------------


def test_filters_go_to_the_url_and_a_link_reproduces_the_view(monkeypatch, known_data):
    at = run_app(monkeypatch, known_data)
    at.selectbox(key=state.KEY_RANGE).select("30d")
    at.multiselect(key=state.KEY_CAMPAIGNS).set_value(["alpha", "gamma"])
    at.multiselect(key=state.KEY_LABELS).set_value(["env=prod"])
    at.selectbox(key=state.KEY_TZ).select("Europe/London")
    at.toggle(key=state.KEY_LIVE).set_value(True)
    at.run()
    assert_ok(at)
    url = dict(at.query_params)
    assert url == {"range": "30d", "campaign": ["alpha", "gamma"], "label": "env=prod", "tz": "Europe/London",
                   "live": "1"}
    shown = cards(at)
    assert shown["Messages"] == "5"  # A1-A4 and C1: alpha or gamma, env=prod, last 30 days

    linked = run_app(monkeypatch, known_data, query=url)
    assert cards(linked) == shown
    for key in (state.KEY_RANGE, state.KEY_CAMPAIGNS, state.KEY_LABELS, state.KEY_TZ, state.KEY_LIVE):
        assert linked.session_state[key] == at.session_state[key]


def warnings(at: AppTest) -> list[str]:
    """The page's warnings as plain text (Markdown escapes removed)."""
    return [w.value.replace("\\", "").replace("**", "") for w in at.warning]


def test_a_stale_or_broken_link_says_what_it_cannot_honour(monkeypatch, known_data):
    at = run_app(monkeypatch, known_data, query={"range": "fortnight", "campaign": ["alpha", "gone"],
                                                  "outcome": ["failed", "lost"], "tz": "Mars/Olympus",
                                                  "label": ["nokey", "env=prod"]})
    assert at.session_state[state.KEY_RANGE] == "7d"  # the default for recent data
    assert at.session_state[state.KEY_CAMPAIGNS] == ["alpha", "gone"]  # kept: never widened silently
    assert at.session_state[state.KEY_OUTCOMES] == ["failed"]
    assert at.session_state[state.KEY_TZ] == "UTC"
    assert cards(at)["Messages"] == "1"  # A2: alpha, failed, last 7 days
    said = " | ".join(warnings(at))
    for part in ("range “fortnight”", "showing Last 7 days instead", "outcome “lost”", "tz “Mars/Olympus”",
                 "showing UTC instead", "label “nokey”", "not KEY=VALUE", "campaign “gone”"):
        assert part in said, part
    assert dict(at.query_params) == {"range": "7d", "campaign": ["alpha", "gone"], "outcome": "failed",
                                     "label": "env=prod"}
    at.button(key="drop_unknown_campaigns").click().run()
    assert_ok(at)
    assert at.session_state[state.KEY_CAMPAIGNS] == ["alpha"]
    assert not any("“gone”" in w for w in warnings(at))


def test_an_unknown_campaign_gives_zero_figures_until_all_campaigns_are_asked_for(monkeypatch, known_data):
    at = run_app(monkeypatch, known_data, query={"range": "all", "campaign": "old-campaign-2025"})
    assert cards(at)["Messages"] == "0"
    assert any("No message has the campaign “old-campaign-2025”" in w for w in warnings(at))
    assert dict(at.query_params) == {"range": "all", "campaign": "old-campaign-2025"}  # the URL says what is shown
    scope_line = at.container(key="scope_line").caption[0].value.replace("\\", "").replace("\u2060", "")
    assert "Campaigns: old-campaign-2025" in scope_line and "not in the data" in scope_line
    button = at.button(key="drop_unknown_campaigns")
    assert button.label == "Show all campaigns instead"
    button.click().run()
    assert_ok(at)
    assert cards(at)["Messages"] == "9" and dict(at.query_params) == {"range": "all"}
    assert not warnings(at)


def test_an_empty_previous_period_shows_no_change_and_says_why(monkeypatch, known_data):
    at = run_app(monkeypatch, known_data, query={"range": "24h"})  # 24-48 h ago: no message
    assert cards(at)["Messages"] == "3"
    assert all(not m.proto.delta for m in at.metric), "no '+3 vs previous' against nothing"
    assert any("no data in the previous period" in c.value for c in at.caption)
    at = run_app(monkeypatch, known_data, query={"range": "7d"})  # the previous 7 days hold A4
    assert any(m.proto.delta for m in at.metric)


def test_the_filters_survive_a_page_switch(monkeypatch, known_data):
    at = run_app(monkeypatch, known_data, query={"range": "all", "campaign": "beta"})
    at.switch_page(PAGES["failures"]).run()
    assert_ok(at)
    assert table(at, "failure-reasons")["reason"].tolist() == ["EXPIRED"]
    assert dict(at.query_params) == {"range": "all", "campaign": "beta"}


names = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12).map(str.strip).filter(bool)
filter_states = st.builds(
    lambda preset, dates, campaigns, outcomes, statuses, labels, tz, live: FilterState(
        preset=preset,
        date_from=min(dates) if preset == "custom" and dates else None,
        date_to=max(dates) if preset == "custom" and dates else None,
        campaigns=tuple(campaigns), outcomes=tuple(outcomes), statuses=tuple(s.upper() for s in statuses),
        labels=tuple(labels), tz=tz, live=live),
    st.sampled_from(list(state.PRESETS)),
    st.lists(st.dates(date(2020, 1, 1), date(2030, 12, 31)), min_size=0, max_size=2),
    st.lists(names, unique=True, max_size=3),
    st.lists(st.sampled_from(state.OUTCOMES), unique=True),
    st.lists(names.map(str.upper), unique=True, max_size=3),
    st.lists(st.tuples(names.filter(lambda k: "=" not in k), st.text(max_size=8).map(str.strip)),
             unique_by=lambda pair: f"{pair[0]}={pair[1]}", max_size=3),
    st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]),
    st.booleans(),
)


@settings(max_examples=200, deadline=None)
@given(filter_states)
def test_url_encoding_round_trips(chosen):
    assert state.from_query(state.to_query(chosen)) == chosen


url_values = st.one_of(st.text(max_size=20), st.lists(st.text(max_size=20), max_size=4))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["range", "from", "to", "campaign", "outcome", "status", "label", "tz",
                                        "live", "other"]), url_values))
def test_any_url_gives_usable_filters(params):
    chosen = state.from_query(params, default_preset="7d")
    f = state.resolve(chosen, NOW)  # Filters validates zone and outcomes: must not raise
    assert f.tz == chosen.tz
    assert state.from_query(state.to_query(chosen)) == chosen


# ---------------------------------------------------------------------------------------------
# Resolving presets
# ---------------------------------------------------------------------------------------------


def test_rolling_presets_end_at_the_next_minute():
    f = state.resolve(FilterState(preset="24h"), utc(2026, 11, 27, 13, 5) + timedelta(seconds=42))
    assert (f.start, f.end) == (utc(2026, 11, 26, 13, 6), utc(2026, 11, 27, 13, 6))
    assert f.previous_period().start == utc(2026, 11, 25, 13, 6)


def test_this_month_and_custom_days_are_local_days():
    now = utc(2026, 11, 30, 23, 30)  # already December 1st in Berlin
    f = state.resolve(FilterState(preset="month", tz="Europe/Berlin"), now)
    assert (f.start, f.end) == (utc(2026, 11, 30, 23), utc(2026, 12, 31, 23))
    f = state.resolve(FilterState(preset="custom", date_from=date(2026, 7, 1), date_to=date(2026, 7, 2),
                                  tz="America/New_York"), now)
    assert (f.start, f.end) == (utc(2026, 7, 1, 4), utc(2026, 7, 3, 4))
    assert state.resolve(FilterState(preset="all"), now) == Filters()


def test_default_preset_follows_the_age_of_the_data():
    now = utc(2026, 11, 27, 12)
    assert state.default_preset(None, now) == "all"
    assert state.default_preset((utc(2026, 1, 1), utc(2026, 11, 26)), now) == "7d"
    assert state.default_preset((utc(2026, 1, 1), utc(2026, 11, 1)), now) == "all"
    assert state.default_preset((utc(2026, 11, 26, 13), utc(2026, 11, 27, 11)), now) == "24h"  # all in a day


def test_data_dir_comes_from_arguments_then_environment(monkeypatch):
    monkeypatch.setenv("DLRLENS_DATA", "/env/data")
    assert state.data_dir(["--data", "/cli/data"]) == Path("/cli/data")
    assert state.data_dir(["--data=/cli/other"]) == Path("/cli/other")
    assert state.data_dir(["-q", "tests/dashboard/test_app.py"]) == Path("/env/data")
    monkeypatch.delenv("DLRLENS_DATA")
    assert state.data_dir([]) == Path("data")


# ---------------------------------------------------------------------------------------------
# Downloads
# ---------------------------------------------------------------------------------------------


def test_page_downloads_are_offered(monkeypatch, known_data):
    at = run_app(monkeypatch, known_data, "campaigns", query={"range": "all"})
    assert {"download_campaigns_csv", "download_campaigns_xlsx"} <= download_keys(at)
    at.multiselect(key="campaign_compare").set_value(["alpha", "beta"]).run()
    assert_ok(at)
    assert {"download_campaign_export_xlsx", "download_campaign_export_json", "download_campaign_export_csv",
            "download_campaign_export_parquet"} <= download_keys(at)
    assert [m.value for m in at.metric if m.label == "Messages"] == ["4", "4"]


def test_tables_print_values_as_the_cards_do(monkeypatch, known_data):
    """Campaign table cells read exactly like the drill-in cards; missing values read "—"."""
    at = run_app(monkeypatch, known_data, "campaigns", query={"range": "all"})
    at.multiselect(key="campaign_compare").set_value(["alpha", "beta", "gamma"]).run()
    assert_ok(at)
    shown = table_text(at, "campaigns").set_index("campaign")
    exact = table(at, "campaigns").set_index("campaign")
    metrics = iter(at.metric)
    for name in ("alpha", "beta", "gamma"):
        for column, label in [("messages", "Messages"), ("delivery_rate", "Delivery rate"), ("failed", "Failed"),
                              ("pending", "Pending"), ("latency_p50_s", "Time to deliver p50"),
                              ("latency_p95_s", "Time to deliver p95")]:
            card = next(metrics)
            assert card.label == label
            assert shown.at[name, column] == card.value
    assert shown.loc["alpha", ["delivery_rate", "latency_p50_s"]].tolist() == ["66.7%", "32.5 s"]
    assert exact.at["alpha", "delivery_rate"] == pytest.approx(2 / 3, rel=0, abs=0)  # the value stays exact
    assert shown.at["beta", "latency_p95_s"] == "1 min 55 s"  # B1 10 s, B4 120 s
    assert exact.at["beta", "latency_p95_s"] == pytest.approx(114.5)
    # The per-receipt columns are filled, as in the report (tests/dashboard/test_agreement.py).
    assert exact.at["alpha", "receipts"] == 7 and exact.at["alpha", "duplicate_rows"] == 0
    assert shown.at["alpha", "webhook_lag_p50_s"] != "—" and exact.at["alpha", "webhook_lag_p50_s"] >= 0


def test_table_downloads_carry_the_exact_numbers(known_data, store_of):
    store = store_of(known_data)
    f = state.resolve(FilterState(preset="custom", date_from=NOW.date() - timedelta(days=30),
                                  date_to=NOW.date()), NOW)
    table = queries.campaigns(store, f)
    csv_file, excel_file = downloads.table_downloads(table, "campaigns", f)
    span = f"{(NOW.date() - timedelta(days=30)).isoformat()}_{NOW.date().isoformat()}"
    assert csv_file.file_name == f"dlrlens-campaigns_{span}.csv"
    assert excel_file.file_name == f"dlrlens-campaigns_{span}.xlsx"

    data = csv_file.build()
    assert data.startswith(b"# dlrlens scope: Period: " + span.replace("_", " to ").encode())
    from_csv = pd.read_csv(io.BytesIO(data), skiprows=1)  # line 1: the scope
    assert from_csv["campaign"].tolist() == ["alpha", "beta", "gamma"]
    assert from_csv["messages"].tolist() == [4, 2, 1]
    for column in ("delivery_rate", "latency_p50_s", "latency_p95_s", "within_1m"):
        assert from_csv[column].tolist() == pytest.approx(table[column].tolist(), rel=0, abs=0, nan_ok=True)

    sheet = openpyxl.load_workbook(io.BytesIO(excel_file.build()), read_only=True).active
    rows = list(sheet.iter_rows(values_only=True))
    header, body = list(rows[0]), rows[1:]
    assert header == list(table.columns)
    by_campaign = {row[0]: dict(zip(header, row)) for row in body}
    assert by_campaign["alpha"]["messages"] == 4
    assert by_campaign["alpha"]["delivery_rate"] == table.loc[table.campaign == "alpha", "delivery_rate"].item()
    assert by_campaign["beta"]["latency_p50_s"] == 10.0


def test_excel_times_are_wall_clock_in_the_chosen_zone(known_data, store_of):
    found = queries.message_lookup(store_of(known_data), "C1")
    book = openpyxl.load_workbook(io.BytesIO(downloads.excel_bytes(found, "Asia/Tokyo", "receipts")))
    sheet = book.active
    header = [c.value for c in sheet[1]]
    created = sheet.cell(row=2, column=header.index("created") + 1).value
    assert created == datetime.combine(GAMMA_DAY, datetime.min.time()) + timedelta(hours=11)  # 02:00 UTC


def test_export_downloads_match_the_kpis(known_data, store_of):
    store = store_of(known_data)
    f = Filters()
    expected = queries.kpis(store, f).iloc[0]
    files = {d.label: d for d in downloads.export_downloads(store, f)}
    assert files["Messages (CSV)"].file_name == "dlrlens-messages_all-time.csv"

    detail = pd.read_csv(io.BytesIO(files["Messages (CSV)"].build()), skiprows=1)
    assert len(detail) == expected["messages"] == 9
    assert detail["outcome"].value_counts().to_dict() == {"delivered": 5, "failed": 2, "unknown": 1, "pending": 1}
    from_parquet = pd.read_parquet(io.BytesIO(files["Messages (Parquet)"].build()))
    assert sorted(from_parquet["delivery_message_id"]) == sorted(detail["delivery_message_id"])
    assert from_parquet.loc[from_parquet.delivery_message_id == "B4", "latency_s"].item() == 120.0

    book = openpyxl.load_workbook(io.BytesIO(files["Campaign report (Excel)"].build()), read_only=True)
    assert list(book.sheetnames) == list(report.SHEETS)
    summary = {row[1]: row[2] for row in book["Summary"].iter_rows(min_row=2, values_only=True)}
    assert summary["messages"] == 9 and summary["failed"] == 2
    assert summary["delivery_rate"] == pytest.approx(expected["delivery_rate"], rel=0, abs=0)
    as_json = json.loads(files["Campaign report (JSON)"].build())
    assert {row["campaign"]: row["messages"] for row in as_json["Campaigns"]} == {"alpha": 4, "beta": 4, "gamma": 1}


def test_lookup_lists_every_receipt_in_created_order(monkeypatch, known_data):
    at = run_app(monkeypatch, known_data, "lookup")
    at.text_input(key="lookup_term").set_value("ref-a1").run()
    assert_ok(at)
    receipts = table(at, "receipts-ref-a1")
    assert receipts["status"].tolist() == ["ACCEPTED", "DELIVERED"]
    assert receipts["delivery_message_id"].unique().tolist() == ["A1"]
    assert {"download_receipts-ref-a1_csv", "download_receipts-ref-a1_xlsx"} <= download_keys(at)
    at.text_input(key="lookup_term").set_value("nope").run()
    assert "No receipt has" in infos(at)


def test_lookup_from_a_link_matches_any_case_and_sums_the_message_up_first(monkeypatch, known_data):
    at = run_app(monkeypatch, known_data, query={"id": "REF-A1"})  # a sent link, the id in another case
    at.switch_page(PAGES["lookup"]).run()
    assert_ok(at)
    assert at.text_input(key="lookup_term").value == "REF-A1"
    assert at.query_params["id"] == "REF-A1"  # the URL keeps the query
    summary = {m.label: m.value for m in at.container(key="lookup_summary").metric}
    assert (summary["Campaign"], summary["Outcome"], summary["Reason / status"]) == ("alpha", "delivered", "DELIVERED")
    assert summary["Time to deliver"] == "5.0 s" and summary["Receipts"] == "2 (0 duplicates hidden)"
    assert summary["Sent"].endswith(".000+00:00")  # milliseconds
    shown = table_text(at, "receipts-REF-A1")
    assert shown["created"].str.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\+00:00$").all()

    at.text_input(key="lookup_term").set_value("ba").run()  # a batch id: one row per message, linked
    assert_ok(at)
    messages = table(at, "messages-ba")
    # Each id opens its own lookup (the downloads keep the plain ids).
    assert sorted(messages["delivery_message_id"]) == [downloads.lookup_link(i) for i in ("A1", "A2", "A3", "A4")]
    assert messages["duplicates_hidden"].tolist() == [0, 0, 0, 0]


# ---------------------------------------------------------------------------------------------
# Formats and figures
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "text"), [
    (0.25, "250 ms"), (4.24, "4.2 s"), (65, "1 min 5 s"), (120, "2 min"), (3600, "1 h"), (7800, "2 h 10 min"),
    (97200, "1 d 3 h"), (float("nan"), "—"), (None, "—"), (-30, "-30.0 s"),
])
def test_durations_read_like_a_person_writes_them(seconds, text):
    assert charts.format_duration(seconds) == text


def test_percent_and_count_formats():
    assert charts.format_percent(0.76923) == "76.9%"
    assert charts.format_percent(float("nan")) == "—"
    assert charts.format_count(1234567.0) == "1,234,567"


def test_figures_carry_the_query_numbers(known_data, store_of):
    store = store_of(known_data)
    trend = queries.trend(store, Filters(), "day")
    fig = charts.trend_figure(trend)
    bars = {trace.name: sum(trace.y) for trace in fig.data if trace.type == "bar"}
    assert bars == {"Delivered": 5, "Failed": 2, "Unknown": 1, "Pending": 1}
    distribution = queries.latency_distribution(store, Filters())
    measured = int(queries.kpis(store, Filters())["latency_messages"].iloc[0])
    histogram = charts.latency_histogram_figure(distribution).data[0]
    assert sum(histogram.y[:-1]) == distribution["messages"].sum() == measured == 5  # the last point closes
    # Buckets merged into bins: each latency (5, 5, 10, 60, 120 s) lies in the bin it is counted in.
    starts, counts = np.asarray(histogram.x[:-1]), np.asarray(histogram.y[:-1])
    for seconds, expected in ((5.0, 2), (10.0, 1), (60.0, 1), (120.0, 1)):
        assert counts[np.searchsorted(starts, seconds, side="right") - 1] == expected
    curve = charts.latency_cdf_figure(distribution).data[0]
    assert curve.y[0] == 0.0 and list(curve.y[1:]) == distribution["cumulative_share"].tolist()
    assert list(curve.x[1:]) == distribution["to_s"].tolist() and curve.y[-1] == 1.0
    assert charts.latency_histogram_figure(distribution.iloc[0:0]).data == ()  # empty: no error
    assert charts.latency_cdf_figure(distribution.iloc[0:0]).data == ()
    by_campaign = queries.latency_distribution(store, Filters(), by_campaign=True)
    curves = charts.latency_cdf_figure(by_campaign, by_campaign=["beta", "alpha"]).data
    assert [c.name for c in curves] == ["beta", "alpha"] and all(c.y[-1] == 1.0 for c in curves)


def test_latency_page_lists_messages_only_when_asked_and_offers_every_row(monkeypatch, known_data, store_of):
    at = run_app(monkeypatch, known_data, "latency", query={"range": "all"})
    assert len(at.get("plotly_chart")) == 3
    assert "download_latencies_csv" not in download_keys(at)  # closed: nothing listed, nothing queried
    at.session_state["latency_rows"] = True  # open "Every measured message"
    at.run()
    assert_ok(at)
    shown = table(at, "latencies")
    assert shown["latency_s"].tolist() == [120.0, 60.0, 10.0, 5.0, 5.0]  # the slowest first
    assert "The 5 slowest of 5 measured messages" in " ".join(c.value for c in at.caption)
    assert {"download_latencies_csv", "download_latencies_parquet"} <= download_keys(at)
    assert "download_latencies_xlsx" not in download_keys(at)
    store = store_of(known_data)
    files = {d.extension: d.build() for d in downloads.latency_downloads(store, Filters(), 5)}
    every = queries.latencies(store, Filters())
    assert files["csv"].startswith(b"# dlrlens scope: Period: all data (UTC)")
    from_csv = pd.read_csv(io.BytesIO(files["csv"]), skiprows=1)
    assert from_csv["delivery_message_id"].tolist() == every["delivery_message_id"].tolist()
    assert from_csv["latency_s"].tolist() == every["latency_s"].tolist()
    from_parquet = pd.read_parquet(io.BytesIO(files["parquet"]))
    assert from_parquet["latency_s"].tolist() == every["latency_s"].tolist()
    many = {d.extension: d for d in downloads.latency_downloads(store, Filters(), downloads.GZIP_CSV_ABOVE_ROWS + 1)}
    assert many["gz"].file_name.endswith(".csv.gz") and many["gz"].mime == "application/gzip"
    assert gzip.decompress(many["gz"].build()) == files["csv"], "the same rows, compressed"



def test_changes_read_in_their_units():
    assert charts.format_change(267, "count") == "+267"
    assert charts.format_change(-0.006, "share") == "-0.6 pp"
    assert charts.format_change(-165, "seconds") == "-2 min 45 s"
    assert charts.format_change(0.4, "seconds") == "+400 ms"
    assert charts.format_change(0, "count") == "0"
    assert charts.format_change(float("nan"), "count") is None
    assert charts.format_relative_change(0.25) == "+25.0%"
    assert charts.format_relative_change(-0.5) == "-50.0%"


def test_display_text_matches_the_card_formats():
    frame = pd.DataFrame({"campaign": ["a", None], "messages": [1234, 5], "delivery_rate": [0.8934, float("nan")],
                          "latency_p95_s": [2141.0, 3.5], "receipts": [7.0, float("nan")], "ratio": [1.234, 2.0],
                          "sent_at": pd.to_datetime(["2026-11-27 14:22:02", None]).tz_localize("UTC")})
    text = downloads.display_text(frame)
    assert text.to_dict("list") == {
        "campaign": ["a", "—"], "messages": ["1,234", "5"], "delivery_rate": ["89.3%", "—"],
        "latency_p95_s": ["35 min 41 s", "3.5 s"], "receipts": ["7", "—"], "ratio": ["1.23", "2.00"],
        "sent_at": ["2026-11-27 14:22:02+00:00", "—"]}
    assert text.at[0, "delivery_rate"] == charts.format_percent(0.8934)
    assert text.at[0, "latency_p95_s"] == charts.format_duration(2141.0)


def test_small_tables_are_styled_over_exact_numbers_and_sized_to_every_row():
    # The longest campaign name comes last: the grid alone would size from the first rows only.
    names = [f"c{i}" for i in range(14)] + ["winback-spring-sale-2026"]
    frame = pd.DataFrame({"campaign": names, "latency_p99_s": [60.0] * 14 + [2141.0]})
    data, config = downloads.display_frame(frame, "UTC")
    assert data.data["latency_p99_s"].tolist() == frame["latency_p99_s"].tolist()  # sorting by number
    assert config["latency_p99_s"]["type_config"]["format"] is None  # so the Styler's text shows
    wide, narrow = config["campaign"]["width"], downloads.display_frame(frame.iloc[:14], "UTC")[1]["campaign"]["width"]
    assert wide > narrow
    assert wide >= downloads.text_px("winback-spring-sale-2026") + 16  # the grid's cell padding
    assert config["latency_p99_s"]["width"] >= downloads.text_px("35 min 41 s") + 16


def test_large_tables_fall_back_to_the_browsers_number_formats(monkeypatch):
    monkeypatch.setattr(downloads, "STYLED_CELLS_LIMIT", 10)
    frame = pd.DataFrame({"latency_s": [1.5, 2.0, 3.0], "share": [0.1, 0.2, 0.3], "messages": [1, 2, 3],
                          "campaign": ["a", "b", "c"]})
    data, config = downloads.display_frame(frame, "UTC")
    assert isinstance(data, pd.DataFrame) and data["latency_s"].tolist() == [1.5, 2.0, 3.0]
    formats = {c: config[c].get("type_config", {}).get("format") for c in ("latency_s", "share", "messages")}
    assert formats == {"latency_s": "%.1f s", "share": "percent", "messages": "localized"}


def test_receipts_per_minute_show_at_least_an_hour_by_minute():
    minutes = pd.Series(pd.to_datetime(["2026-11-27 14:20", "2026-11-27 14:21"]).tz_localize("UTC"))
    per_minute = pd.DataFrame({"minute": minutes, "receipts": [5800, 1300]})
    fig = charts.receipts_per_minute_figure(per_minute)
    start, end = (pd.Timestamp(x) for x in fig.layout.xaxis.range)
    assert (start, end) == (pd.Timestamp("2026-11-27 13:22", tz="UTC"), pd.Timestamp("2026-11-27 14:22", tz="UTC"))
    assert fig.layout.xaxis.tickformat == "%H:%M"
    assert list(fig.data[0].y) == [5800, 1300]
    # While receipts are recent the axis runs to now, so a pause shows as empty minutes.
    now = pd.Timestamp("2026-11-27 14:35:40", tz="UTC")
    assert charts.per_minute_range(minutes, now) == (pd.Timestamp("2026-11-27 13:36", tz="UTC"),
                                                     pd.Timestamp("2026-11-27 14:36", tz="UTC"))
    # Long after the last receipt, it ends there (the card says how long ago that was).
    later = now + pd.Timedelta(days=2)
    assert charts.per_minute_range(minutes, later)[1] == pd.Timestamp("2026-11-27 14:22", tz="UTC")
    # A day of minutes: the day goes into the ticks.
    day = pd.Series(pd.date_range("2026-11-26 13:00", periods=1500, freq="min", tz="UTC"))
    long_fig = charts.receipts_per_minute_figure(pd.DataFrame({"minute": day, "receipts": 1}))
    assert long_fig.layout.xaxis.tickformat == "%b %d %H:%M"
    assert charts.per_minute_range(pd.Series([], dtype="datetime64[ns, UTC]")) is None


def test_failure_legends_fit_their_figures():
    reasons = [s.name for s in status_table() if s.category == "failed"][:12]
    frame = pd.DataFrame([(c, r, 1) for c in ("a", "b", "c") for r in reasons],
                         columns=["campaign", "reason", "messages"])
    bottom = charts.failures_by_campaign_figure(frame, legend="bottom")
    right = charts.failures_by_campaign_figure(frame, legend="right")
    assert bottom.layout.legend.orientation == "h" and bottom.layout.legend.yref == "container"
    # 12 reasons: the 5 most common and "Other reasons", one legend line each.
    assert [trace.name for trace in bottom.data][-1] == charts.OTHER_REASON and len(bottom.data) == charts.TOP_REASONS
    assert bottom.layout.height == 300 + charts.LEGEND_ROW_PX * charts.TOP_REASONS + 10
    assert right.layout.height >= 140 + charts.LEGEND_ROW_PX * charts.TOP_REASONS
    assert charts.failures_by_campaign_figure(frame[frame.reason == reasons[0]], legend="bottom").layout.height \
        < bottom.layout.height


def test_time_axis_ticks_are_spaced_apart():
    edges = np.array([0.05, 2.0, 90.0, 4000.0, 20000.0])
    distribution = pd.DataFrame({"from_s": edges, "to_s": edges * 1.02, "messages": 1,
                                 "cumulative_share": np.arange(1, 6) / 5})
    ticks = list(charts.latency_cdf_figure(distribution).layout.xaxis.tickvals)
    assert 1800 not in ticks and 3600 in ticks
    assert min(np.diff(np.log10(ticks))) >= 0.6


def test_rate_lines_bridge_hours_without_messages():
    trend = pd.DataFrame({"bucket_start": pd.date_range("2026-11-27", periods=3, freq="h", tz="UTC"),
                          "delivery_rate": [0.9, float("nan"), 0.8]})
    line = charts.rate_trend_figure({"bulk": trend}).data[0]
    assert line.connectgaps is True and list(line.y[::2]) == [0.9, 0.8]


def test_the_dashboard_runs_without_the_deploy_button():
    command = dashboard_command(Path("/data"), "127.0.0.1", 8501)
    assert command[command.index("--client.toolbarMode") + 1] == "minimal"
    assert command.index("--client.toolbarMode") < command.index("--")  # a Streamlit option, not the app's
