"""What a view covers, resolved and described once: every page's scope line, the Excel
Summary sheet, the JSON report's ``scope`` object, the CSV scope line and ``dlrlens report``'s
stderr all render one :class:`Scope`.

A scope is the resolved period (dates, or times for a rolling window, in the chosen zone), the
previous period the "vs previous" figures compare with, the time zone, every active filter,
and every value the view was asked for but cannot honour (:class:`Unhonoured`: a campaign
that is not in the data, a date range preset, zone, outcome or date that does not parse),
with the reason and what is shown instead.

**A new filter kind** (country, network, sender, route, ...) is one more :class:`FilterKind`
row in :data:`FILTER_KINDS`, naming the :class:`~dashboard.queries.Filters` attribute that
holds its values (a tuple): every rendering picks it up. An attribute that ``Filters`` does
not have (yet) reads as "no filter", so a row may land before its filter does.

Contract: plain data and pure functions (no Streamlit); text is returned raw, callers escape
it for their medium (:func:`dashboard.safe_text.md_text` on screen; the CSV line is written
by :func:`csv_scope_line`, which keeps it one formula-safe cell).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from dashboard import queries
from dashboard.queries import Filters, Store
from dashboard.safe_text import csv_cell


@dataclass(frozen=True)
class FilterKind:
    """One kind of filter: ``key`` (machine name, the JSON key), ``label`` (for people),
    ``attribute`` (the :class:`Filters` field holding its values), ``render`` (one value as text)."""

    key: str
    label: str
    attribute: str
    render: Callable[[object], str] = str
    # ``known(store, rendered values)``: those the data has (None: any value is legal, e.g. a
    # status name). A value the data lacks stays applied and is reported (:func:`unknown_values`).
    known: Callable[[Store, tuple[str, ...]], tuple[str, ...]] | None = None
    parameter: str = ""  # its URL parameter / report option, singular (default: key without "s")

    @property
    def name(self) -> str:
        """The singular the URL and the report use: ``parameter``, else ``key`` made singular
        (campaigns -> campaign, countries -> country)."""
        if self.parameter:
            return self.parameter
        return self.key[:-3] + "y" if self.key.endswith("ies") else self.key.removesuffix("s")


def _pair(value) -> str:
    key, val = value
    return f"{key}={val}"


def _known_campaigns(store: Store, values: tuple[str, ...]) -> tuple[str, ...]:
    return queries.campaign_choices(store, "", len(values), values).values


def _known_labels(store: Store, values: tuple[str, ...]) -> tuple[str, ...]:
    return queries.label_choices(store, "", len(values), values).values


# In the order every rendering lists them. Add a row for a new filter kind.
def _known_send_values(dimension: str):
    """``known`` of a send-record filter: the values Mobivate's synced log has for it."""
    def known(store: Store, values: tuple[str, ...]) -> tuple[str, ...]:
        present = set(queries.send_choices(store, Filters(), dimension, limit=100_000))
        return tuple(v for v in values if v in present)
    return known


# Filters over Mobivate's send records apply to the cost figures, the Where page and receipts
# missing only (the receipt figures are pre-aggregated without them): their label says so,
# wherever the scope is rendered.
_SEND_ONLY = " (cost, Where and receipts missing only)"

FILTER_KINDS: tuple[FilterKind, ...] = (
    FilterKind("campaigns", "Campaigns", "campaigns", known=_known_campaigns),
    FilterKind("outcomes", "Outcomes", "outcomes"),
    FilterKind("statuses", "Statuses", "statuses"),
    FilterKind("labels", "URL labels", "labels", _pair, known=_known_labels),
    FilterKind("countries", "Countries" + _SEND_ONLY, "countries", known=_known_send_values("country")),
    FilterKind("networks", "Original networks" + _SEND_ONLY, "networks", known=_known_send_values("network")),
    FilterKind("senders", "Sender IDs" + _SEND_ONLY, "senders", known=_known_send_values("originator")),
    FilterKind("routes", "Routes" + _SEND_ONLY, "routes", known=_known_send_values("route_id")),
)


@dataclass(frozen=True)
class Unhonoured:
    """A value a view was asked for and cannot honour: ``parameter`` (the URL parameter or
    option, e.g. ``campaign``, ``range``), ``value`` as given, ``reason``, and ``instead``:
    what is shown in its place. ``applied``: the value stays applied (a campaign the data does
    not have: the figures are those of no message), rather than replaced by a default."""

    parameter: str
    value: str
    reason: str
    instead: str = ""
    applied: bool = False

    def text(self) -> str:
        shown = f"; {self.instead}" if self.instead else ""
        return f"{self.parameter} {self.value!r}: {self.reason}{shown}"


@dataclass(frozen=True)
class Scope:
    """What a view covers (see the module docstring). Build it with :func:`describe`."""

    start: datetime | None  # aware, in ``tz``; None: open
    end: datetime | None  # exclusive
    tz: str
    previous: tuple[datetime, datetime] | None
    active: tuple[tuple[FilterKind, tuple[str, ...]], ...]
    unhonoured: tuple[Unhonoured, ...] = ()
    preset: str = ""  # e.g. "Last 7 days" when the period came from a preset
    sidebar_applies: bool = True

    # ------------------------------------------------------------------ pieces

    @property
    def by_day(self) -> bool:
        """True when both ends are local midnights (the period is whole days)."""
        return all(moment is None or moment.timetz().replace(tzinfo=None) == time(0)
                   for moment in (self.start, self.end))

    def period_text(self) -> str:
        """``2026-11-01 to 2026-11-30`` (inclusive days) or ``2026-12-05 15:48 to 2026-12-06
        15:48`` (a rolling window); "all data" when open on both sides."""
        return _span_text(self.start, self.end, self.by_day)

    def previous_text(self) -> str:
        if self.previous is None:
            return "none (the period is open)"
        return _span_text(*self.previous, self.by_day)

    def filter_text(self) -> str:
        """Every active filter, ``; ``-separated, or "none"."""
        if not self.active:
            return "none"
        return "; ".join(f"{kind.label}: {', '.join(values)}" for kind, values in self.active)

    # ------------------------------------------------------------------ renderings

    def rows(self) -> list[tuple[str, str, str]]:
        """``(item, key, value)`` rows: the Summary sheet's scope block, in order."""
        first, last = self.days()
        rows = [
            ("From (sent time)", "from", first.isoformat() if first else "(all data)"),
            ("To, inclusive", "to", last.isoformat() if last else "(all data)"),
            ("Period", "period", self.period_text()),
            ("Time zone", "tz", self.tz),
            ("Compared with", "previous_period", self.previous_text()),
        ]
        by_key = {kind.key: values for kind, values in self.active}
        for kind in FILTER_KINDS:
            values = by_key.get(kind.key)
            rows.append((kind.label, kind.key, ", ".join(values) if values else "(all)"))
        rows.append(("Not honoured", "unhonoured",
                     "; ".join(u.text() for u in self.unhonoured) if self.unhonoured else "(none)"))
        return rows

    def as_dict(self) -> dict:
        """The JSON ``scope`` object: machine keys, lists for filters, ISO times."""
        first, last = self.days()
        return {
            "from": first.isoformat() if first else None,
            "to": last.isoformat() if last else None,
            "start": self.start.isoformat() if self.start else None,
            "end": self.end.isoformat() if self.end else None,
            "period": self.period_text(),
            "tz": self.tz,
            "previous_period": ({"start": self.previous[0].isoformat(), "end": self.previous[1].isoformat()}
                                if self.previous else None),
            "filters": {kind.key: list(values) for kind, values in self.active},
            "unhonoured": [{"parameter": u.parameter, "value": u.value, "reason": u.reason,
                            "instead": u.instead} for u in self.unhonoured],
        }

    def line(self) -> str:
        """One line for people (plain text): the page's scope line, the CSV scope line."""
        if not self.sidebar_applies:
            return f"All stored data, whatever the sidebar filters say. Times in {self.tz}."
        parts = [f"Period: {self.period_text()} ({self.tz})"]
        if self.preset:
            parts[0] = f"Period: {self.preset}, {self.period_text()} ({self.tz})"
        if self.previous is not None:
            parts.append(f"vs previous: {self.previous_text()}")
        parts.append(f"Filters: {self.filter_text()}")
        if self.unhonoured:
            parts.append("Not honoured: " + "; ".join(u.text() for u in self.unhonoured))
        return " · ".join(parts)

    def days(self) -> tuple[date | None, date | None]:
        """First and last (inclusive) local date covered; None where open."""
        first = self.start.date() if self.start else None
        last = (self.end - timedelta(microseconds=1)).date() if self.end else None
        return first, last


def describe(f: Filters, unhonoured: Iterable[Unhonoured] = (), preset: str = "",
             sidebar_applies: bool = True) -> Scope:
    """The :class:`Scope` of ``f``: times converted to its zone, its previous period, its
    active filters in :data:`FILTER_KINDS` order, and the ``unhonoured`` values."""
    zone = queries.zone_info(f.tz)
    local = (lambda moment: moment.astimezone(zone) if moment is not None else None)
    before = f.previous_period()
    active = []
    for kind in FILTER_KINDS:
        values = tuple(getattr(f, kind.attribute, ()) or ())
        if values:
            active.append((kind, tuple(kind.render(v) for v in values)))
    return Scope(start=local(f.start), end=local(f.end), tz=f.tz,
                 previous=(local(before.start), local(before.end)) if before else None,
                 active=tuple(active), unhonoured=tuple(unhonoured), preset=preset,
                 sidebar_applies=sidebar_applies)


def unknown_values(store: Store, f: Filters) -> tuple[Unhonoured, ...]:
    """The filter values of ``f`` the data does not have (a stale link's campaign, a label no
    receipt carries), each checked by its :attr:`FilterKind.known`. They stay applied (the
    figures are those of no message) and are reported, never dropped."""
    found = []
    for kind in FILTER_KINDS:
        values = tuple(kind.render(v) for v in getattr(f, kind.attribute, ()) or ())
        if kind.known is None or not values:
            continue
        known = set(kind.known(store, values)) if store.has_data() else set()
        found += [Unhonoured(kind.name, value, "not in the data: it matches no message", applied=True)
                  for value in values if value not in known]
    return tuple(found)


def _span_text(start: datetime | None, end: datetime | None, by_day: bool) -> str:
    if start is None and end is None:
        return "all data"
    if by_day:
        first = start.date().isoformat() if start else None
        last = (end - timedelta(microseconds=1)).date().isoformat() if end else None
    else:
        first = start.strftime("%Y-%m-%d %H:%M") if start else None
        last = end.strftime("%Y-%m-%d %H:%M") if end else None
    if first and last:
        return first if by_day and first == last else f"{first} to {last}"
    return f"from {first}" if first else f"until {last}"


# --------------------------------------------------------------------------- CSV

CSV_SCOPE_PREFIX = "# dlrlens scope: "
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")


def csv_scope_line(scope: Scope) -> bytes:
    """The first line of every CSV dlrlens writes: the scope as ONE cell starting with ``#``.

    Why a line in the file, not a sidecar or the file name: a file name cannot hold the filters
    (label values are free text) and a sidecar gets separated from its figures. Why one cell:
    a spreadsheet opens the file and shows the scope in A1; CSV-quoted, the commas inside stay
    in that cell, so no part of it can start a formula in a cell of its own, and it starts
    with ``#`` (not a formula prefix). Why exactly one line: a program skips it by a fixed rule
    (pandas ``skiprows=1``, DuckDB ``skip=1``, ``tail -n +2``) without the ``comment`` options
    that would also cut data cells containing ``#``. Control characters become spaces, so it
    stays one line."""
    text = CSV_SCOPE_PREFIX + _CONTROL.sub(" ", scope.line())
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow([csv_cell(text)])
    return buffer.getvalue().encode("utf-8")
