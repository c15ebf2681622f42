"""The real collector (gunicorn, loopback port) over real HTTP, read back from Parquet with DuckDB."""

from __future__ import annotations

import base64
import json
import re
from datetime import datetime, timezone

import pytest
import requests

from tests.support.receipts import (MOBIVATE, RECEIPT_JSON, metric, receipt, rows_of, stored_rows, wait_rows,
                                    wait_stored)
from tests.support.servers import running_collector, wait_until

# ``collector`` (tests/conftest.py): one real collector, two workers, shared by this module's tests.


def test_json_receipt_is_stored_field_by_field(collector):
    body = {
        "deliveryMessageId": "json-1", "batchId": "batch-9", "clientReference": "ref-7",
        "created": "2026-11-20T10:11:12.345+0000", "status": "delivered", "statusCode": "1", "parts": 2,
        "hlr": {"mcc": "234", "mnc": "10"}, "newField": "kept",
    }
    answer = requests.post(collector.dlr + "?campaign=black-friday&team=retail", json=body, timeout=10)
    assert answer.status_code == 200
    assert answer.json() == {"status": "stored", "stored": 1}
    [row] = rows_of(collector.data_dir, "json-1", 1)
    assert row["batch_id"] == "batch-9"
    assert row["client_reference"] == "ref-7"
    assert row["created"] == datetime(2026, 11, 20, 10, 11, 12, 345000, tzinfo=timezone.utc)
    assert row["status"] == "DELIVERED" and row["status_code"] == 1 and row["category"] == "delivered"
    assert row["parts"] == 2 and row["part"] is None
    assert json.loads(row["hlr"]) == {"mcc": "234", "mnc": "10"}
    assert json.loads(row["extra"]) == {"newField": "kept"}
    assert row["campaign"] == "black-friday"
    assert json.loads(row["labels"]) == {"campaign": "black-friday", "team": "retail"}
    assert row["source_format"] == "json"
    assert abs((datetime.now(timezone.utc) - row["received_at"]).total_seconds()) < 120
    assert len(row["receipt_id"]) == 32
    partition = list(collector.data_dir.glob("receipts/date=2026-11-20/*.parquet"))
    assert partition, "receipt is filed under the UTC date of created"


@pytest.mark.parametrize("path, content_type, body", [
    ("/dlr?campaign=black-friday&team=retail&campaign=ignored", "application/json",
     '{"deliveryMessageId": "%s", "created": "2026-11-20T10:11:12.345+0000", "status": "delivered", '
     '"statusCode": "1", "parts": 2, "hlr": {"mcc": "234"}, "newField": "kept", "clientReference": " ref "}'),
    ("/dlr?campaign=xml%%20form", "application/xml",
     '<deliveryreceipt><deliveryMessageId>%s</deliveryMessageId><status>UNDELIVERABLE</status>'
     '<statusCode>5</statusCode><created>2026-11-20 10:11:12</created></deliveryreceipt>'),
])
def test_a_clean_post_is_stored_alike_with_a_length_and_chunked(collector, path, content_type, body):
    """A clean post with a Content-Length and the same post sent chunked (read as werkzeug reads
    a body, collector.app.read_body): same answer, same stored row."""
    prefix = f"alike-{content_type.split('/')[1]}-"
    answers = []
    for how in ("length", "chunked"):
        data = (body % (prefix + how)).encode()
        sent = data if how == "length" else iter([data[:10], data[10:]])  # a generator: chunked
        answers.append(requests.post(collector.url + path, data=sent, headers={"Content-Type": content_type},
                                     timeout=10))
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].content == answers[1].content == b'{"status":"stored","stored":1}\n'
    assert answers[0].headers["Content-Type"] == answers[1].headers["Content-Type"] == "application/json"
    rows = {row["delivery_message_id"]: row for row in rows_of(collector.data_dir, prefix, 2)}
    fast, viewed = rows[prefix + "length"], rows[prefix + "chunked"]
    different = {"delivery_message_id", "receipt_id", "received_at"}
    assert {k: v for k, v in fast.items() if k not in different} == {k: v for k, v in viewed.items() if k not in different}


def test_documented_examples_and_xml_forms(collector):
    form = (MOBIVATE / "receipt-form.txt").read_bytes().strip()
    answer = requests.post(collector.dlr + "?campaign=xml-form", data=form,
                           headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=10)
    assert answer.status_code == 200, answer.text
    raw_xml = (b"<deliveryreceipt><created>2026-11-21T08:00:00Z</created><deliveryMessageId>raw-xml-1"
               b"</deliveryMessageId><clientReference>c1</clientReference><status>EXPIRED</status>"
               b"<statusCode>3</statusCode><part>1</part><parts>1</parts></deliveryreceipt>")
    answer = requests.post(collector.dlr, data=raw_xml, headers={"Content-Type": "application/xml"}, timeout=10)
    assert answer.status_code == 200, answer.text
    answer = requests.post(collector.dlr, data=RECEIPT_JSON, headers={"Content-Type": "application/json"}, timeout=10)
    assert answer.status_code == 200, answer.text
    wait_rows(collector.data_dir, lambda rows: {"raw-xml-1", "5C1E07A2F4B3460D9E2B7A81C0D4F3E9",
                                                "7d0b9c3e-2a51-4f8e-b6d4-91e0c5a7f213"}
              <= {r["delivery_message_id"] for r in rows})
    rows = {r["delivery_message_id"]: r for r in stored_rows(collector.data_dir)}
    form_row = rows["7d0b9c3e-2a51-4f8e-b6d4-91e0c5a7f213"]
    assert form_row["status"] == "DELIVERED" and form_row["source_format"] == "xml"
    assert form_row["client_reference"] == "order-88213-reminder"
    assert form_row["created"] == datetime(2026, 11, 18, 9, 41, 7, 250000, tzinfo=timezone.utc)
    assert form_row["campaign"] == "xml-form"
    assert rows["raw-xml-1"]["category"] == "failed" and rows["raw-xml-1"]["part"] == 1
    documented = rows["5C1E07A2F4B3460D9E2B7A81C0D4F3E9"]
    assert documented["status"] == "ACCEPTED" and documented["category"] == "pending"
    assert documented["batch_id"] == "5C1E07110B7E4A2C8D6F0A9B3C2E1D47"
    assert documented["hlr"] is None and documented["client_reference"] is None


def test_unknown_statuses_are_stored_not_rejected(collector):
    for index, (status, code) in enumerate([("FAILED_SOMETHING_NEW", 31), ("Delivered", 99), (None, 77)]):
        doc = receipt(f"unknown-{index}", status=status, code=code)
        assert requests.post(collector.dlr, json=doc, timeout=10).status_code == 200
    rows = {r["delivery_message_id"]: r for r in rows_of(collector.data_dir, "unknown-", 3)}
    assert (rows["unknown-0"]["status"], rows["unknown-0"]["category"]) == ("FAILED_SOMETHING_NEW", "unknown")
    assert (rows["unknown-1"]["status"], rows["unknown-1"]["category"]) == ("DELIVERED", "delivered")
    assert (rows["unknown-2"]["status"], rows["unknown-2"]["category"]) == ("CODE_77", "unknown")


BAD_INPUTS = [
    ("invalid_json", 400, b'{"deliveryMessageId": ', "application/json"),
    ("invalid_xml", 400, b"<deliveryreceipt><created>", "application/xml"),
    ("not_a_receipt", 400, b"[1, 2, 3]", "application/json"),
    ("not_a_receipt", 400, b"<order><id>1</id></order>", "text/xml"),
    ("missing_message_id", 400, json.dumps({"created": "2026-11-20T10:00:00Z", "status": "DELIVERED"}).encode(),
     "application/json"),
    ("bad_created", 400, json.dumps(receipt("x", created="yesterday")).encode(), "application/json"),
    ("unsupported_media_type", 415, b"a,b,c", "text/csv"),
    ("forbidden_xml", 400, b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'
                           b"<deliveryreceipt><status>&b;</status></deliveryreceipt>", "application/xml"),
]


@pytest.mark.parametrize("reason,status,body,content_type", BAD_INPUTS, ids=[b[0] + str(i) for i, b in enumerate(BAD_INPUTS)])
def test_each_bad_input_is_refused_counted_and_kept(collector, reason, status, body, content_type):
    before = metric(collector.url, f'dlrlens_rejected_total{{reason="{reason}"}}')
    answer = requests.post(collector.dlr, data=body, headers={"Content-Type": content_type}, timeout=10)
    assert answer.status_code == status
    assert answer.json()["error"] == reason and answer.json()["message"]
    kept = list((collector.data_dir / "rejected" / reason).glob("*.body"))
    assert any(path.read_bytes() == body for path in kept)
    # Counters of other workers reach /metrics at their next flush tick.
    wait_until(lambda: metric(collector.url, f'dlrlens_rejected_total{{reason="{reason}"}}') >= before + 1, 10)


def test_body_too_large_wrong_method_and_unknown_path(collector):
    answer = requests.post(collector.dlr, data=b"[" + b" " * (2 * 1024 * 1024) + b"]",
                           headers={"Content-Type": "application/json"}, timeout=30)
    assert answer.status_code == 413 and answer.json()["error"] == "body_too_large"
    answer = requests.get(collector.dlr, timeout=10)
    assert answer.status_code == 405 and answer.json()["error"] == "method_not_allowed"
    assert "POST" in answer.headers["Allow"]
    answer = requests.post(collector.url + "/elsewhere", json={}, timeout=10)
    assert answer.status_code == 404 and answer.json()["error"] == "not_found"


def test_array_keeps_good_elements_and_names_bad_ones(collector):
    body = [receipt("array-1"), {"status": "DELIVERED"}, receipt("array-2", created="not a time"), receipt("array-3")]
    answer = requests.post(collector.dlr, json=body, timeout=10)
    assert answer.status_code == 207
    doc = answer.json()
    assert doc["stored"] == 2
    assert [(e["index"], e["reason"]) for e in doc["rejected"]] == [(1, "missing_message_id"), (2, "bad_created")]
    stored = rows_of(collector.data_dir, "array-", 2)
    assert sorted(r["delivery_message_id"] for r in stored) == ["array-1", "array-3"]


def test_duplicates_are_stored_and_counted(collector):
    doc = receipt("dup-1", created="2026-11-22T00:00:00Z")
    with requests.Session() as session:  # keep-alive: the same worker sees both copies
        for _ in range(3):
            assert session.post(collector.dlr, json=doc, timeout=10).status_code == 200
    rows = rows_of(collector.data_dir, "dup-1", 3)
    assert len(rows) == 3
    assert len({r["receipt_id"] for r in rows}) == 1
    wait_until(lambda: metric(collector.url, "dlrlens_duplicates_seen_total") >= 2, 10)


def test_healthz_and_metrics(collector):
    health = requests.get(collector.url + "/healthz", timeout=10)
    assert health.status_code == 200
    assert health.json()["storage_writable"] is True and "backlog" in health.json()
    text = requests.get(collector.url + "/metrics", timeout=10).text
    for name in ("dlrlens_requests_total", "dlrlens_receipts_stored_total", "dlrlens_rejected_total",
                 "dlrlens_duplicates_seen_total", "dlrlens_flush_seconds_count", "dlrlens_log_backlog_bytes"):
        assert name in text


def test_secret_is_required_and_never_stored_or_logged(tmp_path):
    secret = "s3cr3t-Token-42"
    with running_collector(tmp_path / "data", workers=1, flush_seconds=0.2,
                           env={"DLRLENS_TOKEN": f"old-secret,{secret}", "DLRLENS_LOG_LEVEL": "debug"}) as running:
        doc = receipt("auth-1")
        assert requests.post(running.dlr, json=doc, timeout=10).status_code == 401
        assert requests.post(running.dlr + "?token=wrong", json=doc, timeout=10).status_code == 401
        assert requests.post(running.dlr + f"?token={secret}&campaign=c1", json=doc, timeout=10).status_code == 200
        basic = base64.b64encode(f"dlr:{secret}".encode()).decode()
        assert requests.post(running.dlr + "?campaign=c2", json=receipt("auth-2"),
                             headers={"Authorization": f"Basic {basic}"}, timeout=10).status_code == 200
        assert requests.post(running.dlr + f"/{secret}?campaign=c3", json=receipt("auth-3"), timeout=10).status_code == 200
        assert requests.post(running.dlr + "/old-secret", json=receipt("auth-4"), timeout=10).status_code == 200
        rows = wait_stored(running.data_dir, 4)
        assert {r["campaign"] for r in rows} == {"c1", "c2", "c3", None}
        assert all(secret not in (r["labels"] or "") for r in rows)
        running.stop()
        everything = running.log() + "".join(
            p.read_text(errors="replace") for p in running.data_dir.rglob("*") if p.is_file() and p.suffix != ".parquet")
        assert secret not in everything
        log = running.log()
        assert "outcome=unauthorized" in log and "outcome=stored" in log, "debug logs every request"


def test_stored_requests_are_summarised_not_logged_one_by_one_by_default(tmp_path):
    with running_collector(tmp_path / "data", workers=1, flush_seconds=0.2) as running:
        for index in range(5):
            assert requests.post(running.dlr, json=receipt(f"quiet-{index}"), timeout=10).status_code == 200
        assert requests.post(running.dlr, data=b"{", headers={"Content-Type": "application/json"},
                             timeout=10).status_code == 400
        wait_stored(running.data_dir, 5)
        running.stop()
        log = running.log()
        assert "outcome=stored" not in log
        assert "outcome=invalid_json" in log, "refusals keep their line"
        # One summary line per flush: usually one for all 5, two when the posts straddle a flush
        # (a busy machine).
        assert sum(int(n) for n in re.findall(r"event=flushed receipts=(\d+)", log)) == 5, log


def test_a_graceful_stop_flushes_what_the_workers_hold(tmp_path):
    """SIGTERM: each worker flushes its log to Parquet before it exits (gunicorn's worker_exit
    finds the app's storage), so nothing waits in the log for the next start."""
    with running_collector(tmp_path / "data", workers=2, flush_seconds=3600) as running:
        with requests.Session() as session:
            for index in range(20):
                assert session.post(running.dlr, json=receipt(f"held-{index}"), timeout=10).status_code == 200
        running.stop()
        assert running.process.returncode == 0
    assert not list((tmp_path / "data" / "wal").glob("*/*.wal")), "log segments left unflushed"
    assert {row["delivery_message_id"] for row in stored_rows(tmp_path / "data")} == {f"held-{i}" for i in range(20)}


def test_allow_list_refuses_other_sources(tmp_path):
    with running_collector(tmp_path / "data", workers=1, env={"DLRLENS_ALLOW_NETWORKS": "10.0.0.0/8"}) as running:
        answer = requests.post(running.dlr, json=receipt("net-1"), timeout=10)
        assert answer.status_code == 403 and answer.json()["error"] == "forbidden_source"
    with running_collector(tmp_path / "data2", workers=1, env={"DLRLENS_ALLOW_NETWORKS": "127.0.0.0/8"}) as running:
        assert requests.post(running.dlr, json=receipt("net-2"), timeout=10).status_code == 200
