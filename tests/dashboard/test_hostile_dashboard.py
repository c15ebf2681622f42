"""Hostile data already stored, which the dashboard must survive and show honestly.

Far dates: a receipt created anywhere the collector's parser could ever store (0001-01-01T00:00:00Z
to 9999-12-31T23:59:59.999999Z, the "9999-12-31" placeholder included) must not break a query or
a page, "All time" included, on every read path (fresh tail only, derived state plus tail, the
baseline) and in zones on both sides of UTC. Charts over time cover [CHARTED_FROM, CHARTED_TO)
and the pages say how many messages they leave out.

Cardinality: 6,000 campaigns, 6,000 URL label keys and 6,000 URL label values (one per post):
the sidebar offers at most OPTION_LIMIT of each (LIMIT in SQL), finds any other by a search on
the server, keeps a link's value outside the list as a working filter, and a real dashboard
page stays small on the wire.
"""

from __future__ import annotations

import math
import shutil
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from dlrlens.store import derive
from dashboard import queries as q
from dashboard import state
from dashboard.queries import Filters, Store
from tests.support.baseline import BaselineStore
from tests.support.browser import (CHANGE_TIMEOUT_S, PAGE_TIMEOUT_S, VIEWPORT, open_options, query, sidebar_multiselect,
                                   wait_for_cards)
from tests.support.factory import demo_rows, message, receipt, utc, write_receipts

UTC = timezone.utc
APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
PAGES = ["views/overview.py", "views/campaigns.py", "views/failures.py", "views/latency.py",
         "views/lookup.py", "views/health.py"]
ZONES = ["UTC", "America/Los_Angeles", "Pacific/Kiritimati"]  # UTC-8/-7 and UTC+14

# --------------------------------------------------------------------------- far dates

FIRST = datetime.min.replace(tzinfo=UTC)  # 0001-01-01T00:00:00Z
LAST = datetime.max.replace(tzinfo=UTC)  # 9999-12-31T23:59:59.999999Z
# Failed messages sent outside the charted span (ACCEPTED, then UNDELIVERABLE a second later).
FAR_FAILED = {
    "F-FIRST": FIRST,
    "F-0999": utc(999, 3, 1),  # a year Python's strftime writes without its leading zero
    "F-EPOCH": utc(1970, 1, 1),  # created 0: a placeholder
    "F-1999": q.CHARTED_FROM - timedelta(microseconds=1),
    "F-2100": q.CHARTED_TO,
    "F-LAST": LAST - timedelta(seconds=1),
}
# Sent at the very start of time, delivered at its very end: the largest latency there can be.
FAR_DELIVERED = "F-SPAN"
# Inside the span, at its edges.
EDGES = {"E-2000": q.CHARTED_FROM, "E-2099": q.CHARTED_TO - timedelta(microseconds=1)}
UNCHARTED = len(FAR_FAILED) + 1
UNCHARTED_FAILED = len(FAR_FAILED)


def far_rows() -> list[dict]:
    far = dict(campaign="far", batch_id="BFAR", labels={"env": "far"}, received_at=utc(2026, 11, 2))
    rows = []
    for mid, sent in FAR_FAILED.items():
        rows += [receipt(mid, "ACCEPTED", sent, **far),
                 receipt(mid, "UNDELIVERABLE", sent + timedelta(seconds=1), **far)]
    rows += [receipt(FAR_DELIVERED, "ACCEPTED", FIRST, **far), receipt(FAR_DELIVERED, "DELIVERED", LAST, **far)]
    for mid, sent in EDGES.items():
        rows += message(mid, sent, [("ACCEPTED", 0), ("DELIVERED", 0.5)] if mid == "E-2000" else [("ACCEPTED", 0)],
                        campaign="edge", labels={"env": "edge"}, received_at=utc(2026, 11, 2))
    return rows


def expected_receipts(rows: list[dict]) -> dict[str, int]:
    """Distinct receipts per message."""
    return pd.DataFrame(rows).groupby("delivery_message_id")["receipt_id"].nunique().to_dict()


@pytest.fixture(scope="module")
def far_data(tmp_path_factory):
    """{mode: data dir} with the same receipts: demo data plus :func:`far_rows`. ``tail``: raw
    receipt files only; ``derived``: derived state, with one far message and some demo ones
    still in the fresh tail."""
    root = tmp_path_factory.mktemp("far")
    demo, far = demo_rows(80, seed=11), far_rows()
    late = [r for r in far if r["delivery_message_id"] == "F-2100"] + demo[:20]
    early = [r for r in demo[20:] + far if r not in late]
    tail = root / "tail"
    write_receipts(tail, early + late)
    derived = root / "derived"
    write_receipts(derived, early)
    derive.update_derived(derived, now=utc(2026, 11, 10))
    write_receipts(derived, late)
    return {"tail": tail, "derived": derived, "rows": demo + far}


def store_for(mode: str, far_data) -> Store:
    return BaselineStore(far_data["tail"]) if mode == "baseline" else Store(far_data[mode])


def every_figure(store: Store, f: Filters) -> dict[str, object]:
    """What the pages, downloads and reports compute, for ``f``."""
    return {
        "kpis": q.kpis(store, f, receipt_figures=True), "change": q.kpis_with_change(store, f),
        "trend": q.trend(store, f), "hourly": q.trend(store, f, bucket="hour"),
        "outcomes": q.outcome_breakdown(store, f), "pending": q.pending_ages(store, f, now=utc(2026, 11, 10)),
        "reasons": q.failure_reasons(store, f), "by_campaign": q.failure_reasons_by_campaign(store, f),
        "over_time": q.failure_reasons_over_time(store, f), "campaigns": q.campaigns(store, f, receipt_figures=True),
        "latency": q.latency_by_campaign(store, f), "distribution": q.latency_distribution(store, f, True),
        "slowest": q.slowest_latencies(store, f, 50), "latencies": q.latencies(store, f),
        "latency_csv": q.latencies_file(store, f, "csv"), "detail": q.message_detail(store, f),
        "lookup_first": q.message_lookup(store, "F-FIRST", tz=f.tz),
        "lookup_last": q.message_lookup(store, "F-LAST", tz=f.tz),
        "health": q.data_health(store), "labels": q.label_pairs(store), "range": store.data_range(),
        "uncharted": q.uncharted_messages(store, f), "uncharted_failed": q.uncharted_messages(store, f, "failed"),
    }


@pytest.mark.parametrize("tz", ZONES)
@pytest.mark.parametrize("mode", ["tail", "derived", "baseline"])
def test_every_figure_survives_far_dates_over_all_time(far_data, mode, tz):
    rows = far_data["rows"]
    receipts = expected_receipts(rows)
    with store_for(mode, far_data) as store:
        got = every_figure(store, Filters(tz=tz))
        kpis = got["kpis"].iloc[0]
        assert kpis["messages"] == len(receipts)  # every other figure counts far messages
        assert got["uncharted"] == UNCHARTED and got["uncharted_failed"] == UNCHARTED_FAILED
        # The charts over time hold every other message, and only those.
        for name in ("trend", "hourly"):
            assert got[name]["messages"].sum() == len(receipts) - UNCHARTED
        assert got["over_time"]["messages"].sum() == kpis["failed"] - UNCHARTED_FAILED
        assert got["trend"]["bucket_start"].min() >= pd.Timestamp(q.CHARTED_FROM) - pd.Timedelta(days=1)
        assert str(got["trend"]["bucket_start"].dt.tz) == tz
        # Defaults (date range, custom dates) never come from a far message.
        assert got["range"] == (EDGES["E-2000"], EDGES["E-2099"])
        # Receipts per message come from the partitions from the oldest sent day on: the
        # year-999 partition's name must compare as a date.
        detail = got["detail"].set_index("delivery_message_id")["receipts"].to_dict()
        assert detail == receipts
        assert len(got["lookup_first"]) == 2 and len(got["lookup_last"]) == 2
        span = got["slowest"].iloc[0]
        assert span["delivery_message_id"] == FAR_DELIVERED
        assert span["latency_s"] == pytest.approx((LAST - FIRST) / timedelta(seconds=1))
        if mode != "baseline":  # the fast path, exactly as the straightforward definition
            with BaselineStore(far_data["tail"]) as baseline:
                f = Filters(tz=tz)
                for name, expected in (("trend", q.trend(baseline, f)),
                                       ("over_time", q.failure_reasons_over_time(baseline, f)),
                                       ("campaigns", q.campaigns(baseline, f, receipt_figures=True)),
                                       ("latency", q.latency_by_campaign(baseline, f))):
                    pd.testing.assert_frame_equal(got[name], expected, check_dtype=False, obj=name)


@pytest.mark.parametrize(("tz", "open_start", "open_end"), [("America/Los_Angeles", False, True),
                                                              ("Asia/Tokyo", True, True)])
def test_custom_days_from_year_1_to_9999_and_ranges_past_the_span(far_data, tz, open_start, open_end):
    with Store(far_data["derived"]) as store:
        everything = state.resolve(state.FilterState(preset="custom", date_from=date(1, 1, 1),
                                                     date_to=date(9999, 12, 31), tz=tz), utc(2026, 11, 10))
        # Local midnights past what a datetime holds leave the range open on that side (in year
        # 1 a zone has its local mean time: Los Angeles -7:52:58, Tokyo +9:18:59).
        assert (everything.start is None, everything.end is None) == (open_start, open_end)
        if everything.start is not None and everything.end is not None:
            assert everything.previous_period() is None  # it would start before year 1
        sent = pd.DataFrame(far_data["rows"]).groupby("delivery_message_id")["created"].min()
        inside = sent[(sent >= (everything.start or FIRST)) & ((sent < everything.end) if everything.end else True)]
        figures = every_figure(store, everything)
        assert figures["kpis"]["messages"].iloc[0] == len(inside)
        assert figures["uncharted"] == ((inside < q.CHARTED_FROM) | (inside >= q.CHARTED_TO)).sum()
        assert figures["trend"]["messages"].sum() == len(inside) - figures["uncharted"]
        assert math.isnan(figures["change"].set_index("metric").at["messages", "previous"])  # no previous period
        # A range wholly after the span: nothing charted, the one message there is counted.
        later = Filters(start=utc(2200, 1, 1), tz=tz)
        assert q.trend(store, later).empty and q.failure_reasons_over_time(store, later).empty
        assert q.uncharted_messages(store, later) == 1 == q.kpis(store, later)["messages"].iloc[0]
        before = Filters(end=utc(1000, 1, 1), tz=tz)
        assert q.uncharted_messages(store, before) == 3 and q.trend(store, before).empty


def test_the_note_names_what_a_chart_leaves_out():
    assert q.uncharted_note(0) is None
    assert q.uncharted_note(1).startswith("1 message sent before 2000-01-01 or from 2100-01-01 on")
    assert q.uncharted_note(12_345, "failed").startswith("12,345 failed messages sent before")


def run_app(monkeypatch, data_dir: Path, query: dict | None = None, page: str | None = None) -> AppTest:
    monkeypatch.setenv("DLRLENS_DATA", str(data_dir))
    at = AppTest.from_file(str(APP), default_timeout=60)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def warnings(at: AppTest) -> str:
    return " ".join(w.value for w in at.warning)


@pytest.mark.parametrize("query", [{"range": "all"}, {"range": "all", "tz": "America/Los_Angeles"},
                                   {"range": "custom", "from": "0001-01-01", "to": "9999-12-31",
                                    "tz": "Asia/Tokyo"}])
def test_every_page_renders_far_dates_and_says_what_its_charts_leave_out(monkeypatch, far_data, query):
    for page in PAGES:
        at = run_app(monkeypatch, far_data["derived"], query, page)
        if page == "views/overview.py":
            assert f"{UNCHARTED} messages sent before 2000-01-01 or from 2100-01-01 on" in warnings(at)
        if page == "views/failures.py":
            assert f"{UNCHARTED_FAILED} failed messages sent before 2000-01-01" in warnings(at)
        if page == "views/campaigns.py":
            at.multiselect(key="campaign_compare").set_value(["far", "edge"]).run()
            assert not at.exception, [e.value for e in at.exception]
            assert f"{UNCHARTED} messages sent before" in warnings(at)


# --------------------------------------------------------------------------- cardinality

POSTS = 6_000
LIMIT = q.OPTION_LIMIT
NOW = datetime.now(UTC).replace(microsecond=0)


def post_url(i: int) -> str:
    return f"https://news.example.com/2026/11/{i:04d}/a-rather-long-article-slug-for-post-{i:04d}?utm_source=sms"


def crowd_rows() -> list[dict]:
    """One message per post (own campaign, own ``url`` value, own label key), two busier
    campaigns that rank first, and two whose names hold LIKE's wildcards."""
    rows = []
    for i in range(POSTS):
        rows += message(f"P{i:04d}", NOW - timedelta(minutes=30, seconds=i), [("ACCEPTED", 0), ("DELIVERED", 3)],
                        campaign=f"post-{i:04d}", labels={"url": post_url(i), f"k{i:04d}": f"v{i:04d}"})
    for name, count in (("busy-a", 5), ("busy-b", 4), ("50%_off", 1), ("50xxoff", 1)):
        for n in range(count):
            rows += message(f"{name}-{n}", NOW - timedelta(hours=1), [("ACCEPTED", 0)], campaign=name)
    return rows


CAMPAIGNS = POSTS + 4
LABEL_PAIRS = 2 * POSTS


@pytest.fixture(scope="module")
def crowd(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("crowd") / "data"
    write_receipts(root, crowd_rows())
    derive.update_derived(root)
    return root


def test_option_lists_are_bounded_in_sql_and_search_finds_any(crowd, monkeypatch):
    with Store(crowd) as store:
        fetched = []
        query = store.query

        def counting(sql, params=None, tables=None):
            df = query(sql, params, tables)
            fetched.append(len(df))
            return df
        monkeypatch.setattr(store, "query", counting)

        top = q.campaign_choices(store)
        assert len(top.values) == LIMIT and top.total == CAMPAIGNS
        assert top.values[:3] == ("busy-a", "busy-b", "50%_off")  # most messages first, then by name
        labels = q.label_choices(store)
        assert len(labels.values) == LIMIT and labels.total == LABEL_PAIRS
        assert max(fetched) <= LIMIT  # never every name: the ranking and the LIMIT run in DuckDB

        assert q.campaign_choices(store, "post-4321").values == ("post-4321",)
        assert q.campaign_choices(store, "  POST-4321 ") == q.Choices(("post-4321",), 1)  # trimmed, any case
        assert q.campaign_choices(store, "50%_").values == ("50%_off",)  # wildcards match themselves
        assert q.campaign_choices(store, "_").values == ("50%_off",)
        assert q.campaign_choices(store, "post-").total == POSTS
        assert q.campaign_choices(store, "'; DROP TABLE x; --") == q.Choices((), 0)
        assert q.label_choices(store, "k4321=").values == ("k4321=v4321",)
        assert q.label_choices(store, "/4321/").values == (f"url={post_url(4321)}",)
        # A link's values: which exist, wherever they rank.
        assert q.campaign_choices(store, among=("post-5999", "gone")).values == ("post-5999",)
        assert q.label_choices(store, among=("k5999=v5999", "k5999=other")).values == ("k5999=v5999",)
        assert max(fetched) <= LIMIT


def options(at: AppTest, key: str) -> list[str]:
    return list(at.multiselect(key=key).options)


def test_sidebar_offers_the_busiest_searches_the_rest_and_keeps_a_linked_value(monkeypatch, crowd):
    # A link naming a campaign and a label far outside the lists still filters.
    at = run_app(monkeypatch, crowd, {"campaign": "post-5999", "label": "k5999=v5999"})
    assert at.session_state[state.KEY_CAMPAIGNS] == ["post-5999"]
    assert at.session_state[state.KEY_LABELS] == ["k5999=v5999"]
    assert {m.label: m.value for m in at.metric}["Messages"] == "1"
    assert len(options(at, state.KEY_CAMPAIGNS)) == LIMIT + 1 and "post-5999" in options(at, state.KEY_CAMPAIGNS)
    assert len(options(at, state.KEY_LABELS)) == LIMIT + 1 and "k5999=v5999" in options(at, state.KEY_LABELS)
    # Every post is from the last day: the first view is the last 24 hours.
    assert dict(at.query_params) == {"range": "24h", "campaign": "post-5999", "label": "k5999=v5999"}

    # Search on the server, pick the one found, clear the search: it stays chosen and offered.
    at = run_app(monkeypatch, crowd)
    assert "post-4321" not in options(at, state.KEY_CAMPAIGNS)
    at.text_input(key=state.KEY_CAMPAIGN_SEARCH).input("post-4321").run()
    assert options(at, state.KEY_CAMPAIGNS) == ["post-4321"]
    at.multiselect(key=state.KEY_CAMPAIGNS).set_value(["post-4321"]).run()
    assert {m.label: m.value for m in at.metric}["Messages"] == "1"
    at.text_input(key=state.KEY_CAMPAIGN_SEARCH).input("").run()
    assert at.session_state[state.KEY_CAMPAIGNS] == ["post-4321"]
    assert "post-4321" in options(at, state.KEY_CAMPAIGNS) and len(options(at, state.KEY_CAMPAIGNS)) == LIMIT + 1
    assert not at.exception
    # The whole sidebar's widgets, as sent to the browser, stay small.
    sent = sum(len(w.proto.SerializeToString()) for w in [*at.sidebar.multiselect, *at.sidebar.selectbox])
    assert sent < 60_000, sent


def test_a_stale_link_and_hundreds_of_values_are_cut_to_what_exists(monkeypatch, crowd):
    many = [f"post-{i:04d}" for i in range(300)]
    at = run_app(monkeypatch, crowd, {"campaign": many + ["gone"]})
    assert at.session_state[state.KEY_CAMPAIGNS] == many[:state.MAX_URL_VALUES]
    assert {m.label: m.value for m in at.metric}["Messages"] == str(state.MAX_URL_VALUES)


def test_campaigns_page_offers_a_bounded_comparison_list(monkeypatch, crowd):
    at = run_app(monkeypatch, crowd, {"range": "all"}, "views/campaigns.py")
    offered = options(at, "campaign_compare")
    assert len(offered) == LIMIT and offered[:2] == ["busy-a", "busy-b"]
    at.text_input(key="campaign_search").input("post-4321").run()
    assert options(at, "campaign_compare") == ["post-4321"]
    at.multiselect(key="campaign_compare").set_value(["post-4321"]).run()
    at.text_input(key="campaign_search").input("").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["campaign_compare"] == ["post-4321"]
    assert len(options(at, "campaign_compare")) == LIMIT + 1


# --------------------------------------------------------------------------- in a real browser


@pytest.mark.browser
@pytest.mark.slow
def test_a_real_page_over_thousands_of_campaigns_stays_small_and_search_works(crowd, chromium, tmp_path):
    """The real dashboard in headless Chromium (``chromium``, tests/conftest.py): what the first
    Overview render sends over the websocket stays bounded, and a campaign outside the list is
    found by the sidebar search."""
    from tests.support.dashboard_server import running_dashboard

    data = tmp_path / "data"
    shutil.copytree(crowd, data)
    with running_dashboard(data) as app:
        context = chromium.new_context(viewport=VIEWPORT)
        try:
            page = context.new_page()
            page.set_default_timeout(CHANGE_TIMEOUT_S * 1000)
            received: list[int] = []
            page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: received.append(len(payload))))
            page.goto(app.url, timeout=PAGE_TIMEOUT_S * 1000)
            wait_for_cards(page, {"Messages": f"{CAMPAIGNS + 7:,}"}, timeout_s=PAGE_TIMEOUT_S)
            settle = time.monotonic() + 3  # until the run's last messages are in
            while time.monotonic() < settle:
                page.wait_for_timeout(250)
            print(f"{sum(received):,} bytes in {len(received)} frames for one Overview render")
            assert sum(received) < 250_000, f"{sum(received):,} bytes for one Overview render (796 KB before)"

            search = page.locator('[data-testid="stSidebar"] [data-testid="stTextInput"]').filter(
                has=page.get_by_text("Search campaigns", exact=True)).locator("input")
            search.fill("post-4321")
            search.press("Enter")
            campaigns = sidebar_multiselect(page, "Campaigns")
            open_options(page, campaigns)
            page.get_by_role("option", name="post-4321", exact=True).click()  # waits for the rerun
            page.keyboard.press("Escape")
            wait_for_cards(page, {"Messages": "1"})
            assert query(page)["campaign"] == ["post-4321"]
        finally:
            context.close()


def test_a_label_filter_right_after_the_data_range(far_data):
    """data_range's result is fetched whole: a result left unfinished made the next label
    filter fail with DuckDB's "connection has an unfinished result" (the sidebar asks for
    the data range on every run, the label filter registers its catalog right after)."""
    with Store(far_data["derived"]) as store:
        assert q.kpis(store, Filters(labels=(("env", "far"),)))["messages"].iloc[0] == UNCHARTED
        store.data_range()
        assert q.kpis(store, Filters(labels=(("env", "edge"),)))["messages"].iloc[0] == len(EDGES)
