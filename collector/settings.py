"""The collector's settings: one table, read through :func:`load_settings`.

Each setting comes from its environment variable or its default; the command line
(``dlrlens collector --data ...``) overrides by passing values to :func:`load_settings`.
The README's configuration table lists the same rows.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path

from collector.parsing import MAX_LABELS
from dlrlens.store.backends import StoreChoice, parse_store
from dlrlens.store.events import DEFAULT_OPT_OUT_KEYWORDS, parse_keywords
from dlrlens.store.maintenance import MIN_ORPHAN_GRACE_SECONDS, MIN_SNAPSHOT_RETENTION_SECONDS
from dlrlens.mobivate import SETTINGS as MOBIVATE_SETTINGS
from dlrlens.mobivate import parse_duration, parse_flag


def _secrets(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _log_level(text: str) -> str:
    level = text.strip().lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ValueError("expected one of debug, info, warning, error")
    return level


def _networks(text: str) -> tuple:
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip())


_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> timedelta:
    """Seconds, or a number with a unit (``90s``, ``15m``, ``12h``, ``400d``)."""
    match = _DURATION.fullmatch(text.lower())
    if not match:
        raise ValueError("expected seconds or a duration such as 90s, 15m, 12h, 400d")
    try:
        return timedelta(seconds=float(match[1]) * _DURATION_UNITS[match[2]])
    except OverflowError:
        raise ValueError("duration is too large") from None


def _duration_or_off(text: str) -> timedelta | None:
    """:func:`_duration`; 0 means no bound (None)."""
    return _duration(text) or None


def _seconds_text(seconds: float) -> str:
    return f"{seconds / 60:g}m" if seconds >= 60 else f"{seconds:g}s"


def _at_least(seconds: float, why: str):
    """A :func:`_duration` parser refusing less than ``seconds`` (``why`` says what would break)."""
    def parse(text: str) -> timedelta:
        duration = _duration(text)
        if duration.total_seconds() < seconds:
            raise ValueError(f"must be at least {_seconds_text(seconds)}: {why}")
        return duration
    return parse


def _count_or_off(text: str) -> int | None:
    """A positive count; 0 means no bound (None)."""
    count = int(text)
    if count < 0:
        raise ValueError("expected 0 (no bound) or a positive number")
    return count or None


def _positive_int(text: str) -> int:
    number = int(text)
    if number < 1:
        raise ValueError("expected a positive number")
    return number


def _positive_seconds(text: str) -> float:
    seconds = float(text)
    if not seconds > 0:
        raise ValueError("expected a positive number of seconds")
    return seconds


def _label_keys(text: str) -> frozenset[str] | None:
    """Comma-separated label keys; ``*`` allows any key (None)."""
    if text.strip() == "*":
        return None
    keys = frozenset(part.strip() for part in text.split(",") if part.strip())
    if any(key.lower() == "token" for key in keys):
        raise ValueError("'token' is the webhook secret, never a label")
    return keys


def _optional_path(text: str) -> Path | None:
    return Path(text.strip()) if text.strip() else None


@dataclass(frozen=True)
class Setting:
    name: str
    env: str
    default: str
    parse: object
    help: str


SETTINGS_TABLE = (
    Setting("data_dir", "DLRLENS_DATA", "data", Path, "Data directory (receipts, log, rejected bodies, counters)."),
    Setting("tokens", "DLRLENS_TOKEN", "", _secrets,
            "Webhook secret(s). When set, /dlr requires one as ?token=, as the HTTP Basic password "
            "or as the last path segment (/dlr/SECRET). Comma-separate two to rotate."),
    Setting("allow_networks", "DLRLENS_ALLOW_NETWORKS", "", _networks,
            "Comma-separated CIDRs allowed to post receipts; empty allows all."),
    Setting("trusted_proxies", "DLRLENS_TRUSTED_PROXIES", "0", int,
            "Number of reverse proxies in front whose X-Forwarded-For to trust for the source address."),
    Setting("flush_seconds", "DLRLENS_FLUSH_SECONDS", "2", float, "Seconds between log-to-Parquet flushes."),
    Setting("flush_rows", "DLRLENS_FLUSH_ROWS", "50000", int, "Flush early once the log holds this many receipts."),
    Setting("maintenance_seconds", "DLRLENS_MAINTENANCE_SECONDS", "5", float,
            "Seconds between updates of the derived per-message state (0 turns it off)."),
    Setting("compact_seconds", "DLRLENS_COMPACT_SECONDS", "60", float,
            "Seconds between compactions of small Parquet files (0 turns it off)."),
    Setting("max_body_bytes", "DLRLENS_MAX_BODY_BYTES", "1048576", int, "Largest accepted request body (413 above)."),
    Setting("header_timeout_seconds", "DLRLENS_HEADER_TIMEOUT_SECONDS", "10", _positive_seconds,
            "Seconds a client has to send a request's line and headers (408 and closed after); also the longest "
            "pause allowed inside a body. Until its headers are in, a connection holds no worker thread."),
    Setting("rejected_keep", "DLRLENS_REJECTED_KEEP", "1000", int, "Rejected bodies kept per reason (oldest go first)."),
    Setting("rejected_max_bytes", "DLRLENS_REJECTED_MAX_BYTES", "65536", int, "Bytes of each rejected body kept."),
    Setting("created_max_ahead", "DLRLENS_CREATED_MAX_AHEAD", "1d", _duration_or_off,
            "Refuse (bad_created) a receipt whose created lies further after its arrival than this; seconds or "
            "a duration (90s, 15m, 12h, 1d); 0 turns the bound off."),
    Setting("created_max_age", "DLRLENS_CREATED_MAX_AGE", "400d", _duration_or_off,
            "Refuse (bad_created) a receipt whose created lies further before its arrival than this (late "
            "receipts within it are stored); same format; 0 turns the bound off."),
    Setting("max_days_per_request", "DLRLENS_MAX_DAYS_PER_REQUEST", "31", _count_or_off,
            "Refuse a whole request (too_many_days) whose receipts span more UTC days of created than this "
            "(each day is a storage partition); 0 turns the bound off."),
    Setting("label_keys", "DLRLENS_LABEL_KEYS", "campaign,team,country,env", _label_keys,
            "Comma-separated URL query parameters accepted as receipt labels; any other refuses the request "
            f"(bad_label). * accepts any key (at most {MAX_LABELS} labels a request; beware: each key and value "
            "becomes a dashboard filter)."),
    Setting("label_max_length", "DLRLENS_LABEL_MAX_LENGTH", "64", _positive_int,
            "Longest URL label value (and key, with *) in characters; longer ones refuse the request (bad_label)."),
    Setting("keep_msisdn", "DLRLENS_KEEP_MSISDN", "0", parse_flag,
            "1 keeps the clicker's and replier's phone number as sent; by default only a keyed hash (HMAC-SHA256, "
            "key in data/keys/msisdn.key) and a masked form (44700****123) are stored."),
    Setting("keep_click_ip", "DLRLENS_KEEP_CLICK_IP", "0", parse_flag,
            "1 keeps the clicker's IP address; by default it is dropped (the click keeps Mobivate's country)."),
    Setting("opt_out_keywords", "DLRLENS_OPT_OUT_KEYWORDS", ",".join(DEFAULT_OPT_OUT_KEYWORDS), parse_keywords,
            "Comma-separated replies that count as an opt-out, matched ignoring case and whitespace. The "
            "collector's maintenance matches replies with it when it absorbs them into the derived state (a change "
            "recomputes that state: dlrlens rebuild's time); the dashboard and dlrlens report count by the keywords "
            "that state was made with."),
    Setting("log_level", "DLRLENS_LOG_LEVEL", "info", _log_level,
            "info: one line per refused request, storage error, flush summary and compaction; debug: also one "
            "line per stored request (costs throughput under load)."),
    Setting("store", "DLRLENS_STORE", "local", parse_store,
            "Where flushed receipts go: local (Parquet files under the data directory) or iceberg:<catalog>, "
            "the receipts table of that pyiceberg catalog (configured in .pyiceberg.yaml or "
            "PYICEBERG_CATALOG__<NAME>__* variables); the write-ahead log stays in the data directory."),
    Setting("iceberg_maintenance_seconds", "DLRLENS_ICEBERG_MAINTENANCE_SECONDS", "300", float,
            "With the Iceberg store: seconds between the maintenance process's runs of compaction, snapshot "
            "expiry and orphan-file cleanup on the tables, and of its commit of the derived per-message state "
            "(0 turns them off). Every collector runs them; runs at once are safe."),
    Setting("iceberg_derived", "DLRLENS_ICEBERG_DERIVED", "1", parse_flag,
            "With the Iceberg store: 1 (default) to let this collector's maintenance keep a copy of the tables' "
            "files under the data directory and commit the derived per-message state from it; 0 on collectors "
            "that should hold no copy of the history (their table maintenance, sync and webhooks are unchanged). "
            "Keep it on for at least one collector, else every dashboard builds the state itself."),
    Setting("iceberg_snapshot_retention", "DLRLENS_ICEBERG_SNAPSHOT_RETENTION", "10m",
            _at_least(MIN_SNAPSHOT_RETENTION_SECONDS, "a commit in flight retries from the snapshot it started from"),
            "With the Iceberg store: snapshots superseded longer ago than this are expired (at least 10s; time travel "
            "reaches back this far; exactly-once does not depend on it). Each retained snapshot adds about 1 KB to the "
            "metadata file every commit rewrites: 10m at 4 workers flushing every 2 s keeps ~1,200."),
    Setting("iceberg_orphan_grace", "DLRLENS_ICEBERG_ORPHAN_GRACE", "1h",
            _at_least(MIN_ORPHAN_GRACE_SECONDS, "a shorter grace could delete the files of a commit still in flight"),
            "With the Iceberg store: files under the table's location that no retained snapshot references are "
            "deleted once older than this (at least 10m, so that a commit in flight keeps its files)."),
    Setting("alerts_file", "DLRLENS_ALERTS_FILE", "", _optional_path,
            "The alert rules and notify channels (alerts.toml, see alerts.example.toml); when set, the collector "
            "evaluates them in a separate process beside maintenance. Empty: no alerts."),
    Setting("alerts_seconds", "DLRLENS_ALERTS_SECONDS", "60", float,
            "Seconds between alert evaluations (0 turns them off)."),
    Setting("dashboard_url", "DLRLENS_DASHBOARD_URL", "", str,
            "The dashboard's address, for the links in alert notifications (e.g. https://dash.example.com); "
            "dashboard_url in the alerts file overrides it."),
    # Mobivate's send records (dlrlens sync, and the maintenance process's periodic sync):
    # the rows and their parsers are dlrlens.mobivate's, which reads them there too.
    Setting("mobivate_api_key", "MOBIVATE_API_KEY", "", str.strip,
            "Mobivate API key (Bearer) for its send records: names, cost, country. Without it nothing talks "
            "to Mobivate. Never logged."),
    *(Setting(name, env, default, parse or parse_duration, help)
      for name, env, default, parse, help in MOBIVATE_SETTINGS),
)


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    tokens: tuple[str, ...]
    allow_networks: tuple
    trusted_proxies: int
    flush_seconds: float
    flush_rows: int
    maintenance_seconds: float
    compact_seconds: float
    max_body_bytes: int
    header_timeout_seconds: float
    rejected_keep: int
    rejected_max_bytes: int
    created_max_ahead: timedelta | None
    created_max_age: timedelta | None
    max_days_per_request: int | None
    label_keys: frozenset[str] | None
    label_max_length: int
    keep_msisdn: bool
    keep_click_ip: bool
    opt_out_keywords: tuple[str, ...]
    log_level: str
    store: StoreChoice
    iceberg_maintenance_seconds: float
    iceberg_derived: bool
    iceberg_snapshot_retention: timedelta
    iceberg_orphan_grace: timedelta
    alerts_file: Path | None
    alerts_seconds: float
    dashboard_url: str
    mobivate_api_key: str = field(repr=False)
    mobivate_url: str
    mobivate_messages_url: str
    sync_seconds: float
    sync_days: int
    keep_recipient: bool
    receipts_missing_after: float


def load_settings(**overrides) -> Settings:
    """Settings from the environment, with ``overrides`` (already-parsed values, None = unset) on top."""
    return _settings(os.environ, overrides)


def default_settings() -> Settings:
    """The table's defaults alone, whatever the environment (what the docs describe)."""
    return _settings({}, {})


def _settings(environ, overrides: dict) -> Settings:
    overrides = dict(overrides)
    values = {}
    for setting in SETTINGS_TABLE:
        override = overrides.pop(setting.name, None)
        if override is not None:
            values[setting.name] = override
            continue
        raw = environ.get(setting.env, setting.default)
        try:
            values[setting.name] = setting.parse(raw)
        except ValueError as exc:
            raise ValueError(f"{setting.env}={raw!r} is not valid: {exc}") from None
    if overrides:
        raise TypeError(f"unknown settings: {', '.join(sorted(overrides))}")
    assert {f.name for f in fields(Settings)} == set(values)
    return Settings(**values)
