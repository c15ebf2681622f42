"""Metadata objects per day with the Iceberg store: several collectors flushing every few seconds,
without and with the table's maintenance, in one run.

Starts ``weed mini`` on loopback (tests/support/seaweed.py) with two pyiceberg SQL catalogs, one
table each, and runs the same workload on both: ``--writers`` collectors (threads, each its own
data directory and :class:`~dlrlens.store.iceberg.publisher.IcebergPublisher`) each flushing
``--flushes`` times, back to back, ``--rows`` receipts over ``--days`` UTC days per flush. Time
is compressed: each flush stands for ``--flush-seconds`` of a collector's life (2 s, the default
``DLRLENS_FLUSH_SECONDS``), so the run stands for ``flushes x flush-seconds`` of simulated time.

* **step 1**: the table as step 1 made it (no table properties) and no maintenance;
* **now**: the table as made now (:data:`~dlrlens.store.iceberg.table.TABLE_PROPERTIES`: merged
  manifests, old metadata files deleted by the committers) with two maintainers (two collectors'
  maintenance processes) running :class:`~dlrlens.store.iceberg.maintain.TableMaintenance` every
  ``--maintain-every`` simulated seconds, with ``--retention`` and ``--grace`` in simulated
  seconds (converted to wall-clock seconds at the run's measured pace).

Prints, for each: commits, commit (flush) latency over the last quarter of the run (median, p95:
what a commit costs once the table has grown), snapshots and the metadata file's size, and the
objects under the table's location by kind; then the per-day figures at the run's commit rate
(``writers / flush-seconds`` commits a second).

    python3 -m tests.benchmarks.iceberg_metadata [--writers 4] [--flushes 90] [--rows 200] [--days 2]
        [--flush-seconds 2] [--retention 40] [--grace 60] [--maintain-every 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

from dlrlens.store.backends import parse_store, publisher
from dlrlens.store.iceberg.maintain import TableMaintenance, count_by_kind, table_files
from dlrlens.store.iceberg.table import (RECEIPTS_TABLE, namespace, open_catalog, day_partitioning,
                                         receipt_schema, receipts_table)
from dlrlens.store.writer import ReceiptStorage
from tests.benchmarks.iceberg_commits import describe
from tests.support import factory
from tests.support.seaweed import object_store

KINDS = ("metadata", "manifest_list", "manifest", "data")
DAY_SECONDS = 86_400


def flush_rows(writer: int, flush: int, rows: int, days: int) -> list[dict]:
    start = factory.utc(2026, 11, 1)
    return [factory.receipt(f"w{writer}-f{flush}-{i}", "DELIVERED", start + timedelta(days=i % days, seconds=i),
                            campaign="bench") for i in range(rows)]


class Run:
    """One table's run: the writers, optionally the maintainers, and what was measured."""

    def __init__(self, root: Path, catalog: str, args, maintained: bool):
        self.root, self.catalog, self.args, self.maintained = root, catalog, args, maintained
        self.latencies: list[list[float]] = [[] for _ in range(args.writers)]
        self.round_walls: list[float] = []   # wall-clock seconds per flush, measured as the run goes
        self.results: list[dict] = []
        self.errors: list[str] = []
        self.commits = self.conflicts = 0
        self.seconds = self.retention_wall = self.grace_wall = 0.0
        self.measured_data_files = 0
        self.during: dict | None = None
        self._writing = threading.Event()

    def go(self) -> None:
        catalog = open_catalog(self.catalog)
        if self.maintained:
            receipts_table(catalog)  # as made now
        else:  # as step 1 made it: no properties
            catalog.create_namespace(namespace())
            schema = receipt_schema()
            catalog.create_table((namespace(), RECEIPTS_TABLE), schema=schema,
                                 partition_spec=day_partitioning(schema))
        directories = [self.root / self.catalog / f"c{n}" for n in range(self.args.writers)]
        storages = [ReceiptStorage(directory, flush_seconds=3600,
                                   publish=publisher(parse_store(f"iceberg:{self.catalog}"), directory))
                    for directory in directories]
        self._writing.set()
        writers = [threading.Thread(target=self._write, args=(n, storage)) for n, storage in enumerate(storages)]
        maintainers = [threading.Thread(target=self._maintain) for _ in range(2 if self.maintained else 0)]
        for thread in writers + maintainers:
            thread.start()
        for thread in writers:
            thread.join()
        self._writing.clear()
        for thread in maintainers:
            thread.join()
        if self.maintained:  # the writes stopped: figures as they were, then after one last run
            self.during = self.figures()
            time.sleep(max(self.retention_wall, self.grace_wall))
            self.results.append(TableMaintenance(self.catalog, retention_seconds=self.retention_wall,
                                                 orphan_grace_seconds=self.grace_wall).run())
        for storage in storages:
            storage.close()
            self.commits += storage.publish.counts["commits"]
            self.conflicts += storage.publish.counts["conflicts"]

    def _write(self, number: int, storage: ReceiptStorage) -> None:
        for flush in range(self.args.flushes):
            storage.store(flush_rows(number, flush, self.args.rows, self.args.days))
            started = time.perf_counter()
            while True:
                try:
                    storage.flush()
                    break
                except Exception as exc:  # a failed commit stays in the log: the flusher tries again
                    self.errors.append(str(exc)[:200])
                    time.sleep(0.5)
            self.latencies[number].append(time.perf_counter() - started)
            if number == 0:
                self.round_walls.append(time.perf_counter() - started)

    def wall(self, simulated_seconds: float) -> float:
        """Wall-clock seconds that stand for ``simulated_seconds`` at the pace so far."""
        walls = self.round_walls[-20:] or [0.5]
        return simulated_seconds / self.args.flush_seconds * statistics.mean(walls)

    def _maintain(self) -> None:
        maintenance = None
        while self._writing.is_set():
            time.sleep(self.wall(self.args.maintain_every))
            if maintenance is None:
                maintenance = TableMaintenance(self.catalog, retention_seconds=self.wall(self.args.retention),
                                               orphan_grace_seconds=self.wall(self.args.grace))
            maintenance.retention_seconds = self.retention_wall = self.wall(self.args.retention)
            maintenance.orphan_grace_seconds = self.grace_wall = self.wall(self.args.grace)
            try:
                self.results.append(maintenance.run())
            except Exception as exc:  # counted below: the next run retries
                self.errors.append(f"maintenance: {type(exc).__name__}: {exc}"[:200])

    def figures(self) -> dict:
        table = receipts_table(open_catalog(self.catalog), create=False)
        _, files = table_files(table)
        with table.io.new_input(table.metadata_location).open() as metadata:
            metadata_bytes = len(metadata.read())
        tail = [t for times in self.latencies for t in times[len(times) * 3 // 4:]]
        self.measured_data_files = len(table.inspect.files())
        return {"snapshots": len(table.metadata.snapshots), "metadata_bytes": metadata_bytes,
                "kinds": count_by_kind(files), "tail": tail, "objects": len(files)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=4, help="collector workers committing (each its own slot)")
    parser.add_argument("--flushes", type=int, default=90, help="flushes per writer")
    parser.add_argument("--rows", type=int, default=200, help="receipts per flush")
    parser.add_argument("--days", type=int, default=2, help="UTC days each flush spans (data files per commit)")
    parser.add_argument("--flush-seconds", type=float, default=2.0, help="simulated seconds per flush")
    parser.add_argument("--retention", type=float, default=40.0, help="simulated seconds of snapshot retention")
    parser.add_argument("--grace", type=float, default=60.0, help="simulated seconds of orphan-file grace")
    parser.add_argument("--maintain-every", type=float, default=20.0, help="simulated seconds between maintenance runs")
    args = parser.parse_args(argv)
    simulated = args.flushes * args.flush_seconds
    commits_per_day = args.writers / args.flush_seconds * DAY_SECONDS
    runs = {}
    with tempfile.TemporaryDirectory(prefix="dlrlens-iceberg-metadata-") as tmp:
        root = Path(tmp)
        with object_store(root / "s3") as store:
            for name, maintained in (("before", False), ("now", True)):
                os.environ.update(store.catalog_env(name, root / f"{name}.db"))
                run = Run(root, name, args, maintained)
                started = time.perf_counter()
                run.go()
                run.seconds = time.perf_counter() - started
                run.measured = run.figures()
                runs[name] = run
    print(f"{args.writers} writers x {args.flushes} flushes of {args.rows} receipts over {args.days} UTC day(s); "
          f"each flush stands for {args.flush_seconds:g} s: {simulated / 60:.1f} simulated minutes, "
          f"{commits_per_day:,.0f} commits a day at this rate")
    now = runs["now"]
    print(f"now: two maintainers every {args.maintain_every:g} s, retention {args.retention:g} s, "
          f"grace {args.grace:g} s (simulated); {len(now.results)} runs, "
          f"{sum(r['expired_snapshots'] for r in now.results)} snapshots expired, "
          f"{sum(r['orphans_deleted'] for r in now.results)} orphans deleted, "
          f"{sum(r['files_compacted'] for r in now.results)} data files compacted into "
          f"{sum(r['compaction_outputs'] for r in now.results)}, "
          f"{sum(r['conflicts'] for r in now.results)} maintenance conflicts")
    for name, run in runs.items():
        f = run.measured
        print(f"{name:7s} {run.commits} commits ({run.conflicts} after a conflict), {run.seconds:.0f} s wall; "
              f"{describe('last quarter', f['tail'])}"
              + (f"; errors {len(run.errors)}: {run.errors[:2]}" if run.errors else ""))
        stages = [("at the end", run.during), ("after one more run", f)] if run.during else [("at the end", f)]
        for when, figures in stages:
            kinds = ", ".join(f"{kind} {figures['kinds'].get(kind, 0)}" for kind in KINDS)
            print(f"        {when}: snapshots {figures['snapshots']}, metadata file {figures['metadata_bytes']:,} B; "
                  f"objects {figures['objects']}: {kinds}")
    before = runs["before"].measured
    # Per commit, step 1 writes a metadata file, a manifest list and a manifest (plus a data file
    # per UTC day it holds) and deletes nothing. Now the same are written, and what stays is the
    # last 20 metadata files and, per commit, its manifest list and manifest until the snapshot is
    # expired and the grace is over (merged manifests: a few more).
    commits = runs["before"].commits or 1
    written = sum(before["kinds"].get(kind, 0) for kind in KINDS[:3]) / commits
    per_snapshot = before["metadata_bytes"] / before["snapshots"]
    rate = commits_per_day / DAY_SECONDS

    def kept(retention: float, grace: float, commits_per_second: float = rate) -> float:
        return 21 + commits_per_second * (retention + grace) * 2

    # While the writes went on (after the last run, everything past the retention and grace is gone).
    measured_kept = sum(now.during["kinds"].get(kind, 0) for kind in KINDS[:3])
    wall_rate = now.commits / now.seconds
    model = kept(now.retention_wall, now.grace_wall, wall_rate)
    print(f"now, measured: {measured_kept:,} metadata objects at the end of the writes; the model below gives "
          f"{model:,.0f} at this run's "
          f"wall-clock pace ({wall_rate:.2f} commits/s, retention {now.retention_wall:.0f} s, "
          f"grace {now.grace_wall:.0f} s)")
    print(f"per day at {commits_per_day:,.0f} commits ({written:.2f} metadata objects and "
          f"{before['kinds'].get('data', 0) / commits:.2f} "
          f"data files per commit; {per_snapshot:,.0f} B of metadata file per snapshot):")
    print(f"  step 1: {written * commits_per_day:,.0f} metadata objects a day, all kept; metadata file "
          f"{per_snapshot * commits_per_day / 1e6:,.0f} MB after a day, read and rewritten by every commit")
    for retention, grace in ((600, 3600), (3600, 3600)):
        print(f"  now (retention {retention / 60:g} min, grace {grace / 60:g} min): the same written, "
              f"~{kept(retention, grace):,.0f} kept whatever the age of the table; metadata file "
              f"~{per_snapshot * rate * retention / 1e6:,.1f} MB")
    print(f"  data files: step 1 {before['kinds'].get('data', 0) / commits * commits_per_day:,.0f} a day, all live; "
          f"now {now.measured_data_files} live at the end of the run (compaction: one per settled UTC day, a few "
          f"size tiers per active one)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
