"""Several real collectors behind a real load balancer (haproxy from Debian, installed when
missing), writing one Iceberg table on a real object store (``weed mini``): the short version of
the drill in tests/support/load_balanced.py (the soak command runs it longer, with a 30 s outage).

The simulator's stream (JSON and XML-form bodies, duplicates, receipts out of order) goes through
haproxy to three collectors while the object store is down for 10 s and one collector is
SIGKILLed and restarted; every receipt acknowledged with a 200 must be in the table, each message
once in the KPIs, and ``dlrlens report`` must give the figures a local-backend directory gives
for the same acknowledged posts (the webhook lag and the retries' extra copies aside: see
the drill's docstring).

The README's haproxy settings are checked too: TLS at haproxy with only the webhooks public, the
collectors' allow-list seeing the client's own address through ``X-Forwarded-For`` (a forged one
refused), and a ``503`` (a collector that cannot store) retried on another collector.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from tests.support.debian import debian_binary
from tests.support.haproxy import haproxy_binary, load_balancer, self_signed_pem
from tests.support.load_balanced import DrillSettings, run_drill
from tests.support.receipts import receipt, rows_of
from tests.support.servers import running_collector

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def haproxy_installed():
    """haproxy, installed from Debian when missing (as root); the tests skip only when it cannot be."""
    if haproxy_binary() is None:
        pytest.skip("haproxy is not installed and cannot be here (Debian package haproxy; apt-get as root)")


def test_three_collectors_behind_haproxy_through_an_outage_and_a_sigkill(tmp_path):
    settings = DrillSettings(collectors=3, workers=1, seconds=15, rate=60, outage_seconds=10, threads=4, flush_seconds=1)
    result = run_drill(tmp_path, settings)
    print(result.summary())  # shown when the test fails
    assert not result.not_acked, f"posts never acknowledged, by last answer: {result.not_acked}"
    assert result.client_retries == 0, "haproxy hid the SIGKILL: no client saw an error or a 5xx"
    assert all(count > 0 for count in result.requests_per_collector.values()), result.requests_per_collector
    assert result.acked_during_outage > 0, "acknowledged from the local logs while the object store was down"
    assert result.degraded_with_200 == result.up_during_outage == settings.collectors, \
        "every collector said 'degraded' with a 200 during the outage, and haproxy kept every one in rotation"
    assert result.leftover_segments == 0, "every log segment committed and removed"
    assert result.missing == 0, f"{result.missing} acknowledged receipts are not in the table"
    assert result.unexpected == 0, f"{result.unexpected} receipts in the table that no acknowledged post carried"
    assert result.kpi_messages == result.messages, "each message once in the KPIs"
    assert result.report_differences == [], "\n".join(result.report_differences)
    assert 0 <= result.extra_copies <= result.client_retries + result.balancer_retries, \
        "extra stored copies only from retries (the same receipt id: counted once)"
    assert result.report_extra_copies == result.extra_copies, "the report's duplicate rows differ by those copies only"
    assert result.ok


def post_over_tls(balancer, cert, source: str, bodies: list[dict], headers: dict | None = None) -> list[int]:
    """POST ``bodies`` to haproxy's HTTPS frontend over one keep-alive connection from loopback
    address ``source``, trusting only ``cert``; the answers' status codes."""
    connection = http.client.HTTPSConnection("127.0.0.1", balancer.tls_port, timeout=10, source_address=(source, 0),
                                             context=ssl.create_default_context(cafile=str(cert)))
    statuses = []
    try:
        for body in bodies:
            connection.request("POST", "/dlr?campaign=tls", body=json.dumps(body),
                               headers={"Content-Type": "application/json", **(headers or {})})
            answer = connection.getresponse()
            answer.read()
            statuses.append(answer.status)
    finally:
        connection.close()
    return statuses


def test_haproxy_terminates_tls_and_forwards_the_client_address(tmp_path):
    """The README's deployment settings: TLS at haproxy, only the webhooks public, ``option
    forwardfor`` there and ``DLRLENS_TRUSTED_PROXIES=1`` at the collectors, whose allow-list then
    checks the client's own address (127.0.0.2 here), never one the client wrote into
    X-Forwarded-For."""
    if debian_binary("openssl", who="tests") is None:
        pytest.skip("the openssl command is not installed and cannot be here (Debian package openssl)")
    pem = self_signed_pem(tmp_path / "tls")
    cert = tmp_path / "tls" / "tls.crt"
    env = {"DLRLENS_TRUSTED_PROXIES": "1", "DLRLENS_ALLOW_NETWORKS": "127.0.0.2/32"}
    with running_collector(tmp_path / "one", workers=1, env=env) as one, \
            running_collector(tmp_path / "two", workers=1, env=env) as two:
        with load_balancer(tmp_path / "haproxy", [one.url, two.url], tls_pem=pem) as balancer:
            allowed = post_over_tls(balancer, cert, "127.0.0.2", [receipt(f"tls-{n}") for n in range(6)])
            forged = post_over_tls(balancer, cert, "127.0.0.1", [receipt("forged")],
                                   headers={"X-Forwarded-For": "127.0.0.2"})
            with pytest.raises(requests.exceptions.SSLError):  # a client that does not trust the certificate
                requests.post(balancer.https_url + "/dlr", json=receipt("untrusted"), timeout=10)
            internal = [requests.get(balancer.https_url + path, verify=str(cert), timeout=10).status_code
                        for path in ("/metrics", "/healthz", "/openapi.json")]
            sent = {name: int(row["stot"]) for name, row in balancer.stats().items() if name != "BACKEND"}
    assert allowed == [200] * 6
    assert forged == [403], "the address haproxy saw (127.0.0.1) is checked, not the forged header"
    assert internal == [403] * 3, "only the webhooks are public"
    assert sorted(sent.values()) == [3, 4], "each request balanced on its own, over one keep-alive connection"
    stored = rows_of(tmp_path / "one", "tls-", 3) + rows_of(tmp_path / "two", "tls-", 3)
    assert sorted(row["delivery_message_id"] for row in stored) == [f"tls-{n}" for n in range(6)]
    assert {row["campaign"] for row in stored} == {"tls"}


class CannotStore(BaseHTTPRequestHandler):
    """A collector whose storage just failed and whose health check has not said so yet: its
    /healthz still answers 200, every post gets the collector's 503 (nothing acknowledged)."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self._answer(200, b'{"status": "ok"}')

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer(503, b'{"error": "storage_unavailable"}')

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_a_503_is_retried_on_another_collector(tmp_path):
    failing = ThreadingHTTPServer(("127.0.0.1", 0), CannotStore)
    threading.Thread(target=failing.serve_forever, daemon=True).start()
    try:
        with running_collector(tmp_path / "data", workers=1) as collector:
            with load_balancer(tmp_path / "haproxy", [f"http://127.0.0.1:{failing.server_port}", collector.url]) as lb:
                with requests.Session() as session:
                    answers = [session.post(lb.dlr, json=receipt(f"r-{n}"), timeout=10).status_code for n in range(10)]
                stats = lb.stats()
    finally:
        failing.shutdown()
        failing.server_close()
    assert answers == [200] * 10, "every 503 retried on the collector that can store"
    failed_there, retried = int(stats["c1"]["stot"]), int(stats["c1"]["wretr"])
    assert failed_there > 0 and retried == failed_there, "each post the failing one got was sent again"
    assert int(stats["c2"]["hrsp_2xx"]) == 10
    assert len(rows_of(tmp_path / "data", "r-", 10)) == 10
