"""Real delivery through apprise to a JSON webhook sink and an SMTP server (aiosmtpd) on
loopback, through the real command line (each ``dlrlens alerts`` run is a new process):
restart safety, a failing channel retried with back-off and reported while the other still
gets its message, and ``dlrlens alerts test``."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from dlrlens.alerts import engine, notify
from dlrlens.alerts.rules import parse
from dlrlens.store.alert_state import AlertState
from tests.support.alert_streams import stream
from tests.support.factory import utc, write_receipts
from tests.support.servers import free_port
from tests.support.sinks import SmtpSink, WebhookSink

REPO = Path(__file__).resolve().parents[2]
AT = utc(2026, 11, 20, 12, 0)
HOUR = timedelta(hours=1)


def alerts_file(tmp_path: Path, channels: dict[str, str], notify_names: list[str], extra: str = "") -> Path:
    text = '[alerts]\ndashboard_url = "http://dash.test"\nsend_timeout = "3s"\nsend_attempts = 3\n' + extra
    for name, url in channels.items():
        text += f'[[notify]]\nname = "{name}"\nurl = "{url}"\n'
    text += ('[[rule]]\nname = "drop"\nkind = "delivery_rate"\nby = "campaign"\nwindow = "30m"\n'
             f'min_messages = 20\nbelow = 0.85\nnotify = {notify_names!r}\n'.replace("'", '"'))
    path = tmp_path / "alerts.toml"
    path.write_text(text)
    return path


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DLRLENS_")}
    return subprocess.run([sys.executable, "-m", "dlrlens", "alerts", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_webhook_and_email_receive_firing_and_resolved_across_process_restarts(tmp_path):
    data = tmp_path / "data"
    write_receipts(data, stream("bad", AT - HOUR, AT + HOUR, delivered=0.5)
                   + stream("bad", AT + HOUR, AT + 2 * HOUR, delivered=1.0, prefix="ok"))
    with WebhookSink() as hook, SmtpSink() as smtp:
        path = alerts_file(tmp_path, {"hook": hook.url(), "mail": smtp.url()}, ["hook", "mail"])
        first = cli("check", "--data", str(data), "--file", str(path), "--at", "2026-11-20T12:00:00Z")
        assert first.returncode == 0, first.stderr
        assert "fired: drop [bad]" in first.stdout and "notification to hook: sent" in first.stdout
        # New processes while it stays firing: nothing sent again, nothing lost.
        for minute in (1, 2, 3):
            again = cli("check", "--data", str(data), "--file", str(path), "--at", f"2026-11-20T12:0{minute}:00Z")
            assert again.returncode == 0 and "fired:" not in again.stdout and "notification to" not in again.stdout
            assert "firing: drop [bad]" in again.stdout
        resolved = cli("check", "--data", str(data), "--file", str(path), "--at", "2026-11-20T13:45:00Z")
        assert "resolved: drop [bad]" in resolved.stdout, resolved.stdout
    assert [d["title"] for d in hook.received] == ["[FIRING] drop: bad", "[RESOLVED] drop: bad"]
    assert "http://dash.test/campaigns?range=24h&campaign=bad" in hook.received[0]["message"]
    assert [m["subject"] for m in smtp.messages] == ["[FIRING] drop: bad", "[RESOLVED] drop: bad"]
    assert smtp.messages[0]["to"] == ["oncall@example.com"] and "delivery rate" in smtp.messages[0]["body"]


@pytest.mark.parametrize("failure", ["http 500", "connection refused"])
def test_a_failing_channel_is_retried_with_back_off_and_reported_while_the_other_gets_its_message(
        tmp_path, monkeypatch, failure):
    monkeypatch.setattr(notify, "BACKOFF_SECONDS", 0.3)
    data = tmp_path / "data"
    write_receipts(data, stream("bad", AT - HOUR, AT + HOUR, delivered=0.5))
    with WebhookSink() as good, WebhookSink(status=500) as broken:
        bad_url = broken.url() if failure == "http 500" else f"json://127.0.0.1:{free_port()}/hook"
        cfg = parse(alerts_file(tmp_path, {"good": good.url(), "bad": bad_url}, ["bad", "good"]).read_text())
        result = engine.run_once(cfg, data, AT)
        by_channel = {d.channel: d for d in result.deliveries}
        assert by_channel["good"].ok and len(good.received) == 1
        assert not by_channel["bad"].ok and by_channel["bad"].attempts == 3
        # The good channel did not wait for the failing one's retries.
        assert by_channel["good"].seconds < by_channel["bad"].seconds
        if failure == "http 500":
            gaps = [b[0] - a[0] for a, b in zip(broken.attempts, broken.attempts[1:])]
            assert len(broken.attempts) == 3 and 0.25 < gaps[0] < gaps[1] and gaps[1] > 0.55  # 0.3 s, then 0.6 s
            assert "error=500" in by_channel["bad"].error
        status = {c["channel"]: c for c in AlertState(data).channel_status()}
        assert status["bad"]["failing"] and status["bad"]["failing_notifications"] == 1
        assert not status["good"]["failing"] and status["good"]["sent"] == 1
        (queued,) = [n for n in AlertState(data).history() if n["channel"] == "bad"]
        assert queued["status"] == "retrying" and queued["next_attempt_at"] is not None
        # The channel comes back: the next evaluation after the retry time delivers it once.
        broken.status = 200
        later = queued["next_attempt_at"] + timedelta(seconds=1)
        if failure == "http 500":
            delivered = notify.deliver_due(cfg, AlertState(data), now=later)
            assert [d.ok for d in delivered] == [True] and [d["title"] for d in broken.received] == [
                "[FIRING] drop: bad"]
            assert not {c["channel"]: c for c in AlertState(data).channel_status()}["bad"]["failing"]


def test_a_notification_is_given_up_after_retry_for(tmp_path, monkeypatch):
    monkeypatch.setattr(notify, "BACKOFF_SECONDS", 0.0)
    data = tmp_path / "data"
    write_receipts(data, stream("bad", AT - HOUR, AT + HOUR, delivered=0.5))
    with WebhookSink(status=503) as broken:
        cfg = parse(alerts_file(tmp_path, {"bad": broken.url()}, ["bad"], extra='retry_for = "0s"\n').read_text())
        engine.run_once(cfg, data, AT)
    (row,) = AlertState(data).history()
    assert row["status"] == "failed" and row["attempts"] == 1 and "error=503" in row["last_error"]


def test_alerts_test_command(tmp_path):
    with WebhookSink() as hook, WebhookSink(status=500) as broken:
        path = alerts_file(tmp_path, {"hook": hook.url(), "broken": broken.url()}, ["hook"])
        ok = cli("test", "hook", "--data", str(tmp_path / "data"), "--file", str(path))
        assert ok.returncode == 0 and "sent a test notification to 'hook'" in ok.stdout
        assert hook.received[0]["title"] == "[TEST] dlrlens alerts"
        failed = cli("test", "broken", "--data", str(tmp_path / "data"), "--file", str(path))
        assert failed.returncode == 1
        assert "delivery to 'broken' failed after 3 attempts" in failed.stderr and "error=500" in failed.stderr
        unknown = cli("test", "pager", "--data", str(tmp_path / "data"), "--file", str(path))
        assert unknown.returncode == 2 and "no [[notify]] channel named 'pager'" in unknown.stderr
        assert "known: hook, broken" in unknown.stderr


def test_a_wrong_file_is_refused_by_the_command(tmp_path):
    path = tmp_path / "alerts.toml"
    path.write_text('[[notify]]\nname = "ops"\nurl = "json://x/y"\n[[rule]]\nname = "r"\nkind = "delivery_rate"\n'
                    'below = 1.5\nnotify = ["ops"]\n')
    result = cli("check", "--data", str(tmp_path / "data"), "--file", str(path))
    assert result.returncode == 2
    assert 'line 7, rule "r" key "below"' in result.stderr
    assert not (tmp_path / "data" / "alerts.sqlite").exists()  # nothing applied


def test_check_on_a_missing_data_directory_is_an_error_and_creates_nothing(tmp_path):
    path = alerts_file(tmp_path, {"hook": "json://127.0.0.1:9/x"}, ["hook"])
    result = cli("check", "--data", str(tmp_path / "nowhere"), "--file", str(path))
    assert result.returncode == 2
    assert f"no data directory {tmp_path / 'nowhere'}" in result.stderr
    assert not (tmp_path / "nowhere").exists()
