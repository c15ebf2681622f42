"""Clicks (``POST /click``) and replies (``POST /incoming``) through the real collector
(gunicorn, loopback, real HTTP), read back from Parquet: documented bodies, unknown fields,
privacy, duplicates, every refusal on each endpoint, the secret, counters and archive, and a
SIGKILL during a mixed stream of receipts, clicks and replies with nothing acknowledged lost."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.support.events import click, reply, stored_events, wait_events
from tests.support.receipts import MOBIVATE, metric, receipt, stored_rows
from tests.support.servers import running_collector, wait_until

ENDPOINTS = ("/click", "/incoming")


@pytest.fixture(scope="module")
def collector(collectors):
    return collectors("events", workers=2, flush_seconds=0.3)


def test_documented_bodies_are_stored_privately(collector):
    answer = requests.post(collector.url + "/click?campaign=spring", data=(MOBIVATE / "click.json").read_bytes(),
                           headers={"Content-Type": "application/json"}, timeout=10)
    assert answer.status_code == 200 and answer.json() == {"status": "stored", "stored": 1}
    answer = requests.post(collector.url + "/incoming", data=(MOBIVATE / "incoming.json").read_bytes(),
                           headers={"Content-Type": "application/json"}, timeout=10)
    assert answer.status_code == 200, answer.text
    [row] = [r for r in wait_events(collector.data_dir, "clicks", 1) if r["client_ref"] == "spring-offer-0001"]
    assert row["campaign"] == "spring" and json.loads(row["labels"]) == {"campaign": "spring"}
    assert row["iso2l"] == "UK" and row["mobile_masked"] == "44770****123" and len(row["mobile_hash"]) == 64
    assert row["mobile"] is None and row["ip_address"] is None
    [reply_row] = [r for r in wait_events(collector.data_dir, "replies", 1)
                   if r["reply_id"] == "A7D3E9F10B2C4D5E8F6A1B3C5D7E9F02"]
    assert reply_row["body"] == "Stop" and reply_row["originator"] is None
    assert reply_row["originator_hash"] == row["mobile_hash"], "one number, one hash, across tables"
    assert list(collector.data_dir.glob("clicks/date=*/w*-*.parquet"))
    assert list(collector.data_dir.glob("replies/date=2026-11-20/w*-*.parquet")), "replies by UTC day of created"
    # Personal data never reaches the log, at any level.
    log = collector.log()
    assert "447700900123" not in log and "198.51.100.23" not in log and "Stop" not in log


def test_unknown_fields_arrays_and_duplicates(collector):
    body = [click("dup-1", foo={"bar": 1}), click("dup-1", foo={"bar": 1}), {"os": "only"}]
    answer = requests.post(collector.url + "/click", json=body, timeout=10)
    assert answer.status_code == 207, answer.text
    assert answer.json()["rejected"] == [{"index": 2, "reason": "not_a_click",
                                          "message": "click has none of messageId, batchId, clientRef, url"}]
    rows = [r for r in wait_events(collector.data_dir, "clicks", 3) if r["message_id"] == "dup-1"]
    assert len(rows) == 2 and rows[0]["click_id"] == rows[1]["click_id"], "the same click twice: one id"
    assert json.loads(rows[0]["extra"]) == {"foo": {"bar": 1}}
    answer = requests.post(collector.url + "/incoming", json=[reply("r-unknown", "no-such-message", "hi",
                                                                    batch_id="no-such-batch", newField=1)] * 2,
                           timeout=10)
    assert answer.status_code == 200 and answer.json()["stored"] == 2
    rows = [r for r in wait_events(collector.data_dir, "replies", 3) if r["reply_id"] == "r-unknown"]
    assert len(rows) == 2 and json.loads(rows[0]["extra"]) == {"newField": 1}, "a reply to no known message is kept"


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("body, content_type, status, reason", [
    (b"", "application/json", 400, "empty_body"),
    (b"{nope", "application/json", 400, "invalid_json"),
    (b"[1, 2]", "application/json", 400, None),  # not_a_click / not_a_reply
    (b"<x/>", "application/xml", 415, "unsupported_media_type"),
    (b'{"url": "x", "campaign": "y"}', "application/json", 400, "bad_label"),
])
def test_bad_bodies_are_refused_counted_and_kept(collector, path, body, content_type, status, reason):
    reason = reason or ("not_a_click" if path == "/click" else "not_a_reply")
    query = "?utm=1" if reason == "bad_label" else ""
    before = metric(collector.url, f'dlrlens_rejected_total{{reason="{reason}"}}')
    answer = requests.post(collector.url + path + query, data=body, headers={"Content-Type": content_type},
                           timeout=10)
    assert answer.status_code == status and answer.json()["error"] == reason and answer.json()["message"]
    # The other worker's counters reach /metrics with its next flush (0.3 s).
    wait_until(lambda: metric(collector.url, f'dlrlens_rejected_total{{reason="{reason}"}}') >= before + 1, 10,
               what=f"{reason} counted")
    kept = [json.loads(p.read_text()) for p in (collector.data_dir / "rejected" / reason).glob("*.json")]
    assert any(k.get("endpoint") == path for k in kept)


def test_counters_per_endpoint_and_path_secret(collectors):
    secured = collectors("events-secret", workers=1, flush_seconds=0.3, env={"DLRLENS_TOKEN": "s3cret"})
    for path in ENDPOINTS:
        assert requests.post(secured.url + path, json=click("x"), timeout=10).status_code == 401
    assert requests.post(secured.url + "/click/s3cret", json=click("c-secret"), timeout=10).status_code == 200
    answer = requests.post(secured.url + "/incoming?token=s3cret", json=reply("r-secret", "m"), timeout=10)
    assert answer.status_code == 200
    assert metric(secured.url, "dlrlens_click_requests_total") == 2
    assert metric(secured.url, "dlrlens_clicks_stored_total") == 1
    assert metric(secured.url, "dlrlens_replies_stored_total") == 1
    assert metric(secured.url, "dlrlens_receipts_stored_total") == 0
    assert "s3cret" not in secured.log()


def test_sigkill_during_a_mixed_stream_loses_nothing_acknowledged(tmp_path):
    data = tmp_path / "data"
    acked = {"receipts": set(), "clicks": set(), "replies": set()}
    lock = threading.Lock()
    with running_collector(data, workers=2, flush_seconds=0.2) as collector:
        stop = threading.Event()

        def post(worker: int) -> None:
            session = requests.Session()
            n = 0
            while not stop.is_set():
                n += 1
                key = f"k{worker}-{n}"
                table, path, body = [("receipts", "/dlr", receipt(key)), ("clicks", "/click", click(key)),
                                     ("replies", "/incoming", reply(key, key))][n % 3]
                try:
                    answer = session.post(collector.url + path, json=body, timeout=5)
                except requests.RequestException:
                    return  # killed: this one was never acknowledged
                if answer.status_code == 200:
                    with lock:
                        acked[table].add(key)

        with ThreadPoolExecutor(4) as pool:
            for worker in range(4):
                pool.submit(post, worker)
            wait_until(lambda: sum(map(len, acked.values())) >= 150, 60, what="acknowledged events")
            collector.kill()
            stop.set()
    with running_collector(data, workers=2, flush_seconds=0.2):
        pass  # the restart replays every log; a clean stop flushes the rest
    stored = {"receipts": {r["delivery_message_id"] for r in stored_rows(data)},
              "clicks": {r["message_id"] for r in stored_events(data, "clicks")},
              "replies": {r["reply_id"] for r in stored_events(data, "replies")}}
    for table in acked:
        assert acked[table], table
        assert acked[table] <= stored[table], f"{table} lost: {sorted(acked[table] - stored[table])[:5]}"
    assert not list(data.glob("wal/*/*.wal")), "recovered log segments are removed"
