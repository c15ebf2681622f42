"""The collector's worker sends a held answer only once its log batch is durable (collector.server).

These drive :class:`collector.server.HeadFirstWorker`'s held-answer steps directly, with a real
socket pair and real :class:`dlrlens.store.wal.Durability` batches, the event loop played by the
test (each deferred callback runs when the test says so). The whole path under gunicorn is
covered by the durability tests (a SIGKILL before the fsync never leaves a 200 behind; a full
disk answers 503) and by every test that posts to a real collector.
"""

from __future__ import annotations

import socket
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from types import SimpleNamespace

import pytest
from gunicorn.workers.gthread import ThreadWorker

from collector.app import storage_unavailable
from collector.held_answers import HoldableSocket
from collector.server import HeadFirstWorker
from dlrlens.store.wal import Durability
from tests.support.servers import wait_until


class _GunicornFinish(ThreadWorker):
    """Stands in for gunicorn's own finish_request (keep-alive bookkeeping): records the call."""

    def finish_request(self, conn, fs):
        self.finished.append((conn, fs.result()))


class _Worker(HeadFirstWorker, _GunicornFinish):
    def __init__(self, pool: ThreadPoolExecutor):  # no gunicorn set-up: only what the steps use
        self.tls = False
        self.tpool = pool
        self.method_queue = SimpleNamespace(defer=lambda callback, *args: self.deferred.append((callback, args)))
        self.deferred: list = []
        self.finished: list = []
        self.held = {}
        self.held_lock = threading.Lock()
        self.nr_conns = 1
        self.header_timeout = 5.0

    def run_loop_once(self) -> None:
        """One turn of the event loop: run what threads deferred to it so far."""
        deferred, self.deferred = self.deferred, []
        for callback, args in deferred:
            callback(*args)


class _Conn:
    def __init__(self, sock):
        self.sock = sock
        self.closed = False

    def close(self):
        self.closed = True
        self.sock.close()


@pytest.fixture
def worker():
    with ThreadPoolExecutor(2) as pool:
        yield _Worker(pool)


@pytest.fixture
def sockets():
    server, client = socket.socketpair()
    client.settimeout(10)
    yield server, client
    server.close()
    client.close()


def _handled(conn, durability, answer: bytes) -> Future:
    """What a worker thread leaves behind after the app called hold() and returned ``answer``
    (then the worker's ``_handled`` parks it)."""
    holdable = HoldableSocket(conn.sock)
    holdable.hold(durability, storage_unavailable("receipts"))
    holdable.sendall(answer)
    conn.dlrlens_held = holdable
    done = Future()
    done.set_result(True)  # keep-alive
    return done


def _received(client, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = client.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_the_answer_waits_for_its_batch_then_goes_out_once(worker, sockets):
    server, client = sockets
    batch = Durability()
    answers = [_Conn(server)]
    fs = _handled(answers[0], batch, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
    worker._handled(answers[0], fs)
    worker.run_loop_once()
    client.setblocking(False)
    with pytest.raises(BlockingIOError):
        client.recv(100)  # nothing before the fsync
    assert worker.finished == []
    batch._finish(None)  # the log's writer: fsynced
    worker.run_loop_once()
    client.setblocking(True)
    assert _received(client, 40).startswith(b"HTTP/1.1 200 OK")
    assert worker.finished == [(answers[0], True)], "gunicorn's keep-alive handling goes on"
    assert worker.held == {}


def test_a_failed_batch_answers_503_and_closes(worker, sockets):
    server, client = sockets
    batch = Durability()
    conn = _Conn(server)
    worker._handled(conn, _handled(conn, batch, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"))
    batch._finish(OSError(28, "No space left on device"))
    worker.run_loop_once()
    answer = _received(client, 10_000)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable")
    assert b"Retry-After: 5" in head and b"Connection: close" in head
    assert b'"error":"storage_unavailable"' in body and b"200 OK" not in answer
    assert conn.closed and worker.nr_conns == 0 and worker.finished == []


def test_requests_of_one_batch_wake_the_loop_once(worker):
    pairs = [socket.socketpair() for _ in range(5)]
    try:
        batch = Durability()
        for server, _ in pairs:
            conn = _Conn(server)
            worker._handled(conn, _handled(conn, batch, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
        batch._finish(None)
        assert len(worker.deferred) == 1, "one wake of the event loop per batch"
        worker.run_loop_once()
        for _, client in pairs:
            client.settimeout(10)
            assert _received(client, 38).startswith(b"HTTP/1.1 200 OK")
        assert len(worker.finished) == 5
    finally:
        for server, client in pairs:
            server.close()
            client.close()


def test_an_answer_the_socket_cannot_take_at_once_is_finished_by_a_thread(worker, sockets):
    server, client = sockets
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1_000_000
    batch = Durability()
    batch._finish(None)  # durable before the loop even sees the request
    conn = _Conn(server)
    worker._handled(conn, _handled(conn, batch, big))
    worker.run_loop_once()  # sends what fits without blocking, hands the rest to a thread
    assert worker.finished == []
    assert _received(client, len(big)) == big
    wait_until(lambda: worker.deferred, 10, what="the thread's send done")
    worker.run_loop_once()
    assert worker.finished == [(conn, True)]
