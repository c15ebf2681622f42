"""``alerts.toml``: the notify channels and the rules, parsed and validated as one unit.

Contract: :func:`load` / :func:`parse` return a complete :class:`AlertsConfig` or raise
:class:`RulesError` listing every problem, each naming the line and the key
(``alerts.toml line 14, rule "delivery rate drop" key "below": ...``); nothing of a wrong
file is ever used (the evaluator keeps running the last good file and reports the error).

File format (see ``alerts.example.toml`` and README "Alerts")::

    [alerts]                 # optional: defaults for every rule
    dashboard_url = "https://dash.example.com"   # links in notifications (else $DLRLENS_DASHBOARD_URL)
    repeat_interval = "4h"   # repeat a notification while it stays firing (0 = never)
    send_timeout = "10s"     # per delivery attempt
    send_attempts = 3        # attempts per evaluation, with exponential back-off in between
    retry_for = "1h"         # keep retrying a failed notification at later evaluations this long

    [[notify]]
    name = "ops"
    url = "json://hooks.example.com/dlrlens"     # any apprise URL

    [[rule]]
    name = "delivery rate drop"
    kind = "delivery_rate"   # see KINDS
    ...

Durations are text with units (``90s``, ``15m``, ``1h30m``, ``2d``, ``1w``) or a number of seconds.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from dlrlens.alerts import dimensions
from dlrlens.alerts.dimensions import Dimension

# kind -> (what it watches, its own keys with defaults; None = required)
KINDS: dict[str, tuple[str, dict]] = {
    "delivery_rate": ("delivery rate of the messages sent in the window, against a floor and/or the same hours "
                      "of the previous 7 days",
                      {"window": "30m", "min_messages": 100, "below": None, "drop_vs_baseline": None,
                       "baseline_days": 3}),
    "receipt_silence": ("no receipt received for the window while traffic was expected (the window before, or "
                        "the same hours of previous days, had at least min_messages receipts)",
                        {"window": "15m", "min_messages": 10, "baseline_days": 3}),
    "pending_age": ("messages pending longer than older_than, measured from each message's own sent time "
                    "(messages sent within the window)",
                    {"window": "1d", "min_messages": 1, "older_than": None}),
    "unknown_status": ("receipts with a status not in Mobivate's table received in the window",
                       {"window": "1h", "min_messages": 1}),
    "rejected_requests": ("webhook requests refused in the window (e.g. unauthorized after a secret rotation), "
                          "per reason",
                          {"window": "15m", "min_messages": 5, "reasons": []}),
    "collector_health": ("the collector's maintenance stale or failing, writer storage or flush errors",
                         {"stale_after": "5m"}),
}
# Kinds whose groups come from a dimension (``by``); the others have fixed groups.
GROUPED_KINDS = ("delivery_rate", "pending_age")
COMMON_KEYS = {"name": None, "kind": None, "notify": None, "by": "all", "repeat_interval": None, "campaigns": []}
ALERTS_KEYS = {"dashboard_url": "", "repeat_interval": "4h", "send_timeout": "10s", "send_attempts": 3,
               "retry_for": "1h"}
NOTIFY_KEYS = {"name": None, "url": None}

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_DURATION = timedelta(days=366)


class RulesError(ValueError):
    """A wrong alerts file: ``problems`` lists every one (line, key, message)."""

    def __init__(self, source: str, problems: list[tuple[int | None, str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"{source} line {line if line else '?'}, {key}: {message}" for line, key, message in problems]
        super().__init__("the alerts file is refused (nothing of it applied):\n  " + "\n  ".join(lines))


def parse_duration(value) -> timedelta:
    """``90s``, ``15m``, ``1h30m``, ``2d``, ``1w``, or a number of seconds -> timedelta (>= 0,
    at most a year). ValueError saying what is accepted."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 90s, 15m, 1h30m, 2d, not {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        parts = _DURATION.findall(text)
        if not text or _DURATION.sub("", text).strip() or not parts:
            raise ValueError(f"expected a duration such as 90s, 15m, 1h30m, 2d, not {value!r}")
        seconds = sum(float(n) * _UNITS[unit] for n, unit in parts)
    else:
        raise ValueError(f"expected a duration such as 90s, 15m, 1h30m, 2d, not {value!r}")
    if not 0 <= seconds <= MAX_DURATION.total_seconds():
        raise ValueError(f"a duration must lie between 0 and {MAX_DURATION.days} days, not {value!r}")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """The shortest text :func:`parse_duration` reads back as ``delta`` (whole seconds)."""
    seconds = int(delta.total_seconds())
    if seconds == 0:
        return "0s"
    out = []
    for unit in ("w", "d", "h", "m", "s"):
        n, seconds = divmod(seconds, _UNITS[unit])
        if n:
            out.append(f"{n}{unit}")
    return "".join(out)


@dataclass(frozen=True)
class Channel:
    name: str
    url: str


@dataclass(frozen=True)
class Rule:
    name: str
    kind: str
    notify: tuple[str, ...]
    by: str = "all"
    dimension: Dimension = dimensions.DIMENSIONS["all"]
    by_argument: str | None = None
    window: timedelta = timedelta(minutes=30)
    min_messages: int = 1
    below: float | None = None
    drop_vs_baseline: float | None = None
    baseline_days: int = 3
    older_than: timedelta | None = None
    reasons: tuple[str, ...] = ()
    campaigns: tuple[str, ...] = ()
    stale_after: timedelta = timedelta(minutes=5)
    repeat_interval: timedelta = timedelta(hours=4)
    line: int | None = None


def describe(rule: Rule) -> dict[str, str]:
    """The rule as the Alerts page lists it (rule, kind, by, condition, notify, repeat)."""
    parts = []
    if rule.kind == "delivery_rate":
        if rule.below is not None:
            parts.append(f"delivery rate < {100 * rule.below:g}%")
        if rule.drop_vs_baseline is not None:
            parts.append(f"{100 * rule.drop_vs_baseline:g} points under the previous 7 days' baseline "
                         f"(needs {rule.baseline_days} days)")
    elif rule.kind == "pending_age":
        parts.append(f"pending longer than {format_duration(rule.older_than)}")
    elif rule.kind == "receipt_silence":
        parts.append("no receipt while traffic was expected")
    elif rule.kind == "rejected_requests":
        parts.append("refused requests" + (f" ({', '.join(rule.reasons)})" if rule.reasons else ""))
    elif rule.kind == "unknown_status":
        parts.append("a status not in Mobivate's table")
    else:
        parts.append(f"maintenance silent over {format_duration(rule.stale_after)}, failing, or writer errors")
    if rule.kind != "collector_health":
        unit = {"receipt_silence": "receipts", "delivery_rate": "messages", "pending_age": "messages"}
        parts.append(f"over the last {format_duration(rule.window)}, at least {rule.min_messages:,} "
                     f"{unit.get(rule.kind, 'of them')}")
    if rule.campaigns:
        parts.append(f"campaigns {', '.join(rule.campaigns)}")
    return {"rule": rule.name, "kind": rule.kind, "by": rule.by, "condition": "; ".join(parts),
            "notify": ", ".join(rule.notify), "repeat": format_duration(rule.repeat_interval)}


@dataclass(frozen=True)
class AlertsConfig:
    channels: dict[str, Channel]
    rules: tuple[Rule, ...]
    dashboard_url: str = ""
    send_timeout: timedelta = timedelta(seconds=10)
    send_attempts: int = 3
    retry_for: timedelta = timedelta(hours=1)
    source: str = "alerts.toml"
    defaults: dict = field(default_factory=dict)

    def rule(self, name: str) -> Rule:
        for rule in self.rules:
            if rule.name == name:
                return rule
        raise KeyError(name)


def load(path: str | Path) -> AlertsConfig:
    """Read and validate the alerts file at ``path`` (RulesError if it cannot be read either)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(str(path), [(None, "(file)", f"cannot be read: {exc}")]) from None
    return parse(text, source=str(path))


def parse(text: str, source: str = "alerts.toml") -> AlertsConfig:
    """Validate the alerts file ``text`` (see the module docstring)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        raise RulesError(source, [(int(match[1]) if match else None, "(syntax)", str(exc))]) from None
    lines = _KeyLines(text)
    problems: list[tuple[int | None, str, str]] = []

    def problem(section: str, index: int | None, key: str | None, label: str, message: str) -> None:
        problems.append((lines.find(section, index, key), label, message))

    for key in sorted(set(doc) - {"alerts", "notify", "rule"}):
        problems.append((lines.find(None, None, key), f'key "{key}"',
                         "unknown top-level key; known: [alerts], [[notify]], [[rule]]"))

    settings = _table(doc.get("alerts", {}), "alerts", None, ALERTS_KEYS, "[alerts]", problem)
    alerts = {}
    for key, check in (("repeat_interval", parse_duration), ("send_timeout", parse_duration),
                       ("retry_for", parse_duration), ("send_attempts", _count_from(1)),
                       ("dashboard_url", _text)):
        value = settings.get(key, ALERTS_KEYS[key])
        try:
            alerts[key] = check(value)
        except ValueError as exc:
            problem("alerts", None, key, f'[alerts] key "{key}"', str(exc))
    if "send_timeout" in alerts and not alerts["send_timeout"] > timedelta(0):
        problem("alerts", None, "send_timeout", '[alerts] key "send_timeout"', "must be more than 0")

    channels: dict[str, Channel] = {}
    notify = doc.get("notify", [])
    if not isinstance(notify, list):
        problem(None, None, "notify", 'key "notify"', "must be an array of tables: [[notify]]")
        notify = []
    for i, raw in enumerate(notify):
        table = _table(raw, "notify", i, NOTIFY_KEYS, f"[[notify]] #{i + 1}", problem)
        name, url = table.get("name"), table.get("url")
        label = f'notify "{name}"' if isinstance(name, str) else f"[[notify]] #{i + 1}"
        if not isinstance(name, str) or not name.strip():
            problem("notify", i, "name", f'{label} key "name"', "a channel needs a non-empty name")
            continue
        if name in channels:
            problem("notify", i, "name", f'{label} key "name"', "a second channel with this name")
        if not isinstance(url, str) or "://" not in url:
            problem("notify", i, "url", f'{label} key "url"',
                    "an apprise URL is needed (slack://..., mailto://..., json://..., msteams://...)")
            continue
        channels[name] = Channel(name=name, url=url)

    rules: list[Rule] = []
    raw_rules = doc.get("rule", [])
    if not isinstance(raw_rules, list):
        problem(None, None, "rule", 'key "rule"', "must be an array of tables: [[rule]]")
        raw_rules = []
    names: set[str] = set()
    for i, raw in enumerate(raw_rules):
        rule = _rule(raw, i, channels, alerts.get("repeat_interval", timedelta(hours=4)), problem, lines)
        if rule is None:
            continue
        if rule.name in names:
            problem("rule", i, "name", f'rule "{rule.name}" key "name"', "a second rule with this name")
        names.add(rule.name)
        rules.append(rule)
    if problems:
        raise RulesError(source, problems)
    return AlertsConfig(channels=channels, rules=tuple(rules),
                        dashboard_url=alerts["dashboard_url"] or os.environ.get("DLRLENS_DASHBOARD_URL", ""),
                        send_timeout=alerts["send_timeout"], send_attempts=alerts["send_attempts"],
                        retry_for=alerts["retry_for"], source=source)


def _rule(raw, i: int, channels: dict, repeat_default: timedelta, problem, lines) -> Rule | None:
    kind = raw.get("kind") if isinstance(raw, dict) else None
    name = raw.get("name") if isinstance(raw, dict) else None
    label = f'rule "{name}"' if isinstance(name, str) and name.strip() else f"[[rule]] #{i + 1}"
    if kind not in KINDS:
        problem("rule", i, "kind", f'{label} key "kind"',
                f"unknown kind {kind!r}; known: {', '.join(KINDS)}" if kind is not None else
                f"every rule needs a kind: {', '.join(KINDS)}")
        _table(raw, "rule", i, {**COMMON_KEYS, **{k: v for _, keys in KINDS.values() for k, v in keys.items()}},
               label, problem)
        return None
    own = KINDS[kind][1]
    table = _table(raw, "rule", i, {**COMMON_KEYS, **own}, label, problem)
    values: dict = {}
    ok = True

    def bad(key: str, message: str) -> None:
        nonlocal ok
        ok = False
        problem("rule", i, key, f'{label} key "{key}"', message)

    if not isinstance(name, str) or not name.strip():
        bad("name", "every rule needs a non-empty name")
    notify = table.get("notify")
    if not isinstance(notify, list) or not notify or not all(isinstance(n, str) for n in notify):
        bad("notify", 'a list of channel names is needed, e.g. notify = ["ops"]')
    else:
        unknown = [n for n in notify if n not in channels]
        if unknown:
            bad("notify", f"no [[notify]] channel named {', '.join(map(repr, unknown))}; "
                          f"known: {', '.join(channels) or '(none)'}")
        values["notify"] = tuple(notify)
    by = table.get("by", "all")
    try:
        dimension, argument = dimensions.parse_by(by)
        if kind not in GROUPED_KINDS and dimension.name != "all":
            raise ValueError(f"{kind} rules have fixed groups; by must be \"all\" (grouped kinds: "
                             f"{', '.join(GROUPED_KINDS)})")
        values.update(by=str(by), dimension=dimension, by_argument=argument)
    except ValueError as exc:
        bad("by", str(exc))
    checks = {"window": parse_duration, "older_than": parse_duration, "stale_after": parse_duration,
              "repeat_interval": parse_duration, "min_messages": _count_from(0), "baseline_days": _days,
              "below": _fraction, "drop_vs_baseline": _fraction, "reasons": _texts, "campaigns": _texts}
    for key, default in {**{k: v for k, v in COMMON_KEYS.items() if k in ("repeat_interval", "campaigns")},
                         **own}.items():
        value = table.get(key, default)
        if value is None:
            if key == "repeat_interval":
                values[key] = repeat_default
            elif key not in ("below", "drop_vs_baseline"):
                bad(key, f"required for {kind} rules")
            continue
        try:
            values[key] = checks[key](value)
        except ValueError as exc:
            bad(key, str(exc))
    if kind == "delivery_rate" and table.get("below") is None and table.get("drop_vs_baseline") is None:
        bad("below", "a delivery_rate rule needs below (a floor), drop_vs_baseline, or both")
    if "window" in values and not values["window"] > timedelta(0):
        bad("window", "must be more than 0")
    if "older_than" in values and not values["older_than"] > timedelta(0):
        bad("older_than", "must be more than 0")
    if not ok:
        return None
    for key in ("reasons", "campaigns"):
        if key in values:
            values[key] = tuple(values[key])
    return Rule(name=name, kind=kind, line=lines.find("rule", i, None), **values)


def _table(raw, section: str, index: int | None, keys: dict, label: str, problem) -> dict:
    if not isinstance(raw, dict):
        problem(section, index, None, label, "must be a table")
        return {}
    for key in sorted(set(raw) - set(keys)):
        problem(section, index, key, f'{label} key "{key}"', f"unknown key; known: {', '.join(keys)}")
    return {k: v for k, v in raw.items() if k in keys}


def _count_from(low: int):
    def check(value) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"expected a whole number of at least {low}, not {value!r}")
        return value
    return check


def _days(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 7:
        raise ValueError(f"expected a number of previous days from 1 to 7, not {value!r}")
    return value


def _fraction(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"expected a fraction above 0 and at most 1 (0.85 for 85 %), not {value!r}")
    return float(value)


def _texts(value) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"expected a list of names, e.g. [\"a\", \"b\"], not {value!r}")
    return value


def _text(value) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected text, not {value!r}")
    return value.rstrip("/")


_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-]+)\s*\]\]?")
_KEY = re.compile(r"""^\s*(?:"([^"]+)"|'([^']+)'|([A-Za-z0-9_\-]+))\s*=""")


class _KeyLines:
    """Where a key of a table was written: (section, index of an array table, key) -> line."""

    def __init__(self, text: str):
        self.keys: dict[tuple, int] = {}
        self.headers: dict[tuple, int] = {}
        counts: dict[str, int] = {}
        section, index = None, None
        for number, line in enumerate(text.splitlines(), start=1):
            header = _HEADER.match(line)
            if header:
                section = header[2]
                if header[1] == "[[":
                    index = counts.get(section, 0)
                    counts[section] = index + 1
                else:
                    index = None
                self.headers.setdefault((section, index), number)
                continue
            key = _KEY.match(line)
            if key:
                self.keys.setdefault((section, index, key[1] or key[2] or key[3]), number)

    def find(self, section: str | None, index: int | None, key: str | None) -> int | None:
        if key is not None and (section, index, key) in self.keys:
            return self.keys[(section, index, key)]
        return self.headers.get((section, index))
