"""What every figure covers, in a real browser (Debian's headless Chromium): a stale campaign
link shows its warning and zero figures until the reader asks for all campaigns, the scope
line names the period and filters, and a filtered download states its filters in the file.

One dashboard serves the module over a data folder of known receipts written directly as
Parquet (no collector needed for these); each test opens its own browser context.
"""

from __future__ import annotations

import csv
import json
from datetime import datetime, timedelta, timezone
from urllib.parse import urlencode, urlsplit

import pytest

from tests.support.browser import (CHANGE_TIMEOUT_S, CHROMIUM, MISSING, PAGE_TIMEOUT_S, fresh_page, poll, query,
                                   wait_for_cards)
from tests.support.dashboard_server import running_dashboard
from tests.support.factory import message, write_receipts

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not CHROMIUM.exists(), reason=MISSING)]

SENT = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=2)


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("scope") / "data"
    alpha = dict(campaign="alpha", batch_id="BA", labels={"env": "prod"})
    beta = dict(campaign="beta", batch_id="BB", labels={"env": "staging"})
    write_receipts(data_dir, [
        *message("A1", SENT, [("ACCEPTED", 0), ("DELIVERED", 5)], **alpha),
        *message("A2", SENT, [("ACCEPTED", 0), ("DELIVERED", 7)], **alpha),
        *message("A3", SENT, [("ACCEPTED", 0), ("UNDELIVERABLE", 30)], **alpha),
        *message("B1", SENT, [("ACCEPTED", 0), ("DELIVERED", 9)], **beta),
    ])
    with running_dashboard(data_dir) as app:
        yield app


@pytest.fixture
def page(chromium, dashboard, tmp_path, request):
    def report(page) -> None:
        print(f"page {page.url}, screenshot {tmp_path / 'failure.png'}\ndashboard log:\n{dashboard.log()[-3000:]}")

    with fresh_page(chromium, request, tmp_path / "failure.png", on_failure=report) as page:
        yield page


def scope_line(page) -> str:
    line = page.locator(".st-key-scope_line")
    line.first.wait_for(timeout=PAGE_TIMEOUT_S * 1000)
    return line.first.inner_text().replace("\u2060", "")  # word joiners keep ":" from autolinking


def test_a_stale_campaign_link_warns_and_stays_applied_until_all_campaigns_are_asked_for(page, dashboard, tmp_path):
    page.goto(dashboard.url + "/?range=all&campaign=old-campaign-2025", timeout=PAGE_TIMEOUT_S * 1000)
    wait_for_cards(page, {"Messages": "0", "Delivered": "0"}, timeout_s=PAGE_TIMEOUT_S)
    warning = page.locator(".st-key-unknown_campaigns")
    warning.wait_for()
    assert "No message has the campaign “old-campaign-2025”" in warning.inner_text()
    assert query(page)["campaign"] == ["old-campaign-2025"]  # the URL still says what is shown
    assert "Campaigns: old-campaign-2025" in scope_line(page)
    page.screenshot(path=str(tmp_path / "stale-link.png"))

    page.get_by_role("button", name="Show all campaigns instead").click()
    wait_for_cards(page, {"Messages": "4", "Delivered": "3"})
    poll(page, query, lambda q: "campaign" not in q, CHANGE_TIMEOUT_S, "the URL without the campaign")
    assert not page.locator(".st-key-unknown_campaigns").count()


def test_a_bad_range_in_a_link_is_named_with_the_default_shown_instead(page, dashboard):
    page.goto(dashboard.url + "/?range=fortnight&tz=Mars/Olympus", timeout=PAGE_TIMEOUT_S * 1000)
    wait_for_cards(page, {"Messages": "4"}, timeout_s=PAGE_TIMEOUT_S)
    alerts = poll(page, lambda p: p.locator('[data-testid="stAlert"]').all_inner_texts(),
                  lambda texts: len(texts) >= 2, CHANGE_TIMEOUT_S, "two warnings")
    said = " ".join(alerts)
    # All the data is from the last day: the default shown instead is the last 24 hours.
    assert "range “fortnight”" in said and "showing Last 24 hours instead" in said
    assert "tz “Mars/Olympus”" in said and "showing UTC instead" in said
    assert query(page)["range"] == ["24h"]


def test_the_scope_line_names_period_comparison_and_every_filter(page, dashboard):
    params = urlencode([("range", "7d"), ("campaign", "alpha"), ("outcome", "delivered"),
                        ("label", "env=prod"), ("tz", "Europe/Berlin")])
    page.goto(f"{dashboard.url}/?{params}", timeout=PAGE_TIMEOUT_S * 1000)
    wait_for_cards(page, {"Messages": "2"}, timeout_s=PAGE_TIMEOUT_S)
    line = scope_line(page)
    for part in ("Period: Last 7 days", "(Europe/Berlin)", "vs previous:", "Campaigns: alpha",
                 "Outcomes: delivered", "URL labels: env=prod"):
        assert part in line, (part, line)


def test_a_filtered_export_names_its_filters(page, dashboard, tmp_path):
    params = urlencode([("range", "all"), ("campaign", "alpha"), ("status", "DELIVERED"), ("outcome", "delivered"),
                        ("label", "env=prod")])
    page.goto(f"{dashboard.url}/campaigns?{params}", timeout=PAGE_TIMEOUT_S * 1000)
    table = page.locator(".st-key-table_campaigns")
    table.wait_for(timeout=PAGE_TIMEOUT_S * 1000)
    with page.expect_download(timeout=CHANGE_TIMEOUT_S * 1000) as csv_download:
        table.get_by_role("button", name="CSV", exact=True).click()
    path = tmp_path / csv_download.value.suggested_filename
    csv_download.value.save_as(path)
    rows = list(csv.reader(path.open(encoding="utf-8")))
    [scope_cell] = rows[0]
    for part in ("Campaigns: alpha", "Outcomes: delivered", "Statuses: DELIVERED", "URL labels: env=prod"):
        assert part in scope_cell, (part, scope_cell)
    assert rows[1][:2] == ["campaign", "messages"] and rows[2][:2] == ["alpha", "2"]

    page.goto(f"{dashboard.url}/?{params}", timeout=PAGE_TIMEOUT_S * 1000)
    wait_for_cards(page, {"Messages": "2"}, timeout_s=PAGE_TIMEOUT_S)
    with page.expect_download(timeout=CHANGE_TIMEOUT_S * 1000) as json_download:
        page.get_by_role("button", name="Campaign report (JSON)").click()
    doc = json.loads(json_download.value.path().read_text())
    assert doc["scope"]["filters"] == {"campaigns": ["alpha"], "outcomes": ["delivered"], "statuses": ["DELIVERED"],
                                       "labels": ["env=prod"]}
    assert [row["messages"] for row in doc["Campaigns"]] == [2]


def test_lookup_by_url_shows_the_message_summary_first(page, dashboard):
    page.goto(dashboard.url + "/lookup?id=a3", timeout=PAGE_TIMEOUT_S * 1000)  # A3, in another case
    summary = page.locator(".st-key-lookup_summary")
    # Every card, not just the first: the grid's columns arrive one after another (a busy machine
    # showed the summary without its third column).
    parts = ("Campaign", "alpha", "failed", "UNDELIVERABLE", "Sent", "2 (0 duplicates hidden)")
    poll(page, lambda p: summary.inner_text() if summary.count() else "", lambda t: all(part in t for part in parts),
         PAGE_TIMEOUT_S, "the message summary")
    assert query(page)["id"] == ["a3"]
    assert page.title() == "Message lookup · dlrlens"


def test_pages_have_their_own_titles_and_nothing_is_fetched_from_elsewhere(page, dashboard):
    elsewhere = []
    page.on("request", lambda request: elsewhere.append(request.url)
            if urlsplit(request.url).hostname not in ("127.0.0.1", "localhost") else None)
    page.goto(dashboard.url + "/?range=all", timeout=PAGE_TIMEOUT_S * 1000)
    wait_for_cards(page, {"Messages": "4"}, timeout_s=PAGE_TIMEOUT_S)
    poll(page, lambda p: p.title(), lambda title: title == "Overview · dlrlens", CHANGE_TIMEOUT_S, "the title")
    icon = page.locator('link[rel*="icon"]').first.get_attribute("href")
    assert icon and not icon.startswith(("http://", "https://", "//")) or "127.0.0.1" in icon, icon
    page.locator('[data-testid="stSidebarNavLink"]', has_text="Campaigns").click()
    poll(page, lambda p: p.title(), lambda title: title == "Campaigns · dlrlens", CHANGE_TIMEOUT_S, "the title")
    page.wait_for_timeout(1000)
    assert elsewhere == [], f"requests to other hosts: {elsewhere}"


def test_a_phone_shows_two_cards_a_row_the_scope_and_no_toolbar_over_titles(chromium, dashboard, tmp_path):
    context = chromium.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
                                   has_touch=True)
    try:
        phone = context.new_page()
        phone.goto(dashboard.url + "/?range=all&campaign=alpha", timeout=PAGE_TIMEOUT_S * 1000)
        wait_for_cards(phone, {"Messages": "3"}, timeout_s=PAGE_TIMEOUT_S)
        cards = phone.locator('[data-testid="stMain"] [data-testid="stMetric"]')
        boxes = [cards.nth(i).bounding_box() for i in range(4)]
        assert abs(boxes[0]["y"] - boxes[1]["y"]) < 2 and boxes[2]["y"] > boxes[0]["y"] + 20, boxes  # 2 a row
        assert boxes[1]["x"] + boxes[1]["width"] <= 390
        assert "Campaigns: alpha" in phone.locator(".st-key-scope_line").inner_text().replace("\u2060", "")
        chart = phone.locator(".js-plotly-plot").first
        chart.wait_for()
        chart.hover()
        assert not phone.locator(".modebar-container").first.is_visible()
        plot_bottom = chart.locator(".xaxislayer-above").first.bounding_box()
        legend = chart.locator(".legend").first.bounding_box()
        assert legend["y"] >= plot_bottom["y"] + plot_bottom["height"] - 1, (legend, plot_bottom)  # below the plot
        phone.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
    finally:
        context.close()
