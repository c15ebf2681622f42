"""Compaction keeps every row, sorts, records its inputs, survives a crash at any step and
never hides a receipt from a reader that runs meanwhile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from dlrlens.store import layout
from dlrlens.store.compaction import (
    LINEAGE_KEY,
    compact,
    lineage,
    stored_files,
)
from dlrlens.store.faults import CRASH_EXIT_CODE
from dlrlens.store.compaction import bytes_per_receipt
from tests.support.factory import demo_rows
from tests.support.servers import REPO
from tests.support.store_files import (
    HOUR,
    assert_files_whole,
    stored_rows,
    stored_rows_of,
    synthetic_receipts,
    temp_files,
    visible_files,
    write_flush_files,
    write_row_files,
)

# -- helpers -------------------------------------------------------------------------------


def run_compaction_process(data_dir: Path, *, crash_at: str | None = None, marker: Path | None = None,
                           **options) -> subprocess.CompletedProcess:
    """``compact(data_dir, **options)`` in a fresh Python process, optionally crashing at a point."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DLRLENS_")}
    if crash_at:
        env["DLRLENS_CRASH_AT"] = f"{crash_at}@{marker}"
    code = ("import sys; from pathlib import Path; from dlrlens.store.compaction import compact; "
            f"compact(Path(sys.argv[1]), **{options!r})")
    return subprocess.run([sys.executable, "-c", code, str(data_dir)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


# -- merging -------------------------------------------------------------------------------


def test_compaction_keeps_every_row_sorted_and_records_its_inputs(tmp_path):
    data = tmp_path / "data"
    rows = demo_rows(1500, seed=11)  # several days, duplicates, interim receipts, late arrivals
    rows += rows[:50]  # and a bulk replay: 50 rows stored twice more
    write_row_files(data, rows, per_file=60)
    before = stored_rows(data)
    inputs_by_partition: dict[str, dict[str, int]] = {}
    for path in visible_files(data):
        inputs_by_partition.setdefault(path.parent.name, {})[path.name] = pq.read_metadata(path).num_rows
    merged = {day: inputs for day, inputs in inputs_by_partition.items() if len(inputs) > 1}
    assert len(merged) >= 5

    stats = compact(data, settle_seconds=0, delete_grace_seconds=0)

    assert stored_rows(data) == before and sum(before.values()) == len(rows)
    files = visible_files(data)
    assert len(files) == len(inputs_by_partition), "every partition merged into one file"
    merged_files = sum(len(inputs) for inputs in merged.values())
    assert (stats.files_merged, stats.files_removed, stats.files_written, stats.rows) == (
        merged_files, merged_files, len(merged), sum(sum(inputs.values()) for inputs in merged.values()))
    assert stats.partitions_compacted == len(merged) and stats.errors == 0
    assert 0 < stats.bytes_after < stats.bytes_before
    for path in files:
        if path.parent.name not in merged:
            continue  # a single file is not rewritten
        assert path.name.startswith("c-")
        table = pq.read_table(path)
        assert table.schema.equals(layout.RECEIPT_SCHEMA, check_metadata=False)
        keys = list(zip(*(table.column(k).to_pylist() for k in ("delivery_message_id", "created", "receipt_id"))))
        assert keys == sorted(keys), f"{path.name} is not sorted"
        assert lineage(path) == inputs_by_partition[path.parent.name]
        assert json.loads(pq.read_metadata(path).metadata[LINEAGE_KEY.encode()]) == sorted(
            inputs_by_partition[path.parent.name])
    assert not temp_files(data)


def test_young_files_are_left_alone(tmp_path):
    data = tmp_path / "data"
    table = synthetic_receipts(3000, seed=2)
    old = write_flush_files(data, table.slice(0, 2000), 4, age_seconds=120)
    young = write_flush_files(data, table.slice(2000), 2, age_seconds=5)
    before = stored_rows(data)

    stats = compact(data, min_age_seconds=60, delete_grace_seconds=0)

    names = {p.name for p in visible_files(data)}
    assert {p.name for p in young} <= names, "files of the current minute are not touched"
    assert not {p.name for p in old} & names
    assert stats.files_merged == 4 and stats.rows == 2000 and len(names) == 3
    assert stored_rows(data) == before


def test_active_partition_merges_small_files_only_and_settled_partition_merges_all(tmp_path):
    data = tmp_path / "data"
    table = synthetic_receipts(12_000, seed=3)
    big = write_flush_files(data, table.slice(0, 10_000), 1, prefix="c")[0]
    write_flush_files(data, table.slice(10_000), 5, age_seconds=120)
    big_stat = big.stat()
    before = stored_rows(data)

    stats = compact(data, min_age_seconds=60, settle_seconds=600, delete_grace_seconds=0)

    assert (stats.files_merged, stats.rows) == (5, 2000), "only the small files, not the big one"
    assert big.stat().st_mtime_ns == big_stat.st_mtime_ns and big.stat().st_ino == big_stat.st_ino
    assert len(visible_files(data)) == 2 and stored_rows(data) == before

    stats = compact(data, min_age_seconds=60, settle_seconds=60, delete_grace_seconds=0)  # no new data for 2 min

    assert (stats.files_merged, stats.rows) == (2, 12_000)
    assert len(visible_files(data)) == 1 and stored_rows(data) == before


def test_a_partition_with_one_file_is_not_rewritten(tmp_path):
    data = tmp_path / "data"
    write_flush_files(data, synthetic_receipts(500, seed=4), 1)
    [only] = visible_files(data)
    stats = compact(data, settle_seconds=0)
    assert visible_files(data) == [only] and stats.files_written == 0 and stats.partitions_examined == 1


# -- deletion of the inputs --------------------------------------------------------------


def test_inputs_are_deleted_after_the_grace_period_and_never_merged_twice(tmp_path):
    data = tmp_path / "data"
    write_flush_files(data, synthetic_receipts(4000, seed=5), 8)
    inputs = visible_files(data)
    before = stored_rows(data)
    size_before = sum(p.stat().st_size for p in inputs)

    first = compact(data, settle_seconds=0, delete_grace_seconds=30)

    assert first.files_written == 1 and first.files_removed == 0
    assert set(inputs) < set(visible_files(data)), "inputs stay readable during the grace period"
    [output] = [p for p in visible_files(data) if p.name.startswith("c-")]
    assert stored_files(data) == [output]
    assert bytes_per_receipt(data) == (output.stat().st_size, 4000)
    assert output.stat().st_size < size_before

    second = compact(data, settle_seconds=0, delete_grace_seconds=30)
    assert (second.files_written, second.files_removed) == (0, 0), "waiting inputs are not merged again"

    third = compact(data, settle_seconds=0, delete_grace_seconds=30, now=time.time() + 31)
    assert (third.files_written, third.files_removed) == (0, 8)
    assert visible_files(data) == [output] and stored_rows(data) == before


def test_a_flush_file_recreated_by_log_replay_is_removed_and_a_different_one_kept(tmp_path):
    data = tmp_path / "data"
    table = synthetic_receipts(3000, seed=6)
    paths = write_flush_files(data, table, 3)
    replayed, reused = paths[0], paths[1]
    replayed_bytes = replayed.read_bytes()
    before = stored_rows(data)
    compact(data, settle_seconds=0, delete_grace_seconds=0)
    assert len(visible_files(data)) == 1

    # Log replay after a crash writes the same segment's file again: identical rows.
    replayed.write_bytes(replayed_bytes)
    # A file under a merged name but with other rows is not what was merged: it must stay.
    other = synthetic_receipts(10, seed=99)
    pq.write_table(other, reused)
    stats = compact(data, settle_seconds=0, min_age_seconds=60, delete_grace_seconds=0)

    assert stats.files_removed == 1 and not replayed.exists() and reused.exists()
    assert stored_rows(data) == before + stored_rows_of(other)

    stats = compact(data, settle_seconds=0, delete_grace_seconds=0, now=time.time() + HOUR)
    assert stats.files_merged == 2 and len(visible_files(data)) == 1
    assert stored_rows(data) == before + stored_rows_of(other)


# -- crashes -----------------------------------------------------------------------------

COMPACTION_CRASH_POINTS = ["compact:after-write", "compact:after-rename", "compact:between-deletes"]


@pytest.mark.parametrize("point", COMPACTION_CRASH_POINTS)
def test_crash_at_each_compaction_step_loses_nothing_and_the_next_run_cleans_up(tmp_path, point):
    data = tmp_path / "data"
    marker = tmp_path / "crashed"
    for day, seed in (("2026-11-03", 7), ("2026-11-04", 8)):
        write_flush_files(data, synthetic_receipts(3000, seed=seed, day=day), 6)
    before = stored_rows(data)
    inputs = visible_files(data)

    crashed = run_compaction_process(data, crash_at=point, marker=marker, settle_seconds=0, delete_grace_seconds=0)

    assert crashed.returncode == CRASH_EXIT_CODE and marker.exists(), crashed.stderr
    assert_files_whole(data)
    after_crash = stored_rows(data)
    assert set(after_crash) == set(before), "no row lost, none invented"
    assert all(after_crash[row] >= count for row, count in before.items())
    if point == "compact:after-write":
        assert len(temp_files(data)) == 1 and visible_files(data) == inputs
    elif point == "compact:after-rename":
        assert sum(after_crash.values()) == sum(before.values()) + 3000, "first partition visible twice"
    else:
        assert len(visible_files(data)) == 12 - 1 + 1 and sum(after_crash.values()) > sum(before.values())

    recovered = run_compaction_process(data, settle_seconds=0, delete_grace_seconds=0)

    assert recovered.returncode == 0, recovered.stderr
    assert stored_rows(data) == before, "no duplicate left"
    assert len(visible_files(data)) == 2 and not temp_files(data)
    assert not (data / "tmp" / "compaction").exists()


def test_crash_while_deleting_inputs_after_the_grace_period(tmp_path):
    data = tmp_path / "data"
    marker = tmp_path / "crashed"
    write_flush_files(data, synthetic_receipts(3000, seed=9), 6)
    before = stored_rows(data)
    assert compact(data, settle_seconds=0, delete_grace_seconds=30).files_written == 1

    crashed = run_compaction_process(data, crash_at="compact:between-deletes", marker=marker, settle_seconds=0,
                                     delete_grace_seconds=30, now=time.time() + HOUR)

    assert crashed.returncode == CRASH_EXIT_CODE and len(visible_files(data)) == 1 + 5
    assert set(stored_rows(data)) == set(before)
    assert compact(data, settle_seconds=0, delete_grace_seconds=30, now=time.time() + HOUR).files_removed == 5
    assert stored_rows(data) == before and len(visible_files(data)) == 1


# -- readers during compaction -----------------------------------------------------------


class Reader(threading.Thread):
    """Counts receipts in a loop while compaction runs, as the dashboard would.

    ``listing="glob"`` reads the reader glob. A file it listed may be deleted (after the
    grace period) before DuckDB opens it; such a query is retried, up to ``retries`` times.
    ``listing="stored_files"`` reads the explicit list from ``compaction.stored_files`` and
    never retries.
    """

    def __init__(self, data_dir: Path, written: dict[str, int], listing: str, retries: int):
        super().__init__(daemon=True)
        self.data_dir, self.written, self.listing, self.retries = data_dir, written, listing, retries
        self.stop = threading.Event()
        # (receipts written before the query, distinct seen, rows seen, receipts begun after it)
        self.results: list[tuple[int, int, int, int]] = []
        self.retried = Counter()  # retries a query needed -> queries
        self.error: BaseException | None = None

    def files(self):
        if self.listing == "glob":
            return layout.parquet_glob(self.data_dir)
        return [str(path) for path in stored_files(self.data_dir)]

    def run(self) -> None:
        query = "SELECT count(DISTINCT receipt_id), count(*) FROM read_parquet(?)"
        with duckdb.connect() as con:
            con.execute("SET enable_progress_bar = false")
            while not self.stop.is_set():
                written_before = self.written["done"]
                for attempt in range(self.retries + 1):
                    try:
                        distinct, rows = con.execute(query, [self.files()]).fetchone()
                        break
                    except duckdb.IOException as exc:
                        if "No such file" not in str(exc) or attempt == self.retries:
                            self.error = exc
                            return
                self.retried[attempt] += 1
                self.results.append((written_before, distinct, rows, self.written["begun"]))


# Glob readers retry a query that met a vanished file. Here compaction runs back to back, so
# a retry can meet the next deletion too (up to 3 retries seen); every 60 s, one is plenty.
@pytest.mark.parametrize("listing, retries", [("stored_files", 0), ("glob", 20)])
def test_readers_never_miss_a_receipt_while_compaction_runs(tmp_path, listing, retries):
    data = tmp_path / "data"
    first = synthetic_receipts(2000, seed=100)
    write_flush_files(data, first, 4)
    # Distinct receipts whose files are all written ("done") or being written ("begun").
    written = dict.fromkeys(("done", "begun"), len(set(first.column("receipt_id").to_pylist())))
    reader = Reader(data, written, listing, retries)
    reader.start()
    runs: list = []
    try:
        # Until inputs were deleted many times under the reader (each after a 1 s grace).
        while sum(s.files_removed for s in runs) < 60 and len(runs) < 400 and reader.is_alive():
            round_number = len(runs)
            new = synthetic_receipts(400, seed=101 + round_number, day=("2026-11-03", "2026-11-04")[round_number % 2])
            written["begun"] += len(set(new.column("receipt_id").to_pylist()))
            write_flush_files(data, new, 3)
            written["done"] = written["begun"]
            runs.append(compact(data, min_age_seconds=0, settle_seconds=0 if round_number % 5 == 4 else 600,
                                delete_grace_seconds=1.0))
    finally:
        reader.stop.set()
        reader.join(60)
    print(f"compaction runs={len(runs)} reader queries={len(reader.results)} "
          f"retries needed -> queries: {dict(sorted(reader.retried.items()))}")
    assert reader.error is None, f"reader failed: {reader.error!r}"
    assert sum(s.files_removed for s in runs) >= 60, "inputs were deleted under the reader"
    assert len(reader.results) >= 10, "the reader ran alongside the compactions"
    distinct_counts = [distinct for _, distinct, _, _ in reader.results]
    assert distinct_counts == sorted(distinct_counts), "a receipt vanished for a moment"
    for written_before, distinct, rows, written_after in reader.results:
        assert written_before <= distinct <= written_after and distinct <= rows
    if listing == "stored_files":
        assert set(reader.retried) == {0}
    assert len({row[0] for row in stored_rows(data)}) == written["done"]  # row[0]: receipt_id


# -- storage cost and command line ---------------------------------------------------------


def test_compacted_day_costs_under_40_bytes_per_receipt(tmp_path):
    data = tmp_path / "data"
    write_flush_files(data, synthetic_receipts(100_000, seed=12), 100)
    size_before, receipts = bytes_per_receipt(data)
    assert receipts == 100_000

    compact(data, settle_seconds=0)

    size_after, receipts = bytes_per_receipt(data)
    print(f"bytes per receipt: {size_before / receipts:.1f} in 100 flush files -> {size_after / receipts:.1f}")
    assert receipts == 100_000 and size_after / receipts < 40 and size_after < 0.8 * size_before
