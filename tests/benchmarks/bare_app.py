"""The ingest benchmark's baseline: a Flask endpoint that only parses the JSON body.

It runs under exactly the gunicorn settings the collector uses
(:func:`collector.server.gunicorn_options` and :class:`collector.server.WsgiServer`), so
the benchmark's collector/bare ratio measures what the collector does per receipt
(validation, normalising, write-ahead log with fsync, Parquet flushes, logging) and
nothing about the HTTP stack, which both share.

Run on its own (the benchmark starts it as a separate process)::

    python3 -m tests.benchmarks.bare_app --port 8099 --workers 2 --threads 16
"""

from __future__ import annotations

import argparse
import json

from flask import Flask, Response, jsonify, request

from collector.server import WsgiServer, gunicorn_options


def create_bare_app() -> Flask:
    """``POST /dlr`` (and ``/click``, ``/incoming``): parse the JSON body, answer ``200`` with the
    collector's answer shape.

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
        # Same answer shape and size as the collector's, so both send the same bytes back.
        return jsonify(status="stored", stored=len(document) if isinstance(document, list) else 1)

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok")

    return app


def serve_bare(host: str, port: int, workers: int, threads: int) -> None:
    """Serve the bare app in the foreground until SIGTERM/SIGINT."""
    WsgiServer(create_bare_app, gunicorn_options(host, port, workers, threads)).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.benchmarks.bare_app", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args(argv)
    serve_bare(args.host, args.port, args.workers, args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
