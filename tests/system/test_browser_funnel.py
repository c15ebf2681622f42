"""The Funnel page in a real browser: receipts, clicks and replies posted over HTTP to the real
collector (/dlr, /click, /incoming), read by the real dashboard in headless Chromium. The
figures are known by construction (:data:`EXPECTED`); the page shows them, its funnel chart,
and the unlinked click; Message lookup shows the reply masked, then revealed."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

import pytest
import requests

from tests.support.browser import (CHANGE_TIMEOUT_S, CHROMIUM, MISSING, PAGE_TIMEOUT_S, READ_TABLE, fresh_page, poll,
                                   wait_for_cards)
from tests.support.dashboard_server import full_page_screenshot, running_dashboard, wait_for_parquet
from tests.support.events import click, reply, wait_events
from tests.support.servers import running_collector

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not CHROMIUM.exists(), reason=MISSING)]

# spring: S-00..S-02 delivered, S-03 failed. Clicks: S-00 (and its retry 1 s later: one click),
# S-01 by its clientReference within the batch; a click on an unknown message. Replies: S-00
# " Stop " (an opt-out), S-02 "Thanks".
EXPECTED = {"Delivered": "3", "Clicked": "2", "Click rate": "66.7%", "Clicks": "2", "Replied": "2",
            "Opted out": "1", "Opt-out rate": "33.3%"}


def receipt(message_id: str, status: str, code: int, created: datetime) -> dict:
    return {"deliveryMessageId": message_id, "batchId": "SPRING-1", "clientReference": f"ref-{message_id}",
            "created": created.strftime("%Y-%m-%dT%H:%M:%S.000+00:00"), "status": status, "statusCode": code,
            "parts": 1, "hlr": None}


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("browser-funnel") / "data"
    data_dir.mkdir()
    sent = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=30)
    receipts = []
    for number, (status, code) in enumerate([("DELIVERED", 1)] * 3 + [("UNDELIVERABLE", 5)]):
        receipts += [receipt(f"S-{number:02d}", "ACCEPTED", 2, sent),
                     receipt(f"S-{number:02d}", status, code, sent + timedelta(seconds=5))]
    with running_collector(data_dir, flush_seconds=0.3) as collector, running_dashboard(data_dir) as app:
        answer = requests.post(collector.dlr, params={"campaign": "spring"}, json=receipts, timeout=30)
        assert answer.status_code == 200, answer.text
        clicks = [click("S-00", "SPRING-1"), click("S-00", "SPRING-1"), click(None, "SPRING-1", "ref-S-01"),
                  click("ghost", "other")]
        for body in clicks:
            assert requests.post(collector.url + "/click", json=body, timeout=30).status_code == 200
        created = (sent + timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%S+0000")
        for body in (reply("R-1", "S-00", " Stop ", "SPRING-1", created), reply("R-2", "S-02", "Thanks", "SPRING-1",
                                                                                 created)):
            assert requests.post(collector.url + "/incoming", json=body, timeout=30).status_code == 200
        wait_for_parquet(data_dir, len(receipts), len(receipts))
        wait_events(data_dir, "clicks", 4)
        wait_events(data_dir, "replies", 2)
        yield app


@pytest.fixture
def page(chromium, dashboard, tmp_path, request):
    def report(page) -> None:
        print(f"page {page.url}\ndashboard log (tail):\n{dashboard.log()[-3000:]}")

    with fresh_page(chromium, request, tmp_path / "failure.png", on_failure=report) as page:
        yield page


def test_funnel_page_shows_the_posted_clicks_and_replies(page, dashboard, tmp_path):
    page.goto(dashboard.url + "/funnel?range=all", timeout=PAGE_TIMEOUT_S * 1000)
    page.get_by_role("heading", name="Funnel").wait_for(timeout=PAGE_TIMEOUT_S * 1000)
    wait_for_cards(page, EXPECTED, timeout_s=PAGE_TIMEOUT_S)
    main = page.locator('[data-testid="stMain"]')
    main.get_by_text("1 of 3 clicks", exact=False).wait_for(timeout=CHANGE_TIMEOUT_S * 1000)  # ghost; a retry is one
    charts = main.locator(".js-plotly-plot")
    charts.first.wait_for(timeout=CHANGE_TIMEOUT_S * 1000)
    assert charts.count() >= 5
    assert "Opted out" in charts.first.inner_text()  # the funnel's last stage
    assert urlsplit(page.url).path.rstrip("/").endswith("/funnel")
    full_page_screenshot(page, tmp_path / "funnel.png")
    assert (tmp_path / "funnel.png").stat().st_size > 10_000


def test_lookup_masks_the_reply_until_revealed(page, dashboard, tmp_path):
    page.goto(dashboard.url + "/lookup", timeout=PAGE_TIMEOUT_S * 1000)
    box = page.get_by_label("deliveryMessageId, clientReference or batchId")
    box.fill("S-00")
    box.press("Enter")
    main = page.locator('[data-testid="stMain"]')
    main.get_by_text("Replies (1)").wait_for(timeout=PAGE_TIMEOUT_S * 1000)

    def replies_table(_page) -> list[dict[str, str]]:
        grid = page.locator('.st-key-table_lookup_replies [data-testid="stDataFrame"]').first
        if not grid.count():
            return []
        table = grid.evaluate(READ_TABLE)
        return [dict(zip(table["headers"], cells)) for cells in table["rows"] if cells]

    def body_cell(rows) -> str:
        return next((value for key, value in rows[0].items() if "ody" in key), "") if rows else ""

    rows = poll(page, replies_table, lambda rows: "••••" in body_cell(rows), CHANGE_TIMEOUT_S, "the masked reply")
    assert "Stop" not in body_cell(rows) and "44770****456" in " ".join(rows[0].values())
    main.get_by_text("Show reply text").click()
    poll(page, replies_table, lambda rows: body_cell(rows).strip() == "Stop", CHANGE_TIMEOUT_S, "the revealed reply")
    full_page_screenshot(page, tmp_path / "lookup-replies.png")
