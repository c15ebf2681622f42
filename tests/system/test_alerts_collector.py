"""Alerts in a real collector (gunicorn master + workers + maintenance + the alerts process):
receipts posted over HTTP make a delivery-rate alert fire once at a JSON webhook on loopback,
wrong-secret requests (a rotation gone wrong) make the refused-requests alert fire, and
``/metrics`` exports ``dlrlens_alerts_firing``."""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import requests

from tests.support.alert_streams import hook_rules
from tests.support.receipts import receipt
from tests.support.servers import start_collector, wait_until
from tests.support.sinks import WebhookSink

SECRET = "s3cret-for-alerts"


def alerts_pid(data, missing_ok: bool = False) -> int | None:
    """The pid of the alerts process evaluating ``data`` (found by its command line)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            words = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"dlrlens.alerts.engine" in words and str(data).encode() in words:
            return int(entry.name)
    if missing_ok:
        return None
    raise AssertionError(f"no alerts process for {data}")


def test_the_collector_evaluates_alerts_and_notifies(tmp_path):
    data = tmp_path / "data"
    with WebhookSink() as sink:
        rules = tmp_path / "alerts.toml"
        rules.write_text(hook_rules(sink.url()))
        collector = start_collector(data, env={"DLRLENS_ALERTS_FILE": str(rules), "DLRLENS_ALERTS_SECONDS": "1",
                                               "DLRLENS_TOKEN": SECRET, "DLRLENS_DASHBOARD_URL": "http://dash.test"})
        try:
            now = datetime.now(timezone.utc)
            batch = []
            for i in range(40):
                created = (now - timedelta(seconds=60 - i)).isoformat()
                status, code = ("DELIVERED", 1) if i % 2 else ("UNDELIVERABLE", 3)
                batch.append(receipt(f"m{i}", status, code, created=created))
            answer = requests.post(f"{collector.url}/dlr?token={SECRET}&campaign=black-friday", json=batch, timeout=10)
            assert answer.status_code == 200, answer.text
            for _ in range(3):  # a rotated secret: Mobivate still sends the old one
                assert requests.post(f"{collector.url}/dlr?token=old", json=batch[:1], timeout=10).status_code == 401
            wait_until(lambda: {d["title"] for d in sink.received} >= {"[FIRING] drop: black-friday",
                                                                     "[FIRING] refused: unauthorized"},
                       60, interval=0.2, what="both notifications")
            firing = next(d for d in sink.received if d["title"] == "[FIRING] drop: black-friday")
            assert "delivery rate 50.0%" in firing["message"]
            assert "http://dash.test/campaigns?range=24h&campaign=black-friday" in firing["message"]

            def firing_metric() -> str | None:
                text = requests.get(f"{collector.url}/metrics", timeout=10).text
                return text if 'dlrlens_alerts_firing{rule="drop"} 1' in text else None
            metrics = wait_until(firing_metric, 20, interval=0.2, what="dlrlens_alerts_firing")
            assert 'dlrlens_alerts_firing{rule="refused"} 1' in metrics
            # Several more evaluations: no second notification while it stays firing.
            count = len(sink.received)
            time.sleep(3)
            assert len(sink.received) == count == 2
            # SIGKILL the alerts process: the master starts a new one, which repeats nothing
            # and loses nothing (the alerts are still firing).
            first = alerts_pid(data)
            os.kill(first, signal.SIGKILL)
            second = wait_until(lambda: (pid := alerts_pid(data, missing_ok=True)) not in (None, first) and pid, 30,
                                interval=0.2, what="a new alerts process")
            assert second != first
            time.sleep(4)  # a few evaluations of the new process
            assert len(sink.received) == 2
            assert 'dlrlens_alerts_firing{rule="drop"} 1' in requests.get(f"{collector.url}/metrics", timeout=10).text
        finally:
            collector.stop()
