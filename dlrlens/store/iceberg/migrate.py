"""``dlrlens migrate --to iceberg:<catalog>``: copy a local data directory's receipts, clicks and
replies into the Iceberg tables of the same names, and its send records, campaign list and
imported names into the send tables, idempotent and resumable.

The receipts first, then the clicks, then the replies, each into its own table (the same
columns, :data:`dlrlens.store.layout.TABLES`). Unit of work: a batch of one table's files (up to :data:`BATCH_ROWS` rows or :data:`BATCH_FILES`
files), one append commit, whose snapshot summary records every file of the batch,
``dlrlens.source = <source id>/<path relative to the data directory>``, one per line (the source
id is the directory's ``collector-id``, made on first use), in that table's snapshot summary.
Before each batch the table's summaries are read again, so running the migration twice, or again after it was interrupted
(even between a commit and the next batch), copies every receipt row exactly once. Batches: one
commit per file took 0.5 s a file on a 2-core machine (each commit rewrites the table's metadata,
which grows with every snapshot); a data directory holds thousands of small flush files.

The files copied are :func:`dlrlens.store.compaction.stored_files` (every stored copy of a
receipt once: compaction inputs still on disk are left out, their rows are in the compacted
file; clicks and replies are never compacted: every visible file, :func:`dlrlens.store.events.event_files`).
A compacted file whose inputs were all copied by an earlier run is *covered* and
skipped. One made from some copied and some uncopied files cannot be copied without doubling
rows: the migration stops and says so (stop the collector, or its compaction, while migrating:
``DLRLENS_COMPACT_SECONDS=0``). What the source's write-ahead log still holds is not in any
file yet: the result counts those segments (start and stop the collector once to flush them).

Send records (``sends/<source>/<day>.parquet``), the campaign list and imported names are merged
into the send tables by the sync's own rules (:class:`~dlrlens.store.iceberg.send_tables.IcebergSends`:
one row per message id, the latest ``modified`` wins), :data:`SEND_BATCH_FILES` day files a
commit: a second run, or a run after a collector's sync stored newer records, changes nothing.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from dlrlens.store import compaction, events, layout, sends
from dlrlens.store.iceberg.publisher import collector_id
from dlrlens.store.iceberg.send_tables import IcebergSends
from dlrlens.store.iceberg.table import (RECEIPTS_TABLE, SOURCE_KEY, SOURCE_SEPARATOR, WRITTEN_TABLES, arrow_rows,
                                         committed_keys, open_catalog, written_table)
from dlrlens.store.wal import list_segments


BATCH_ROWS = 500_000   # rows per commit at most (held in memory meanwhile: ~100 MB)
BATCH_FILES = 500      # files per commit at most (their paths go into the snapshot summary)
SEND_BATCH_FILES = 30  # send record day files per commit (each a partition: ~450 k records at most)


class MigrationError(Exception):
    """The migration cannot go on without losing or doubling rows (the message says why)."""


@dataclass
class MigrationResult:
    files: int = 0             # receipt, click and reply files in the source
    copied: int = 0            # copied by this run
    rows: int = 0              # rows copied by this run
    already: int = 0           # copied by an earlier run
    covered: int = 0           # compacted files whose inputs an earlier run copied
    log_segments: int = 0      # write-ahead log segments not flushed into files (not copied)
    seconds: float = 0.0
    copied_paths: list[str] = field(default_factory=list)
    files_by_table: dict[str, int] = field(default_factory=dict)  # files in the source, per table
    send_files: int = 0        # send record, campaign list and names files in the source
    send_partitions: int = 0   # partitions of the send tables this run changed (0: all there already)


def source_files(data_dir: Path) -> dict[str, list[Path]]:
    """{table: the files of it to copy} of the data directory ``data_dir`` (see the module docstring)."""
    found = {RECEIPTS_TABLE: [Path(p) for p in compaction.stored_files(data_dir)]}
    for table in events.EVENT_TABLES:
        found[table] = [Path(data_dir) / relative for relative in events.event_files(data_dir, table)]
    return found


def migrate(data_dir: Path, catalog_name: str, progress=None) -> MigrationResult:
    """Copy the receipt, click and reply files of ``data_dir`` into catalog ``catalog_name``'s tables.

    ``progress(relative_path, rows)`` is called for each file copied, once its batch is committed."""
    started = time.perf_counter()
    data_dir = Path(data_dir)
    result = MigrationResult()
    wal_root = data_dir / layout.WAL_DIR
    if wal_root.is_dir():
        result.log_segments = sum(len(list_segments(d)) for d in wal_root.iterdir() if d.is_dir())
    sources = source_files(data_dir)
    result.files_by_table = {table: len(found) for table, found in sources.items()}
    result.files = sum(result.files_by_table.values())
    if result.files:
        catalog = open_catalog(catalog_name)
        source_id = collector_id(data_dir)
        for table in WRITTEN_TABLES:
            if sources[table]:
                _copy(data_dir, written_table(catalog, table), table, sources[table], source_id, result, progress)
    _copy_send_records(data_dir, catalog_name, result)
    result.seconds = time.perf_counter() - started
    return result


def _copy_send_records(data_dir: Path, catalog_name: str, result: MigrationResult) -> None:
    """Merge the data directory's send records, campaign list and imported names into the send
    tables (:class:`~dlrlens.store.iceberg.send_tables.IcebergSends`, the sync's own merge: a
    record the table holds already, or holds modified later, is left as it is), up to
    :data:`SEND_BATCH_FILES` day files a commit. Idempotent: a second run changes nothing."""
    day_files = sorted(p for p in (data_dir / sends.SENDS_DIR).glob("*/*.parquet") if not p.name.startswith("."))
    lists = [(data_dir / relative, schema, store) for relative, schema, store in (
        (sends.MOBIVATE_CAMPAIGNS, sends.CAMPAIGN_SCHEMA, "store_campaigns"),
        (sends.IMPORTED_NAMES, sends.NAME_SCHEMA, "store_names")) if (data_dir / relative).is_file()]
    result.send_files = len(day_files) + len(lists)
    if not result.send_files:
        return
    destination = IcebergSends(catalog_name)
    for start in range(0, len(day_files), SEND_BATCH_FILES):
        batch = day_files[start:start + SEND_BATCH_FILES]
        rows = [row for path in batch for row in pq.read_table(path, schema=sends.SEND_SCHEMA).to_pylist()]
        result.send_partitions += destination.store_rows(rows)
    for path, schema, store in lists:
        result.send_partitions += getattr(destination, store)(pq.read_table(path, schema=schema).to_pylist())


def _copy(data_dir: Path, table, name: str, sources: list[Path], source_id: str, result: MigrationResult,
          progress) -> None:
    """Copy ``sources`` (files of table ``name`` under ``data_dir``) into ``table`` in batches."""
    seen: dict[int, str | None] = {}
    pending = deque(sorted(sources))
    while pending:
        table = table.refresh()
        committed = committed_keys(table, SOURCE_KEY, seen)
        batch: list[tuple[str, pa.Table]] = []  # (relative path, rows)
        batch_keys: set[str] = set()  # copied as well: the batch is committed whole or not at all
        rows_in_batch = 0
        while pending and len(batch) < BATCH_FILES and rows_in_batch < BATCH_ROWS:
            path = pending.popleft()
            relative = path.relative_to(data_dir).as_posix()
            key = f"{source_id}/{relative}"
            if key in committed:
                result.already += 1
                continue
            inputs = [f"{source_id}/{Path(relative).parent.as_posix()}/{input_name}"
                      for input_name in compaction.lineage(path)]
            copied_inputs = [input_key for input_key in inputs if input_key in committed or input_key in batch_keys]
            if inputs and len(copied_inputs) == len(inputs):
                result.covered += 1
                continue
            if copied_inputs:
                raise MigrationError(
                    f"{relative} was compacted from files of which an earlier run copied {len(copied_inputs)} of "
                    f"{len(inputs)}: copying it would double those rows. Stop the collector (or set "
                    f"DLRLENS_COMPACT_SECONDS=0) while migrating; to start over, drop the table.")
            rows = arrow_rows(pq.read_table(path), name)
            batch.append((relative, rows))
            batch_keys.add(key)
            rows_in_batch += rows.num_rows
        if not batch:
            continue
        table.append(pa.concat_tables([rows for _, rows in batch]),
                     snapshot_properties={SOURCE_KEY: SOURCE_SEPARATOR.join(sorted(batch_keys))})
        for relative, rows in batch:
            result.copied += 1
            result.rows += rows.num_rows
            result.copied_paths.append(relative)
            if progress is not None:
                progress(relative, rows.num_rows)
