"""The dashboard's queries on the Iceberg store against the local store, in the same run.

    python3 -m tests.benchmarks.iceberg_queries --data DIR [--repeat 3] [--catalog sql|rest] [--work DIR]

``DIR`` is a data set made by ``python3 -m tests.benchmarks.generate`` (or a real one). In one run:

1. ``weed mini`` starts on loopback (tests/support/seaweed.py) with a pyiceberg SQL catalog on
   SQLite (``--catalog sql``, default) or weed's own Iceberg REST catalog (``rest``), under
   ``--work`` (default a temporary directory; give one to keep the table between runs).
2. ``dlrlens migrate`` copies ``DIR`` into the table (timed; a second run over the same
   ``--work`` finds every file copied and skips it).
3. *local*: the cases of ``tests.benchmarks.queries`` (Overview and Campaigns over the last 30
   days and all time, a filter change) on ``dashboard.queries.Store`` over ``DIR`` (its derived
   state brought up to date first), warm: the median of ``--repeat`` runs after one unmeasured run.
4. *iceberg cold*: a new :class:`~dlrlens.store.iceberg.mirror.IcebergStore` on an **empty**
   cache (the page cache dropped first when root): opening it plans the table's files, fetches
   each from the object store and builds the cache's derived state; then each case's first run.
5. *iceberg warm*: the same cases on that store, cache full, median of ``--repeat`` runs. Each
   query may first ask the catalog for a new snapshot (every 2 s, as in the dashboard). Every
   case's frames must be identical to the local ones.

Printed: migrate time, cold open time (files, bytes), per case local / iceberg medians and
their ratio, and whether the figures are identical. Exit status 1 when a case differs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from dlrlens.store.backends import open_store, parse_store
from dlrlens.store.iceberg.migrate import migrate
from dlrlens.store.iceberg.mirror import cache_dir
from tests.benchmarks.queries import bring_up_to_date, cases, drop_page_cache, make_filters, run_case, same
from tests.support.seaweed import object_store

CATALOG = "bench"
UTC = timezone.utc


def timed_runs(store, spec: dict, repeat: int, now: datetime) -> tuple[dict, dict, dict]:
    """Per case: (first run seconds, median of ``repeat`` warm runs, the frames of the first run)."""
    first, warm, frames = {}, {}, {}
    for name, case in spec.items():
        f = make_filters(case["filters"])
        store.clear_cache()
        started = time.perf_counter()
        frames[name] = run_case(store, case["kind"], f, now)
        first[name] = time.perf_counter() - started
        runs = []
        for _ in range(repeat):
            store.clear_cache()
            started = time.perf_counter()
            run_case(store, case["kind"], f, now)
            runs.append(time.perf_counter() - started)
        warm[name] = statistics.median(runs)
        print(f"  {name}: first {first[name]:.3f} s, warm median {warm[name]:.3f} s", flush=True)
    return first, warm, frames


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=3, help="warm runs per case (median reported)")
    parser.add_argument("--catalog", choices=("sql", "rest"), default="sql")
    parser.add_argument("--work", type=Path, help="object store, catalog and caches (default: temporary)")
    args = parser.parse_args(argv)
    data_dir = args.data.resolve()

    with contextlib.ExitStack() as stack:
        work = args.work.resolve() if args.work else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        lake = stack.enter_context(object_store(work / "s3"))
        os.environ.update(lake.catalog_env(CATALOG, work / "catalog.db") if args.catalog == "sql"
                          else lake.rest_catalog_env(CATALOG))
        print(f"iceberg queries benchmark on {data_dir} ({os.cpu_count()} cores), {args.catalog} catalog", flush=True)

        started = time.perf_counter()
        moved = migrate(data_dir, CATALOG)
        migrate_s = time.perf_counter() - started
        print(f"migrate: {moved.copied} files ({moved.rows:,} rows) copied, {moved.already} already there, "
              f"{migrate_s:.1f} s", flush=True)

        bring_up_to_date(data_dir, rebuild=False)
        spec = cases(data_dir)
        now = datetime.now(UTC)
        print("local (warm):", flush=True)
        with open_store(data_dir) as local:
            _, local_warm, local_frames = timed_runs(local, spec, args.repeat, now)

        reader = work / "reader"
        shutil.rmtree(cache_dir(reader, CATALOG), ignore_errors=True)
        dropped = drop_page_cache()
        started = time.perf_counter()
        iceberg = open_store(reader, parse_store(f"iceberg:{CATALOG}"))
        cold_open = time.perf_counter() - started
        cached = list(cache_dir(reader, CATALOG).glob("receipts/*/*.parquet"))
        cached_bytes = sum(p.stat().st_size for p in cached)
        print(f"iceberg cold open (empty cache, page cache {'dropped' if dropped else 'not dropped'}): "
              f"{cold_open:.1f} s, {len(cached)} files, {cached_bytes / 1e6:.0f} MB fetched, derived state built",
              flush=True)
        print("iceberg (first run = cold cache's first figures, then warm):", flush=True)
        with iceberg:
            iceberg_first, iceberg_warm, iceberg_frames = timed_runs(iceberg, spec, args.repeat, now)

    identical = {name: same(local_frames[name], iceberg_frames[name]) for name in spec}
    header = ("query", "local warm (s)", "iceberg warm (s)", "ratio", "iceberg cold first (s)", "identical")
    rows = [(name, f"{local_warm[name]:.3f}", f"{iceberg_warm[name]:.3f}",
             f"{iceberg_warm[name] / local_warm[name]:.2f}x", f"{iceberg_first[name]:.3f}",
             "yes" if identical[name] else "NO") for name in spec]
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    print()
    for row in [header, tuple("-" * w for w in widths)] + rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)))
    print()
    print(f"migrate: {moved.files} files, {migrate_s:.1f} s ({moved.copied} copied this run); "
          f"cold open of an empty cache: {cold_open:.1f} s for {len(cached)} files ({cached_bytes / 1e6:.0f} MB), "
          f"before the first figures")
    return 0 if all(identical.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
