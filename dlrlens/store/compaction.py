"""Compaction: merge a day partition's many small receipt files into few large sorted ones.

The flusher writes one small file per log segment (every few seconds per worker), so a day
partition collects tens of thousands of files whose footers outweigh their rows. Compaction
rewrites them as ``c-<time_ns>.parquet``: every row kept (no dedupe: the raw files are the
audit trail), sorted by ``(delivery_message_id, created, receipt_id)``, zstd, with per-column
encodings and levels chosen by measurement (see :data:`WRITER_OPTIONS`) and small row groups,
so that a reader looking up one message reads one row group per file.

Which files merge (one merge per partition per run, never files younger than
``min_age_seconds``, i.e. the flushes of the current minute):

* a *settled* partition (no new data for ``settle_seconds``) merges all its files into one,
  so every past day ends as a single file;
* an *active* partition merges size tiers: its eligible files in ascending size order, as
  long as each next file is at most :data:`SIZE_RATIO` times the files taken before it. A
  big file is rewritten only once at least half its size of new data has come, so each row
  is rewritten O(log n) times a day and the partition holds O(log n) files.

A compacted file's mtime is set to its newest input's, so file ages stay ages of the data;
its name carries the time it appeared.

Steps, so that no receipt ever leaves the glob and no partial file enters it (a crash point
between each, see :mod:`dlrlens.store.faults`):

1. write the merged rows to ``.c-<time_ns>.parquet.<pid>.tmp``, fsync;
2. rename it into place, fsync the directory (1 and 2: :func:`dlrlens.store.files.publishing`):
   the rows are now visible twice, which readers tolerate (they count one row per ``receipt_id``);
3. once the output is ``delete_grace_seconds`` old (at the first run after that), delete the
   inputs and fsync the directory, so that a query that listed only the old files still reads
   them (see :data:`DELETE_GRACE_SECONDS` for what readers can rely on).

The output's Parquet key-value metadata records its inputs: ``dlrlens.compacted_from`` (JSON
list of file names in the same partition) and ``dlrlens.compacted_rows`` (JSON object name ->
rows). Each run first deletes inputs that are still there although an output lists them
(deferred deletion, a crash at step 3, or a log replay that re-created a flush file with the
same name and rows); a file whose row count differs from the recorded one is not the one
that was merged and is kept. Inputs waiting for their grace period are not merged again.
Each run also removes temporary files of dead writers.

One compaction at a time per data directory (``flock`` on ``data/compaction.lock``). Sorting
runs in DuckDB with a memory limit (spilling to ``data/tmp/compaction``), streamed to
Parquet one row group at a time, so memory stays bounded whatever the partition size.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Self

import pyarrow as pa
import pyarrow.parquet as pq

from dlrlens.store import layout
from dlrlens.store.faults import crash_point
from dlrlens.store.files import (FSYNCED, PUBLISHED, fsync_dir, locked, publishing, remove_orphan_temp_files,
                                 visible_files)

log = logging.getLogger("dlrlens.collector")

OUTPUT_PREFIX = "c-"
LINEAGE_KEY = "dlrlens.compacted_from"
LINEAGE_ROWS_KEY = "dlrlens.compacted_rows"
LOCK_NAME = "compaction.lock"
SPILL_DIR = Path("tmp") / "compaction"

SETTLE_SECONDS = 600.0
SIZE_RATIO = 2.0
# DuckDB's glob reads a directory, then checks each entry and silently skips one that is gone
# (LocalFileSystem::ListFiles): a reader listing just before the rename and checking just after
# an immediate delete would miss those rows. Inputs therefore stay this long after their output.
# A glob query that listed inputs and output together may still find an input gone when the
# grace ends (an IO error: retry it); a reader listing files with stored_files() never reads an
# input awaiting deletion, so its queries shorter than the grace never meet a vanished file.
DELETE_GRACE_SECONDS = 30.0
SORT_KEYS = ("delivery_message_id", "created", "receipt_id")

# Measured on a realistic 1 M-receipt day: the random 32-hex ids are ~70% of the bytes and
# barely compress. Delta encodings beat dictionaries for unique or sorted columns, and with
# no dictionaries to amortise, 64 Ki-row groups cost 0.25 B/receipt over 1 Mi-row groups
# while letting a lookup by message id skip all but one group (7 ms instead of 90 ms a day).
# Per column, on days of the 100 M benchmark data (B/receipt, before -> after; 38.2 -> ~36.0):
# * the ids compress best at zstd level 1 (receipt_id 16.5 -> 16.0, message id 7.2 -> 6.7;
#   level 9 is worse than 3 for receipt_id (16.8), 9 and 19 worse than 1 for the message id);
# * client_reference (one value per message, rows of a message adjacent) as DELTA_BYTE_ARRAY
#   at level 9: 2.4 -> 1.3 (its dictionary outgrows the page limit and falls back to plain);
# * created/received_at stay DELTA_BINARY_PACKED: BYTE_STREAM_SPLIT saved 0.1 B/receipt but on
#   integer columns it is recent (Parquet format 2.11, 2024) and older readers of the audit
#   files (Spark, older pyarrow and DuckDB) cannot read it;
# * the small dictionary columns at level 9: ~0.1 together.
# Larger pages or dictionary pages gave nothing measurable; every value and the schema stay
# as they were (only encodings and compression differ). Details: tests/benchmarks/README.md.
ROW_GROUP_ROWS = 65_536
COLUMN_ENCODING = {
    "receipt_id": "DELTA_LENGTH_BYTE_ARRAY",
    "delivery_message_id": "DELTA_BYTE_ARRAY",
    "client_reference": "DELTA_BYTE_ARRAY",
    "created": "DELTA_BINARY_PACKED",
    "received_at": "DELTA_BINARY_PACKED",
}
COMPRESSION_LEVEL = {name: 9 for name in layout.RECEIPT_SCHEMA.names} | {"receipt_id": 1, "delivery_message_id": 1}
WRITER_OPTIONS = {
    "compression": "zstd",
    "compression_level": COMPRESSION_LEVEL,
    "use_dictionary": [name for name in layout.RECEIPT_SCHEMA.names if name not in COLUMN_ENCODING],
    "column_encoding": COLUMN_ENCODING,
    "write_statistics": True,
}
# Clicks and replies (compacted on the Iceberg store only: dlrlens.store.iceberg.maintain): the
# receipts' tuning above names receipt columns; theirs is zstd's default, sorted by arrival then id.
EVENT_WRITER_OPTIONS = {"compression": "zstd", "write_statistics": True}


def sort_keys(table: str) -> tuple[str, ...]:
    """The order a compaction output of table ``table`` (:data:`dlrlens.store.layout.TABLES`) is sorted in."""
    if table == "receipts":
        return SORT_KEYS
    spec = layout.TABLES[table]
    return (spec.day_column, spec.schema.names[0])


DUCKDB_SETTINGS = {"threads": 1, "memory_limit": "512MB"}
# The crash points of publishing a merged file (steps 1 and 2 of the module docstring).
OUTPUT_CRASH_POINTS = {FSYNCED: "compact:after-write", PUBLISHED: "compact:after-rename"}


@dataclass
class CompactionStats:
    """What one :func:`compact` run did."""

    partitions_examined: int = 0
    partitions_compacted: int = 0
    files_merged: int = 0  # input files read into new outputs
    files_written: int = 0  # new compacted files
    rows: int = 0  # rows written into new outputs
    bytes_before: int = 0  # size of the merged inputs
    bytes_after: int = 0  # size of the new outputs
    files_removed: int = 0  # inputs deleted (of this run's merges or of earlier ones)
    temp_files_removed: int = 0  # temporary files of dead writers
    errors: int = 0  # partitions that failed (logged; retried next run)
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _File:
    path: Path
    size: int
    mtime_ns: int  # for a compacted file: its newest input's, so ages stay ages of the data

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def mtime(self) -> float:
        return self.mtime_ns / 1e9

    @property
    def appeared_at(self) -> float:
        """When a compacted file was renamed into place (its name says), else its mtime."""
        stem = self.path.stem
        if stem.startswith(OUTPUT_PREFIX) and stem[len(OUTPUT_PREFIX):].isdigit():
            return int(stem[len(OUTPUT_PREFIX):]) / 1e9
        return self.mtime


# -- public API --------------------------------------------------------------------------


def compact(
    data_dir: Path,
    *,
    min_age_seconds: float = 60.0,
    min_files: int = 2,
    settle_seconds: float = SETTLE_SECONDS,
    delete_grace_seconds: float = DELETE_GRACE_SECONDS,
    now: float | None = None,
) -> CompactionStats:
    """Compact every receipt partition of ``data_dir`` once (see the module docstring).

    ``now`` (epoch seconds, default the clock) is what file ages are measured against.
    ``settle_seconds=0`` treats every partition as settled: all its files old enough merge
    into one. ``delete_grace_seconds=0`` deletes the inputs right after the rename (only
    safe when no reader is running). A partition that fails is logged, counted in
    ``errors`` and left as it was.
    """
    def step(partition: Path, sorter: _Sorter, stats: CompactionStats, now: float) -> None:
        _compact_partition(partition, sorter, stats, now=now, min_age=min_age_seconds,
                           min_files=max(2, min_files), settle=settle_seconds, grace=delete_grace_seconds)

    return _for_each_partition(Path(data_dir), step, now)


def remove_superseded(data_dir: Path, *, delete_grace_seconds: float = DELETE_GRACE_SECONDS,
                      now: float | None = None) -> CompactionStats:
    """Only delete inputs of compacted files that appeared at least the grace period ago."""
    def step(partition: Path, sorter: _Sorter, stats: CompactionStats, now: float) -> None:
        _remove_superseded(partition, _list_files(partition), stats, now=now, grace=delete_grace_seconds)

    return _for_each_partition(Path(data_dir), step, now)


def choose_merge(files: dict[str, tuple[int, float]], *, now: float, min_age_seconds: float,
                 settle_seconds: float) -> list[str]:
    """Which of one partition's files (name -> (bytes, epoch seconds its data arrived)) a run
    merges, by the policy of the module docstring (settled: all; active: size tiers; never
    files younger than ``min_age_seconds``). For stores whose files live elsewhere (the
    Iceberg store's table maintenance); :func:`compact` applies the same policy."""
    candidates = [_File(Path(name), size, int(arrived * 1e9)) for name, (size, arrived) in files.items()]
    settled = bool(files) and max(arrived for _, arrived in files.values()) <= now - settle_seconds
    return [f.name for f in _choose_inputs(candidates, now=now, min_age=min_age_seconds, settled=settled)]


def merge_files(paths: list[Path], spill_dir: Path, schema: pa.Schema = layout.RECEIPT_SCHEMA,
                order: tuple[str, ...] = SORT_KEYS, writer_options: dict | None = None) -> tuple[Path, int]:
    """Merge the files ``paths`` (of one directory; receipts by default) into one new file
    beside them sorted by ``order``, written as :func:`compact` writes its outputs
    (``c-<time_ns>.parquet``, the lineage of its inputs' names and rows in its metadata) with
    ``schema`` (the contract's, maybe with field metadata) and ``writer_options`` (default: the
    receipts' :data:`WRITER_OPTIONS`); the inputs stay. Returns its path and rows."""
    inputs = []
    for path in paths:
        stat = path.stat()
        inputs.append(_File(path, stat.st_size, stat.st_mtime_ns))
    with _Sorter(spill_dir) as sorter:
        output = _merge(paths[0].parent, inputs, sorter, schema, order, writer_options or WRITER_OPTIONS)
    return output.path, output.rows


def lineage(path: Path) -> dict[str, int]:
    """The inputs a compacted file was made from, as {file name: rows}; {} for a flush file."""
    metadata = pq.read_metadata(path).metadata or {}
    rows = metadata.get(LINEAGE_ROWS_KEY.encode())
    if rows is not None:
        return {str(name): int(count) for name, count in json.loads(rows).items()}
    names = metadata.get(LINEAGE_KEY.encode())
    return {str(name): -1 for name in json.loads(names)} if names is not None else {}


def stored_files(data_dir: Path) -> list[Path]:
    """The receipt files that hold the data: every visible file except inputs of a compaction
    that are still there (their rows are also in the compacted file).

    For readers: reading exactly these files (``read_parquet([...])``) sees every receipt once
    per stored copy, and none of them is deleted sooner than ``DELETE_GRACE_SECONDS`` after
    this call, so a shorter query never meets a vanished file. Costs one directory listing
    per partition and a footer read per compacted file in partitions holding several files.
    """
    result: list[Path] = []
    for partition in _partitions(layout.receipts_dir(Path(data_dir))):
        files = _list_files(partition)
        superseded = set().union(*_superseded_inputs(files).values()) if len(files) > 1 else set()
        result += [f.path for name, f in sorted(files.items()) if name not in superseded]
    return result


# -- one partition -----------------------------------------------------------------------


def bytes_per_receipt(data_dir: Path) -> tuple[int, int]:
    """(bytes, rows) of the stored receipt files, for reports: bytes / rows is the storage cost
    of one receipt. Rows count every stored copy; inputs of a compaction that are still
    awaiting deletion are left out (their rows are counted in the compacted file)."""
    total_bytes = total_rows = 0
    for path in stored_files(data_dir):
        try:
            size = path.stat().st_size
            rows = pq.read_metadata(path).num_rows
        except FileNotFoundError:
            continue  # compacted away meanwhile
        total_bytes += size
        total_rows += rows
    return total_bytes, total_rows


def _for_each_partition(data_dir: Path, step, now: float | None) -> CompactionStats:
    """Run ``step`` on every partition under the compaction lock, after removing temporary
    files of dead writers; a partition that fails is logged and counted, the others go on."""
    started = time.perf_counter()
    stats = CompactionStats()
    receipts = layout.receipts_dir(data_dir)
    if not receipts.is_dir():
        return stats
    with locked(data_dir / LOCK_NAME, wait=True), _Sorter(data_dir / SPILL_DIR) as sorter:
        stats.temp_files_removed = remove_orphan_temp_files(receipts)
        for partition in _partitions(receipts):
            stats.partitions_examined += 1
            try:
                step(partition, sorter, stats, time.time() if now is None else now)
            except Exception as exc:  # one bad partition must not stop the others
                stats.errors += 1
                stats.failures.append(f"{partition.name}: {type(exc).__name__}: {exc}")
                log.error("event=compaction_failed partition=%s error=%r", partition.name,
                          f"{type(exc).__name__}: {exc}")
    stats.seconds = time.perf_counter() - started
    return stats


def _partitions(receipts: Path) -> list[Path]:
    return sorted(p for p in receipts.glob(f"{layout.PARTITION_PREFIX}*") if p.is_dir())


def _compact_partition(partition: Path, sorter: _Sorter, stats: CompactionStats, *, now: float,
                       min_age: float, min_files: int, settle: float, grace: float) -> None:
    files = _list_files(partition)
    if len(files) < 2:
        return
    superseded, waiting = _remove_superseded(partition, files, stats, now=now, grace=grace)
    # Waiting inputs are not merged again, nor is an output whose inputs wait: its lineage
    # is what will delete them, so it must outlive them.
    candidates = [f for name, f in files.items()
                  if name not in waiting and not superseded.get(name, set()) & waiting]
    settled = bool(files) and max(f.mtime for f in files.values()) <= now - settle
    inputs = _choose_inputs(candidates, now=now, min_age=min_age, settled=settled)
    if len(inputs) < min_files:
        return
    output = _merge(partition, inputs, sorter)
    stats.partitions_compacted += 1
    stats.files_merged += len(inputs)
    stats.files_written += 1
    stats.rows += output.rows
    stats.bytes_before += sum(f.size for f in inputs)
    stats.bytes_after += output.size
    if grace <= 0:
        _delete_inputs(partition, inputs, stats)


def _remove_superseded(partition: Path, files: dict[str, _File], stats: CompactionStats, *, now: float,
                       grace: float) -> tuple[dict[str, set[str]], set[str]]:
    """Delete the inputs still present of outputs that appeared ``grace`` seconds ago or more
    (and drop them from ``files``). Returns every output's present inputs and the inputs left
    waiting for their grace period."""
    superseded = _superseded_inputs(files) if len(files) > 1 else {}
    waiting: set[str] = set()
    for output_name, inputs in superseded.items():
        if now - files[output_name].appeared_at >= grace:
            _delete_inputs(partition, [files[name] for name in sorted(inputs)], stats)
            for name in inputs:
                files.pop(name, None)
        else:
            waiting |= inputs
    return superseded, waiting


def _list_files(partition: Path) -> dict[str, _File]:
    """Visible receipt files of a partition by name (a file deleted meanwhile is skipped)."""
    return {name: _File(path, size, mtime_ns) for name, (path, size, mtime_ns) in visible_files(partition).items()}


def _superseded_inputs(files: dict[str, _File]) -> dict[str, set[str]]:
    """{output name: its inputs still present with the recorded row count}, outputs with none left out."""
    superseded: dict[str, set[str]] = {}
    for name, output in files.items():
        if not name.startswith(OUTPUT_PREFIX):
            continue
        try:
            recorded = lineage(output.path)
        except FileNotFoundError:
            continue
        present = set()
        for input_name, rows in recorded.items():
            if input_name not in files or input_name == name:
                continue
            try:
                actual = pq.read_metadata(files[input_name].path).num_rows
            except FileNotFoundError:
                actual = rows  # being deleted right now: superseded all the same
            if rows < 0 or actual == rows:
                present.add(input_name)
            else:
                log.warning("event=compaction_input_changed partition=%s file=%s rows=%d recorded=%d",
                            output.path.parent.name, input_name, actual, rows)
        if present:
            superseded[name] = present
    return superseded


def _choose_inputs(candidates: list[_File], *, now: float, min_age: float, settled: bool) -> list[_File]:
    eligible = sorted((f for f in candidates if now - f.mtime >= min_age), key=lambda f: (f.size, f.name))
    if settled:
        return eligible
    chosen: list[_File] = []
    taken_bytes = 0
    for f in eligible:
        if chosen and f.size > SIZE_RATIO * taken_bytes:
            break
        chosen.append(f)
        taken_bytes += f.size
    return chosen


def _delete_inputs(partition: Path, inputs: list[_File], stats: CompactionStats) -> None:
    for index, f in enumerate(inputs):
        f.path.unlink(missing_ok=True)
        stats.files_removed += 1
        if index == 0 and len(inputs) > 1:
            crash_point("compact:between-deletes")
    fsync_dir(partition)


# -- merging -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Output:
    path: Path
    rows: int
    size: int


def _merge(partition: Path, inputs: list[_File], sorter: _Sorter, schema: pa.Schema = layout.RECEIPT_SCHEMA,
           order: tuple[str, ...] = SORT_KEYS, writer_options: dict = WRITER_OPTIONS) -> _Output:
    """Write the rows of ``inputs`` as one new sorted file, visible only when complete."""
    input_rows = {f.name: pq.read_metadata(f.path).num_rows for f in inputs}
    schema = schema.with_metadata({
        LINEAGE_KEY: json.dumps(sorted(input_rows)),
        LINEAGE_ROWS_KEY: json.dumps(input_rows, sort_keys=True),
    })
    target = _new_output_path(partition)  # named after the time it appears (delete grace)
    written = 0
    with publishing(target, crash_points=OUTPUT_CRASH_POINTS) as output:
        with pq.ParquetWriter(output.temp, schema, **writer_options) as writer:
            for batch in sorter.sorted_batches([f.path for f in inputs], ROW_GROUP_ROWS, schema.names, order):
                writer.write_table(pa.Table.from_batches([batch]).cast(schema), row_group_size=ROW_GROUP_ROWS)
                written += batch.num_rows
        if written != sum(input_rows.values()):
            raise RuntimeError(f"merge wrote {written} rows of {sum(input_rows.values())}")
        # The output holds data as old as its newest input: min_age and settling go by that.
        newest = max(f.mtime_ns for f in inputs)
        os.utime(output.temp, ns=(newest, newest))
    return _Output(target, written, target.stat().st_size)


def _new_output_path(partition: Path) -> Path:
    while True:
        path = partition / f"{OUTPUT_PREFIX}{time.time_ns()}.parquet"
        if not path.exists():
            return path




class _Sorter:
    """A DuckDB connection, opened on first use, that sorts Parquet files with bounded memory."""

    def __init__(self, spill_dir: Path):
        self.spill_dir = spill_dir
        self._connection = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        shutil.rmtree(self.spill_dir, ignore_errors=True)

    def sorted_batches(self, paths: list[Path], batch_rows: int, columns: list[str] = layout.RECEIPT_SCHEMA.names,
                       order: tuple[str, ...] = SORT_KEYS):
        """Record batches of ``batch_rows`` rows (``columns``) of all ``paths`` in ``order``."""
        query = f"SELECT {', '.join(columns)} FROM read_parquet($files) ORDER BY {', '.join(order)}"
        relation = self._connect().sql(query, params={"files": [str(p) for p in paths]})
        yield from relation.to_arrow_reader(batch_rows)

    def _connect(self):
        if self._connection is None:
            import duckdb  # only the process that compacts pays for it

            # A spill file left by a crashed run is useless: sorting starts over.
            shutil.rmtree(self.spill_dir, ignore_errors=True)
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            self._connection = duckdb.connect(config={**DUCKDB_SETTINGS, "temp_directory": str(self.spill_dir)})
            self._connection.execute("SET enable_progress_bar = false")
        return self._connection

