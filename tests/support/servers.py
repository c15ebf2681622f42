"""Start and stop real dlrlens processes for tests: free loopback ports, always stopped.

Free ports (:func:`free_port`, :func:`free_ports`) are chosen at random from
:data:`PORT_RANGE`, below Linux's default range of ephemeral ports (32768-60999, where the
kernel picks the local port of every outgoing connection and of ``bind(port 0)``), and checked
free by binding them. Each pytest-xdist worker draws from its own slice of the range and a
process never hands the same port out twice, so two tests that choose a port and start a server
on it a moment later never get the same one, whether they run one after the other or in two
workers at once (``scripts/test.sh`` runs two).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import requests

REPO = Path(__file__).resolve().parents[2]


PORT_RANGE = range(20000, 32768)
_handed_out: set[int] = set()


def _worker_ports() -> range:
    """This process's slice of :data:`PORT_RANGE`: all of it, or the n-th of k equal slices in
    pytest-xdist's worker ``gw<n>`` of k."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    if not worker.startswith("gw") or workers < 2:
        return PORT_RANGE
    index = int(worker[2:]) % workers
    size = len(PORT_RANGE) // workers
    return PORT_RANGE[index * size:(index + 1) * size]


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports of 127.0.0.1 that are free now and were never returned before
    by this process (see the module's docstring)."""
    ports = _worker_ports()
    if len(_handed_out) > len(ports) // 2:  # a very long run (thousands of servers): start over
        _handed_out.clear()
    chosen: list[int] = []
    with contextlib.ExitStack() as held:  # every chosen port stays bound until all are chosen
        for _ in range(len(ports)):
            port = random.choice(ports)
            if port in _handed_out:
                continue
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:  # in use (a server, another process's test, a connection in TIME_WAIT)
                sock.close()
                continue
            held.enter_context(sock)
            _handed_out.add(port)
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError(f"no {count} free ports in {ports} on 127.0.0.1")


def wait_until(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class Collector:
    process: subprocess.Popen
    url: str
    data_dir: Path
    log_path: Path

    @property
    def dlr(self) -> str:
        return self.url + "/dlr"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole process group (master and workers), as a crash would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM: the workers flush what they hold; see :func:`stop_process_group`."""
        stop_process_group(self.process, timeout=30)


def stop_process_group(leader: subprocess.Popen, timeout: float) -> None:
    """SIGTERM the process group that ``leader`` leads (started with ``start_new_session``),
    wait until the whole group is gone, SIGKILL what is left after ``timeout`` seconds, and
    reap the leader."""
    group = leader.pid  # start_new_session: the group id is the leader's pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _group_alive(group, leader) and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        leader.wait(timeout=timeout)


def _group_alive(group: int, leader: subprocess.Popen) -> bool:
    leader.poll()  # reap the leader, so that a zombie does not count
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def _healthy(url: str) -> bool:
    try:
        return requests.get(url + "/healthz", timeout=2).status_code in (200, 503)
    except requests.RequestException:
        return False


def start_collector(data_dir: Path, *, workers: int = 2, flush_seconds: float = 0.5,
                    env: dict | None = None, port: int | None = None, log_dir: Path | None = None,
                    timeout: float = 60, launcher: Sequence[str] = ()) -> Collector:
    """Run ``dlrlens collector`` in its own process group and wait (up to ``timeout`` seconds)
    until it answers. ``launcher`` prefixes the command and must ``exec`` it, keeping the pid
    (e.g. :attr:`tests.support.cpu_budget.CpuBudget.launcher`).

    Its output goes to ``collector-<port>.log`` in ``log_dir`` (default: beside ``data_dir``).
    """
    port = port or free_port()
    log_path = Path(log_dir or Path(data_dir).parent) / f"collector-{port}.log"
    # Only the test's own DLRLENS_* settings reach the collector, never the caller's shell.
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DLRLENS_")}
    full_env.update(env or {})
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [*launcher, sys.executable, "-m", "dlrlens", "collector", "--data", str(data_dir), "--host", "127.0.0.1",
             "--port", str(port), "--workers", str(workers), "--flush-seconds", str(flush_seconds)],
            cwd=REPO, env=full_env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
    return wait_started(Collector(process, f"http://127.0.0.1:{port}", Path(data_dir), log_path), _healthy,
                        timeout, "collector")


def wait_started(server, ready, timeout: float, name: str, interval: float = 0.1):
    """Return ``server`` once ``ready(server.url)`` holds. If its process exits first, or
    ``timeout`` seconds pass, stop it (``server.stop()``) and raise, with the end of its log.

    ``server`` has ``process``, ``url``, ``log()`` and ``stop()`` (a :class:`Collector`, a
    dashboard, a benchmark target)."""
    process = server.process
    try:
        wait_until(lambda: process.poll() is not None or ready(server.url), timeout, interval=interval,
                   what=f"{name} start")
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{server.log()[-4000:]}")
    except BaseException:
        server.stop()
        raise
    return server


@contextlib.contextmanager
def running_collector(data_dir: Path, **kwargs):
    collector = start_collector(data_dir, **kwargs)
    try:
        yield collector
    finally:
        collector.stop()
