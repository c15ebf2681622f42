"""Several real collectors behind a real load balancer (haproxy from Debian, installed when
missing), writing one Iceberg table on a real object store (``weed mini``): the short version of
the drill in tests/support/load_balanced.py (the soak command runs it longer, with a 30 s outage).

The simulator's stream (JSON and XML-form bodies, duplicates, receipts out of order) goes through
haproxy to three collectors while the object store is down for 10 s and one collector is
SIGKILLed and restarted; every receipt acknowledged with a 200 must be in the table, each message
once in the KPIs, and ``dlrlens report`` must give the figures a local-backend directory gives
for the same acknowledged posts (the webhook lag and the retries' extra copies aside: see
the drill's docstring).
"""

from __future__ import annotations

import http.client
import json
import ssl

import pytest
import requests

from tests.support.haproxy import haproxy_binary, load_balancer, self_signed_pem
from tests.support.load_balanced import DrillSettings, run_drill
from tests.support.receipts import receipt, rows_of
from tests.support.servers import running_collector

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(haproxy_binary() is None,
                                 reason="haproxy is not installed and cannot be (Debian package haproxy, as root)")]


def test_three_collectors_behind_haproxy_through_an_outage_and_a_sigkill(tmp_path):
    settings = DrillSettings(collectors=3, workers=1, seconds=15, rate=60, outage_seconds=10, threads=4)
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
    """The README's deployment settings: TLS at haproxy, ``option forwardfor`` there and
    ``DLRLENS_TRUSTED_PROXIES=1`` at the collectors, whose allow-list then checks the client's
    own address (127.0.0.2 here), never one the client wrote into X-Forwarded-For."""
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
            sent = {name: int(row["stot"]) for name, row in balancer.stats().items() if name != "BACKEND"}
    assert allowed == [200] * 6
    assert forged == [403], "the address haproxy saw (127.0.0.1) is checked, not the forged header"
    assert sorted(sent.values()) == [3, 4], "each request balanced on its own, over one keep-alive connection"
    stored = rows_of(tmp_path / "one", "tls-", 3) + rows_of(tmp_path / "two", "tls-", 3)
    assert sorted(row["delivery_message_id"] for row in stored) == [f"tls-{n}" for n in range(6)]
    assert {row["campaign"] for row in stored} == {"tls"}
