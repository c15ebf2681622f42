"""The collector's Flask application: ``POST /dlr``, ``POST /click``, ``POST /incoming``,
``GET /healthz``, ``GET /metrics``.

``/click`` (short-URL clicks) and ``/incoming`` (replies) are ``/dlr`` for Mobivate's other
webhooks (:mod:`collector.events` parses them): the same secret, allow-list, labels, limits,
refusals, archive and durable ``200``; their rows go to the ``clicks`` and ``replies`` tables
through the same write-ahead log.

``create_app`` builds one app per process with its own :class:`ReceiptStorage`. A ``200``
from ``/dlr`` means every stored receipt is fsynced in the write-ahead log; when storage
fails the answer is ``503`` (so Mobivate retries) and nothing is acknowledged. Every
refused request gets a 4xx JSON body ``{"error": reason, "message": ...}``, is counted by
reason, and its raw body is kept under ``data/rejected/``; a ``207`` (some elements of a
multi-receipt body refused) names at most ``MAX_REPORTED_ERRORS`` of them, with their count.

Paths are canonical before anything routes them: runs of slashes are merged and a trailing
slash dropped, so ``//dlr`` and ``/dlr/`` are ``/dlr`` (a callback URL with a stray slash
must not lose receipts); dot segments are not resolved (``/./dlr`` is a 404). No answer
carries a filesystem path: ``/healthz`` names only the kind of a storage error.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import parse_qsl

from flask import Flask, Response, current_app, g, jsonify, request
from werkzeug import urls as _werkzeug_urls  # noqa: F401  registers the "werkzeug.url_quote" codec error handler
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.wsgi import get_content_length, get_input_stream

from collector import metrics, openapi
from collector.events import EventPrivacy, parse_clicks, parse_replies
from collector.parsing import BadBody, LabelPolicy, ReceiptLimits, checked_url_labels, parse_request, url_labels
from dlrlens.store.rejected import RejectedBodies
from collector.security import FailureLimiter, address_allowed, redact_secrets_in_logs, token_matches
from collector.held_answers import hold_function
from collector.settings import Settings, load_settings
from dlrlens.store.auth_failures import auth_failures_path
from dlrlens.store.backends import publisher
from dlrlens.store.files import probe_writable
from dlrlens.store.pseudonym import installation_key
from dlrlens.store.writer import ReceiptStorage, error_kind
from dlrlens.store.wal import StorageError

log = logging.getLogger("dlrlens.collector")


def create_app(settings: Settings | None = None) -> Flask:
    """Build the collector app; opens (and recovers) this process's receipt storage."""
    settings = settings or load_settings()
    # Only our logger: gunicorn's own debug lines carry the request path, which may hold a secret.
    logging.getLogger("dlrlens").setLevel(settings.log_level.upper())
    log.addFilter(redact_secrets_in_logs(settings.tokens))  # also without gunicorn's handlers (tests)
    app = Flask(__name__)
    app.config["MAX_BODY_BYTES"] = settings.max_body_bytes
    app.extensions["dlrlens"] = {
        "settings": settings,
        "storage": ReceiptStorage(settings.data_dir, settings.flush_seconds, settings.flush_rows,
                                  publish=publisher(settings.store, settings.data_dir)),
        "rejected": RejectedBodies(settings.data_dir, settings.rejected_keep, settings.rejected_max_bytes),
        # Shared by every worker through one file: the limit holds whichever worker is asked.
        "limiter": FailureLimiter(auth_failures_path(settings.data_dir)),
        "label_policy": label_policy(settings),
        "parsers": table_parsers(receipt_limits(settings), event_privacy(settings)),
    }
    app.wsgi_app = announce_receipts(app.wsgi_app, app.extensions["dlrlens"])
    if settings.trusted_proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies)

    app.add_url_rule("/dlr", view_func=receive, methods=["POST"])
    app.add_url_rule("/dlr/<path:secret>", view_func=receive, methods=["POST"])
    app.add_url_rule("/click", view_func=receive_clicks, methods=["POST"])
    app.add_url_rule("/click/<path:secret>", view_func=receive_clicks, methods=["POST"])
    app.add_url_rule("/incoming", view_func=receive_replies, methods=["POST"])
    app.add_url_rule("/incoming/<path:secret>", view_func=receive_replies, methods=["POST"])
    app.add_url_rule("/healthz", view_func=healthz, methods=["GET"])
    app.add_url_rule("/metrics", view_func=metrics_text, methods=["GET"])
    openapi.register(app)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(Exception, unexpected_error)
    app.after_request(log_request)
    return app


def receipt_limits(settings: Settings) -> ReceiptLimits:
    return ReceiptLimits(settings.created_max_ahead, settings.created_max_age, settings.max_days_per_request)


def label_policy(settings: Settings) -> LabelPolicy:
    return LabelPolicy(settings.label_keys, settings.label_max_length)


def event_privacy(settings: Settings) -> EventPrivacy:
    return EventPrivacy(installation_key(settings.data_dir), settings.keep_msisdn, settings.keep_click_ip)


def table_parsers(limits: ReceiptLimits, privacy: EventPrivacy) -> dict:
    """Each webhook table's parser, ``parse(body, content_type, labels, received_at)`` ->
    :class:`~collector.parsing.ParsedBody`: the one dispatch the webhook and
    :mod:`collector.backfill` share."""
    return {
        "receipts": lambda body, content_type, labels, at: parse_request(body, content_type, labels, at, limits),
        "clicks": lambda body, content_type, labels, at: parse_clicks(body, content_type, labels, at, privacy),
        "replies": lambda body, content_type, labels, at: parse_replies(body, content_type, labels, at, privacy,
                                                                         limits),
    }


ARRIVAL_KEY = "dlrlens.arrival"
_SLASHES = re.compile("/{2,}")


def canonical_path(path: str) -> str:
    """``path`` with runs of slashes merged and a trailing slash dropped (``//dlr/`` is ``/dlr``)."""
    return _SLASHES.sub("/", path).rstrip("/") or "/"


# The webhook paths (each also with the secret as a last segment) and the table each stores to.
WEBHOOK_TABLES = {"/dlr": "receipts", "/click": "clicks", "/incoming": "replies"}


def is_receipt_path(path: str) -> bool:
    """A webhook path (``/dlr``, ``/click``, ``/incoming``, or one of them + ``/SECRET``), for a
    canonical ``path``: the routes of :func:`receive`, :func:`receive_clicks`, :func:`receive_replies`."""
    return any(path == base or path.startswith(base + "/") for base in WEBHOOK_TABLES)


def announce_receipts(wsgi_app, parts: dict):
    """WSGI middleware: makes ``PATH_INFO`` canonical (:func:`canonical_path`), so routing and
    this middleware see the same path; then every ``POST`` to a webhook path is announced to
    the write-ahead log as soon as it enters the app, so the log's next fsync waits (a
    millisecond or two at most) for the requests still being parsed and they share one fsync,
    and is answered here by :func:`answer_webhook`; leaving the app without appending withdraws
    the announcement. Anything else goes to Flask, and so does a webhook path that only Flask's
    router can decide (:func:`webhook_route`), whose view calls :func:`answer_webhook` in turn.
    ``parts`` is the app's ``extensions["dlrlens"]``."""
    storage: ReceiptStorage = parts["storage"]

    def app(environ, start_response):
        environ["PATH_INFO"] = path = canonical_path(environ.get("PATH_INFO", ""))
        if environ.get("REQUEST_METHOD") != "POST" or not is_receipt_path(path):
            return wsgi_app(environ, start_response)
        with storage.arrival() as arrival:
            environ[ARRIVAL_KEY] = arrival
            route = webhook_route(path)
            if route is None:
                return wsgi_app(environ, start_response)
            table, rule, secret = route
            answer = answer_webhook(parts, environ, table, rule, secret, arrival)
            log_request_line(logging.DEBUG if answer.outcome == "stored" else logging.INFO, "POST", rule,
                             answer.status, answer.outcome, environ.get("REMOTE_ADDR"))
            start_response(answer.status_line, [*answer.headers, ("Content-Length", str(len(answer.body)))])
            return [answer.body]
    return app


# -- the webhook, written once --------------------------------------------------------------
# Every check, count, refusal (with its kept body), store and answer of a webhook post is
# :func:`answer_webhook`, a plain function over the WSGI environ: the middleware above calls it
# without Flask's request machinery, which was most of the collector's own CPU per request
# (measured in process: 188 us a post through Flask, 51 us for the same checks, parse, log
# append and answer as plain WSGI; a bare Flask endpoint that only parses JSON costs 62 us).
# It reads the request as werkzeug does (query arguments, Content-Length, the input stream, the
# path's secret), so its answers are Flask's byte for byte; the Flask views only call it.

JSON_HEADERS = [("Content-Type", "application/json")]
INTERNAL_ERROR = {"error": "internal_error", "message": "the collector failed; the receipt was not stored"}


@dataclass(frozen=True)
class WebhookAnswer:
    """What :func:`answer_webhook` answers: status, headers (Content-Length aside), body, and the
    outcome the request's log line names (``stored``, ``partial``, a refusal's reason...)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    outcome: str

    @property
    def status_line(self) -> str:
        """As werkzeug writes it (``404 NOT FOUND``)."""
        return f"{self.status} {HTTP_STATUS_CODES.get(self.status, 'UNKNOWN').upper()}"


def json_body(doc: dict) -> bytes:
    """``doc`` as Flask's ``jsonify`` writes it (sorted keys, compact, ASCII, a final newline)."""
    return (json.dumps(doc, ensure_ascii=True, sort_keys=True, separators=(",", ":")) + "\n").encode()


def webhook_route(path: str) -> tuple[str, str, str | None] | None:
    """``(table, route, secret)`` of a canonical webhook ``path``, as Flask's router matches it
    (the secret decoded as werkzeug decodes a path). ``None`` for a secret with a line break,
    which the router matches only in part (``/dlr/a\\nb`` is a 404): Flask decides those."""
    base, _, raw_secret = path[1:].partition("/")
    table = WEBHOOK_TABLES.get("/" + base)
    if table is None or "\n" in raw_secret:
        return None
    if not raw_secret:
        return table, "/" + base, None
    try:
        secret = raw_secret.encode("latin1").decode(errors="replace")
    except UnicodeEncodeError:  # not a WSGI string: Flask decides
        return None
    return table, f"/{base}/<path:secret>", secret


class QueryArgs:
    """The query string's arguments as werkzeug's ``request.args`` (a MultiDict), parsed on first use."""

    def __init__(self, environ: dict):
        self._environ = environ
        self._args: MultiDict | None = None

    def __call__(self) -> MultiDict:
        if self._args is None:
            query = self._environ.get("QUERY_STRING", "").encode("latin1").decode()
            self._args = MultiDict(parse_qsl(query, keep_blank_values=True, errors="werkzeug.url_quote"))
        return self._args


def answer_webhook(parts: dict, environ: dict, table: str, route: str, secret: str | None,
                   arrival) -> WebhookAnswer:
    """Check, parse, store and answer one webhook post to ``table`` (``route``: the route it
    matched, ``secret``: the path's last segment, if any). ``arrival``: its announcement to the
    log (:func:`announce_receipts`), or ``None`` to store directly. A ``200`` only once the
    records are durable (under the collector's gunicorn worker the answer is held until the
    log's fsync, :mod:`collector.held_answers`, and no thread waits for it); every refusal is
    counted by reason and its body kept (:func:`refusal`); a bug answers a JSON ``500``."""
    try:
        return _answer_webhook(parts, environ, table, route, secret, arrival)
    except Exception:  # last resort, as unexpected_error for Flask: JSON, and not 200
        log.exception("event=unexpected_error path=%s", route)
        return WebhookAnswer(500, JSON_HEADERS, json_body(INTERNAL_ERROR), "internal_error")


def _answer_webhook(parts: dict, environ: dict, table: str, route: str, secret: str | None,
                    arrival) -> WebhookAnswer:
    settings: Settings = parts["settings"]
    storage: ReceiptStorage = parts["storage"]
    requests_name, received_name, _ = storage.counters.TABLE_NAMES[table]
    storage.counters.add(requests_name)
    args = QueryArgs(environ)
    source = environ.get("REMOTE_ADDR") or "-"

    def refused(status: int, reason: str, message: str, body: bytes = b"") -> WebhookAnswer:
        return refusal(parts, environ, route, args(), status, reason, message, body)

    if not address_allowed(source, settings.allow_networks):
        storage.counters.add("forbidden")
        return refused(403, "forbidden_source", f"source address {source} is not in the allow-list")
    if settings.tokens:
        # The secret first: the right one is never refused, whatever its source did before (a
        # guesser behind Mobivate's NAT must not lock Mobivate out), and costs no limiter work.
        if not token_matches([args().get("token"), basic_password(environ.get("HTTP_AUTHORIZATION", "")), secret],
                             settings.tokens):
            storage.counters.add("auth_failures")
            if parts["limiter"].record_failure(source):
                return refused(429, "too_many_auth_failures",
                               "too many failed attempts from this source; try again in a minute")
            return refused(401, "unauthorized", "missing or wrong webhook secret (token)")
    elif secret is not None:
        return refused(404, "not_found", "no such endpoint (no webhook secret is configured)")

    try:
        body = read_body(environ, settings.max_body_bytes)
    except RequestEntityTooLarge:
        return refused(413, "body_too_large", body_too_large(settings.max_body_bytes))
    except Exception as exc:  # a broken chunked encoding, a client that went away mid-body
        return refused(400, "unreadable_body", f"the request body could not be read: {type(exc).__name__}")
    received_at = datetime.now(timezone.utc)
    try:
        labels = checked_url_labels(args().items(multi=True), parts["label_policy"])
        parsed = parts["parsers"][table](body, environ.get("CONTENT_TYPE"), labels, received_at)
    except BadBody as exc:
        return refused(exc.status, exc.reason, exc.message, body)

    storage.counters.add(received_name, len(parsed.records) + parsed.error_total)
    hold = hold_function(environ) if arrival is not None else None
    try:
        if hold is None:
            (storage.store if arrival is None else arrival.append)(parsed.records, table)
        else:
            durability = arrival.append_nowait(parsed.records, table)
    except StorageError as exc:
        log_storage_unavailable(exc)
        status, headers, unavailable = storage_unavailable(table)
        return WebhookAnswer(status, headers, unavailable, "storage_unavailable")
    if hold is not None:
        hold(durability, storage_unavailable(table))
        durability.add_done_callback(_log_if_failed)
    if not parsed.errors:
        return WebhookAnswer(200, JSON_HEADERS, stored_answer(len(parsed.records)), "stored")

    for reason, count in parsed.error_counts.items():
        storage.counters.reject(reason, count)
    rejected = parsed.rejected_summary()
    parts["rejected"].keep_body("partial", body, {
        "status": 207, "stored": len(parsed.records), **rejected, "labels": labels, "received_at": received_at,
    })
    answer = {"status": "partial", "stored": len(parsed.records), **rejected}
    return WebhookAnswer(207, JSON_HEADERS, json.dumps(answer).encode(), "partial")


def read_body(environ: dict, limit: int) -> bytes:
    """The request body as werkzeug's ``request.stream`` gives it, refusing (413) one over
    ``limit`` bytes, with or without a Content-Length: a chunked body is read up to one byte
    past the limit, never truncated."""
    length = get_content_length(environ)
    if length is not None and length > limit:
        raise RequestEntityTooLarge()
    body = get_input_stream(environ).read(limit + 1)
    if len(body) > limit:
        raise RequestEntityTooLarge()
    return body


def body_too_large(limit: int) -> str:
    return f"body is larger than the limit of {limit} bytes"


def refusal(parts: dict, environ: dict, route: str, args: MultiDict, status: int, reason: str, message: str,
            body: bytes = b"") -> WebhookAnswer:
    """A 4xx JSON error, counted by reason, the body kept for audit (``route``: the route the
    request matched, :func:`logged_path`; ``args``: its query arguments)."""
    arrival = environ.get(ARRIVAL_KEY)
    if arrival is not None:
        arrival.cancel()  # nothing to append: do not hold other requests' fsync while the body is kept
    parts["storage"].counters.reject(reason)
    parts["rejected"].keep_body(reason, body, {
        "status": status, "message": message, "content_type": environ.get("CONTENT_TYPE"),
        "method": environ.get("REQUEST_METHOD", "GET").upper(), "endpoint": route,
        "labels": url_labels(args.items(multi=True)), "remote_addr": environ.get("REMOTE_ADDR"),
        "received_at": datetime.now(timezone.utc),
    })
    return WebhookAnswer(status, JSON_HEADERS, json_body({"error": reason, "message": message}), reason)


def stored_answer(stored: int) -> bytes:
    """The ``200`` body for ``stored`` records, byte for byte what ``jsonify`` writes."""
    return b'{"status":"stored","stored":%d}\n' % stored


def _ctx() -> dict:
    return current_app.extensions["dlrlens"]


def storage_of(app: Flask) -> ReceiptStorage:
    return app.extensions["dlrlens"]["storage"]


# -- answers -------------------------------------------------------------------------------


def refuse(status: int, reason: str, message: str, body: bytes = b"") -> Response:
    """:func:`refusal` for the request Flask is handling."""
    return flask_response(refusal(_ctx(), request.environ, logged_path(), request.args, status, reason, message, body))


def flask_response(answer: WebhookAnswer) -> Response:
    g.outcome = answer.outcome
    return Response(answer.body, status=answer.status, headers=answer.headers)


def http_error(exc: HTTPException) -> Response:
    reasons = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
    reason = reasons.get(exc.code, (exc.name or "http_error").lower().replace(" ", "_"))
    if exc.code == 404:
        # never echo the path: it may hold a secret
        message = "no such endpoint; receipts go to POST /dlr, clicks to POST /click, replies to POST /incoming"
    elif exc.code == 405:
        message = f"{request.method} is not allowed here; use {', '.join(sorted(exc.valid_methods or []))}"
    elif exc.code == 413:
        message = body_too_large(current_app.config["MAX_BODY_BYTES"])
    else:
        message = exc.description or exc.name
    response = refuse(exc.code or 400, reason, message)
    if exc.code == 405 and exc.valid_methods:
        response.headers["Allow"] = ", ".join(sorted(exc.valid_methods))
    return response


def unexpected_error(exc: Exception) -> Response:
    """Last resort: a bug must still answer JSON, and not 200. 500 means 'not stored, retry'."""
    log.exception("event=unexpected_error path=%s", logged_path())
    return flask_response(WebhookAnswer(500, JSON_HEADERS, json_body(INTERNAL_ERROR), "internal_error"))


def logged_path() -> str:
    """The route a request matched (``/dlr/<path:secret>``), a known path asked with the
    wrong method, or ``<unknown path>``: never a path as sent, which may carry the secret
    (``/api/dlr/SECRET``, ``/./dlr/SECRET``)."""
    if request.url_rule is not None:
        return request.url_rule.rule
    if any(rule.rule == request.path for rule in current_app.url_map.iter_rules()):
        return request.path
    return "<unknown path>"


def log_request(response: Response) -> Response:
    # One line per request, never with the query string or a path as sent. A stored
    # receipt is the common case, thousands a second under load: its line is debug-level
    # (the flusher logs one summary line per flush); everything else is info.
    if request.path == "/metrics":
        return response
    level = logging.DEBUG if g.get("outcome") == "stored" else logging.INFO
    log_request_line(level, request.method, logged_path(), response.status_code, g.get("outcome", "-"),
                     request.remote_addr)
    return response


def log_request_line(level: int, method: str, path: str, status: int, outcome: str, remote: str | None) -> None:
    """The one line per request (``path`` is a route, never the path as sent)."""
    if log.isEnabledFor(level):
        log.log(level, "event=request method=%s path=%s status=%d outcome=%s remote=%s",
                method, path, status, outcome, remote)


# -- views ---------------------------------------------------------------------------------


def basic_password(header: str) -> str | None:
    """The password of an ``Authorization: Basic`` header (the secret may come that way)."""
    if not header[:6].lower() == "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return None
    return decoded.partition(":")[2]


def receive(secret: str | None = None) -> Response:
    """Store the receipts in the body; 200 only once they are durable."""
    return _receive("receipts", secret)


def receive_clicks(secret: str | None = None) -> Response:
    """Store the short-URL clicks in the body; 200 only once they are durable."""
    return _receive("clicks", secret)


def receive_replies(secret: str | None = None) -> Response:
    """Store the incoming messages (replies) in the body; 200 only once they are durable."""
    return _receive("replies", secret)


def _receive(table: str, secret: str | None) -> Response:
    """The Flask view of every webhook: :func:`answer_webhook`. Reached only for the paths
    :func:`webhook_route` leaves to Flask's router, or in an app without :func:`announce_receipts`."""
    arrival = request.environ.get(ARRIVAL_KEY)  # set by announce_receipts; without it, store directly
    return flask_response(answer_webhook(_ctx(), request.environ, table, request.url_rule.rule, secret, arrival))


def storage_unavailable(table: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """The ``503`` (status, headers, JSON body) for records that could not be made durable."""
    body = json.dumps({"error": "storage_unavailable",
                       "message": f"{table} could not be stored durably; nothing was acknowledged, retry later"},
                      separators=(",", ":"))  # as jsonify writes it
    return 503, [("Content-Type", "application/json"), ("Retry-After", "5")], body.encode() + b"\n"


def log_storage_unavailable(exc: BaseException) -> None:
    log.error("event=storage_unavailable error=%r", str(exc))


def _log_if_failed(durability) -> None:
    if durability.error is not None:
        log_storage_unavailable(durability.error)


def healthz() -> Response:
    """200 when storage is writable (a real fsynced write), with the log backlog; else 503.

    With a publisher (the Iceberg store) that cannot publish now, the status is "degraded" but
    the code stays 200: receipts are still acknowledged from the local log (a load balancer
    must keep sending), and ``store`` says what fails and how much waits in the log. Likewise
    while the collector replays what a previous run left in the logs (``catching_up``: a restart
    answers at once and catches up in the background, see :mod:`dlrlens.store.writer`). That
    state is the whole collector's (any worker still replaying, :mod:`dlrlens.store.catch_up`),
    whichever worker answers; ``this_worker`` says this worker's own."""
    storage: ReceiptStorage = _ctx()["storage"]
    writable, problem = True, None
    try:
        probe_writable(storage.data_dir)
    except OSError as exc:
        writable, problem = False, error_kind(exc)  # str(exc) would name the data directory
    local_ok = writable and not storage.last_flush_error
    replay = storage.collector_catching_up()
    doc = {
        "status": "ok" if local_ok and not replay["catching_up"] else "degraded",
        "catching_up": replay["catching_up"],
        "catching_up_slots": replay["slots"],
        "catching_up_since": replay["since"],
        "this_worker": {"slot": storage.slot, "catching_up": storage.catching_up},
        "storage_writable": writable,
        "storage_error": problem,
        "last_flush_error": storage.last_flush_error,
        "slot": storage.slot,
        "backlog": storage.backlog(),
        "quarantined_segments": storage.quarantined_segments(),
    }
    if storage.publish is not None:
        doc["store"] = storage.publish.health(storage.wal_root, storage.flush_seconds)
        if doc["store"]["degraded"]:
            doc["status"] = "degraded"
    response = jsonify(doc)
    response.status_code = 200 if local_ok else 503
    return response


def metrics_text() -> Response:
    storage: ReceiptStorage = _ctx()["storage"]
    return Response(metrics.render(storage), mimetype="text/plain; version=0.0.4")
