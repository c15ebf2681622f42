"""Freshness benchmark: how long after the collector's 200 a receipt shows in the dashboard's figures.

    python3 -m tests.benchmarks.freshness [--data DIR] [--probes 20] [--rate 300] [--interval 1.5]
    python3 -m tests.benchmarks.freshness --iceberg sql|rest [--probes 20] [--rate 300]

Runs the real collector (``tests.support.servers.start_collector``: gunicorn, 2 workers, the
production flush interval and its maintenance thread, which keeps the derived state up to
date) on ``--data`` (an existing data set, e.g. a generated 100 M one, receipts are added
to it) or on a fresh temporary directory. A thread pool posts ``--rate`` JSON receipts per
second (ACCEPTED then DELIVERED of new messages, created now) for the whole run: the load.

Meanwhile ``--probes`` probe receipts are posted, one every ``--interval`` seconds, each with
its own campaign label. For each, the time from its 200 to the moment ``queries.campaigns``
of a dashboard ``Store`` in this process (polled every 0.1 s) counts its message is measured.
Reported: p50 and max over the probes, goal 5 s; also the load achieved and the derived
state's progress (manifest version, receipt files not absorbed when the run ended).

``--iceberg sql|rest``: the Iceberg store instead (issue #10). ``weed mini`` starts on loopback
(tests/support/seaweed.py) with a pyiceberg SQL catalog (``sql``) or its own REST catalog
(``rest``); the collector runs with ``DLRLENS_STORE=iceberg:fresh`` (each flush an append
commit) and the probes are read through the dashboard's Iceberg store (its cache synced every
2 s, the production setting) in a directory of its own: the time from the 200 to the figure
then includes the flush, the commit, the reader's sync, fetching the new data file and
absorbing it into the cache's derived state.

Exit status 0 when every probe showed up and the max is within the goal.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import requests

from dlrlens.store import derive
from dlrlens.store.backends import open_store, parse_store
from tests.support.seaweed import object_store
from tests.support.servers import start_collector

UTC = timezone.utc
GOAL_SECONDS = 5.0
POLL_SECONDS = 0.1
ICEBERG_CATALOG = "fresh"


def receipt_body(message_id: str, status: str, code: int) -> str:
    return json.dumps({"deliveryMessageId": message_id, "batchId": "LOAD", "clientReference": None,
                       "created": datetime.now(UTC).isoformat(timespec="milliseconds"),
                       "status": status, "statusCode": code, "parts": 1, "hlr": None})


class Load:
    """Posts about ``rate`` receipts per second from ``threads`` keep-alive sessions."""

    def __init__(self, url: str, rate: float, threads: int = 6):
        self.url, self.rate, self.threads = url, rate, threads
        self.acked = self.failed = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(threads)

    def start(self) -> "Load":
        for worker in range(self.threads):
            self._pool.submit(self._run, worker)
        return self

    def _run(self, worker: int) -> None:
        session = requests.Session()
        pause = self.threads / self.rate
        next_at = time.monotonic()
        n = 0
        while not self._stop.is_set():
            n += 1
            message_id = f"{uuid.uuid4().hex.upper()}"
            status, code = ("ACCEPTED", 2) if n % 2 else ("DELIVERED", 1)
            try:
                ok = session.post(self.url + "?campaign=load", data=receipt_body(message_id, status, code),
                                  headers={"Content-Type": "application/json"}, timeout=10).status_code == 200
            except requests.RequestException:
                ok = False
            with self._lock:
                self.acked += ok
                self.failed += not ok
            next_at += pause
            time.sleep(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="data directory (default: a fresh temporary one)")
    parser.add_argument("--probes", type=int, default=20)
    parser.add_argument("--rate", type=float, default=300.0, help="load: receipts per second")
    parser.add_argument("--interval", type=float, default=1.5, help="seconds between probes")
    parser.add_argument("--timeout", type=float, default=60.0, help="give up on a probe after this long")
    parser.add_argument("--iceberg", choices=("sql", "rest"),
                        help="the Iceberg store on a local object store, with this kind of catalog")
    args = parser.parse_args(argv)
    if args.iceberg and args.data:
        parser.error("--data and --iceberg exclude each other (--iceberg starts a fresh table)")

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        env = {}
        if args.iceberg:
            lake = stack.enter_context(object_store(Path(tmp) / "s3"))
            os.environ.update(lake.catalog_env(ICEBERG_CATALOG, Path(tmp) / "catalog.db") if args.iceberg == "sql"
                              else lake.rest_catalog_env(ICEBERG_CATALOG))
            env["DLRLENS_STORE"] = f"iceberg:{ICEBERG_CATALOG}"
        data_dir = (args.data or Path(tmp) / "data").resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        result = measure(args, data_dir, Path(tmp), env)
    return report(args, *result)


def measure(args, data_dir: Path, tmp: Path, env: dict):
    """Run the collector, the load and the probes; returns (seconds to figure per probe, load,
    elapsed seconds, manifest before, manifest after, receipt files not absorbed)."""
    from dashboard import queries as q

    store_dir = tmp / "reader" if env else data_dir  # where the reader's data (and derived state) is
    before = derive.Manifest.load(store_dir)
    collector = start_collector(data_dir, flush_seconds=2.0, log_dir=tmp, env=env)
    load = None
    try:
        load = Load(collector.dlr, args.rate).start()
        store = open_store(store_dir, parse_store(env.get("DLRLENS_STORE", "local")))
        session = requests.Session()
        acked_at: dict[str, float] = {}
        seen: dict[str, float] = {}
        started = time.monotonic()
        next_probe = started + 3.0  # let the load settle first
        sent = 0
        while len(seen) < args.probes:
            now = time.monotonic()
            if sent < args.probes and now >= next_probe:
                campaign = f"probe-{sent:03d}-{uuid.uuid4().hex[:6]}"
                answer = session.post(f"{collector.dlr}?campaign={campaign}",
                                      data=receipt_body(uuid.uuid4().hex.upper(), "DELIVERED", 1),
                                      headers={"Content-Type": "application/json"}, timeout=10)
                if answer.status_code != 200:
                    raise RuntimeError(f"probe answered {answer.status_code}: {answer.text[:200]}")
                acked_at[campaign] = time.monotonic()
                sent += 1
                next_probe += args.interval
            waiting = tuple(sorted(set(acked_at) - set(seen)))
            if waiting:
                table = q.campaigns(store, q.Filters(campaigns=waiting))
                found = time.monotonic()
                for campaign in table.loc[table["messages"] >= 1, "campaign"]:
                    seen[campaign] = found - acked_at[campaign]
                    print(f"freshness: {campaign}: {seen[campaign]:.2f} s", flush=True)
                late = [c for c in waiting if c not in seen and found - acked_at[c] > args.timeout]
                if late:
                    raise RuntimeError(f"probes never seen within {args.timeout:.0f} s: {late}")
            time.sleep(POLL_SECONDS)
        elapsed = time.monotonic() - started
        store.close()
    finally:
        if load is not None:
            load.stop()
        collector.stop()
    root = getattr(getattr(store, "mirror", None), "root", store_dir)
    after = derive.Manifest.load(root)
    tail = len(set(derive.receipt_files(root)) - (after.absorbed if after else set()))
    return seen, load, elapsed, before, after, tail


def report(args, seen: dict, load: Load, elapsed: float, before, after, tail: int) -> int:
    values = sorted(seen.values())
    p50, worst = statistics.median(values), max(values)
    ok = worst <= GOAL_SECONDS
    print()
    print(f"store: {'iceberg (' + args.iceberg + ' catalog)' if args.iceberg else 'local'}")
    print(f"probes: {len(values)}, freshness p50 {p50:.2f} s, max {worst:.2f} s "
          f"(goal <= {GOAL_SECONDS:g} s): {'PASS' if ok else 'FAIL'}")
    print(f"load: {load.acked / elapsed:.0f} receipts/s acknowledged ({load.failed} failed) over {elapsed:.0f} s")
    print(f"derived state: manifest version {before.version if before else '-'} -> "
          f"{after.version if after else '-'}, {tail} receipt files not absorbed at the end")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
