"""The load-balanced drill (issue #10): several real collectors behind haproxy writing one Iceberg
table on a real object store, while the traffic goes on through the faults a deployment sees.
Shared by the suite (short: tests/system/test_load_balanced.py) and the soak command (long)::

    python3 -m tests.support.load_balanced [--collectors 3] [--seconds 60] [--outage-seconds 30]

What runs, on loopback, every port free: ``weed mini`` (S3) with pyiceberg's SQL catalog (a
SQLite file), ``--collectors`` real ``dlrlens collector --store iceberg:lake`` processes, each
with its own ``--data`` (:class:`Fleet`), and haproxy in front (:mod:`tests.support.haproxy`).
The traffic is the simulator's (:func:`dlrlens.simulate.plan_traffic`): JSON and XML-form bodies,
re-posted duplicates, pending receipts posted after their message's final, posted through
haproxy by several client threads at a steady pace over ``--seconds`` (:class:`StreamPoster`;
a post is retried until it gets a 200). Meanwhile:

1. at 20 % of the posts the object store is stopped for ``--outage-seconds`` (the collectors
   keep acknowledging from their logs, say "degraded" with a 200, and haproxy keeps them all in
   rotation);
2. at the end of the outage one collector is SIGKILLed (master and workers), its logs holding
   the whole outage's backlog, the store is started again, and the collector restarted on the
   same port: it must answer at once (``restart_seconds``: from the restart to its first
   answer; haproxy sends its requests to the others meanwhile, and again to it once its health
   check passes) and commit its backlog in the background, while the rest of the posts go on
   (the other 30 % follow once the first 70 % are done).

Then the collectors catch up and stop cleanly, and the acknowledged posts are posted again, in
the same order per message, to one collector on the local backend: the reference. The verdict
(:class:`DrillResult`, ``ok``):

* every acknowledged receipt is in the table and nothing else is (the table's receipt ids are
  the reference's), and no log segment is left behind;
* each message counts once in the dashboard's KPIs;
* every figure of ``dlrlens report --format json`` equals the reference's, except two that
  differ between any two ingestions by design: the **webhook lag** (received minus created:
  each collector stamps its own arrival time) and the **duplicate rows** (stored rows minus
  distinct receipts). A retry can store a receipt twice (a collector fsynced it and was killed
  before its answer left; haproxy or the client sent it again), so the table may hold more
  copies than the reference, at most one per retry (haproxy's retries and redispatches plus
  the client's); every reader counts one row per receipt id, so no other figure moves.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from unittest import mock

import requests

from dlrlens.simulate import SimulatedPost, endpoint_url, plan_traffic, post_url
from dlrlens.store import layout
from tests.support.haproxy import load_balancer
from tests.support.lake import report_json, table_column
from tests.support.reliability import kpi_messages, stored_column
from tests.support.seaweed import object_store
from tests.support.servers import Collector, free_port, running_collector, start_collector, wait_until

CATALOG = "lake"
# When the outage starts, as a share of the posts done (the SIGKILL comes at its end).
OUTAGE_AT = 0.2     # of all the posts
FIRST_PART = 0.7    # the posts of the first part (the outage), then the second
# A restarted collector answers before it replays its logs (dlrlens.store.writer); the bound is
# for a loaded machine (measured: DrillResult.restart_seconds).
RESTART_TIMEOUT = 120
POSTS_PER_MESSAGE = 2.3  # the simulator's average (ACCEPTED, interims, a final; some pending)
# Report figures that differ between two ingestions of the same posts (see the module docstring).
WEBHOOK_LAG_FIGURES = ("webhook_lag_p50_s", "webhook_lag_p95_s")
COPIES_FIGURE = "duplicate_rows"


# -- the collectors --------------------------------------------------------------------------


@dataclass
class Fleet:
    """``count`` real collectors on the store that ``env`` configures, collector ``n`` with its
    data in ``directory/collector-<n>`` and a port of its own, kept across restarts (the load
    balancer's configuration names it)."""

    directory: Path
    count: int
    env: dict
    workers: int = 2
    flush_seconds: float = 0.5
    launchers: list[list[str]] = field(default_factory=list)  # per collector, a start_collector launcher
    ports: list[int] = field(default_factory=list)
    collectors: list[Collector | None] = field(default_factory=list)

    def __post_init__(self):
        self.directory.mkdir(parents=True, exist_ok=True)  # the collectors' logs go there
        self.ports = self.ports or [free_port() for _ in range(self.count)]
        self.collectors = [None] * self.count

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    def data_dir(self, number: int) -> Path:
        return self.directory / f"collector-{number}"

    def start(self, number: int, timeout: float = 60) -> Collector:
        """Start collector ``number`` and wait until it answers (its workers replay their logs
        in the background)."""
        self.collectors[number] = start_collector(self.data_dir(number), workers=self.workers,
                                                  flush_seconds=self.flush_seconds, env=self.env,
                                                  port=self.ports[number], log_dir=self.directory, timeout=timeout,
                                                  launcher=self.launchers[number] if self.launchers else ())
        return self.collectors[number]

    def start_all(self) -> None:
        """Every collector, started side by side (each takes a few seconds to import and bind)."""
        with ThreadPoolExecutor(self.count) as pool:
            failures = [error for error in pool.map(self._start_quietly, range(self.count)) if error]
        if failures:
            self.stop_all()
            raise failures[0]

    def _start_quietly(self, number: int) -> BaseException | None:
        try:
            self.start(number)
        except BaseException as exc:  # noqa: BLE001 - handed back to start_all, which raises it
            return exc
        return None

    def kill(self, number: int) -> None:
        self.collectors[number].kill()
        self.collectors[number] = None

    def stop_all(self) -> None:
        """SIGTERM every collector at once: each flushes what its log holds, then exits."""
        running = [collector for collector in self.collectors if collector is not None]
        with ThreadPoolExecutor(max(1, len(running))) as pool:
            list(pool.map(Collector.stop, running))

    def process_groups(self) -> list[int]:
        return [collector.process.pid for collector in self.collectors if collector is not None]

    def health(self) -> list[dict | None]:
        """Each collector's ``/healthz`` document when it answered 200, else None."""
        answers = []
        for url in self.urls:
            try:
                answer = requests.get(url + "/healthz", timeout=5)
                answers.append(answer.json() if answer.status_code == 200 else None)
            except (requests.RequestException, ValueError):
                answers.append(None)
        return answers

    def leftover_segments(self) -> int:
        return sum(len(list(self.data_dir(n).glob(f"{layout.WAL_DIR}/*/*.wal"))) for n in range(self.count))


@contextlib.contextmanager
def running_fleet(directory: Path, count: int, env: dict, **options):
    fleet = Fleet(Path(directory), count, env, **options)
    fleet.start_all()
    try:
        yield fleet
    finally:
        fleet.stop_all()


# -- the traffic -----------------------------------------------------------------------------


class StreamPoster:
    """Posts ``posts`` to ``url`` (a collector's or the load balancer's ``/dlr``) from ``threads``
    client threads while the caller does other things (a context manager: the exit waits for the
    last post).

    Every message's posts go through one thread, in stream order, so two runs over the same
    posts give each message's receipts the same arrival order (the tie-break between receipts
    created at the same instant). Posts are spread evenly over at least ``seconds`` (0: as fast
    as they are answered). A post is retried after a connection error, a timeout or a 5xx, with
    back-off, until it gets a 200 or ``give_up_seconds`` pass (a sender that retries; Mobivate's
    policy is not documented); any other answer is final. ``acked[i]``: post ``i`` got a 200.
    """

    def __init__(self, posts: list[SimulatedPost], url: str, *, threads: int = 4, seconds: float = 0.0,
                 give_up_seconds: float = 90.0):
        self.posts, self.url, self.threads = posts, url, threads
        self.seconds = seconds
        self.give_up_seconds = give_up_seconds
        self.acked = [False] * len(posts)
        self.done = 0
        self.retries = 0                    # attempts after a failed one
        self.final_answers: Counter = Counter()  # posts never acknowledged, by last answer (None: no answer)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="stream")
        self._futures = []

    @property
    def acked_count(self) -> int:
        return sum(self.acked)

    def __enter__(self):
        shares: list[list[int]] = [[] for _ in range(self.threads)]
        for index, post in enumerate(self.posts):
            shares[zlib.crc32(post.receipt.delivery_message_id.encode()) % self.threads].append(index)
        self._futures = [self._pool.submit(self._run, share) for share in shares]
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is not None:
            self._stop.set()  # the caller failed: do not make it wait for the whole stream
        try:
            for future in self._futures:
                future.result()  # each post gives up after give_up_seconds
        finally:
            self._pool.shutdown(wait=exc_type is None)

    def wait_for(self, share: float, timeout: float) -> None:
        """Until ``share`` of the posts are done (acknowledged or given up)."""
        wait_until(lambda: self.done >= share * len(self.posts), timeout, interval=0.05,
                   what=f"{share:.0%} of {len(self.posts)} posts")

    def _run(self, indexes: list[int]) -> None:
        # Each thread keeps its own pace (its share of the posts over ``seconds``) and, when it
        # falls behind (a slow answer, a retry, a busy machine), carries on at that pace from
        # where it is instead of bursting: the faults the drill times by the share of posts
        # done then still meet traffic, however busy the machine.
        pace = self.seconds / max(1, len(indexes))
        due = time.monotonic()
        with requests.Session() as session:
            for index in indexes:
                if self._stop.is_set():
                    return
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                due = max(due, time.monotonic()) + pace
                self._deliver(session, index)

    def _deliver(self, session: requests.Session, index: int) -> None:
        post = self.posts[index]
        target = post_url(endpoint_url(self.url, post.endpoint), post.labels)
        give_up_at = time.monotonic() + self.give_up_seconds
        attempts, status = 0, None
        while True:
            try:
                answer = session.post(target, data=post.body, headers={"Content-Type": post.content_type},
                                      timeout=10)
                status = answer.status_code
            except requests.RequestException:
                status = None
            transient = status is None or status >= 500
            if not transient or time.monotonic() > give_up_at or self._stop.is_set():
                break
            attempts += 1
            time.sleep(min(0.1 * 2 ** attempts, 2.0))
        with self._lock:
            self.done += 1
            self.retries += attempts
            if status == 200:
                self.acked[index] = True
            else:
                self.final_answers[status] += 1


# -- the drill -------------------------------------------------------------------------------


@dataclass
class DrillSettings:
    collectors: int = 3
    workers: int = 2                 # gunicorn workers per collector
    seconds: float = 20.0            # how long the stream lasts
    rate: float = 80.0               # posts per second (so about seconds * rate posts)
    outage_seconds: float = 10.0     # the object store stopped for this long
    threads: int = 4                 # client threads
    flush_seconds: float = 2.0      # the product's default
    seed: int = 1


@dataclass
class DrillResult:
    posts: int
    acked: int
    not_acked: dict                  # last answer -> posts never acknowledged
    client_retries: int
    balancer_retries: int            # haproxy's retries + redispatches (a retry on another collector may count in both)
    requests_per_collector: dict     # haproxy's count of requests sent to each collector
    acked_during_outage: int
    restart_seconds: float           # from the restart (with the outage's backlog in its log) to its first answer
    restarted_at_share: float        # share of the posts done by then
    degraded_with_200: int           # collectors that said "degraded" with a 200 during the outage
    up_during_outage: int            # collectors haproxy kept in rotation during the outage
    leftover_segments: int
    table_rows: int
    table_receipts: int
    missing: int                     # acknowledged receipt ids not in the table
    unexpected: int                  # receipt ids in the table that no acknowledged post carried
    extra_copies: int                # duplicate rows beyond the reference's (retries)
    report_extra_copies: int         # the same, as the two reports' "duplicate rows" say it
    messages: int                    # distinct message ids acknowledged
    kpi_messages: int
    report_differences: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (not self.not_acked and not self.missing and not self.unexpected and not self.leftover_segments
                and self.kpi_messages == self.messages and not self.report_differences
                and 0 <= self.extra_copies <= self.client_retries + self.balancer_retries
                and self.report_extra_copies == self.extra_copies
                and self.acked_during_outage > 0)

    def summary(self) -> str:
        return json.dumps(dict(asdict(self), ok=self.ok))


def run_drill(directory: Path, settings: DrillSettings, say=print) -> DrillResult:
    """The drill described in the module docstring, in ``directory`` (kept afterwards: logs,
    haproxy's configuration, both reports)."""
    directory = Path(directory)
    started = time.monotonic()

    def step(text: str) -> None:
        say(f"drill +{time.monotonic() - started:.1f}s: {text}")

    messages = max(20, round(settings.rate * settings.seconds / POSTS_PER_MESSAGE))
    posts = plan_traffic(4, messages, seed=settings.seed, duplicates=0.05, out_of_order=0.05, xml_share=0.2).posts
    with object_store(directory / "s3") as lake:
        catalog_env = lake.catalog_env(CATALOG, directory / "catalog.db")
        collector_env = dict(catalog_env, DLRLENS_STORE=f"iceberg:{CATALOG}", DLRLENS_TRUSTED_PROXIES="1")
        # This process reads the table too (the checks, the report): the catalog, for the drill only.
        with mock.patch.dict(os.environ, catalog_env):
            with running_fleet(directory, settings.collectors, collector_env, workers=settings.workers,
                               flush_seconds=settings.flush_seconds) as fleet:
                with load_balancer(directory / "haproxy", fleet.urls) as balancer:
                    step(f"{len(posts)} posts over {settings.seconds:g} s through haproxy to "
                         f"{settings.collectors} collectors")
                    # Two parts, one after the other (so each message's posts stay in order): the
                    # outage and the SIGKILL during the first; the second goes on while the
                    # restarted collector catches up.
                    split = round(len(posts) * FIRST_PART)
                    with StreamPoster(posts[:split], balancer.dlr, threads=settings.threads,
                                      seconds=settings.seconds * FIRST_PART) as first:
                        first.wait_for(OUTAGE_AT / FIRST_PART, settings.seconds * 3 + 60)
                        step(f"object store down for {settings.outage_seconds:g} s; then SIGKILL collector 1 "
                             "(its log holding the outage's backlog), start the store, restart collector 1")
                        outage = object_store_outage(lake, fleet, balancer, first, settings.outage_seconds,
                                                     kill_at_end=0)
                        restarting = time.monotonic()
                        fleet.start(0, timeout=RESTART_TIMEOUT)
                        restart_seconds = time.monotonic() - restarting
                        restarted_at = first.done / len(posts)
                        step(f"collector 1 answering {restart_seconds:.1f} s after its restart")
                    with StreamPoster(posts[split:], balancer.dlr, threads=settings.threads,
                                      seconds=settings.seconds * (1 - FIRST_PART)) as second:
                        pass
                    streams = (first, second)
                    acked = first.acked + second.acked
                    step(f"stream done ({sum(acked)} acknowledged); waiting for the collectors to catch up")
                    wait_until(lambda: all(doc and doc["status"] == "ok" for doc in fleet.health()), 180,
                               interval=0.5, what="every collector caught up (/healthz ok)")
                    balancer.wait_collectors_up()  # the restarted one back in rotation
                    stats = balancer.stats()
                step("stopping the collectors (each flushes its log)")
            leftover = fleet.leftover_segments()
            acked_posts = [post for post, was_acked in zip(posts, acked) if was_acked]
            step(f"posting the {len(acked_posts)} acknowledged posts to the local reference")
            with running_collector(directory / "reference", workers=1, flush_seconds=0.3) as reference:
                with StreamPoster(acked_posts, reference.dlr, threads=settings.threads) as again:
                    pass
            if again.acked_count != len(acked_posts):
                raise RuntimeError(f"the local reference acknowledged {again.acked_count} of {len(acked_posts)} posts: "
                                   f"{dict(again.final_answers)}")
            step("reading the table and both reports")
            table_ids = table_column("receipt_id", CATALOG)
            reference_ids = stored_column(directory / "reference", "receipt_id")
            iceberg_report = report_json(directory / "reader", f"iceberg:{CATALOG}", directory / "iceberg-report.json")
            local_report = report_json(directory / "reference", "local", directory / "reference-report.json")
            kpis = kpi_messages(directory / "reader", f"iceberg:{CATALOG}")
    return DrillResult(
        posts=len(posts), acked=len(acked_posts),
        not_acked={str(k): v for k, v in sum((each.final_answers for each in streams), Counter()).items()},
        client_retries=sum(each.retries for each in streams),
        balancer_retries=int(stats["BACKEND"]["wretr"] or 0) + int(stats["BACKEND"]["wredis"] or 0),
        requests_per_collector={name: int(row["stot"]) for name, row in stats.items() if name != "BACKEND"},
        leftover_segments=leftover, table_rows=len(table_ids), table_receipts=len(set(table_ids)),
        missing=len(set(reference_ids) - set(table_ids)), unexpected=len(set(table_ids) - set(reference_ids)),
        extra_copies=(len(table_ids) - len(set(table_ids))) - (len(reference_ids) - len(set(reference_ids))),
        messages=len({post.receipt.delivery_message_id for post in acked_posts}), kpi_messages=kpis,
        report_differences=report_differences(iceberg_report, local_report),
        report_extra_copies=summary_value(iceberg_report, COPIES_FIGURE) - summary_value(local_report, COPIES_FIGURE),
        restart_seconds=round(restart_seconds, 1), restarted_at_share=round(restarted_at, 2), seconds=round(time.monotonic() - started, 1), **outage)


def object_store_outage(lake, fleet: Fleet, balancer, stream: StreamPoster, seconds: float,
                        kill_at_end: int | None = None) -> dict:
    """Stop the object store for ``seconds`` while the stream goes on, and SIGKILL collector
    ``kill_at_end`` (when given) just before starting the store again; what was seen meanwhile."""
    lake.stop()
    down_at, acked_before = time.monotonic(), stream.acked_count
    degraded: set[int] = set()
    while time.monotonic() - down_at < seconds:
        for number, doc in enumerate(fleet.health()):
            if doc and doc["status"] == "degraded" and doc["store"]["last_error"]:
                degraded.add(number)
        time.sleep(0.5)
    up = len(balancer.collectors_up())
    acked = stream.acked_count - acked_before
    if kill_at_end is not None:
        fleet.kill(kill_at_end)
    lake.start()
    return {"acked_during_outage": acked, "degraded_with_200": len(degraded), "up_during_outage": up}


def summary_value(report: dict, key: str):
    return next(row["value"] for row in report["Summary"] if row["key"] == key)


def report_differences(iceberg: dict, local: dict, limit: int = 20) -> list[str]:
    """Where two ``dlrlens report --format json`` documents differ (``section[row].column: a != b``),
    leaving out the figures that differ between two ingestions by design (the module docstring):
    the webhook lag everywhere; the duplicate rows, which the drill checks against the retries."""
    ignored = set(WEBHOOK_LAG_FIGURES) | {COPIES_FIGURE}

    def comparable(value):
        if isinstance(value, dict):
            return {k: comparable(v) for k, v in value.items() if k not in ignored}
        if isinstance(value, list):
            return [comparable(v) for v in value if not (isinstance(v, dict) and v.get("key") in ignored)]
        return value

    found: list[str] = []

    def walk(a, b, where: str) -> None:
        if len(found) >= limit:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key), b.get(key), f"{where}.{key}" if where else key)
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for number, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{where}[{number}]")
        elif a != b:
            found.append(f"{where}: {a!r} != {b!r}")

    walk(comparable(iceberg), comparable(local), "")
    return found


def main(argv: list[str] | None = None) -> int:
    defaults = DrillSettings()
    parser = argparse.ArgumentParser(prog="python3 -m tests.support.load_balanced",
                                     description="Soak: collectors behind haproxy on one Iceberg table, a SIGKILL "
                                                 "and an object store outage mid-stream.")
    parser.add_argument("--collectors", type=int, default=3)
    parser.add_argument("--workers", type=int, default=defaults.workers, help="gunicorn workers per collector")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the stream lasts (default 60)")
    parser.add_argument("--rate", type=float, default=defaults.rate, help="posts per second")
    parser.add_argument("--outage-seconds", type=float, default=30.0, help="object store down (default 30)")
    parser.add_argument("--threads", type=int, default=defaults.threads, help="client threads")
    parser.add_argument("--flush-seconds", type=float, default=defaults.flush_seconds,
                        help="each collector's flush (one commit per worker) interval (default 2, the product's)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--dir", type=Path, default=None, help="working directory (default: a new temporary one)")
    args = parser.parse_args(argv)
    if args.collectors < 2 or min(args.seconds, args.rate, args.outage_seconds, args.threads, args.workers,
                                  args.flush_seconds) <= 0:
        parser.error("at least 2 collectors, and positive seconds, rate, outage, threads, workers and flush seconds")
    directory = args.dir or Path(tempfile.mkdtemp(prefix="dlrlens-load-balanced-"))
    result = run_drill(directory, DrillSettings(collectors=args.collectors, workers=args.workers, seconds=args.seconds,
                                                rate=args.rate, outage_seconds=args.outage_seconds,
                                                threads=args.threads, flush_seconds=args.flush_seconds,
                                                seed=args.seed))
    print(result.summary())
    print(f"drill: files (logs, haproxy.cfg, both reports) in {directory}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
