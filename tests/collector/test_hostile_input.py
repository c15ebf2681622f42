"""Hostile input reported in the security issue, each reproduced against the real collector.

Every reproduction runs through gunicorn on a loopback port (real HTTP, real Parquet) and
asserts what the attacker got before the fix can no longer happen:

1. a far-future ``created`` is refused (``bad_created``) and never reaches the dashboard;
2. one array of receipts on 3,000 different days is refused whole (``too_many_days``) and
   creates no partition;
3. URL labels outside the allow-list, too long or holding control characters are refused
   (``bad_label``), allowed ones stored, the ``token`` never a label;
6. a body of one good receipt and 349,000 ``{}`` gets a small answer and a small audit record;
8. ``POST //dlr`` (and ``/dlr/``) stores, never a 500, never a traceback in the log;
12. ``/healthz`` names the kind of a storage error, never the data directory's path.

Each refusal is also checked to be counted by reason in ``/metrics`` and kept under
``data/rejected/<reason>/``. In-process tests (``app.test_client()``; every refusal reason in
test_app_inprocess.py) cover the branches, and hypothesis properties the new pure functions
(the created window, the days bound, labels, canonical paths, duration settings).
"""

from __future__ import annotations

import http.client
import json
import types
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlrlens.store import layout
from collector.app import canonical_path, is_receipt_path, label_policy, receipt_limits
from collector.parsing import (
    MAX_LABELS,
    MAX_REPORTED_ERRORS,
    BadBody,
    LabelPolicy,
    ReceiptLimits,
    checked_url_labels,
    parse_request,
)
from collector.settings import default_settings, load_settings
from dlrlens.store.writer import error_kind
from dlrlens.store.wal import StorageError
from dashboard import queries
from tests.support.receipts import metric, rows_of, stored_rows
from tests.support.servers import running_collector, wait_until

UTC = timezone.utc
DEFAULTS = default_settings()
SECRET = "hostile-input-secret-7"
FAR_FUTURE = "9999-12-31T23:59:59Z"
SMALL_ANSWER_BYTES = 32 * 1024

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def created_text(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def now_plus(**delta) -> str:
    return created_text(datetime.now(UTC) + timedelta(**delta))


def receipt(message_id: str, created: str | None = None) -> dict:
    return {"deliveryMessageId": message_id, "created": created or now_plus(hours=-1), "status": "DELIVERED",
            "statusCode": 1}


def rejected_files(data_dir: Path, reason: str, suffix: str) -> list[Path]:
    return sorted((data_dir / layout.REJECTED_DIR / reason).glob(f"*{suffix}"))


def wait_counted(collector, reason: str, at_least: float) -> None:
    wait_until(lambda: metric(collector.url, f'dlrlens_rejected_total{{reason="{reason}"}}') >= at_least, 10,
               what=f"{reason} counted")


def rejected_count(collector, reason: str) -> float:
    return metric(collector.url, f'dlrlens_rejected_total{{reason="{reason}"}}')


def receipts_tree(data_dir: Path) -> set[Path]:
    """Every file and directory under data/receipts (the day partitions and their files)."""
    root = layout.receipts_dir(data_dir)
    return {path.relative_to(root) for path in root.rglob("*")} if root.exists() else set()


@pytest.fixture(scope="module")
def collector(collectors):
    """One worker: its /healthz backlog is the whole collector's, and its counters are live."""
    return collectors("hostile", workers=1, flush_seconds=0.2)


# -- 1. far-future created ---------------------------------------------------------------------


def test_far_future_created_is_refused_and_never_reaches_the_dashboard(collector):
    before = rejected_count(collector, "bad_created")
    body = json.dumps(receipt("future-9999", FAR_FUTURE)).encode()
    answer = requests.post(collector.dlr, data=body, headers={"Content-Type": "application/json"}, timeout=10)
    assert answer.status_code == 400
    doc = answer.json()
    assert doc["error"] == "bad_created"
    assert "9999-12-31" in doc["message"] and "1 day after" in doc["message"] and "400 days before" in doc["message"]
    assert any(path.read_bytes() == body for path in rejected_files(collector.data_dir, "bad_created", ".body"))

    # In an array only the far-future element is refused; late receipts stay welcome.
    mixed = [receipt("future-ok-1"), receipt("future-array", "3000-01-01T00:00:00Z"),
             receipt("future-late-10-days", now_plus(days=-10))]
    answer = requests.post(collector.dlr, json=mixed, timeout=10)
    assert answer.status_code == 207
    assert [(e["index"], e["reason"]) for e in answer.json()["rejected"]] == [(1, "bad_created")]
    assert requests.post(collector.dlr, json=receipt("future-2-days", now_plus(days=2)), timeout=10).status_code == 400
    wait_counted(collector, "bad_created", before + 3)

    rows_of(collector.data_dir, "future-", 2)
    store = queries.Store(collector.data_dir)
    try:
        messages = set(queries.message_detail(store, queries.Filters())["delivery_message_id"])
    finally:
        store.close()
    assert {"future-ok-1", "future-late-10-days"} <= messages
    assert not messages & {"future-9999", "future-array", "future-2-days"}
    assert max(row["created"] for row in stored_rows(collector.data_dir)) < datetime.now(UTC) + timedelta(days=1)


# -- 2. partition explosion ----------------------------------------------------------------------


def test_array_on_3000_days_is_refused_whole_and_creates_no_partition(collector):
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    assert requests.post(collector.dlr, json=receipt("days-before", created_text(today)), timeout=10).status_code == 200
    rows_of(collector.data_dir, "days-before", 1)
    tree_before = receipts_tree(collector.data_dir)
    before = rejected_count(collector, "too_many_days")
    body = json.dumps([receipt(f"days-{n}", created_text(today - timedelta(days=n))) for n in range(3000)]).encode()
    assert len(body) > 200_000  # the reported attack: a 287 KB array

    answer = requests.post(collector.dlr, data=body, headers={"Content-Type": "application/json"}, timeout=30)
    assert answer.status_code == 400
    doc = answer.json()
    assert doc["error"] == "too_many_days"
    # Midnight today back 399 days lie inside the 400-day window (day 400 at midnight is just
    # outside it, whatever the time of the run): the days bound refuses the whole request.
    assert "400 different days" in doc["message"] and "at most 31" in doc["message"]
    wait_counted(collector, "too_many_days", before + 1)
    assert any(path.read_bytes() == body[:DEFAULTS.rejected_max_bytes]
               for path in rejected_files(collector.data_dir, "too_many_days", ".body"))
    # Nothing partial: once a receipt posted after it is flushed, the only new files under
    # data/receipts are that receipt's, in a partition that existed before.
    assert requests.post(collector.dlr, json=receipt("days-after", created_text(today)), timeout=10).status_code == 200
    rows_of(collector.data_dir, "days-after", 1)
    new = receipts_tree(collector.data_dir) - tree_before
    partition = f"{layout.PARTITION_PREFIX}{today.date().isoformat()}"
    assert new and all(path.parent == Path(partition) and path.suffix == ".parquet" for path in new), new
    assert {row["delivery_message_id"] for row in stored_rows(collector.data_dir)
            if row["delivery_message_id"].startswith("days-")} == {"days-before", "days-after"}


# -- 3. label cardinality ------------------------------------------------------------------------


def test_unknown_label_keys_are_refused_and_allowed_ones_stored(collector):
    before = rejected_count(collector, "bad_label")
    allowed = {"campaign": "black-friday", "team": "retail", "country": "uk", "env": "prod"}
    answer = requests.post(collector.dlr, params={**allowed, "token": "not-configured-here"},
                           json=receipt("labels-allowed"), timeout=10)
    assert answer.status_code == 200, answer.text
    with requests.Session() as session:
        for index in range(30):  # the reported attack: every post a label key of its own
            answer = session.post(collector.dlr, params={"campaign": "x", f"u{index:05d}": "v"},
                                  json=receipt(f"labels-unique-{index}"), timeout=10)
            assert answer.status_code == 400
            assert answer.json()["error"] == "bad_label"
            assert f"'u{index:05d}'" in answer.json()["message"] and "DLRLENS_LABEL_KEYS" in answer.json()["message"]
    too_long = requests.post(collector.dlr, params={"team": "t" * (DEFAULTS.label_max_length + 1)},
                             json=receipt("labels-long"), timeout=10)
    assert (too_long.status_code, too_long.json()["error"]) == (400, "bad_label")
    assert f"limit is {DEFAULTS.label_max_length}" in too_long.json()["message"]
    control = requests.post(collector.dlr + "?team=a%0Ab", json=receipt("labels-control"), timeout=10)
    assert (control.status_code, control.json()["error"]) == (400, "bad_label")
    assert "control character" in control.json()["message"]
    wait_counted(collector, "bad_label", before + 32)
    assert len(rejected_files(collector.data_dir, "bad_label", ".json")) >= 32

    [row] = rows_of(collector.data_dir, "labels-", 1)
    assert row["delivery_message_id"] == "labels-allowed"
    assert json.loads(row["labels"]) == allowed and row["campaign"] == "black-friday"
    for row in stored_rows(collector.data_dir):
        assert set(json.loads(row["labels"] or "{}")) <= DEFAULTS.label_keys


# -- 6. unbounded rejected-request records -------------------------------------------------------


def test_one_good_receipt_among_349000_empty_objects_gets_a_small_answer_and_record(collector):
    before = rejected_count(collector, "missing_message_id")
    body = b"[" + json.dumps(receipt("among-empties")).encode() + b"," + b",".join([b"{}"] * 349_000) + b"]"
    assert len(body) <= DEFAULTS.max_body_bytes
    answer = requests.post(collector.dlr, data=body, headers={"Content-Type": "application/json"}, timeout=60)
    assert answer.status_code == 207
    assert len(answer.content) < SMALL_ANSWER_BYTES
    doc = answer.json()
    assert (doc["stored"], doc["rejected_count"], doc["rejected_truncated"]) == (1, 349_000, True)
    assert len(doc["rejected"]) == MAX_REPORTED_ERRORS
    assert doc["rejected"][0] == {"index": 1, "reason": "missing_message_id",
                                  "message": "receipt has no 'deliveryMessageId'"}
    [record] = [path for path in rejected_files(collector.data_dir, "partial", ".json")
                if json.loads(path.read_text())["rejected_count"] == 349_000]
    assert record.stat().st_size < SMALL_ANSWER_BYTES
    assert record.with_suffix(".body").stat().st_size == DEFAULTS.rejected_max_bytes
    wait_counted(collector, "missing_message_id", before + 349_000)
    rows_of(collector.data_dir, "among-empties", 1)

    # Every element bad: one small 400 with the first reason.
    only_bad = b"[" + b",".join([b"{}"] * 349_000) + b"]"
    answer = requests.post(collector.dlr, data=only_bad, headers={"Content-Type": "application/json"}, timeout=60)
    assert (answer.status_code, answer.json()["error"]) == (400, "missing_message_id")
    assert len(answer.content) < 1024
    assert all(path.stat().st_size < SMALL_ANSWER_BYTES
               for path in rejected_files(collector.data_dir, "missing_message_id", ".json"))


# -- 8. path variants ----------------------------------------------------------------------------


def raw_post(url: str, path: str, body: bytes) -> tuple[int, dict]:
    """POST ``path`` exactly as given (requests and urllib3 would tidy it)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("POST", path, body, {"Content-Type": "application/json"})
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        connection.close()


STORED_PATHS = ["//dlr?token={s}", "/dlr/?token={s}", "///dlr//?token={s}", "//dlr/{s}", "/dlr//{s}/",
                "/%2Fdlr?token={s}"]
REFUSED_PATHS = {"//dlr": 401, "/./dlr?token={s}": 404, "/dlr/./{s}": 401, "/../dlr?token={s}": 404, "//": 404,
                 "/dlrx?token={s}": 404, "/dlr/{s}/..": 401, "//healthz": 405}


def test_double_slash_paths_store_and_no_path_variant_fails(tmp_path):
    with running_collector(tmp_path / "data", workers=1, flush_seconds=0.2, env={"DLRLENS_TOKEN": SECRET}) as running:
        for index, template in enumerate(STORED_PATHS):
            status, doc = raw_post(running.url, template.format(s=SECRET), json.dumps(receipt(f"path-{index}")).encode())
            assert (status, doc) == (200, {"status": "stored", "stored": 1}), template
        for template, expected in REFUSED_PATHS.items():
            status, doc = raw_post(running.url, template.format(s=SECRET), json.dumps(receipt("path-refused")).encode())
            assert status == expected and doc["error"] and doc["message"], (template, status, doc)
        rows = rows_of(running.data_dir, "path-", len(STORED_PATHS))
        assert sorted(row["delivery_message_id"] for row in rows) == [f"path-{i}" for i in range(len(STORED_PATHS))]
        running.stop()
        log = running.log()
    assert "Traceback" not in log and "unexpected_error" not in log and "status=500" not in log
    assert SECRET not in log


# -- 12. /healthz never shows a path --------------------------------------------------------------
# ``app``, ``make_app``: the collector in-process (tests/conftest.py).


def test_healthz_names_the_error_kind_never_the_data_path(app, monkeypatch, tmp_path):
    def refused(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("dlrlens.store.files.open", refused, raising=False)  # the store's write probe
    answer = app.test_client().get("/healthz")
    assert answer.status_code == 503
    assert answer.json["storage_writable"] is False and answer.json["storage_error"] == "EACCES"
    assert str(tmp_path) not in answer.get_data(as_text=True)


def test_failed_flush_shows_its_kind_not_its_path(app, monkeypatch, tmp_path):
    storage = app.extensions["dlrlens"]["storage"]

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "data" / "receipts" / "x.parquet"))

    monkeypatch.setattr(storage, "_flush_dir", disk_full)
    with pytest.raises(StorageError):
        storage.flush()
    answer = app.test_client().get("/healthz")
    assert answer.status_code == 503 and answer.json["last_flush_error"] == "ENOSPC"
    assert str(tmp_path) not in answer.get_data(as_text=True)


def test_error_kind_is_the_errno_name_or_the_class():
    assert error_kind(PermissionError(13, "Permission denied", "/srv/dlrlens/data")) == "EACCES"
    assert error_kind(OSError(30, "Read-only file system")) == "EROFS"
    assert error_kind(OSError("no errno")) == "OSError"
    assert error_kind(FileNotFoundError()) == "FileNotFoundError"


# -- in-process: the branches ---------------------------------------------------------------------


def test_double_slash_reaches_the_receipt_view_in_process(app):
    client = app.test_client()
    for path in ("//dlr", "/dlr/", "//dlr//"):
        answer = client.post("/dlr", environ_overrides={"PATH_INFO": path}, json=receipt("in-process"))
        assert answer.status_code == 200, (path, answer.json)


def test_the_view_stores_even_without_the_arrival_middleware(app):
    app.wsgi_app = types.MethodType(Flask.wsgi_app, app)  # the bare Flask app: no announce_receipts
    answer = app.test_client().post("/dlr", json=receipt("no-middleware"))
    assert answer.status_code == 200 and answer.json == {"status": "stored", "stored": 1}
    assert app.extensions["dlrlens"]["storage"].counters.values["stored"] == 1


def test_partial_answer_names_the_first_errors_and_counts_them_all(app):
    client = app.test_client()
    answer = client.post("/dlr", json=[receipt("partial-good")] + [{"n": i} for i in range(250)])
    assert answer.status_code == 207
    assert (answer.json["rejected_count"], answer.json["rejected_truncated"]) == (250, True)
    assert [e["index"] for e in answer.json["rejected"]] == list(range(1, MAX_REPORTED_ERRORS + 1))
    answer = client.post("/dlr", json=[receipt("partial-good-2"), {"n": 1}])
    assert (answer.json["rejected_count"], answer.json["rejected_truncated"]) == (1, False)
    text = client.get("/metrics").get_data(as_text=True)
    assert 'dlrlens_rejected_total{reason="missing_message_id"} 251' in text


def test_label_refusals_name_the_key_the_limit_and_the_setting(app):
    client = app.test_client()
    cases = {
        "/dlr?campaign=c&colour=red": "'colour' is not an allowed label key",
        "/dlr?team=" + "x" * 65: "limit is 64 (DLRLENS_LABEL_MAX_LENGTH)",
        "/dlr?country=u%07k": "holds a control character",
        "/dlr?env=a%C2%85b": "holds a control character",  # U+0085, a C1 control (stripped at the ends)
    }
    for url, message in cases.items():
        answer = client.post(url, json=receipt("refused"))
        assert (answer.status_code, answer.json["error"]) == (400, "bad_label"), url
        assert message in answer.json["message"], answer.json
    assert "DLRLENS_LABEL_KEYS" in client.post("/dlr?colour=red", json=receipt("r")).json["message"]
    # The secret is never a label and never refused as one, in any case; the first of a repeated key wins.
    answer = client.post("/dlr?token=abc&TOKEN=def&team=a&team=b", json=receipt("token-not-a-label"))
    assert answer.status_code == 200


def test_any_label_key_when_the_allow_list_is_a_star(monkeypatch):
    monkeypatch.setenv("DLRLENS_LABEL_KEYS", "*")
    policy = label_policy(load_settings())
    assert policy.keys is None
    assert checked_url_labels([("colour", "red"), ("campaign", "c")], policy) == {"colour": "red", "campaign": "c"}
    with pytest.raises(BadBody, match=f"more than {MAX_LABELS} URL labels"):
        checked_url_labels([(f"k{i}", "v") for i in range(MAX_LABELS + 1)], policy)
    with pytest.raises(BadBody, match="its key is 65 characters long"):
        checked_url_labels([("k" * 65, "v")], policy)


def test_created_window_boundaries_and_settings():
    arrival = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    limits = receipt_limits(DEFAULTS)
    assert limits == ReceiptLimits(timedelta(days=1), timedelta(days=400), 31)
    for accepted in (arrival + timedelta(days=1), arrival - timedelta(days=400), arrival):
        parse_request(json.dumps(receipt("w", created_text(accepted))).encode(), None, {}, arrival, limits)
    for refused in (arrival + timedelta(days=1, microseconds=1), arrival - timedelta(days=400, microseconds=1)):
        with pytest.raises(BadBody) as info:
            parse_request(json.dumps(receipt("w", refused.isoformat())).encode(), None, {}, arrival, limits)
        assert info.value.reason == "bad_created"
        assert "accepted from 400 days before to 1 day after arrival" in info.value.message
    # Bounds that reach past year 9999 or before year 1 are simply no bound.
    huge = ReceiptLimits(timedelta(days=3_000_000), timedelta(days=3_000_000))
    for moment in ("9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z"):
        assert parse_request(json.dumps(receipt("w", moment)).encode(), None, {}, arrival, huge).records


@pytest.mark.parametrize("text,expected", [("1d", timedelta(days=1)), ("400d", timedelta(days=400)),
                                           ("86400", timedelta(days=1)), ("12h", timedelta(hours=12)),
                                           ("90s", timedelta(seconds=90)), ("15m", timedelta(minutes=15)),
                                           ("0", None), ("0d", None)])
def test_created_window_settings_take_durations(monkeypatch, text, expected):
    monkeypatch.setenv("DLRLENS_CREATED_MAX_AHEAD", text)
    assert load_settings().created_max_ahead == expected


@pytest.mark.parametrize("env,value", [("DLRLENS_CREATED_MAX_AGE", "-1d"), ("DLRLENS_CREATED_MAX_AGE", "1 week"),
                                       ("DLRLENS_MAX_DAYS_PER_REQUEST", "-1"), ("DLRLENS_LABEL_KEYS", "team,token"),
                                       ("DLRLENS_LABEL_MAX_LENGTH", "0")])
def test_invalid_limit_settings_are_refused_by_name(monkeypatch, env, value):
    monkeypatch.setenv(env, value)
    with pytest.raises(ValueError, match=env):
        load_settings()


def test_days_bound_counts_utc_dates_and_refuses_the_whole_request():
    arrival = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    limits = ReceiptLimits(None, None, 2)

    def body(*moments, bad=0):
        return json.dumps([receipt(f"d{i}", created_text(m)) for i, m in enumerate(moments)] + [{}] * bad).encode()

    # 23:30 at UTC-2 is the next UTC day: three UTC dates, although two local ones.
    late_evening = datetime(2026, 12, 1, 23, 30, tzinfo=timezone(timedelta(hours=-2)))
    two_days = parse_request(body(arrival, arrival - timedelta(days=1), bad=3), None, {}, arrival, limits)
    assert len(two_days.records) == 2 and two_days.error_total == 3
    with pytest.raises(BadBody) as info:
        parse_request(body(arrival, late_evening, late_evening - timedelta(hours=2), bad=1), None, {}, arrival, limits)
    assert (info.value.status, info.value.reason) == (400, "too_many_days")
    assert "3 different days" in info.value.message and "DLRLENS_MAX_DAYS_PER_REQUEST" in info.value.message


def test_canonical_paths():
    assert [canonical_path(p) for p in ("//dlr", "/dlr/", "///dlr//", "/dlr//S/", "/", "", "//", "/./dlr")] == \
        ["/dlr", "/dlr", "/dlr", "/dlr/S", "/", "/", "/", "/./dlr"]
    assert is_receipt_path("/dlr") and is_receipt_path("/dlr/S")
    assert not is_receipt_path("/dlrx") and not is_receipt_path("/./dlr") and not is_receipt_path("/")


def test_documented_label_keys_cover_what_the_product_posts():
    """The README's callback URL, the simulator and `dlrlens up` post only allowed keys."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "campaign=black-friday&team=retail" in readme and "country=uk" in readme
    assert {"campaign", "team", "country"} <= DEFAULTS.label_keys
    from dlrlens import simulate
    posts = simulate.generate_traffic(3, 30, 1, datetime.now(UTC))
    assert {key for post in posts for key, _ in post.labels} <= DEFAULTS.label_keys


# -- properties of the new pure functions ---------------------------------------------------------

moments = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59),
                       timezones=st.just(UTC))
spans = st.none() | st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=5000))


@FAST
@given(created=moments, arrival=moments, ahead=spans, age=spans)
def test_property_created_window_accepts_exactly_the_window(created, arrival, ahead, age):
    inside = ((ahead is None or (created - arrival) <= ahead)
              and (age is None or (arrival - created) <= age))
    body = json.dumps(receipt("window", created.isoformat())).encode()
    try:
        parse_request(body, None, {}, arrival, ReceiptLimits(ahead, age))
        accepted = True
    except BadBody as refusal:
        assert (refusal.status, refusal.reason) == (400, "bad_created")
        assert created.isoformat() in refusal.message
        accepted = False
    assert accepted == inside


@FAST
@given(days=st.lists(st.integers(0, 60), min_size=1, max_size=40), max_days=st.none() | st.integers(1, 40))
def test_property_days_bound_refuses_iff_too_many_utc_dates(days, max_days):
    arrival = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    body = json.dumps([receipt(f"p{i}", created_text(arrival - timedelta(days=d))) for i, d in enumerate(days)])
    limits = ReceiptLimits(None, None, max_days)
    try:
        parsed = parse_request(body.encode(), None, {}, arrival, limits)
        assert len(parsed.records) == len(days)
        assert max_days is None or len(set(days)) <= max_days
    except BadBody as refusal:
        assert refusal.reason == "too_many_days" and max_days is not None and len(set(days)) > max_days


keys = st.sampled_from(["campaign", "team", "country", "env", "token", "Token", " team ", ""]) | st.text(max_size=8)
values = st.text(max_size=70)


def expected_labels(query, allowed, max_length):
    """An independent oracle: (labels, None) or (None, the offending key)."""
    labels: dict[str, str] = {}
    for key, value in query:
        key, value = key.strip(), value.strip()
        if not key or key.lower() == "token" or key in labels:
            continue
        controls = any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value)
        if (allowed is not None and key not in allowed) or len(value) > max_length or controls:
            return None, key
        if allowed is None and (len(key) > max_length or any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in key)):
            return None, key
        if len(labels) >= MAX_LABELS:
            return None, key
        labels[key] = value
    return labels, None


@FAST
@given(query=st.lists(st.tuples(keys, values), max_size=8), star=st.booleans(), max_length=st.integers(1, 70))
def test_property_checked_labels_accept_exactly_the_policy(query, star, max_length):
    allowed = None if star else DEFAULTS.label_keys
    expected, offender = expected_labels(query, allowed, max_length)
    try:
        labels = checked_url_labels(query, LabelPolicy(allowed, max_length))
    except BadBody as refusal:
        assert expected is None and (refusal.status, refusal.reason) == (400, "bad_label")
        assert repr(offender[:40])[:20] in refusal.message
        return
    assert labels == expected
    assert not {key.lower() for key in labels} & {"token"}


@FAST
@given(path=st.text(st.sampled_from("/dlrx.S"), max_size=12))
def test_property_canonical_path_is_idempotent_and_agrees_with_routing(path):
    canonical = canonical_path(path)
    assert canonical_path(canonical) == canonical
    assert "//" not in canonical and (canonical == "/" or not canonical.endswith("/"))
    assert is_receipt_path(canonical) == (canonical == "/dlr" or canonical.startswith("/dlr/"))


def test_served_document_follows_the_label_settings(make_app):
    app = make_app(label_keys=frozenset({"campaign", "shop"}), label_max_length=10)
    custom = app.extensions["dlrlens"]["settings"]
    document = app.test_client().get("/openapi.json").json
    parameters = {p["name"]: p for p in document["paths"]["/dlr"]["post"]["parameters"]}
    assert parameters["campaign"]["schema"]["maxLength"] == 10
    assert set(parameters["labels"]["schema"]["properties"]) == {"shop"}
    assert label_policy(custom) == LabelPolicy(frozenset({"campaign", "shop"}), 10)
