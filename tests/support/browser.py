"""Debian's headless Chromium driven by Playwright, for the tests that open the real dashboard
(tests/system/test_browser.py and the browser tests in tests/dashboard/), and reading its pages.

The ``chromium`` fixture (tests/conftest.py) launches one browser per test module with
:func:`launched_chromium` and skips when :data:`CHROMIUM` is missing; each test opens its own
context (a fresh dashboard session). Waits are bounded and poll the page through Playwright
(:func:`poll`, ``page.wait_for_timeout``), never ``time.sleep``: the sync API only takes in
browser events while it is called. :func:`read_cards`, :func:`wait_for_cards`,
:func:`read_first_table`, :func:`sidebar_multiselect` and :func:`query` read a dashboard page.
Playwright is imported only when a browser is launched.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage"]
VIEWPORT = {"width": 1440, "height": 1000}
MISSING = f"{CHROMIUM} is missing (scripts/test.sh installs Debian's chromium as root)"

# Bounds of the waits, generous for a busy 2-core machine.
PAGE_TIMEOUT_S = 60  # a fresh session's first full render
CHANGE_TIMEOUT_S = 30  # a rerun after a click
POLL_MS = 250


@contextlib.contextmanager
def launched_chromium():
    """Headless Chromium (a Playwright ``Browser``), closed on the way out."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                             timeout=PAGE_TIMEOUT_S * 1000)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def fresh_page(chromium, request, failure_png: Path, on_failure=None):
    """A new browser context of ``chromium`` (a new dashboard session) and its page. When the
    test using it failed, a full-page screenshot is saved at ``failure_png`` and
    ``on_failure(page)`` runs (e.g. to print the server's log); the context is always closed."""
    from tests.support.dashboard_server import full_page_screenshot

    failed_before = request.session.testsfailed  # pytest counts a failed call before teardown
    context = chromium.new_context(viewport=VIEWPORT)
    context.set_default_timeout(CHANGE_TIMEOUT_S * 1000)
    page = context.new_page()
    try:
        yield page
    finally:
        if request.session.testsfailed > failed_before:
            with contextlib.suppress(Exception):
                full_page_screenshot(page, failure_png)
            if on_failure is not None:
                on_failure(page)
        context.close()


def fail_on_app_error(page) -> None:
    """Stop waiting at once when the app shows a Python exception."""
    errors = page.locator('[data-testid="stException"]')
    if errors.count():
        raise AssertionError(f"the dashboard shows an exception:\n{errors.first.inner_text()}")


def poll(page, read, done, timeout_s: float, what: str):
    """``read(page)`` until ``done(value)``, at most ``timeout_s``; the last value goes into the
    error. Waits with ``page.wait_for_timeout`` so Playwright keeps taking in browser events."""
    deadline = time.monotonic() + timeout_s
    value = None
    while True:
        fail_on_app_error(page)
        value = read(page)
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; last seen: {value!r}")
        page.wait_for_timeout(POLL_MS)


# -- reading the dashboard's pages -------------------------------------------------------------

READ_CARDS = """cards => cards.map(card => [
    card.querySelector('[data-testid="stMetricLabel"]')?.innerText.trim(),
    card.querySelector('[data-testid="stMetricValue"]')?.innerText.trim()])"""

READ_TABLE = """grid => ({
    headers: [...grid.querySelectorAll('thead th')].map(th => th.innerText.trim()),
    rows: [...grid.querySelectorAll('tbody tr')].map(tr =>
        [...tr.querySelectorAll('td')].map(td => td.innerText.trim()))})"""


def read_cards(page) -> dict[str, str]:
    """The Overview's KPI cards, label -> value, as printed."""
    pairs = page.locator('[data-testid="stMain"] [data-testid="stMetric"]').evaluate_all(READ_CARDS)
    return {label: value for label, value in pairs if label}


def wait_for_cards(page, expected: dict[str, str], timeout_s: float = CHANGE_TIMEOUT_S) -> dict[str, str]:
    """The cards once they show ``expected`` (a rerun replaces them in place)."""
    def shows_expected(cards):
        return all(cards.get(label) == value for label, value in expected.items())
    return poll(page, read_cards, shows_expected, timeout_s, f"cards {expected}")


def read_first_table(page) -> list[dict[str, str]]:
    """The first data table of the page as rows of header -> cell text (from the grid's
    accessible DOM, which mirrors the canvas; only rendered rows, fine for a few)."""
    grid = page.locator('[data-testid="stMain"] [data-testid="stDataFrame"]').first
    if not grid.count():
        return []
    table = grid.evaluate(READ_TABLE)
    return [dict(zip(table["headers"], cells)) for cells in table["rows"] if cells]


def sidebar_multiselect(page, label: str):
    """The sidebar's multiselect labelled ``label``."""
    return (page.locator('[data-testid="stSidebar"] [data-testid="stMultiSelect"]')
            .filter(has=page.get_by_text(label, exact=True)))


def open_options(page, box, tries: int = 6, wait_ms: int = 2500):
    """Open the option list of the multiselect ``box`` and return its options (a locator).

    Clicks again when the list does not show: a click that lands while the page is still
    finishing its run (elements still arriving below the box) focuses the box but its list
    may not open. CI saw exactly that once in a few hundred runs (the box focused, no list)."""
    options = page.get_by_role("option")
    for attempt in range(tries):
        box.locator("input").click()
        try:
            options.first.wait_for(timeout=wait_ms)
            return options
        except Exception:  # playwright's TimeoutError: close, let the run finish, click again
            page.keyboard.press("Escape")
            page.wait_for_timeout(250 * (attempt + 1))
    options.first.wait_for(timeout=wait_ms)  # raises with Playwright's own message
    return options


def query(page) -> dict[str, list[str]]:
    """The page URL's query parameters (the app writes its filters there)."""
    return parse_qs(urlsplit(page.url).query)
