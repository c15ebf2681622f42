"""Clicks and replies on the Iceberg store (issue #10): the ``clicks`` and ``replies`` tables,
against a real object store (``weed mini`` on loopback) and pyiceberg's SQL catalog.

* A collector commits each segment's clicks and replies to their tables exactly once, like
  its receipts: also when it dies between the receipts commit and the events commits (the
  replay commits only the events), and when a fully committed segment is replayed (nothing);
  a segment without events makes no commit to their tables.
* The Funnel page's figures on an :class:`~dlrlens.store.iceberg.mirror.IcebergStore` equal a
  local :class:`~dlrlens.store.reader.Store`'s over the same receipts, clicks and replies,
  also for a reader that adopted the derived state the maintenance committed (whose events it
  absorbs again: the state is duplicate-insensitive).
* ``dlrlens migrate`` copies a data directory's click and reply files, once however often it runs.
"""

from __future__ import annotations

import shutil
from collections import Counter

import pandas as pd
import pytest

from dashboard import queries as q
from dashboard.queries import Filters
from dlrlens.store import derive, layout
from dlrlens.store.iceberg import derived
from dlrlens.store.backends import parse_store, publisher
from dlrlens.store.iceberg.maintain import DerivedPublisher, TableMaintenance
from dlrlens.store.iceberg.migrate import migrate
from dlrlens.store.iceberg.mirror import IcebergStore, Mirror, cache_dir
from dlrlens.store.iceberg.table import (CLICKS_TABLE, REPLIES_TABLE, committed_property, open_catalog,
                                         written_table)
from dlrlens.store.reader import Store
from dlrlens.store.wal import list_segments
from dlrlens.store.writer import ReceiptStorage
from tests.support import factory
from tests.support.funnel import demo_events, write_events
from tests.support.lake import assert_same_figures, table_ids

pytestmark = pytest.mark.slow  # a real object store (weed mini) per test

ICEBERG = parse_store("iceberg:lake")


def table_column(name: str, column: str) -> list:
    table = written_table(open_catalog("lake"), name, create=False)
    return table.scan(selected_fields=(column,)).to_arrow()[column].to_pylist()


def snapshots(name: str) -> int:
    try:
        return len(written_table(open_catalog("lake"), name, create=False).metadata.snapshots)
    except Exception:  # not made yet
        return 0


def post(storage: ReceiptStorage, receipts: list[dict], clicks: list[dict], replies: list[dict]) -> None:
    """What the collector's /dlr, /click and /incoming store, into one log segment."""
    storage.store(receipts)
    storage.store(clicks, "clicks")
    storage.store(replies, "replies")


def test_events_reach_their_tables_exactly_once_across_a_crash_between_the_commits(lake, tmp_path):
    data = tmp_path / "collector"
    receipts = factory.demo_rows(60, seed=21)
    clicks, replies = demo_events(receipts, seed=21, click_share=0.5, reply_share=0.3)
    first = publisher(ICEBERG, data)
    storage = ReceiptStorage(data, flush_seconds=3600, publish=first)
    post(storage, receipts, clicks, replies)
    storage.wal.rotate()
    segment = list_segments(storage.log_dir)[0]
    kept = segment.read_bytes()

    committing = first._commit

    def dies_after_the_receipts(name, *rest):  # the process dies between the commits
        if name != "receipts":
            raise RuntimeError("killed between the receipts commit and the events commits")
        return committing(name, *rest)

    first._commit = dies_after_the_receipts
    with pytest.raises(Exception, match="killed between"):
        storage.flush()
    storage.close()
    assert list_segments(storage.log_dir) == [segment], "the segment stays in the log until every table holds it"
    assert sorted(table_ids()) == sorted(r["receipt_id"] for r in receipts) and snapshots(CLICKS_TABLE) == 0

    replay = publisher(ICEBERG, data)  # the restart: the same collector id, a fresh process
    ReceiptStorage(data, flush_seconds=3600, publish=replay).close()
    assert not list_segments(segment.parent)
    assert replay.counts["commits"] == 2 and replay.counts["committed_receipts"] == 0, "only the events committed"
    assert replay.counts["committed_clicks"] == len(clicks) and replay.counts["committed_replies"] == len(replies)

    segment.write_bytes(kept)  # a crash after every commit, before the segment's deletion
    again = publisher(ICEBERG, data)
    ReceiptStorage(data, flush_seconds=3600, publish=again).close()
    assert again.counts["commits"] == 0 and again.counts["already_committed"] == 1

    assert sorted(table_ids()) == sorted(r["receipt_id"] for r in receipts)
    assert Counter(table_column(CLICKS_TABLE, "click_id")) == Counter(c["click_id"] for c in clicks)
    assert Counter(table_column(REPLIES_TABLE, "reply_id")) == Counter(r["reply_id"] for r in replies)
    table = written_table(open_catalog("lake"), CLICKS_TABLE, create=False)
    assert table.metadata.properties[committed_property(replay.slot_key(storage.slot))] == segment.stem
    assert [f.name for f in table.spec().fields] == ["received_at_day"]

    # Receipts only: no commit to the events tables; no local event file either.
    before = snapshots(CLICKS_TABLE), snapshots(REPLIES_TABLE)
    more = ReceiptStorage(data, flush_seconds=3600, publish=publisher(ICEBERG, data))
    more.store(factory.demo_rows(5, seed=22))
    more.flush()
    assert (snapshots(CLICKS_TABLE), snapshots(REPLIES_TABLE)) == before
    later_click = demo_events(receipts, seed=23, click_share=1.0)[0][:1]
    more.store(later_click, "clicks")
    more.flush()
    more.close()
    assert (snapshots(CLICKS_TABLE), snapshots(REPLIES_TABLE)) == (before[0] + 1, before[1])
    assert not list(data.glob("clicks/*/*.parquet")) and not list(data.glob("replies/*/*.parquet"))

    # The maintenance expires and cleans the events tables too (it does not compact them).
    result = TableMaintenance("lake", table=CLICKS_TABLE, retention_seconds=0, orphan_grace_seconds=3600).run()
    assert result["snapshots"] == 1 and result["expired_snapshots"] == 1 and result["files_compacted"] == 0
    assert Counter(table_column(CLICKS_TABLE, "click_id")) == Counter(c["click_id"] for c in clicks + later_click)


def test_a_segment_waiting_for_its_events_commit_stays_named_while_newer_ones_commit(lake, tmp_path):
    # The clicks commits keep failing while new segments arrive: each flush commits the newer
    # segments' receipts, and the receipts table's committed property must still name the
    # older segments (in the table, still in the log), or their replay would commit them again.
    data = tmp_path / "collector"
    failing = publisher(ICEBERG, data)
    failing.backoff_start = 0.0  # try at every flush
    committing = failing._commit

    def clicks_refused(name, *rest):
        if name == "clicks":
            raise OSError("the clicks commit fails")
        return committing(name, *rest)

    failing._commit = clicks_refused
    storage = ReceiptStorage(data, flush_seconds=3600, publish=failing)
    batches = []
    for seed in (51, 52, 53):
        receipts = factory.demo_rows(10, seed=seed)
        batches.append((receipts, demo_events(receipts, seed=seed, click_share=1.0, reply_share=1.0)))
        post(storage, receipts, *batches[-1][1])
        with pytest.raises(Exception, match="clicks commit fails"):
            storage.flush()
    storage.close()
    segments = list_segments(storage.log_dir)
    assert len(segments) == 3
    receipts_table = written_table(open_catalog("lake"), "receipts", create=False)
    named = receipts_table.metadata.properties[committed_property(failing.slot_key(storage.slot))]
    assert named == ",".join(segment.stem for segment in segments)

    healthy = publisher(ICEBERG, data)
    ReceiptStorage(data, flush_seconds=3600, publish=healthy).close()
    assert not list_segments(storage.log_dir)
    assert healthy.counts["committed_receipts"] == 0 and healthy.counts["commits"] == 2  # clicks, replies
    receipts = [r for batch, _ in batches for r in batch]
    clicks = [c for _, (batch_clicks, _) in batches for c in batch_clicks]
    replies = [r for _, (_, batch_replies) in batches for r in batch_replies]
    assert sorted(table_ids()) == sorted(r["receipt_id"] for r in receipts)
    assert Counter(table_column(CLICKS_TABLE, "click_id")) == Counter(c["click_id"] for c in clicks)
    assert Counter(table_column(REPLIES_TABLE, "reply_id")) == Counter(r["reply_id"] for r in replies)


def funnel_figures(store: Store) -> dict[str, pd.DataFrame]:
    """The Funnel page's questions."""
    out = {}
    for i, f in enumerate((Filters(), Filters(campaigns=("welcome",)))):
        out[f"funnel{i}"] = q.funnel(store, f)
        out[f"funnel_by_campaign{i}"] = q.funnel(store, f, by_campaign=True)
        out[f"unlinked{i}"] = q.unlinked_events(store, f)
        out[f"clicks_over_time{i}"] = q.clicks_over_time(store, f)[0]
        for by in ("country", "os", "browser"):
            out[f"clicks_by_{by}{i}"] = q.click_breakdown(store, f, by)
        out[f"top_links{i}"] = q.top_links(store, f)
    return out


def test_the_funnel_on_the_iceberg_store_matches_the_local_store(lake, tmp_path):
    receipts = factory.demo_rows(400, seed=31)
    clicks, replies = demo_events(receipts, seed=31, click_share=0.3, reply_share=0.1)
    local = ReceiptStorage(tmp_path / "local", flush_seconds=3600)
    remote = ReceiptStorage(tmp_path / "collector", flush_seconds=3600,
                            publish=publisher(ICEBERG, tmp_path / "collector"))
    try:
        for part in range(3):  # several flushes: several commits and files per table
            for storage in (local, remote):
                post(storage, receipts[part::3], clicks[part::3], replies[part::3])
                storage.flush()
    finally:
        local.close()
        remote.close()
    expected = funnel_figures(Store(tmp_path / "local"))
    assert expected["funnel0"]["clicked"].iloc[0] > 0 and expected["funnel0"]["replied"].iloc[0] > 0
    assert expected["unlinked0"].iloc[0].sum() > 0

    reader = IcebergStore("lake", tmp_path / "reader")  # computes its derived state from the cache
    assert list(reader.mirror.root.glob("clicks/date=*/i-*.parquet")) and \
        list(reader.mirror.root.glob("replies/date=*/i-*.parquet")), "the events tables' files are cached"
    assert_same_figures(expected, funnel_figures(reader))

    # The maintenance commits the derived state (its mirror absorbed the events, and the commit
    # says up to which snapshot of each events table); a reader on an empty cache adopts it,
    # absorbing none of those event files again: the same figures.
    committed = DerivedPublisher("lake", tmp_path / "collector").run()
    assert committed["committed"] is not None
    summary = derived.derived_table(open_catalog("lake")).current_snapshot().summary.additional_properties
    assert set(derived.parse_events_sequences(summary[derived.EVENTS_SEQUENCE_KEY])) == {"clicks", "replies"}
    mirror = Mirror("lake", cache_dir(tmp_path / "adopter", "lake"))
    adopted = mirror.sync()["adopted"]
    cached = list(mirror.root.glob("*/date=*/*.parquet"))
    event_files = [p for p in cached if p.relative_to(mirror.root).parts[0] != "receipts"]
    assert adopted is not None and adopted["absorbed_files"] == len(cached), "receipt and event files absorbed"
    assert {p.relative_to(mirror.root).parts[0] for p in event_files} == {"clicks", "replies"}
    assert_same_figures(expected, funnel_figures(IcebergStore("lake", tmp_path / "adopter")))

    # A state committed by a dlrlens that recorded no events: its adopter absorbs them again.
    state = derived.committed_state(derived.derived_table(open_catalog("lake")))
    state.events_sequences = {}
    shutil.rmtree(mirror.root)
    again = Mirror("lake", mirror.root)
    again.sync()  # adopts (an empty cache) and absorbs; then adopt that state as an older dlrlens wrote it:
    adopted = again.adopt(derived.derived_table(open_catalog("lake")), state)
    assert adopted["absorbed_files"] == len(cached) - len(event_files)
    assert derive.update_derived(again.root, wait=True)["event_files"] == len(event_files)
    assert_same_figures(expected, funnel_figures(Store(again.root)))


def test_migrate_copies_clicks_and_replies_once(lake, tmp_path):
    source = tmp_path / "local"
    receipts = factory.demo_rows(50, seed=41)
    clicks, replies = demo_events(receipts, seed=41, click_share=0.5, reply_share=0.3)
    factory.write_receipts(source, receipts)
    write_events(source, "clicks", clicks[: len(clicks) // 2], "a")
    write_events(source, "clicks", clicks[len(clicks) // 2:], "b")
    write_events(source, "replies", replies, "a")
    first = migrate(source, "lake")
    event_files = len(list(source.glob("clicks/*/*.parquet"))) + len(list(source.glob("replies/*/*.parquet")))
    assert first.files_by_table[CLICKS_TABLE] + first.files_by_table[REPLIES_TABLE] == event_files
    assert first.copied == first.files and first.already == 0
    again = migrate(source, "lake")
    assert again.copied == 0 and again.already == first.files
    assert Counter(table_column(CLICKS_TABLE, "click_id")) == Counter(c["click_id"] for c in clicks)
    assert Counter(table_column(REPLIES_TABLE, "reply_id")) == Counter(r["reply_id"] for r in replies)
    rows = {name: len(table_column(name, layout.TABLES[name].schema.names[0])) for name in (CLICKS_TABLE, REPLIES_TABLE)}
    assert rows == {CLICKS_TABLE: len(clicks), REPLIES_TABLE: len(replies)}
