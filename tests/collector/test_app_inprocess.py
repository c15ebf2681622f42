"""The collector's Flask app (``collector/app.py``) in-process, through ``app.test_client()``:
every branch of ``POST /dlr``, ``GET /healthz`` and ``GET /metrics``, fast.

Each refusal reason is answered with its status and the documented body (the OpenAPI
document's schema for that answer), counted by reason in ``/metrics`` and kept under
``data/rejected/<reason>/``; the webhook secret in each of its three forms, right and wrong;
the allow-list (also behind a trusted proxy); a 207 with its archive; a storage failure (503,
nothing acknowledged); a bug (500, JSON); ``/healthz`` and ``/metrics``; the log line of a
request, which never carries the path as sent.

What only a real server shows (gunicorn workers, fsync across a SIGKILL, slow clients, the
logs of gunicorn itself) stays in the real-server tests (``collector`` fixture,
tests/conftest.py). The fixtures ``make_app``, ``app`` and ``client`` are in tests/conftest.py.
"""

from __future__ import annotations

import base64
import errno
import io
import ipaddress
import json
import logging
import time
import types
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import jsonschema
import pytest
from flask import Flask

import collector.app as app_module
from collector import metrics, openapi
from collector.parsing import MAX_REPORTED_ERRORS, parse_request
from collector.security import AUTH_FAILURE_LIMIT
from dlrlens.store import layout
from dlrlens.store.wal import encode_record
from tests.support.receipts import metric_value, receipt, stored_rows
from tests.support.store_files import hold_replay

UTC = timezone.utc
DOCUMENT = openapi.openapi_document()
SECRET = "in-process-S3cret"
ROTATED = "rotated-0ld"
JSON = "application/json"
XML = "application/xml"
FORM = "application/x-www-form-urlencoded"


def created(**delta) -> str:
    """A ``created`` an hour before now (plus ``delta``): inside the accepted window whenever the suite runs."""
    return (datetime.now(UTC) - timedelta(hours=1) + timedelta(**delta)).isoformat(timespec="milliseconds")


def fresh(message_id: str, **more) -> dict:
    """A Mobivate JSON receipt created an hour ago."""
    return receipt(message_id, created=more.pop("created", None) or created(), **more)


def body_of(doc) -> bytes:
    return json.dumps(doc).encode()


def basic(password: str, user: str = "dlr") -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def assert_documented(answer, path: str = "/dlr", method: str = "post") -> dict:
    """The answer is JSON of the schema (and with the headers) the OpenAPI document gives for
    its status on ``path``; 404 and 405, answered for any path, by their refusal schemas."""
    responses = DOCUMENT["paths"].get(path, {}).get(method, {}).get("responses", {})
    documented = responses.get(str(answer.status_code))
    if documented is None:
        assert answer.status_code in (404, 405), f"{answer.status_code} is not documented for {method} {path}"
        schema = {"$ref": f"#/components/schemas/Refusal{answer.status_code}"}
    else:
        schema = documented["content"]["application/json"]["schema"]
        for header in documented.get("headers", {}):
            assert header in answer.headers, f"{answer.status_code} without its {header} header"
    assert answer.mimetype == "application/json", answer.mimetype
    jsonschema.validate(answer.json, {**schema, "components": DOCUMENT["components"]})
    return answer.json


def metrics_text(client) -> str:
    answer = client.get("/metrics")
    assert answer.status_code == 200 and answer.mimetype == "text/plain"
    return answer.get_data(as_text=True)


def rejected_count(client, reason: str) -> float:
    return metric_value(metrics_text(client), f'dlrlens_rejected_total{{reason="{reason}"}}')


def kept(app, reason: str) -> list[tuple[bytes, dict]]:
    """What ``data/rejected/<reason>/`` holds: (body, its record) pairs, oldest first."""
    folder = app.extensions["dlrlens"]["settings"].data_dir / layout.REJECTED_DIR / reason
    return [(path.read_bytes(), json.loads(path.with_suffix(".json").read_text()))
            for path in sorted(folder.glob("*.body"))]


def counters(app) -> dict:
    return app.extensions["dlrlens"]["storage"].counters.values


class BrokenStream(io.RawIOBase):
    """A request body that fails mid-read (a client gone away, a broken chunked encoding)."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        raise ConnectionResetError("the client went away")


# -- each refusal -------------------------------------------------------------------------------

BILLION_LAUGHS = (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'
                  b"<deliveryreceipt><status>&b;</status></deliveryreceipt>")
TOO_LARGE = b"[" + b" " * 2000 + b"]"  # over the 1000 bytes the cases below allow
LIMITED = {"max_body_bytes": 1000}
WITH_SECRET = {"tokens": (SECRET,)}
ALLOW_10 = {"allow_networks": (ipaddress.ip_network("10.0.0.0/8"),)}


def case(name, status, reason, *, path="/dlr", method="POST", body=b"", content_type=JSON, settings=None,
         keeps_body=True, environ=None, **request):
    """One refused request: ``keeps_body`` when the refusal reads the body (the others keep an
    empty one); ``environ()`` makes WSGI environ entries (a fresh body stream) for each run."""
    return pytest.param(status, reason, path, method, body, content_type, settings or {}, keeps_body, environ,
                        request, id=name)


REFUSALS = [
    case("invalid_json", 400, "invalid_json", body=b'{"deliveryMessageId": '),
    case("invalid_json-utf8", 400, "invalid_json", body=b'{"deliveryMessageId": "\xff"}'),
    case("invalid_xml", 400, "invalid_xml", body=b"<deliveryreceipt><created>", content_type=XML),
    case("forbidden_xml", 400, "forbidden_xml", body=BILLION_LAUGHS, content_type=XML),
    case("invalid_form", 400, "invalid_form", body=b"xml=\xff", content_type=FORM),
    case("not_a_receipt-json", 400, "not_a_receipt", body=b"[1, 2, 3]"),
    case("not_a_receipt-xml", 400, "not_a_receipt", body=b"<order><id>1</id></order>", content_type="text/xml"),
    case("not_a_receipt-form", 400, "not_a_receipt", body=b"campaign=x", content_type=FORM),
    case("empty_body", 400, "empty_body", body=b""),
    case("missing_message_id", 400, "missing_message_id",
         body=body_of({"created": created(), "status": "DELIVERED"})),
    case("missing_status", 400, "missing_status", body=body_of({"deliveryMessageId": "no-status", "created": created()})),
    case("bad_created", 400, "bad_created", body=body_of(fresh("x", created="yesterday"))),
    case("bad_created-far-future", 400, "bad_created", body=body_of(fresh("x", created="9999-12-31T23:59:59Z"))),
    case("bad_field", 400, "bad_field", body=body_of(fresh("long-status", status="S" * 65))),
    case("bad_label", 400, "bad_label", path="/dlr?campaign=c&colour=red", body=body_of(fresh("label"))),
    case("too_many_days", 400, "too_many_days",
         body=body_of([fresh(f"day-{n}", created=created(days=-n)) for n in range(32)])),
    case("unsupported_media_type", 415, "unsupported_media_type", body=b"a,b,c", content_type="text/csv"),
    case("unreadable_body", 400, "unreadable_body", keeps_body=False,
         environ=lambda: {"wsgi.input": BrokenStream(), "CONTENT_LENGTH": "10"}),
    case("body_too_large", 413, "body_too_large", body=TOO_LARGE, settings=LIMITED, keeps_body=False),
    case("body_too_large-chunked", 413, "body_too_large", settings=LIMITED, keeps_body=False,  # no Content-Length
         environ=lambda: {"wsgi.input": io.BytesIO(TOO_LARGE), "wsgi.input_terminated": True}),
    case("method_not_allowed", 405, "method_not_allowed", method="GET", keeps_body=False),
    case("method_not_allowed-healthz", 405, "method_not_allowed", path="/healthz", keeps_body=False),
    case("not_found", 404, "not_found", path="/elsewhere", body=b"{}", keeps_body=False),
    case("not_found-secret-path-without-secret", 404, "not_found", path="/dlr/anything", body=b"{}",
         keeps_body=False),
    case("forbidden_source", 403, "forbidden_source", body=body_of(fresh("net")), settings=ALLOW_10,
         keeps_body=False),
    case("unauthorized-missing", 401, "unauthorized", body=body_of(fresh("a")), settings=WITH_SECRET,
         keeps_body=False),
    case("unauthorized-query", 401, "unauthorized", path="/dlr?token=wrong", body=body_of(fresh("a")),
         settings=WITH_SECRET, keeps_body=False),
    case("unauthorized-basic", 401, "unauthorized", body=body_of(fresh("a")), settings=WITH_SECRET,
         keeps_body=False, headers=basic("wrong")),
    case("unauthorized-path", 401, "unauthorized", path="/dlr/wrong", body=body_of(fresh("a")),
         settings=WITH_SECRET, keeps_body=False),
    case("not_a_click", 400, "not_a_click", path="/click", body=b'{"os": "Android"}'),
    case("not_a_reply", 400, "not_a_reply", path="/incoming", body=b'[{"recipient": "60777"}]'),
    case("unsupported_media_type-click", 415, "unsupported_media_type", path="/click", body=b"<x/>",
         content_type=XML),
    case("unauthorized-incoming", 401, "unauthorized", path="/incoming", body=b'{"id": "r"}', settings=WITH_SECRET,
         keeps_body=False),
]


@pytest.mark.parametrize("status,reason,path,method,body,content_type,settings,keeps_body,environ,request_options",
                         REFUSALS)
def test_each_refusal_is_answered_counted_and_kept(make_app, status, reason, path, method, body, content_type,
                                                   settings, keeps_body, environ, request_options):
    app = make_app(**settings)
    client = app.test_client()
    if environ:  # the body comes from the stream in the environ
        answer = client.open(path, method=method, content_type=content_type, environ_overrides=environ(),
                             **request_options)
    else:
        answer = client.open(path, method=method, data=body, content_type=content_type, **request_options)

    assert answer.status_code == status, answer.json
    doc = assert_documented(answer, "/dlr/{secret}" if path.startswith("/dlr/") else path.split("?")[0],
                            method.lower())
    assert doc["error"] == reason and doc["message"]
    assert SECRET not in answer.get_data(as_text=True)
    if status == 405:
        assert answer.headers["Allow"] and method not in answer.headers["Allow"]

    assert rejected_count(client, reason) == 1
    [(kept_body, record)] = kept(app, reason)
    assert kept_body == (body if keeps_body else b"")
    assert (record["status"], record["message"], record["method"]) == (status, doc["message"], method)
    assert record["remote_addr"] == "127.0.0.1" and record["body_bytes"] == len(kept_body)
    assert counters(app)["stored"] == 0
    app.extensions["dlrlens"]["storage"].flush()
    assert stored_rows(app.extensions["dlrlens"]["settings"].data_dir) == []


def test_every_documented_refusal_reason_is_reached_here():
    """The table above reaches every reason the OpenAPI document lists (429: see below)."""
    reached = {param.values[1] for param in REFUSALS} | {"too_many_auth_failures"}
    documented = {reason for reasons in openapi.REQUEST_REFUSALS.values() for reason in reasons}
    assert reached == documented


def test_the_archive_keeps_a_bounded_body_and_its_request(make_app):
    app = make_app(rejected_max_bytes=10)
    body = b'{"deliveryMessageId": ' + b" " * 100
    answer = app.test_client().post("/dlr?campaign=c1&team=t", data=body, content_type=JSON)
    assert answer.json["error"] == "invalid_json"
    [(kept_body, record)] = kept(app, "invalid_json")
    assert kept_body == body[:10]
    assert record["truncated"] is True and record["body_bytes"] == len(body)
    assert record["content_type"] == JSON and record["labels"] == {"campaign": "c1", "team": "t"}
    assert datetime.fromisoformat(record["received_at"]) > datetime.now(UTC) - timedelta(minutes=1)


# -- stored answers -----------------------------------------------------------------------------


def test_receipts_in_each_format_are_stored_and_answered_200(app, client):
    xml = (f"<deliveryreceipt><created>{created()}</created><deliveryMessageId>xml-1</deliveryMessageId>"
           "<status>EXPIRED</status><statusCode>3</statusCode></deliveryreceipt>")
    posts = [
        client.post("/dlr?campaign=c1&team=retail", json=fresh("json-1")),
        client.post("/dlr", json=[fresh("array-1"), fresh("array-2", status="UNDELIVERABLE", code=5)]),
        client.post("/dlr", data=xml, content_type=XML),
        client.post("/dlr", data={"xml": xml.replace("xml-1", "form-1")}, content_type=FORM),
        client.post("/dlr/", json=fresh("slash-1")),  # a stray slash: the same endpoint
    ]
    assert [assert_documented(answer) for answer in posts] == [
        {"status": "stored", "stored": n} for n in (1, 2, 1, 1, 1)]
    assert counters(app)["stored"] == counters(app)["received"] == 6 and counters(app)["requests"] == 5

    app.extensions["dlrlens"]["storage"].flush()
    rows = {row["delivery_message_id"]: row for row in stored_rows(app.extensions["dlrlens"]["settings"].data_dir)}
    assert set(rows) == {"json-1", "array-1", "array-2", "xml-1", "form-1", "slash-1"}
    assert rows["json-1"]["campaign"] == "c1" and json.loads(rows["json-1"]["labels"]) == {"campaign": "c1",
                                                                                           "team": "retail"}
    assert (rows["array-2"]["category"], rows["xml-1"]["category"]) == ("failed", "failed")
    assert rows["xml-1"]["source_format"] == "xml" and rows["form-1"]["source_format"] == "xml"


def test_partial_answer_stores_the_good_receipts_counts_and_keeps_the_body(app, client):
    body = body_of([fresh("partial-1"), {"status": "DELIVERED", "created": created()},
                    fresh("partial-2", created="not a time"), fresh("partial-3"), "not an object"])
    answer = client.post("/dlr?campaign=p", data=body, content_type=JSON)
    assert answer.status_code == 207
    doc = assert_documented(answer)
    assert (doc["status"], doc["stored"], doc["rejected_count"], doc["rejected_truncated"]) == ("partial", 2, 3, False)
    assert [(e["index"], e["reason"]) for e in doc["rejected"]] == [
        (1, "missing_message_id"), (2, "bad_created"), (4, "not_a_receipt")]
    assert len(doc["rejected"]) <= MAX_REPORTED_ERRORS

    text = metrics_text(client)
    for reason in ("missing_message_id", "bad_created", "not_a_receipt"):
        assert metric_value(text, f'dlrlens_rejected_total{{reason="{reason}"}}') == 1
    assert metric_value(text, "dlrlens_receipts_stored_total") == 2
    assert metric_value(text, "dlrlens_receipts_received_total") == 5
    [(kept_body, record)] = kept(app, "partial")
    assert kept_body == body
    assert (record["status"], record["stored"], record["rejected_count"]) == (207, 2, 3)
    assert record["rejected"] == doc["rejected"] and record["labels"] == {"campaign": "p"}

    app.extensions["dlrlens"]["storage"].flush()
    assert [row["delivery_message_id"] for row in stored_rows(app.extensions["dlrlens"]["settings"].data_dir)] == [
        "partial-1", "partial-3"]


# -- the webhook secret and the allow-list ------------------------------------------------------


def test_the_secret_in_each_form_right_and_wrong(make_app, caplog):
    app = make_app(tokens=(SECRET, ROTATED))
    client = app.test_client()
    right = {
        "query": client.post(f"/dlr?token={SECRET}&campaign=q", json=fresh("right-query")),
        "basic": client.post("/dlr?campaign=b", json=fresh("right-basic"), headers=basic(SECRET)),
        "path": client.post(f"/dlr/{SECRET}?campaign=p", json=fresh("right-path")),
        "rotated": client.post(f"/dlr/{ROTATED}", json=fresh("right-rotated")),
        "basic, any user": client.post("/dlr", json=fresh("right-user"), headers=basic(SECRET, user="")),
    }
    assert {form: answer.status_code for form, answer in right.items()} == dict.fromkeys(right, 200)
    with caplog.at_level(logging.INFO, logger="dlrlens.collector"):
        wrong = {
            "missing": client.post("/dlr", json=fresh("wrong")),
            "query": client.post("/dlr?token=wrong", json=fresh("wrong")),
            "query, another case": client.post(f"/dlr?token={SECRET.upper()}", json=fresh("wrong")),
            "basic": client.post("/dlr", json=fresh("wrong"), headers=basic("wrong")),
            "basic, not base64": client.post("/dlr", json=fresh("wrong"), headers={"Authorization": "Basic ***"}),
            "bearer": client.post("/dlr", json=fresh("wrong"), headers={"Authorization": f"Bearer {SECRET}"}),
            "path": client.post("/dlr/wrong", json=fresh("wrong")),
            "path, the secret a segment too deep": client.post(f"/dlr/x/{SECRET}x", json=fresh("wrong")),
        }
    assert {form: assert_documented(answer, "/dlr/{secret}")["error"] for form, answer in wrong.items()} == \
        dict.fromkeys(wrong, "unauthorized")
    assert counters(app)["auth_failures"] == len(wrong) and counters(app)["stored"] == len(right)
    assert rejected_count(client, "unauthorized") == len(wrong)
    log = caplog.text
    assert "outcome=unauthorized" in log and "path=/dlr/<path:secret>" in log
    assert SECRET not in log and "path=/dlr/wrong" not in log

    app.extensions["dlrlens"]["storage"].flush()
    rows = stored_rows(app.extensions["dlrlens"]["settings"].data_dir)
    assert sorted(row["campaign"] or "-" for row in rows) == ["-", "-", "b", "p", "q"]
    assert not any(SECRET in (row["labels"] or "") or ROTATED in (row["labels"] or "") for row in rows)


def test_guesses_are_refused_429_after_the_limit_and_the_right_secret_still_gets_in(make_app):
    client = make_app(tokens=(SECRET,)).test_client()
    statuses = [client.post(f"/dlr?token=guess-{n}", json=fresh("guess")).status_code
                for n in range(AUTH_FAILURE_LIMIT + 2)]
    assert statuses == [401] * AUTH_FAILURE_LIMIT + [429] * 2
    answer = client.post("/dlr", json=fresh("guess"))
    assert answer.status_code == 429
    assert assert_documented(answer)["error"] == "too_many_auth_failures"
    assert client.post(f"/dlr?token={SECRET}", json=fresh("right")).status_code == 200
    assert rejected_count(client, "too_many_auth_failures") == 3


def test_a_secret_path_without_a_configured_secret_is_not_found(client):
    answer = client.post("/dlr/some-secret", json=fresh("x"))
    assert (answer.status_code, answer.json["error"]) == (404, "not_found")
    assert "some-secret" not in answer.get_data(as_text=True)


def test_the_allow_list_admits_its_networks_only(make_app):
    app = make_app(**ALLOW_10)
    client = app.test_client()
    refused = client.post("/dlr", json=fresh("net"), environ_base={"REMOTE_ADDR": "192.0.2.7"})
    assert refused.status_code == 403
    assert "192.0.2.7" in assert_documented(refused)["message"]
    # X-Forwarded-For is no source unless a proxy is trusted (DLRLENS_TRUSTED_PROXIES).
    spoofed = client.post("/dlr", json=fresh("net"), headers={"X-Forwarded-For": "10.9.9.9"})
    assert spoofed.status_code == 403
    assert client.post("/dlr", json=fresh("net-1"), environ_base={"REMOTE_ADDR": "10.1.2.3"}).status_code == 200
    assert counters(app)["forbidden"] == 2 and counters(app)["stored"] == 1
    assert [record["remote_addr"] for _, record in kept(app, "forbidden_source")] == ["192.0.2.7", "127.0.0.1"]

    behind_proxy = make_app(trusted_proxies=1, **ALLOW_10).test_client()
    assert behind_proxy.post("/dlr", json=fresh("net-2"), headers={"X-Forwarded-For": "10.9.9.9"}).status_code == 200
    answer = behind_proxy.post("/dlr", json=fresh("net-3"), headers={"X-Forwarded-For": "10.9.9.9, 192.0.2.8"})
    assert answer.status_code == 403 and "192.0.2.8" in answer.json["message"]


def test_an_allowed_source_still_needs_the_secret(make_app):
    client = make_app(tokens=(SECRET,), **ALLOW_10).test_client()
    outside = client.post(f"/dlr?token={SECRET}", json=fresh("x"))
    assert (outside.status_code, outside.json["error"]) == (403, "forbidden_source")
    inside = {"REMOTE_ADDR": "10.0.0.1"}
    assert client.post("/dlr", json=fresh("x"), environ_base=inside).status_code == 401
    assert client.post(f"/dlr/{SECRET}", json=fresh("x"), environ_base=inside).status_code == 200


# -- failures of the collector itself -----------------------------------------------------------


@pytest.mark.parametrize("announced", [True, False], ids=["through-the-arrival-middleware", "bare-flask-app"])
def test_a_storage_failure_answers_503_and_acknowledges_nothing(app, monkeypatch, announced):
    if not announced:
        app.wsgi_app = types.MethodType(Flask.wsgi_app, app)  # the view stores directly (storage.store)
    storage = app.extensions["dlrlens"]["storage"]

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as failing:
        failing.setattr(storage.wal, "_fsync", disk_full)  # the log's write can no longer be made durable
        answer = app.test_client().post("/dlr", json=[fresh("lost-1"), fresh("lost-2")])
    assert answer.status_code == 503
    assert assert_documented(answer)["error"] == "storage_unavailable"
    assert answer.headers["Retry-After"] == "5"
    assert (counters(app)["storage_errors"], counters(app)["stored"]) == (1, 0)
    assert "dlrlens_storage_errors_total 1" in metrics_text(app.test_client())

    assert app.test_client().post("/dlr", json=fresh("after")).status_code == 200  # storage is back
    storage.flush()
    assert [row["delivery_message_id"] for row in stored_rows(storage.data_dir)] == ["after"]


def test_a_bug_answers_500_json_and_stores_nothing(app, client, monkeypatch, caplog):
    def bug(*args, **kwargs):
        raise RuntimeError("a bug in the parser")

    monkeypatch.setattr(app_module, "parse_request", bug)
    with caplog.at_level(logging.INFO, logger="dlrlens.collector"):
        answer = client.post("/dlr", json=fresh("bug"))
    assert answer.status_code == 500
    assert assert_documented(answer) == {
        "error": "internal_error", "message": "the collector failed; the receipt was not stored"}
    assert "event=unexpected_error path=/dlr" in caplog.text and "status=500 outcome=internal_error" in caplog.text
    assert counters(app)["stored"] == 0


# -- /healthz, /metrics, the request log ----------------------------------------------------------


def test_healthz_answers_ok_with_the_backlog(app, client):
    assert client.post("/dlr", json=fresh("backlog")).status_code == 200
    answer = client.get("/healthz")
    assert answer.status_code == 200
    doc = assert_documented(answer, "/healthz", "get")
    assert (doc["status"], doc["storage_writable"], doc["storage_error"], doc["last_flush_error"]) == (
        "ok", True, None, None)
    assert doc["slot"] == app.extensions["dlrlens"]["storage"].slot
    assert doc["backlog"]["segments"] == 1 and doc["backlog"]["bytes"] > 0 and doc["quarantined_segments"] == 0
    assert not list(app.extensions["dlrlens"]["settings"].data_dir.glob(".healthz-*")), "the probe is removed"


def test_health_checks_at_once_in_one_worker_all_answer_200(app):
    # Each check writes its own probe: two at once used to remove each other's and answer 503.
    def checks(_):
        client = app.test_client()
        return [client.get("/healthz").status_code for _ in range(25)]
    with ThreadPoolExecutor(6) as pool:
        statuses = [status for answers in pool.map(checks, range(6)) for status in answers]
    assert statuses == [200] * 150


def test_a_restart_answers_at_once_and_replays_its_log_in_the_background(make_app, tmp_path, monkeypatch):
    # A log left by a previous run (a minute old); its replay is held (a slow disk, a big log):
    # the app answers meanwhile, says "degraded" with a 200, and shows the backlog and its age.
    # A second worker on the same data directory (nothing of its own to replay) says the same:
    # the state is the collector's, whichever worker answers.
    data = tmp_path / "restarted"
    left = [fresh(f"left-{n}") for n in range(3)]
    leftover = parse_request(body_of(left), JSON, {}, datetime.now(UTC)).records
    segment = data / layout.WAL_DIR / "w000" / f"{time.time_ns() - 60 * 10**9:020d}.wal"
    segment.parent.mkdir(parents=True)
    segment.write_bytes(b"".join(encode_record(record) for record in leftover))
    replay = hold_replay(monkeypatch, "w000")
    app = make_app(data_dir=data)
    storage = app_module.storage_of(app)
    client = app.test_client()
    other = make_app(data_dir=data)
    assert app_module.storage_of(other).wait_caught_up(10), "its own first pass (w000 is held by its owner)"
    try:
        assert client.post("/dlr", json=fresh("while-replaying")).status_code == 200
        for answering, slot, replaying in ((client, "w000", True), (other.test_client(), "w001", False)):
            health = answering.get("/healthz")
            doc = assert_documented(health, "/healthz", "get")
            assert health.status_code == 200 and doc["status"] == "degraded" and doc["catching_up"], doc
            assert doc["catching_up_slots"] == ["w000"] and doc["catching_up_since"], doc
            assert doc["this_worker"] == {"slot": slot, "catching_up": replaying}, doc
            text = metrics_text(answering)
            assert metric_value(text, "dlrlens_catching_up") == 1
            assert metric_value(text, "dlrlens_worker_catching_up") == int(replaying)
            assert metric_value(text, "dlrlens_catching_up_seconds") >= 0
            assert metric_value(text, "dlrlens_log_backlog_age_seconds") >= 60  # the collector's oldest segment
        assert doc["backlog"]["segments"] == 0  # w001's own log: nothing closed
        doc = client.get("/healthz").json
        assert doc["backlog"]["segments"] == 2 and doc["backlog"]["oldest_age_seconds"] >= 60
    finally:
        replay.set()
    assert storage.wait_caught_up(30)
    for answering in (client, other.test_client()):
        doc = answering.get("/healthz").json
        assert doc["status"] == "ok" and not doc["catching_up"] and doc["catching_up_since"] is None, doc
    storage.flush()
    assert sorted(row["delivery_message_id"] for row in stored_rows(data)) == [
        "left-0", "left-1", "left-2", "while-replaying"]


def test_metrics_count_requests_receipts_duplicates_refusals_and_flushes(app, client):
    first = fresh("m-1")
    assert client.post("/dlr", json=first).status_code == 200
    assert client.post("/dlr", json=[first, fresh("m-2")]).status_code == 200  # m-1 again: a duplicate
    assert client.post("/dlr", data=b"{", content_type=JSON).status_code == 400
    app.extensions["dlrlens"]["storage"].flush()
    text = metrics_text(client)
    for _, (name, _) in metrics.HELP.items():
        assert f"# TYPE {name} counter" in text
    expected = {"dlrlens_requests_total": 3, "dlrlens_receipts_received_total": 3, "dlrlens_receipts_stored_total": 3,
                "dlrlens_duplicates_seen_total": 1, 'dlrlens_rejected_total{reason="invalid_json"}': 1,
                "dlrlens_flushes_total": 1, "dlrlens_flushed_receipts_total": 3, "dlrlens_flush_seconds_count": 1,
                "dlrlens_storage_errors_total": 0, "dlrlens_log_backlog_segments": 0}
    assert {name: metric_value(text, name) for name in expected} == expected
    assert "dlrlens_log_backlog_bytes 0" in text and "dlrlens_last_flush_seconds " in text


def test_each_request_logs_one_line_without_the_path_as_sent(make_app, caplog):
    client = make_app(tokens=(SECRET,)).test_client()
    with caplog.at_level(logging.INFO, logger="dlrlens.collector"):
        client.post(f"/dlr/{SECRET}", json=fresh("quiet"))  # stored: a debug line only
        client.post(f"/api/dlr/{SECRET}", json=fresh("x"))
        client.post(f"/./dlr?token={SECRET}", json=fresh("x"))
        client.get("/dlr")
        client.get("/metrics")  # never logged
    lines = [record.getMessage() for record in caplog.records if record.getMessage().startswith("event=request")]
    assert [line.split(" remote=")[0] for line in lines] == [
        "event=request method=POST path=<unknown path> status=404 outcome=not_found",
        "event=request method=POST path=<unknown path> status=404 outcome=not_found",
        "event=request method=GET path=/dlr status=405 outcome=method_not_allowed",
    ]
    assert SECRET not in caplog.text


def test_debug_level_logs_stored_requests_too(make_app, caplog):
    client = make_app(log_level="debug").test_client()
    with caplog.at_level(logging.DEBUG, logger="dlrlens.collector"):
        assert client.post("/dlr", json=fresh("loud")).status_code == 200
    assert "event=request method=POST path=/dlr status=200 outcome=stored" in caplog.text


def test_a_secret_only_flasks_router_decides_gets_the_same_answers(make_app):
    # A line break in the path's secret: Flask's router matches "/dlr/\n" (its view answers with
    # collector.app.answer_webhook, as the middleware does) but not "/dlr/a\nb" (a 404).
    app = make_app(tokens=(SECRET,))
    client = app.test_client()
    wrong = client.post("/dlr/%0A", json=fresh("line-break"))
    assert wrong.status_code == 401 and assert_documented(wrong)["error"] == "unauthorized"
    assert client.post(f"/dlr/{SECRET}%0Ax", json=fresh("line-break")).status_code == 404
    assert client.post(f"/dlr/{SECRET}", json=fresh("line-break")).status_code == 200
    assert (counters(app)["auth_failures"], counters(app)["stored"]) == (1, 1)
