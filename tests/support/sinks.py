"""Real notification receivers on loopback for the alert tests: a JSON webhook sink
(:class:`WebhookSink`, http.server) and an SMTP server (:class:`SmtpSink`, aiosmtpd).

Both record what they receive with the arrival time; the webhook sink answers ``status``
(settable: 500 makes a failing channel) and records every attempt, answered or not.
"""

from __future__ import annotations

import json
import threading
import time
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.support.servers import free_port


class WebhookSink:
    def __init__(self, status: int = 200):
        self.status = status
        self.received: list[dict] = []  # answered 2xx: the JSON bodies, with "_at"
        self.attempts: list[tuple[float, int]] = []  # (monotonic time, status answered)
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = sink.status
                sink.attempts.append((time.monotonic(), status))
                if 200 <= status < 300:
                    doc = json.loads(body)
                    doc["_at"] = time.time()
                    doc["_path"] = self.path
                    sink.received.append(doc)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str = "hook") -> str:
        """The apprise URL posting JSON here."""
        return f"json://127.0.0.1:{self.port}/{path}"

    def __enter__(self) -> "WebhookSink":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class SmtpSink:
    def __init__(self):
        from aiosmtpd.controller import Controller

        self.messages: list = []
        sink = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
                message = message_from_bytes(envelope.content, policy=policy.default)
                sink.messages.append({"to": list(envelope.rcpt_tos), "from": envelope.mail_from,
                                      "subject": str(message["subject"]),
                                      "body": message.get_body(("plain",)).get_content(), "_at": time.time()})
                return "250 OK"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)

    def url(self, to: str = "oncall@example.com") -> str:
        """The apprise URL sending mail here (plain SMTP, no login)."""
        return f"mailto://127.0.0.1:{self.port}?from=alerts@example.com&to={to}&mode=insecure"

    def __enter__(self) -> "SmtpSink":
        self.controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self.controller.stop()
