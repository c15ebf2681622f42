"""The Iceberg table's maintenance (dlrlens.store.iceberg.maintain) and the publisher's batches,
against a real object store (``weed mini``) and pyiceberg's SQL catalog: snapshot expiry keeps
exactly-once across a replay, maintainers racing each other and the collectors lose and double
nothing, orphan cleanup deletes only unreferenced files older than the grace, compaction keeps
every row once and readers follow it without a rebuild, a catch-up commits its segments in
batches, and the collector's maintenance thread runs and reports it.
"""

from __future__ import annotations

import shutil
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from collector import metrics
from collector.settings import load_settings
from dlrlens.store import derive, layout, maintenance, writer
from dlrlens.store.backends import parse_store, publisher
from dlrlens.store.iceberg.maintain import (NUMBER_KEY_PROPERTY, MaintenanceResult, TableMaintenance, count_by_kind,
                                           table_files)
from dlrlens.store.pseudonym import installation_key, key_fingerprint
from dlrlens.store.iceberg.migrate import migrate
from dlrlens.store.iceberg.table import (SEGMENT_KEY, committed_keys, committed_property, open_catalog,
                                         parse_segment_value, receipts_table)
from dlrlens.store.status import maintenance_status
from dlrlens.store.wal import encode_document, list_segments, log_document
from dlrlens.store.writer import ReceiptStorage, records_to_table
from tests.support import factory
from tests.support.lake import commit_keeping_a_copy, report_json, table_ids
from tests.support.servers import wait_until

pytestmark = pytest.mark.slow  # a real object store (weed mini) per test

ICEBERG = parse_store("iceberg:lake")
DAY = factory.utc(2026, 11, 3, 9)


def rows(prefix: str, n: int) -> list[dict]:
    """``n`` receipts of their own messages (ids unique to ``prefix``)."""
    return [factory.receipt(f"{prefix}-{i}", "DELIVERED", DAY + timedelta(seconds=i)) for i in range(n)]


def ids_of(*batches: list[dict]) -> list[str]:
    return sorted(r["receipt_id"] for batch in batches for r in batch)


def collector(data: Path) -> ReceiptStorage:
    return ReceiptStorage(data, flush_seconds=3600, publish=publisher(ICEBERG, data))


def commit(data: Path, *batches: list[dict]) -> None:
    """A collector on ``data`` commits each batch with its own flush, then stops."""
    storage = collector(data)
    try:
        for batch in batches:
            storage.store(batch)
            storage.flush()
    finally:
        storage.close()


def table():
    return receipts_table(open_catalog("lake"), create=False)


def maintainer(**options) -> TableMaintenance:
    return TableMaintenance("lake", **({"retention_seconds": 0, "orphan_grace_seconds": 3600} | options))


def later(hours: float):
    """A clock ``hours`` ahead: every file and snapshot is then old (settled, past retention and grace)."""
    return lambda: time.time() + hours * 3600


def listed_files(tbl) -> set[str]:
    return {info.path for info in table_files(tbl)[1]}


def assert_every_snapshot_readable(tbl) -> None:
    """Every retained snapshot's manifest list, manifests and data files are there."""
    io = tbl.io
    for snapshot in tbl.metadata.snapshots:
        for manifest in snapshot.manifests(io):
            for entry in manifest.fetch_manifest_entry(io):
                with io.new_input(entry.data_file.file_path).open():
                    pass


def test_a_segment_replayed_after_its_snapshot_expired_is_not_committed_again(lake, tmp_path):
    data = tmp_path / "collector"
    first = rows("a", 20)
    storage = collector(data)
    segment, kept = commit_keeping_a_copy(storage, first)
    later = rows("b", 10)
    commit(tmp_path / "other", later)  # another collector: the first one's snapshot is no longer current
    assert maintainer().run()["expired_snapshots"] >= 1
    key = f"{storage.publish.collector_id}/{storage.slot}/{segment.stem}"
    assert key not in committed_keys(table(), SEGMENT_KEY), "the snapshot recording the segment is gone"
    # A crash between the commit and the segment's deletion, found at the next start (days later).
    segment.write_bytes(kept)
    again = publisher(ICEBERG, data)
    ReceiptStorage(data, flush_seconds=3600, publish=again).close()
    assert again.counts["already_committed"] == 1 and again.counts["commits"] == 0
    assert not list_segments(segment.parent)
    assert sorted(table_ids()) == ids_of(first, later)


def test_a_catch_up_commits_its_segments_in_batches_and_a_replayed_batch_is_skipped(lake, tmp_path, monkeypatch):
    monkeypatch.setattr(writer, "PUBLISH_BATCH_SEGMENTS", 3)
    data = tmp_path / "collector"
    storage = collector(data)
    batches = [rows(f"s{n}", 5) for n in range(8)]
    for batch in batches:  # what piles up in the log while the store is down
        storage.store(batch)
        storage.wal.rotate()
    segments = list_segments(storage.log_dir)
    kept = {segment: segment.read_bytes() for segment in segments[6:]}  # the last batch
    storage.flush()
    publish = storage.publish
    assert (publish.counts["commits"], publish.counts["committed_segments"]) == (3, 8)
    summaries = sorted(len(parse_segment_value(value)[1]) for value in committed_keys(table(), SEGMENT_KEY))
    assert summaries == [2, 3, 3]
    slot_key = f"{publish.collector_id}/{storage.slot}"
    assert table().metadata.properties[committed_property(slot_key)] == ",".join(s.stem for s in segments[6:])
    storage.close()
    commit(tmp_path / "other", rows("other", 3))  # the batch's snapshot is no longer the current one
    assert maintainer().run()["snapshots"] == 1
    # A crash after the last batch's commit, before its segments were deleted.
    for segment, content in kept.items():
        segment.write_bytes(content)
    restarted = publisher(ICEBERG, data)
    ReceiptStorage(data, flush_seconds=3600, publish=restarted).close()
    assert restarted.counts["already_committed"] == 2 and restarted.counts["commits"] == 0
    assert sorted(table_ids()) == ids_of(*batches, rows("other", 3))


def test_an_expiry_refused_because_another_maintainer_expired_first_is_retried(lake, tmp_path):
    commit(tmp_path / "collector", *(rows(f"r{n}", 3) for n in range(4)))
    stale = table()  # what the second maintainer loaded before the first committed
    first = maintainer().run()
    late = maintainer()
    loads = []

    def fresh_table():  # the first load gives what it had loaded before the other's commit
        loads.append(len(loads))
        late._table = stale if len(loads) == 1 else late._table.refresh()
        return late._table

    late._fresh_table = fresh_table
    result = MaintenanceResult()
    late.expire(result)
    assert first["expired_snapshots"] == 3 and first["conflicts"] == 0
    assert result.conflicts == 1 and result.expired_snapshots == 0 and len(table().metadata.snapshots) == 1
    assert sorted(table_ids()) == ids_of(*(rows(f"r{n}", 3) for n in range(4)))


def test_two_maintainers_racing_two_collectors_lose_and_double_nothing(lake, tmp_path):
    written = {name: [rows(f"{name}{n}", 4) for n in range(12)] for name in ("a", "b")}
    results: list[dict] = []
    errors: list[BaseException] = []
    writing = threading.Event()

    def write(name: str) -> None:
        commit(tmp_path / name, *written[name])

    def maintain(table_maintenance: TableMaintenance, start: threading.Barrier) -> None:
        try:
            start.wait()
            while True:
                results.append(table_maintenance.run())
                if not writing.is_set():
                    return
        except BaseException as exc:  # reported below
            errors.append(exc)

    def race(pair: list[TableMaintenance], *writers: threading.Thread) -> None:
        start = threading.Barrier(len(pair))
        racers = [threading.Thread(target=maintain, args=(m, start)) for m in pair]
        writing.set()
        for thread in [*writers, *racers]:
            thread.start()
        for thread in writers:
            thread.join(120)
        writing.clear()
        for thread in racers:
            thread.join(120)

    commit(tmp_path / "first", rows("first", 2))  # the table exists before the race starts
    # While both collectors commit, with a retention of seconds (a deployment's is minutes), so
    # that snapshots expire under the commits.
    race([maintainer(retention_seconds=3, orphan_grace_seconds=60) for _ in range(2)],
         *(threading.Thread(target=write, args=(name,)) for name in written))
    # Once everything has settled, an hour later: both compact the same partitions and expire at
    # once (what either writes in flight is younger than the grace, as a commit's files are)...
    race([maintainer(retention_seconds=3, orphan_grace_seconds=7200, clock=later(1)) for _ in range(2)])
    # ... and both delete the leftovers of it all at once, later still.
    race([maintainer(compact=False, clock=later(3)) for _ in range(2)])
    assert not errors, errors
    assert sorted(table_ids()) == ids_of(rows("first", 2), *written["a"], *written["b"])
    tbl = table()
    assert_every_snapshot_readable(tbl)
    assert sum(r["expired_snapshots"] for r in results) >= 20
    assert sum(r["compaction_outputs"] for r in results) >= 1 and results[-1]["data_files"] == 1
    assert sum(r["orphans_deleted"] for r in results) > 0
    kinds = count_by_kind(table_files(tbl)[1])
    assert kinds["manifest_list"] == len(tbl.metadata.snapshots) == 1, kinds
    assert kinds["metadata"] <= 21, kinds  # the current one and the 20 of the metadata log
    assert kinds["data"] == 1, kinds  # one day, one compacted file: the inputs are gone


def test_orphan_cleanup_deletes_only_unreferenced_files_older_than_the_grace(lake, tmp_path):
    batches = [rows(f"o{n}", 3) for n in range(5)]
    commit(tmp_path / "collector", *batches)
    tbl = table()
    filesystem, _ = table_files(tbl)
    root = tbl.io.parse_location(tbl.metadata.location, tbl.io.properties)[2]
    strays = [f"{root}/data/created_day=2026-11-03/stray.parquet", f"{root}/metadata/stray-m0.avro"]
    outside = f"{root}-elsewhere/keep.txt"  # beside the table's location: not the table's
    for path in strays + [outside]:
        with filesystem.open_output_stream(path) as out:
            out.write(b"not referenced")
    young = maintainer(compact=False).run()
    assert young["expired_snapshots"] == 4 and young["orphans_deleted"] == 0
    # The strays and the expired snapshots' manifest lists wait for the grace; maybe manifests too.
    assert young["orphans_waiting"] >= len(strays) + 4
    old = maintainer(compact=False, clock=lambda: time.time() + 7200).run()
    assert old["orphans_deleted"] == young["orphans_waiting"] and old["orphans_waiting"] == 0
    remaining = listed_files(table())
    assert not set(strays) & set(remaining)
    with filesystem.open_input_stream(outside) as kept:
        assert kept.read() == b"not referenced"
    assert len(remaining) == old["objects"] - old["orphans_deleted"]
    assert_every_snapshot_readable(table())
    assert sorted(table_ids()) == ids_of(*batches)
    assert maintainer(compact=False, clock=lambda: time.time() + 7200).run()["orphans_deleted"] == 0


def test_expiry_keeps_what_migrate_and_step_1_slots_still_need(lake, tmp_path):
    source = tmp_path / "local"
    migrated = rows("m", 6)
    factory.write_receipts(source, migrated[:3])
    factory.write_receipts(source, migrated[3:])
    assert migrate(source, "lake").copied == 2
    migrated_files = set(table().inspect.files()["file_path"].to_pylist())
    # A step-1 collector ("old") committed a segment (no property) and crashed before deleting it.
    old = tmp_path / "old"
    (old / "wal" / "w000").mkdir(parents=True)
    (old / "collector-id").write_text("0ld0c0llect0r000\n")
    legacy = rows("legacy", 4)
    documents = [log_document(r) for r in legacy]
    segment = old / "wal" / "w000" / "00000000000000000123.wal"
    segment.write_bytes(b"".join(encode_document(d) for d in documents))
    table().append(records_to_table(documents),
                   snapshot_properties={SEGMENT_KEY: f"0ld0c0llect0r000/w000/{segment.stem}"})
    current = rows("new", 2)
    commit(tmp_path / "collector", current)
    first = maintainer().run()
    # migrate copied both files in one commit (a batch): one snapshot to keep for it.
    assert (first["kept_for_migration"], first["kept_for_step1_slots"], first["snapshots"]) == (1, 1, 3)
    again = migrate(source, "lake")
    assert again.copied == 0 and again.already == 2
    # The old collector, upgraded, starts: the summary still says its segment is in; then it commits anew.
    afterwards = rows("afterwards", 3)
    storage = collector(old)
    assert storage.wait_caught_up(60)  # the replay is the flusher's first pass, after the start
    assert storage.publish.counts["already_committed"] == 1 and not segment.exists()
    storage.store(afterwards)
    storage.close()
    second = maintainer().run()
    assert second["kept_for_step1_slots"] == 0 and second["kept_for_migration"] == 1
    assert sorted(table_ids()) == ids_of(migrated, legacy, current, afterwards)
    # Compaction, all settled, merges the day's collector files but leaves the migrated ones.
    merged = maintainer(clock=later(2)).run()
    live = set(table().inspect.files()["file_path"].to_pylist())
    # Live: the migrated file(s) (one batch: one file for the day) and the collectors' merged file.
    assert merged["files_compacted"] == 3 and merged["data_files"] == len(live) == len(migrated_files) + 1
    assert migrated_files <= live
    assert sorted(table_ids()) == ids_of(migrated, legacy, current, afterwards)


def test_the_maintainer_runs_the_table_maintenance_and_reports_it(lake, tmp_path):
    data = tmp_path / "collector"
    commit(data, *(rows(f"t{n}", 2) for n in range(3)))
    schedule = maintenance.IcebergSchedule("lake", every=0.2, retention_seconds=0, orphan_grace_seconds=3600)
    running = maintenance.start(data, interval=0, compact_every=0, lock_retry_seconds=0.1, iceberg=schedule)
    try:
        status = wait_until(lambda: (maintenance_status(data) or {}).get("iceberg", {}).get("last_run") and
                            maintenance_status(data), 30, what="a maintenance run")
        assert status["iceberg"]["last_run"]["snapshots"] == 1 and status["iceberg"]["totals"]["expired_snapshots"] == 2
        lines = metrics.maintenance_lines(data)
        assert "dlrlens_iceberg_snapshots 1" in lines and "dlrlens_iceberg_expired_snapshots_total 2" in lines
        assert any(line.startswith('dlrlens_iceberg_objects{kind="manifest_list"}') for line in lines)
        lake.stop()
        failed = wait_until(lambda: (maintenance_status(data) or {}).get("errors", {}).get("iceberg") and
                            maintenance_status(data), 60, what="a failed run")
        assert failed["last_error"].startswith("iceberg: ")
        assert any(line.startswith('dlrlens_maintenance_errors_total{task="iceberg"} ') and not line.endswith(" 0")
                   for line in metrics.maintenance_lines(data))
    finally:
        running.stop(timeout=60)


def test_the_settings_schedule_the_table_maintenance(monkeypatch, tmp_path):
    monkeypatch.setenv("DLRLENS_ICEBERG_ORPHAN_GRACE", "5m")
    with pytest.raises(ValueError, match="DLRLENS_ICEBERG_ORPHAN_GRACE='5m' is not valid: must be at least 10m"):
        load_settings()
    monkeypatch.setenv("DLRLENS_ICEBERG_SNAPSHOT_RETENTION", "5s")
    with pytest.raises(ValueError, match="DLRLENS_ICEBERG_SNAPSHOT_RETENTION='5s' is not valid: must be at least 10s"):
        load_settings(iceberg_orphan_grace=timedelta(hours=1))
    monkeypatch.setenv("DLRLENS_ICEBERG_ORPHAN_GRACE", "2h")
    monkeypatch.setenv("DLRLENS_ICEBERG_SNAPSHOT_RETENTION", "30m")
    assert maintenance.iceberg_schedule(load_settings(data_dir=tmp_path)) is None  # the local store
    monkeypatch.setenv("DLRLENS_STORE", "iceberg:lake")
    schedule = maintenance.iceberg_schedule(load_settings(data_dir=tmp_path))
    assert schedule == maintenance.IcebergSchedule("lake", 300.0, 1800.0, 7200.0)
    monkeypatch.setenv("DLRLENS_ICEBERG_DERIVED", "0")
    assert maintenance.iceberg_schedule(load_settings(data_dir=tmp_path)).arguments()[-1] == "--no-iceberg-derived"
    monkeypatch.delenv("DLRLENS_ICEBERG_DERIVED")
    monkeypatch.setenv("DLRLENS_ICEBERG_MAINTENANCE_SECONDS", "0")  # off; the sync still stores in the catalog
    assert maintenance.iceberg_schedule(load_settings(data_dir=tmp_path)) == maintenance.IcebergSchedule(
        "lake", 0.0, 1800.0, 7200.0)


def test_compaction_keeps_every_row_and_readers_follow_it_without_a_rebuild(lake, tmp_path, monkeypatch):
    demo = factory.demo_rows(120, seed=21)
    local = ReceiptStorage(tmp_path / "local", flush_seconds=3600)
    remote = collector(tmp_path / "collector")
    for start in range(0, len(demo), 40):  # several flushes: several small files per day
        for storage in (local, remote):
            storage.store(demo[start:start + 40])
            storage.flush()
    local.close()
    remote.close()
    before = report_json(tmp_path / "reader", "iceberg:lake", tmp_path / "before.json")  # the reader's cache
    days = len({r["created"].date() for r in demo})
    assert len(table().inspect.files()) > days
    rebuilds = []
    rebuild = derive.rebuild_derived
    monkeypatch.setattr(derive, "rebuild_derived", lambda *args, **kw: rebuilds.append(args) or rebuild(*args, **kw))
    result = maintainer(clock=later(2)).run()
    assert result["compaction_outputs"] == days == result["data_files"] and result["files_compacted"] > days
    assert len(table().inspect.files()) == days
    after = report_json(tmp_path / "reader", "iceberg:lake", tmp_path / "after.json")
    assert after == before == report_json(tmp_path / "local", "local", tmp_path / "local.json")
    assert not rebuilds, "the reader absorbed the compaction through its lineage"
    cached = sorted(p.name[:2] for p in (tmp_path / "reader").glob("cache/iceberg/lake/receipts/*/*.parquet"))
    assert cached == ["c-"] * days
    assert sorted(table_ids()) == sorted(r["receipt_id"] for r in demo)


def test_two_maintainers_merging_the_same_files_commit_one_merge(lake, tmp_path):
    batches = [rows(f"k{n}", 3) for n in range(4)]
    commit(tmp_path / "collector", *batches)
    stale = table()  # what the second maintainer planned from, before the first committed
    first, late = MaintenanceResult(), MaintenanceResult()
    maintainer(clock=later(2)).compact(first)
    racing = maintainer(clock=later(2))
    racing._table = stale
    racing._fresh_table = lambda: stale
    racing.compact(late)
    assert (first.compaction_outputs, first.files_compacted) == (1, 4)
    assert (late.compaction_outputs, late.conflicts) == (0, 1)
    assert sorted(table_ids()) == ids_of(*batches)
    outputs = [path for path in listed_files(table()) if path.rsplit("/", 1)[-1].startswith("c-")]
    assert len(outputs) == 1, "the refused merge's output was deleted"


def test_a_collector_whose_number_key_differs_from_the_others_is_told_so(lake, tmp_path):
    first, second, third = tmp_path / "first", tmp_path / "second", tmp_path / "third"
    commit(first, rows("k", 2))
    schedule = maintenance.IcebergSchedule("lake", every=60, retention_seconds=600, orphan_grace_seconds=3600)
    assert maintenance.Maintainer(first, iceberg=schedule)._maintain_table()["number_key"] == "recorded"
    assert maintenance.Maintainer(first, iceberg=schedule)._maintain_table()["number_key"] == "same"
    (third / layout.KEYS_DIR).mkdir(parents=True)
    shutil.copy(first / layout.MSISDN_KEY, third / layout.MSISDN_KEY)  # as the README says to
    assert maintenance.Maintainer(third, iceberg=schedule)._maintain_table()["number_key"] == "same"
    other = maintenance.Maintainer(second, iceberg=schedule)  # a key of its own, made at first use
    other._run_task("iceberg", other._maintain_table)
    assert other.errors["iceberg"] == 1 and "keys/msisdn.key" in other.last_error and "differs" in other.last_error
    assert other.last_results.get("iceberg") is None
    table = receipts_table(open_catalog("lake"), create=False)
    assert table.metadata.properties[NUMBER_KEY_PROPERTY] == key_fingerprint(installation_key(first))


def test_a_collector_told_to_keep_no_copy_of_the_tables_keeps_none(lake, tmp_path):
    data = tmp_path / "collector"
    commit(data, rows("n", 3))
    schedule = maintenance.IcebergSchedule("lake", every=0.2, retention_seconds=600, orphan_grace_seconds=3600,
                                           derived=False)
    running = maintenance.start(data, interval=0, compact_every=0, lock_retry_seconds=0.1, iceberg=schedule)
    try:
        status = wait_until(lambda: (maintenance_status(data) or {}).get("runs", {}).get("iceberg", 0) >= 2 and
                            maintenance_status(data), 30, what="two table maintenance runs")
    finally:
        running.stop(timeout=60)
    assert status["runs"]["iceberg_derived"] == 0 and status["errors"]["iceberg"] == 0
    assert not (data / layout.ICEBERG_CACHE_DIR).exists(), "no copy of the tables"
