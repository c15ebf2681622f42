"""OpenAPI 3.1 description of the collector's HTTP interface, served at ``GET /openapi.json``.

The document is a plain dict built here (no YAML, no generator) and must stay truthful to
``collector/app.py`` and ``collector/parsing.py``: ``tests/collector/test_openapi.py`` fuzzes the
running collector from it (every answer must be a documented status with a conforming
body) and checks that every refusal reason the code can give is listed here.

Receipt schemas describe what Mobivate sends and the collector stores as-is. The
collector is more lenient than the schema in one documented way: a ``statusCode``,
``part`` or ``parts`` that is not an integer does not fail the receipt, it is kept
under the ``extra`` column instead. Two bounds depend on the clock and cannot be schema:
``created`` must lie within a window around the arrival time, and the receipts of one
request within a number of UTC days; the descriptions name them and their settings.

The label parameters follow the settings (allowed keys, value length): the document a
collector serves describes its own configuration.

:func:`register` adds the route to an app; :func:`openapi_document` builds the dict.
"""

from __future__ import annotations

from flask import Flask, Response, current_app, jsonify

from collector.events import (CLICK_IDENTIFYING, CLICK_FIELDS, MAX_REPLY_LENGTH, MAX_URL_LENGTH, REPLY_FIELDS,
                              REPLY_IDENTIFYING)
from collector.parsing import MAX_ID_LENGTH, MAX_JSON_DEPTH, MAX_LABELS, MAX_REPORTED_ERRORS
from collector.settings import Settings, default_settings

OPENAPI_PATH = "/openapi.json"

# Why a whole request is refused, by HTTP status: the ``error`` of the JSON answer.
REQUEST_REFUSALS: dict[int, tuple[str, ...]] = {
    400: ("invalid_json", "invalid_xml", "invalid_form", "forbidden_xml", "not_a_receipt", "empty_body",
          "missing_message_id", "missing_status", "bad_created", "bad_field", "unreadable_body", "bad_label",
          "too_many_days", "not_a_click", "not_a_reply"),
    401: ("unauthorized",),
    403: ("forbidden_source",),
    404: ("not_found",),
    405: ("method_not_allowed",),
    413: ("body_too_large",),
    415: ("unsupported_media_type",),
    429: ("too_many_auth_failures",),
}
# Why one receipt of a multi-receipt body is refused (a ``rejected`` item of a 207 answer).
ELEMENT_REFUSALS: tuple[str, ...] = ("not_a_receipt", "missing_message_id", "missing_status", "bad_created",
                                     "bad_field", "not_a_click", "not_a_reply")

_REFUSAL_WHEN = {
    400: "The body does not parse (invalid UTF-8, NaN/Infinity, numbers out of range, lone surrogate escapes, "
         f"JSON nested deeper than {MAX_JSON_DEPTH} levels), uses a DTD or entities (forbidden_xml), holds no "
         "receipt, or its only receipt(s) lack deliveryMessageId, status or a parseable created, or hold a "
         "field of the wrong type or length (bad_field), or a created outside the accepted window around the "
         "arrival time (bad_created: more than DLRLENS_CREATED_MAX_AGE before or DLRLENS_CREATED_MAX_AHEAD "
         "after it), or the body itself could not be read (unreadable_body: a broken chunked encoding). Also "
         "the whole request, nothing stored, when its good receipts span more UTC days of created than "
         "DLRLENS_MAX_DAYS_PER_REQUEST (too_many_days), or when a URL label is refused (bad_label: a key "
         f"outside DLRLENS_LABEL_KEYS, a value longer than DLRLENS_LABEL_MAX_LENGTH or holding a control "
         f"character, more than {MAX_LABELS} labels). On /click and /incoming: an object without any "
         "identifying field (not_a_click, not_a_reply).",
    401: "A webhook secret is configured (DLRLENS_TOKEN) and the request carries none that matches.",
    403: "The source address is outside DLRLENS_ALLOW_NETWORKS.",
    404: "No such endpoint; also POST /dlr/{secret} (/click/{secret}, /incoming/{secret}) when no webhook secret "
         "is configured.",
    405: "The method is not allowed on this path (see the Allow header).",
    413: "The body is larger than DLRLENS_MAX_BODY_BYTES.",
    415: "The content type is not JSON, form or XML (a missing or text/plain one is sniffed from the body).",
    429: "Too many failed secrets from this source address within a minute.",
}

# A POST to /dlr can be refused with any of these; 404 only on /dlr/{secret}, 405 never.
_RECEIVE_REFUSALS = (400, 401, 403, 413, 415, 429)

_INT32 = {"minimum": -(2**31 - 1), "maximum": 2**31 - 1}
_NUMERIC_TEXT = {"type": "string", "pattern": r"^\s*[+-]?[0-9]{1,10}\s*$"}

# Text patterns (ECMA-262 regex, as JSON Schema wants; Python's re reads them alike).
# The collector strips values with str.strip(), whose whitespace is ECMA's \s plus U+001C-U+001F
# and U+0085: a required value needs one character outside all of them.
_KEPT_CHAR = r"[^\s\u001c-\u001f\u0085]"
# XML 1.0 text holds only these characters (the description leaves out those beyond U+FFFF).
_XML_CHAR = r"[\t\n\r\u0020-\ud7ff\ue000-\ufffd]"
_XML_KEPT_CHAR = r"[^\s\u0000-\u001f\u0085\ufffe\uffff]"
# A URL label: any text without C0/C1 control characters.
_LABEL_TEXT = r"^[^\u0000-\u001f\u007f-\u009f]*$"


def _text(description: str, *, xml: bool, required: bool, max_length: int) -> dict:
    """A string field: any text in JSON, XML characters only in XML; ``required`` ones must
    keep a character after stripping, or the collector treats them as absent."""
    if xml:
        pattern = f"^{_XML_CHAR}*{_XML_KEPT_CHAR}{_XML_CHAR}*$" if required else f"^{_XML_CHAR}*$"
    else:
        pattern = _KEPT_CHAR if required else None
    schema = {"description": description, "type": "string" if required else ["string", "null"],
              "maxLength": max_length}
    if required:
        schema["minLength"] = 1
    if pattern:
        schema["pattern"] = pattern
    return schema


def _integer_or_numeric_text(description: str) -> dict:
    return {"description": description, "anyOf": [{"type": "integer", **_INT32}, _NUMERIC_TEXT]}


def _receipt_properties(*, xml: bool) -> dict:
    return {
        "deliveryMessageId": _text("Mobivate's id of one SMS message. Required.",
                                   xml=xml, required=True, max_length=MAX_ID_LENGTH),
        "batchId": _text("Mobivate's id of the send request.", xml=xml, required=False, max_length=MAX_ID_LENGTH),
        "clientReference": _text("Your send's reference.", xml=xml, required=False, max_length=MAX_ID_LENGTH),
        "created": {
            "type": "string", "format": "date-time",
            "description": "When Mobivate created the receipt: ISO 8601 with +00:00, +0000 or Z (no offset means "
                           "UTC), any fraction of a second. Required. Refused (bad_created) outside the window "
                           "around the arrival time: at most DLRLENS_CREATED_MAX_AGE (400 days) before it and "
                           "DLRLENS_CREATED_MAX_AHEAD (1 day) after it by default, and whenever its instant in UTC "
                           "falls outside the years 1-9999.",
            "examples": ["2023-07-28T03:23:22.000+00:00"],
        },
        "status": _text("Status name, any case. Unknown names are stored and classified 'unknown', never refused. "
                        "May be absent when statusCode is numeric.", xml=xml, required=True, max_length=64),
        "statusCode": _integer_or_numeric_text("Mobivate status code. A non-numeric value is kept under 'extra'."),
        "part": _integer_or_numeric_text("Part number of a multipart message."),
        "parts": _integer_or_numeric_text("Number of parts of the message."),
        "hlr": (
            {"type": "object", "additionalProperties": {"type": "string", "pattern": f"^{_XML_CHAR}*$"},
             "description": "HLR lookup result: child elements, stored as a JSON object of their texts."}
            if xml else {"type": ["object", "null"], "description": "HLR lookup result, stored as JSON."}
        ),
    }


_RECEIPT_REQUIRED = ["deliveryMessageId", "created", "status"]


def _receipt_schema() -> dict:
    return {
        "type": "object",
        "description": "A Mobivate delivery receipt. Field names match in any case; fields Mobivate adds later "
                       "are kept (as JSON, in the 'extra' column).",
        "required": _RECEIPT_REQUIRED,
        "properties": _receipt_properties(xml=False),
        "additionalProperties": True,
        "examples": [{
            "deliveryMessageId": "9A85B95E0A000A9D2FBD46710388AD54",
            "batchId": "9A85B9110A000A9D2FBD4671D691C328", "clientReference": None,
            "created": "2023-07-28T03:23:22.000+00:00", "status": "ACCEPTED", "statusCode": 2, "parts": 1,
            "hlr": None,
        }],
    }


def _xml_receipt_schema() -> dict:
    return {
        "type": "object",
        "xml": {"name": "deliveryreceipt"},
        "description": "A <deliveryreceipt> element (or a root element holding several of them), the same "
                       "fields as child elements.",
        "required": _RECEIPT_REQUIRED,
        "properties": _receipt_properties(xml=True),
    }


def _event_schema(description: str, known: dict[str, str], identifying: tuple[str, ...], long_fields: dict,
                  example: dict) -> dict:
    properties = {name: _text(f"{name} (stored as sent, trimmed).", xml=False, required=False,
                              max_length=long_fields.get(name, MAX_ID_LENGTH))
                  for name in known.values() if name != "created"}
    if "created" in known.values():
        properties["created"] = {"type": ["string", "null"], "format": "date-time",
                                 "description": "When Mobivate received the reply (ISO 8601); absent: the arrival "
                                                "time. Refused (bad_created) outside the receipts' window around "
                                                "the arrival time, or when its instant in UTC falls outside the "
                                                "years 1-9999."}
    if "body" in known.values():
        properties["body"] = {"type": ["string", "null"], "maxLength": MAX_REPLY_LENGTH,
                              "description": "The reply text (personal data: never logged, masked on screen)."}
    return {
        "type": "object",
        "description": description + " Field names match in any case; unknown fields are kept (in 'extra').",
        "properties": properties,
        "anyOf": [{"required": [name], "properties": {name: {"type": "string", "pattern": _KEPT_CHAR}}}
                  for name in identifying],
        "additionalProperties": True,
        "examples": [example],
    }


def _error_schema(reasons: tuple[str, ...]) -> dict:
    return {
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": {"type": "string", "enum": list(reasons)},
            "message": {"type": "string", "minLength": 1, "description": "What was wrong, in plain words."},
        },
    }


def _json_response(description: str, schema: dict, headers: dict | None = None) -> dict:
    response = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


def _refusal(status: int) -> dict:
    return _json_response(_REFUSAL_WHEN[status], {"$ref": f"#/components/schemas/Refusal{status}"})


def _components() -> dict:
    schemas = {f"Refusal{status}": _error_schema(reasons) for status, reasons in REQUEST_REFUSALS.items()}
    schemas.update({
        "Receipt": _receipt_schema(),
        "XmlReceipt": _xml_receipt_schema(),
        "Click": _event_schema(
            "A short-URL click (Mobivate's click webhook). The arrival time is its time. The clicker's number "
            "is stored as a keyed hash and a masked form, the IP address dropped (see the settings).",
            CLICK_FIELDS, CLICK_IDENTIFYING, {"url": MAX_URL_LENGTH},
            {"mobile": "447700900123", "messageId": "9AEC3BB90A000A9D2FBD467178FF6827",
             "batchId": "9AEC3B590A000A9D2FBD4671C4D151BF", "clientRef": "ref-001", "browser": "Safari",
             "country": "United Kingdom", "ipAddress": "192.0.2.1", "iso2l": "UK", "os": "Mac OS X",
             "url": "https://example.com/offer"}),
        "Reply": _event_schema(
            "An incoming message (a reply), from Mobivate's incoming webhook. The replier's number is stored "
            "as a keyed hash and a masked form.", REPLY_FIELDS, REPLY_IDENTIFYING, {},
            {"id": "1C9A658F0A931B317B6A53BB42EC3571", "originator": "447700900123", "recipient": "12345",
             "body": "STOP", "created": "2026-11-01T00:30:36+0000", "inReplyTo": "961AEAEB0A000A9D2FBD4671D07705FE",
             "logicalMessageId": "6EE262430A931B3127AFD4F044FC0622",
             "ownerUserId": "94B8CC070A000A9D2FBD467124131CA6"}),
        "Stored": {
            "type": "object", "required": ["status", "stored"],
            "properties": {"status": {"const": "stored"}, "stored": {"type": "integer", "minimum": 1}},
        },
        "Partial": {
            "type": "object", "required": ["status", "stored", "rejected", "rejected_count", "rejected_truncated"],
            "properties": {
                "status": {"const": "partial"},
                "stored": {"type": "integer", "minimum": 1},
                "rejected_count": {"type": "integer", "minimum": 1, "description": "Receipts refused in all."},
                "rejected_truncated": {"type": "boolean",
                                       "description": "True when 'rejected' names only the first of them."},
                "rejected": {"type": "array", "minItems": 1, "maxItems": MAX_REPORTED_ERRORS, "items": {
                    "type": "object", "required": ["index", "reason", "message"],
                    "properties": {
                        "index": {"type": "integer", "minimum": 0, "description": "Position in the body."},
                        "reason": {"type": "string", "enum": list(ELEMENT_REFUSALS)},
                        "message": {"type": "string", "minLength": 1},
                    },
                }},
            },
        },
        "StorageUnavailable": _error_schema(("storage_unavailable",)),
        "InternalError": _error_schema(("internal_error",)),
        "Health": {
            "type": "object",
            "required": ["status", "catching_up", "catching_up_slots", "catching_up_since", "this_worker",
                         "storage_writable", "storage_error", "last_flush_error", "slot", "backlog"],
            "properties": {
                "status": {"enum": ["ok", "degraded"]},
                "catching_up": {"type": "boolean",
                                "description": "The collector (any of its workers, whichever answers) is replaying "
                                               "what a previous run left in the logs (after a restart; it "
                                               "acknowledges meanwhile, status is degraded, the code stays 200). "
                                               "A worker that died mid-replay does not count: its slot's log is "
                                               "adopted by a live worker, which then counts."},
                "catching_up_slots": {"type": "array", "items": {"type": "string"},
                                      "description": "The writer slots still replaying (empty when none)."},
                "catching_up_since": {"type": ["string", "null"], "format": "date-time",
                                      "description": "When the oldest replay still going started (null when none)."},
                "this_worker": {"type": "object", "description": "The answering worker's own state.",
                                "required": ["slot", "catching_up"],
                                "properties": {"slot": {"type": "string"},
                                               "catching_up": {"type": "boolean",
                                                               "description": "This worker replays what a "
                                                                              "previous run left."}}},
                "storage_writable": {"type": "boolean"},
                "storage_error": {"type": ["string", "null"],
                                  "description": "The kind of error of the write probe (ENOSPC, EACCES, EROFS...)."},
                "last_flush_error": {"type": ["string", "null"],
                                     "description": "The kind of error of the last flush, null once one succeeds."},
                "slot": {"type": "string", "description": "This worker's writer slot."},
                "backlog": {"type": "object", "description": "This worker's write-ahead log not yet in Parquet.",
                            "required": ["bytes", "segments", "records_open_segment", "oldest_age_seconds"],
                            "properties": {"bytes": {"type": "integer", "minimum": 0},
                                           "segments": {"type": "integer", "minimum": 0},
                                           "records_open_segment": {"type": "integer", "minimum": 0},
                                           "oldest_age_seconds": {"type": "number", "minimum": 0}}},
                "store": {"type": "object",
                          "description": "Only with an Iceberg store (DLRLENS_STORE=iceberg:<catalog>): this worker's "
                                         "commits and last commit error, what the collector's logs hold that the "
                                         "table does not yet (unpublished), and degraded: that error, or a segment "
                                         "waiting too long (then status is degraded, the code stays 200: receipts "
                                         "are still acknowledged from the local log).",
                          "required": ["backend", "last_error", "unpublished", "degraded"],
                          "properties": {"backend": {"type": "string"},
                                         "degraded": {"type": "boolean"},
                                         "last_error": {"type": ["string", "null"]},
                                         "retry_in_seconds": {"type": "number", "minimum": 0},
                                         "unpublished": {"type": "object",
                                                         "required": ["segments", "receipts", "oldest_age_seconds"]}}},
            },
        },
    })
    return {
        "schemas": schemas,
        "securitySchemes": {
            "basicPassword": {"type": "http", "scheme": "basic",
                              "description": "The webhook secret as the HTTP Basic password (any user name)."},
        },
    }


def _label_parameters(settings: Settings) -> list[dict]:
    """``campaign`` and the other label keys the settings allow, as query parameters."""
    value = {"type": "string", "maxLength": settings.label_max_length, "pattern": _LABEL_TEXT}
    keys = settings.label_keys
    parameters = []
    if keys is None or "campaign" in keys:
        parameters.append({"name": "campaign", "in": "query", "required": False, "schema": value,
                           "description": "Campaign name stored with each receipt (the dashboard groups by it)."})
    if keys is None:
        labels = {"type": "object", "maxProperties": MAX_LABELS - 1, "additionalProperties": value,
                  "propertyNames": {"minLength": 1, "maxLength": settings.label_max_length, "pattern": _LABEL_TEXT,
                                    "not": {"enum": ["token", "campaign"]}}}
    elif keys - {"campaign"}:
        labels = {"type": "object", "additionalProperties": False,
                  "properties": {key: value for key in sorted(keys - {"campaign"})}}
    else:
        return parameters
    parameters.append({"name": "labels", "in": "query", "required": False, "style": "form", "explode": True,
                       "schema": labels,
                       "description": "The other allowed query parameters (team=retail, country=uk): filterable "
                                      "URL labels."})
    return parameters


def _receive_operation(summary: str, extra_parameters: list, refusals: tuple[int, ...], settings: Settings,
                       kind: str = "receipts") -> dict:
    item = {"receipts": "Receipt", "clicks": "Click", "replies": "Reply"}[kind]
    receipts = {"$ref": f"#/components/schemas/{item}"}
    allowed = "any key" if settings.label_keys is None else ", ".join(sorted(settings.label_keys)) or "none"
    content = {"application/json": {"schema": {"oneOf": [receipts, {"type": "array", "minItems": 1,
                                                                      "items": receipts}]}}}
    if kind == "receipts":
        content.update({
            "application/x-www-form-urlencoded": {"schema": {
                "type": "object", "required": ["xml"],
                "properties": {"xml": {"type": "string", "description": "A <deliveryreceipt> XML document."}},
            }},
            "application/xml": {"schema": {"$ref": "#/components/schemas/XmlReceipt"}},
        })
    return {
        "summary": summary,
        "description": (
            f"Stores the {kind} in the body. 200 means every one is fsynced in the write-ahead log. "
            "When DLRLENS_TOKEN is set, one of its secrets must come as ?token=, as the HTTP Basic password "
            "or as the last path segment. The other query parameters label the stored receipts; campaign is "
            f"a column of its own. Label keys allowed (DLRLENS_LABEL_KEYS): {allowed}. Another key, a value "
            f"longer than {settings.label_max_length} characters or holding a control character, or more than "
            f"{MAX_LABELS} labels refuse the request (400 bad_label); the first of a repeated key wins."
        ),
        "security": [{}, {"basicPassword": []}],
        "parameters": extra_parameters + [
            {"name": "token", "in": "query", "required": False, "schema": {"type": "string"},
             "description": "Webhook secret (when DLRLENS_TOKEN is set); never stored or logged."},
            *_label_parameters(settings),
        ],
        "requestBody": {"required": True, "content": content},
        "responses": {
            "200": _json_response("Every receipt is stored durably.", {"$ref": "#/components/schemas/Stored"}),
            "207": _json_response(
                f"Some receipts of a multi-receipt body are stored; 'rejected' names the others (the first "
                f"{MAX_REPORTED_ERRORS}), 'rejected_count' counts them.", {"$ref": "#/components/schemas/Partial"}),
            **{str(status): _refusal(status) for status in refusals},
            "500": _json_response("A collector bug; nothing was stored, the sender should retry.",
                                  {"$ref": "#/components/schemas/InternalError"}),
            "503": _json_response(
                "Storage failed (disk full, read-only, I/O error); nothing was acknowledged, retry later.",
                {"$ref": "#/components/schemas/StorageUnavailable"},
                {"Retry-After": {"schema": {"type": "string"}, "description": "Seconds to wait."}},
            ),
        },
    }


def openapi_document(max_body_bytes: int | None = None, settings: Settings | None = None) -> dict:
    """The OpenAPI 3.1 document; ``max_body_bytes`` (the 413 limit) goes into the description,
    ``settings`` (default: the defaults) give the label parameters."""
    settings = settings or default_settings()
    limit = f" Bodies above {max_body_bytes} bytes are refused (413)." if max_body_bytes else ""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "dlrlens collector",
            "version": "1",
            "description": "Webhook receiver for Mobivate delivery receipts (DLRs). Every refusal is a JSON "
                           "object {error, message}, counted in /metrics and kept under data/rejected/." + limit,
        },
        "paths": {
            "/dlr": {"post": {**_receive_operation("Receive delivery receipts", [], _RECEIVE_REFUSALS, settings),
                              "operationId": "receive"}},
            "/dlr/{secret}": {"post": {
                **_receive_operation("Receive delivery receipts, the webhook secret in the path", [
                    {"name": "secret", "in": "path", "required": True, "schema": {"type": "string"},
                     "description": "A webhook secret; 404 when none is configured."},
                ], _RECEIVE_REFUSALS + (404,), settings),
                "operationId": "receiveWithPathSecret",
            }},
            **_event_paths(settings),
            "/healthz": {"get": {
                "operationId": "health",
                "summary": "Storage health",
                "description": "200 when this worker's storage takes a real fsynced write and the last flush "
                               "succeeded, else 503, with the log backlog. With an Iceberg store that cannot "
                               "be reached, or while a restarted worker replays its logs: 200 and status degraded "
                               "(receipts are still acknowledged).",
                "responses": {
                    "200": _json_response("Storage works.", {"$ref": "#/components/schemas/Health"}),
                    "503": _json_response("Storage is degraded.", {"$ref": "#/components/schemas/Health"}),
                },
            }},
            "/metrics": {"get": {
                "operationId": "metrics",
                "summary": "Prometheus counters of the whole collector",
                "responses": {"200": {"description": "Prometheus text exposition format 0.0.4.",
                                      "content": {"text/plain": {"schema": {"type": "string"}}}}},
            }},
            OPENAPI_PATH: {"get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {"200": _json_response("The OpenAPI 3.1 description of the collector.",
                                                    {"type": "object", "required": ["openapi", "paths"]})},
            }},
        },
        "components": _components(),
    }


def _event_paths(settings: Settings) -> dict:
    """``/click``, ``/incoming`` and their ``/{secret}`` forms."""
    paths = {}
    for path, kind, summary, operation in (("/click", "clicks", "Receive short-URL clicks", "receiveClicks"),
                                           ("/incoming", "replies", "Receive incoming messages (replies)",
                                            "receiveReplies")):
        paths[path] = {"post": {**_receive_operation(summary, [], _RECEIVE_REFUSALS, settings, kind),
                                "operationId": operation}}
        paths[path + "/{secret}"] = {"post": {
            **_receive_operation(summary + ", the webhook secret in the path", [
                {"name": "secret", "in": "path", "required": True, "schema": {"type": "string"},
                 "description": "A webhook secret; 404 when none is configured."},
            ], _RECEIVE_REFUSALS + (404,), settings, kind),
            "operationId": operation + "WithPathSecret",
        }}
    return paths


def serve_document() -> Response:
    settings = current_app.extensions.get("dlrlens", {}).get("settings")
    return jsonify(openapi_document(current_app.config.get("MAX_BODY_BYTES"), settings))


def register(app: Flask) -> None:
    """Add ``GET /openapi.json`` to the collector ``app``."""
    app.add_url_rule(OPENAPI_PATH, view_func=serve_document, methods=["GET"])
