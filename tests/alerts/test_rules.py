"""The alerts file: the example parses, every wrong file is refused whole with the line and the
key of each problem, and the duration parser (hypothesis)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from dlrlens.alerts import dimensions
from dlrlens.alerts.rules import KINDS, RulesError, format_duration, load, parse, parse_duration

REPO = Path(__file__).resolve().parents[2]

CHANNEL = '[[notify]]\nname = "ops"\nurl = "json://127.0.0.1:9/hook"\n'


def test_the_example_file_parses_with_every_kind():
    config = load(REPO / "alerts.example.toml")
    assert {r.kind for r in config.rules} == set(KINDS)
    drop = config.rule("delivery rate drop")
    assert drop.window == timedelta(minutes=30) and drop.below == 0.85 and drop.drop_vs_baseline == 0.10
    assert drop.dimension.name == "campaign" and drop.notify == ("ops", "oncall-mail")
    assert config.rule("webhook refusing").repeat_interval == timedelta(hours=1)
    assert config.rule("receipts stopped").repeat_interval == timedelta(hours=4)  # the [alerts] default
    assert config.dashboard_url == "https://dash.example.com"


def _refused(text: str) -> RulesError:
    with pytest.raises(RulesError) as caught:
        parse(text, source="alerts.toml")
    return caught.value


RULE = '[[rule]]\nname = "r"\nkind = "delivery_rate"\nbelow = 0.9\nnotify = ["ops"]\n'


@pytest.mark.parametrize("text, line, key, words", [
    # (file, line of the problem, key named, words the message must hold)
    (CHANNEL + RULE.replace("below = 0.9", "below = 85"), 7, 'key "below"', "0.85 for 85 %"),
    (CHANNEL + RULE.replace('kind = "delivery_rate"', 'kind = "delivery_rte"'), 6, 'key "kind"', "receipt_silence"),
    (CHANNEL + RULE + 'by = "country"\n', 9, 'key "by"', "label:<key>"),
    (CHANNEL + RULE + 'by = "label"\n', 9, 'key "by"', "needs a key"),
    (CHANNEL + RULE.replace('["ops"]', '["pager"]'), 8, 'key "notify"', "'pager'"),
    (CHANNEL + RULE + 'window = "30 minutes"\n', 9, 'key "window"', "90s, 15m"),
    (CHANNEL + RULE + 'belw = 0.5\n', 9, 'key "belw"', "unknown key"),
    (CHANNEL + RULE.replace("below = 0.9\n", ""), 4, 'key "below"', "drop_vs_baseline"),
    (CHANNEL + RULE + 'min_messages = -1\n', 9, 'key "min_messages"', "at least 0"),
    (CHANNEL + RULE + 'baseline_days = 9\n', 9, 'key "baseline_days"', "1 to 7"),
    (CHANNEL + '[[rule]]\nname = "p"\nkind = "pending_age"\nnotify = ["ops"]\n', 4, 'key "older_than"', "required"),
    (CHANNEL + '[[rule]]\nname = "u"\nkind = "unknown_status"\nby = "campaign"\nnotify = ["ops"]\n', 7, 'key "by"',
     "fixed groups"),
    (CHANNEL + RULE + RULE, 10, 'key "name"', "second rule"),
    ('[[notify]]\nname = "ops"\nurl = "not a url"\n', 3, 'key "url"', "apprise URL"),
    (CHANNEL + '[alerts]\nsend_attempts = 0\n', 5, 'key "send_attempts"', "at least 1"),
    ('colour = "red"\n' + CHANNEL, 1, 'key "colour"', "top-level"),
    (CHANNEL + 'colour = "red"\n', 4, '[[notify]] #1 key "colour"', "known: name, url"),
    (CHANNEL + RULE + 'window = \n', 9, "(syntax)", "line 9"),
])
def test_a_wrong_file_names_the_line_and_the_key(text, line, key, words):
    error = _refused(text)
    message = str(error)
    assert f"alerts.toml line {line}, " in message and key in message and words in message, message
    assert "nothing of it applied" in message


def test_every_problem_is_listed_at_once():
    text = CHANNEL + RULE.replace("below = 0.9", "below = 2") + RULE.replace('"r"', '"s"').replace('["ops"]', '[]')
    error = _refused(text)
    assert [(line, key) for line, key, _ in error.problems] == [(7, 'rule "r" key "below"'), (13, 'rule "s" key "notify"')]


def test_unknown_by_lists_the_known_dimensions():
    with pytest.raises(ValueError, match="known: all, campaign, label:<key>"):
        dimensions.parse_by("route")
    dimension, argument = dimensions.parse_by("label:team")
    assert dimension.name == "label" and argument == "team"
    assert dimension.link_params(argument, "retail") == {"label": "team=retail"}


def test_an_unreadable_file_is_refused(tmp_path):
    with pytest.raises(RulesError, match="cannot be read"):
        load(tmp_path / "missing.toml")


# -- durations


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("15m", 900), ("1h30m", 5400), ("2d", 172800),
                                           ("1w", 604800), (" 1.5h ", 5400), (600, 600), ("0s", 0)])
def test_durations(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "15", "m", "15x", "1h 30", "-5m", "abc", True, None, "400d", [1]])
def test_wrong_durations_are_refused(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=366 * 86400))
def test_format_and_parse_round_trip(seconds):
    delta = timedelta(seconds=seconds)
    text = format_duration(delta)
    assert parse_duration(text) == delta
    assert parse_duration(text.upper()) == delta


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="0123456789.smhdwx :-", max_size=12))
def test_any_text_parses_or_is_refused_with_a_value_error(text):
    try:
        parsed = parse_duration(text)
    except ValueError as exc:
        assert "duration" in str(exc)
    else:
        assert timedelta(0) <= parsed <= timedelta(days=366)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(min_value=0, max_value=50), st.sampled_from("smhd")), min_size=1, max_size=4))
def test_a_sum_of_parts_is_their_total(parts):
    total = sum(n * {"s": 1, "m": 60, "h": 3600, "d": 86400}[u] for n, u in parts)
    text = "".join(f"{n}{u}" for n, u in parts)
    if total <= 366 * 86400:
        assert parse_duration(text) == timedelta(seconds=total)
