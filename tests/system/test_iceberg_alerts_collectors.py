"""Alerts with two real collectors (gunicorn master, workers, maintenance and the alerts
process each, own data directories) on the Iceberg store (``weed mini`` on loopback, pyiceberg's
SQL catalog): receipts posted to one collector make the delivery-rate alert fire once at a JSON
webhook, though both collectors' alerts processes evaluate every second; wrong-secret requests
to the other make its own refused-requests alert fire once, named by its collector id; both
collectors' ``/metrics`` show the shared state.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
import requests

from dlrlens.store import layout
from tests.support.alert_streams import hook_rules
from tests.support.receipts import receipt
from tests.support.seaweed import object_store
from tests.support.servers import start_collector, wait_until
from tests.support.sinks import WebhookSink

pytestmark = pytest.mark.slow
SECRET = "s3cret-for-alerts"


def test_two_collectors_on_the_iceberg_store_notify_once(tmp_path):
    with object_store(tmp_path / "s3") as store, WebhookSink() as sink:
        rules = tmp_path / "alerts.toml"
        rules.write_text(hook_rules(sink.url()))
        env = dict(store.catalog_env("lake", tmp_path / "catalog.db"), DLRLENS_STORE="iceberg:lake",
                   DLRLENS_ALERTS_FILE=str(rules), DLRLENS_ALERTS_SECONDS="1", DLRLENS_TOKEN=SECRET)
        collectors = [start_collector(tmp_path / name, flush_seconds=0.3, env=env) for name in ("a", "b")]
        try:
            first, second = collectors
            now = datetime.now(timezone.utc)
            batch = [receipt(f"m{i}", *(("DELIVERED", 1) if i % 2 else ("UNDELIVERABLE", 3)),
                             created=(now - timedelta(seconds=60 - i)).isoformat()) for i in range(40)]
            answer = requests.post(f"{first.url}/dlr?token={SECRET}&campaign=black-friday", json=batch, timeout=10)
            assert answer.status_code == 200, answer.text
            for _ in range(3):  # refused by the second collector only
                assert requests.post(f"{second.url}/dlr?token=old", json=batch[:1], timeout=10).status_code == 401
            second_id = (tmp_path / "b" / layout.COLLECTOR_ID).read_text().strip()
            expected = {"[FIRING] drop: black-friday", f"[FIRING] refused: {second_id}/unauthorized"}
            wait_until(lambda: {d["title"] for d in sink.received} >= expected, 90, interval=0.2,
                       what="both notifications")
            time.sleep(5)  # about ten more rounds of each collector: nothing sent again
            assert sorted(d["title"] for d in sink.received) == sorted(expected)
            for collector in collectors:  # each working copy holds the shared state
                text = requests.get(f"{collector.url}/metrics", timeout=10).text
                assert 'dlrlens_alerts_firing{rule="drop"} 1' in text and \
                    'dlrlens_alerts_firing{rule="refused"} 1' in text, text
            logs = first.log() + second.log()
            assert "event=alerts_failed" not in logs
        finally:
            for collector in collectors:
                collector.stop()
