"""Turn Mobivate's other webhooks into records: short-URL clicks and incoming messages.

Pure functions, no I/O, in the style of :mod:`collector.parsing` (whose body reading, JSON
checks, label rules and error types they share): :func:`parse_clicks` and
:func:`parse_replies` take the raw body, its content type, the request's URL labels and the
arrival time, and return a :class:`~collector.parsing.ParsedBody` whose records are shaped
exactly like :data:`dlrlens.store.layout.CLICK_SCHEMA` / :data:`~dlrlens.store.layout.REPLY_SCHEMA`.

Contract:

* Bodies are JSON (``application/json``; a missing or ``text/plain`` content type is sniffed):
  one object, or an array of them (replays). Anything else is ``unsupported_media_type``
  (415). The JSON rules of receipts hold (``invalid_json``: invalid UTF-8, NaN, nesting,
  lone surrogates; ``empty_body``).
* Field names match in any case. Unknown fields are kept in ``extra`` (JSON), as for receipts.
* An object holding none of the documented identifying fields is refused (``not_a_click`` /
  ``not_a_reply``); a field of the wrong type or length is ``bad_field``; a reply's
  ``created`` that does not parse, or lies outside the receipts' window around arrival, is
  ``bad_created`` (a reply without ``created`` takes its arrival time); the good replies of
  one request may span at most the receipts' number of UTC days (``too_many_days``). A click
  has no documented time: its time is its arrival.
* Personal data (:class:`EventPrivacy`): a phone number becomes a keyed hash and a masked form
  (:mod:`dlrlens.store.privacy`), kept as sent only with ``keep_msisdn``; a click's IP address
  is dropped unless ``keep_ip``. Ids (``click_id``) are keyed hashes too, so they reveal
  nothing about a dropped IP address.
* Nothing here raises anything but :class:`~collector.parsing.BadBody` for any input.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime

from collector.parsing import (MAX_ID_LENGTH, MAX_REPORTED_ERRORS, NO_LIMITS, BadBody, ElementError, ParsedBody,
                               ReceiptLimits, _BadElement, _json_elements, _json_text, _optional_text,
                               parse_created, split_fields)
from dlrlens.store.pseudonym import hash_msisdn, mask_msisdn

CLICK_FIELDS = {name.lower(): name for name in (
    "messageId", "batchId", "clientRef", "mobile", "browser", "os", "country", "iso2l", "ipAddress", "url")}
REPLY_FIELDS = {name.lower(): name for name in (
    "id", "originator", "recipient", "body", "created", "inReplyTo", "logicalMessageId", "ownerUserId")}
# A click without any of these cannot be told apart from noise (nothing links it, nothing shows).
CLICK_IDENTIFYING = ("messageId", "batchId", "clientRef", "url")
REPLY_IDENTIFYING = ("id", "originator", "body", "inReplyTo", "logicalMessageId")
MAX_URL_LENGTH = 2048
# A concatenated SMS is at most a few thousand characters; anything longer is not a reply.
MAX_REPLY_LENGTH = 4096
JSON_ONLY = "send application/json (one object or an array of them)"


@dataclass(frozen=True)
class EventPrivacy:
    """What to keep of personal data: ``key`` hashes phone numbers (the installation key,
    :func:`dlrlens.store.pseudonym.installation_key`); ``keep_msisdn`` keeps numbers as sent,
    ``keep_ip`` a click's IP address."""

    key: bytes
    keep_msisdn: bool = False
    keep_ip: bool = False


def _json_body(body: bytes, content_type: str | None, kind: str) -> list:
    if not body.strip():
        raise BadBody(400, "empty_body", "request body is empty")
    media = (content_type or "").split(";", 1)[0].strip().lower()
    is_json = media in ("application/json", "text/json") or media.endswith("+json")
    if not is_json:
        sniffed = media in ("", "text/plain") and body.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] in (b"{", b"[")
        if not sniffed:
            raise BadBody(415, "unsupported_media_type", f"content type {media or '(none)'!r} is not accepted: {JSON_ONLY}")
    try:
        return _json_elements(body)
    except BadBody as exc:
        if exc.reason != "not_a_receipt":
            raise
        raise BadBody(400, f"not_a_{kind}", f"JSON body holds no {kind} object") from None


def _text(fields: dict, name: str, max_length: int = MAX_ID_LENGTH) -> str | None:
    return _optional_text(fields.get(name), name, max_length)


def _keyed_id(key: bytes, parts) -> str:
    joined = "\x1f".join("" if part is None else str(part) for part in parts)
    return hmac.new(key, joined.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:32]


def click_record(element, *, received_at: datetime, labels: dict[str, str], labels_json: str,
                 privacy: EventPrivacy) -> dict:
    """One click element as a record of :data:`dlrlens.store.layout.CLICK_SCHEMA`."""
    fields, extra = split_fields(element, CLICK_FIELDS, "click")
    values = {name: _text(fields, name) for name in ("messageId", "batchId", "clientRef", "mobile", "browser",
                                                     "os", "country", "iso2l", "ipAddress")}
    values["url"] = _text(fields, "url", MAX_URL_LENGTH)
    if not any(values[name] for name in CLICK_IDENTIFYING):
        raise _BadElement("not_a_click", "click has none of " + ", ".join(CLICK_IDENTIFYING))
    mobile = values["mobile"]
    mobile_hash = hash_msisdn(privacy.key, mobile)
    click_id = _keyed_id(privacy.key, (values["messageId"], values["batchId"], values["clientRef"], mobile_hash,
                                       values["url"], values["browser"], values["os"], values["country"],
                                       values["iso2l"], values["ipAddress"], _json_text(extra), labels_json))
    return {
        "click_id": click_id,
        "received_at": received_at,
        "message_id": values["messageId"],
        "batch_id": values["batchId"],
        "client_ref": values["clientRef"],
        "url": values["url"],
        "browser": values["browser"],
        "os": values["os"],
        "country": values["country"],
        "iso2l": values["iso2l"],
        "mobile_hash": mobile_hash,
        "mobile_masked": mask_msisdn(mobile),
        "mobile": mobile if privacy.keep_msisdn else None,
        "ip_address": values["ipAddress"] if privacy.keep_ip else None,
        "extra": _json_text(extra) if extra else None,
        "campaign": labels.get("campaign") or None,
        "labels": labels_json,
    }


def reply_record(element, *, received_at: datetime, labels: dict[str, str], labels_json: str,
                 privacy: EventPrivacy, limits: ReceiptLimits = NO_LIMITS) -> dict:
    """One incoming-message element as a record of :data:`dlrlens.store.layout.REPLY_SCHEMA`."""
    fields, extra = split_fields(element, REPLY_FIELDS, "reply")
    values = {name: _text(fields, name) for name in ("id", "originator", "recipient", "inReplyTo",
                                                     "logicalMessageId", "ownerUserId")}
    body = fields.get("body")
    if body is not None and not isinstance(body, str):
        raise _BadElement("bad_field", f"'body' must be a string, got {type(body).__name__}")
    if body is not None and len(body) > MAX_REPLY_LENGTH:
        raise _BadElement("bad_field", f"'body' is longer than {MAX_REPLY_LENGTH} characters")
    if not any(values.get(name) for name in REPLY_IDENTIFYING if name != "body") and not body:
        raise _BadElement("not_a_reply", "incoming message has none of " + ", ".join(REPLY_IDENTIFYING))
    raw_created = fields.get("created")
    if raw_created in (None, ""):
        created = received_at
    else:
        created = parse_created(raw_created)
        limits.check_created(created, received_at)
    originator = values["originator"]
    originator_hash = hash_msisdn(privacy.key, originator)
    reply_id = values["id"] or _keyed_id(privacy.key, ("reply", originator_hash, values["recipient"], body,
                                                       created.isoformat(), values["inReplyTo"]))
    return {
        "reply_id": reply_id,
        "created": created,
        "received_at": received_at,
        "in_reply_to": values["inReplyTo"],
        "logical_message_id": values["logicalMessageId"],
        "recipient": values["recipient"],
        "body": body,
        "originator_hash": originator_hash,
        "originator_masked": mask_msisdn(originator),
        "originator": originator if privacy.keep_msisdn else None,
        "owner_user_id": values["ownerUserId"],
        "extra": _json_text(extra) if extra else None,
        "campaign": labels.get("campaign") or None,
        "labels": labels_json,
    }


def _parse(elements: list, make) -> ParsedBody:
    result = ParsedBody()
    for index, element in enumerate(elements):
        try:
            result.records.append(make(element))
        except _BadElement as exc:
            result.error_counts[exc.reason] += 1
            if len(result.errors) < MAX_REPORTED_ERRORS:
                result.errors.append(ElementError(index, exc.reason, exc.message))
    if not result.records:
        first = result.errors[0]
        where = f" (element {first.index})" if len(elements) > 1 else ""
        raise BadBody(400, first.reason, first.message + where)
    return result


def parse_clicks(body: bytes, content_type: str | None, labels: dict[str, str], received_at: datetime,
                 privacy: EventPrivacy) -> ParsedBody:
    """The clicks of a ``POST /click`` body; :class:`BadBody` when none is usable."""
    elements = _json_body(body, content_type, "click")
    labels_json = _json_text(labels)
    return _parse(elements, lambda e: click_record(e, received_at=received_at, labels=labels,
                                                   labels_json=labels_json, privacy=privacy))


def parse_replies(body: bytes, content_type: str | None, labels: dict[str, str], received_at: datetime,
                  privacy: EventPrivacy, limits: ReceiptLimits = NO_LIMITS) -> ParsedBody:
    """The incoming messages of a ``POST /incoming`` body; :class:`BadBody` when none is usable.
    ``limits`` bound ``created`` and the request's days as for receipts."""
    elements = _json_body(body, content_type, "reply")
    labels_json = _json_text(labels)
    result = _parse(elements, lambda e: reply_record(e, received_at=received_at, labels=labels,
                                                     labels_json=labels_json, privacy=privacy, limits=limits))
    limits.check_days(result.records)
    return result

