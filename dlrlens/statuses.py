"""Mobivate's delivery statuses and the category dlrlens gives each.

The table is ``statuses.csv`` (code, status, category, meaning), copied from Mobivate's
public API documentation. Names match case-insensitively. Mobivate's codes are its own,
not SMPP's. A status that is not in the table is never rejected: it is classified
``unknown`` (a final outcome, see the README's KPI definitions).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

CATEGORIES = ("delivered", "failed", "pending", "unknown")
FINAL_CATEGORIES = ("delivered", "failed", "unknown")


@dataclass(frozen=True)
class Status:
    code: int
    name: str
    category: str
    meaning: str


@lru_cache(maxsize=1)
def status_table() -> tuple[Status, ...]:
    """Every documented status, in code order."""
    text = resources.files("dlrlens").joinpath("statuses.csv").read_text(encoding="utf-8")
    rows = csv.DictReader(text.splitlines())
    return tuple(
        Status(int(r["code"]), r["status"].strip().upper(), r["category"].strip(), r["meaning"].strip())
        for r in rows
    )


@lru_cache(maxsize=1)
def _by_name() -> dict[str, Status]:
    return {s.name: s for s in status_table()}


@lru_cache(maxsize=1)
def _by_code() -> dict[int, Status]:
    return {s.code: s for s in status_table()}


def lookup(name: str | None, code: int | None) -> Status | None:
    """The documented status for a receipt's name (any case) or, failing that, its code."""
    if name:
        found = _by_name().get(name.strip().upper())
        if found:
            return found
        return None  # an unrecognised name wins over a code: store it as it came
    if code is not None:
        return _by_code().get(code)
    return None


def classify(name: str | None, code: int | None) -> tuple[str, str]:
    """Return ``(status, category)`` for a receipt.

    ``status`` is the documented name when recognised, else the given name upper-cased,
    else ``CODE_<n>`` for an unknown numeric code alone. Unknown statuses get ``unknown``.
    """
    found = lookup(name, code)
    if found:
        return found.name, found.category
    if name and name.strip():
        return name.strip().upper(), "unknown"
    return (f"CODE_{code}" if code is not None else "UNKNOWN"), "unknown"
