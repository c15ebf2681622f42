"""The whole system in a real browser: receipts posted over HTTP to the real collector, read
by the real Streamlit dashboard, driven in Debian's headless Chromium with Playwright.

One collector and one dashboard serve the module (a temporary data folder); each test opens
its own browser context, i.e. a fresh dashboard session. The receipts are a small set whose
figures are known by construction (:data:`EXPECTED`), so every assertion names exact numbers
as the cards and tables print them. Screenshots (full page) land in each test's ``tmp_path``.

Chromium, its waits and :func:`poll` come from :mod:`tests.support.browser` (the ``chromium``
fixture from tests/conftest.py: one browser for the module).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from dlrlens.statuses import lookup
from tests.support.browser import (CHANGE_TIMEOUT_S, CHROMIUM, MISSING, PAGE_TIMEOUT_S, fresh_page, open_options, poll, query,
                                   read_first_table, sidebar_multiselect, wait_for_cards)
from tests.support.dashboard_server import full_page_screenshot, running_dashboard, wait_for_parquet
from tests.support.servers import running_collector

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not CHROMIUM.exists(), reason=MISSING)]

# --------------------------------------------------------------------------- the receipts

# Per campaign: (message outcome, seconds from ACCEPTED to the final receipt) for each message;
# a None outcome means the message never got a final receipt (pending).
PLAN: dict[str, list[tuple[str | None, int]]] = {
    "alpha": [("DELIVERED", 4)] * 5 + [("UNDELIVERABLE", 20)],
    "beta": [("DELIVERED", 30), ("UNDELIVERABLE", 20), ("UNDELIVERABLE", 20), (None, 0)],
    "gamma": [(None, 0), (None, 0)],
}

# The cards as the Overview prints them: all campaigns (None) and each campaign on its own.
# Time to deliver p50: alpha's latencies are 4 s x5, beta's one is 30 s; all: median of
# [4, 4, 4, 4, 4, 30] = 4 s. Delivery rate = delivered / (delivered + failed + unknown).
EXPECTED: dict[str | None, dict[str, str]] = {
    None: {"Messages": "12", "Delivered": "6", "Failed": "3", "Unknown": "0", "Pending": "3",
           "Delivery rate": "66.7%", "Time to deliver p50": "4.0 s"},
    "alpha": {"Messages": "6", "Delivered": "5", "Failed": "1", "Unknown": "0", "Pending": "0",
              "Delivery rate": "83.3%", "Time to deliver p50": "4.0 s"},
    "beta": {"Messages": "4", "Delivered": "1", "Failed": "2", "Unknown": "0", "Pending": "1",
             "Delivery rate": "33.3%", "Time to deliver p50": "30.0 s"},
    "gamma": {"Messages": "2", "Delivered": "0", "Failed": "0", "Unknown": "0", "Pending": "2",
              "Delivery rate": "—", "Time to deliver p50": "—"},
}


def receipt(message_id: str, status: str, created: datetime) -> dict:
    """A Mobivate JSON receipt (the documented fields, as in receipt.json)."""
    return {
        "deliveryMessageId": message_id,
        "batchId": "BATCH-" + message_id.split("-")[0],
        "clientReference": None,
        "created": created.strftime("%Y-%m-%dT%H:%M:%S.000+00:00"),
        "status": status,
        "statusCode": lookup(status, None).code,
        "parts": 1,
        "hlr": None,
    }


def campaign_receipts(campaign: str, sent: datetime) -> list[dict]:
    """Every receipt of one campaign of :data:`PLAN`: ACCEPTED, then the final one if any."""
    receipts = []
    for number, (final, after) in enumerate(PLAN[campaign]):
        message_id = f"{campaign.upper()}-{number:02d}"
        receipts.append(receipt(message_id, "ACCEPTED", sent))
        if final:
            receipts.append(receipt(message_id, final, sent + timedelta(seconds=after)))
    return receipts


def post_known_receipts(collector) -> tuple[int, int]:
    """Post :data:`PLAN` (one request per campaign, labelled ``?campaign=``), plus one receipt
    again as Mobivate's retries do; return (rows stored, distinct receipts)."""
    # Half an hour ago: inside the dashboard's default "last 7 days" and its previous period
    # holds nothing, so no card depends on the clock.
    sent = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=30)
    posted = 0
    for campaign in PLAN:
        receipts = campaign_receipts(campaign, sent)
        response = requests.post(collector.dlr, params={"campaign": campaign}, json=receipts, timeout=30)
        assert response.status_code == 200, response.text
        assert response.json()["stored"] == len(receipts)
        posted += len(receipts)
    retry = campaign_receipts("alpha", sent)[1]  # the same DELIVERED receipt a second time
    response = requests.post(collector.dlr, params={"campaign": "alpha"}, json=retry, timeout=30)
    assert response.status_code == 200, response.text
    return posted + 1, posted


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    """Collector and dashboard on one fresh data folder holding the known receipts (in
    Parquet, so the dashboard sees them all); yields the dashboard."""
    root = tmp_path_factory.mktemp("browser")
    data_dir = root / "data"
    data_dir.mkdir()
    with running_collector(data_dir, flush_seconds=0.3) as collector, running_dashboard(data_dir) as app:
        wait_for_parquet(data_dir, *post_known_receipts(collector))
        yield app


@pytest.fixture
def page(chromium, dashboard, tmp_path, request):
    """A fresh browser context (a new dashboard session). When the test failed, ``failure.png``
    (full page) is saved in ``tmp_path`` and printed with the dashboard log's tail."""
    def report(page) -> None:
        print(f"page {page.url}, screenshot {tmp_path / 'failure.png'}\n"
              f"dashboard log (tail):\n{dashboard.log()[-3000:]}")

    with fresh_page(chromium, request, tmp_path / "failure.png", on_failure=report) as page:
        yield page


# --------------------------------------------------------------------------- page helpers


def open_app(page, url: str) -> None:
    page.goto(url, timeout=PAGE_TIMEOUT_S * 1000)


def shoot(page, path: Path) -> None:
    full_page_screenshot(page, path)
    assert path.stat().st_size > 10_000  # a rendered page, not a blank one


# --------------------------------------------------------------------------- tests


def test_overview_cards_show_the_posted_receipts(page, dashboard, tmp_path):
    open_app(page, dashboard.url)
    cards = wait_for_cards(page, EXPECTED[None], timeout_s=PAGE_TIMEOUT_S)
    assert list(cards)[:6] == ["Messages", "Delivered", "Failed", "Unknown", "Pending", "Delivery rate"]
    # The app writes its filters into the URL: no campaign chosen yet.
    assert "campaign" not in query(page)
    shoot(page, tmp_path / "overview.png")


def test_a_campaign_link_opens_filtered_and_the_sidebar_changes_cards_and_url(page, dashboard, tmp_path):
    # A shared link: the URL's campaign reaches the sidebar widget and the cards. gamma has no
    # final receipt at all, so it has no delivery rate and no latency.
    open_app(page, dashboard.url + "/?campaign=gamma")
    wait_for_cards(page, EXPECTED["gamma"], timeout_s=PAGE_TIMEOUT_S)
    campaigns = sidebar_multiselect(page, "Campaigns")
    assert "gamma" in campaigns.inner_text()
    assert query(page)["campaign"] == ["gamma"]
    shoot(page, tmp_path / "overview-gamma.png")

    # As a person would: drop gamma (Backspace in the box), open the list, pick beta.
    open_options(page, campaigns)
    page.keyboard.press("Backspace")
    page.get_by_role("option", name="beta", exact=True).click()
    page.keyboard.press("Escape")

    wait_for_cards(page, EXPECTED["beta"])
    page.wait_for_url(lambda url: parse_qs(urlsplit(url).query).get("campaign") == ["beta"],
                      timeout=CHANGE_TIMEOUT_S * 1000)
    assert "gamma" not in campaigns.inner_text() and "beta" in campaigns.inner_text()
    shoot(page, tmp_path / "overview-beta.png")


def test_campaigns_page_lists_every_campaign(page, dashboard, tmp_path):
    open_app(page, dashboard.url)
    wait_for_cards(page, EXPECTED[None], timeout_s=PAGE_TIMEOUT_S)

    page.locator('[data-testid="stSidebarNavLink"]', has_text="Campaigns").click()
    page.wait_for_url(lambda url: urlsplit(url).path.rstrip("/").endswith("/campaigns"))
    page.get_by_role("heading", name="Campaigns").wait_for()
    # (The Overview's tables sit in the DOM too, in a closed expander, until the page is replaced.)
    rows = poll(page, read_first_table, lambda rows: len(rows) == 3 and all("Campaign" in row for row in rows),
                CHANGE_TIMEOUT_S, "the campaigns table with 3 rows")

    counts = {row["Campaign"]: tuple(row[c] for c in ("Messages", "Delivered", "Failed", "Pending"))
              for row in rows}
    expected = {name: tuple(EXPECTED[name][c] for c in ("Messages", "Delivered", "Failed", "Pending"))
                for name in PLAN}
    assert counts == expected
    # Sorted by messages, most first.
    assert [row["Campaign"] for row in rows] == ["alpha", "beta", "gamma"]
    assert "campaign" not in query(page)
    shoot(page, tmp_path / "campaigns.png")
