"""Compaction keeps every row, sorts, records its inputs, survives a crash at any step and
never hides a receipt from a reader that runs meanwhile."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dlrlens.store import layout
from dlrlens.store.compaction import (
    LINEAGE_KEY,
    add_compact_arguments,
    compact,
    lineage,
    run_compact,
    stored_files,
)
from dlrlens.store.faults import CRASH_EXIT_CODE
from dlrlens.store.compaction import bytes_per_receipt
from tests.support.factory import demo_rows, parquet_bytes
from tests.support.servers import REPO

HOUR = 3600.0

# -- realistic synthetic receipts ---------------------------------------------------------

_STATUSES = [  # (status, code, category) as in dlrlens/statuses.csv
    ("ACCEPTED", 2, "pending"), ("INTERIM_QUEUED", 8, "pending"), ("DELIVERED", 1, "delivered"),
    ("EXPIRED", 3, "failed"), ("UNDELIVERABLE", 5, "failed"), ("UNKNOWN", 6, "unknown"),
]


def _hex_ids(rng: np.random.Generator, count: int) -> np.ndarray:
    raw = rng.integers(0, 2**63, size=(count, 2), dtype=np.int64).view(np.uint64)
    return np.array([f"{a:016x}{b:016x}" for a, b in raw], dtype=object)


def synthetic_receipts(n_rows: int, *, seed: int = 1, day: str = "2026-11-03") -> pa.Table:
    """``n_rows`` realistic receipts created on UTC ``day``, in arrival (random) order.

    Per message (32-hex id, one of 200 campaigns with its batch id and labels): an ACCEPTED
    receipt, 30% an INTERIM_QUEUED one, 95% a final one (88% DELIVERED); millisecond
    ``created`` times, a received_at 0.2-4 s later; 2% of receipts stored twice.
    """
    rng = np.random.default_rng(seed)
    n_messages = n_rows // 2 + 1
    messages = _hex_ids(rng, n_messages)
    day_start_ms = int(np.datetime64(day, "ms").astype(np.int64))
    sent = day_start_ms + rng.integers(0, 82_800_000, n_messages)
    everyone = np.arange(n_messages)
    interim = everyone[rng.random(n_messages) < 0.3]
    final = everyone[rng.random(n_messages) < 0.95]
    roll = rng.random(len(final))
    final_status = np.select([roll < 0.88, roll < 0.93, roll < 0.97], [2, 3, 4], 5)
    message = np.concatenate([everyone, interim, final])
    created = np.concatenate([sent + rng.integers(50, 1_500, n_messages),
                              sent[interim] + rng.integers(1_500, 5_000, len(interim)),
                              sent[final] + rng.integers(2_000, 600_000, len(final))])
    status = np.concatenate([np.zeros(n_messages, int), np.ones(len(interim), int), final_status])
    receipt_ids = _hex_ids(rng, len(message))
    again = rng.random(len(message)) < 0.02
    pick = np.concatenate([np.arange(len(message)), np.flatnonzero(again)])
    pick = rng.permutation(pick)[:n_rows]
    message, created, status, receipt_ids = message[pick], created[pick], status[pick], receipt_ids[pick]
    campaign_of = rng.integers(0, 200, n_messages)[message]
    campaigns = np.array([f"campaign-{i:03d}" for i in range(200)], dtype=object)
    labels = np.array([json.dumps({"campaign": f"campaign-{i:03d}", "team": ("retail", "billing")[i % 2]})
                       for i in range(200)], dtype=object)
    batches = _hex_ids(rng, 200)
    names, codes, categories = (np.array(column, dtype=object) for column in zip(*_STATUSES))
    received = created * 1000 + rng.integers(200_000, 4_000_000, len(message))
    n = len(message)
    return pa.table({
        "receipt_id": receipt_ids, "delivery_message_id": messages[message], "batch_id": batches[campaign_of],
        "client_reference": pa.nulls(n, pa.string()),
        "created": pa.array(created * 1000).cast(layout.UTC_TIMESTAMP),
        "received_at": pa.array(received).cast(layout.UTC_TIMESTAMP),
        "status": names[status], "status_code": pa.array(codes[status].astype(np.int32)),
        "category": categories[status], "part": pa.nulls(n, pa.int32()),
        "parts": pa.array(np.ones(n, np.int32)), "hlr": pa.nulls(n, pa.string()),
        "extra": pa.nulls(n, pa.string()), "campaign": campaigns[campaign_of], "labels": labels[campaign_of],
        "source_format": np.full(n, "json", dtype=object),
    }, schema=layout.RECEIPT_SCHEMA)


# -- helpers -------------------------------------------------------------------------------


def write_flush_files(data_dir: Path, table: pa.Table, files: int, *, prefix: str = "w000",
                      age_seconds: float = HOUR) -> list[Path]:
    """Split ``table`` (rows of one day) into ``files`` flush-like files, ``age_seconds`` old."""
    day = table.column("created")[0].as_py().date().isoformat()
    partition = layout.partition_dir(data_dir, day)
    partition.mkdir(parents=True, exist_ok=True)
    step = -(-table.num_rows // files)
    paths = []
    mtime = time.time() - age_seconds
    for index in range(files):
        chunk = table.slice(index * step, step)
        path = partition / f"{prefix}-{time.time_ns()}.parquet"
        buffer = io.BytesIO()
        pq.write_table(chunk.sort_by([("delivery_message_id", "ascending"), ("created", "ascending")]), buffer,
                       compression="zstd")
        layout.atomic_write_bytes(path, buffer.getvalue())  # readers may be globbing meanwhile
        os.utime(path, (mtime, mtime))
        paths.append(path)
    return paths


def write_row_files(data_dir: Path, rows: list[dict], per_file: int, *, age_seconds: float = HOUR) -> int:
    """Write factory rows as many small files per partition (as flushes would); returns files."""
    by_day: dict[str, list[dict]] = {}
    for row in rows:
        by_day.setdefault(row["created"].date().isoformat(), []).append(row)
    mtime = time.time() - age_seconds
    written = 0
    for day, day_rows in by_day.items():
        partition = layout.partition_dir(data_dir, day)
        partition.mkdir(parents=True, exist_ok=True)
        for start in range(0, len(day_rows), per_file):
            path = partition / f"w001-{start:08d}.parquet"
            path.write_bytes(parquet_bytes(day_rows[start:start + per_file]))
            os.utime(path, (mtime, mtime))
            written += 1
    return written


def _columns() -> str:
    return ", ".join(f"epoch_us({name})" if name in ("created", "received_at") else name
                     for name in layout.RECEIPT_SCHEMA.names)


def stored_rows(data_dir: Path) -> Counter:
    """The multiset of every stored row (all columns), read with DuckDB over the reader glob."""
    if not list(Path(data_dir).glob(layout.PARQUET_GLOB)):
        return Counter()
    with duckdb.connect() as con:
        return Counter(con.execute(f"SELECT {_columns()} FROM read_parquet(?)",
                                   [layout.parquet_glob(data_dir)]).fetchall())


def visible_files(data_dir: Path) -> list[Path]:
    return sorted(Path(data_dir).glob(layout.PARQUET_GLOB))


def temp_files(data_dir: Path) -> list[Path]:
    return sorted(Path(data_dir).glob("receipts/*/.*.tmp"))


def assert_files_whole(data_dir: Path) -> None:
    for path in visible_files(data_dir):
        table = pq.read_table(path)
        assert table.schema.equals(layout.RECEIPT_SCHEMA, check_metadata=False), path


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


def stored_rows_of(table: pa.Table) -> Counter:
    with duckdb.connect() as con:
        con.register("t", table)
        return Counter(con.execute(f"SELECT {_columns()} FROM t").fetchall())


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


def test_compact_command_prints_what_it_did(tmp_path, capsys):
    data = tmp_path / "data"
    write_flush_files(data, synthetic_receipts(2000, seed=13), 5)
    parser = argparse.ArgumentParser()
    add_compact_arguments(parser)

    assert run_compact(parser.parse_args(["--min-age", "0", "--settle", "0", "--grace", "0.2"]), data) == 0

    out = capsys.readouterr().out
    size, receipts = bytes_per_receipt(data)
    assert len(visible_files(data)) == 1
    assert "merged 5 files into 1 (2,000 rows)" in out and "removed 5 merged files" in out
    assert f"stored: 2,000 receipts in {size / 1e6:.1f} MB, {size / receipts:.1f} bytes per receipt" in out
    defaults = parser.parse_args([])
    assert (defaults.min_age, defaults.settle, defaults.grace) == (60.0, 600.0, 30.0)
