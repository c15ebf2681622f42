"""What a reader asks for: :class:`Filters`, the selection every question of the read
interface (:mod:`dlrlens.store.reader`) takes, and the names it accepts.

Contract: a :class:`Filters` is immutable and hashable (a cache key); its times are aware
(a naive one is wall-clock time in its ``tz``); it refuses unknown zones and outcomes with a
ValueError, so every SQL built from it is over known values only (user values are always
bound as parameters, never spliced).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from functools import lru_cache
from zoneinfo import ZoneInfo, available_timezones

import pandas as pd

# A message's outcome (see the KPI definitions in dashboard/queries/__init__.py).
OUTCOMES = ("delivered", "failed", "unknown", "pending")


# Filters over Mobivate's send records: column of the send record -> Filters field.
SEND_DIMENSIONS = {"country": "countries", "network": "networks", "originator": "senders", "route_id": "routes"}


@dataclass(frozen=True)
class Filters:
    """What to look at. Hashable (usable as a cache key); lists are turned into tuples.

    ``start`` (inclusive) and ``end`` (exclusive) compare with a message's sent time; a naive
    datetime is taken as wall-clock time in ``tz``. ``statuses`` match a message's
    ``last_status`` (failure reason of a failed message, latest status of a pending one).
    Raises ValueError for an unknown zone or outcome.
    """

    start: datetime | None = None
    end: datetime | None = None
    campaigns: tuple[str, ...] = ()
    outcomes: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    tz: str = "UTC"
    # From Mobivate's send records (dlrlens.store.sends): the recipient's country (ISO region)
    # and original network, the sender ID (originator) and the route. The questions over the
    # send records (cost, "Where", time from submission: Store.cost_counts_sql) honour them.
    countries: tuple[str, ...] = ()
    networks: tuple[str, ...] = ()
    senders: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()

    def __post_init__(self):
        zone = zone_info(self.tz)
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, pd.Timestamp):
                    value = value.to_pydatetime()
                if value.tzinfo is None:
                    value = value.replace(tzinfo=zone)
                object.__setattr__(self, name, value)
        object.__setattr__(self, "campaigns", tuple(self.campaigns))
        object.__setattr__(self, "outcomes", tuple(self.outcomes))
        object.__setattr__(self, "statuses", tuple(s.strip().upper() for s in self.statuses))
        object.__setattr__(self, "labels", tuple((str(k), str(v)) for k, v in self.labels))
        for name in SEND_DIMENSIONS.values():
            object.__setattr__(self, name, tuple(str(v) for v in getattr(self, name)))
        unknown = set(self.outcomes) - set(OUTCOMES)
        if unknown:
            raise ValueError(f"unknown outcome(s) {sorted(unknown)}; choose from {', '.join(OUTCOMES)}")

    def has_send_filters(self) -> bool:
        """Whether a country, network, sender or route filter is set (see SEND_DIMENSIONS)."""
        return any(getattr(self, name) for name in SEND_DIMENSIONS.values())

    def previous_period(self) -> "Filters | None":
        """The same filters over the equally long period right before [start, end), or None."""
        if self.start is None or self.end is None:
            return None
        try:
            return replace(self, start=self.start - (self.end - self.start), end=self.start)
        except OverflowError:  # it would begin before year 1: there is no such period
            return None


def zone_info(name: str) -> ZoneInfo:
    """The IANA zone ``name``; ValueError with a clear message if there is none."""
    if name != "UTC" and name not in _zone_names():
        raise ValueError(f"unknown time zone {name!r} (use an IANA name such as Europe/Berlin)")
    return ZoneInfo(name)


@lru_cache(maxsize=1)
def _zone_names() -> frozenset[str]:
    # "localtime" is the host's zone file, not an IANA name (DuckDB does not know it).
    return frozenset(available_timezones()) - {"localtime"}
