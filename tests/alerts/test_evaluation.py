"""Evaluation over generated receipt streams (tests/support/alert_streams.py), at fixed times
(``at``): what fires, what resolves, and which notifications go out (grouping, repeat
interval, silences), with a recording sender in place of apprise (real channels:
test_delivery.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from dashboard import queries
from dlrlens.alerts import engine
from dlrlens.alerts.rules import parse
from dlrlens.store.alert_state import AlertState
from dlrlens.store.reader import Store
from dlrlens.store.rejected import RejectedBodies
from tests.support.alert_streams import DROP_RULE, daily, stream
from tests.support.factory import receipt, utc, write_receipts

AT = utc(2026, 11, 20, 12, 0)
HOUR = timedelta(hours=1)


class Recorder:
    """A sender that records (url, title, body) and answers success."""

    def __init__(self):
        self.sent: list[tuple[str, str, str]] = []

    def __call__(self, url, title, body, timeout):
        self.sent.append((url, title, body))
        return None

    def titles(self) -> list[str]:
        return [title for _, title, _ in self.sent]


def config(rules: str, repeat: str = "4h"):
    return parse(f"""
[alerts]
dashboard_url = "https://dash.example.com"
repeat_interval = "{repeat}"
[[notify]]
name = "ops"
url = "json://ops.invalid/hook"
{rules}""")


DROP = DROP_RULE


def run(cfg, data, at, recorder):
    return engine.run_once(cfg, data, at, send=recorder)


def test_a_drop_in_one_campaign_fires_once_for_it_and_resolves_once_after_recovery(tmp_path):
    rows = stream("good", AT - HOUR, AT + 2 * HOUR, delivered=0.97)
    rows += stream("bad", AT - HOUR, AT, delivered=0.97) + stream("bad", AT, AT + HOUR, delivered=0.5, prefix="bad-x")
    rows += stream("bad", AT + HOUR, AT + 2 * HOUR, delivered=0.97, prefix="bad-y")
    write_receipts(tmp_path, rows)
    cfg, sent = config(DROP), Recorder()
    for minute in range(0, 121, 5):  # an evaluation every 5 minutes for two hours
        run(cfg, tmp_path, AT + timedelta(minutes=minute), sent)
    assert sent.titles() == ["[FIRING] drop: bad", "[RESOLVED] drop: bad"]
    firing_body = sent.sent[0][2]
    assert "campaign bad: delivery rate" in firing_body and "under the floor 85.0%" in firing_body
    assert "https://dash.example.com/campaigns?range=24h&campaign=bad" in firing_body
    rows = {(a.rule, a.grp): a for a in AlertState(tmp_path).alerts()}
    assert rows[("drop", "bad")].state == "resolved" and ("drop", "good") not in rows


def test_the_rate_is_the_dashboards_delivery_rate(tmp_path):
    """No second definition: the alert's figure equals the KPI of the same messages."""
    write_receipts(tmp_path, stream("c", AT - HOUR, AT, delivered=0.6, pending=0.2))
    result = engine.run_once(config(DROP), tmp_path, AT, deliver=False)
    (finding,) = result.evaluation.findings
    with Store(tmp_path) as store:
        kpis = queries.kpis(store, queries.Filters(start=AT - timedelta(minutes=30), end=AT, campaigns=("c",)))
    assert finding.value == pytest.approx(float(kpis["delivery_rate"].iloc[0]), abs=1e-12)
    assert finding.messages == int(kpis["messages"].iloc[0] - kpis["pending"].iloc[0])


def test_low_volume_never_fires(tmp_path):
    # 19 messages with an outcome in the window, every one failed: under min_messages (20).
    write_receipts(tmp_path, stream("tiny", AT - timedelta(minutes=19), AT, per_minute=1, delivered=0.0))
    sent = Recorder()
    for minute in range(0, 31, 1):
        run(config(DROP), tmp_path, AT + timedelta(minutes=minute), sent)
    assert sent.sent == []


BASELINE = """
[[rule]]
name = "vs baseline"
kind = "delivery_rate"
window = "30m"
min_messages = 20
drop_vs_baseline = 0.10
baseline_days = 3
notify = ["ops"]
"""


@pytest.mark.parametrize("days, fires", [(2, False), (3, True)])
def test_the_baseline_needs_enough_days_of_history(tmp_path, days, fires):
    rows = daily("c", AT, days, timedelta(minutes=40), delivered=0.97)
    rows += stream("c", AT - timedelta(minutes=40), AT, delivered=0.80, prefix="now")  # 17 points down
    write_receipts(tmp_path, rows)
    result = engine.run_once(config(BASELINE), tmp_path, AT, deliver=False)
    assert bool(result.fired) is fires
    if fires:
        summary = result.evaluation.findings[0].summary
        assert "; baseline 96.7% (same 30m of 3 of the previous 7 days, 180 messages)" in summary, summary


def test_a_steady_rate_under_no_floor_does_not_fire_against_its_own_baseline(tmp_path):
    rows = daily("c", AT, 7, timedelta(minutes=40), delivered=0.80) + stream("c", AT - HOUR, AT, delivered=0.80,
                                                                               prefix="now")
    write_receipts(tmp_path, rows)
    assert engine.run_once(config(BASELINE), tmp_path, AT, deliver=False).fired == []


def test_campaigns_falling_together_make_one_notification(tmp_path):
    rows = []
    for name in ("a", "b", "c"):
        rows += stream(name, AT - HOUR, AT, delivered=0.5)
    rows += stream("fine", AT - HOUR, AT, delivered=1.0)
    write_receipts(tmp_path, rows)
    sent = Recorder()
    run(config(DROP), tmp_path, AT, sent)
    assert sent.titles() == ["[FIRING] drop: 3 campaign"]
    body = sent.sent[0][2]
    assert all(f"campaign {name}: delivery rate" in body for name in ("a", "b", "c")) and "fine" not in body


def test_repeat_interval_while_firing(tmp_path):
    write_receipts(tmp_path, stream("bad", AT - HOUR, AT + 3 * HOUR, delivered=0.5))
    sent = Recorder()
    for minute in range(0, 150, 10):
        run(config(DROP, repeat="1h"), tmp_path, AT + timedelta(minutes=minute), sent)
    assert sent.titles() == ["[FIRING] drop: bad", "[STILL FIRING] drop: bad", "[STILL FIRING] drop: bad"]
    assert "repeated every 1h while firing" in sent.sent[1][2]


def test_a_silence_mutes_notifications_not_the_state(tmp_path):
    write_receipts(tmp_path, stream("bad", AT - HOUR, AT + 2 * HOUR, delivered=0.5)
                   + stream("other", AT - HOUR, AT + 2 * HOUR, delivered=0.5))
    state = AlertState(tmp_path)
    state.add_silence("drop", "bad", AT - timedelta(minutes=1), AT + timedelta(minutes=30), "known outage")
    sent = Recorder()
    result = run(config(DROP), tmp_path, AT, sent)
    assert result.silenced == [("drop", "bad")]
    assert sent.titles() == ["[FIRING] drop: other"]  # the other campaign is not muted
    assert {a.grp for a in state.alerts(state="firing")} == {"bad", "other"}
    run(config(DROP), tmp_path, AT + timedelta(minutes=20), sent)
    assert len(sent.sent) == 1
    run(config(DROP), tmp_path, AT + timedelta(minutes=31), sent)  # the silence is over, still firing
    assert sent.titles() == ["[FIRING] drop: other", "[FIRING] drop: bad"]


def test_a_rule_wide_silence_resolves_quietly(tmp_path):
    write_receipts(tmp_path, stream("bad", AT - HOUR, AT, delivered=0.5))
    AlertState(tmp_path).add_silence("drop", None, AT - HOUR, AT + 3 * HOUR)
    sent = Recorder()
    run(config(DROP), tmp_path, AT, sent)
    result = run(config(DROP), tmp_path, AT + 2 * HOUR, sent)
    assert result.resolved == [("drop", "bad")] and sent.sent == []


SILENCE = """
[[rule]]
name = "quiet"
kind = "receipt_silence"
window = "10m"
min_messages = 5
notify = ["ops"]
"""


def test_a_receipt_silence_fires_once_and_resolves_when_receipts_return(tmp_path):
    write_receipts(tmp_path, stream("c", AT - HOUR, AT, per_minute=2)
                   + stream("c", AT + HOUR, AT + HOUR + timedelta(minutes=5), prefix="back"))
    sent = Recorder()
    for minute in range(0, 71, 1):  # silent from AT to AT+1h, every minute
        run(config(SILENCE), tmp_path, AT + timedelta(minutes=minute), sent)
    assert sent.titles() == ["[FIRING] quiet: all", "[RESOLVED] quiet: all"]
    assert "no receipt received in the last 10m" in sent.sent[0][2]


def test_no_silence_alert_without_expected_traffic(tmp_path):
    write_receipts(tmp_path, stream("c", AT - HOUR, AT - 50 * timedelta(minutes=1), per_minute=2))
    sent = Recorder()
    run(config(SILENCE), tmp_path, AT, sent)  # the 10 minutes before were quiet too: nothing expected
    assert sent.sent == []


PENDING = """
[[rule]]
name = "stuck"
kind = "pending_age"
by = "campaign"
older_than = "30m"
window = "1d"
min_messages = 10
notify = ["ops"]
"""


def test_pending_age_counts_from_each_messages_own_sent_time(tmp_path):
    # 'old': 40 pending messages sent 40-60 minutes ago; 'young': 40 sent in the last 20 minutes.
    rows = stream("old", AT - HOUR, AT - timedelta(minutes=40), per_minute=2, pending=1.0)
    rows += stream("young", AT - timedelta(minutes=20), AT, per_minute=2, pending=1.0)
    write_receipts(tmp_path, rows)
    result = engine.run_once(config(PENDING), tmp_path, AT, deliver=False)
    assert [(f.grp, f.messages) for f in result.evaluation.findings] == [("old", 40)]
    assert "pending for more than 30m (stuck at ACCEPTED 40)" in result.evaluation.findings[0].summary
    later = engine.run_once(config(PENDING), tmp_path, AT + timedelta(minutes=15), deliver=False)
    assert later.fired == [("stuck", "young")]


def test_pending_age_by_label(tmp_path):
    rows = stream("c", AT - HOUR, AT - timedelta(minutes=40), pending=1.0, labels={"team": "retail"})
    write_receipts(tmp_path, rows)
    cfg = config(PENDING.replace('by = "campaign"', 'by = "label:team"'))
    result = engine.run_once(cfg, tmp_path, AT, deliver=False)
    (finding,) = result.evaluation.findings
    assert finding.grp == "retail" and engine.dashboard_link(cfg, finding) == (
        "https://dash.example.com/?range=24h&outcome=pending&label=team%3Dretail")


def test_unknown_statuses_fire_per_status(tmp_path):
    rows = stream("c", AT - HOUR, AT)
    rows += [receipt(f"m{i}", "WEIRD_NEW", AT - timedelta(minutes=5), received_at=AT - timedelta(minutes=5))
             for i in range(3)]
    write_receipts(tmp_path, rows)
    cfg = config('[[rule]]\nname = "unknown"\nkind = "unknown_status"\nnotify = ["ops"]\n')
    result = engine.run_once(cfg, tmp_path, AT, deliver=False)
    assert result.fired == [("unknown", "WEIRD_NEW")]
    assert "status WEIRD_NEW, not in Mobivate's status table: 3 receipts" in result.evaluation.findings[0].summary


def test_refused_requests_fire_per_reason(tmp_path):
    from datetime import datetime, timezone

    bodies = RejectedBodies(tmp_path, keep=100, max_bytes=100)
    for _ in range(6):
        bodies.keep_body("unauthorized", b"{}", {"status": 401})
    bodies.keep_body("invalid_json", b"x", {"status": 400})
    cfg = config('[[rule]]\nname = "refused"\nkind = "rejected_requests"\nmin_messages = 5\nnotify = ["ops"]\n')
    now = datetime.now(timezone.utc) + timedelta(seconds=1)
    result = engine.run_once(cfg, tmp_path, now, deliver=False)
    assert result.fired == [("refused", "unauthorized")]
    assert "6 webhook requests refused as unauthorized" in result.evaluation.findings[0].summary
    assert "rotated secret" in result.evaluation.findings[0].summary


def test_a_failing_rule_neither_fires_nor_resolves(tmp_path, monkeypatch):
    write_receipts(tmp_path, stream("bad", AT - HOUR, AT + HOUR, delivered=0.5))
    sent = Recorder()
    run(config(DROP), tmp_path, AT, sent)

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")
    monkeypatch.setitem(engine.evaluate.__globals__["KIND_EVALUATORS"], "delivery_rate", broken)
    result = run(config(DROP), tmp_path, AT + timedelta(minutes=5), sent)
    assert result.evaluation.errors == {"drop": "RuntimeError: disk on fire"}
    assert result.resolved == [] and sent.titles() == ["[FIRING] drop: bad"]
    assert AlertState(tmp_path).alerts(state="firing")[0].grp == "bad"
    assert "disk on fire" in AlertState(tmp_path).meta()["last_evaluation_errors"]


def test_a_crash_between_commit_and_delivery_loses_and_repeats_nothing(tmp_path):
    """The state change and its notification are one transaction: a process that dies before
    delivering leaves it queued; the next one sends it once and does not fire again."""
    write_receipts(tmp_path, stream("bad", AT - HOUR, AT + HOUR, delivered=0.5))
    engine.run_once(config(DROP), tmp_path, AT, deliver=False)  # "crashed" before delivery
    sent = Recorder()
    result = run(config(DROP), tmp_path, AT + timedelta(minutes=1), sent)  # a new process
    assert result.fired == [] and sent.titles() == ["[FIRING] drop: bad"]
    run(config(DROP), tmp_path, AT + timedelta(minutes=2), sent)
    assert sent.titles() == ["[FIRING] drop: bad"]
    (row,) = AlertState(tmp_path).history()
    assert row["status"] == "sent" and row["attempts"] == 1
