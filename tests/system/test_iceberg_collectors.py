"""Real collectors (gunicorn, 2 workers) writing to the Iceberg store on a real object store
(``weed mini`` on loopback) through pyiceberg's SQL catalog: a SIGKILL mid-stream (then clicks
and replies posted to the restarted collector reach their tables once), the object store
stopped mid-stream, two collectors on one table (their maintenance processes expiring the
table's snapshots and committing the derived state meanwhile). Each posted receipt is its own message
(tests/support/reliability.Poster), so "exactly once" means: every id that got a 200 is in
the table once, and the dashboard's KPIs count each once.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from dlrlens.store.iceberg.table import open_catalog, written_table
from dlrlens.store.status import maintenance_status
from tests.support.events import click, reply
from tests.support.lake import derived_message_ids, table_column
from tests.support.reliability import Poster, kpi_messages
from tests.support.seaweed import object_store
from tests.support.servers import running_collector, start_collector, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def lake(tmp_path, monkeypatch):
    with object_store(tmp_path / "s3") as store:
        env = store.catalog_env("lake", tmp_path / "catalog.db")
        for name, value in env.items():
            monkeypatch.setenv(name, value)  # for the test's own reads
        store.collector_env = dict(env, DLRLENS_STORE="iceberg:lake")  # otherwise the defaults
        yield store


def assert_exactly_once(acked: set[str], reader_dir: Path) -> None:
    ids = table_column("delivery_message_id")
    assert not acked - set(ids), f"{len(acked - set(ids))} acknowledged receipts missing"
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} rows committed twice"
    assert kpi_messages(reader_dir, "iceberg:lake") == len(set(ids))


def metric(url: str, name: str) -> float:
    text = requests.get(url + "/metrics", timeout=5).text
    return float(re.search(rf"^{name} (\S+)$", text, re.MULTILINE)[1])


def killed_mid_stream(lake, data: Path, prefix: str, acked: int, threads: int, before_kill=None) -> set[str]:
    """A collector on ``data`` takes posts until ``acked`` of them got a 200, then (after
    ``before_kill(collector)``, when given) is SIGKILLed, master and workers, posts still coming:
    the acknowledged message ids."""
    collector = start_collector(data, workers=2, flush_seconds=0.3, env=lake.collector_env)
    try:
        with Poster(collector.dlr, prefix, threads=threads) as poster:
            wait_until(lambda: len(poster.acked) >= acked, 60, what="acknowledged receipts")
            if before_kill is not None:
                before_kill(collector)
            collector.kill()  # commits in flight, segments not yet committed
    finally:
        collector.stop()
    return set(poster.acked)


def test_a_sigkill_mid_stream_loses_and_doubles_nothing(lake, tmp_path):
    data = tmp_path / "collector"
    acked = killed_mid_stream(lake, data, "kill", 300, threads=3)
    clicks = [click(f"kill-{n}", batch_id="kill") for n in range(20)]
    replies = [reply(f"reply-{n}", f"kill-{n}", "STOP" if n % 2 else "Thanks") for n in range(10)]
    # The restart replays every log (skipping segments already committed); the stop flushes.
    with running_collector(data, workers=2, flush_seconds=0.3, env=lake.collector_env) as collector:
        for start in range(0, 20, 5):  # several requests: either worker, several segments
            assert requests.post(collector.url + "/click", json=clicks[start:start + 5], timeout=10).status_code == 200
            assert requests.post(collector.url + "/incoming", json=replies[start // 2:start // 2 + 3],
                                 timeout=10).status_code == 200
    assert not list(data.glob("wal/w*/*.wal")), "every segment committed and removed"
    assert_exactly_once(acked, tmp_path / "reader")
    catalog = open_catalog("lake")
    clicked = written_table(catalog, "clicks", create=False).scan().to_arrow()["message_id"].to_pylist()
    assert Counter(clicked) == Counter(c["messageId"] for c in clicks), "each click once in the clicks table"
    replied = written_table(catalog, "replies", create=False).scan().to_arrow()["reply_id"].to_pylist()
    posted = [r["id"] for start in range(0, 20, 5) for r in replies[start // 2:start // 2 + 3]]
    assert Counter(replied) == Counter(posted), "each posted reply once in the replies table"
    assert not list(data.glob("clicks/*/*.parquet")) and not list(data.glob("replies/*/*.parquet"))


def test_the_object_store_down_for_ten_seconds_mid_stream(lake, tmp_path):
    data = tmp_path / "collector"
    with running_collector(data, workers=2, flush_seconds=1.0, env=lake.collector_env) as collector:
        with Poster(collector.dlr, "outage", threads=2) as poster:
            wait_until(lambda: len(poster.acked) >= 100, 60, what="acknowledged receipts")
            lake.stop()
            down_at, acked_before = time.monotonic(), len(poster.acked)

            def degraded():
                answer = requests.get(collector.url + "/healthz", timeout=5)
                return answer.json() if answer.status_code == 200 and answer.json()["status"] == "degraded" else None

            health = wait_until(degraded, 15, what="/healthz degraded with a 200")
            assert health["store"]["last_error"] and health["store"]["unpublished"]["receipts"] > 0
            time.sleep(max(0.0, 10 - (time.monotonic() - down_at)))
            assert len(poster.acked) > acked_before + 50, "acknowledged from the local log while down"
            assert metric(collector.url, "dlrlens_store_backlog_receipts") > 0
            assert metric(collector.url, "dlrlens_store_backlog_age_seconds") >= 5
            lake.start()
            time.sleep(1)
        acked = set(poster.acked)

        def caught_up():
            answer = requests.get(collector.url + "/healthz", timeout=5).json()
            return answer["status"] == "ok" and answer["store"]["unpublished"]["segments"] <= 1
        wait_until(caught_up, 90, interval=0.5, what="the collector catching up")
    assert not list(data.glob("wal/w*/*.wal"))
    assert_exactly_once(acked, tmp_path / "reader")


def test_two_collectors_on_one_table(lake, tmp_path):
    # Both collectors' maintenance processes expire the table's snapshots while both commit: no leader.
    env = dict(lake.collector_env, DLRLENS_ICEBERG_MAINTENANCE_SECONDS="1", DLRLENS_ICEBERG_SNAPSHOT_RETENTION="10s")
    data = (tmp_path / "one", tmp_path / "two")

    def expired() -> int:
        return sum(((maintenance_status(d) or {}).get("iceberg") or {}).get("totals", {}).get("expired_snapshots", 0)
                   for d in data)

    def derived_commits() -> int:  # each maintenance round commits (or adopts) the derived state
        return min(((maintenance_status(d) or {}).get("runs") or {}).get("iceberg_derived", 0) for d in data)

    with running_collector(data[0], workers=2, flush_seconds=0.3, env=env) as one, \
            running_collector(data[1], workers=2, flush_seconds=0.3, env=env) as two:
        with Poster(one.dlr, "one", threads=2) as first, Poster(two.dlr, "two", threads=2) as second:
            wait_until(lambda: len(first.acked) >= 300 and len(second.acked) >= 300 and expired()
                       and derived_commits() >= 2, 90,
                       what="acknowledged receipts on both, snapshots expired, derived state committed")
    acked = first.acked | second.acked
    # Both maintenance processes committed the derived state meanwhile: each message at most once.
    messages = derived_message_ids()
    assert messages and len(messages) == len(set(messages)), "a message committed twice to the derived table"
    assert set(messages) <= set(table_column("delivery_message_id"))
    assert_exactly_once(acked, tmp_path / "reader")  # the reader adopts that state, then absorbs the rest
    for directory in data:
        assert not list(directory.glob("wal/w*/*.wal"))
        assert maintenance_status(directory)["runs"]["iceberg"] >= 1


def test_a_collector_restarted_while_the_store_is_down_answers_then_catches_up(lake, tmp_path):
    # A backlog the collector could not publish (the store down), a SIGKILL, a restart while the
    # store is still down: it answers from its local log at once and replays in the background.
    data = tmp_path / "collector"

    def store_down_for_a_while(collector):
        lake.stop()
        wait_until(lambda: metric(collector.url, "dlrlens_store_backlog_segments") >= 6, 60,
                   interval=0.3, what="segments waiting in the logs")

    before = killed_mid_stream(lake, data, "backlog", 50, threads=2, before_kill=store_down_for_a_while)
    left_behind = len(list(data.glob("wal/w*/*.wal")))
    assert left_behind >= 6
    restarting = time.monotonic()
    collector = start_collector(data, workers=2, flush_seconds=0.3, env=lake.collector_env)
    try:
        answer = requests.post(collector.dlr, json={"deliveryMessageId": "after-restart", "created":
                                                    "2026-11-20T10:00:00.000+00:00", "status": "DELIVERED",
                                                    "statusCode": 1}, timeout=10)
        answered_after = time.monotonic() - restarting
        assert answer.status_code == 200, answer.text
        # Whichever of the 2 workers answers (one may have had nothing of its own to replay), it
        # answers for the collector: catching up while the store is down (the backlog cannot go).
        seen_slots = set()
        for _ in range(12):
            health = requests.get(collector.url + "/healthz", timeout=5)
            doc = health.json()
            assert health.status_code == 200 and doc["status"] == "degraded" and doc["catching_up"], doc
            assert doc["catching_up_slots"] and doc["catching_up_since"], doc
            seen_slots.add(doc["this_worker"]["slot"])
            assert metric(collector.url, "dlrlens_catching_up") == 1
        print(f"answered by the workers of slots {sorted(seen_slots)}; still replaying: {doc['catching_up_slots']}")
        assert doc["store"]["unpublished"]["segments"] >= left_behind, "the backlog is still in the logs"
        assert metric(collector.url, "dlrlens_store_backlog_age_seconds") > 0
        print(f"first 200 {answered_after:.1f} s after the restart, {left_behind} segments waiting")
        with Poster(collector.dlr, "after", threads=2) as after:
            wait_until(lambda: len(after.acked) >= 30, 60, what="acknowledged while the store is down")
            lake.start()

            def caught_up():
                doc = requests.get(collector.url + "/healthz", timeout=5).json()
                return doc["status"] == "ok" and not doc["catching_up"]
            wait_until(caught_up, 90, interval=0.5, what="the collector catching up")
            # Then every worker says so (none answers for its own slot only).
            assert not any(requests.get(collector.url + "/healthz", timeout=5).json()["catching_up"]
                           for _ in range(6))
            assert metric(collector.url, "dlrlens_catching_up") == 0
    finally:
        collector.stop()
    assert not list(data.glob("wal/w*/*.wal"))
    assert_exactly_once(before | after.acked | {"after-restart"}, tmp_path / "reader")
