"""Ingest benchmark: collector receipts/s against a bare Flask endpoint and two durable peers
on the same stack.

    python3 -m tests.benchmarks.ingest [--seconds 20] [--connections 32] [--workers 2] [--threads 16]
                                       [--mix receipts|mixed] [--targets bare,postgres,sqlite,collector]

Four targets, run one after the other on this machine with the same load client, each under
the collector's own gunicorn settings (:func:`collector.server.gunicorn_options`):

* ``bare``: :mod:`tests.benchmarks.bare_app`, a Flask endpoint that parses the JSON body
  and answers 200 (nothing stored: the ceiling of the HTTP stack);
* ``postgres``: the same app storing each body in PostgreSQL before answering, one INSERT and
  one COMMIT per request with ``synchronous_commit = on`` (:mod:`tests.benchmarks.durable_peers`),
  on a cluster of its own that the benchmark makes with initdb on a free loopback port
  (:mod:`tests.support.postgres`; Debian's postgresql is installed when missing and root);
* ``sqlite``: the same app storing each body in SQLite, WAL mode, ``synchronous = FULL``, one
  INSERT + COMMIT per request, a fresh database per round;
* ``collector``: the real ``dlrlens collector`` with durable acks (every 200 is fsynced in
  the write-ahead log), a fresh data directory per round.

The two durable peers are what a user would build instead of the collector; their server CPU
includes PostgreSQL's processes.

Rounds alternate (bare, postgres, sqlite, collector, bare, ...) and the medians are compared,
so a noisy neighbour hurts every side. Every request POSTs one realistic Mobivate JSON receipt
(bodies planned by :func:`dlrlens.simulate.generate_traffic`) with its own
``deliveryMessageId``, so one request is one stored receipt. The goals (issue 10):
``collector / postgres >= 1.5`` (:data:`GOAL_POSTGRES_RATIO`) and ``collector / bare >= 0.7``
(:data:`GOAL_RATIO`); ``collector / sqlite`` is printed too.

``--mix mixed`` makes the load Mobivate's three webhooks together (:data:`MIXED_SHARES`): per 100
requests 80 receipts to ``/dlr``, 15 short-URL clicks to ``/click`` and 5 replies to ``/incoming``
(heavier on clicks and replies than real traffic, about 4 clicks and 0.6 replies per 100
receipts). Each request is one stored row of its table; the bare endpoint answers all three paths.

After each collector round the collector is stopped gracefully (it flushes its log) and
the receipts in Parquet are counted: there must be at least as many distinct receipts as
200 answers the client counted, and no log segment left behind. After each peer round the
rows in its database are counted the same way.

The client is ``wrk`` (installed with apt-get when missing and running as root), else a
Python keep-alive client, which on a 2-core machine takes CPU from the server and so
understates both rates. All traffic stays on 127.0.0.1; every run is bounded in time.

Exit status: 0 when both goals are met (each judged only when its peer ran) and every
durable round kept every 200, else 1; 2 when wrk or PostgreSQL was asked for and cannot be had.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

from dlrlens.store import layout
from dlrlens.simulate import generate_traffic
from tests.benchmarks.durable_peers import PostgresStore, SqliteStore
from tests.support.debian import debian_binary
from tests.support.postgres import running_postgres
from tests.support.servers import REPO, Collector, free_port, wait_started

GOAL_RATIO = 0.7  # collector / bare
GOAL_POSTGRES_RATIO = 1.5  # collector / postgres
TARGETS = ("bare", "postgres", "sqlite", "collector")
DURABLE_PEERS = ("postgres", "sqlite")
INGEST_PATH = "/dlr?campaign=bench"
RESULT_MARKER = "DLRLENS_INGEST_RESULT "
TEMPLATE_MESSAGES = 64
# --mix mixed: (path, requests per 100) of each webhook.
MIXED_SHARES = (("/dlr?campaign=bench", 80), ("/click?campaign=bench", 15), ("/incoming?campaign=bench", 5))
NOISY_NEIGHBOUR_CORES = 0.25
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- receipts ------------------------------------------------------------------------------


def receipt_templates(messages: int = TEMPLATE_MESSAGES, seed: int = 7) -> list[tuple[str, str, str]]:
    """``(path, before, after)``: the path and the text around the deliveryMessageId of every
    JSON receipt the simulator plans for ``messages`` messages (about 2.3 receipts each).

    A request body is ``before + message_id + after``, so the load keeps the simulator's
    mix of statuses (ACCEPTED, interims, DELIVERED, failures) and timestamp styles.
    """
    posts = generate_traffic(campaigns=4, messages=messages, seed=seed, xml_share=0.0, duplicates=0.0,
                             start=datetime.now(timezone.utc) - timedelta(hours=4))
    templates = []
    for post in posts:
        body = post.body.decode("utf-8")
        before, found, after = body.partition(json.dumps(post.receipt.delivery_message_id))
        if not found:
            raise RuntimeError("the simulator's JSON body no longer spells its deliveryMessageId as expected")
        templates.append((INGEST_PATH, before + '"', '"' + after))
    return templates


def mixed_templates(receipts: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """:data:`MIXED_SHARES` of receipt, click and reply templates (``(path, before, after)``, the id
    between): 100 templates, so a request's kind cycles with the same shares in every client thread."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+0000")
    click = ('{"mobile":"447700900123","messageId":"', '","batchId":"BENCH","clientRef":null,"browser":"Chrome",'
             '"country":"United Kingdom","ipAddress":"203.0.113.7","iso2l":"UK","os":"Android",'
             '"url":"https://shop.example.com/offer?utm_source=sms"}')
    reply = ('{"id":"', f'","originator":"447700900456","recipient":"60777","body":"STOP","created":"{now}",'
             '"inReplyTo":"0123456789ABCDEF0123456789ABCDEF","logicalMessageId":"BENCH","ownerUserId":"U1"}')
    (dlr, dlr_share), (click_path, click_share), (incoming, reply_share) = MIXED_SHARES
    mixed = [receipts[n % len(receipts)] for n in range(dlr_share)]
    mixed += [(click_path, *click)] * click_share + [(incoming, *reply)] * reply_share
    random.Random(1).shuffle(mixed)
    return mixed


def message_id(nonce: int, thread: int, counter: int) -> str:
    """32 hex digits like Mobivate's ids, unique per (run nonce, client thread, counter).

    The wrk script builds the same format in Lua.
    """
    return f"{nonce:08X}{thread:08X}{counter:016X}"


# -- results -------------------------------------------------------------------------------


@dataclass
class LoadResult:
    """What one client run measured. ``not_ok`` counts answers other than 200."""

    requests: int
    seconds: float
    not_ok: int
    socket_errors: int
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def acknowledged(self) -> int:
        return self.requests - self.not_ok


def group_cpu_seconds(process_group: int) -> float:
    """User + system CPU seconds of the live processes in ``process_group`` (master and workers)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if int(fields[2]) == process_group:  # fields[2] is pgrp; utime, stime are [11], [12]
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def connections_per_worker(port: int, workers: int) -> str:
    """Established connections to ``port`` per server process, busiest first (``"27/5"``).

    Each gunicorn worker keeps the keep-alive connections it accepted, so one worker may
    carry most of the load; that skews a round, and the column shows it. ``?`` without ``ss``.
    """
    try:
        out = subprocess.run(["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    counts = sorted(Counter(re.findall(r"pid=(\d+)", out)).values(), reverse=True)
    counts += [0] * (workers - len(counts))
    return "/".join(map(str, counts))


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (from /proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / CLK_TCK


def client_cpu_seconds() -> float:
    """CPU seconds of this process (the Python client) and its reaped children (wrk)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@dataclass
class CpuUse:
    """CPU seconds over one measured run: the server's, the client's, and everyone else's."""

    server: float
    client: float
    machine: float

    @classmethod
    def sample(cls, process_group: int, *more_groups: int) -> "CpuUse":
        """Now; the server is ``process_group`` and ``more_groups`` (a database server's)."""
        server = sum(group_cpu_seconds(group) for group in (process_group, *more_groups))
        return cls(server, client_cpu_seconds(), machine_busy_seconds())

    def __sub__(self, earlier: "CpuUse") -> "CpuUse":
        return CpuUse(self.server - earlier.server, self.client - earlier.client, self.machine - earlier.machine)

    @property
    def others(self) -> float:
        return max(0.0, self.machine - self.server - self.client)


@dataclass
class Round:
    """One measured run against one target."""

    target: str
    number: int
    load: LoadResult
    cpu: CpuUse
    connections: str  # per worker, sampled mid-run
    stored_check: str = ""  # durable rounds: what the count of stored rows showed
    durable: bool = True

    @property
    def server_cpu_ms_per_request(self) -> float:
        return self.cpu.server * 1000 / max(self.load.requests, 1)

    @property
    def other_load_cores(self) -> float:
        """Cores other processes kept busy meanwhile: a noisy neighbour shows here."""
        return self.cpu.others / self.load.seconds if self.load.seconds else 0.0


# -- wrk -----------------------------------------------------------------------------------


def ensure_wrk() -> str | None:
    """Path of ``wrk``; installs Debian's package when missing and running as root."""
    return debian_binary("wrk", who="ingest")


def _lua_string(text: str) -> str:
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    return f"[{'=' * level}[{text}]{'=' * level}]"


def wrk_script(templates: list[tuple[str, str, str]], nonce: int) -> str:
    """A wrk Lua script: POST one receipt (click, reply) per request to its path, each with its
    own id, count answers other than 200 per thread, and print a JSON summary line at the end."""
    rows = ",\n".join(f"  {{{_lua_string(path)}, {_lua_string(before)}, {_lua_string(after)}}}"
                       for path, before, after in templates)
    return f"""-- generated by tests/benchmarks/ingest.py
local templates = {{
{rows}
}}
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local threads = {{}}
local thread_count = 0
function setup(thread)
  thread:set("thread_number", thread_count)
  thread_count = thread_count + 1
  table.insert(threads, thread)
end

local counter = 0
not_ok = 0
function request()
  counter = counter + 1
  local t = templates[counter % #templates + 1]
  -- same format as ingest.message_id(nonce, thread, counter)
  local id = string.format("%08X%08X%016X", {nonce}, thread_number, counter)
  return wrk.format(nil, t[1], nil, t[2] .. id .. t[3])
end

function response(status, headers, body)
  if status ~= 200 then not_ok = not_ok + 1 end
end

function done(summary, latency, requests)
  local total_not_ok = 0
  for _, thread in ipairs(threads) do total_not_ok = total_not_ok + thread:get("not_ok") end
  local e = summary.errors
  io.write(string.format(
    '{RESULT_MARKER}{{"requests":%d,"duration_us":%d,"not_ok":%d,"socket_errors":%d,"p50_us":%d,"p99_us":%d}}\\n',
    summary.requests, summary.duration, total_not_ok, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def run_wrk(wrk: str, url: str, seconds: float, connections: int, client_threads: int, script: Path) -> LoadResult:
    """Run wrk against ``url`` for ``seconds`` and return what it measured."""
    command = [wrk, "--latency", "-t", str(client_threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s",
               "--timeout", "30s", "-s", str(script), url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    doc = json.loads(lines[-1][len(RESULT_MARKER):])
    return LoadResult(doc["requests"], doc["duration_us"] / 1e6, doc["not_ok"], doc["socket_errors"],
                      doc["p50_us"] / 1000, doc["p99_us"] / 1000)


# -- Python fallback client ----------------------------------------------------------------


def percentile(sorted_values: list[float], share: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(share * len(sorted_values)))]


def run_python_client(url: str, seconds: float, connections: int, templates: list[tuple[str, str, str]],
                      nonce: int) -> LoadResult:
    """Keep-alive HTTP/1.1 client, one thread per connection, for ``seconds``.

    Only a fallback: on a small machine it competes with the server for CPU.
    """
    parts = urlsplit(url)
    deadline = time.monotonic() + seconds
    latencies: list[list[float]] = [[] for _ in range(connections)]
    not_ok = [0] * connections
    socket_errors = [0] * connections

    def worker(number: int) -> None:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        counter = 0
        while time.monotonic() < deadline:
            counter += 1
            path, before, after = templates[counter % len(templates)]
            body = (before + message_id(nonce, number, counter) + after).encode()
            started = time.perf_counter()
            try:
                connection.request("POST", path, body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                socket_errors[number] += 1
                connection.close()
                connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
                continue
            latencies[number].append(time.perf_counter() - started)
            if response.status != 200:
                not_ok[number] += 1
        connection.close()

    started = time.monotonic()
    workers = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(connections)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    elapsed = time.monotonic() - started
    merged = sorted(value for values in latencies for value in values)
    return LoadResult(len(merged), elapsed, sum(not_ok), sum(socket_errors),
                      percentile(merged, 0.50) * 1000, percentile(merged, 0.99) * 1000)


# -- servers -------------------------------------------------------------------------------


def _child_env() -> dict:
    # Only the benchmark's own settings reach the servers, never the caller's DLRLENS_*.
    return {k: v for k, v in os.environ.items() if not k.startswith("DLRLENS_")}


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def start_server(name: str, command: list[str], port: int, data_dir: Path, log_dir: Path) -> Collector:
    """Run ``command`` in its own process group, wait until ``/healthz`` answers 200.

    Returns a :class:`tests.support.servers.Collector` handle (its ``stop()`` is a graceful
    SIGTERM to the group, then SIGKILL), whichever server it is.
    """
    log_path = log_dir / f"{name}-{port}.log"
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(command, cwd=REPO, env=_child_env(), stdout=log_file, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    return wait_started(Collector(process, f"http://127.0.0.1:{port}", data_dir, log_path), _ready, 60, name)


def sqlite_database(data_dir: Path) -> Path:
    """The ``sqlite`` peer's database file in a round's data directory."""
    return data_dir / "peer.sqlite"


def server_command(target: str, port: int, data_dir: Path, workers: int, threads: int,
                   dsn: str | None = None) -> list[str]:
    """The command line of ``target`` (one of :data:`TARGETS`; ``postgres`` needs ``dsn``)."""
    common = ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers), "--threads", str(threads)]
    if target == "collector":
        return [sys.executable, "-m", "dlrlens", "collector", "--data", str(data_dir), *common]
    command = [sys.executable, "-m", "tests.benchmarks.bare_app", *common]
    if target == "postgres":
        return [*command, "--store", "postgres", "--dsn", dsn]
    if target == "sqlite":
        return [*command, "--store", "sqlite", "--database", str(sqlite_database(data_dir))]
    return command


# -- verification --------------------------------------------------------------------------


@dataclass
class StoredCount:
    rows: int
    distinct_receipts: int  # distinct rows of every table (receipts, clicks, replies)
    leftover_log_segments: int
    rejected_bodies: int = 0
    by_table: str = ""


def count_stored(data_dir: Path) -> StoredCount:
    """What a stopped collector left: rows in Parquet (each table by its id), log segments not
    flushed, rejected bodies."""
    import duckdb

    rows = distinct = 0
    by_table = []
    for table, key in (("receipts", "receipt_id"), ("clicks", "click_id"), ("replies", "reply_id")):
        pattern = data_dir / layout.TABLES[table].directory / f"{layout.PARTITION_PREFIX}*" / "*.parquet"
        if not list(pattern.parent.parent.glob(f"{layout.PARTITION_PREFIX}*/*.parquet")):
            continue
        with duckdb.connect() as db:
            found, unique = db.execute(f"SELECT count(*), count(DISTINCT {key}) FROM read_parquet(?)",
                                       [str(pattern)]).fetchone()
        rows, distinct = rows + found, distinct + unique
        by_table.append(f"{table} {unique}")
    segments = len(list((data_dir / layout.WAL_DIR).glob("*/*.wal")))
    rejected = len(list((data_dir / layout.REJECTED_DIR).glob("*/*"))) if (data_dir / layout.REJECTED_DIR).exists() else 0
    return StoredCount(rows, distinct, segments, rejected, ", ".join(by_table))


def filesystem_type(path: Path) -> str:
    """Filesystem type of the mount holding ``path`` (``tmpfs`` would make fsync free)."""
    best, kind = "", "unknown"
    resolved = str(path.resolve())
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    for line in mounts:
        parts = line.split()
        mount_point = parts[1]
        if (resolved == mount_point or resolved.startswith(mount_point.rstrip("/") + "/")) and len(mount_point) > len(best):
            best, kind = mount_point, parts[2]
    return kind


def fsync_latency_ms(directory: Path, count: int = 50) -> tuple[float, float]:
    """p50 and p99 of ``count`` append+fsync calls of a receipt-sized line in ``directory``.

    The collector's group commit waits for one fsync per batch, so a disk that other
    processes keep busy slows it down and not the bare endpoint.
    """
    probe = directory / ".fsync-probe"
    latencies = []
    try:
        with open(probe, "ab", buffering=0) as fh:
            for _ in range(count):
                fh.write(b"x" * 450 + b"\n")
                started = time.perf_counter()
                os.fsync(fh.fileno())
                latencies.append((time.perf_counter() - started) * 1000)
    finally:
        probe.unlink(missing_ok=True)
    latencies.sort()
    return percentile(latencies, 0.50), percentile(latencies, 0.99)


# -- the benchmark -------------------------------------------------------------------------


@dataclass
class Bench:
    """One benchmark run: its options, its scratch directory, its client, its receipt bodies,
    and the PostgreSQL cluster of the ``postgres`` target (``None`` when it does not run)."""

    args: argparse.Namespace
    work_dir: Path
    wrk: str | None
    templates: list[tuple[str, str, str]] = field(default_factory=receipt_templates)
    nonce: int = field(default_factory=lambda: random.getrandbits(31))
    postgres: object | None = None  # tests.support.postgres.PostgresCluster

    def load(self, url: str, seconds: float) -> LoadResult:
        """One client run against ``url``, with fresh message ids."""
        self.nonce += 1
        if self.wrk:
            script = self.work_dir / f"ingest-{self.nonce}.lua"
            script.write_text(wrk_script(self.templates, self.nonce))
            return run_wrk(self.wrk, url, seconds, self.args.connections, self.args.wrk_threads, script)
        return run_python_client(url, seconds, self.args.connections, self.templates, self.nonce)

    def round(self, target: str, number: int) -> Round:
        """Start ``target``, warm it up, measure, stop it; for a durable target, check what it stored."""
        args = self.args
        data_dir = self.work_dir / f"{target}-{number}"
        data_dir.mkdir()
        port = free_port()
        dsn = self.postgres.dsn if target == "postgres" else None
        if target == "postgres":
            PostgresStore.create_table(dsn)  # a fresh table per round
        elif target == "sqlite":
            SqliteStore.create_table(sqlite_database(data_dir))
        database_group = [self.postgres.process.pid] if target == "postgres" else []
        server = start_server(target, server_command(target, port, data_dir, args.workers, args.threads, dsn),
                              port, data_dir, self.work_dir)
        try:
            url = server.url + "/"  # each template names its path
            warm = self.load(url, args.warmup) if args.warmup > 0 else None
            split: list[str] = []
            sampler = threading.Timer(args.seconds / 2, lambda: split.append(connections_per_worker(port, args.workers)))
            cpu_before = CpuUse.sample(server.process.pid, *database_group)
            sampler.start()
            try:
                load = self.load(url, args.seconds)
            finally:
                sampler.cancel()
                sampler.join()
            cpu = CpuUse.sample(server.process.pid, *database_group) - cpu_before
        finally:
            server.stop()
        result = Round(target, number, load, cpu, split[0] if split else "?")
        acknowledged = load.acknowledged + (warm.acknowledged if warm else 0)
        if target == "collector":
            stored = count_stored(data_dir)
            result.durable = (server.process.returncode == 0 and stored.distinct_receipts >= acknowledged
                              and stored.leftover_log_segments == 0)
            result.stored_check = (
                f"200s counted (warm-up included) {acknowledged}, rows in Parquet {stored.rows} "
                f"({stored.distinct_receipts} distinct: {stored.by_table}), log segments left {stored.leftover_log_segments}, "
                f"rejected bodies {stored.rejected_bodies}, collector exit {server.process.returncode}"
                f" -> {'OK' if result.durable else 'LOST RECEIPTS OR UNCLEAN STOP'}"
            )
        elif target in DURABLE_PEERS:
            rows, distinct = (PostgresStore.stored_rows(dsn) if target == "postgres"
                              else SqliteStore.stored_rows(sqlite_database(data_dir)))
            result.durable = distinct >= acknowledged
            result.stored_check = (f"200s counted (warm-up included) {acknowledged}, rows in {target} {rows} "
                                   f"({distinct} distinct) -> {'OK' if result.durable else 'LOST ROWS'}")
        if not args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)
        return result


@dataclass
class Ratio:
    """``collector / peer`` of the median receipts/s, and its goal (``None``: printed only)."""

    peer: str
    value: float
    goal: float | None

    @property
    def passed(self) -> bool:
        return self.goal is None or self.value >= self.goal


def ratios(medians: dict[str, dict[str, float]]) -> list[Ratio]:
    """The collector against each peer that ran: postgres (goal 1.5), sqlite, bare (goal 0.7)."""
    goals = {"postgres": GOAL_POSTGRES_RATIO, "sqlite": None, "bare": GOAL_RATIO}
    if "collector" not in medians:
        return []
    return [Ratio(peer, medians["collector"]["rate"] / medians[peer]["rate"] if medians[peer]["rate"] else 0.0, goal)
            for peer, goal in goals.items() if peer in medians]


def print_report(rounds: list[Round], args: argparse.Namespace, client: str, fs_kind: str) -> bool:
    """Print the table, the medians, the ratios against the goals; True when every goal is met."""
    print()
    print(f"ingest benchmark: {os.cpu_count()} cores, client {client}, {args.connections} connections, "
          f"{args.seconds:g}s per round (+{args.warmup:g}s warm-up), gunicorn {args.workers} workers x "
          f"{args.threads} threads, data on {fs_kind}, load: {args.mix}, load average before: {getattr(args, 'load_before', '?')}")
    header = (f"{'target':<10} {'round':>6} {'receipts/s':>10} {'p50 ms':>7} {'p99 ms':>7} {'non-200':>7} "
              f"{'sockerr':>7} {'cpu ms/req':>10} {'others':>6} {'conns/worker':>12}")
    print(header)
    print("-" * len(header))

    def row(target: str, label: str, rate: float, p50: float, p99: float, not_ok: str, errors: str,
            cpu_ms: float, others: str = "", connections: str = "") -> None:
        print(f"{target:<10} {label:>6} {rate:>10.0f} {p50:>7.1f} {p99:>7.1f} {not_ok:>7} {errors:>7} "
              f"{cpu_ms:>10.2f} {others:>6} {connections:>12}")

    for r in rounds:
        row(r.target, str(r.number), r.load.rate, r.load.p50_ms, r.load.p99_ms, str(r.load.not_ok),
            str(r.load.socket_errors), r.server_cpu_ms_per_request, f"{r.other_load_cores:.2f}", r.connections)
    medians: dict[str, dict[str, float]] = {}
    for target in TARGETS:
        mine = [r for r in rounds if r.target == target]
        if not mine:
            continue
        medians[target] = m = {
            "rate": statistics.median(r.load.rate for r in mine),
            "p50": statistics.median(r.load.p50_ms for r in mine),
            "p99": statistics.median(r.load.p99_ms for r in mine),
            "cpu": statistics.median(r.server_cpu_ms_per_request for r in mine),
            "others": statistics.median(r.other_load_cores for r in mine),
        }
        row(target, "median", m["rate"], m["p50"], m["p99"], "", "", m["cpu"], f"{m['others']:.2f}")
    print("receipts/s = requests/s (one receipt per request); cpu ms/req: server CPU per request")
    print("(postgres: the Flask workers and PostgreSQL's processes); others: cores that other processes")
    print("on this machine kept busy during the round; conns/worker: keep-alive connections each")
    print("gunicorn worker held mid-run")
    noisy = [f"{r.target} {r.number}" for r in rounds if r.other_load_cores > NOISY_NEIGHBOUR_CORES]
    if noisy:
        print(f"WARNING: other processes used over {NOISY_NEIGHBOUR_CORES} cores during {', '.join(noisy)}: "
              "rates are understated and noisy there; run again on a quiet machine")

    print()
    found = ratios(medians)
    for ratio in found:
        goal = f"goal >= {ratio.goal}   {'PASS' if ratio.passed else 'FAIL'}" if ratio.goal is not None else "(no goal)"
        print(f"ratio collector/{ratio.peer:<8} = {ratio.value:.2f}   {goal}")
    print("server CPU per receipt: " + ", ".join(f"{target} {m['cpu']:.2f} ms" for target, m in medians.items()))
    for r in rounds:
        if r.stored_check:
            print(f"{r.target} round {r.number}: {r.stored_check}")
    return bool(found) and all(ratio.passed for ratio in found)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python3 -m tests.benchmarks.ingest",
                                     description="Collector ingest rate against a bare Flask endpoint and durable peers.")
    parser.add_argument("--seconds", type=float, default=20, help="measured seconds per round (default 20)")
    parser.add_argument("--connections", type=int, default=32, help="concurrent keep-alive connections (default 32)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers of every server (default 2)")
    parser.add_argument("--threads", type=int, default=16, help="threads per worker (default 16)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per target, alternating (default 2)")
    parser.add_argument("--warmup", type=float, default=2, help="unmeasured seconds before each round (default 2)")
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto",
                        help="load client: wrk (installed if missing and root), python, or auto (default)")
    parser.add_argument("--wrk-threads", type=int, default=1,
                        help="wrk threads (default 1: one core's worth is plenty and leaves CPU to the server)")
    parser.add_argument("--tmp-dir", default=None,
                        help="where the data directories and the PostgreSQL cluster go (default: system temp; "
                             "as root, the postgres user must be able to enter it)")
    parser.add_argument("--keep", action="store_true", help="keep the data directories and server logs")
    parser.add_argument("--mix", choices=("receipts", "mixed"), default="receipts",
                        help="receipts only (default), or receipts + clicks + replies (see MIXED_SHARES)")
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help=f"comma-separated targets, run in this order each round (default {','.join(TARGETS)})")
    args = parser.parse_args(argv)
    if min(args.seconds, args.connections, args.workers, args.threads, args.rounds) <= 0 or args.warmup < 0:
        parser.error("seconds, connections, workers, threads and rounds must be positive")
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(args.targets) - set(TARGETS))
    if unknown or not args.targets or len(set(args.targets)) != len(args.targets):
        parser.error(f"--targets: each of {', '.join(TARGETS)} at most once (got {', '.join(args.targets) or 'none'})")
    return args


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the servers


def load_average() -> str:
    """The 1, 5 and 15-minute load averages, as ``uptime`` prints them."""
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    wrk = ensure_wrk() if args.client in ("auto", "wrk") else None
    if args.client == "wrk" and not wrk:
        print("ingest: wrk is not available (install Debian's wrk package)", file=sys.stderr)
        return 2
    client = f"wrk ({wrk}, {args.wrk_threads} thread(s))" if wrk else "python (threads + http.client; steals server CPU)"
    if not wrk:
        print("ingest: wrk not available, using the Python client: rates will be understated", file=sys.stderr)

    work_dir = Path(tempfile.mkdtemp(prefix="dlrlens-ingest-", dir=args.tmp_dir))
    fs_kind = filesystem_type(work_dir)
    if fs_kind == "tmpfs":
        print("ingest: WARNING the data directory is on tmpfs, where fsync costs nothing", file=sys.stderr)
    rounds: list[Round] = []
    args.load_before = load_average()
    try:
        with contextlib.ExitStack() as stack:
            bench = Bench(args, work_dir, wrk)
            if "postgres" in args.targets:
                try:
                    # Every server thread holds a connection; headroom for the checks.
                    bench.postgres = stack.enter_context(
                        running_postgres(Path(args.tmp_dir) if args.tmp_dir else None,
                                         max_connections=args.workers * args.threads + 20))
                except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    print(f"ingest: PostgreSQL cannot be had here: {exc}", file=sys.stderr)
                    return 2
            fsync_before = fsync_latency_ms(work_dir)
            if args.mix == "mixed":
                bench.templates = mixed_templates(bench.templates)
            for number in range(1, args.rounds + 1):
                for target in args.targets:
                    print(f"ingest: round {number}: {target} ...", flush=True)
                    rounds.append(bench.round(target, number))
                    print(f"ingest: round {number}: {target} {rounds[-1].load.rate:.0f} receipts/s", flush=True)
            fsync_after = fsync_latency_ms(work_dir)
        passed = print_report(rounds, args, client, fs_kind)
        print(f"load average after: {load_average()}")
        print(f"fsync latency in the data directory, p50/p99: before {fsync_before[0]:.2f}/{fsync_before[1]:.2f} ms, "
              f"after {fsync_after[0]:.2f}/{fsync_after[1]:.2f} ms")
    finally:
        if args.keep:
            print(f"ingest: kept {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    return 0 if passed and all(r.durable for r in rounds) else 1


if __name__ == "__main__":
    raise SystemExit(main())
