"""Attacks on the webhook's secret and on its threads, as an attacker on loopback makes them.

* The secret never reaches a log line, in any form a request can carry it, even when gunicorn
  quotes a malformed request line or a path matches no route.
* Wrong-secret guesses are limited per source across all worker processes (IPv6 by /64), the
  limiter keeps the busiest guessers when it has to forget, and the right secret is never
  refused, whatever its source did.
* Clients that send their headers slowly (or not at all) hold no worker thread: normal posts
  are answered meanwhile and the slow connections are closed after the header timeout.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from collector.security import FailureLimiter, SecretRedactor, source_of
from tests.support.receipts import receipt, rows_of
from tests.support.servers import REPO, Collector, free_port, running_collector, wait_started

SECRET = "s3cr3t-Tok3n_Zq9X"


def secret_forms(secret: str) -> list[str]:
    """The secret as a log could show it: plain, percent-encoded (both hex cases), and the
    base64 of a Basic credential ``user:secret`` for users that give each of the three
    alignments (the characters that encode the secret's bytes alone)."""
    encoded = "".join(f"%{byte:02X}" for byte in secret.encode())
    forms = [secret, encoded, encoded.lower(), quote(secret, safe="")]
    for user in ("dlr", "dlrx", "dl"):
        text = base64.b64encode(f"{user}:{secret}".encode()).decode()
        prefix = len(user) + 1
        forms.append(text[-(-8 * prefix // 6):8 * (prefix + len(secret)) // 6])
    return forms


# -- the secret in the logs ----------------------------------------------------------------


def test_redactor_removes_every_form_of_the_secret():
    redactor = SecretRedactor([SECRET, "older-secret"])
    mixed = "".join(f"%{ord(c):02x}" if i % 2 else c for i, c in enumerate(SECRET))
    for form in secret_forms(SECRET) + [mixed, "older-secret"]:
        text = f"GET /x?token={form}&y=1 HTTP/1.1"
        assert redactor.redact(text) == "GET /x?token=<redacted>&y=1 HTTP/1.1", form
    for user in ("", "d", "dl", "dlr"):
        header = "Basic " + base64.b64encode(f"{user}:{SECRET}".encode()).decode()
        assert not any(form in redactor.redact(header) for form in secret_forms(SECRET)), user
    assert redactor.redact("nothing secret here: s3cr3t") == "nothing secret here: s3cr3t"

    record = logging.LogRecord("gunicorn.error", logging.WARNING, __file__, 1, "Invalid request %s", (SECRET,), None)
    try:
        raise ValueError(f"bad line /dlr/{SECRET}")
    except ValueError:
        record.exc_info = sys.exc_info()
    assert redactor.filter(record)
    assert record.getMessage() == "Invalid request <redacted>"
    assert SECRET not in record.exc_text and "bad line /dlr/<redacted>" in record.exc_text


def test_non_ascii_secret_is_redacted_as_gunicorn_decodes_it():
    secret = "clé-secrète"
    latin1 = secret.encode().decode("latin-1")  # gunicorn reads a request line as Latin-1
    redactor = SecretRedactor([secret])
    for form in (secret, latin1, quote(secret), quote(secret).lower(), repr(secret.encode())[2:-1]):
        assert redactor.redact(f"[{form}]") == "[<redacted>]", form


def raw_request(collector: Collector, data: bytes, timeout: float = 10) -> bytes:
    """Send ``data`` on a fresh connection; return what the collector answered before closing."""
    host, port = collector.url.rsplit("/", 1)[1].rsplit(":", 1)
    answer = b""
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    return answer


def test_secret_never_reaches_the_logs(tmp_path):
    secret_b = SECRET.encode()
    encoded = "".join(f"%{byte:02X}" for byte in secret_b).encode()
    basic = base64.b64encode(b"dlr:" + secret_b)
    close = b"Host: c\r\nConnection: close\r\n"
    attempts = [
        # Non-ASCII bytes in the request line: gunicorn refuses it and logs the line whole.
        b"POST /dlr?token=" + secret_b + b"&x=\xff\xfe HTTP/1.1\r\n" + close + b"\r\n",
        b"POST /dlr?token=" + encoded + b"&\xc3\xa9=1 HTTP/1.1\r\n" + close + b"\r\n",
        b"POST /dlr/" + secret_b + b"\x00 HTTP/1.1\r\n" + close + b"\r\n",
        b"POST /dlr/" + secret_b + b" HTTP/1.1 junk\r\n" + close + b"\r\n",
        b"P\xd3ST /dlr?token=" + secret_b + b" HTTP/1.1\r\n" + close + b"\r\n",
        # Paths no route matches, which the app answers 404.
        b"POST /api/dlr/" + secret_b + b" HTTP/1.1\r\n" + close + b"Content-Length: 0\r\n\r\n",
        b"POST /./dlr/" + secret_b + b" HTTP/1.1\r\n" + close + b"Content-Length: 0\r\n\r\n",
        b"POST /api/dlr/" + encoded + b" HTTP/1.1\r\n" + close + b"Content-Length: 0\r\n\r\n",
        b"GET /x?token=" + secret_b + b" HTTP/1.1\r\n" + close + b"\r\n",
        b"GET /dlr/" + secret_b + b" HTTP/1.1\r\n" + close + b"\r\n",  # 405
        b"POST /nowhere HTTP/1.1\r\n" + close + b"Authorization: Basic " + basic + b"\r\nContent-Length: 0\r\n\r\n",
        # The secret in a header gunicorn refuses.
        b"POST /dlr HTTP/1.1\r\n" + close + b"Authorization: Basic " + basic + b"\r\nX-\xff: " + secret_b + b"\r\n\r\n",
    ]
    env = {"DLRLENS_TOKEN": f"other-secret-0123,{SECRET}", "DLRLENS_LOG_LEVEL": "debug"}
    with running_collector(tmp_path / "data", workers=1, env=env) as running:
        answers = [raw_request(running, attempt) for attempt in attempts]
        statuses = [answer.split(b" ", 2)[1] if answer.startswith(b"HTTP/1.1 ") else answer[:40] for answer in answers]
        assert statuses[:5] == [b"400"] * 5, statuses
        assert statuses[5:9] == [b"404"] * 4 and statuses[9] == b"405" and statuses[10] == b"404", statuses
        assert statuses[11] == b"400", statuses
        running.stop()
    log = running.log()
    assert "Invalid request from ip=" in log, "gunicorn logged the malformed lines (redacted)"
    assert "<redacted>" in log and "path=<unknown path> status=404" in log
    for form in secret_forms(SECRET):
        assert form not in log, form


# -- the failure limiter -------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_limiter_refuses_a_source_after_the_limit_within_the_window(tmp_path):
    clock = Clock()
    limiter = FailureLimiter(tmp_path / "f.sqlite", limit=3, window=10, clock=clock)
    assert [limiter.record_failure("192.0.2.1") for _ in range(5)] == [False, False, False, True, True]
    assert limiter.blocked("192.0.2.1") and not limiter.blocked("192.0.2.2")
    clock.now += 5
    assert limiter.blocked("192.0.2.1"), "the window has not passed"
    clock.now += 5.1
    assert not limiter.blocked("192.0.2.1"), "every failure is older than the window"
    assert [limiter.record_failure("192.0.2.1") for _ in range(4)] == [False, False, False, True]


def test_limiter_groups_ipv6_by_64_and_mapped_ipv4_as_ipv4(tmp_path):
    assert source_of("2001:db8:1:2:aaaa::1") == source_of("2001:db8:1:2:ffff:1:2:3") == "2001:db8:1:2::/64"
    assert source_of("::ffff:192.0.2.7") == source_of("192.0.2.7") == "192.0.2.7"
    assert source_of("fe80::1%eth0") == "fe80::/64"
    limiter = FailureLimiter(tmp_path / "f.sqlite", limit=3, window=60, clock=Clock())
    for host in range(3):  # three addresses of one /64
        limiter.record_failure(f"2001:db8:1:2::{host + 1:x}")
    assert limiter.record_failure("2001:db8:1:2:dead:beef:0:1"), "a fourth address in the /64 is refused"
    assert not limiter.record_failure("2001:db8:1:3::1"), "the next /64 is another source"
    for _ in range(3):
        limiter.record_failure("::ffff:192.0.2.7")
    assert limiter.blocked("192.0.2.7")


def test_limiter_forgets_the_least_recently_failing_sources_first(tmp_path):
    clock = Clock()
    limiter = FailureLimiter(tmp_path / "f.sqlite", limit=3, window=600, max_sources=5, clock=clock)
    for _ in range(4):
        limiter.record_failure("198.51.100.1")  # a guesser, refused
    for index in range(40):  # a spray from many sources, while the guesser keeps at it
        clock.now += 1
        limiter.record_failure(f"203.0.113.{index}")
        if index % 3 == 0:
            assert limiter.record_failure("198.51.100.1")
    assert limiter.sources() == 5
    assert limiter.blocked("198.51.100.1"), "the busiest guesser is still refused"
    assert not limiter.blocked("203.0.113.0")
    for _ in range(3):
        limiter.record_failure("203.0.113.39")
    assert limiter.blocked("203.0.113.39"), "the latest are kept"


def test_two_limiters_on_one_file_count_together(tmp_path):
    """Two workers are two limiters on the same file: the limit holds for their sum."""
    first = FailureLimiter(tmp_path / "f.sqlite", limit=7, window=60)
    second = FailureLimiter(tmp_path / "f.sqlite", limit=7, window=60)
    answers = [(first if index % 2 else second).record_failure("192.0.2.9") for index in range(10)]
    assert answers == [False] * 7 + [True] * 3
    assert first.blocked("192.0.2.9") and second.blocked("192.0.2.9")


def test_limiter_fails_open_when_its_file_cannot_be_written(tmp_path, caplog):
    (tmp_path / "not-a-directory").write_text("")
    limiter = FailureLimiter(tmp_path / "not-a-directory" / "f.sqlite", limit=1)
    with caplog.at_level(logging.WARNING, logger="dlrlens.collector"):
        assert [limiter.record_failure("192.0.2.1") for _ in range(3)] == [False] * 3
    assert len([r for r in caplog.records if "auth_limiter_unavailable" in r.getMessage()]) == 1


def test_guesses_are_limited_across_workers_and_the_right_secret_still_gets_in(tmp_path):
    guesses = 30
    with running_collector(tmp_path / "data", workers=2, flush_seconds=0.2, env={"DLRLENS_TOKEN": SECRET}) as running:
        statuses = []
        for index in range(guesses):  # a fresh connection each: the kernel spreads them over both workers
            answer = requests.post(running.dlr + f"?token=guess-{index}", json=receipt(f"guess-{index}"),
                                   headers={"Connection": "close"}, timeout=10)
            statuses.append(answer.status_code)
        assert statuses == [401] * 20 + [429] * (guesses - 20)
        for path, kwargs in ((f"?token={SECRET}", {}), (f"/{SECRET}", {}), ("", {"auth": ("dlr", SECRET)})):
            answer = requests.post(running.dlr + path, json=receipt(f"right-{len(path)}"), timeout=10, **kwargs)
            assert answer.status_code == 200, answer.text
        assert requests.post(running.dlr + "?token=nope", json=receipt("late"), timeout=10).status_code == 429
        assert len(rows_of(running.data_dir, "right-", 3)) == 3
        running.stop()
    stats = [json.loads(path.read_text()) for path in (running.data_dir / "stats").glob("*.json")]
    served = [s for s in stats if s["counters"].get("auth_failures")]
    assert len(served) == 2, "both workers answered guesses"
    assert sum(s["rejected"].get("unauthorized", 0) for s in stats) == 20
    assert sum(s["rejected"].get("too_many_auth_failures", 0) for s in stats) == guesses - 20 + 1


# -- slow clients --------------------------------------------------------------------------


def start_collector(data_dir: Path, *, workers: int, threads: int, env: dict) -> Collector:
    """Like tests.support.servers.start_collector, with a thread count."""
    port = free_port()
    log_path = data_dir.parent / f"collector-{port}.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DLRLENS_")} | env
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "dlrlens", "collector", "--data", str(data_dir), "--host", "127.0.0.1",
             "--port", str(port), "--workers", str(workers), "--threads", str(threads), "--flush-seconds", "0.2"],
            cwd=REPO, env=full_env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)

    def ready(url: str) -> bool:
        try:
            return requests.get(url + "/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False
    return wait_started(Collector(process, f"http://127.0.0.1:{port}", data_dir, log_path), ready, 60, "collector")


HEADER_TIMEOUT = 2.0


@pytest.fixture
def small_collector(tmp_path):
    """2 workers x 2 threads, a 2-second header timeout."""
    collector = start_collector(tmp_path / "data", workers=2, threads=2,
                                env={"DLRLENS_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT)})
    try:
        yield collector
    finally:
        collector.stop()


def _address(collector: Collector) -> tuple[str, int]:
    host, port = collector.url.rsplit("/", 1)[1].rsplit(":", 1)
    return host, int(port)


def test_slow_headers_hold_no_thread_and_are_cut_off(small_collector):
    collector = small_collector
    started = time.monotonic()
    slow = []
    for index in range(40):  # ten times the threads; each sends a header byte every 0.2 s
        sock = socket.create_connection(_address(collector), timeout=5)
        sock.sendall(b"POST /dlr HTTP/1.1\r\nHost: c\r\nX-Slow-%d: " % index)
        slow.append(sock)
    silent = [socket.create_connection(_address(collector), timeout=5) for _ in range(10)]  # never send a byte
    open_ = set(slow + silent)
    closed_after: dict[socket.socket, float] = {}
    stop = threading.Event()

    def dribble():
        while not stop.is_set():
            for sock in list(slow):
                if sock in open_:
                    try:
                        sock.send(b"a")
                    except OSError:
                        pass  # closed by the collector: noticed by the reader below
            time.sleep(0.2)

    dribbler = threading.Thread(target=dribble, daemon=True)
    dribbler.start()
    try:
        time.sleep(0.5)  # every slow connection has sent part of its head
        latencies = []
        for index in range(8):
            begin = time.monotonic()
            answer = requests.post(collector.dlr, json=receipt(f"beside-slow-{index}"), timeout=HEADER_TIMEOUT + 3)
            latencies.append(time.monotonic() - begin)
            assert answer.status_code == 200, answer.text
        assert max(latencies) < HEADER_TIMEOUT + 3, latencies

        # A head that arrives in pieces within the timeout is still served.
        with socket.create_connection(_address(collector), timeout=10) as sock:
            body = json.dumps(receipt("in-pieces")).encode()
            sock.sendall(b"POST /dlr HTTP/1.1\r\nHost: c\r\n")
            time.sleep(0.3)
            sock.sendall(b"Content-Type: application/json\r\nConnection: close\r\n")
            time.sleep(0.3)
            sock.sendall(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            assert sock.recv(100).startswith(b"HTTP/1.1 200 ")

        deadline = started + HEADER_TIMEOUT + 4  # the timeout, the main loop's 1 s tick, slack
        while open_ and time.monotonic() < deadline:
            readable, _, _ = select.select(list(open_), [], [], 0.2)
            for sock in readable:
                try:
                    data = sock.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    open_.discard(sock)
                    closed_after[sock] = time.monotonic() - started
                else:
                    assert data.startswith(b"HTTP/1.1 408 "), data
    finally:
        stop.set()
        dribbler.join(5)
        for sock in slow + silent:
            sock.close()
    assert not open_, f"{len(open_)} slow connections still open after {HEADER_TIMEOUT + 4} s"
    assert min(closed_after.values()) > HEADER_TIMEOUT - 0.5, "none was closed before its time either"
    assert len(rows_of(collector.data_dir, "beside-slow-", 8)) == 8


def test_a_stalled_body_is_dropped_after_the_timeout(small_collector):
    with socket.create_connection(_address(small_collector), timeout=HEADER_TIMEOUT + 8) as sock:
        begin = time.monotonic()
        sock.sendall(b"POST /dlr HTTP/1.1\r\nHost: c\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"deliveryMessageId\"")
        response = http.client.HTTPResponse(sock)
        response.begin()
        waited = time.monotonic() - begin
        answer = response.read()
    assert response.status == 400 and json.loads(answer)["error"] == "unreadable_body", answer
    assert HEADER_TIMEOUT - 0.5 < waited < HEADER_TIMEOUT + 3
