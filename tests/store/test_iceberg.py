"""The Iceberg store (issue #10, step 1) in-process, against a real object store: SeaweedFS's
``weed mini`` on loopback (the ``lake`` fixture, tests/store/conftest.py) and pyiceberg's SQL
catalog (a SQLite file). The table's maintenance is tested in test_iceberg_maintenance.py.

The collector-process drills (SIGKILL, object store outage, two collectors) are in
tests/system/test_iceberg_collectors.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.compute as pc
import pytest

from collector.settings import load_settings
from dlrlens import cli
from dlrlens.store.backends import open_store, parse_store, publisher, store_choice
from dlrlens.store.iceberg.migrate import MigrationError, migrate
from dlrlens.store.iceberg.table import (SEGMENT_KEY, SOURCE_KEY, committed_keys, open_catalog, receipts_table,
                                         written_table)
from dlrlens.store.wal import StorageError, list_segments
from dlrlens.store.writer import ReceiptStorage
from tests.support import factory
from tests.support.lake import assert_same_campaigns, commit_keeping_a_copy, report_json, table_ids
from tests.support.servers import wait_until

pytestmark = pytest.mark.slow  # a real object store (weed mini) per test

ICEBERG = parse_store("iceberg:lake")


def test_the_store_setting_is_parsed_strictly(monkeypatch, tmp_path, capsys):
    assert store_choice("local").is_local and str(store_choice("")) == "local"
    assert store_choice("iceberg:Lake-1").catalog == "lake-1"
    monkeypatch.setenv("DLRLENS_STORE", "iceberg:prod")
    assert str(store_choice()) == "iceberg:prod"
    for bad in ("iceberg:", "iceberg:a_b", "s3://x", "iceberg"):
        with pytest.raises(ValueError, match="--store="):
            store_choice(bad)
    with pytest.raises(SystemExit) as exited:
        cli.main(["report", "--store", "s3://x", "--data", str(tmp_path), "--output", str(tmp_path / "r.json")])
    assert exited.value.code == 2 and "--store='s3://x' is not valid" in capsys.readouterr().err
    monkeypatch.setenv("DLRLENS_STORE", "bogus")
    with pytest.raises(ValueError, match="DLRLENS_STORE='bogus' is not valid"):
        load_settings()


def test_an_unconfigured_catalog_is_named_at_start(tmp_path, monkeypatch):
    monkeypatch.setenv("PYICEBERG_HOME", str(tmp_path))  # no .pyiceberg.yaml there
    with pytest.raises(ValueError, match=r"no Iceberg catalog named 'nowhere'.*PYICEBERG_CATALOG__NOWHERE__"):
        publisher(parse_store("iceberg:nowhere"), tmp_path / "data")
    assert cli.main(["migrate", "--to", "iceberg:nowhere", "--data", str(tmp_path)]) == 2


def test_every_report_figure_matches_the_local_backend(each_lake, tmp_path):
    rows = factory.demo_rows(300, seed=11)
    local = ReceiptStorage(tmp_path / "local", flush_seconds=3600)
    remote = ReceiptStorage(tmp_path / "collector", flush_seconds=3600, publish=publisher(ICEBERG, tmp_path / "collector"))
    try:
        for start in range(0, len(rows), 250):  # several flushes: several commits and files
            for storage in (local, remote):
                storage.store(rows[start:start + 250])
                storage.flush()
    finally:
        local.close()
        remote.close()
    assert sorted(table_ids()) == sorted(r["receipt_id"] for r in rows)
    assert not list(Path(tmp_path / "collector").glob("receipts/*/*.parquet")), "no local Parquet with Iceberg"
    local_report = report_json(tmp_path / "local", "local", tmp_path / "local.json")
    iceberg_report = report_json(tmp_path / "reader", "iceberg:lake", tmp_path / "iceberg.json")
    assert local_report == iceberg_report
    summary = {row["key"]: row["value"] for row in iceberg_report["Summary"]}
    assert summary["messages"] == 300 and summary["duplicate_rows"] > 0  # the demo's duplicates survive


def test_a_replayed_segment_is_committed_once(each_lake, tmp_path):
    data = tmp_path / "collector"
    rows = factory.demo_rows(20, seed=3)
    storage = ReceiptStorage(data, flush_seconds=3600, publish=publisher(ICEBERG, data))
    segment, kept = commit_keeping_a_copy(storage, rows)
    # A crash between the commit and the segment's deletion: the segment is back at the restart.
    segment.write_bytes(kept)
    again = publisher(ICEBERG, data)  # a new process: the same collector id from the data directory
    restarted = ReceiptStorage(data, flush_seconds=3600, publish=again)
    restarted.close()
    assert not list_segments(segment.parent)
    assert again.counts["already_committed"] == 1 and again.counts["commits"] == 0
    assert sorted(table_ids()) == sorted(r["receipt_id"] for r in rows)
    table = receipts_table(open_catalog("lake"), create=False)
    assert committed_keys(table, SEGMENT_KEY) == {f"{again.collector_id}/{storage.slot}/{segment.stem}"}


def test_while_the_object_store_is_down_segments_wait_in_the_log(lake, tmp_path):
    data = tmp_path / "collector"
    publish = publisher(ICEBERG, data)
    publish.backoff_start = 0.2
    storage = ReceiptStorage(data, flush_seconds=3600, publish=publish)
    try:
        first = factory.demo_rows(30, seed=1)
        storage.store(first)
        storage.flush()
        lake.stop()
        later = factory.demo_rows(30, seed=2)
        storage.store(later)  # acknowledged: fsynced in the local log
        with pytest.raises(StorageError, match="Iceberg commit failed"):
            storage.flush()
        assert publish.status()["last_error"] and storage.counters.values["publish_errors"] == 1
        backlog = publish.backlog(storage.wal_root)
        assert backlog["segments"] == 1 and backlog["receipts"] == len(later)
        with pytest.raises(StorageError, match="paused"):
            storage.flush()  # backing off: not even tried
        lake.start()
        time.sleep(0.5)
        storage.flush()
        assert publish.status()["last_error"] is None and publish.backlog(storage.wal_root)["segments"] == 0
    finally:
        storage.close()
    assert sorted(table_ids()) == sorted(r["receipt_id"] for r in first + later)


def crash_leaving_a_segment(data: Path, rows: list[dict]) -> None:
    """A collector on ``data`` stores ``rows`` and crashes: their segment stays in its log."""
    storage = ReceiptStorage(data, flush_seconds=3600, publish=publisher(ICEBERG, data))
    storage.store(rows)
    storage.wal.rotate()
    storage.wal.close()
    storage._slot_lock.release()


def test_a_collector_starting_while_the_store_is_down_recovers_later(lake, tmp_path):
    data = tmp_path / "collector"
    rows = factory.demo_rows(10, seed=4)
    crash_leaving_a_segment(data, rows)
    lake.stop()
    publish = publisher(ICEBERG, data)
    publish.backoff_start = 0.1
    restarted = ReceiptStorage(data, flush_seconds=0.2, publish=publish)  # starts and acknowledges anyway
    try:
        restarted.store(factory.demo_rows(5, seed=5))
        wait_until(lambda: restarted.last_publish_error, 30, what="the replay's failed attempt (in the background)")
        lake.start()
        expected = {r["receipt_id"] for r in rows + factory.demo_rows(5, seed=5)}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and set(_ids_or_empty()) != expected:
            time.sleep(0.3)
    finally:
        restarted.close()
    assert sorted(table_ids()) == sorted(expected)


class HangingStore:
    """A publisher whose store hangs (every catalog call waits for ``answering``), then works."""

    def __init__(self, publish, answering: threading.Event):
        self.publish, self.answering = publish, answering

    def already_committed(self, slot, segments):
        assert self.answering.wait(30), "the store was never let answer"
        return self.publish.already_committed(slot, segments)

    def __call__(self, slot, batch):
        assert self.answering.wait(30), "the store was never let answer"
        return self.publish(slot, batch)

    def __getattr__(self, name):  # status, health, backlog: never wait
        return getattr(self.publish, name)


def test_a_restart_acknowledges_before_its_backlog_is_committed(lake, tmp_path):
    data = tmp_path / "collector"
    left = factory.demo_rows(10, seed=6)
    crash_leaving_a_segment(data, left)
    answering = threading.Event()
    restarted = ReceiptStorage(data, flush_seconds=3600, publish=HangingStore(publisher(ICEBERG, data), answering))
    try:
        later = factory.demo_rows(5, seed=7)
        restarted.store(later)  # acknowledged (fsynced) while the replay waits for the store
        assert restarted.catching_up and list_segments(restarted.log_dir)
        answering.set()
        assert restarted.wait_caught_up(30)
        restarted.flush()
    finally:
        answering.set()
        restarted.close()
    assert sorted(table_ids()) == sorted(r["receipt_id"] for r in left + later)
    assert not list_segments(restarted.log_dir)


def _ids_or_empty() -> list[str]:
    try:
        return table_ids()
    except Exception:  # the table may not exist yet, or the store still be starting
        return []


def flush_as_the_flusher_does(storage: ReceiptStorage, timeout: float = 60) -> None:
    """Flush, and after a failure (the segments stay in the log) again, as the flusher's ticks
    do: two writers racing to set up a fresh SQL catalog make one of them fail once."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            storage.flush()
            return
        except StorageError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_two_writers_committing_at_once_lose_and_double_nothing(each_lake, tmp_path):
    batches = {name: factory.demo_rows(40, seed=seed) for name, seed in (("a", 21), ("b", 22))}
    publishers = {name: publisher(ICEBERG, tmp_path / name) for name in batches}
    for publish in publishers.values():
        publish.backoff_start = 0.1
    storages = {name: ReceiptStorage(tmp_path / name, flush_seconds=3600, publish=publishers[name])
                for name in batches}

    def write(name: str) -> None:
        rows = batches[name]
        for start in range(0, len(rows), 10):
            storages[name].store(rows[start:start + 10])
            flush_as_the_flusher_does(storages[name])

    threads = [threading.Thread(target=write, args=(name,)) for name in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for storage in storages.values():
        storage.close()
    assert sorted(table_ids()) == sorted(r["receipt_id"] for rows in batches.values() for r in rows)
    assert sum(p.counts["commits"] for p in publishers.values()) == len(committed_keys(
        receipts_table(open_catalog("lake"), create=False), SEGMENT_KEY))


def test_migrate_twice_is_migrate_once(lake, tmp_path):
    source = tmp_path / "local"
    rows = factory.demo_rows(200, seed=9)
    factory.write_receipts(source, rows[:300])
    factory.write_receipts(source, rows[300:])
    assert cli.main(["migrate", "--to", "iceberg:lake", "--data", str(source)]) == 0
    assert len(receipts_table(open_catalog("lake"), create=False).metadata.snapshots) == 1  # one batch
    first = sorted(table_ids())
    again = migrate(source, "lake")
    assert again.copied == 0 and again.already == again.files > 0
    assert sorted(table_ids()) == first == sorted(r["receipt_id"] for r in rows)
    assert report_json(source, "local", tmp_path / "a.json") == report_json(tmp_path / "reader", "iceberg:lake",
                                                                             tmp_path / "b.json")


def test_an_interrupted_migration_resumes_where_it_stopped(lake, tmp_path, monkeypatch):
    from dlrlens.store.iceberg import migrate as migration

    source = tmp_path / "local"
    rows = factory.demo_rows(120, seed=10)
    for start in range(0, len(rows), 60):
        factory.write_receipts(source, rows[start:start + 60])
    calls = []

    def interrupt(path, count):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(migration, "BATCH_FILES", 2)  # two commits: the run stops after the first
    with pytest.raises(KeyboardInterrupt):
        migrate(source, "lake", progress=interrupt)
    resumed = migrate(source, "lake")
    assert resumed.files > 3 and resumed.already == 2 and resumed.copied == resumed.files - 2
    ids = table_ids()
    assert len(ids) == len(rows) and sorted(ids) == sorted(r["receipt_id"] for r in rows)
    table = receipts_table(open_catalog("lake"), create=False)
    assert len(committed_keys(table, SOURCE_KEY)) == resumed.files
    assert len(table.metadata.snapshots) == 1 + -(-resumed.copied // 2)  # batches of two files


def test_a_compacted_file_partly_copied_stops_the_migration(lake, tmp_path):
    from dlrlens.store import compaction

    source = tmp_path / "local"
    day = factory.utc(2026, 11, 3, 9)
    first = factory.write_receipts(source, [factory.receipt("m1", "DELIVERED", day)])
    assert migrate(source, "lake").copied == 1
    factory.write_receipts(source, [factory.receipt("m2", "DELIVERED", day)])
    stats = compaction.compact(source, min_age_seconds=0, settle_seconds=0, delete_grace_seconds=0)
    assert stats.files_written == 1 and not first[0].exists()
    with pytest.raises(MigrationError, match="1 of 2"):
        migrate(source, "lake")
    assert table_ids() == [factory.receipt("m1", "DELIVERED", day)["receipt_id"]]


def test_the_reader_serves_its_cache_while_the_catalog_is_unreachable(lake, tmp_path):
    data = tmp_path / "collector"
    storage = ReceiptStorage(data, flush_seconds=3600, publish=publisher(ICEBERG, data))
    storage.store(factory.demo_rows(25, seed=8))
    storage.flush()
    reader = open_store(tmp_path / "reader", ICEBERG)
    try:
        assert reader.has_data()
        version = reader.version()
        lake.stop()
        reader.mirror._last_attempt = None  # sync now, not after sync_seconds
        assert reader.version() == version and reader.mirror.last_error
        lake.start()
        storage.store(factory.demo_rows(5, seed=12))
        storage.flush()
        reader.mirror._last_attempt = None
        assert reader.version() != version and reader.mirror.last_error is None
        cached = list((tmp_path / "reader").glob("cache/iceberg/lake/receipts/date=*/i-*.parquet"))
        table = receipts_table(open_catalog("lake"), create=False)
        assert len(cached) == len(table.inspect.files())
    finally:
        reader.close()
        storage.close()
    assert pc.count_distinct(pc.cast(table.scan().to_arrow()["delivery_message_id"], "string")).as_py() == 30


def test_the_dashboard_shows_the_same_cards_from_the_iceberg_store(lake, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    rows = factory.demo_rows(120, seed=14)
    factory.write_receipts(tmp_path / "local", rows)
    collector = ReceiptStorage(tmp_path / "collector", flush_seconds=3600,
                               publish=publisher(ICEBERG, tmp_path / "collector"))
    collector.store(rows)
    collector.close()
    app = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
    cards = {}
    for name, data_dir, store in (("local", tmp_path / "local", "local"),
                                  ("iceberg", tmp_path / "reader", "iceberg:lake")):
        monkeypatch.setenv("DLRLENS_DATA", str(data_dir))
        monkeypatch.setenv("DLRLENS_STORE", store)
        at = AppTest.from_file(str(app), default_timeout=60)
        at.query_params["range"] = "all"
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        cards[name] = {metric.label: metric.value for metric in at.metric}
    assert cards["iceberg"] == cards["local"] and cards["local"]["Messages"] == "120"


def test_sail_computes_every_campaign_column_of_the_report(lake, tmp_path, monkeypatch):
    """examples/sail_campaigns.py (Sail, 2 workers, through PySpark) gives every column of the
    report's Campaigns sheet (receipt KPIs, funnel and cost columns, one row per campaign and
    currency, names imported and Mobivate's), row by row, before and after a sync; so does the
    same query in DuckDB."""
    pytest.importorskip("pysail", reason="the engines extra (pysail, pyspark-client, sqlglot) is not installed")
    import duckdb

    from dashboard.engine_sql import campaign_columns, campaign_kpis_sql
    from dlrlens import fake_mobivate as fm
    from dlrlens.store import sends
    from dlrlens.store.iceberg.send_tables import IcebergSends, keyed_table
    from tests.support.funnel import demo_events
    from tests.support.send_records import client, stream

    start = datetime(2026, 11, 2, tzinfo=timezone.utc)
    records, campaigns = fm.generate_records(200, start, start + timedelta(days=2), seed=23)
    first = [r for r in records if r["campaignId"] == campaigns[0]["id"]]
    for record in first[::2]:  # a campaign billed in two currencies: two rows
        record["currency"] = "EUR"
    collector = ReceiptStorage(tmp_path / "collector", flush_seconds=3600,
                               publish=publisher(ICEBERG, tmp_path / "collector"))
    rows = stream(records, campaigns, start)
    rows += [factory.receipt(f"UNSYNCED{k:024d}", "DELIVERED", start + timedelta(hours=k), batch_id="batch-not-synced")
             for k in range(3)]  # a campaign without any send record: currency empty
    clicks, replies = demo_events(rows, seed=5, click_share=0.4, reply_share=0.2)
    for part in range(2):  # several commits and data files
        collector.store(rows[part::2])
        collector.store(clicks[part::2], "clicks")
        collector.store(replies[part::2], "replies")
        collector.flush()
    collector.close()

    def in_duckdb(missing_before=None, synced=True) -> list[dict]:
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        catalog = open_catalog("lake")
        for name in ("receipts", "clicks", "replies"):
            con.register(name, written_table(catalog, name, create=False).scan().to_arrow())
        views = dict(clicks="clicks", replies="replies")
        if synced:
            for name in ("sends", "campaigns", "campaign_names"):
                con.register(name, keyed_table(catalog, name, create=False).scan().to_arrow())
            views |= dict(sends="sends", campaigns="campaigns", names="campaign_names")
        sql = campaign_kpis_sql("receipts", missing_before=missing_before, **views)
        frame = con.execute(sql).fetchdf().astype(object)
        return frame.where(frame.notna(), None).to_dict("records")

    def in_sail(now: datetime) -> dict:
        example = Path(__file__).resolve().parents[2] / "examples" / "sail_campaigns.py"
        run = subprocess.run([sys.executable, str(example), "--catalog", "lake", "--workers", "2", "--format", "json",
                              "--now", now.isoformat()], capture_output=True, text=True, timeout=240)
        assert run.returncode == 0, run.stderr[-3000:]
        return json.loads(run.stdout)

    # Before any sync: no send record tables, the receipts' figures (no names, no cost).
    before_sync = report_json(tmp_path / "reader", "iceberg:lake", tmp_path / "before.json")["Campaigns"]
    assert_same_campaigns("duckdb, no sync", in_duckdb(synced=False), before_sync, campaign_columns(receipts_missing=False))
    sail = in_sail(datetime.now(timezone.utc))
    assert set(sail["tables"]) == {"receipts", "clicks", "replies"}
    assert_same_campaigns("sail, no sync", sail["campaigns"], before_sync, campaign_columns())

    with fm.FakeServer(fm.create_app(records, campaigns, api_key="k")) as server:
        sends.sync(tmp_path / "collector", client(server), start.date(), (start + timedelta(days=2)).date(),
                   destination=IcebergSends("lake"))
    sends.import_names(tmp_path / "collector", f"batch_id,name\n{campaigns[1]['id']},Imported name\n",
                       IcebergSends("lake"))
    # Receipts missing depend on the time: the cut-off falls in the middle of the widest gap
    # between the created times of the log's messages without receipts, so that the seconds
    # between the report's "now" and the example's change nothing (and both sides count).
    received = {r["delivery_message_id"] for r in rows}
    unanswered = sorted(sends.parse_time(r["created"]) for r in records
                        if r["direction"] == "MT" and r["id"] not in received)
    gap, after = max((b - a, a) for a, b in zip(unanswered, unanswered[1:]))
    cut_off = after + gap / 2
    now = datetime.now(timezone.utc)
    grace = timedelta(seconds=round((now - cut_off).total_seconds()))
    monkeypatch.setenv("DLRLENS_RECEIPTS_MISSING_AFTER", f"{grace.total_seconds():.0f}s")

    report = report_json(tmp_path / "reader", "iceberg:lake", tmp_path / "report.json")["Campaigns"]
    named = {row["campaign"] for row in report}
    assert {"Imported name", campaigns[0]["name"]} <= named and campaigns[1]["id"] not in named
    assert {row["currency"] for row in report} == {"GBP", "EUR", None}
    assert len([row for row in report if row["campaign"] == campaigns[0]["name"]]) == 2
    assert 0 < sum(row["receipts_missing"] for row in report) < len(unanswered)
    assert any(row["messages_without_cost"] for row in report)
    assert all(sum(row[c] or 0 for row in report) > 0 for c in ("clicked", "clicks", "replied", "opted_out"))

    sail = in_sail(now)
    assert sail["tables"]["receipts"]["snapshot_id"] == \
        receipts_table(open_catalog("lake"), create=False).current_snapshot().snapshot_id
    assert set(sail["tables"]) == {"receipts", "clicks", "replies", "sends", "campaigns", "campaign_names"}
    columns = campaign_columns()
    assert_same_campaigns("sail", sail["campaigns"], report, columns)
    assert_same_campaigns("duckdb", in_duckdb(now - grace), report, columns)
    with pytest.raises(ValueError, match="dialect must be one of duckdb, spark"):
        campaign_kpis_sql(dialect="trino")


def test_a_rest_catalog_that_never_answers_times_out(tmp_path, monkeypatch):
    """pyiceberg's REST client sets no timeout; dlrlens's RestCatalog gives every request one."""
    import socket

    import requests

    from dlrlens.store.iceberg import table as iceberg_table

    monkeypatch.setattr(iceberg_table, "REST_TIMEOUT", (1, 1))
    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setenv("PYICEBERG_CATALOG__MUTE__URI", f"http://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setenv("PYICEBERG_CATALOG__MUTE__TYPE", "rest")
        started = time.monotonic()
        with pytest.raises(requests.exceptions.Timeout):
            open_catalog("mute")
        assert time.monotonic() - started < 10
