"""Mobivate's send records, campaign list and imported names on the Iceberg store
(:mod:`dlrlens.store.iceberg.send_tables`): synced into their tables by several collectors at
once, cached by every reader, absorbed by the derived state (also an adopted one), and every
cost, "Where" and name figure the same as a local data directory's fed the same receipts and
the same sync."""

from __future__ import annotations

import shutil
import threading
import time
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from dashboard import queries as q
from dashboard.queries import Filters
from dlrlens import cli
from dlrlens import fake_mobivate as fm
from dlrlens.store import derive, layout, maintenance, pseudonym, sends
from dlrlens.store.backends import parse_store, publisher
from dlrlens.store.iceberg import derived, send_tables
from dlrlens.store.iceberg.maintain import DerivedPublisher, TableMaintenance
from dlrlens.store.iceberg.migrate import migrate
from dlrlens.store.iceberg.mirror import IcebergStore, Mirror, cache_dir
from dlrlens.store.iceberg.send_tables import IcebergSends, keyed_table
from dlrlens.store.iceberg.table import open_catalog
from dlrlens.store.reader import Store
from dlrlens.store.writer import ReceiptStorage
from tests.support.lake import assert_same_figures as assert_same, report_json
from tests.support.send_records import client, stream
from tests.support.servers import wait_until

pytestmark = pytest.mark.slow  # a real object store (weed mini) per test

UTC = timezone.utc
START = datetime(2026, 11, 2, tzinfo=UTC)
NOW = START + timedelta(days=5)
ICEBERG = parse_store("iceberg:lake")
FILTERS = (Filters(), Filters(start=START, end=START + timedelta(days=1), countries=("GB",)))


def figures(store: Store) -> dict[str, pd.DataFrame]:
    """The Cost and Where pages' questions and the Campaigns page's cost columns."""
    out = {}
    for i, f in enumerate(FILTERS):
        for group in ("campaign", "country", "network", "originator", "route_id", None):
            out[f"cost_by_{group}{i}"] = q.cost_by(store, f, group, now=NOW)
        for dimension in ("country", "network", "originator", "route_id"):
            out[f"delivery_by_{dimension}{i}"] = q.delivery_by(store, f, dimension)
        out[f"missing{i}"] = q.receipts_missing(store, f, now=NOW)
        out[f"submission{i}"] = q.submission_latency(store, f)
        out[f"campaigns{i}"] = q.campaign_table(store, f)
    return out


@pytest.fixture
def world(lake, tmp_path):
    """The same receipts in a local data directory and in the lake; a fake Mobivate; the local
    directory synced and named. Both sides share the number key (collectors of one deployment
    are given one key: their hashes must match)."""
    records, campaigns = fm.generate_records(300, START, START + timedelta(days=2), seed=23)
    rows = stream(records, campaigns, START)
    local = ReceiptStorage(tmp_path / "local", flush_seconds=3600)
    collector = ReceiptStorage(tmp_path / "collector", flush_seconds=3600,
                               publish=publisher(ICEBERG, tmp_path / "collector"))
    try:
        for part in range(2):
            for storage in (local, collector):
                storage.store(rows[part::2])
                storage.flush()
    finally:
        local.close()
        collector.close()
    pseudonym.installation_key(tmp_path / "local")
    for name in ("collector", "other", "reader"):
        (tmp_path / name / layout.KEYS_DIR).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "local" / layout.MSISDN_KEY, tmp_path / name / layout.MSISDN_KEY)
    names = f"batch_id,name\n{campaigns[1]['id']},Imported name\n"
    with fm.FakeServer(fm.create_app(records, campaigns, api_key="k")) as server:
        sends.sync(tmp_path / "local", client(server), START.date(), (START + timedelta(days=2)).date())
        sends.import_names(tmp_path / "local", names)
        yield server, names, records


END = (START + timedelta(days=2)).date()


RECORD_KEY = ["source", "message_id", "modified", "cost", "country", "recipient_hash"]


def local_records(data_dir) -> list[tuple]:
    table = pd.concat([pd.read_parquet(p) for p in sorted((data_dir / sends.SENDS_DIR).glob("*/*.parquet"))])
    return sorted(map(repr, table[RECORD_KEY].itertuples(index=False)))


def table_records() -> list[tuple]:
    table = keyed_table(open_catalog("lake"), send_tables.SENDS_TABLE, create=False)
    return sorted(map(repr, table.scan(selected_fields=tuple(RECORD_KEY)).to_pandas()[RECORD_KEY].itertuples(index=False)))


def test_cost_where_and_names_on_the_iceberg_store_match_the_local_store(world, tmp_path):
    server, names, records = world
    expected = figures(Store(tmp_path / "local"))
    assert expected["cost_by_None0"]["cost"].sum() > 0 and len(expected["cost_by_country0"]) > 1
    assert len(expected["missing0"]) > 0 and "Imported name" in set(expected["campaigns0"]["campaign"])

    # Two collectors sync the same window at once: each record once in the table.
    errors = []

    def sync(name):
        try:
            sends.sync(tmp_path / name, client(server), START.date(), END, destination=IcebergSends("lake"))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=sync, args=(name,)) for name in ("collector", "other")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sends.import_names(tmp_path / "other", names, IcebergSends("lake")).names
    assert table_records() == local_records(tmp_path / "local")

    # Syncing again changes no table (the status is recorded, no snapshot made).
    snapshots = len(keyed_table(open_catalog("lake"), send_tables.SENDS_TABLE, create=False).metadata.snapshots)
    again = sends.sync(tmp_path / "other", client(server), START.date(), END, destination=IcebergSends("lake"))
    assert again.files_changed == 0 and again.records > 0
    table = keyed_table(open_catalog("lake"), send_tables.SENDS_TABLE, create=False)
    assert len(table.metadata.snapshots) == snapshots

    reader = IcebergStore("lake", tmp_path / "reader")
    assert sends.has_sends(reader.data_dir)
    assert sends.sync_status(reader.data_dir)["last_result"]["records"] == again.records
    assert_same(expected, figures(reader))
    # A number looked up is hashed with the key of the reader's data directory (not its cache's).
    number = [r["recipient"] for r in records if r["direction"] == "MT"][1]  # the first has no receipt
    found = q.message_lookup(reader, number)
    assert not found.empty
    pd.testing.assert_frame_equal(found, q.message_lookup(Store(tmp_path / "local"), number), check_dtype=False)
    assert report_json(tmp_path / "reader", "iceberg:lake", tmp_path / "iceberg.json") == \
        report_json(tmp_path / "local", "local", tmp_path / "local.json")


def test_an_adopted_derived_state_keeps_the_absorbed_send_records_and_takes_later_changes(world, tmp_path):
    server, names, records = world
    sends.sync(tmp_path / "collector", client(server), START.date(), END, destination=IcebergSends("lake"))
    sends.import_names(tmp_path / "collector", names, IcebergSends("lake"))
    committed = DerivedPublisher("lake", tmp_path / "collector").run()
    assert committed["committed"] is not None
    state = derived.committed_state(derived.derived_table(open_catalog("lake")))
    assert len(state.send_stamps) == len(list((tmp_path / "local" / sends.SENDS_DIR).glob("*/*.parquet")))

    mirror = Mirror("lake", cache_dir(tmp_path / "adopter", "lake"))
    assert mirror.sync()["adopted"] is not None
    listing = derive.send_files(mirror.root)
    assert set(listing.values()) <= derive.Manifest.load(mirror.root).absorbed, "no send file absorbed again"
    assert_same(figures(Store(tmp_path / "local")), figures(Store(mirror.root)))

    # Mobivate changes a record later (its cost, a new modified time): the next sync replaces that
    # day's partition; the adopter absorbs the records stamped since, nothing else.
    changed = next(r for r in records if r["direction"] == "MT")  # served by the fake as it is now
    changed["cost"] = round(float(changed["cost"]) + 1.5, 4)
    changed["modified"] = (sends.parse_time(changed["created"]) + timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%S+0000")
    sends.sync(tmp_path / "local", client(server), START.date(), END)
    assert sends.sync(tmp_path / "collector", client(server), START.date(), END,
                      destination=IcebergSends("lake")).files_changed == 1
    result = mirror.sync()
    assert result["send_files_changed"] == 1
    assert_same(figures(Store(tmp_path / "local")), figures(Store(mirror.root)))


def test_a_commit_refused_because_another_collector_committed_first_merges_again(lake, tmp_path, monkeypatch):
    records, campaigns = fm.generate_records(40, START, START + timedelta(hours=6), seed=5)
    converter = sends.RecordConverter(pseudonym.installation_key(tmp_path), False)
    mt = converter.page([r for r in records if r["direction"] == "MT"], "log")
    first, second = mt[::2], mt[1::2]
    late, early = IcebergSends("lake", sleep=lambda s: None), IcebergSends("lake")
    real = send_tables.read_rows
    interleaved = []

    def read_then_let_the_other_commit(table, name, uris):
        if not interleaved:
            interleaved.append(True)
            assert early.store_rows(second) == 1  # lands between the late writer's read and its commit
        return real(table, name, uris)
    monkeypatch.setattr(send_tables, "read_rows", read_then_let_the_other_commit)
    assert late.store_rows(first) == 1
    assert late.refusals == 1 and early.refusals == 0
    table = keyed_table(open_catalog("lake"), send_tables.SENDS_TABLE, create=False)
    ids = table.scan(selected_fields=("message_id",)).to_arrow()["message_id"].to_pylist()
    assert sorted(ids) == sorted(r["message_id"] for r in mt)
    assert len(send_tables.partition_files(table)) == 1, "one day, one data file"


def test_campaign_names_import_on_the_iceberg_store_from_the_command_line(lake, tmp_path, capsys):
    csv = tmp_path / "names.csv"
    csv.write_text("batch_id,name\nb-1,Spring sale\n")
    assert cli.main(["campaigns", "import", str(csv), "--data", str(tmp_path / "d"), "--store", "iceberg:lake"]) == 0
    table = keyed_table(open_catalog("lake"), send_tables.NAMES_TABLE, create=False)
    assert table.scan().to_arrow().to_pylist() == [{"batch_id": "b-1", "name": "Spring sale"}]
    with pytest.raises(SystemExit) as exited:
        cli.main(["campaigns", "import", str(csv), "--data", str(tmp_path / "d"), "--store", "iceberg:nowhere"])
    assert exited.value.code == 2
    assert "no Iceberg catalog named 'nowhere'" in capsys.readouterr().err


def test_the_maintenance_keeps_the_send_tables_snapshots_bounded(world, tmp_path):
    server, _, records = world
    destination = IcebergSends("lake")
    changed = next(r for r in records if r["direction"] == "MT")
    for hours in (1, 2, 3):  # three syncs that change a record: a snapshot each
        changed["modified"] = (sends.parse_time(changed["created"]) + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%S+0000")
        sends.sync(tmp_path / "collector", client(server), START.date(), END, destination=destination)
    table = keyed_table(open_catalog("lake"), send_tables.SENDS_TABLE, create=False)
    assert len(table.metadata.snapshots) >= 4
    before = table_records()
    result = TableMaintenance("lake", table=send_tables.SENDS_TABLE, retention_seconds=0, orphan_grace_seconds=60,
                              clock=lambda: time.time() + 3600).run()
    assert result["expired_snapshots"] >= 3 and result["orphans_deleted"] >= 3, result  # the replaced day files
    table = keyed_table(open_catalog("lake"), send_tables.SENDS_TABLE, create=False)
    assert len(table.metadata.snapshots) == 1 and table_records() == before


def test_migrate_copies_the_send_records_campaigns_and_names_once(world, tmp_path):
    source = tmp_path / "local"
    first = migrate(source, "lake")
    send_files = len(list(source.glob("sends/*/*.parquet"))) + len(list(source.glob("campaigns/*.parquet")))
    assert first.send_files == send_files and first.send_partitions == send_files
    assert migrate(source, "lake").send_partitions == 0, "a second run changes nothing"
    assert table_records() == local_records(source)
    names = keyed_table(open_catalog("lake"), send_tables.NAMES_TABLE, create=False).scan().to_arrow()
    assert names.to_pylist() == pd.read_parquet(source / sends.IMPORTED_NAMES).to_dict("records")
    (tmp_path / "reader" / layout.KEYS_DIR).mkdir(parents=True, exist_ok=True)
    # The fixture's collector committed the same receipts already, so the table holds each twice: the
    # per-receipt columns (duplicates) differ; every message-level figure is the same.
    expected = {name: frame for name, frame in figures(Store(source)).items() if not name.startswith("campaigns")}
    assert_same(expected, figures(IcebergStore("lake", tmp_path / "reader")))


def test_a_collectors_periodic_sync_stores_into_the_send_tables(world, tmp_path, monkeypatch):
    server, _, _ = world
    monkeypatch.setenv("MOBIVATE_API_KEY", "k")
    monkeypatch.setenv("DLRLENS_MOBIVATE_URL", server.url)
    monkeypatch.setenv("DLRLENS_SYNC_SECONDS", "0.2")
    monkeypatch.setenv("DLRLENS_SYNC_DAYS", str((datetime.now(UTC).date() - START.date()).days + 1))  # back to START
    # Table maintenance off: the sync still stores in the catalog (the collector's store).
    schedule = maintenance.IcebergSchedule("lake", every=0, retention_seconds=600, orphan_grace_seconds=3600)
    running = maintenance.start(tmp_path / "collector", interval=60, compact_every=0, lock_retry_seconds=0.1,
                                iceberg=schedule)
    try:
        wait_until(lambda: running.runs["sync"] >= 1, timeout=60, what="a periodic sync")
    finally:
        running.stop()
    assert running.errors["sync"] == 0, running.last_error
    assert not (tmp_path / "collector" / sends.SENDS_DIR).exists(), "nothing in the collector's directory"
    message_log = [r for r in local_records(tmp_path / "local") if r.startswith("Pandas(source='log'")]
    assert table_records() == message_log  # (the newer API's history is not configured here)
