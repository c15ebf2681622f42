"""The dashboard's queries on the Iceberg store against the local store, in the same run.

    python3 -m tests.benchmarks.iceberg_queries --data DIR [--repeat 3] [--catalog sql|rest] [--work DIR]
        [--skip-rebuilding-open]

``DIR`` is a data set made by ``python3 -m tests.benchmarks.generate`` (or a real one). In one run:

1. ``weed mini`` starts on loopback (tests/support/seaweed.py) with a pyiceberg SQL catalog on
   SQLite (``--catalog sql``, default) or weed's own Iceberg REST catalog (``rest``), under
   ``--work`` (default a temporary directory; give one to keep the table between runs).
2. ``dlrlens migrate`` copies ``DIR`` into the table (timed; a second run over the same
   ``--work`` finds every file copied and skips it).
3. *iceberg cold, rebuilding* (the baseline): a new
   :class:`~dlrlens.store.iceberg.mirror.IcebergStore` on an **empty** cache (the page cache
   dropped first when root) before any derived state was committed: opening it plans the
   table's files, fetches each from the object store and builds the cache's derived state from
   every receipt (timed apart). ``--skip-rebuilding-open`` leaves it out (minutes at 10 M).
4. A collector's maintenance commits the derived state
   (:class:`~dlrlens.store.iceberg.maintain.DerivedPublisher`, on a data directory of its own:
   its mirror fetches the table, builds its state, uploads and commits it; timed).
5. *iceberg cold, adopting*: another new store on an empty cache, which adopts the committed
   state (downloads the messages files, recomputes their companions; timed apart); then the
   first run of each case of ``tests.benchmarks.queries`` (Overview and Campaigns over the last
   30 days and all time, a filter change).
6. *warm*: the same cases on ``dashboard.queries.Store`` over ``DIR`` (its derived state brought
   up to date first) and on the Iceberg store (cache full), taking turns run by run, the median
   of ``--repeat`` runs each. Each Iceberg query may first ask the catalog for a new snapshot
   (every 2 s, as in the dashboard). Every case's frames must be identical to the local ones.

Printed: migrate time, both cold open times (files, bytes, derived state) and their ratio, the
maintainer's commit, per case local / iceberg medians and their ratio, and whether the figures
are identical. Exit status 1 when a case differs.
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
from dlrlens.store.iceberg import derived
from dlrlens.store.iceberg.maintain import DerivedPublisher
from dlrlens.store.iceberg.migrate import migrate
from dlrlens.store.iceberg.mirror import cache_dir
from dlrlens.store.iceberg.table import open_catalog
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
def timing(module, name: str, seconds: list[float]):
    """Add the time spent in ``module.name`` (``derive.update_derived``: building the derived
    state; ``derived.adopt``: adopting the committed one) to ``seconds``."""
    original = getattr(module, name)

    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - started)

    setattr(module, name, timed)
    try:
        yield
    finally:
        setattr(module, name, original)


def cold_open(stack: contextlib.ExitStack, reader: Path, label: str):
    """Open an Iceberg store on an empty cache under ``reader``; (store, seconds, what it said)."""
    shutil.rmtree(cache_dir(reader, CATALOG), ignore_errors=True)
    dropped = drop_page_cache()
    building: list[float] = []
    adopting: list[float] = []
    started = time.perf_counter()
    with timing(derive, "update_derived", building), timing(derived, "adopt", adopting):
        store = stack.enter_context(open_store(reader, parse_store(f"iceberg:{CATALOG}")))
    seconds = time.perf_counter() - started
    cached = list(cache_dir(reader, CATALOG).glob("receipts/*/*.parquet"))
    cached_bytes = sum(p.stat().st_size for p in cached)
    fetch = seconds - sum(building) - sum(adopting)
    said = (f"{seconds:.1f} s: plan and fetch {len(cached)} files ({cached_bytes / 1e6:.0f} MB) {fetch:.1f} s, "
            f"adopt the committed derived state {sum(adopting):.1f} s, build / update it {sum(building):.1f} s")
    print(f"iceberg cold open, {label} (empty cache, page cache {'dropped' if dropped else 'not dropped'}): {said}",
          flush=True)
    return store, seconds, said


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=5, help="warm runs per case and store (median reported)")
    parser.add_argument("--catalog", choices=("sql", "rest"), default="sql")
    parser.add_argument("--work", type=Path, help="object store, catalog and caches (default: temporary)")
    parser.add_argument("--skip-rebuilding-open", action="store_true",
                        help="do not measure the baseline cold open that rebuilds the derived state (minutes "
                             "at 10 M receipts; the maintainer's first commit rebuilds it anyway)")
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

        if args.skip_rebuilding_open:
            rebuild_s, rebuild_said = None, "not measured (--skip-rebuilding-open)"
        elif derived.derived_table(open_catalog(CATALOG)) is None:
            _, rebuild_s, rebuild_said = cold_open(stack, work / "reader-rebuilding", "rebuilding")
        else:  # a --work kept from an earlier run: the state is committed already
            rebuild_s, rebuild_said = None, "not measured (the derived state was committed by an earlier run)"
        started = time.perf_counter()
        committed = DerivedPublisher(CATALOG, work / "maintainer").run()
        commit_s = time.perf_counter() - started
        print(f"a maintainer commits the derived state: {commit_s:.1f} s ({committed})", flush=True)
        iceberg, cold_s, cold_said = cold_open(stack, work / "reader", "adopting")
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
    print(f"migrate: {moved.files} files, {migrate_s:.1f} s ({moved.copied} copied this run)")
    print(f"cold open of an empty cache, rebuilding the derived state: {rebuild_said}")
    print(f"cold open of an empty cache, adopting the committed state: {cold_said}"
          + (f" ({cold_s / rebuild_s:.2f}x the rebuilding open)" if rebuild_s else ""))
    print(f"the maintainer's commit of the derived state: {commit_s:.1f} s")
    return 0 if all(identical.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
