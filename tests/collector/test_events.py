"""The click and incoming-message parsers (collector/events.py), in-process: documented bodies,
unknown fields, privacy (hash, mask, dropped IP), bad bodies; hypothesis properties (never
anything but BadBody, every valid object stored with its fields, records fit the schema)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.events import EventPrivacy, parse_clicks, parse_replies
from collector.parsing import BadBody, ReceiptLimits
from dlrlens.store import layout
from dlrlens.store.events import normalise_reply, opt_out_keywords, parse_keywords
from dlrlens.store.pseudonym import hash_msisdn, installation_key, mask_msisdn
from tests.support.receipts import MOBIVATE

KEY = b"k" * 32
PRIVATE = EventPrivacy(KEY)
NOW = datetime(2026, 11, 21, 9, 0, tzinfo=timezone.utc)
CLICK = (MOBIVATE / "click.json").read_bytes()
INCOMING = (MOBIVATE / "incoming.json").read_bytes()
JSON = "application/json"


def _fits(records: list[dict], table: str) -> None:
    """The records convert to the table's Arrow schema (what the flush does)."""
    spec = layout.TABLES[table]
    pa.table({name: pa.array([r[name] for r in records], type=field.type)
              for name, field in zip(spec.schema.names, spec.schema)}, schema=spec.schema)


def test_documented_click_is_kept_without_number_or_ip():
    [record] = parse_clicks(CLICK, JSON, {"campaign": "spring"}, NOW, PRIVATE).records
    assert record["message_id"] == "5C1E07A2F4B3460D9E2B7A81C0D4F3E9"
    assert record["batch_id"] == "5C1E07110B7E4A2C8D6F0A9B3C2E1D47" and record["client_ref"] == "spring-offer-0001"
    assert (record["browser"], record["os"], record["country"], record["iso2l"]) == (
        "Chrome", "Android", "United Kingdom", "UK")
    assert record["url"] == "https://shop.example.com/spring?utm_source=sms"
    assert record["received_at"] == NOW and record["campaign"] == "spring"
    assert record["mobile"] is None and record["ip_address"] is None
    assert record["mobile_masked"] == "44770****123"
    assert record["mobile_hash"] == hash_msisdn(KEY, "+44 7700 900123") != hash_msisdn(b"x" * 32, "447700900123")
    assert "198.51.100.23" not in json.dumps(record, default=str)
    assert "447700900123" not in json.dumps(record, default=str)
    _fits([record], "clicks")


def test_settings_keep_the_number_and_the_ip():
    [record] = parse_clicks(CLICK, JSON, {}, NOW, EventPrivacy(KEY, keep_msisdn=True, keep_ip=True)).records
    assert record["mobile"] == "447700900123" and record["ip_address"] == "198.51.100.23"


def test_documented_reply_is_kept():
    [record] = parse_replies(INCOMING, JSON, {}, NOW, PRIVATE, ReceiptLimits(timedelta(days=1), timedelta(days=400))
                             ).records
    assert record["reply_id"] == "A7D3E9F10B2C4D5E8F6A1B3C5D7E9F02"
    assert record["created"] == datetime(2026, 11, 20, 14, 31, 2, tzinfo=timezone.utc)
    assert record["in_reply_to"] == "5C1E07A2F4B3460D9E2B7A81C0D4F3E9"
    assert record["logical_message_id"] == "5C1E07110B7E4A2C8D6F0A9B3C2E1D47"
    assert record["body"] == "Stop" and record["recipient"] == "60777"
    assert record["originator"] is None and record["originator_masked"] == "44770****123"
    _fits([record], "replies")


def test_unknown_fields_are_kept_in_extra_and_names_match_in_any_case():
    body = json.dumps({"MESSAGEID": "m1", "URL": "https://x", "campaignTag": "new", "nested": {"a": 1}}).encode()
    [record] = parse_clicks(body, JSON, {}, NOW, PRIVATE).records
    assert record["message_id"] == "m1" and record["url"] == "https://x"
    assert json.loads(record["extra"]) == {"campaignTag": "new", "nested": {"a": 1}}
    body = json.dumps({"ID": "r1", "Body": "hi", "replyChannel": "sms"}).encode()
    [record] = parse_replies(body, None, {}, NOW, PRIVATE).records  # no content type: sniffed
    assert json.loads(record["extra"]) == {"replyChannel": "sms"} and record["created"] == NOW


def test_same_click_twice_has_the_same_id_and_another_click_another():
    first = parse_clicks(CLICK, JSON, {}, NOW, PRIVATE).records[0]["click_id"]
    again = parse_clicks(CLICK, JSON, {}, NOW + timedelta(seconds=5), PRIVATE).records[0]["click_id"]
    other = json.loads(CLICK)
    other["os"] = "iOS"
    assert first == again != parse_clicks(json.dumps(other).encode(), JSON, {}, NOW, PRIVATE).records[0]["click_id"]


@pytest.mark.parametrize("parse, body, content_type, status, reason", [
    (parse_clicks, b"", JSON, 400, "empty_body"),
    (parse_clicks, b"{", JSON, 400, "invalid_json"),
    (parse_clicks, b"[]", JSON, 400, "not_a_click"),
    (parse_clicks, b'{"browser": "Chrome"}', JSON, 400, "not_a_click"),
    (parse_clicks, b'{"messageId": {"a": 1}}', JSON, 400, "bad_field"),
    (parse_clicks, b'{"url": "' + b"u" * 3000 + b'"}', JSON, 400, "bad_field"),
    (parse_clicks, b"<click/>", "application/xml", 415, "unsupported_media_type"),
    (parse_clicks, b"xml=1", "text/plain", 415, "unsupported_media_type"),
    (parse_replies, b"5", JSON, 400, "not_a_reply"),
    (parse_replies, b'{"recipient": "60777"}', JSON, 400, "not_a_reply"),
    (parse_replies, b'{"id": "r", "created": "yesterday"}', JSON, 400, "bad_created"),
    (parse_replies, b'{"id": "r", "created": "2001-01-01T00:00:00Z"}', JSON, 400, "bad_created"),
    (parse_replies, b'{"id": "r", "body": 5}', JSON, 400, "bad_field"),
    (parse_replies, b'{"id": "r", "body": "NaN", "x": NaN}', JSON, 400, "invalid_json"),
])
def test_bad_bodies_are_refused_with_a_reason(parse, body, content_type, status, reason):
    extra = (ReceiptLimits(timedelta(days=1), timedelta(days=400)),) if parse is parse_replies else ()
    with pytest.raises(BadBody) as refused:
        parse(body, content_type, {}, NOW, PRIVATE, *extra)
    assert (refused.value.status, refused.value.reason) == (status, reason)
    assert refused.value.message


def test_an_array_keeps_the_good_ones_and_names_the_bad():
    body = json.dumps([{"messageId": "a"}, {"os": "x"}, {"url": "https://b"}]).encode()
    parsed = parse_clicks(body, JSON, {}, NOW, PRIVATE)
    assert [r["message_id"] for r in parsed.records] == ["a", None]
    assert [(e.index, e.reason) for e in parsed.errors] == [(1, "not_a_click")]


def test_masking_and_hashing_rules(tmp_path):
    assert mask_msisdn("447001234123") == "44700****123"
    assert mask_msisdn("+44 (0) 7001-234123") == "44070*****123"
    assert mask_msisdn("4400001234") == "440****234"
    assert mask_msisdn("12345") == "***45" and mask_msisdn(None) is None and mask_msisdn("abc") == "***"
    key = installation_key(tmp_path)
    assert len(key) == 32 and installation_key(tmp_path) == key
    assert (tmp_path / layout.MSISDN_KEY).stat().st_mode & 0o777 == 0o600


def test_opt_out_keywords_ignore_case_and_whitespace():
    assert normalise_reply("  s t\top \n") == "STOP"
    assert parse_keywords(" stop , Stop All,,quit") == ("STOP", "STOPALL", "QUIT")
    assert opt_out_keywords({}) == ("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT")
    assert opt_out_keywords({"DLRLENS_OPT_OUT_KEYWORDS": "arret"}) == ("ARRET",)
    with pytest.raises(ValueError):
        parse_keywords(" , ")


_text = st.one_of(st.none(), st.text(max_size=40), st.integers(), st.booleans(), st.lists(st.integers(), max_size=2))
_json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                         max_size=3), max_leaves=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200) | st.dictionaries(st.sampled_from(
    ["messageId", "batchId", "clientRef", "mobile", "url", "os", "browser", "ipAddress", "id", "originator", "body",
     "created", "inReplyTo", "logicalMessageId", "other"]), _text, max_size=8).map(lambda d: json.dumps(d).encode()),
       st.sampled_from([JSON, None, "text/plain", "application/xml"]))
def test_any_body_is_stored_or_refused_never_a_crash(body, content_type):
    for parse, table in ((parse_clicks, "clicks"), (parse_replies, "replies")):
        try:
            parsed = parse(body, content_type, {"campaign": "c"}, NOW, PRIVATE)
        except BadBody as exc:
            assert 400 <= exc.status < 500 and exc.reason and exc.message
            continue
        assert parsed.records
        _fits(parsed.records, table)


_id = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF, exclude_categories=("Cs",)), min_size=1,
              max_size=30).filter(lambda s: s.strip() == s)


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({"messageId": _id}, optional={
    "batchId": _id, "clientRef": _id, "mobile": st.from_regex(r"\+?[0-9]{6,15}", fullmatch=True), "browser": _id,
    "os": _id, "country": _id, "iso2l": st.sampled_from(["UK", "FR", "US"]), "url": _id}),
       st.dictionaries(st.text(min_size=1, max_size=8).filter(lambda k: k.lower() not in (
           "messageid", "batchid", "clientref", "mobile", "browser", "os", "country", "iso2l", "ipaddress", "url")),
           _json_values, max_size=3))
def test_every_valid_click_round_trips(fields, extra):
    [record] = parse_clicks(json.dumps({**fields, **extra}).encode(), JSON, {}, NOW, PRIVATE).records
    assert record["message_id"] == fields["messageId"]
    for name, column in (("batchId", "batch_id"), ("clientRef", "client_ref"), ("browser", "browser"),
                         ("os", "os"), ("url", "url")):
        assert record[column] == fields.get(name)
    if "mobile" in fields:
        assert record["mobile_hash"] == hash_msisdn(KEY, fields["mobile"]) and record["mobile"] is None
        assert record["mobile_masked"][-2:] == fields["mobile"][-2:] and "*" in record["mobile_masked"]
    assert (json.loads(record["extra"]) if record["extra"] else {}) == extra
    _fits([record], "clicks")
