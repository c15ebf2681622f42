"""Run the collector under gunicorn (threaded workers), in the foreground.

Each worker process builds its own app (no preload), so each takes its own writer slot
and flushes its own log; on a clean stop a worker flushes what it holds before exiting.
The master also runs the maintenance process (derived state, compaction) while it serves.
Gunicorn's access log is off: it would print the query string, which may carry the
webhook secret. The app logs one redacted line per request instead.
"""

from __future__ import annotations

import logging
import sys

from gunicorn.app.base import BaseApplication

from collector.settings import Settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)


def _post_worker_init(worker) -> None:
    _configure_logging()


def _worker_exit(server, worker) -> None:
    app = getattr(worker, "wsgi", None)
    parts = getattr(app, "extensions", {}).get("dlrlens", {}) if app else {}
    if parts.get("storage") is not None:
        parts["storage"].close()


def gunicorn_options(host: str, port: int, workers: int, threads: int) -> dict:
    """The gunicorn settings the collector runs with (benchmarks reuse them for fairness)."""
    return {
        "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread",
        "timeout": 60,
        "graceful_timeout": 30,
        "keepalive": 5,
        # Each worker gets its own listening socket and the kernel spreads connections across
        # them; with one shared socket a single worker tends to hold most keep-alive connections.
        "reuse_port": True,
        "accesslog": None,
        "control_socket_disable": True,  # one shared socket path would clash between instances
        "errorlog": "-",
        "loglevel": "info",
        "limit_request_line": 8190,
        "limit_request_fields": 100,
        "post_worker_init": _post_worker_init,
        "worker_exit": _worker_exit,
    }


class WsgiServer(BaseApplication):
    """Gunicorn serving the app that ``load_app()`` builds in each worker."""

    def __init__(self, load_app, options: dict):
        self.load_app = load_app
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        return self.load_app()


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8080, workers: int = 2, threads: int = 16) -> None:
    """Serve until stopped (SIGTERM/SIGINT); returns after every worker flushed and exited."""
    def load_app():
        from collector.app import create_app

        return create_app(settings)

    maintenance_process = None

    def when_ready(server) -> None:
        nonlocal maintenance_process
        from collector import maintenance

        maintenance_process = maintenance.start_process(settings)

    def on_exit(server) -> None:
        if maintenance_process is not None:
            maintenance_process.stop()

    options = dict(gunicorn_options(host, port, workers, threads), when_ready=when_ready, on_exit=on_exit)
    WsgiServer(load_app, options).run()
