"""Turn a webhook request body into normalised receipt records.

Pure functions, no I/O: :func:`parse_request` takes the raw body, its content type and the
request's query parameters and returns records shaped exactly like
:data:`dlrlens.store.layout.RECEIPT_SCHEMA`, plus a list of the elements it refused.

Contract:

* A body that cannot be read as receipts at all raises :class:`BadBody` (a 4xx status, a
  machine-readable ``reason`` and a message naming the problem).
* A body holding several receipts (a JSON array, or an XML document with several
  ``<deliveryreceipt>``) yields every good one; each bad element is reported as an
  :class:`ElementError` instead of failing the whole body.
* Unknown status names or codes are never refused: they are classified ``unknown``.
* Only the first :data:`MAX_REPORTED_ERRORS` element errors are kept (with a count by
  reason of all of them), so a body of a million bad elements gives a small answer.
* :class:`ReceiptLimits` bounds what hostile input could do to storage and the dashboard:
  a ``created`` outside a window around the arrival time is refused (``bad_created``) and a
  request whose good receipts span too many UTC days is refused whole (``too_many_days``:
  storage partitions by day, nothing of it is stored). :func:`parse_request` applies none
  unless given; the collector always gives the configured ones.
* :func:`checked_url_labels` refuses (``bad_label``) URL labels outside a
  :class:`LabelPolicy` (allowed keys, value length, count, control characters) rather than
  silently cutting them: labels are dashboard dimensions, so their cardinality is bounded.
* Nothing here raises anything but :class:`BadBody` for any input.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException
from xml.etree.ElementTree import ParseError

from dlrlens.statuses import classify

# The documented receipt fields, by lower-cased name, mapped to their canonical spelling.
KNOWN_FIELDS = {
    name.lower(): name
    for name in (
        "deliveryMessageId",
        "batchId",
        "clientReference",
        "created",
        "status",
        "statusCode",
        "part",
        "parts",
        "hlr",
    )
}
MAX_ID_LENGTH = 256
# URL labels per request (refused above, see LabelPolicy); the audit copy of a refused
# request's labels (url_labels) keeps this many, cut to MAX_LABEL_LENGTH characters.
MAX_LABELS = 32
MAX_LABEL_LENGTH = 256
# Element errors named in a 207 answer and in its rejected/partial/ record; the rest are
# only counted, so the answer to a body of 300,000 bad elements stays a few kilobytes.
MAX_REPORTED_ERRORS = 100
# A receipt is 2-3 levels deep (array, receipt, hlr). The bound keeps every later step
# (json.dumps of hlr/extra, the WAL encoder) clear of Python's recursion limit, whatever
# the caller's stack depth.
MAX_JSON_DEPTH = 32
SECRET_PARAMS = frozenset({"token"})

_TIMESTAMP_SHAPE = re.compile(r"^\s*\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
_INT32_MAX = 2**31 - 1
# C0 and C1 control characters (Unicode category Cc): never part of a sensible label, and
# they would forge lines or columns wherever a label is printed.
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_UTF8_BOM = b"\xef\xbb\xbf"


class BadBody(Exception):
    """The whole request is refused. ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


class _BadElement(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class ElementError:
    """One receipt inside a body was refused; the others were kept."""

    index: int
    reason: str
    message: str

    def as_dict(self) -> dict:
        return {"index": self.index, "reason": self.reason, "message": self.message}


@dataclass
class ParsedBody:
    """The good records, the first :data:`MAX_REPORTED_ERRORS` element errors and the count
    of all element errors by reason."""

    records: list[dict] = field(default_factory=list)
    errors: list[ElementError] = field(default_factory=list)
    error_counts: Counter = field(default_factory=Counter)

    @property
    def error_total(self) -> int:
        return sum(self.error_counts.values())

    def rejected_summary(self) -> dict:
        """The refused elements as a 207 answer and its audit record name them."""
        return {"rejected": [error.as_dict() for error in self.errors], "rejected_count": self.error_total,
                "rejected_truncated": self.error_total > len(self.errors)}


def describe_duration(span: timedelta) -> str:
    """``span`` in the largest whole unit: '1 day', '400 days', '12 hours', '90 seconds'."""
    seconds = span.total_seconds()
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds:g} second{'s' if seconds != 1 else ''}"


def _shifted(moment: datetime, span: timedelta) -> datetime | None:
    try:
        return moment + span
    except OverflowError:  # past year 1 or 9999: no timestamp lies beyond, the bound is void
        return None


@dataclass(frozen=True)
class ReceiptLimits:
    """Bounds on what one request may store; ``None`` turns a bound off.

    ``created_max_ahead`` / ``created_max_age``: a receipt's ``created`` may lie at most this
    far after / before the request's arrival (late receipts are normal: Mobivate retries for
    days; a far-future one would sort after every real receipt forever). ``max_days``: the
    good receipts of one request may span at most this many UTC dates of ``created`` (each
    date is a storage partition, so a hostile array could otherwise create thousands).
    """

    created_max_ahead: timedelta | None = None
    created_max_age: timedelta | None = None
    max_days: int | None = None

    def window_text(self) -> str:
        before = describe_duration(self.created_max_age) if self.created_max_age else "any time"
        after = describe_duration(self.created_max_ahead) if self.created_max_ahead else "any time"
        return f"from {before} before to {after} after arrival"

    def check_created(self, created: datetime, received_at: datetime) -> None:
        """Raise ``bad_created`` when ``created`` lies outside the window around ``received_at``."""
        if self.created_max_ahead is not None:
            latest = _shifted(received_at, self.created_max_ahead)
            if latest is not None and created > latest:
                raise self._outside_window(created, self.created_max_ahead, "after")
        if self.created_max_age is not None:
            earliest = _shifted(received_at, -self.created_max_age)
            if earliest is not None and created < earliest:
                raise self._outside_window(created, self.created_max_age, "before")

    def _outside_window(self, created: datetime, span: timedelta, side: str) -> _BadElement:
        return _BadElement("bad_created", f"'created' {created.isoformat()} lies more than {describe_duration(span)} "
                                          f"{side} the request's arrival; 'created' is accepted {self.window_text()}")

    def check_days(self, records: list[dict]) -> None:
        """Refuse the whole request (``too_many_days``) when its records span too many UTC dates."""
        if self.max_days is None:
            return
        days = {record["created"].date() for record in records}
        if len(days) > self.max_days:
            raise BadBody(400, "too_many_days",
                          f"the receipts span {len(days)} different days (UTC dates of 'created'); one request "
                          f"may hold at most {self.max_days} (DLRLENS_MAX_DAYS_PER_REQUEST): nothing was stored, "
                          "send the receipts in smaller batches, by day")


NO_LIMITS = ReceiptLimits()


@dataclass(frozen=True)
class LabelPolicy:
    """Which URL query parameters may label receipts: ``keys`` (``None``: any key), values of
    at most ``max_length`` characters without control characters, at most ``max_count`` labels."""

    keys: frozenset[str] | None
    max_length: int
    max_count: int = MAX_LABELS


# ---------------------------------------------------------------------------------------
# Body formats


def body_format(content_type: str | None, body: bytes) -> str:
    """Return ``json``, ``form`` or ``xml`` for a request, or raise :class:`BadBody` (415).

    A missing or ``text/plain`` content type is sniffed from the body, because simple
    HTTP clients (and replays with curl) often omit it.
    """
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == "application/json" or media.endswith("+json") or media == "text/json":
        return "json"
    if media == "application/x-www-form-urlencoded":
        return "form"
    if media in ("application/xml", "text/xml") or media.endswith("+xml"):
        return "xml"
    if media in ("", "text/plain"):
        head = body.removeprefix(_UTF8_BOM).lstrip()[:8]
        if head[:1] in (b"{", b"["):
            return "json"
        if head[:1] == b"<":
            return "xml"
        if head.startswith(b"xml="):
            return "form"
        raise BadBody(415, "unsupported_media_type",
                      "cannot tell the body's format: send application/json, "
                      "application/x-www-form-urlencoded (xml=...) or application/xml")
    raise BadBody(415, "unsupported_media_type",
                  f"content type {media!r} is not accepted: send application/json, "
                  "application/x-www-form-urlencoded (xml=...) or application/xml")


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    # 1e400 would become inf and be written back out as the non-JSON token Infinity.
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {text[:40]} is out of range")
    return number


def _check_json_document(document) -> None:
    """Refuse a parsed document that storage could not hold: too deep, or with lone
    surrogates (``"\\ud800"`` decodes to a str that cannot be encoded as UTF-8, which
    Parquet requires: one such receipt would make its whole log segment unflushable)."""
    pending = [(document, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, str):
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    raise BadBody(400, "invalid_json",
                                  "JSON holds a lone surrogate escape (not valid Unicode text)") from None
        elif isinstance(value, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise BadBody(400, "invalid_json", f"JSON is nested deeper than {MAX_JSON_DEPTH} levels")
            if isinstance(value, dict):
                pending.extend((key, depth) for key in value)
                pending.extend((item, depth + 1) for item in value.values())
            else:
                pending.extend((item, depth + 1) for item in value)


def _json_elements(body: bytes) -> list:
    try:
        document = json.loads(body, parse_constant=_reject_constant, parse_float=_finite_float)
    except UnicodeDecodeError as exc:
        raise BadBody(400, "invalid_json", f"body is not valid UTF-8 JSON: {exc.reason}") from None
    except RecursionError:
        raise BadBody(400, "invalid_json", "JSON is nested too deeply") from None
    except ValueError as exc:
        raise BadBody(400, "invalid_json", f"body is not valid JSON: {str(exc)[:200]}") from None
    # An ASCII body without a \u escape holds no lone surrogate (json.loads decodes bytes with
    # surrogatepass), and one with few brackets no deep nesting: the common single receipt
    # skips the walk, which is on the hot path.
    if (not body.isascii() or b"\\u" in body
            or body.count(b"{") + body.count(b"[") > MAX_JSON_DEPTH):
        _check_json_document(document)
    if isinstance(document, dict):
        return [document]
    if isinstance(document, list):
        if not document:
            raise BadBody(400, "not_a_receipt", "JSON array holds no receipts")
        return document
    raise BadBody(400, "not_a_receipt",
                  f"JSON body is a {type(document).__name__}, expected a receipt object or an array of them")


def _xml_elements(text: str | bytes) -> list:
    try:
        root = SafeET.fromstring(text, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise BadBody(400, "forbidden_xml", f"XML uses a forbidden construct ({type(exc).__name__})") from None
    except (ParseError, ValueError, UnicodeError, LookupError) as exc:  # LookupError: unknown encoding
        raise BadBody(400, "invalid_xml", f"body is not valid XML: {str(exc)[:200]}") from None
    except RecursionError:
        raise BadBody(400, "invalid_xml", "XML is nested too deeply") from None
    tag = _local_name(root.tag)
    if tag == "deliveryreceipt":
        receipts = [root]
    else:
        receipts = [child for child in root if _local_name(child.tag) == "deliveryreceipt"]
        if not receipts:
            raise BadBody(400, "not_a_receipt", f"XML root <{tag}> is not a <deliveryreceipt>")
    return [_xml_fields(element) for element in receipts]


def _local_name(tag) -> str:
    return str(tag).rsplit("}", 1)[-1].lower()


def _xml_fields(element) -> dict:
    fields: dict = {}
    for child in element:
        name = _local_name(child.tag)
        if len(child):
            fields[name] = {_local_name(g.tag): (g.text or "").strip() for g in child}
        else:
            text = (child.text or "").strip()
            fields[name] = text if text else None
    return fields


def _form_elements(body: bytes) -> list:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadBody(400, "invalid_form", "form body is not valid UTF-8") from None
    values = parse_qs(text, keep_blank_values=True).get("xml")
    if not values or not values[0].strip():
        raise BadBody(400, "not_a_receipt", "form body has no 'xml' field holding a <deliveryreceipt>")
    return _xml_elements(values[0])


def raw_elements(body: bytes, content_type: str | None) -> tuple[str, list]:
    """Return the body's format and its receipt elements (dicts), unvalidated."""
    if not body.strip():
        raise BadBody(400, "empty_body", "request body is empty")
    fmt = body_format(content_type, body)
    if fmt == "json":
        return "json", _json_elements(body)
    if fmt == "form":
        return "xml", _form_elements(body)
    return "xml", _xml_elements(body)


# ---------------------------------------------------------------------------------------
# Field normalisation


def parse_created(value) -> datetime:
    """Parse Mobivate's ``created``: ISO 8601 with ``+00:00``, ``+0000`` or ``Z``, any fraction.

    A timestamp without an offset is taken as UTC. Returns an aware UTC datetime.
    """
    if not isinstance(value, str) or not _TIMESTAMP_SHAPE.match(value):
        raise _BadElement("bad_created", f"'created' is not an ISO 8601 timestamp: {_show(value)}")
    text = value.strip()
    # fromisoformat takes at most microseconds; Mobivate sends milliseconds, others nanoseconds.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    # A form body whose sender did not percent-encode '+' turns '+00:00' into ' 00:00'.
    text = re.sub(r"(:\d{2}(?:\.\d+)?) (\d{2}:?\d{2})$", r"\1+\2", text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise _BadElement("bad_created", f"'created' is not a valid timestamp: {_show(value)}") from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=timezone.utc)
    try:
        return parsed.astimezone(timezone.utc)
    except OverflowError:
        raise _BadElement("bad_created", f"'created' is out of range: {_show(value)}") from None


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _optional_int(value) -> int | None:
    """An int32 from a number or numeric string; None when absent or not numeric."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, float):
        if not value.is_integer():
            return None
        number = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if not re.fullmatch(r"[+-]?[0-9]{1,10}", text):  # ASCII digits only: int() takes any script
            return None
        number = int(text)
    else:
        return None
    return number if -_INT32_MAX <= number <= _INT32_MAX else None


def _optional_text(value, name: str, max_length: int = MAX_ID_LENGTH) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _BadElement("bad_field", f"'{name}' must be a string, got {type(value).__name__}")
    text = str(value).strip()
    if len(text) > max_length:
        raise _BadElement("bad_field", f"'{name}' is longer than {max_length} characters")
    return text or None


def receipt_id(message_id: str, status: str, status_code: int | None, created: datetime, part: int | None) -> str:
    """Stable id of a receipt: the same receipt delivered twice (any format) has the same id."""
    key = "\x1f".join(
        (message_id, status, "" if status_code is None else str(status_code),
         created.isoformat(timespec="microseconds"), "" if part is None else str(part))
    )
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def split_fields(element, known: dict[str, str], kind: str) -> tuple[dict, dict]:
    """(known fields under their canonical names, the rest as sent) of one body element, whose
    keys match ``known`` (lower-cased key -> canonical name) in any case; a non-object element
    is refused as ``not_a_<kind>``."""
    if not isinstance(element, dict):
        raise _BadElement(f"not_a_{kind}", f"element is a {type(element).__name__}, expected a {kind} object")
    fields: dict = {}
    extra: dict = {}
    for key, value in element.items():
        canonical = known.get(str(key).lower())
        if canonical:
            fields[canonical] = value
        else:
            extra[str(key)] = value
    return fields, extra


def normalise(element, *, source_format: str, received_at: datetime, labels: dict[str, str],
              labels_json: str | None = None, limits: ReceiptLimits = NO_LIMITS) -> dict:
    """One receipt element (a dict from JSON or XML) as a record of the storage schema.

    ``labels_json`` is ``labels`` already as JSON text (computed once per request)."""
    fields, extra = split_fields(element, KNOWN_FIELDS, "receipt")

    message_id = _optional_text(fields.get("deliveryMessageId"), "deliveryMessageId")
    if not message_id:
        raise _BadElement("missing_message_id", "receipt has no 'deliveryMessageId'")
    if "created" not in fields or fields["created"] in (None, ""):
        raise _BadElement("bad_created", "receipt has no 'created' timestamp")
    created = parse_created(fields["created"])
    limits.check_created(created, received_at)

    raw_status = fields.get("status")
    if raw_status is not None and not isinstance(raw_status, (str, int)):
        raise _BadElement("bad_field", f"'status' must be a string, got {type(raw_status).__name__}")
    status_name = str(raw_status).strip() if raw_status is not None else ""
    if len(status_name) > 64:
        raise _BadElement("bad_field", "'status' is longer than 64 characters")
    status_code = _optional_int(fields.get("statusCode"))
    if not status_name and status_code is None:
        raise _BadElement("missing_status", "receipt has neither 'status' nor a numeric 'statusCode'")
    status, category = classify(status_name or None, status_code)

    # Keep what could not be normalised, so the original payload can be rebuilt.
    for name in ("statusCode", "part", "parts"):
        value = fields.get(name)
        if value is not None and _optional_int(value) is None:
            extra[name] = value

    hlr = fields.get("hlr")
    part = _optional_int(fields.get("part"))
    return {
        "receipt_id": receipt_id(message_id, status, status_code, created, part),
        "delivery_message_id": message_id,
        "batch_id": _optional_text(fields.get("batchId"), "batchId"),
        "client_reference": _optional_text(fields.get("clientReference"), "clientReference"),
        "created": created,
        "received_at": received_at,
        "status": status,
        "status_code": status_code,
        "category": category,
        "part": part,
        "parts": _optional_int(fields.get("parts")),
        "hlr": None if hlr is None else _json_text(hlr),
        "extra": _json_text(extra) if extra else None,
        "campaign": labels.get("campaign") or None,
        "labels": labels_json if labels_json is not None else _json_text(labels),
        "source_format": source_format,
    }


def _json_text(value) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str)


def _label_pairs(query):
    """(key, value) of each query parameter that labels receipts, trimmed: never the secret
    (in any case), never a nameless one, and only the first value of a repeated key."""
    seen: set[str] = set()
    for key, value in query:
        key = key.strip()
        if not key or key.lower() in SECRET_PARAMS or key in seen:
            continue
        seen.add(key)
        yield key, value.strip()


def url_labels(query: list[tuple[str, str]]) -> dict[str, str]:
    """The request's labels as kept in a refused request's audit record: never refuses,
    cuts to :data:`MAX_LABELS` labels of :data:`MAX_LABEL_LENGTH` characters."""
    labels: dict[str, str] = {}
    for key, value in _label_pairs(query):
        if len(labels) >= MAX_LABELS:
            break
        labels.setdefault(key[:MAX_LABEL_LENGTH], value[:MAX_LABEL_LENGTH])
    return labels


def checked_url_labels(query: list[tuple[str, str]], policy: LabelPolicy) -> dict[str, str]:
    """The labels to store with the request's receipts, or :class:`BadBody` (400 ``bad_label``)
    naming the first label ``policy`` refuses: the whole request is refused, never a label
    silently cut or dropped (the sender would not know its dimension is missing)."""
    labels: dict[str, str] = {}
    for key, value in _label_pairs(query):
        if policy.keys is None:
            _check_label_text(key, "key", key, policy)
        elif key not in policy.keys:
            allowed = ", ".join(sorted(policy.keys)) or "none"
            raise BadBody(400, "bad_label", f"URL label {_show(key)} is not an allowed label key (allowed: "
                                            f"{allowed}); add it to DLRLENS_LABEL_KEYS to accept it")
        _check_label_text(key, "value", value, policy)
        if len(labels) >= policy.max_count:
            raise BadBody(400, "bad_label", f"more than {policy.max_count} URL labels in one request")
        labels[key] = value
    return labels


def _check_label_text(key: str, part: str, text: str, policy: LabelPolicy) -> None:
    if len(text) > policy.max_length:
        raise BadBody(400, "bad_label", f"URL label {_show(key[:40])}: its {part} is {len(text)} characters long, "
                                        f"the limit is {policy.max_length} (DLRLENS_LABEL_MAX_LENGTH)")
    if _CONTROL_CHARS.search(text):
        raise BadBody(400, "bad_label", f"URL label {_show(key[:40])}: its {part} holds a control character")


def parse_request(body: bytes, content_type: str | None, labels: dict[str, str],
                  received_at: datetime, limits: ReceiptLimits = NO_LIMITS) -> ParsedBody:
    """Parse a webhook body into records; raise :class:`BadBody` when nothing in it is usable.

    When every element of a multi-receipt body is bad, the body as a whole is refused
    (400) with the first element's reason. ``limits`` apply to every element (``created``)
    and then to the good records together (their days).
    """
    source_format, elements = raw_elements(body, content_type)
    labels_json = _json_text(labels)
    result = ParsedBody()
    for index, element in enumerate(elements):
        try:
            result.records.append(
                normalise(element, source_format=source_format, received_at=received_at, labels=labels,
                          labels_json=labels_json, limits=limits)
            )
        except _BadElement as exc:
            result.error_counts[exc.reason] += 1
            if len(result.errors) < MAX_REPORTED_ERRORS:
                result.errors.append(ElementError(index, exc.reason, exc.message))
    if not result.records:
        first = result.errors[0]
        where = f" (element {first.index})" if len(elements) > 1 else ""
        raise BadBody(400, first.reason, first.message + where)
    limits.check_days(result.records)
    return result
