"""Run the collector under gunicorn (threaded workers), in the foreground.

Each worker process builds its own app (no preload), so each takes its own writer slot
and flushes its own log; on a clean stop a worker flushes what it holds before exiting.
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
    storage = getattr(app, "extensions", {}).get("dlrlens", {}).get("storage") if app else None
    if storage is not None:
        storage.close()


class CollectorServer(BaseApplication):
    def __init__(self, settings: Settings, host: str, port: int, workers: int, threads: int):
        self.settings = settings
        self.options = {
            "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
            "workers": workers,
            "threads": threads,
            "worker_class": "gthread",
            "timeout": 60,
            "graceful_timeout": 30,
            "keepalive": 5,
            "accesslog": None,
            "control_socket_disable": True,  # one shared socket path would clash between instances
            "errorlog": "-",
            "loglevel": "info",
            "limit_request_line": 8190,
            "limit_request_fields": 100,
            "post_worker_init": _post_worker_init,
            "worker_exit": _worker_exit,
        }
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        from collector.app import create_app

        return create_app(self.settings)


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8080, workers: int = 2, threads: int = 16) -> None:
    """Serve until stopped (SIGTERM/SIGINT); returns after every worker flushed and exited."""
    CollectorServer(settings, host, port, workers, threads).run()
