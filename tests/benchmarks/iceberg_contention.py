"""Commit latency and conflicts per commit with 1 to 4 collectors flushing to one Iceberg table.

Starts ``weed mini`` on loopback (tests/support/seaweed.py) with pyiceberg's SQL catalog
(SQLite) or weed's own REST catalog (``--catalog rest``), then for each count of writers
(``--writers 1,2,3,4``) runs that many processes, each a collector's flush path (a
:class:`~dlrlens.store.writer.ReceiptStorage` with the
:class:`~dlrlens.store.iceberg.publisher.IcebergPublisher`, its own data directory and log),
all flushing ``--rows`` receipts to the same receipts table every ``--interval`` seconds (the
collectors' ``DLRLENS_FLUSH_SECONDS`` is 2) for ``--flushes`` flushes, each collector at a random
(seeded) phase of the interval, as collectors on their own clocks are. Each
count gets a table of its own (a namespace per round), so that none inherits another's
snapshots. Prints, per count: the flush latency (median, p95; a flush is one append commit
here), conflicts per commit (a commit that found another collector's commit first: pyiceberg
retried it on fresh metadata, or dlrlens did after pyiceberg gave up), commits that failed for
good (their segments stay in the log: none expected), and the median against one writer's in the
same run. Every receipt flushed is counted in the table afterwards.

    python3 -m tests.benchmarks.iceberg_contention [--writers 1,2,3,4] [--flushes 20] [--interval 1]
        [--rows 500] [--catalog sql|rest]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from tests.support import factory
from tests.support.seaweed import object_store

CATALOG = "bench"


def writer_process(number: int, root: str, namespace: str, flushes: int, rows: int, interval: float, start_at: float,
                   results) -> None:
    """One collector's flushes, started at ``start_at`` (time.time) and every ``interval`` after;
    puts (flush seconds, publisher counts) on ``results``."""
    os.environ["DLRLENS_ICEBERG_NAMESPACE"] = namespace
    from dlrlens.store.backends import parse_store, publisher
    from dlrlens.store.writer import ReceiptStorage

    data = Path(root) / f"{namespace}-w{number}"
    storage = ReceiptStorage(data, flush_seconds=3600, publish=publisher(parse_store(f"iceberg:{CATALOG}"), data))
    times = []
    try:
        first = factory.utc(2026, 11, 1)
        for flush in range(flushes):
            storage.store([factory.receipt(f"w{number}-f{flush}-{i}", "DELIVERED", first + timedelta(seconds=i))
                           for i in range(rows)])
            time.sleep(max(0.0, start_at + flush * interval - time.time()))
            started = time.perf_counter()
            storage.flush()
            times.append(time.perf_counter() - started)
        results.put((number, times, dict(storage.publish.counts)))
    finally:
        storage.close()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def run_round(root: Path, writers: int, args) -> dict:
    namespace = f"bench{writers}"
    os.environ["DLRLENS_ICEBERG_NAMESPACE"] = namespace
    from dlrlens.store.iceberg.table import open_catalog, receipts_table

    receipts_table(open_catalog(CATALOG))  # made before the round: creation is not a flush
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    start_at = time.time() + 6.0  # the processes' imports take a few seconds on 2 cores
    # Collectors flush on their own clocks: each starts at a random phase of the interval (seeded).
    phases = random.Random(writers).sample(range(1000), writers)
    processes = [context.Process(target=writer_process, args=(n, str(root), namespace, args.flushes, args.rows,
                                                              args.interval, start_at + phase / 1000 * args.interval,
                                                              results))
                 for n, phase in enumerate(phases)]
    for process in processes:
        process.start()
    gathered = [results.get(timeout=600) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    times = [t for _, flush_times, _ in gathered for t in flush_times]
    counts = {key: sum(c[key] for _, _, c in gathered) for key in gathered[0][2]}
    table = receipts_table(open_catalog(CATALOG), create=False)
    stored = table.scan(selected_fields=("receipt_id",)).to_arrow().num_rows
    return {"writers": writers, "median": statistics.median(times), "p95": percentile(times, 0.95),
            "commits": counts["commits"], "conflicts": counts["conflicts"], "failures": counts["failures"],
            "stored": stored, "expected": writers * args.flushes * args.rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", default="1,2,3,4", help="comma-separated counts of collectors")
    parser.add_argument("--flushes", type=int, default=20)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between a collector's flushes")
    parser.add_argument("--rows", type=int, default=500, help="receipts per flush")
    parser.add_argument("--catalog", choices=("sql", "rest"), default="sql")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.writers.split(",")]
    with tempfile.TemporaryDirectory(prefix="dlrlens-iceberg-contention-") as tmp:
        root = Path(tmp)
        with object_store(root / "s3") as store:
            env = store.catalog_env(CATALOG, root / "catalog.db") if args.catalog == "sql" \
                else store.rest_catalog_env(CATALOG)
            os.environ.update(env)
            rounds = [run_round(root, writers, args) for writers in counts]
    base = rounds[0]["median"]
    print(f"{args.flushes} flushes of {args.rows} receipts per collector every {args.interval:g} s, "
          f"{args.catalog} catalog, a table per round")
    print(f"{'collectors':>10} {'commits':>8} {'median ms':>10} {'p95 ms':>8} {'vs first':>9} "
          f"{'conflicts/commit':>17} {'failed':>7} {'rows stored':>12}")
    lost = 0
    for r in rounds:
        lost += r["expected"] - r["stored"]
        print(f"{r['writers']:>10} {r['commits']:>8} {r['median'] * 1000:>10.1f} {r['p95'] * 1000:>8.1f} "
              f"{r['median'] / base:>8.2f}x {r['conflicts'] / max(1, r['commits']):>17.2f} {r['failures']:>7} "
              f"{r['stored']:>7,}/{r['expected']:,}")
    if lost:
        print(f"LOST: {lost} receipts flushed are not in the tables")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
