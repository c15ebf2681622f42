"""A local fake of Mobivate's send-record endpoints (tests and the demo; never production).

Serves, on loopback, the documented shapes: the older API's message log ``GET /message``
(page/pageSize, a JSON array) and ``GET /message/<id>``; the newer API's ``GET
/messages/campaigns`` and ``GET /messages/history`` (offset/limit; the history in the documented
``records``/``total`` shape or the observed ``results``/``matches`` one). Every call needs
``Authorization: Bearer <key>``.

Switches (:class:`Switches`, changed by tests in-process or by ``POST /_control`` with a JSON
object of the same fields) make the edge cases happen: answers queued by status (``500``,
``429`` with ``Retry-After``, ``401``, ``403``), slow answers (a client timeout), malformed
bodies for given pages, a record inserted at the front after the first page (a page that
changes between calls), duplicate records, the history's observed shape.

:func:`generate_records` makes a deterministic data set: several countries' numbers and an
unparseable one, two currencies, campaign ids with names, some records for messages whose
receipts never arrive (the caller decides which ids get receipts).
"""

from __future__ import annotations

import json
import random
from functools import lru_cache
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone

from flask import Flask, Response, jsonify, request

UTC = timezone.utc

# (country, number prefix, digits after it): numbers phonenumbers places in those countries.
NUMBER_PLANS = (("GB", "447700900", 3), ("GB", "447911123", 3), ("US", "1201555", 4), ("DE", "4915112345", 3),
                ("AU", "6141255", 4), ("ZA", "2782555", 4), ("FR", "3361234", 4))
UNPARSEABLE_NUMBER = "12345"


@dataclass
class Switches:
    """What the fake does on its next answers (see the module docstring)."""

    statuses: list = field(default_factory=list)  # answer these statuses first (one per call)
    retry_after: str | None = "1"  # Retry-After of a queued 429
    slow_calls: int = 0  # this many next calls sleep slow_seconds first
    slow_seconds: float = 0.0
    malformed: list = field(default_factory=list)  # ["/message:2", "/messages/history:0"] (page or offset)
    bad_record_pages: list = field(default_factory=list)  # same keys: a record with a bad created
    insert_after_first_page: bool = False  # a new record appears at the front once page 1 was served
    duplicate_every: int = 0  # every n-th log record is served twice in a row
    history_shape: str = "documented"  # or "observed" (results/matches, price, created_at)


def _hex_id(rng: random.Random) -> str:
    return "%032X" % rng.getrandbits(128)


def generate_records(count: int, start: datetime, end: datetime, *, seed: int = 7, campaigns: int = 4,
                     currencies=("GBP", "EUR")) -> tuple[list[dict], list[dict]]:
    """``count`` message-log records created in [start, end) and the campaign list they use.

    Deterministic for a seed. Every 50th record has an unparseable number; a third of the
    campaigns bill in the second currency; some records have no campaign; a few are MO."""
    rng = random.Random(seed)
    campaign_list = [{"id": f"cmp-{i:04d}-{rng.getrandbits(32):08x}", "name": f"Campaign {i + 1}",
                      "recipientCount": 0, "scheduled": start.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                      "status": "Completed"} for i in range(campaigns)]
    span = (end - start).total_seconds()
    records = []
    for i in range(count):
        created = start + timedelta(seconds=int(span * i / max(count, 1)))
        campaign = campaign_list[rng.randrange(campaigns)] if campaigns and rng.random() < 0.9 else None
        if i % 50 == 49:
            recipient = UNPARSEABLE_NUMBER
        else:
            _, prefix, digits = NUMBER_PLANS[rng.randrange(len(NUMBER_PLANS))]
            recipient = prefix + "".join(str(rng.randrange(10)) for _ in range(digits))
        currency = currencies[-1] if campaign and campaign_list.index(campaign) % 3 == 2 else currencies[0]
        status = rng.choices(["DELIVERED", "UNDELIVERABLE", "EXPIRED", "SENT"], [80, 10, 5, 5])[0]
        records.append({
            "id": _hex_id(rng), "created": created.strftime("%Y-%m-%dT%H:%M:%S+0000"),
            "modified": (created + timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%S+0000"),
            "originator": rng.choice(["ACME", "AcmeBank", "447700000001"]), "recipient": recipient,
            "body": "Hello, this text must never be stored", "status": status,
            "direction": "MO" if i % 97 == 96 else "MT", "inReplyTo": None,
            "routeId": rng.choice(["mglobal", "premium-uk"]), "parts": rng.choice([1, 1, 1, 2]),
            "cost": round(rng.choice([0.01, 0.02, 0.035]), 4), "currency": currency,
            "senderReference": f"ref-{i}", "campaignId": campaign["id"] if campaign else None,
        })
    for campaign in campaign_list:
        campaign["recipientCount"] = sum(r["campaignId"] == campaign["id"] for r in records)
    return records, campaign_list


def history_record(record: dict, shape: str) -> dict:
    """A message-log record as the newer API's history shows it (``documented`` or ``observed``)."""
    created = record["created"].replace("+0000", ".000Z")
    if shape == "observed":
        return {"id": record["id"], "reference": record["senderReference"], "status": record["status"].title(),
                "price": record["cost"], "currency": record["currency"], "parts": record["parts"],
                "created_at": created, "updated_at": record["modified"].replace("+0000", ".000Z")}
    return {"id": record["id"], "recipient": record["recipient"], "originator": record["originator"],
            "text": record["body"], "status": record["status"].title(), "sent_on": created}


@lru_cache(maxsize=None)  # every page filters the whole log by time: parse each text once
def _parse_time(text: str, end: bool = False) -> datetime:
    text = text.strip()
    if len(text) == 10:
        moment = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
        return moment + timedelta(days=1) - timedelta(microseconds=1) if end else moment
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z").astimezone(UTC)


def create_app(records: list[dict], campaigns: list[dict], *, api_key: str = "test-key",
               history: list[dict] | None = None, switches: Switches | None = None) -> Flask:
    """The fake API over ``records`` (message log) and ``campaigns``; ``history`` (default: the
    log's MT records) feeds ``/messages/history``. ``app.config['SWITCHES']``: the switches;
    ``app.config['CALLS']``: every call received (path and query)."""
    app = Flask("fake_mobivate")
    state = {"switches": switches or Switches(), "inserted": False, "lock": threading.Lock()}
    app.config["SWITCHES"] = state["switches"]
    app.config["CALLS"] = []
    log = list(records)

    def take(attribute):
        with state["lock"]:
            queue = getattr(app.config["SWITCHES"], attribute)
            return queue.pop(0) if queue else None

    @app.before_request
    def gate():
        if request.path == "/_control":
            return None
        app.config["CALLS"].append((request.path, request.query_string.decode()))
        sw = app.config["SWITCHES"]
        if sw.slow_calls > 0:
            sw.slow_calls -= 1
            time.sleep(sw.slow_seconds)
        status = take("statuses")
        if status is not None:
            body = {"code": status, "message": {401: "Unauthorized", 403: "Forbidden", 429: "Too Many Requests"}
                    .get(status, "Internal Server Error")}
            response = jsonify(body)
            response.status_code = status
            if status == 429 and sw.retry_after is not None:
                response.headers["Retry-After"] = sw.retry_after
            return response
        if request.headers.get("Authorization") != f"Bearer {api_key}":
            return jsonify({"code": 401, "message": "Unauthorized"}), 401
        return None

    def malformed(path: str, key: int) -> Response | None:
        if f"{path}:{key}" in app.config["SWITCHES"].malformed:
            return Response('{"records": [ {"id": "truncated', status=200, mimetype="application/json")
        return None

    @app.post("/_control")
    def control():
        app.config["SWITCHES"] = Switches(**{**asdict(app.config["SWITCHES"]), **request.get_json()})
        return jsonify(asdict(app.config["SWITCHES"]))

    @app.get("/message")
    def message_log():
        try:
            start = _parse_time(request.args["startDate"])
            end = _parse_time(request.args["endDate"], end=True)
            page = int(request.args.get("page", 1))
            size = int(request.args.get("pageSize", 10))
        except (KeyError, ValueError):
            return jsonify({"code": 400, "message": "Bad Request"}), 400
        if size > 1000 or size < 1 or page < 1:
            return jsonify({"code": 400, "message": "pageSize must be 1-1000"}), 400
        bad = malformed("/message", page)
        if bad is not None:
            return bad
        sw = app.config["SWITCHES"]
        if sw.insert_after_first_page and page > 1 and not state["inserted"]:
            # A message sent while the client pages: every later record moves one place back.
            first = dict(log[0]) if log else None
            if first is not None:
                first["id"] = "F" * 32
                log.insert(0, first)
            state["inserted"] = True
        window = [r for r in log if start <= _parse_time(r["created"]) <= end]
        if sw.duplicate_every:
            window = [x for i, r in enumerate(window) for x in ([r, r] if i % sw.duplicate_every == 0 else [r])]
        chosen = window[(page - 1) * size: page * size]
        if f"/message:{page}" in sw.bad_record_pages and chosen:
            chosen = [dict(chosen[0], created="yesterday")] + chosen[1:]
        return Response(json.dumps(chosen), mimetype="application/json")

    @app.get("/message/<message_id>")
    def one_message(message_id):
        for record in log:
            if record["id"] == message_id:
                return jsonify(record)
        return jsonify({"code": 404, "message": "Not Found"}), 404

    def offset_page(path: str, items: list[dict], observed: bool):
        try:
            # Checked as Mobivate checks them (a bad date is a 400), but not applied: the fake
            # serves every campaign and history record of its log, whatever the window.
            _parse_time(request.args["fromDate"])
            _parse_time(request.args["toDate"], end=True)
            offset = int(request.args.get("offset", 0))
            limit = int(request.args.get("limit", 10))
        except (KeyError, ValueError):
            return jsonify({"success": False, "message": "Bad Request"}), 400
        bad = malformed(path, offset)
        if bad is not None:
            return bad
        chosen = items[offset: offset + limit]
        if observed:
            return jsonify({"success": True, "results": chosen, "matches": len(items)})
        return jsonify({"success": True, "records": chosen, "offset": offset, "limit": limit, "total": len(items)})

    def in_window(created: str) -> bool:
        start = _parse_time(request.args.get("fromDate", "1970-01-01"))
        end = _parse_time(request.args.get("toDate", "9999-12-31"), end=True)
        return start <= _parse_time(created) <= end

    @app.get("/messages/campaigns")
    def campaign_list():
        return offset_page("/messages/campaigns", campaigns, observed=False)

    windows: dict = {}  # (shape, fromDate, toDate) -> the history records of that window

    @app.get("/messages/history")
    def message_history():
        shape = app.config["SWITCHES"].history_shape
        key = (shape, request.args.get("fromDate"), request.args.get("toDate"), len(log))
        if key not in windows:
            source = history if history is not None else [r for r in log if r.get("direction") == "MT"]
            windows[key] = [history_record(r, shape) for r in source if in_window(r["created"])]
        return offset_page("/messages/history", windows[key], observed=shape == "observed")

    return app


class FakeServer:
    """The fake on a free loopback port in a thread (real HTTP); ``url``; :meth:`stop`."""

    def __init__(self, app: Flask, host: str = "127.0.0.1", port: int = 0):
        from werkzeug.serving import WSGIRequestHandler, make_server

        class QuietHandler(WSGIRequestHandler):
            def log_request(self, *args, **kwargs):  # no access log on the test's or demo's terminal
                pass

        self.app = app
        self._server = make_server(host, port, app, threaded=True, request_handler=QuietHandler)
        self.url = f"http://{host}:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-mobivate", daemon=True)
        self._thread.start()

    @property
    def switches(self) -> Switches:
        return self.app.config["SWITCHES"]

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """``python3 -m dlrlens.fake_mobivate --records N [--days D] [--port P]``: serve a generated
    data set until stopped (benchmarks, manual trials). Prints its URL; the key is ``--key``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python3 -m dlrlens.fake_mobivate", description=main.__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--key", default="test-key")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    records, campaigns = generate_records(args.records, end - timedelta(days=args.days), end, seed=args.seed)
    server = FakeServer(create_app(records, campaigns, api_key=args.key), port=args.port)
    print(server.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
