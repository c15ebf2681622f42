"""The collector's settings: one table, read through :func:`load_settings`.

Each setting comes from its environment variable or its default; the command line
(``dlrlens collector --data ...``) overrides by passing values to :func:`load_settings`.
The README's configuration table lists the same rows.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, fields
from pathlib import Path


def _secrets(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _log_level(text: str) -> str:
    level = text.strip().lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ValueError("expected one of debug, info, warning, error")
    return level


def _networks(text: str) -> tuple:
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip())


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
    Setting("rejected_keep", "DLRLENS_REJECTED_KEEP", "1000", int, "Rejected bodies kept per reason (oldest go first)."),
    Setting("rejected_max_bytes", "DLRLENS_REJECTED_MAX_BYTES", "65536", int, "Bytes of each rejected body kept."),
    Setting("log_level", "DLRLENS_LOG_LEVEL", "info", _log_level,
            "info: one line per refused request, storage error, flush summary and compaction; debug: also one "
            "line per stored request (costs throughput under load)."),
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
    rejected_keep: int
    rejected_max_bytes: int
    log_level: str


def load_settings(**overrides) -> Settings:
    """Settings from the environment, with ``overrides`` (already-parsed values, None = unset) on top."""
    values = {}
    for setting in SETTINGS_TABLE:
        override = overrides.pop(setting.name, None)
        if override is not None:
            values[setting.name] = override
            continue
        raw = os.environ.get(setting.env, setting.default)
        try:
            values[setting.name] = setting.parse(raw)
        except ValueError as exc:
            raise ValueError(f"{setting.env}={raw!r} is not valid: {exc}") from None
    if overrides:
        raise TypeError(f"unknown settings: {', '.join(sorted(overrides))}")
    assert {f.name for f in fields(Settings)} == set(values)
    return Settings(**values)
