"""Take the documentation's screenshots: every dashboard page, from realistic data.

    python3 scripts/screenshots.py [--out docs] [--campaigns 8] [--messages 3000] [--seed 7]

Starts the real collector and the real dashboard on a fresh temporary data folder, posts
simulated Mobivate traffic through the collector (``dlrlens.simulate``: the same generator as
``dlrlens simulate``, with a fixed seed so the pictures are reproducible), plus a little noise
for the Data health page (refused requests, a status Mobivate does not document), waits until
every receipt is in Parquet, then opens each page in Debian's headless Chromium at 1440 px and
saves one full-page PNG per page in ``--out``:

    overview.png  campaigns.png (3 campaigns drilled into)  failures.png  latency.png
    lookup.png (a real message id typed in)  health.png

and, on a 390x844 phone (two KPI cards a row, the scope line above the figures):

    phone-overview.png  phone-lookup.png (opened by a link: lookup?id=...)

Pages are opened with ``?range=24h`` (hourly buckets, changes against the day before); the
traffic spans 40 hours so both days hold data. Exit status 0 when every page rendered without
an error; the temporary data folder is always removed and both servers always stopped.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import requests  # noqa: E402

from dlrlens import simulate  # noqa: E402
from tests.support.dashboard_server import full_page_screenshot, running_dashboard, wait_for_parquet  # noqa: E402
from tests.support.browser import open_options  # noqa: E402
from tests.support.servers import running_collector  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage"]
WIDTH, HEIGHT = 1440, 1000
PHONE = dict(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True)
PHONE_MAX_HEIGHT = 2400
MAX_HEIGHT = 3600  # pixels; a page longer than this is cut (keeps the files small)
SPAN = timedelta(hours=40)
RANGE_QUERY = "range=24h"
DRILL_CAMPAIGNS = 3
PAGE_TIMEOUT_S = 90
SETTLED_READS = 4  # identical looks in a row, POLL_MS apart, before a page counts as drawn
POLL_MS = 500
MAX_PNG_BYTES = 400_000


# --------------------------------------------------------------------------- data


def post_traffic(collector_url: str, campaigns: int, messages: int, seed: int) -> tuple[int, int, list]:
    """Post the simulated traffic and the noise; return (rows stored, distinct receipts, the
    posts). A duplicate post (Mobivate's retry) is one more row of the same receipt."""
    now = datetime.now(timezone.utc)
    posts = simulate.generate_traffic(campaigns, messages, seed, now - SPAN - simulate.DEFAULT_TAIL_ROOM,
                                      span=SPAN, until=now)
    print(f"posting {len(posts)} receipts ({campaigns} campaigns, {messages} messages, seed {seed})", flush=True)
    stats = simulate.send(posts, collector_url + "/dlr", rate=0, concurrency=4)
    print(stats.summary(), flush=True)
    if not stats.ok or stats.sent != len(posts):
        raise RuntimeError("the collector did not acknowledge every post")
    noise = post_noise(collector_url, now)
    return stats.acked + noise, sum(not post.duplicate for post in posts) + noise, posts


def post_noise(collector_url: str, now: datetime) -> int:
    """What a real webhook also sees: a receipt with a status Mobivate does not document (stored,
    counted as unknown) and a few requests the collector refuses. Returns receipts stored."""
    url = collector_url + "/dlr"
    created = now - timedelta(hours=5)  # inside the busy hours: one odd message among many
    unknown = {"deliveryMessageId": "9A85B95E0A000A9D2FBD467100000001", "batchId": None,
               "clientReference": None, "created": created.strftime("%Y-%m-%dT%H:%M:%S.000+00:00"),
               "status": "PARTIALLY_DELIVERED", "statusCode": 42, "parts": 2, "hlr": None}
    response = requests.post(url, params={"campaign": "otp-login", "team": "security"}, json=unknown, timeout=30)
    response.raise_for_status()
    refused = [
        (b'{"deliveryMessageId": "9A85B95E0A00", "status": ', "application/json"),  # cut off
        (b'{"batchId": "9A85B9110A000A9D", "status": "DELIVERED", "statusCode": 1}', "application/json"),
        (b"deliveryMessageId,status\n9A85B95E0A00,DELIVERED\n", "text/csv"),
    ]
    for body, content_type in refused:
        answer = requests.post(url, data=body, headers={"Content-Type": content_type}, timeout=30)
        if answer.status_code < 400:
            raise RuntimeError(f"expected a refusal for {body!r}, got {answer.status_code}")
    return 1


def message_to_look_up(posts) -> str:
    """A message with a story: the most receipts (interims, retries), ending DELIVERED."""
    statuses = defaultdict(list)
    for post in posts:
        statuses[post.receipt.delivery_message_id].append(post.receipt.status)
    delivered = [(len(found), len(set(found)), mid) for mid, found in statuses.items() if "DELIVERED" in found]
    return max(delivered)[2]


# --------------------------------------------------------------------------- pages


def settle(page, title: str) -> None:
    """Wait until the page shows ``title``, the app is not running and the page stopped
    changing (charts drawn); raise on a Python exception shown by the app."""
    page.get_by_role("heading", name=title, exact=True).first.wait_for(timeout=PAGE_TIMEOUT_S * 1000)
    deadline = time.monotonic() + PAGE_TIMEOUT_S
    previous, same = None, 0
    while same < SETTLED_READS:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the {title} page kept changing for {PAGE_TIMEOUT_S}s")
        errors = page.locator('[data-testid="stException"]')
        if errors.count():
            raise RuntimeError(f"the {title} page shows an exception:\n{errors.first.inner_text()}")
        look = page.evaluate("""() => [
            document.querySelectorAll('[data-testid="stStatusWidget"], [data-testid="stSkeleton"]').length,
            document.querySelectorAll('.js-plotly-plot .main-svg').length,
            document.querySelector('[data-testid="stMain"]')?.innerText.length]""")
        busy = look[0] > 0
        same = 0 if busy or look != previous else same + 1
        previous = look
        page.wait_for_timeout(POLL_MS)


def pick_first_options(page, label: str, count: int) -> list[str]:
    """Choose the first ``count`` options of the multiselect labelled ``label`` by clicks, as a
    person would (each choice reruns the app); return their names."""
    box = page.locator('[data-testid="stMultiSelect"]').filter(has=page.get_by_text(label, exact=True))
    chosen: list[str] = []
    while len(chosen) < count:
        options = open_options(page, box)
        names = [name for name in options.all_inner_texts() if name not in chosen and name != "Select all"]
        if not names:
            break
        page.get_by_role("option", name=names[0], exact=True).click()
        chosen.append(names[0])
        page.keyboard.press("Escape")
        box.get_by_text(names[0], exact=True).wait_for()  # its tag in the box
    return chosen


def shoot_pages(dashboard_url: str, out: Path, message_id: str) -> list[Path]:
    from playwright.sync_api import sync_playwright

    def drill_in(page):
        # The options come in the table's order, most messages first.
        print("drilling into " + ", ".join(pick_first_options(page, "Drill into campaigns", DRILL_CAMPAIGNS)))
        page.locator('[data-testid="stPlotlyChart"]').first.wait_for(timeout=PAGE_TIMEOUT_S * 1000)

    def look_up(page):
        box = page.locator('[data-testid="stTextInput"] input').first
        box.fill(message_id)
        box.press("Enter")
        page.locator('[data-testid="stMain"] [data-testid="stDataFrame"]').first.wait_for(
            timeout=PAGE_TIMEOUT_S * 1000)

    pages = [  # (file, url path, title, what to do before the shot)
        ("overview.png", "", "Overview", None),
        ("campaigns.png", "campaigns", "Campaigns", drill_in),
        ("failures.png", "failures", "Failures", None),
        ("latency.png", "latency", "Latency", None),
        ("lookup.png", "lookup", "Message lookup", look_up),
        ("health.png", "health", "Data health", None),
    ]
    written = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                             timeout=PAGE_TIMEOUT_S * 1000)
        try:
            context = browser.new_context(viewport={"width": WIDTH, "height": HEIGHT})
            context.set_default_timeout(PAGE_TIMEOUT_S * 1000)
            page = context.new_page()
            for file_name, path, title, action in pages:
                page.goto(f"{dashboard_url}/{path}?{RANGE_QUERY}")
                settle(page, title)
                if action:
                    action(page)
                    settle(page, title)
                page.mouse.move(0, 0)  # no hover tooltip in the picture
                target = full_page_screenshot(page, out / file_name, max_height=MAX_HEIGHT)
                shrink_png(target)
                written.append(target)
                print(f"wrote {target} ({target.stat().st_size // 1024} KB)", flush=True)
            context.close()
            phone = browser.new_context(**PHONE)
            phone.set_default_timeout(PAGE_TIMEOUT_S * 1000)
            page = phone.new_page()
            for file_name, path, title in (("phone-overview.png", f"?{RANGE_QUERY}", "Overview"),
                                           ("phone-lookup.png", f"lookup?{RANGE_QUERY}&id={message_id}",
                                            "Message lookup")):
                page.goto(f"{dashboard_url}/{path}")
                settle(page, title)
                target = full_page_screenshot(page, out / file_name, max_height=PHONE_MAX_HEIGHT)
                shrink_png(target)
                written.append(target)
                print(f"wrote {target} ({target.stat().st_size // 1024} KB)", flush=True)
        finally:
            browser.close()
    return written


def shrink_png(path: Path) -> None:
    """Re-encode as a 256-colour PNG when the file is over :data:`MAX_PNG_BYTES` (flat UI
    colours survive; it only softens anti-aliased edges)."""
    if path.stat().st_size <= MAX_PNG_BYTES:
        return
    from PIL import Image

    with Image.open(path) as image:
        smaller = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    smaller.save(path, optimize=True)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="folder for the PNGs (default docs/)")
    parser.add_argument("--campaigns", type=int, default=8)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} is missing: install Debian's chromium (see scripts/test.sh)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="dlrlens-screenshots-") as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        with running_collector(data_dir, flush_seconds=0.5) as collector, \
                running_dashboard(data_dir) as dashboard:
            try:
                rows, distinct, posts = post_traffic(collector.url, args.campaigns, args.messages, args.seed)
                wait_for_parquet(data_dir, rows, distinct, timeout=120)
                shoot_pages(dashboard.url, args.out, message_to_look_up(posts))
            except BaseException:
                print(f"collector log (tail):\n{collector.log()[-2000:]}\n"
                      f"dashboard log (tail):\n{dashboard.log()[-4000:]}", file=sys.stderr)
                raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
