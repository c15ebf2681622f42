"""The demo ``dlrlens up`` posts is realistic about time: receipts reach the webhook when they
are due (webhook lag well under a second, not the hours back-dated traffic showed), and
``data/demo.json`` tells the dashboard whether the demo is still posting."""

from __future__ import annotations

import statistics
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from streamlit.testing.v1 import AppTest

from dlrlens.simulate import generate_traffic, send
from dlrlens.store import demo, layout
from tests.support.factory import message, write_receipts
from tests.support.servers import REPO


@pytest.fixture
def arrivals():
    """A loopback server recording when each post arrived; yields (URL, [arrival times])."""
    seen: list[datetime] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append(datetime.now(timezone.utc))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/dlr", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_realtime_posts_each_receipt_when_it_is_due(arrivals):
    url, seen = arrivals
    start = datetime.now(timezone.utc) + timedelta(seconds=0.5)
    # Ten minutes of sending compressed 300x: two seconds; receipt delays compressed alike.
    posts = generate_traffic(2, 30, 4, start, span=timedelta(minutes=10), time_scale=300, duplicates=0,
                             until=start + timedelta(seconds=3))
    stats = send(posts, url, concurrency=1, realtime=True)
    assert stats.acked == len(posts) > 30
    lags = [(arrived - post.due).total_seconds() for arrived, post in zip(seen, posts)]
    assert min(lags) >= 0, "never before it is due"
    assert statistics.median(lags) < 0.5 and max(lags) < 3, lags


def test_demo_status_says_posting_only_while_fresh(tmp_path):
    started = datetime(2026, 12, 6, 12, tzinfo=timezone.utc)
    assert demo.demo_posting(tmp_path) is None  # no file
    demo.write_demo_status(tmp_path, True, started, now=started + timedelta(seconds=10))
    assert demo.demo_posting(tmp_path, now=started + timedelta(seconds=20)) == started
    assert demo.demo_posting(tmp_path, now=started + timedelta(seconds=10 + demo.STALE_AFTER_SECONDS + 1)) is None
    demo.write_demo_status(tmp_path, False, started, now=started + timedelta(seconds=30))
    assert demo.demo_posting(tmp_path, now=started + timedelta(seconds=31)) is None
    (tmp_path / layout.DEMO_STATUS).write_text("{not json")
    assert demo.demo_posting(tmp_path) is None


def test_the_dashboard_says_the_demo_is_posting_and_refreshes(tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    now = datetime.now(timezone.utc)
    write_receipts(data_dir, message("M1", now - timedelta(minutes=2), [("ACCEPTED", 0), ("DELIVERED", 3)],
                                     campaign="demo"))
    demo.write_demo_status(data_dir, True, now - timedelta(minutes=2))
    monkeypatch.setenv("DLRLENS_DATA", str(data_dir))
    at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=30)
    at.run()
    assert not at.exception
    assert any("still posting its demo traffic" in i.value for i in at.info)
    assert at.session_state["filter_range"] == "24h"  # all data in the last day: hourly buckets
    demo.write_demo_status(data_dir, False, now - timedelta(minutes=2))
    at.run()
    assert not any("still posting" in i.value for i in at.info)
