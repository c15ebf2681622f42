"""The Alerts page (in-process, ``AppTest``) over a real evaluation's state: firing alerts,
rules, the silence form writing a silence the next evaluation honours, channel failures on
the Alerts and Data health pages, hostile names shown as text."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dashboard import queries  # noqa: F401 (this clone's dashboard, before AppTest imports one)
from dlrlens.alerts import engine
from dlrlens.alerts.rules import parse
from dlrlens.store.alert_state import AlertState
from tests.support.alert_streams import OPS_CHANNEL, drop_rule, stream
from tests.support.factory import write_receipts

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
UTC = timezone.utc
NOW = datetime.now(UTC).replace(second=0, microsecond=0)
HOSTILE = "![i](http://127.0.0.1:9/p.png)"

RULES = OPS_CHANNEL + """
[[notify]]
name = "down"
url = "json://down.invalid/hook"
""" + drop_rule(("ops", "down"))


def answer(url, title, body, timeout):
    return "connection refused" if "down.invalid" in url else None


@pytest.fixture
def alerted(tmp_path) -> Path:
    data = tmp_path / "data"
    write_receipts(data, stream("bad", NOW - timedelta(hours=1), NOW, delivered=0.5)
                   + stream(HOSTILE, NOW - timedelta(hours=1), NOW, delivered=0.5, prefix="h"))
    engine.run_once(parse(RULES), data, NOW, send=answer)
    return data


def open_page(monkeypatch, data: Path, page: str = "views/alerts.py") -> AppTest:
    monkeypatch.setenv("DLRLENS_DATA", str(data))
    at = AppTest.from_file(str(APP), default_timeout=30)
    at.run()
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def shown(at: AppTest, key: str):
    return at.container(key=f"table_{key}").dataframe[0].value


def test_the_page_lists_firing_alerts_rules_channels_and_history(monkeypatch, alerted):
    at = open_page(monkeypatch, alerted)
    assert at.title[0].value == "Alerts"
    firing = shown(at, "alerts-firing")
    assert sorted(firing["group"]) == sorted(["bad", HOSTILE]) and set(firing["rule"]) == {"drop"}
    assert "delivery rate 48.3%" in firing["figures"].iloc[0] or "delivery rate" in firing["figures"].iloc[0]
    assert list(shown(at, "alerts-rules")["rule"]) == ["drop"]
    channels = shown(at, "alerts-channels").set_index("channel")
    assert bool(channels.loc["down", "failing"]) and not bool(channels.loc["ops", "failing"])
    assert "Notify channels failing: down" in " ".join(e.value for e in at.error)
    history = shown(at, "alerts-history")
    assert set(history["status"]) == {"sent", "retrying"} and set(history["kind"]) == {"firing"}
    # A hostile campaign name is text on screen, never an image or a link.
    assert all("![" not in m.value or "\\!\\[" in m.value for m in at.markdown)


def test_the_silence_form_mutes_the_next_evaluation(monkeypatch, alerted):
    at = open_page(monkeypatch, alerted)
    at.selectbox(key="silence_rule").set_value("drop")
    at.text_input(key="silence_group").set_value("bad")
    at.selectbox(key="silence_span").set_value("4 hours")
    at.text_input(key="silence_comment").set_value("carrier outage, ticket 42")
    at.button[0].click().run()
    assert not at.exception
    (silence,) = AlertState(alerted).silences()
    assert (silence["rule"], silence["grp"], silence["comment"]) == ("drop", "bad", "carrier outage, ticket 42")
    assert silence["ends_at"] - silence["starts_at"] == timedelta(hours=4)
    # The alerts resolve and fire again: the silenced campaign is announced no more.
    sent = []
    write_receipts(alerted, stream("bad", NOW, NOW + timedelta(hours=3), delivered=0.5, prefix="later"))
    cfg = parse(RULES)
    engine.run_once(cfg, alerted, NOW + timedelta(hours=2), send=lambda *a: sent.append(a[1]))
    engine.run_once(cfg, alerted, NOW + timedelta(hours=2, minutes=10), send=lambda *a: sent.append(a[1]))
    assert not any("bad" in title and "FIRING" in title for title in sent)


def test_data_health_shows_the_failing_channel(monkeypatch, alerted):
    at = open_page(monkeypatch, alerted, "views/health.py")
    failing = shown(at, "alert-channels-failing")
    assert list(failing["channel"]) == ["down"] and "connection refused" in failing["last_error"].iloc[0]


def test_the_page_explains_when_there_is_no_evaluation(monkeypatch, tmp_path):
    (tmp_path / "data").mkdir()
    at = open_page(monkeypatch, tmp_path / "data")
    assert "No alert evaluation yet" in " ".join(i.value for i in at.info)
