"""Durable answers held by the server until their records are fsynced (see :mod:`collector.server`).

The protocol between the collector's gunicorn worker and its app, in one place:

* the worker writes each response to a :class:`HoldableSocket`, which gunicorn puts in the
  environ (``gunicorn.socket``); :func:`hold_function` gives the app its :meth:`HoldableSocket.hold`;
* the app, once a request's records joined a write-ahead log batch (a
  :class:`dlrlens.store.wal.Durability`), calls ``hold(durability, failure)`` instead of waiting
  for the fsync, and returns its answer as usual;
* the worker keeps the answer's bytes and sends them once the batch is durable; when the batch
  failed it sends ``failure`` (``(status, headers, body)``, the app's ``503``) and closes.

Without it (the tests' in-process clients, another server) the app waits for the fsync itself.
(The worker does not wrap the app to offer ``hold``: gunicorn's ``worker_exit`` hook finds the
app's storage through the worker's ``wsgi`` attribute, and must go on finding it.)
"""

from __future__ import annotations

import http


class HoldableSocket:
    """A connection's socket as gunicorn's response writer sees it during one request: it
    passes writes through until the app calls :meth:`hold`, then keeps them (the whole
    response, since gunicorn writes only once the app has returned)."""

    def __init__(self, sock):
        self._sock = sock
        self.durability = None
        self.failure: tuple[int, list, bytes] | None = None
        self.held = bytearray()

    def hold(self, durability, failure: tuple[int, list, bytes]) -> None:
        self.durability, self.failure = durability, failure

    def sendall(self, data) -> None:
        if self.durability is None:
            self._sock.sendall(data)
        else:
            self.held += data

    def send(self, data) -> int:
        if self.durability is None:
            return self._sock.send(data)
        self.held += data
        return len(data)

    def sendfile(self, *args, **kwargs):
        if self.durability is not None:
            raise RuntimeError("a held response cannot be a file")
        return self._sock.sendfile(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._sock, name)

    def failure_bytes(self) -> bytes:
        status, headers, body = self.failure
        lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}", *(f"{k}: {v}" for k, v in headers),
                 f"Content-Length: {len(body)}", "Connection: close"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def hold_function(environ: dict):
    """``hold(durability, failure)`` of this request when its server can hold the answer, else
    ``None``: send the response only once ``durability`` (a :class:`dlrlens.store.wal.Durability`)
    is done without error; else send ``failure`` (``(status, headers, body)``) and close."""
    sock = environ.get("gunicorn.socket")
    return sock.hold if isinstance(sock, HoldableSocket) else None
