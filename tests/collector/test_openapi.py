"""The OpenAPI description (``GET /openapi.json``) against the real collector.

Schemathesis generates requests from the document the running collector serves (real
gunicorn on a loopback port, real HTTP) and checks every answer: a documented status, never
a 5xx, the documented content type, headers and body schema, 405 with ``Allow`` for
undeclared methods. On top, every schema-valid JSON or XML receipt must be stored (200/207).
The other tests keep the document honest about the code: every route, every refusal reason
the parser can give, the README's refusal table.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import jsonschema_rs
import pytest
import requests
import schemathesis
from hypothesis import settings
from openapi_spec_validator import validate as validate_openapi_document

from collector import openapi
from collector.settings import SETTINGS_TABLE

REPO = Path(__file__).resolve().parents[2]
# Generated cases per operation in the fuzzing phase (schemathesis adds its examples and
# coverage cases); bounded so the whole file takes about half a minute on a quiet machine.
MAX_EXAMPLES = 80
RECEIVING = ("application/json", "application/xml")

# (method, path template, media type, status, error or status field) of every answer.
ANSWERS: Counter = Counter()


# Schema-valid created values span years 1 to 9999; the window around the arrival time (and
# the days of one request) cannot be schema, so it is off here and tested in test_hostile_input.
# The document does not depend on these settings.
NO_CLOCK_BOUNDS = {"DLRLENS_CREATED_MAX_AHEAD": "0", "DLRLENS_CREATED_MAX_AGE": "0", "DLRLENS_MAX_DAYS_PER_REQUEST": "0"}


@pytest.fixture(scope="module")
def collector(collectors):
    return collectors("openapi", workers=2, flush_seconds=0.3, env=NO_CLOCK_BOUNDS)


@pytest.fixture(scope="module")
def served_document(collector) -> dict:
    answer = requests.get(collector.url + openapi.OPENAPI_PATH, timeout=10)
    assert answer.status_code == 200
    return answer.json()


@pytest.fixture(scope="module")
def api_schema(collector, served_document):
    config = schemathesis.Config.from_dict({
        "base-url": collector.url,
        "request-timeout": 30,
        "generation": {"max-examples": MAX_EXAMPLES},
        # Without a configured secret every /dlr/{secret} request is a 404: a few cases suffice.
        "operations": [{"include-operation-id": operation, "generation": {"max-examples": 10},
                        "phases": {"coverage": {"enabled": False}}}
                       for operation in ("receiveWithPathSecret", "receiveClicksWithPathSecret",
                                         "receiveRepliesWithPathSecret")],
        "checks": {
            # The collector is deliberately lenient (unknown statuses, non-numeric codes kept
            # under 'extra'), so schema-invalid data is not always refused.
            "negative_data_rejection": {"enabled": False},
            # Replaced by valid_receipts_are_stored: a schema-valid form body is only a string.
            "positive_data_acceptance": {"enabled": False},
        },
    })
    # The document as served over HTTP; from_dict rather than from_url, because from_url leaves
    # out the operation that serves the schema itself.
    return schemathesis.openapi.from_dict(served_document, config=config)


schema = schemathesis.pytest.from_fixture("api_schema")


def _outcome(response) -> str | None:
    try:
        doc = response.json()
    except ValueError:
        return None
    return (doc.get("error") or doc.get("status")) if isinstance(doc, dict) else None


def valid_receipts_are_stored(ctx, response, case):
    """A schema-valid JSON or XML body posted to /dlr, /click or /incoming must be stored, not refused."""
    positive = case.meta is not None and case.meta.generation.mode.is_positive
    if (positive and case.method.upper() == "POST" and case.path in ("/dlr", "/click", "/incoming")
            and case.media_type in RECEIVING):
        if response.status_code == 400 and "'created' is out of range" in response.text:
            return  # a date-time whose UTC instant is outside years 1-9999: documented as refused
        assert response.status_code in (200, 207), (
            f"schema-valid {case.media_type} body refused with {response.status_code}: {response.text[:300]}")


@pytest.mark.slow
@schema.parametrize()
@settings(deadline=None)
def test_every_generated_request_gets_a_documented_answer(case):
    response = case.call()
    ANSWERS[(case.method.upper(), case.path, case.media_type, response.status_code, _outcome(response))] += 1
    assert response.status_code < 500, f"{case.method} {case.path}: {response.status_code} {response.text[:300]}"
    case.validate_response(response, additional_checks=[valid_receipts_are_stored])


def test_generated_requests_reached_every_answer_that_matters(capsys):
    """The fuzzing above really stored receipts of each format and met each kind of refusal."""
    if not ANSWERS:
        pytest.skip("runs after the generated requests of this module")
    by_status = Counter()
    for (method, path, media_type, status, outcome), count in ANSWERS.items():
        by_status[status] += count
    with capsys.disabled():
        print(f"\nopenapi fuzz: {sum(by_status.values())} requests, by status {dict(sorted(by_status.items()))}")
    stored = Counter()
    for (method, path, media_type, status, outcome), count in ANSWERS.items():
        if path == "/dlr" and status == 200:
            stored[media_type] += count
    assert stored["application/json"] >= 10 and stored["application/xml"] >= 3
    for path in ("/click", "/incoming"):
        assert sum(n for (m, p, media, status, o), n in ANSWERS.items() if p == path and status == 200) >= 5, path
    assert by_status[500] == 0 and by_status[503] == 0
    refusals = {outcome for (m, path, media, status, outcome) in ANSWERS if 400 <= status < 500}
    assert {"not_found", "method_not_allowed", "unsupported_media_type"} <= refusals
    assert refusals & set(openapi.REQUEST_REFUSALS[400]), "no body was refused as bad input"
    assert {path for (m, path, *rest) in ANSWERS} == set(openapi.openapi_document()["paths"])


def test_served_document_is_valid_openapi_and_names_the_body_limit(collector, served_document):
    validate_openapi_document(served_document)
    default_limit = next(int(s.default) for s in SETTINGS_TABLE if s.name == "max_body_bytes")
    assert served_document == openapi.openapi_document(default_limit)
    assert f"{default_limit} bytes" in served_document["info"]["description"]


def _patterns(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                yield value
            else:
                yield from _patterns(value)
    elif isinstance(node, list):
        for item in node:
            yield from _patterns(item)


def test_every_pattern_compiles_for_python_and_for_schemathesis_validator():
    """A pattern jsonschema-rs cannot compile would be ignored by generation, silently."""
    patterns = set(_patterns(openapi.openapi_document()))
    assert len(patterns) >= 4
    for pattern in patterns:
        re.compile(pattern)
        jsonschema_rs.validator_for({"type": "string", "pattern": pattern})


def test_document_lists_exactly_the_apps_routes(app):
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        routes |= {(path, method.lower()) for method in rule.methods - {"HEAD", "OPTIONS"}}
    documented = {(path, method) for path, item in openapi.openapi_document()["paths"].items() for method in item}
    assert routes == documented


def _reasons_in_code() -> set[str]:
    """Every refusal reason written as a literal in the collector's request path."""
    parsing = (REPO / "collector" / "parsing.py").read_text() + (REPO / "collector" / "events.py").read_text()
    app = (REPO / "collector" / "app.py").read_text()
    reasons = set(re.findall(r'BadBody\(\s*\d{3},\s*"([a-z_]+)"', parsing))
    reasons |= set(re.findall(r'_BadElement\(\s*"([a-z_]+)"', parsing))
    reasons |= set(re.findall(r'refused?\(\s*\d{3},\s*"([a-z_]+)"', app))  # refuse() for Flask, refused() in answer_webhook
    reasons |= set(re.findall(r'\d{3}: "([a-z_]+)"', app))  # http_error's reasons by status
    return reasons


def test_every_refusal_reason_in_the_code_is_documented():
    documented = {reason for reasons in openapi.REQUEST_REFUSALS.values() for reason in reasons}
    in_code = _reasons_in_code()
    assert len(in_code) >= 15, in_code  # the patterns above still find the code's reasons
    assert in_code == documented
    element_reasons = set(re.findall(r'_BadElement\(\s*"([a-z_]+)"', (REPO / "collector" / "parsing.py").read_text()))
    # collector/parsing.split_fields builds these as f"not_a_{kind}"
    element_reasons |= {"not_a_receipt", "not_a_click", "not_a_reply"}
    assert element_reasons == set(openapi.ELEMENT_REFUSALS)


def test_readme_refusal_table_matches_the_document():
    readme = (REPO / "README.md").read_text()
    table = readme.split("Refused requests", 1)[1].split("## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    in_readme: dict[int, set[str]] = {}
    for row in rows:
        names_cell, status_cell = [cell.strip() for cell in row.strip("|").split("|")][:2]
        names = re.findall(r"`([a-z_]+)`", names_cell)
        statuses = [int(s) for s in re.findall(r"\d{3}", status_cell)]
        # "`a` / `b` | 405 / 404" pairs names and statuses in order; otherwise all share one status.
        pairs = zip(names, statuses) if len(statuses) > 1 else ((name, statuses[0]) for name in names)
        for name, status in pairs:
            in_readme.setdefault(status, set()).add(name)
    # 207 is no refusal: its row documents the rejected/partial/ archive of partly stored bodies.
    assert in_readme.pop(207) == {"partial"}
    assert in_readme == {status: set(reasons) for status, reasons in openapi.REQUEST_REFUSALS.items()}
