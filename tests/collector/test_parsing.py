"""The webhook body parser (collector/parsing.py): examples, one test per bad-input class,
and hypothesis properties (never crashes, round-trips every valid receipt, same receipt in
JSON and XML gives the same record).

Pure functions, no I/O besides reading Mobivate's reference files: runs in seconds.
"""

from __future__ import annotations

import csv
import json
import operator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import unquote_plus, urlencode
from xml.sax.saxutils import escape

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dlrlens
from dlrlens.store.layout import RECEIPT_SCHEMA
from collector.parsing import (
    MAX_JSON_DEPTH,
    BadBody,
    ElementError,
    ParsedBody,
    body_format,
    parse_created,
    parse_request,
    receipt_id,
    url_labels,
)
from dlrlens.statuses import CATEGORIES

UTC = timezone.utc
RECEIVED_AT = datetime(2026, 7, 1, 12, 0, 0, 250_000, tzinfo=UTC)

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
XML = "application/xml"

MOBIVATE = Path(__file__).resolve().parents[1] / "fixtures" / "mobivate"
RECEIPT_JSON = (MOBIVATE / "receipt.json").read_bytes()
RECEIPT_FORM = (MOBIVATE / "receipt-form.txt").read_bytes()
RECEIPT_XML = unquote_plus(RECEIPT_FORM.decode("ascii").strip().removeprefix("xml="))

# The oracle for status classification is the CSV itself, read here independently of
# dlrlens/statuses.py so a bug there cannot hide behind itself.
with open(Path(dlrlens.__file__).parent / "statuses.csv", newline="", encoding="utf-8") as _fh:
    _STATUS_ROWS = list(csv.DictReader(_fh))
CATEGORY_BY_NAME = {row["status"]: row["category"] for row in _STATUS_ROWS}
STATUS_BY_CODE = {int(row["code"]): (row["status"], row["category"]) for row in _STATUS_ROWS}
KNOWN_NAMES = sorted(CATEGORY_BY_NAME)

OMIT = object()  # receipt(field=OMIT) leaves the field out


# ---------------------------------------------------------------------------------------
# Helpers


def fast(examples: int):
    """Hypothesis settings sized so the whole file runs in seconds (no per-example deadline:
    the machine is noisy)."""
    return settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parse(body: bytes, content_type: str | None = JSON, labels: dict[str, str] | None = None) -> ParsedBody:
    return parse_request(body, content_type, labels or {}, RECEIVED_AT)


def parse_one(body: bytes, content_type: str | None = JSON, labels: dict[str, str] | None = None) -> dict:
    """The single record of a one-receipt body (and no element errors)."""
    result = parse(body, content_type, labels)
    assert result.errors == []
    assert len(result.records) == 1
    assert_storable(result.records)
    return result.records[0]


def refusal(body: bytes, content_type: str | None = JSON) -> BadBody:
    with pytest.raises(BadBody) as info:
        parse(body, content_type)
    return info.value


def receipt(**fields) -> dict:
    """A valid JSON receipt; ``field=None`` keeps a JSON null, ``field=OMIT`` drops the field."""
    document = {
        "deliveryMessageId": "msg-1",
        "created": "2026-07-01T10:00:00.000+00:00",
        "status": "DELIVERED",
        "statusCode": 1,
    }
    document.update(fields)
    return {key: value for key, value in document.items() if value is not OMIT}


def json_body(value) -> bytes:
    return json.dumps(value).encode("utf-8")


def xml_receipt(fields: dict) -> str:
    """A ``<deliveryreceipt>`` with one child element per field (dicts become nested children)."""
    children = []
    for name, value in fields.items():
        if isinstance(value, dict):
            inner = "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in value.items())
            children.append(f"<{name}>{inner}</{name}>")
        elif value is None:
            children.append(f"<{name}/>")
        else:
            children.append(f"<{name}>{escape(str(value))}</{name}>")
    return f"<deliveryreceipt>{''.join(children)}</deliveryreceipt>"


def form_body(xml: str) -> bytes:
    return urlencode({"xml": xml}).encode("ascii")


def _refuse_constant(name: str):
    raise AssertionError(f"stored JSON text holds the non-JSON token {name}")


def assert_storable(records: list[dict]) -> None:
    """Every record fits the storage contract: the schema's columns, required values present,
    UTC timestamps, strict JSON in the JSON-text columns, and pyarrow accepts it as a table
    of RECEIPT_SCHEMA (which refuses lone surrogates and out-of-range int32 values)."""
    required = [f.name for f in RECEIPT_SCHEMA if not f.nullable]
    for record in records:
        assert set(record) == set(RECEIPT_SCHEMA.names)
        assert all(record[name] is not None for name in required), record
        assert record["created"].utcoffset() == timedelta(0)
        assert record["category"] in CATEGORIES
        assert record["source_format"] in ("json", "xml")
        assert len(record["receipt_id"]) == 32 and int(record["receipt_id"], 16) >= 0
        for name in ("hlr", "extra", "labels"):
            if record[name] is not None:
                json.loads(record[name], parse_constant=_refuse_constant)
        for text in (v for v in record.values() if isinstance(v, str)):
            text.encode("utf-8")
    table = pa.Table.from_pylist(records, schema=RECEIPT_SCHEMA)
    assert table.num_rows == len(records)


def expected_status(name: str | None, code: int | None) -> tuple[str, str]:
    """(status, category) per statuses.csv: a given name wins, else the code, else unknown."""
    if name is not None and name.strip():
        upper = name.strip().upper()
        return upper, CATEGORY_BY_NAME.get(upper, "unknown")
    if code in STATUS_BY_CODE:
        return STATUS_BY_CODE[code]
    return f"CODE_{code}", "unknown"


# ---------------------------------------------------------------------------------------
# 1. Examples


def test_documented_json_receipt_gives_every_field():
    record = parse_one(RECEIPT_JSON, JSON, labels={"campaign": "spring", "team": "ops"})
    assert record == {
        # Pinned: stored rows are deduplicated by this id, so it must never change.
        "receipt_id": "b93f938a5c7ee4c59c6f50bb7eb411b2",
        "delivery_message_id": "5C1E07A2F4B3460D9E2B7A81C0D4F3E9",
        "batch_id": "5C1E07110B7E4A2C8D6F0A9B3C2E1D47",
        "client_reference": None,
        "created": datetime(2026, 11, 20, 14, 5, 31, tzinfo=UTC),
        "received_at": RECEIVED_AT,
        "status": "ACCEPTED",
        "status_code": 2,
        "category": "pending",
        "part": None,
        "parts": 1,
        "hlr": None,
        "extra": None,
        "campaign": "spring",
        "labels": '{"campaign":"spring","team":"ops"}',
        "source_format": "json",
    }


def test_receipt_id_is_pinned_across_releases():
    # Stored rows are deduplicated by this id: the same inputs must give the same id forever
    # (this value was first stored by the 2026-11 releases).
    assert receipt_id("9A85B95E0A000A9D2FBD46710388AD54", "ACCEPTED", 2,
                      datetime(2023, 7, 28, 3, 23, 22, tzinfo=UTC), None) == "f95739ec7a495935701e3a8289bd57c9"


EXPECTED_FORM_RECORD = {
    "receipt_id": "15d7309e2abbeb7a9d7bfb88b43e096c",
    "delivery_message_id": "7d0b9c3e-2a51-4f8e-b6d4-91e0c5a7f213",
    "batch_id": None,
    "client_reference": "order-88213-reminder",
    "created": datetime(2026, 11, 18, 9, 41, 7, 250_000, tzinfo=UTC),
    "received_at": RECEIVED_AT,
    "status": "DELIVERED",
    "status_code": 1,
    "category": "delivered",
    "part": 1,
    "parts": 1,
    "hlr": None,
    "extra": None,
    "campaign": None,
    "labels": "{}",
    "source_format": "xml",
}


@pytest.mark.parametrize("content_type", [FORM, FORM + "; charset=UTF-8", None, "text/plain"])
def test_documented_form_receipt_gives_every_field(content_type):
    assert parse_one(RECEIPT_FORM, content_type) == EXPECTED_FORM_RECORD


@pytest.mark.parametrize("content_type", [XML, "text/xml", "application/xml; charset=utf-8", None])
def test_same_receipt_as_raw_xml_body_gives_the_same_record(content_type):
    assert RECEIPT_XML.startswith("<deliveryreceipt>")
    assert parse_one(RECEIPT_XML.encode("utf-8"), content_type) == EXPECTED_FORM_RECORD


def test_xml_declaration_and_namespace_are_accepted():
    with_declaration = '<?xml version="1.0" encoding="UTF-8"?>\n' + RECEIPT_XML
    assert parse_one(with_declaration.encode(), XML) == EXPECTED_FORM_RECORD
    assert parse_one(form_body(with_declaration), FORM) == EXPECTED_FORM_RECORD
    namespaced = RECEIPT_XML.replace("<deliveryreceipt>", '<deliveryreceipt xmlns="urn:mobivate">', 1)
    assert parse_one(namespaced.encode(), XML) == EXPECTED_FORM_RECORD


@pytest.mark.parametrize(
    "created, expected",
    [
        ("2023-07-28T03:23:22.000+00:00", datetime(2023, 7, 28, 3, 23, 22, tzinfo=UTC)),
        ("2023-07-28T03:23:22.000+0000", datetime(2023, 7, 28, 3, 23, 22, tzinfo=UTC)),
        ("2023-07-28T03:23:22.000Z", datetime(2023, 7, 28, 3, 23, 22, tzinfo=UTC)),
        ("2023-07-28T03:23:22+00:00", datetime(2023, 7, 28, 3, 23, 22, tzinfo=UTC)),
        ("2023-07-28T03:23:22+0000", datetime(2023, 7, 28, 3, 23, 22, tzinfo=UTC)),
        ("2023-07-28T03:23:22Z", datetime(2023, 7, 28, 3, 23, 22, tzinfo=UTC)),
        ("2023-07-28T03:23:22.915Z", datetime(2023, 7, 28, 3, 23, 22, 915_000, tzinfo=UTC)),
        ("2023-07-28T05:23:22.915+02:00", datetime(2023, 7, 28, 3, 23, 22, 915_000, tzinfo=UTC)),
        ("2023-07-27T22:53:22-0430", datetime(2023, 7, 28, 3, 23, 22, tzinfo=UTC)),
        ("2023-07-28T08:53:22.5+05:30", datetime(2023, 7, 28, 3, 23, 22, 500_000, tzinfo=UTC)),
        # An offset that moves the instant to the previous UTC day (the partition key).
        ("2023-07-28T01:00:00+03:00", datetime(2023, 7, 27, 22, 0, tzinfo=UTC)),
        # Nanoseconds are cut to microseconds, the storage precision.
        ("2023-07-28T03:23:22.123456789Z", datetime(2023, 7, 28, 3, 23, 22, 123_456, tzinfo=UTC)),
        # No offset: taken as UTC.
        ("2023-07-28 03:23:22", datetime(2023, 7, 28, 3, 23, 22, tzinfo=UTC)),
        ("  2023-07-28T03:23:22Z  ", datetime(2023, 7, 28, 3, 23, 22, tzinfo=UTC)),
    ],
)
def test_created_in_every_offset_format_is_the_same_utc_instant(created, expected):
    record = parse_one(json_body(receipt(created=created)))
    assert record["created"] == expected
    assert record["created"].utcoffset() == timedelta(0)
    direct = parse_created(created)
    assert (direct, direct.utcoffset()) == (expected, timedelta(0))


def test_same_instant_in_different_offsets_has_the_same_receipt_id():
    ids = {
        parse_one(json_body(receipt(created=text)))["receipt_id"]
        for text in ("2023-07-28T03:23:22.000+00:00", "2023-07-28T03:23:22Z",
                     "2023-07-28T05:23:22+0200", "2023-07-27T23:23:22.000-04:00")
    }
    assert len(ids) == 1


@pytest.mark.parametrize("name", ["delivered", "Delivered", "dElIvErEd", "  DELIVERED  ", "DELIVERED"])
def test_status_name_in_any_case_is_recognised(name):
    record = parse_one(json_body(receipt(status=name, statusCode=OMIT)))
    assert (record["status"], record["category"], record["status_code"]) == ("DELIVERED", "delivered", None)


@pytest.mark.parametrize("name", KNOWN_NAMES)
def test_every_documented_status_gets_its_csv_category(name):
    record = parse_one(json_body(receipt(status=name.lower(), statusCode=OMIT)))
    assert (record["status"], record["category"]) == (name, CATEGORY_BY_NAME[name])


@pytest.mark.parametrize("code", [5, "5", " 5 ", "+5", 5.0])
def test_status_code_as_number_or_numeric_string(code):
    record = parse_one(json_body(receipt(status=OMIT, statusCode=code)))
    assert (record["status"], record["status_code"], record["category"]) == ("UNDELIVERABLE", 5, "failed")
    assert record["extra"] is None


@pytest.mark.parametrize("code", sorted(STATUS_BY_CODE))
def test_every_documented_code_alone_gets_its_name_and_category(code):
    record = parse_one(json_body(receipt(status=OMIT, statusCode=str(code))))
    assert (record["status"], record["category"]) == STATUS_BY_CODE[code]
    assert record["status_code"] == code


def test_unknown_status_name_is_stored_as_unknown_not_refused():
    record = parse_one(json_body(receipt(status="Carrier_Said_Maybe", statusCode=99)))
    assert (record["status"], record["status_code"], record["category"]) == ("CARRIER_SAID_MAYBE", 99, "unknown")


def test_unknown_name_wins_over_a_known_code():
    record = parse_one(json_body(receipt(status="NEW_STATE", statusCode=1)))
    assert (record["status"], record["status_code"], record["category"]) == ("NEW_STATE", 1, "unknown")


@pytest.mark.parametrize("code", [13, 23, 27, 99, 0, -1])
def test_unknown_code_alone_is_stored_as_unknown_not_refused(code):
    record = parse_one(json_body(receipt(status=OMIT, statusCode=code)))
    assert (record["status"], record["status_code"], record["category"]) == (f"CODE_{code}", code, "unknown")


@pytest.mark.parametrize("code", ["abc", "2.5", 2.5, "99999999999", 2**40, True, [1]])
def test_non_numeric_or_out_of_range_code_is_kept_in_extra(code):
    record = parse_one(json_body(receipt(status="EXPIRED", statusCode=code)))
    assert (record["status"], record["status_code"], record["category"]) == ("EXPIRED", None, "failed")
    assert json.loads(record["extra"]) == {"statusCode": code}


def test_receipt_with_neither_status_nor_code_is_refused():
    error = refusal(json_body(receipt(status=OMIT, statusCode=OMIT)))
    assert (error.status, error.reason) == (400, "missing_status")
    error = refusal(json_body(receipt(status="  ", statusCode="n/a")))
    assert (error.status, error.reason) == (400, "missing_status")


def test_extra_fields_are_kept_as_json_text():
    added = {"network": "Vodafone AU", "price": 0.055, "flags": [1, "two", None], "meta": {"a": {"b": True}}}
    record = parse_one(json_body(receipt(**added)))
    assert json.loads(record["extra"]) == added
    assert record["status"] == "DELIVERED"


def test_known_fields_match_case_insensitively_and_the_rest_go_to_extra():
    document = {"DELIVERYMESSAGEID": "m-9", "Created": "2026-07-01T10:00:00Z", "STATUS": "rejected",
                "statuscode": "7", "BatchId": "b-1", "Parts": "2", "Vendor": "x"}
    record = parse_one(json_body(document))
    assert (record["delivery_message_id"], record["status"], record["status_code"], record["batch_id"],
            record["parts"]) == ("m-9", "REJECTED", 7, "b-1", 2)
    assert json.loads(record["extra"]) == {"Vendor": "x"}


def test_xml_extra_field_is_kept():
    xml = RECEIPT_XML.replace("</deliveryreceipt>", "<network>Telstra</network></deliveryreceipt>")
    record = parse_one(xml.encode(), XML)
    assert json.loads(record["extra"]) == {"network": "Telstra"}


def test_hlr_object_is_kept_as_json_text():
    hlr = {"mccmnc": "50501", "ported": False, "network": {"name": "Telstra", "country": "AU"}}
    record = parse_one(json_body(receipt(hlr=hlr)))
    assert json.loads(record["hlr"]) == hlr
    assert record["extra"] is None


def test_xml_hlr_element_is_kept_as_json_text():
    xml = xml_receipt({"deliveryMessageId": "m-1", "created": "2026-07-01T10:00:00Z", "status": "DELIVERED",
                       "hlr": {"mccmnc": "50501", "ported": "false"}})
    record = parse_one(xml.encode(), XML)
    assert json.loads(record["hlr"]) == {"mccmnc": "50501", "ported": "false"}


def test_labels_are_every_query_parameter_but_the_token():
    labels = url_labels([("token", "s3cret"), ("campaign", " spring "), ("team", "ops"),
                         ("TOKEN", "other-secret"), ("campaign", "second"), ("", "nameless")])
    assert labels == {"campaign": "spring", "team": "ops"}
    record = parse_one(json_body(receipt()), labels=labels)
    assert record["campaign"] == "spring"
    assert json.loads(record["labels"]) == {"campaign": "spring", "team": "ops"}
    assert not any("secret" in str(value) for value in record.values())


def test_labels_are_bounded_in_count_and_length():
    labels = url_labels([(f"k{i}", "v" * 1000) for i in range(100)])
    assert len(labels) == 32
    assert {len(value) for value in labels.values()} == {256}


def test_no_or_empty_campaign_gives_null_campaign_and_empty_labels_object():
    assert parse_one(json_body(receipt()))["campaign"] is None
    assert parse_one(json_body(receipt()))["labels"] == "{}"
    record = parse_one(json_body(receipt()), labels=url_labels([("campaign", "  ")]))
    assert record["campaign"] is None
    assert json.loads(record["labels"]) == {"campaign": ""}


def test_receipt_id_is_the_same_for_the_same_receipt_in_json_and_xml():
    fields = {"deliveryMessageId": "m-42", "batchId": "b-7", "created": "2026-07-01T10:00:00.123Z",
              "status": "EXPIRED", "statusCode": 3, "part": 1, "parts": 2}
    from_json = parse_one(json_body(fields))
    from_xml = parse_one(xml_receipt(fields).encode(), XML)
    from_form = parse_one(form_body(xml_receipt(fields)), FORM)
    assert from_json["receipt_id"] == from_xml["receipt_id"] == from_form["receipt_id"]
    assert from_json["receipt_id"] == receipt_id(
        "m-42", "EXPIRED", 3, datetime(2026, 7, 1, 10, 0, 0, 123_000, tzinfo=UTC), 1)
    # The documented pair: receipt-form.txt's receipt rendered as JSON has its pinned id.
    as_json = {"created": "2026-11-18T09:41:07.250Z", "deliveryMessageId": "7d0b9c3e-2a51-4f8e-b6d4-91e0c5a7f213",
               "clientReference": "order-88213-reminder", "status": "DELIVERED",
               "statusCode": 1, "part": 1, "parts": 1}
    assert parse_one(json_body(as_json))["receipt_id"] == EXPECTED_FORM_RECORD["receipt_id"]


@pytest.mark.parametrize(
    "change",
    [
        {"status": "UNDELIVERABLE", "statusCode": 5},
        {"statusCode": 2},
        {"created": "2026-07-01T10:00:00.001+00:00"},
        {"created": "2026-07-01T10:00:00.000+01:00"},
        {"deliveryMessageId": "msg-2"},
        {"part": 2},
    ],
)
def test_receipt_id_differs_when_the_receipt_differs(change):
    assert parse_one(json_body(receipt()))["receipt_id"] != parse_one(json_body(receipt(**change)))["receipt_id"]


def test_receipt_id_ignores_labels_arrival_time_and_extra_fields():
    plain = parse_one(json_body(receipt()))
    labelled = parse_request(json_body(receipt(vendor="x", batchId="b")), JSON, {"campaign": "c"},
                             RECEIVED_AT + timedelta(hours=5)).records[0]
    assert plain["receipt_id"] == labelled["receipt_id"]


def test_json_array_keeps_good_receipts_and_reports_bad_elements_by_index():
    body = json_body([
        receipt(deliveryMessageId="good-0"),
        receipt(deliveryMessageId=OMIT),
        42,
        receipt(deliveryMessageId="good-3", status="expired", statusCode=OMIT),
        receipt(deliveryMessageId="bad-4", created="yesterday"),
        receipt(deliveryMessageId="bad-5", created=OMIT),
        receipt(deliveryMessageId="bad-6", status={"name": "DELIVERED"}),
    ])
    result = parse(body)
    assert_storable(result.records)
    assert [(r["delivery_message_id"], r["status"]) for r in result.records] == [
        ("good-0", "DELIVERED"), ("good-3", "EXPIRED")]
    assert [(e.index, e.reason) for e in result.errors] == [
        (1, "missing_message_id"), (2, "not_a_receipt"), (4, "bad_created"), (5, "bad_created"), (6, "bad_field")]
    assert all(isinstance(e, ElementError) and e.message for e in result.errors)
    assert result.errors[2].as_dict() == {"index": 4, "reason": "bad_created", "message": result.errors[2].message}
    assert "yesterday" in result.errors[2].message


def test_xml_with_several_receipts_keeps_good_ones_and_reports_bad_ones():
    good = {"deliveryMessageId": "x-0", "created": "2026-07-01T10:00:00Z", "status": "DELIVERED"}
    bad = {"deliveryMessageId": "x-1", "created": "not a time", "status": "DELIVERED"}
    other = {"deliveryMessageId": "x-2", "created": "2026-07-01T11:00:00+0100", "statusCode": "12"}
    xml = f"<receipts>{xml_receipt(good)}<note>ignored</note>{xml_receipt(bad)}{xml_receipt(other)}</receipts>"
    result = parse(xml.encode(), XML)
    assert_storable(result.records)
    assert [(r["delivery_message_id"], r["status"], r["created"]) for r in result.records] == [
        ("x-0", "DELIVERED", datetime(2026, 7, 1, 10, tzinfo=UTC)),
        ("x-2", "FAILED_NOROUTE", datetime(2026, 7, 1, 10, tzinfo=UTC))]
    assert [(e.index, e.reason) for e in result.errors] == [(1, "bad_created")]


def test_array_where_every_element_is_bad_is_refused_with_the_first_reason():
    error = refusal(json_body([receipt(deliveryMessageId=OMIT), receipt(created="soon"), "x"]))
    assert (error.status, error.reason) == (400, "missing_message_id")
    assert "(element 0)" in error.message


def test_single_bad_receipt_is_refused_with_its_reason():
    error = refusal(json_body(receipt(created="31/12/2026")))
    assert (error.status, error.reason) == (400, "bad_created")
    assert "31/12/2026" in error.message and "element" not in error.message


@pytest.mark.parametrize(
    "content_type, body, expected",
    [
        ("application/json; charset=utf-8", b"{}", "json"),
        ("text/json", b"{}", "json"),
        ("application/vnd.mobivate+json", b"{}", "json"),
        ("APPLICATION/JSON", b"<x/>", "json"),
        ("text/xml", b"{}", "xml"),
        ("application/soap+xml", b"{}", "xml"),
        (FORM, b"{}", "form"),
        (None, b"  \n[{}]", "json"),
        ("text/plain", b"\xef\xbb\xbf{}", "json"),
        ("", b"<deliveryreceipt/>", "xml"),
        ("text/plain; charset=us-ascii", b"xml=%3C", "form"),
    ],
)
def test_body_format_from_content_type_or_sniffed(content_type, body, expected):
    assert body_format(content_type, body) == expected


def test_json_body_with_byte_order_mark_is_read():
    record = parse_one(b"\xef\xbb\xbf" + RECEIPT_JSON, None)
    assert record["delivery_message_id"] == "5C1E07A2F4B3460D9E2B7A81C0D4F3E9"
    assert parse_one(b"\xef\xbb\xbf" + RECEIPT_JSON, JSON)["receipt_id"] == record["receipt_id"]


def test_json_null_optional_fields_are_null():
    record = parse_one(json_body(receipt(batchId=None, clientReference=None, part=None, parts=None, hlr=None)))
    assert [record[k] for k in ("batch_id", "client_reference", "part", "parts", "hlr", "extra")] == [None] * 6


def test_numeric_ids_are_stored_as_text():
    record = parse_one(json_body(receipt(deliveryMessageId=12345, batchId=678)))
    assert (record["delivery_message_id"], record["batch_id"]) == ("12345", "678")


# ---------------------------------------------------------------------------------------
# 2. Bad input, one class per test: each refused with a 4xx status and a precise reason


def test_invalid_json_is_refused():
    error = refusal(b'{"deliveryMessageId": "m-1", "created": ')
    assert (error.status, error.reason) == (400, "invalid_json")


def test_invalid_utf8_is_refused():
    error = refusal(b'{"deliveryMessageId": "m-\xff\xfe", "created": "2026-07-01T10:00:00Z", "status": "X"}')
    assert (error.status, error.reason) == (400, "invalid_json")
    assert "UTF-8" in error.message


def test_invalid_utf8_in_form_body_is_refused():
    error = refusal(b"xml=%3Cdeliveryreceipt%3E\xff", FORM)
    assert (error.status, error.reason) == (400, "invalid_form")


def test_invalid_xml_is_refused():
    error = refusal(b"<deliveryreceipt><created>2026-07-01</deliveryreceipt>", XML)
    assert (error.status, error.reason) == (400, "invalid_xml")
    error = refusal(form_body("<deliveryreceipt><created>"), FORM)
    assert (error.status, error.reason) == (400, "invalid_xml")


@pytest.mark.parametrize("document", ["42", '"a receipt"', "[]", "null", "true", "-0.5"])
def test_json_that_is_not_a_receipt_is_refused(document):
    error = refusal(document.encode())
    assert (error.status, error.reason) == (400, "not_a_receipt")


def test_json_array_of_non_objects_is_refused():
    error = refusal(b'[1, "two", null, [ ]]')
    assert (error.status, error.reason) == (400, "not_a_receipt")


def test_xml_root_that_is_not_a_deliveryreceipt_is_refused():
    error = refusal(b"<receipt><deliveryMessageId>m</deliveryMessageId></receipt>", XML)
    assert (error.status, error.reason) == (400, "not_a_receipt")
    assert "<receipt>" in error.message


@pytest.mark.parametrize("body", [b"foo=bar&baz=1", b"xml=", b"xml=+++", b"XML=%3Cdeliveryreceipt%2F%3E"])
def test_form_without_xml_field_is_refused(body):
    error = refusal(body, FORM)
    assert (error.status, error.reason) == (400, "not_a_receipt")


@pytest.mark.parametrize("message_id", [OMIT, None, "", "   "])
def test_receipt_without_delivery_message_id_is_refused(message_id):
    error = refusal(json_body(receipt(deliveryMessageId=message_id)))
    assert (error.status, error.reason) == (400, "missing_message_id")


def test_xml_receipt_without_delivery_message_id_is_refused():
    xml = xml_receipt({"created": "2026-07-01T10:00:00Z", "status": "DELIVERED", "deliveryMessageId": None})
    error = refusal(xml.encode(), XML)
    assert (error.status, error.reason) == (400, "missing_message_id")


@pytest.mark.parametrize(
    "created",
    ["yesterday", "2026-13-45T99:99:99Z", "2026-07-01", "1751364000", 1751364000, "2026-07-01T10:00:00+25:00",
     ["2026-07-01T10:00:00Z"], "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"],
)
def test_unparseable_created_is_refused(created):
    error = refusal(json_body(receipt(created=created)))
    assert (error.status, error.reason) == (400, "bad_created")


@pytest.mark.parametrize("created", [OMIT, None, ""])
def test_missing_created_is_refused(created):
    error = refusal(json_body(receipt(created=created)))
    assert (error.status, error.reason) == (400, "bad_created")


@pytest.mark.parametrize("content_type", ["application/pdf", "multipart/form-data; boundary=x", "image/png",
                                          "application/octet-stream", "garbage"])
def test_unsupported_content_type_is_refused_with_415(content_type):
    error = refusal(RECEIPT_JSON, content_type)
    assert (error.status, error.reason) == (415, "unsupported_media_type")


def test_unrecognisable_body_without_content_type_is_refused_with_415():
    error = refusal(b"deliveryMessageId=m-1", None)
    assert (error.status, error.reason) == (415, "unsupported_media_type")


@pytest.mark.parametrize("body", [b"", b"   \r\n\t "])
def test_empty_body_is_refused(body):
    error = refusal(body, JSON)
    assert (error.status, error.reason) == (400, "empty_body")


def test_too_long_message_id_is_refused():
    error = refusal(json_body(receipt(deliveryMessageId="m" * 257)))
    assert (error.status, error.reason) == (400, "bad_field")
    assert parse_one(json_body(receipt(deliveryMessageId="m" * 256)))["delivery_message_id"] == "m" * 256


BILLION_LAUGHS = (
    '<?xml version="1.0"?>\n<!DOCTYPE deliveryreceipt [\n<!ENTITY lol "lol">\n'
    + "".join(f'<!ENTITY lol{i} "{("&lol%s;" % (i - 1 if i > 1 else "")) * 10}">\n' for i in range(1, 10))
    + "]>\n<deliveryreceipt><deliveryMessageId>&lol9;</deliveryMessageId>"
    "<created>2026-07-01T10:00:00Z</created><status>DELIVERED</status></deliveryreceipt>"
)
EXTERNAL_ENTITY = (
    '<?xml version="1.0"?>\n<!DOCTYPE deliveryreceipt [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
    "<deliveryreceipt><deliveryMessageId>&xxe;</deliveryMessageId>"
    "<created>2026-07-01T10:00:00Z</created><status>DELIVERED</status></deliveryreceipt>"
)
EXTERNAL_DTD = (
    '<?xml version="1.0"?>\n<!DOCTYPE deliveryreceipt SYSTEM "http://127.0.0.1:9/receipt.dtd">\n'
    + RECEIPT_XML
)


@pytest.mark.parametrize("xml", [BILLION_LAUGHS, EXTERNAL_ENTITY, EXTERNAL_DTD],
                         ids=["billion-laughs", "external-entity", "external-dtd"])
@pytest.mark.parametrize("wrapping", ["raw", "form"])
def test_entity_expansion_and_external_entities_are_refused(xml, wrapping):
    assert "&lol8;" in BILLION_LAUGHS  # the fixture really nests the expansion
    body, content_type = (xml.encode(), XML) if wrapping == "raw" else (form_body(xml), FORM)
    error = refusal(body, content_type)
    assert (error.status, error.reason) == (400, "forbidden_xml")
    assert "root:" not in error.message


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"a":' * 100_000, b"[" * 50_000 + b"]" * 50_000])
def test_deeply_nested_json_is_refused_not_a_crash(body):
    error = refusal(body)
    assert (error.status, error.reason) == (400, "invalid_json")


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH, 100, 985, 990, 995])
def test_nesting_inside_an_otherwise_valid_receipt_is_bounded(depth):
    deep = "[" * depth + "]" * depth
    body = json_body(receipt()).replace(b"{", b'{"hlr": ' + deep.encode() + b", ", 1)
    error = refusal(body)
    assert (error.status, error.reason) == (400, "invalid_json")


def test_moderate_nesting_inside_a_receipt_is_kept():
    # receipt object (1) -> hlr (2) -> ... : MAX_JSON_DEPTH levels in all is accepted.
    inner = "[" * (MAX_JSON_DEPTH - 2) + "]" * (MAX_JSON_DEPTH - 2)
    body = json_body(receipt()).replace(b"{", b'{"hlr": {"a": ' + inner.encode() + b"}, ", 1)
    record = parse_one(body)
    assert json.loads(record["hlr"]) == {"a": json.loads(inner)}


def test_deeply_nested_xml_is_refused_not_a_crash():
    error = refusal(b"<a>" * 100_000, XML)
    assert (error.status, error.reason) == (400, "invalid_xml")
    error = refusal(b"<a>" * 50_000 + b"</a>" * 50_000, XML)
    assert (error.status, error.reason) == (400, "not_a_receipt")


def test_huge_integer_literal_is_refused():
    body = json_body(receipt()).replace(b'"statusCode": 1', b'"statusCode": ' + b"9" * 5000)
    error = refusal(body)
    assert (error.status, error.reason) == (400, "invalid_json")


def test_large_but_parseable_integer_is_kept_in_extra():
    body = json_body(receipt()).replace(b'"statusCode": 1', b'"statusCode": ' + b"9" * 30)
    record = parse_one(body)
    assert (record["status"], record["status_code"]) == ("DELIVERED", None)
    assert json.loads(record["extra"]) == {"statusCode": int("9" * 30)}


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400"])
def test_nan_infinity_and_overflowing_numbers_are_refused(token):
    body = json_body(receipt()).replace(b'"statusCode": 1', b'"statusCode": ' + token)
    error = refusal(body)
    assert (error.status, error.reason) == (400, "invalid_json")


@pytest.mark.parametrize(
    "body, content_type, reason",
    [
        (b"\x00" * 16, JSON, "invalid_json"),
        (RECEIPT_JSON + b"\x00", JSON, "invalid_json"),
        (RECEIPT_JSON.replace(b'"ACCEPTED"', b'"ACC\x00EPTED"'), JSON, "invalid_json"),
        (RECEIPT_XML.replace("DELIVERED", "DELI\x00VERED").encode(), XML, "invalid_xml"),
        (RECEIPT_FORM.replace(b"DELIVERED", b"DELI%00VERED"), FORM, "invalid_xml"),
    ],
)
def test_nul_bytes_are_refused(body, content_type, reason):
    error = refusal(body, content_type)
    assert (error.status, error.reason) == (400, reason)


def test_nul_bytes_without_content_type_are_refused_with_415():
    error = refusal(b"\x00" * 16, None)
    assert (error.status, error.reason) == (415, "unsupported_media_type")


@pytest.mark.parametrize(
    "body",
    [
        json_body(receipt(deliveryMessageId="m-\ud800")),  # \ud800 escape
        json_body(receipt(vendorNote="\udfff")),  # in an extra field
        json_body(receipt(hlr={"\udc00key": 1})),  # in a key
        json.dumps(receipt(batchId="b-\udbff"), ensure_ascii=False).encode("utf-8", "surrogatepass"),  # raw bytes
    ],
)
def test_lone_surrogates_are_refused(body):
    # Such text cannot be written to Parquet: accepting it would make its log segment unflushable.
    error = refusal(body)
    assert (error.status, error.reason) == (400, "invalid_json")


def test_escaped_nul_in_a_json_string_is_valid_text_and_kept():
    record = parse_one(json_body(receipt(deliveryMessageId="a\x00b")))
    assert record["delivery_message_id"] == "a\x00b"


# ---------------------------------------------------------------------------------------
# 3. Properties

CONTENT_TYPES = st.one_of(
    st.sampled_from([JSON, FORM, XML, "text/xml", "text/plain", None, "", "garbage", "application/json; charset=x",
                     "application/problem+json", "APPLICATION/XML", "multipart/form-data; boundary=z", ";;;"]),
    st.text(max_size=30),
)
VALID_BODIES = [RECEIPT_JSON, RECEIPT_FORM, RECEIPT_XML.encode(), json_body([receipt(), receipt(part=2)]),
                f"<r>{RECEIPT_XML}{RECEIPT_XML}</r>".encode()]


@st.composite
def mutated_bodies(draw) -> bytes:
    """A valid body with a few bytes flipped, inserted or deleted: near-misses reach deep
    into the parsers, where random bytes rarely get."""
    body = bytearray(draw(st.sampled_from(VALID_BODIES)))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(body)))
        action = draw(st.sampled_from(["replace", "insert", "delete"]))
        if action == "insert" or position == len(body):
            body[position:position] = draw(st.binary(min_size=1, max_size=4))
        elif action == "replace":
            body[position] = draw(st.integers(0, 255))
        else:
            del body[position:position + draw(st.integers(1, 8))]
    return bytes(body)


ANY_BYTES = st.one_of(
    st.binary(max_size=300),
    st.builds(operator.add,
              st.sampled_from([b"{", b"[", b"<", b"xml=", b"<deliveryreceipt>", b"\xef\xbb\xbf",
                               b'{"deliveryMessageId":"m","created":"2026-07-01T10:00:00Z","status":']),
              st.binary(max_size=200)),
    mutated_bodies(),
    # Number literals json.dumps never writes (1e400, -0E-0, 1.5e+308) inside a valid receipt.
    st.from_regex(rb"\A-?(0|[1-9][0-9]{0,3})(\.[0-9]{1,4})?([eE][+-]?[0-9]{1,4})?\Z").map(
        lambda literal: b'{"deliveryMessageId":"m","created":"2026-07-01T10:00:00Z","status":"X","n":' + literal + b"}"),
)


def assert_parsed_or_refused(body: bytes, content_type: str | None, element_count: int | None = None) -> None:
    """The parser's whole contract for arbitrary input: a usable result or a 4xx BadBody."""
    try:
        result = parse(body, content_type)
    except BadBody as error:
        assert 400 <= error.status < 500
        assert isinstance(error.reason, str) and error.reason
        assert isinstance(error.message, str) and error.message
        return
    assert isinstance(result, ParsedBody)
    assert result.records, "a ParsedBody always holds at least one record"
    assert_storable(result.records)
    indexes = [e.index for e in result.errors]
    assert indexes == sorted(set(indexes))
    if element_count is not None:
        assert len(result.records) + len(result.errors) == element_count
        assert all(0 <= i < element_count for i in indexes)


@fast(500)
@given(body=ANY_BYTES, content_type=CONTENT_TYPES)
def test_property_any_bytes_are_parsed_or_refused_with_4xx(body, content_type):
    assert_parsed_or_refused(body, content_type)


SURROGATE = st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff"])
ANY_TEXT = st.one_of(
    st.text(max_size=12),
    st.builds(operator.add, st.text(max_size=4), SURROGATE),
    st.sampled_from(["2026-07-01T10:00:00Z", "2026-07-01 10:00", "0001-01-01T00:00:00+01:00",
                     "9999-12-31T23:59:59.999999999-23:59", "DELIVERED", "expired", "  ", "1", "+7", "2147483648"]),
    st.builds(operator.add, st.just("2026-07-01T10:00"), st.text(max_size=12)),
)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 40), st.integers(), st.integers(-2**80, 2**80),
                    st.floats(), ANY_TEXT)
RECEIPT_KEYS = ["deliveryMessageId", "batchId", "clientReference", "created", "status", "statusCode", "part",
                "parts", "hlr", "DELIVERYMESSAGEID", "Status"]
KEYS = st.one_of(st.sampled_from(RECEIPT_KEYS), st.text(max_size=8), SURROGATE)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(KEYS, children, max_size=6)),
    max_leaves=20,
)
@st.composite
def receiptish(draw) -> dict:
    """A valid receipt with a few fields dropped and a few replaced or added with any value:
    records usually come out (and get checked), and every normalisation path meets odd values."""
    document = receipt()
    for key in draw(st.sets(st.sampled_from(sorted(document)), max_size=2)):
        del document[key]
    document.update(draw(st.dictionaries(st.one_of(st.sampled_from(RECEIPT_KEYS + ["vendor"]), KEYS),
                                         st.one_of(ANY_TEXT, JSON_VALUES), max_size=3)))
    return document


RECEIPTISH = receiptish()


def encode_json(value, ascii_only: bool) -> bytes:
    """JSON text as a sender might produce it: \\u escapes, or raw UTF-8 (lone surrogates too)."""
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@fast(400)
@given(value=st.one_of(JSON_VALUES, RECEIPTISH, st.lists(st.one_of(RECEIPTISH, JSON_VALUES), max_size=4)),
       ascii_only=st.booleans(), content_type=st.sampled_from([JSON, None, "text/plain"]))
def test_property_any_json_value_is_parsed_or_refused_with_4xx(value, ascii_only, content_type):
    count = len(value) if isinstance(value, list) else 1
    assert_parsed_or_refused(encode_json(value, ascii_only), content_type, element_count=count)


# Valid receipts ------------------------------------------------------------------------

# XML-safe printable text (letters, digits, punctuation, symbols, spaces): ids survive both
# JSON and XML renderings unchanged, apart from the documented trimming.
ID_TEXT = st.text(st.characters(categories=("L", "N", "P", "S", "Zs")), min_size=1, max_size=40).filter(str.strip)


def random_case(name: str):
    return st.lists(st.booleans(), min_size=len(name), max_size=len(name)).map(
        lambda lower: "".join(c.lower() if flip else c for c, flip in zip(name, lower)))


STATUS_NAMES = st.one_of(
    st.sampled_from(KNOWN_NAMES).flatmap(random_case),
    st.text(st.characters(categories=("L", "N"), include_characters="_-"), min_size=1, max_size=30),
)
STATUS_CODES = st.integers(0, 40)
OFFSET_STYLES = ("+HH:MM", "+HHMM", "Z", "none")
PRECISIONS = ("s", "ms", "us")


def render_created(moment: datetime, style: str, precision: str) -> str:
    """``moment`` (aware) as Mobivate-style ISO 8601 text; Z and none render its UTC value."""
    if style in ("Z", "none"):
        moment = moment.astimezone(UTC)
    text = (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
            f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}")
    if precision == "ms":
        text += f".{moment.microsecond // 1000:03d}"
    elif precision == "us":
        text += f".{moment.microsecond:06d}"
    if style == "Z":
        return text + "Z"
    if style == "none":
        return text
    minutes = int(moment.utcoffset().total_seconds()) // 60
    sign, minutes = ("+" if minutes >= 0 else "-"), abs(minutes)
    separator = ":" if style == "+HH:MM" else ""
    return f"{text}{sign}{minutes // 60:02d}{separator}{minutes % 60:02d}"


@st.composite
def created_values(draw) -> tuple[str, datetime]:
    """(created text, the UTC instant it denotes at the rendered precision)."""
    local = draw(st.datetimes(min_value=datetime(1900, 1, 2), max_value=datetime(9998, 12, 30)))
    offset = timezone(timedelta(minutes=draw(st.integers(-14 * 60, 14 * 60))))
    precision = draw(st.sampled_from(PRECISIONS))
    if precision == "s":
        local = local.replace(microsecond=0)
    elif precision == "ms":
        local = local.replace(microsecond=local.microsecond // 1000 * 1000)
    moment = local.replace(tzinfo=offset)
    return render_created(moment, draw(st.sampled_from(OFFSET_STYLES)), precision), moment.astimezone(UTC)


@st.composite
def valid_receipts(draw) -> tuple[dict, dict]:
    """(receipt fields as Mobivate would send them, the record values they must give)."""
    name = draw(st.none() | STATUS_NAMES)
    code = draw(STATUS_CODES if name is None else st.none() | STATUS_CODES)
    created_text, created = draw(created_values())
    message_id = draw(ID_TEXT)
    part, parts = draw(st.none() | st.integers(1, 9)), draw(st.none() | st.integers(1, 9))
    batch_id = draw(st.none() | ID_TEXT)
    fields = {"deliveryMessageId": message_id, "created": created_text}
    if name is not None:
        fields["status"] = name
    if code is not None:
        fields["statusCode"] = draw(st.sampled_from([code, str(code)]))
    for key, value in (("part", part), ("parts", parts), ("batchId", batch_id)):
        if value is not None:
            fields[key] = value
    status, category = expected_status(name, code)
    expected = {"delivery_message_id": message_id.strip(), "created": created, "status": status,
                "category": category, "status_code": code, "part": part, "parts": parts,
                "batch_id": batch_id.strip() if batch_id else None}
    return fields, expected


@fast(300)
@given(generated=valid_receipts())
def test_property_valid_receipt_gives_exactly_one_exact_record(generated):
    fields, expected = generated
    record = parse_one(json_body(fields))
    assert {key: record[key] for key in expected} == expected
    assert record["created"].utcoffset() == timedelta(0)
    assert record["source_format"] == "json"
    # Deterministic, and independent of how the instant was written.
    assert parse_one(json_body(fields))["receipt_id"] == record["receipt_id"]
    in_utc = dict(fields, created=render_created(expected["created"], "Z", "us"))
    assert parse_one(json_body(in_utc))["receipt_id"] == record["receipt_id"]
    assert record["receipt_id"] == receipt_id(expected["delivery_message_id"], expected["status"],
                                              expected["status_code"], expected["created"], expected["part"])


@fast(200)
@given(generated=valid_receipts(), as_form=st.booleans())
def test_property_xml_and_json_renderings_give_the_same_receipt(generated, as_form):
    fields, expected = generated
    from_json = parse_one(json_body(fields))
    xml = xml_receipt(fields)
    from_xml = parse_one(form_body(xml), FORM) if as_form else parse_one(xml.encode("utf-8"), XML)
    assert from_xml["source_format"] == "xml"
    same = ("receipt_id", "status", "category", "created", "status_code", "delivery_message_id",
            "batch_id", "part", "parts")
    assert {k: from_xml[k] for k in same} == {k: from_json[k] for k in same}
    assert from_xml["created"] == expected["created"]


def test_unencoded_plus_in_a_form_body_still_parses_the_offset():
    body = (b"xml=<deliveryreceipt><created>2026-06-18T11:00:15.915+00:00</created>"
            b"<deliveryMessageId>plus-1</deliveryMessageId><status>DELIVERED</status></deliveryreceipt>")
    [record] = parse_request(body, "application/x-www-form-urlencoded", {}, RECEIVED_AT).records
    assert record["created"] == datetime(2026, 6, 18, 11, 0, 15, 915000, tzinfo=timezone.utc)


@pytest.mark.parametrize("content_type", [None, "application/json", "text/csv"])
def test_an_empty_body_is_refused_as_empty_whatever_its_content_type(content_type):
    with pytest.raises(BadBody) as refused:
        parse_request(b"  \n", content_type, {}, RECEIVED_AT)
    assert (refused.value.status, refused.value.reason) == (400, "empty_body")
