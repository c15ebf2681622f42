"""The dashboard's queries on the Iceberg store against the local store, in the same run.

    python3 -m tests.benchmarks.iceberg_queries --data DIR [--repeat 3] [--catalog sql|rest] [--work DIR]

``DIR`` is a data set made by ``python3 -m tests.benchmarks.generate`` (or a real one). In one run:

1. ``weed mini`` starts on loopback (tests/support/seaweed.py) with a pyiceberg SQL catalog on
   SQLite (``--catalog sql``, default) or weed's own Iceberg REST catalog (``rest``), under
   ``--work`` (default a temporary directory; give one to keep the table between runs).
2. ``dlrlens migrate`` copies ``DIR`` into the table (timed; a second run over the same
   ``--work`` finds every file copied and skips it).
3. *iceberg cold*: a new :class:`~dlrlens.store.iceberg.mirror.IcebergStore` on an **empty**
   cache (the page cache dropped first when root): opening it plans the table's files, fetches
   each from the object store and builds the cache's derived state (timed apart); then the first
   run of each case of ``tests.benchmarks.queries`` (Overview and Campaigns over the last 30 days
   and all time, a filter change).
4. *warm*: the same cases on ``dashboard.queries.Store`` over ``DIR`` (its derived state brought
   up to date first) and on the Iceberg store (cache full), taking turns run by run, the median
   of ``--repeat`` runs each. Each Iceberg query may first ask the catalog for a new snapshot
   (every 2 s, as in the dashboard). Every case's frames must be identical to the local ones.

Printed: migrate time, cold open time (files, bytes, derived state), per case local / iceberg
medians and their ratio, and whether the figures are identical. Exit status 1 when a case differs.
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

from dlrlens.store import derive
from dlrlens.store.backends import open_store, parse_store
from dlrlens.store.iceberg.migrate import migrate
from dlrlens.store.iceberg.mirror import cache_dir
from tests.benchmarks.queries import (bring_up_to_date, cases, drop_page_cache, make_filters, print_table,
                                     run_case, same)
from tests.support.seaweed import object_store

CATALOG = "bench"
UTC = timezone.utc


def run_timed(store, case: dict, now: datetime):
    """(seconds, frames) of one run of ``case``, the store's result cache cleared first."""
    store.clear_cache()
    started = time.perf_counter()
    frames = run_case(store, case["kind"], make_filters(case["filters"]), now)
    return time.perf_counter() - started, frames


def warm_medians(stores: dict, spec: dict, repeat: int, now: datetime) -> dict[str, dict[str, float]]:
    """{store name: {case: median of ``repeat`` warm runs}}, the stores taking turns run by run
    (a burst of other load on the shared machine then hurts each alike)."""
    runs = {name: {case: [] for case in spec} for name in stores}
    for case_name, case in spec.items():
        for _ in range(repeat):
            for name, store in stores.items():
                runs[name][case_name].append(run_timed(store, case, now)[0])
        print(f"  {case_name}: " + ", ".join(f"{name} {statistics.median(runs[name][case_name]):.3f} s"
                                             for name in stores), flush=True)
    return {name: {case: statistics.median(values) for case, values in by_case.items()}
            for name, by_case in runs.items()}


@contextlib.contextmanager
def timing_derive(seconds: list[float]):
    """Add the time spent building the derived state (``update_derived``) to ``seconds``."""
    original = derive.update_derived

    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - started)

    derive.update_derived = timed
    try:
        yield
    finally:
        derive.update_derived = original


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=5, help="warm runs per case and store (median reported)")
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
        local_state = bring_up_to_date(data_dir, rebuild=False)
        print(f"local derived state: {local_state}", flush=True)
        spec = cases(data_dir)
        now = datetime.now(UTC)

        reader = work / "reader"
        shutil.rmtree(cache_dir(reader, CATALOG), ignore_errors=True)
        dropped = drop_page_cache()
        derive_seconds: list[float] = []
        started = time.perf_counter()
        with timing_derive(derive_seconds):
            iceberg = stack.enter_context(open_store(reader, parse_store(f"iceberg:{CATALOG}")))
        cold_open = time.perf_counter() - started
        cached = list(cache_dir(reader, CATALOG).glob("receipts/*/*.parquet"))
        cached_bytes = sum(p.stat().st_size for p in cached)
        print(f"iceberg cold open (empty cache, page cache {'dropped' if dropped else 'not dropped'}): "
              f"{cold_open:.1f} s: plan and fetch {len(cached)} files ({cached_bytes / 1e6:.0f} MB) "
              f"{cold_open - sum(derive_seconds):.1f} s, derived state {sum(derive_seconds):.1f} s", flush=True)
        iceberg_first, iceberg_frames = {}, {}
        for name, case in spec.items():
            iceberg_first[name], iceberg_frames[name] = run_timed(iceberg, case, now)
        print("iceberg first figures after the cold open: "
              + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in iceberg_first.items()), flush=True)

        local = stack.enter_context(open_store(data_dir))
        local_frames = {name: run_timed(local, case, now)[1] for name, case in spec.items()}  # also warms it
        print("warm (local and iceberg taking turns):", flush=True)
        warm = warm_medians({"local": local, "iceberg": iceberg}, spec, args.repeat, now)

    identical = {name: same(local_frames[name], iceberg_frames[name]) for name in spec}
    header = ("query", "local warm (s)", "iceberg warm (s)", "ratio", "iceberg cold first (s)", "identical")
    rows = [(name, f"{warm['local'][name]:.3f}", f"{warm['iceberg'][name]:.3f}",
             f"{warm['iceberg'][name] / warm['local'][name]:.2f}x", f"{iceberg_first[name]:.3f}",
             "yes" if identical[name] else "NO") for name in spec]
    print_table(header, rows)
    print(f"migrate: {moved.files} files, {migrate_s:.1f} s ({moved.copied} copied this run); "
          f"cold open of an empty cache: {cold_open:.1f} s for {len(cached)} files ({cached_bytes / 1e6:.0f} MB, "
          f"derived state {sum(derive_seconds):.1f} s of it), before the first figures")
    return 0 if all(identical.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
