"""The derived per-message state as Iceberg commits (dlrlens.store.iceberg.derived), against a
real object store (``weed mini``) and pyiceberg's SQL catalog: a reader on an empty cache adopts
the committed state instead of rebuilding it and shows every figure of the local backend; two
maintainers committing at once, and a refused commit retried on the winner's state, leave each
message once in the table and lose none; a state that cannot be adopted is replaced whole; a
newer writer's column widens the table's schema.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dlrlens.store import derive
from dlrlens.store.backends import parse_store, publisher
from dlrlens.store.iceberg import derived
from dlrlens.store.iceberg.maintain import DerivedPublisher, TableMaintenance, table_files
from dlrlens.store.iceberg.mirror import cache_dir
from dlrlens.store.iceberg.table import live_data_entries, open_catalog
from dlrlens.store.writer import ReceiptStorage
from tests.support import factory
from tests.support.lake import derived_message_ids, report_json

ICEBERG = parse_store("iceberg:lake")


class Feed:
    """The same receipts to a local data directory and, through a collector, to the table."""

    def __init__(self, tmp_path: Path):
        self.local = ReceiptStorage(tmp_path / "local", flush_seconds=3600)
        self.remote = ReceiptStorage(tmp_path / "collector", flush_seconds=3600,
                                     publish=publisher(ICEBERG, tmp_path / "collector"))

    def send(self, rows: list[dict], per_flush: int = 400) -> None:
        for start in range(0, len(rows), per_flush):  # several flushes: several commits and files
            for storage in (self.local, self.remote):
                storage.store(rows[start:start + per_flush])
                storage.flush()

    def close(self) -> None:
        self.local.close()
        self.remote.close()


@pytest.fixture
def feed(lake, tmp_path):
    fed = Feed(tmp_path)
    yield fed
    fed.close()


def derived_table():
    return derived.derived_table(open_catalog("lake"))


def stored_data_files() -> set[str]:
    """The data files under the derived table's location (as the object store lists them)."""
    return {info.path for info in table_files(derived_table())[1] if "/data/" in info.path}


def stored_companions() -> set[str]:
    """The companions under the derived table's location."""
    return {info.path for info in table_files(derived_table())[1] if derived.companion_of(info.path)}


def companions_of(data_files: set[str]) -> set[str]:
    return {derived.companion_uri(path, kind) for path in data_files for kind in derive.COMPANIONS}


def snapshot_data_files(current_only: bool = False) -> set[str]:
    """The data files of the derived table's current snapshot, or of any snapshot it keeps."""
    table = derived_table()
    snapshots = [table.current_snapshot()] if current_only else table.metadata.snapshots
    return {entry.data_file.file_path.split("://", 1)[1] for snapshot in snapshots
            for entry in live_data_entries(table, snapshot)}


def message_ids(rows: list[dict]) -> set[str]:
    return {r["delivery_message_id"] for r in rows}


def count_rebuilds(monkeypatch) -> list:
    """Every rebuild of a derived state from all its receipts (update_derived's and rebuild_derived's)."""
    rebuilds: list = []
    rebuild = derive._rebuild_locked
    monkeypatch.setattr(derive, "_rebuild_locked", lambda *a, **kw: rebuilds.append(a) or rebuild(*a, **kw))
    return rebuilds


def test_a_reader_on_an_empty_cache_adopts_the_committed_state(feed, tmp_path, monkeypatch):
    first = factory.demo_rows(1200, seed=31)
    later = factory.demo_rows(300, seed=32, start=factory.utc(2026, 11, 4))
    feed.send(first)
    result = DerivedPublisher("lake", tmp_path / "collector").run()
    assert result["committed"] and result["added"] > 0 and not result["refused"]
    feed.send(later)  # committed to the receipts table after the derived state: the reader absorbs it
    rebuilds = count_rebuilds(monkeypatch)
    adopted = []
    adopt = derived.adopt
    monkeypatch.setattr(derived, "adopt", lambda *a, **kw: adopted.append(adopt(*a, **kw)) or adopted[-1])

    reader = report_json(tmp_path / "reader", "iceberg:lake", tmp_path / "iceberg.json")

    assert not rebuilds, "the committed state was adopted, not rebuilt"
    assert len(adopted) == 1 and adopted[0]["downloaded"] == adopted[0]["files"] == result["added"]
    assert adopted[0]["rewritten"] == 0, "the companions were downloaded with their messages files"
    assert reader == report_json(tmp_path / "local", "local", tmp_path / "local.json")
    manifest = derive.Manifest.load(cache_dir(tmp_path / "reader", "lake"))
    assert manifest.absorbed == set(derive.receipt_files(cache_dir(tmp_path / "reader", "lake")))
    assert Counter(derived_message_ids()) == Counter(message_ids(first))  # each once, every message


def test_a_stale_reader_adopts_only_the_files_that_changed(feed, tmp_path, monkeypatch):
    maintainer = DerivedPublisher("lake", tmp_path / "m1")
    feed.send(factory.demo_rows(300, seed=35))
    first = maintainer.run()
    report_json(tmp_path / "reader", "iceberg:lake", tmp_path / "before.json")  # adopts that state
    feed.send(factory.demo_rows(300, seed=36, start=factory.utc(2026, 11, 10)))  # other days: other files
    second = maintainer.run()
    assert second["committed"] and second["removed"] == 0 and second["added"] > 0
    monkeypatch.setattr(derived, "ADOPT_MIN_ROWS", 10)  # the new receipts count as a long way behind
    adopted = []
    adopt = derived.adopt
    monkeypatch.setattr(derived, "adopt", lambda *a, **kw: adopted.append(adopt(*a, **kw)) or adopted[-1])
    rebuilds = count_rebuilds(monkeypatch)
    assert report_json(tmp_path / "reader", "iceberg:lake", tmp_path / "after.json") == \
        report_json(tmp_path / "local", "local", tmp_path / "local.json")
    assert not rebuilds and len(adopted) == 1
    assert adopted[0]["files"] == first["added"] + second["added"] and adopted[0]["downloaded"] == second["added"]


def test_two_maintainers_committing_at_once_commit_once_and_the_loser_adopts(feed, tmp_path, monkeypatch):
    batches = [factory.demo_rows(200, seed=40 + n, start=factory.utc(2026, 11, 1 + n)) for n in range(3)]
    maintainers = [DerivedPublisher("lake", tmp_path / name) for name in ("m1", "m2")]
    gate = threading.Barrier(2, timeout=60)
    commit = derived.commit

    def commit_together(*args, **kwargs):  # both have absorbed the same receipts: they race here
        gate.wait()
        return commit(*args, **kwargs)

    results: dict[int, list[dict]] = {0: [], 1: []}
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            results[n].append(maintainers[n].run())
        except BaseException as exc:  # reported below
            errors.append(exc)

    for batch in batches:
        feed.send(batch)
        monkeypatch.setattr(derived, "commit", commit_together)
        threads = [threading.Thread(target=run, args=(n,)) for n in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        monkeypatch.setattr(derived, "commit", commit)
        assert not errors, errors
    rounds = list(zip(results[0], results[1]))
    # Each round one commit wins and the other is refused; the loser adopts the winner's state
    # at its next round (before committing what it absorbed beyond it).
    for a, b in rounds:
        assert sorted([bool(a["committed"]), bool(b["committed"])]) == [False, True], (a, b)
        assert a["refused"] != b["refused"]
    assert sum(1 for r in results[0] + results[1] if r["adopted"]) >= len(batches) - 1
    everything = [r for batch in batches for r in batch]
    assert Counter(derived_message_ids()) == Counter(message_ids(everything))
    # What the refused commits uploaded was deleted: every data file under the table's location is a snapshot's.
    assert stored_data_files() == snapshot_data_files()
    assert stored_companions() == companions_of(snapshot_data_files())
    reader = report_json(tmp_path / "reader", "iceberg:lake", tmp_path / "iceberg.json")
    assert reader == report_json(tmp_path / "local", "local", tmp_path / "local.json")


def test_a_refused_commit_is_retried_on_the_winners_state(feed, tmp_path, monkeypatch):
    first, second = factory.demo_rows(200, seed=51), factory.demo_rows(200, seed=52, start=factory.utc(2026, 11, 3))
    feed.send(first)
    winner, loser = DerivedPublisher("lake", tmp_path / "m1"), DerivedPublisher("lake", tmp_path / "m2")
    assert winner.run()["committed"]
    assert loser.run()["adopted"]  # builds on the winner's commit now
    feed.send(second)
    # The loser absorbs the new receipts and looks at the table; then the winner commits first.
    loser.mirror.sync()
    loser._absorb()
    stale = derived_table()
    assert winner.run()["committed"]
    with monkeypatch.context() as patch:
        patch.setattr(derived, "derived_table", lambda catalog: stale)
        late = derived.commit(open_catalog("lake"), loser.mirror.root, loser.committer,
                              receipts_snapshot=loser.mirror.receipts_snapshot,
                              receipts_sequence=loser.mirror.receipts_sequence, probe=loser.mirror.probe)
    assert late.refused and not late.committed  # by the catalog: the snapshot it built on is gone
    assert stored_data_files() == snapshot_data_files(), "the refused commit's uploads were deleted"
    retried = loser.run()
    assert retried["adopted"] and not retried["refused"]
    assert Counter(derived_message_ids()) == Counter(message_ids(first + second))


def test_a_state_hashed_by_another_duckdb_is_replaced_whole_not_adopted(feed, tmp_path, monkeypatch):
    rows = factory.demo_rows(300, seed=61)
    feed.send(rows)
    first = DerivedPublisher("lake", tmp_path / "m1")
    assert first.run()["committed"]
    other = DerivedPublisher("lake", tmp_path / "m2")
    with monkeypatch.context() as patch:  # as if its DuckDB hashed differently
        patch.setattr(derive, "hash_probe", lambda con: first.mirror.probe + 1)
        result = other.run()
    assert not result["adopted"] and result["replaced_whole"] and result["committed"]
    assert Counter(derived_message_ids()) == Counter(message_ids(rows))
    # A reader whose DuckDB hashes like the first maintainer's rebuilds instead of adopting.
    rebuilds = count_rebuilds(monkeypatch)
    assert report_json(tmp_path / "reader", "iceberg:lake", tmp_path / "iceberg.json") == \
        report_json(tmp_path / "local", "local", tmp_path / "local.json")
    assert len(rebuilds) == 1


def test_the_derived_table_keeps_itself_bounded(feed, tmp_path):
    maintainer = DerivedPublisher("lake", tmp_path / "m1")
    for seed in range(3):
        feed.send(factory.demo_rows(100, seed=70 + seed, start=factory.utc(2026, 11, 1)))
        assert maintainer.run()["committed"]
    table = derived_table()
    assert len(table.metadata.snapshots) == 3
    assert table.metadata.properties["commit.retry.num-retries"] == "0"
    run = TableMaintenance("lake", table=derived.DERIVED_TABLE, retention_seconds=0, orphan_grace_seconds=3600,
                           clock=lambda: time.time() + 7200).run()
    assert run["expired_snapshots"] == 2 and run["orphans_deleted"] > 0 and run["files_compacted"] == 0
    assert stored_data_files() == snapshot_data_files(current_only=True)
    assert stored_companions() == companions_of(snapshot_data_files(current_only=True))


def test_a_companion_the_writer_did_not_store_is_computed_by_the_reader(feed, tmp_path, monkeypatch):
    rows = factory.demo_rows(400, seed=81)
    feed.send(rows)
    assert DerivedPublisher("lake", tmp_path / "m1").run()["committed"]
    # As if written by a dlrlens that knew one companion kind fewer.
    table = derived_table()
    for data_file in derived.committed_state(table).files.values():
        table.io.delete(derived.companion_uri(data_file.file_path, derive.COMPANIONS[-1]))
    adopted = []
    adopt = derived.adopt
    monkeypatch.setattr(derived, "adopt", lambda *a, **kw: adopted.append(adopt(*a, **kw)) or adopted[-1])
    assert report_json(tmp_path / "reader", "iceberg:lake", tmp_path / "iceberg.json") == \
        report_json(tmp_path / "local", "local", tmp_path / "local.json")
    assert adopted[0]["rewritten"] == adopted[0]["files"] > 0
    manifest = derive.Manifest.load(cache_dir(tmp_path / "reader", "lake"))
    root = cache_dir(tmp_path / "reader", "lake")
    assert all((root / path).exists() for f in manifest.files for path in derive._all_paths(f.path))


def test_a_newer_writers_column_widens_the_table_schema(feed, tmp_path):
    rows = factory.demo_rows(200, seed=91)
    feed.send(rows)
    maintainer = DerivedPublisher("lake", tmp_path / "m1")
    assert maintainer.run()["committed"]
    # As a newer dlrlens would write it: one messages file with a column this one does not know.
    root = maintainer.mirror.root
    manifest = derive.Manifest.load(root)
    old = manifest.files[0]
    new_path = str(Path(old.path).with_name(f"{old.kind}-{time.time_ns()}.parquet"))
    messages = pq.read_table(root / old.path)
    pq.write_table(messages.append_column("clicks", pa.array(range(messages.num_rows), pa.int64())), root / new_path)
    for kind in derive.COMPANIONS:
        shutil.copy(root / derive.companion_path(old.path, kind), root / derive.companion_path(new_path, kind))
    manifest.files = [f for f in manifest.files if f.path != old.path] + [
        derive.DerivedFile(new_path, old.rows, old.sent_min_us, old.sent_max_us)]
    manifest.save(root)
    result = derived.commit(open_catalog("lake"), root, maintainer.committer,
                            receipts_snapshot=maintainer.mirror.receipts_snapshot,
                            receipts_sequence=maintainer.mirror.receipts_sequence, probe=maintainer.mirror.probe)
    assert result.committed and (result.added, result.removed) == (1, 1)
    table = derived_table()
    assert table.schema().column_names[-1] == "clicks" and not table.schema().find_field("clicks").required
    assert Counter(derived_message_ids()) == Counter(message_ids(rows))
    assert report_json(tmp_path / "reader", "iceberg:lake", tmp_path / "iceberg.json") == \
        report_json(tmp_path / "local", "local", tmp_path / "local.json")  # this dlrlens adopts it all the same
