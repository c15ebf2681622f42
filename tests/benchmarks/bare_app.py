"""The ingest benchmark's baseline, and its durable peers' app: a Flask endpoint that parses
the JSON body and answers 200, optionally after storing it.

It runs under exactly the gunicorn settings the collector uses
(:func:`collector.server.gunicorn_options` and :class:`collector.server.WsgiServer`), so
the benchmark's collector/bare ratio measures what the collector does per receipt
(validation, normalising, write-ahead log with fsync, Parquet flushes, logging) and
nothing about the HTTP stack, which both share. With ``--store`` the same app stores every
parsed body durably before answering (:mod:`tests.benchmarks.durable_peers`: PostgreSQL or
SQLite, one transaction per request), what a user would build instead of the collector.

Run on its own (the benchmark starts it as a separate process)::

    python3 -m tests.benchmarks.bare_app --port 8099 --workers 2 --threads 16
    python3 -m tests.benchmarks.bare_app --port 8099 --store postgres --dsn "host=127.0.0.1 port=5432 ..."
    python3 -m tests.benchmarks.bare_app --port 8099 --store sqlite --database /tmp/peer.sqlite
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path

from flask import Flask, Response, jsonify, request

from collector.server import WsgiServer, gunicorn_options

log = logging.getLogger("dlrlens.bare_app")

# store(path, campaign, documents): returns once the documents are durable, raises when they are not.
Store = Callable[[str, "str | None", list], None]


def create_bare_app(store: Store | None = None) -> Flask:
    """``POST /dlr`` (and ``/click``, ``/incoming``): parse the JSON body, ``store`` its elements
    when given (``503`` when that fails), answer ``200`` with the collector's answer shape.

    ``GET /healthz`` answers ``200`` so the benchmark can wait for either server the same way.
    """
    app = Flask(__name__)

    @app.post("/dlr")
    @app.post("/click")
    @app.post("/incoming")
    def receive() -> Response:
        try:
            document = json.loads(request.get_data(cache=False))
        except ValueError:
            response = jsonify(error="bad_json", message="body is not JSON")
            response.status_code = 400
            return response
        documents = document if isinstance(document, list) else [document]
        if store is not None:
            try:
                store(request.path, request.args.get("campaign"), documents)
            except Exception as exc:
                log.error("event=store_failed error=%s", type(exc).__name__)
                response = jsonify(error="storage_unavailable", message="not stored; retry later")
                response.status_code = 503
                return response
        # Same answer shape and size as the collector's, so both send the same bytes back.
        return jsonify(status="stored", stored=len(documents))

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok")

    return app


def make_store(kind: str, dsn: str | None = None, database: str | None = None) -> Store | None:
    """The ``--store`` of the command line: ``none``, ``postgres`` (``dsn``) or ``sqlite`` (``database``)."""
    from tests.benchmarks import durable_peers

    if kind == "postgres":
        return durable_peers.PostgresStore(dsn)
    if kind == "sqlite":
        return durable_peers.SqliteStore(Path(database))
    return None


def serve_bare(host: str, port: int, workers: int, threads: int, store: str = "none", dsn: str | None = None,
               database: str | None = None) -> None:
    """Serve the bare app (or a durable peer, see :func:`make_store`) in the foreground until SIGTERM/SIGINT."""
    WsgiServer(lambda: create_bare_app(make_store(store, dsn, database)),
               gunicorn_options(host, port, workers, threads)).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.benchmarks.bare_app", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--store", choices=("none", "postgres", "sqlite"), default="none",
                        help="store each body before answering (default: none, the bare endpoint)")
    parser.add_argument("--dsn", help="--store postgres: the libpq connection string")
    parser.add_argument("--database", help="--store sqlite: the database file (WAL mode, table made beforehand)")
    args = parser.parse_args(argv)
    if args.store == "postgres" and not args.dsn:
        parser.error("--store postgres needs --dsn")
    if args.store == "sqlite" and not args.database:
        parser.error("--store sqlite needs --database")
    serve_bare(args.host, args.port, args.workers, args.threads, args.store, args.dsn, args.database)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
