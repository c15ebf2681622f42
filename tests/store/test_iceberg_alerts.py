"""Alerts on the Iceberg store (dlrlens.alerts.engine.run_round, dlrlens.store.iceberg.alert_table),
against a real object store (``weed mini``) and pyiceberg's SQL catalog: alerts fire from
receipts committed to the table (read through the mirror, nothing in the evaluators' own
directories); two evaluators racing over the same receipts send one firing and one resolved
notification per episode, each round's loser discarding its own, and leave the state a single
local evaluator would have; a silence added through the dashboard mutes the alert in a
collector's process; a commit refused mid-round (another process committed between import and
commit) sends nothing; the object store down fails the round visibly and the next round after
it returns succeeds.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from dlrlens.alerts import engine
from dlrlens.alerts.rules import parse
from dlrlens.store import alert_state
from dlrlens.store.alert_state import AlertRow, AlertState, NewNotification
from dlrlens.store.backends import parse_store, publisher
from dlrlens.store.iceberg.alert_table import ALERT_TABLE, SharedAlertState, alert_table
from dlrlens.store.iceberg.maintain import TableMaintenance, table_files
from dlrlens.store.iceberg.table import live_data_entries, open_catalog
from dlrlens.store.writer import ReceiptStorage
from tests.support.alert_streams import DROP_RULE, OPS_CHANNEL, stream
from tests.support.factory import write_receipts
from tests.support.servers import wait_until

ICEBERG = parse_store("iceberg:lake")
REPO = Path(__file__).resolve().parents[2]
# Recent (the shared state keeps resolved alerts for RESOLVED_KEPT after they resolve), in the past.
AT = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - 3 * timedelta(hours=1)
HOUR = timedelta(hours=1)
RULES = """
[alerts]
send_timeout = "2s"
send_attempts = 1
""" + OPS_CHANNEL + DROP_RULE
# Firing from AT - 30 min to AT + 1 h (+ 30 min of window), resolved after.
EPISODE = stream("bad", AT - HOUR, AT + HOUR, delivered=0.5) + stream("bad", AT + HOUR, AT + 2 * HOUR, delivered=1.0,
                                                                       prefix="ok")


class Outbox:
    """The ``send=`` of the evaluators: every notification delivered, as (title, body)."""

    def __init__(self):
        self.sent: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def __call__(self, url: str, title: str, body: str, timeout: float) -> None:
        with self._lock:
            self.sent.append((title, body))
        return None

    def titles(self) -> list[str]:
        return [title for title, _ in self.sent]


def commit_receipts(collector: Path, rows: list[dict]) -> None:
    """``rows`` committed to the receipts table by a collector on ``collector``."""
    storage = ReceiptStorage(collector, flush_seconds=3600, publish=publisher(ICEBERG, collector))
    try:
        storage.store(rows)
        storage.flush()
    finally:
        storage.close()


def shared_state(tmp_path: Path) -> AlertState:
    """The table's state now, through a reader's fresh working copy."""
    reader = SharedAlertState("lake", tmp_path / f"reader-{time.monotonic_ns()}")
    reader.refresh()
    return reader.local


def evaluate(data: Path, at: datetime, outbox: Outbox, committer: str | None = None) -> engine.RunResult:
    return engine.evaluate_now(parse(RULES), data, at, choice=ICEBERG, send=outbox, committer=committer or data.name)


@pytest.fixture
def episode(lake, tmp_path):
    commit_receipts(tmp_path / "collector", EPISODE)
    return lake


@pytest.fixture
def each_episode(each_lake, tmp_path):
    """:func:`episode` with each kind of catalog (a REST catalog refuses a stale commit its own way)."""
    commit_receipts(tmp_path / "collector", EPISODE)
    return each_lake


def test_alerts_fire_from_the_receipts_table(episode, tmp_path):
    outbox = Outbox()
    result = evaluate(tmp_path / "c1", AT, outbox)
    assert result.fired == [("drop", "bad")] and not result.refused
    assert outbox.titles() == ["[FIRING] drop: bad"]
    assert not list((tmp_path / "c1").glob("receipts/**/*.parquet")), "read through the mirror, not the directory"
    assert AlertState(tmp_path / "c1").firing_counts() == {"drop": 1}  # the working copy /metrics reads
    state = shared_state(tmp_path)
    assert [(a.rule, a.grp, a.state) for a in state.alerts()] == [("drop", "bad", "firing")]
    assert [(n["kind"], n["status"]) for n in state.history()] == [("firing", "sent")]

    # The round's commit and its outcome's: the maintenance expires the first, deletes its files.
    table = alert_table(open_catalog("lake"))
    assert len(table.metadata.snapshots) == 2 and table.metadata.properties["commit.retry.num-retries"] == "0"
    run = TableMaintenance("lake", table=ALERT_TABLE, retention_seconds=0, orphan_grace_seconds=3600,
                           clock=lambda: time.time() + 7200).run()
    assert run["expired_snapshots"] == 1 and run["orphans_deleted"] > 0 and run["snapshots"] == 1
    assert {path.rsplit("/", 1)[-1] for path in (i.path for i in table_files(alert_table(open_catalog("lake")))[1])
            if "/data/" in path} == {entry.data_file.file_path.rsplit("/", 1)[-1]
                                     for entry in live_data_entries(alert_table(open_catalog("lake")))}
    assert shared_state(tmp_path).rows() == state.rows()


def test_two_evaluators_racing_send_each_notification_once(each_episode, tmp_path, monkeypatch):
    outbox = Outbox()
    together = threading.Barrier(2, timeout=60)
    run_once = engine.run_once

    def evaluated_together(*args, **kwargs):  # both imported the same snapshot: they race to commit
        result = run_once(*args, **kwargs)
        together.wait()
        return result

    monkeypatch.setattr(engine, "run_once", evaluated_together)
    rounds = [AT, AT + timedelta(minutes=1), AT + timedelta(minutes=2), AT + 105 * timedelta(minutes=1),
              AT + 106 * timedelta(minutes=1)]
    for at in rounds:
        results: dict[str, engine.RunResult] = {}
        threads = [threading.Thread(target=lambda name=name: results.update({name: evaluate(tmp_path / name, at,
                                                                                              outbox)}))
                   for name in ("c1", "c2")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert sorted(r.refused for r in results.values()) == [False, True], f"one winner at {at}"
        assert not next(r for r in results.values() if r.refused).deliveries, "the loser sends nothing"
    monkeypatch.setattr(engine, "run_once", run_once)
    assert outbox.titles() == ["[FIRING] drop: bad", "[RESOLVED] drop: bad"]

    local, alone = tmp_path / "local", Outbox()  # one evaluator on the same receipts, local store
    write_receipts(local, EPISODE)
    for at in rounds:
        engine.run_once(parse(RULES), local, at, send=alone)
    assert alone.sent == outbox.sent
    state, expected = shared_state(tmp_path), AlertState(local)

    def alerts(s: AlertState) -> list:
        return [(a.rule, a.grp, a.state, a.since, a.resolved_at, a.announced, a.last_notified, a.value)
                for a in s.alerts()]

    def notes(s: AlertState) -> list:
        return [(n["id"], n["rule"], n["kind"], n["groups"], n["title"], n["body"], n["status"], n["attempts"])
                for n in s.history()]

    assert alerts(state) == alerts(expected) and notes(state) == notes(expected)


def test_a_claimed_notification_is_sent_by_no_other_round_until_its_claim_runs_out(episode, tmp_path, monkeypatch):
    outbox, others = Outbox(), {}
    claim = timedelta(seconds=5)  # c2's whole round must fit in it (about a second here)
    monkeypatch.setattr(engine, "claim_seconds", lambda config: claim)
    deliver = engine.notify.deliver

    def another_round_then_die(config, state, due, send):  # c1 won and claimed the firing notification
        if state.path.parent.name == "c1":
            others["c2"] = evaluate(tmp_path / "c2", AT + timedelta(minutes=1), outbox)
            raise RuntimeError("c1 dies before delivering")
        return deliver(config, state, due, send)

    monkeypatch.setattr(engine.notify, "deliver", another_round_then_die)
    with pytest.raises(RuntimeError, match="dies"):
        evaluate(tmp_path / "c1", AT, outbox)
    assert not others["c2"].refused and others["c2"].deliveries == [] and outbox.sent == []
    assert [n["status"] for n in shared_state(tmp_path).history()] == ["sending"]
    time.sleep(claim.total_seconds())
    later = evaluate(tmp_path / "c2", AT + timedelta(minutes=2), outbox)
    assert [d.ok for d in later.deliveries] == [True], "a claim that ran out is delivered by the next round"
    assert outbox.titles() == ["[FIRING] drop: bad"]
    assert [(n["status"], n["attempts"]) for n in shared_state(tmp_path).history()] == [("sent", 1)]


def test_a_silence_and_a_test_notification_from_the_dashboards_machine(episode, tmp_path, monkeypatch):
    from dashboard.queries.alerts import add_silence, alerts_overview

    monkeypatch.setenv("DLRLENS_STORE", "iceberg:lake")
    silence_id = add_silence(tmp_path / "dashboard", "drop", None, AT - HOUR, AT + HOUR, "maintenance window")
    outbox = Outbox()
    result = evaluate(tmp_path / "c1", AT, outbox)
    assert result.fired == [("drop", "bad")] and result.silenced == [("drop", "bad")]
    assert outbox.sent == []
    overview = alerts_overview(tmp_path / "another-dashboard", AT)  # a fresh copy of the table's state
    assert overview["state_error"] == ""
    assert overview["firing"][["rule", "group", "silenced"]].values.tolist() == [["drop", "bad", True]]
    assert overview["silences"]["id"].tolist() == [silence_id]

    delivery = engine.send_test(parse(RULES), tmp_path / "dashboard", "ops", send=outbox, choice=ICEBERG)
    assert delivery.ok and outbox.titles() == ["[TEST] dlrlens alerts"]
    assert [(n["kind"], n["status"]) for n in shared_state(tmp_path).history()] == [("test", "sent")]


def test_a_commit_refused_mid_round_sends_nothing(episode, tmp_path, monkeypatch):
    outbox = Outbox()
    run_once = engine.run_once
    env = dict(os.environ, DLRLENS_STORE="iceberg:lake")
    script = ("import sys; from datetime import datetime, timezone; from dashboard.queries.alerts import add_silence; "
              "now = datetime.now(timezone.utc); "
              "add_silence(sys.argv[1], 'other', None, now, now.replace(year=now.year + 1), 'from another process')")

    def another_process_commits_meanwhile(*args, **kwargs):  # between this round's import and its commit
        result = run_once(*args, **kwargs)
        done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "dashboard")], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return result

    monkeypatch.setattr(engine, "run_once", another_process_commits_meanwhile)
    refused = evaluate(tmp_path / "c1", AT, outbox)
    monkeypatch.setattr(engine, "run_once", run_once)
    assert refused.refused and refused.fired == [("drop", "bad")] and outbox.sent == [] and not refused.deliveries
    state = shared_state(tmp_path)
    assert [s["rule"] for s in state.silences()] == ["other"] and state.alerts() == [] and state.history() == []
    assert AlertState(tmp_path / "c1").alerts() == [], "the working copy holds the winner's state"

    again = evaluate(tmp_path / "c1", AT + timedelta(minutes=1), outbox)
    assert not again.refused and outbox.titles() == ["[FIRING] drop: bad"]


def test_the_object_store_down_fails_the_round_visibly_and_the_next_one_works(episode, tmp_path, caplog):
    now = datetime.now(timezone.utc)
    commit_receipts(tmp_path / "collector", stream("now", now - HOUR, now, delivered=0.5))
    alerts_file = tmp_path / "alerts.toml"
    alerts_file.write_text(RULES)
    data, outbox, stop = tmp_path / "c1", Outbox(), threading.Event()
    alert_table(open_catalog("lake"))  # as a first round would have made it
    episode.stop()
    caplog.set_level(logging.INFO, logger="dlrlens.alerts")
    worker = threading.Thread(target=engine.loop, args=(data, alerts_file, 0.5, stop),
                              kwargs={"choice": ICEBERG, "send": outbox}, daemon=True)
    worker.start()
    try:
        wait_until(lambda: AlertState(data).meta().get("alerts_round_error"), 60, interval=0.2,
                   what="the failed round's error in the working copy")
        assert "event=alerts_failed" in caplog.text and outbox.sent == []
        episode.start()
        wait_until(lambda: outbox.sent, 60, interval=0.2, what="the firing notification after the store came back")
    finally:
        stop.set()
        worker.join(30)
    assert outbox.titles() == ["[FIRING] drop: now"]
    assert "alerts_round_error" not in AlertState(data).meta(), "the next round's import cleared it"
    assert [(n["kind"], n["status"]) for n in shared_state(tmp_path).history()] == [("firing", "sent")]


def test_the_export_keeps_a_bounded_history_and_imports_back_exactly(tmp_path, monkeypatch):
    monkeypatch.setattr(alert_state, "HISTORY_PER_RULE", 3)
    state = AlertState(tmp_path / "a")
    now = datetime.now(timezone.utc)
    state.apply([AlertRow("drop", "old", "resolved", now - 30 * HOUR, resolved_at=now - 9 * 24 * HOUR),
                 AlertRow("drop", "recent", "resolved", now - 3 * HOUR, resolved_at=now - HOUR),
                 AlertRow("drop", "bad", "firing", now - HOUR, announced=True, detail={"summary": "50%"})], [], now,
                {"rules": '["drop"]', "alerts_round_error": "only this process's"})
    ids = state.apply([], [NewNotification("drop", "firing", "ops", ["bad"], f"t{n}", "b") for n in range(6)], now)
    for nid in ids[:5]:
        state.record_attempt(nid, ok=True, at=now)
    state.add_silence("drop", None, now - HOUR, now + HOUR, "in force")
    for n in range(3):
        state.end_silence(state.add_silence("drop", "bad", now - HOUR, now + HOUR, f"ended {n}"), now)

    rows = state.rows()
    copy = AlertState(tmp_path / "b")
    copy.replace(rows)
    assert copy.rows() == rows, "an import exports back exactly"
    assert [a.grp for a in copy.alerts()] == ["bad", "recent"], "resolved more than RESOLVED_KEPT ago: dropped"
    assert copy.alerts()[0] == state.alerts()[0]
    kept = [(n["id"], n["status"]) for n in copy.history()]
    assert kept == [(ids[5], "pending"), (ids[4], "sent"), (ids[3], "sent"), (ids[2], "sent")], \
        "every notification still to deliver, the latest 3 done"
    assert [s["comment"] for s in copy.silences()] == ["ended 2", "ended 1", "ended 0", "in force"]
    assert copy.meta() == {"rules": '["drop"]'}, "this process's own meta is not exported"
    assert copy.apply([], [NewNotification("drop", "repeat", "ops", ["bad"], "t", "b")], now) == [ids[5] + 1]
    with pytest.raises(ValueError, match="unknown kind"):
        copy.replace([("nonsense", "k", "{}")])
    with pytest.raises(ValueError, match="columns this dlrlens does not know: extra"):
        copy.replace([("meta", "a", '"b"'), ("silence", "1", '{"id": 1, "extra": 2}')])
    assert copy.meta() == {"rules": '["drop"]'}, "a refused import changes nothing"
