"""Run the collector under gunicorn (threaded workers), in the foreground.

Each worker process builds its own app (no preload), so each takes its own writer slot
and flushes its own log; on a clean stop a worker flushes what it holds before exiting.
The master also runs the maintenance process (derived state, compaction) while it serves, and
the alerts process when an alerts file is configured (``dlrlens.alerts.process``).

Contracts:

* No log line carries a webhook secret. Gunicorn's access log is off (it would print the
  query string); the app logs one line per request with the route, never the path as sent.
  Gunicorn's own error lines can still quote a request (``Invalid request ... Invalid Request
  Line '...'`` quotes the whole line, query string included), so every handler of gunicorn's
  loggers and of the root logger passes through :data:`collector.security.LOG_REDACTOR`,
  which removes every configured secret in each form a request can carry it.
* A worker thread is given to a connection only once its request head (request line and
  headers) has arrived whole: until then the worker's main loop reads it without blocking.
  A head that has not arrived within ``header_timeout`` seconds (``DLRLENS_HEADER_TIMEOUT_SECONDS``)
  gets ``408`` and the connection is closed; a head over :data:`MAX_HEAD_BYTES` gets ``431``.
  Once a thread has the connection, a client silent for ``header_timeout`` seconds in the
  middle of its body is dropped. So slow clients cost a socket, not a thread; a client that
  trickles its body steadily still holds a thread (a proxy in front bounds that, SECURITY.md).
* A durable answer is never sent before its fsync, and no thread waits for the fsync: the app
  hands the worker the log batch its records joined (:mod:`collector.held_answers`, see
  :meth:`HeadFirstWorker.handle_request`); the worker keeps the response bytes and its event
  loop sends them once the log's writer says the batch is durable, or sends the app's ``503``
  (and closes) when the batch failed. Why: 16 threads each blocked on an fsync woke together
  at every batch and fought for the GIL (17 context switches per request against 3.6 for a
  bare endpoint, measured); now one wake of the event loop per batch releases every answer.
"""

from __future__ import annotations

import logging
import selectors
import socket
import sys
import threading
import time
from collections import deque
from functools import partial

from gunicorn import glogging
from gunicorn.app.base import BaseApplication
from gunicorn.http.unreader import SocketUnreader
from gunicorn.workers.gthread import ThreadWorker

from collector.held_answers import HoldableSocket
from collector.security import LOG_REDACTOR, redact_secrets_in_logs
from collector.settings import Settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

# The largest request head (request line and headers) read before a thread takes over. A
# Mobivate callback's head is under 1 KiB; gunicorn's own limits (8190-byte request line, 100
# headers of 8190 bytes) would let one connection buffer 800 KiB in the main loop.
MAX_HEAD_BYTES = 64 * 1024


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        handler.addFilter(LOG_REDACTOR)  # werkzeug, flask and dlrlens lines end up here


def _post_worker_init(worker) -> None:
    _configure_logging()


def _worker_exit(server, worker) -> None:
    app = getattr(worker, "wsgi", None)
    parts = getattr(app, "extensions", {}).get("dlrlens", {}) if app else {}
    if parts.get("storage") is not None:
        parts["storage"].close()


class RedactingLogger(glogging.Logger):
    """Gunicorn's logger, with :data:`LOG_REDACTOR` on each of its handlers. ``setup`` runs
    again on a configuration reload (SIGHUP) and replaces the handlers, so it adds it again."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        for logger in (self.error_log, self.access_log):
            for handler in logger.handlers:
                handler.addFilter(LOG_REDACTOR)


class _IdleTimeoutUnreader(SocketUnreader):
    """Reads a connection in a worker thread with a bound on each wait: a client that sends
    nothing for ``idle_timeout`` seconds (mid-head after a pipelined request, or mid-body)
    raises ``socket.timeout`` instead of holding the thread until it goes away."""

    def __init__(self, sock, idle_timeout: float):
        super().__init__(sock)
        self.idle_timeout = idle_timeout

    def chunk(self, size_hint=None):
        if self.sock.gettimeout() is None:  # unbounded blocking; gunicorn's body drain sets its own
            self.sock.settimeout(self.idle_timeout)
        return super().chunk(size_hint)


def _head_complete(head: bytearray, new: int) -> bool:
    """Whether the blank line that ends a request head is in ``head`` (``new`` bytes just came)."""
    start = max(0, len(head) - new - 3)
    return head.find(b"\r\n\r\n", start) >= 0 or head.find(b"\n\n", start) >= 0


class HeadFirstWorker(ThreadWorker):
    """Gunicorn's threaded worker, but its main loop reads each request head (non-blocking)
    and hands the connection to a thread only once the head is whole.

    Why: the stock worker gives a connection to a thread as soon as a byte arrives and the
    thread then reads the head blocking, so 40 clients sending a header byte now and then
    held all 32 threads of 2 workers and stalled every other post for as long as they kept at
    it (28 s in the drill). Reading heads in the main loop costs a normal client nothing
    measurable: its head is usually there when the connection is accepted or becomes
    readable, and goes to a thread at that first read (posts/s from 4 clients, with and
    without keep-alive, stayed within the noise of the shared 2-core machine).

    Relies on gunicorn's gthread internals (``enqueue_req``, ``murder_pending``, ``TConn``);
    :meth:`init_process` refuses to start on a gunicorn without them.
    """

    header_timeout = 10.0  # seconds; gunicorn_options sets it from DLRLENS_HEADER_TIMEOUT_SECONDS

    def init_process(self) -> None:
        missing = [name for name in ("enqueue_req", "murder_pending", "finish_request")
                   if not hasattr(ThreadWorker, name)]
        missing += [] if hasattr(SocketUnreader, "take_buffered") else ["SocketUnreader.take_buffered"]
        if missing:
            raise RuntimeError(f"HeadFirstWorker needs gunicorn 27's gthread worker; missing: {', '.join(missing)}")
        self.heads: deque = deque()  # connections whose head is arriving, oldest deadline first
        self.held: dict = {}  # durability -> [(conn, future, holdable socket)] waiting for it
        self.held_lock = threading.Lock()
        self.tls = bool(self.cfg.is_ssl)  # a property lookup in gunicorn's config: 6% of the loop's time
        super().init_process()

    # -- answers held until their records are durable ------------------------------------

    def handle_request(self, req, conn):
        """gunicorn's, with the response written to a :class:`HoldableSocket` (a thread)."""
        conn.dlrlens_held = None
        real = conn.sock
        conn.sock = holdable = HoldableSocket(real)
        try:
            keepalive = super().handle_request(req, conn)
        finally:
            conn.sock = real
        if holdable.durability is not None:
            conn.dlrlens_held = holdable
        return keepalive

    def _submit(self, conn) -> None:
        """gunicorn's ``enqueue_req``, except that a held answer is parked by the thread that
        handled it instead of going through the event loop (one wake of the loop saved per
        request: the loop held the GIL 57% of the time under load, py-spy)."""
        fs = self.tpool.submit(self.handle, conn)
        fs.add_done_callback(partial(self._handled, conn))

    def _handled(self, conn, fs) -> None:
        """The thread that handled a request (or the loop, if it was that quick): a held answer
        waits for its batch, and the first one of a batch asks the log's writer to wake the loop
        then; anything else is finished by the loop as gunicorn does."""
        holdable = getattr(conn, "dlrlens_held", None)
        if holdable is None:
            self.method_queue.defer(self.finish_request, conn, fs)
            return
        conn.dlrlens_held = None
        durability = holdable.durability
        with self.held_lock:
            waiting = self.held.get(durability)
            first = waiting is None
            if first:
                waiting = self.held[durability] = []
            waiting.append((conn, fs, holdable))
        if first:
            durability.add_done_callback(partial(self.method_queue.defer, self._release))

    def _release(self, durability) -> None:
        """The event loop: ``durability``'s batch is done; send what waited for it."""
        with self.held_lock:
            waiting = self.held.pop(durability, ())
        for conn, fs, holdable in waiting:
            if durability.error is None:
                self._send_then_finish(conn, bytes(holdable.held), fs)
            else:
                self._send_then_finish(conn, holdable.failure_bytes(), None)

    def _send_then_finish(self, conn, data: bytes, fs) -> None:
        """Send ``data`` without blocking the loop (a thread sends what the socket does not take
        at once), then finish the request as gunicorn would; ``fs`` None: close afterwards."""
        sent = 0
        if not self.tls:
            try:
                conn.sock.setblocking(False)
                sent = conn.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._sent(conn, fs, False)
                return
        if sent == len(data):
            self._sent(conn, fs, True)
            return
        future = self.tpool.submit(self._send_blocking, conn, data[sent:])
        future.add_done_callback(lambda done: self.method_queue.defer(self._sent, conn, fs, done.result()))

    def _send_blocking(self, conn, data: bytes) -> bool:
        try:
            conn.sock.settimeout(self.header_timeout)  # a client that reads nothing is dropped
            conn.sock.sendall(data)
            return True
        except (OSError, socket.timeout):
            return False

    def _sent(self, conn, fs, ok: bool) -> None:
        if ok and fs is not None:
            super().finish_request(conn, fs)
        else:
            self.nr_conns -= 1
            conn.close()

    def enqueue_req(self, conn) -> None:
        """Called in the main loop for every connection with something to read: a new one, a
        kept-alive one that became readable, one whose previous body read ran into the next."""
        if self.tls:  # TLS ends at the proxy in front; a handshake needs a thread
            self._submit(conn)
            return
        conn.dlrlens_head = bytearray(conn.parser.unreader.take_buffered() if conn.parser is not None else b"")
        conn.dlrlens_deadline = time.monotonic() + self.header_timeout
        conn.dlrlens_waiting = False
        conn.sock.setblocking(False)
        # A normal client's head is usually here already: read it now, not after a trip
        # through the poller.
        self._read_head(conn, fresh=True)

    def _read_head(self, conn, _sock=None, fresh: bool = False) -> None:
        head = conn.dlrlens_head
        if not (fresh and _head_complete(head, len(head))):  # read-ahead may hold a whole head
            try:
                data = conn.sock.recv(MAX_HEAD_BYTES)
            except (BlockingIOError, InterruptedError):
                self._wait_for_head(conn)
                return
            except OSError:
                data = b""
            if not data:  # the client went away
                self._drop_head(conn)
                return
            head += data
            if not _head_complete(head, len(data)):
                if len(head) > MAX_HEAD_BYTES:
                    self._drop_head(conn, b"431 Request Header Fields Too Large")
                else:
                    self._wait_for_head(conn)
                return
        self._stop_waiting(conn)
        self._dispatch(conn)

    def _wait_for_head(self, conn) -> None:
        if not conn.dlrlens_waiting:
            conn.dlrlens_waiting = True
            self.heads.append(conn)
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._read_head, conn))

    def _stop_waiting(self, conn) -> None:
        if conn.dlrlens_waiting:
            conn.dlrlens_waiting = False
            self.poller.unregister(conn.sock)
            self.heads.remove(conn)

    def _dispatch(self, conn) -> None:
        head, conn.dlrlens_head = bytes(conn.dlrlens_head), None
        try:
            if conn.parser is None:
                conn.init()  # plain HTTP/1: makes the parser, reads nothing
                conn.parser.unreader = _IdleTimeoutUnreader(conn.sock, self.header_timeout)
            conn.parser.unreader.unread(head)
        except Exception:
            self.log.exception("Could not start reading a request")
            self.nr_conns -= 1
            conn.close()
            return
        conn.data_ready = True
        self._submit(conn)

    def _drop_head(self, conn, status: bytes = b"") -> None:
        self._stop_waiting(conn)
        if status:  # best effort: a client that reads nothing just sees the connection close
            try:
                conn.sock.send(b"HTTP/1.1 " + status + b"\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            except OSError:
                pass
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        """Runs once per turn of the main loop (at least every second): also drops the
        connections whose head is late."""
        super().murder_pending()
        now = time.monotonic()
        while self.heads and self.heads[0].dlrlens_deadline <= now:
            self._drop_head(self.heads[0], b"408 Request Timeout")


def worker_class(header_timeout: float) -> type:
    """:class:`HeadFirstWorker` with its head timeout (gunicorn wants a class, not an instance)."""
    return type("HeadFirstWorker", (HeadFirstWorker,), {"header_timeout": float(header_timeout)})


def gunicorn_options(host: str, port: int, workers: int, threads: int, *,
                     header_timeout: float = 10.0, secrets: tuple[str, ...] = ()) -> dict:
    """The gunicorn settings the collector runs with (benchmarks reuse them for fairness).
    ``secrets`` are redacted from every log line of this process and its workers."""
    redact_secrets_in_logs(secrets)
    return {
        "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": worker_class(header_timeout),
        "timeout": 60,
        "graceful_timeout": 30,
        "keepalive": 5,
        # Each worker gets its own listening socket and the kernel spreads connections across
        # them; with one shared socket a single worker tends to hold most keep-alive connections.
        "reuse_port": True,
        "accesslog": None,
        "logger_class": RedactingLogger,
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
    alerts_process = None

    def when_ready(server) -> None:
        nonlocal maintenance_process, alerts_process
        from dlrlens.store import maintenance

        maintenance_process = maintenance.start_process(settings)
        # The alert evaluator: its own supervised process beside maintenance (DLRLENS_ALERTS_FILE).
        from dlrlens.alerts import process as alerts

        alerts_process = alerts.start_process(settings)

    def on_exit(server) -> None:
        if alerts_process is not None:
            alerts_process.stop()
        if maintenance_process is not None:
            maintenance_process.stop()

    options = dict(gunicorn_options(host, port, workers, threads, header_timeout=settings.header_timeout_seconds,
                                    secrets=settings.tokens),
                   when_ready=when_ready, on_exit=on_exit)
    WsgiServer(load_app, options).run()
