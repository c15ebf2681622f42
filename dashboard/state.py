"""Dashboard session state: the data store, the shared sidebar filters and the URL that mirrors them.

Three things live here, because every page needs all three and none of them is page-specific:

* **The store.** One :class:`~dashboard.queries.Store` per browser session for the data
  directory given by ``--data DIR`` after ``--`` on the ``streamlit run`` command line, else
  ``DLRLENS_DATA``, else ``data/`` (:func:`data_dir`). Query results go through :func:`cached`,
  keyed by (query function, its arguments, ``store.version()``): a new Parquet file changes the
  version, so fresh data is never hidden by the cache and unchanged data is never re-queried.
* **The filters.** The sidebar widgets (:func:`sidebar`) hold the user's choices in
  ``st.session_state``. :class:`FilterState` is those choices as one value (a date-range preset,
  not resolved dates, so a shared "last 7 days" link stays "last 7 days");
  :func:`resolve` turns it into the :class:`~dashboard.queries.Filters` the queries take.
* **The URL.** The choices are mirrored into the query string on every full run, and read back
  from it on the first run of a session, so a copied link reproduces the view.
  :func:`to_query` and :func:`from_query` are the (pure, tested) encoding. Parameters::

      range=24h|7d|30d|month|all|custom   from=YYYY-MM-DD  to=YYYY-MM-DD   (custom only)
      campaign=NAME (repeated)  outcome=delivered|failed|unknown|pending (repeated)
      status=NAME (repeated)    label=KEY=VALUE (repeated)   tz=IANA/Zone   live=1
      country=ISO  network=NAME  sender=ID  route=ID   (repeated; Mobivate's send records)

  The sync is done by hand rather than with the widgets' ``bind="query-params"``: Streamlit's
  binding is written by the browser, so it cannot be tested without one, and it cannot encode
  a preset-plus-dates pair or validate values against the data. The price: browser
  back/forward does not restore earlier filters within a session (a reload does).

Option lists are bounded: a widget's options travel to the browser on every rerun, and
campaigns or URL labels can number in the thousands (a label per post). The campaign and
label filters offer the :data:`~dashboard.queries.OPTION_LIMIT` values with the most messages
plus the values chosen; when the data has more, a search box above the filter finds the
others on the server (:func:`dashboard.queries.campaign_choices`, ``LIMIT`` in SQL). A link's
campaigns and labels are kept whether the data has them or not: a value outside the list still
filters, and one the data lacks gives empty figures with a warning naming it
(:func:`scope_header`); at most :data:`MAX_URL_VALUES` values of a parameter are read.

**What a view covers** is said above its figures (:func:`scope_header`): a warning for every
value it cannot honour (an unknown campaign, with a button to show all campaigns instead; a
link's bad range, zone, outcome or date, with the default shown instead), then the scope line
of :mod:`dashboard.scope`, which the downloads state too (:func:`scope_of`).
"""

from __future__ import annotations

import shlex
import sys
import zoneinfo
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import TypeVar

import streamlit as st

from dlrlens.store import demo, layout
from dlrlens.store.backends import open_store
from dlrlens.statuses import status_table
from dashboard import charts, queries, scope
from dashboard.queries import Filters, Store
from dashboard.scope import Unhonoured
from dashboard.safe_text import md_text

T = TypeVar("T")

PRESETS: dict[str, str] = {
    "24h": "Last 24 hours",
    "7d": "Last 7 days",
    "30d": "Last 30 days",
    "month": "This month",
    "all": "All time",
    "custom": "Custom dates",
}
ROLLING_PRESETS = {"24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30)}
OUTCOMES = queries.OUTCOMES
DEFAULT_TZ = "UTC"
LIVE_REFRESH = timedelta(seconds=5)
# The default window while data is recent; older data defaults to "all" so the first view
# of a demo or archive data set is never empty.
RECENT_PRESET = "7d"

# Session-state keys of the sidebar widgets (one place, so pages and tests agree).
KEY_RANGE = "filter_range"
KEY_DATES = "filter_dates"
KEY_CAMPAIGNS = "filter_campaigns"
KEY_OUTCOMES = "filter_outcomes"
KEY_STATUSES = "filter_statuses"
KEY_LABELS = "filter_labels"
KEY_TZ = "filter_tz"
KEY_LIVE = "filter_live"
KEY_CAMPAIGN_SEARCH = "filter_campaign_search"
KEY_LABEL_SEARCH = "filter_label_search"
# Filters over Mobivate's send records (dlrlens sync): URL parameter -> (Filters field,
# session-state key, sidebar label, column of the send record in the derived state).
SEND_FILTERS = {
    "country": ("countries", "filter_countries", "Country", "country"),
    "network": ("networks", "filter_networks", "Original network", "network"),
    "sender": ("senders", "filter_senders", "Sender ID", "originator"),
    "route": ("routes", "filter_routes", "Route", "route_id"),
}
_URL_READ = "_filters_read_from_url"
# (the FilterState read from the link, the link's values it could not honour): reported until
# the user changes a filter.
_URL_UNHONOURED = "_filters_url_unhonoured"
# URL parameters a page owns (not filters): read from the link with the filters, before the
# sidebar rewrites the URL; the page writes them back while it shows (see url_value).
PAGE_PARAMETERS = ("id",)  # Message lookup: the looked-up id
_URL_PAGE_VALUES = "_url_page_values"
# Values read per repeated URL parameter: links are made by people, and each value is checked.
MAX_URL_VALUES = 50


@dataclass(frozen=True)
class FilterState:
    """The user's filter choices as the sidebar shows them and the URL carries them."""

    preset: str = "all"
    date_from: date | None = None  # custom range, inclusive, in ``tz``
    date_to: date | None = None  # inclusive
    campaigns: tuple[str, ...] = ()
    outcomes: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    tz: str = DEFAULT_TZ
    live: bool = False
    countries: tuple[str, ...] = ()  # SEND_FILTERS
    networks: tuple[str, ...] = ()
    senders: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------
# Pure encoding: FilterState <-> URL query parameters <-> queries.Filters
# ---------------------------------------------------------------------------------------------


def to_query(state: FilterState) -> dict[str, str | list[str]]:
    """The URL query parameters for ``state``. ``range`` is always present (so a link does not
    depend on the data's age); the others only when they differ from their default."""
    params: dict[str, str | list[str]] = {"range": state.preset}
    if state.preset == "custom":
        if state.date_from:
            params["from"] = state.date_from.isoformat()
        if state.date_to:
            params["to"] = state.date_to.isoformat()
    for name, values in (("campaign", state.campaigns), ("outcome", state.outcomes),
                         ("status", state.statuses), ("label", [f"{k}={v}" for k, v in state.labels])):
        if values:
            params[name] = list(values)
    for name, (field_name, *_) in SEND_FILTERS.items():
        if getattr(state, field_name):
            params[name] = list(getattr(state, field_name))
    if state.tz != DEFAULT_TZ:
        params["tz"] = state.tz
    if state.live:
        params["live"] = "1"
    return params


def from_query(params: Mapping[str, str | Iterable[str]], default_preset: str = "all") -> FilterState:
    """Read a :class:`FilterState` back from URL parameters, leaving out what is invalid
    (:func:`url_unhonoured` names each such value, for the page to say so).

    Campaigns and labels are kept as the link has them even when the data has no such value:
    a stale link must show that campaign's (empty) figures with a warning, never all
    campaigns' figures as if they were that one's. Statuses are kept as typed (any status
    name is legal).
    """
    values = _url_values(params)

    def first(name: str) -> str | None:
        found = values(name)
        return found[0] if found else None

    preset = first("range")
    if preset not in PRESETS:
        preset = default_preset
    date_from, date_to = _parse_date(first("from")), _parse_date(first("to"))
    if preset != "custom":
        date_from = date_to = None
    elif date_from and date_to and date_from > date_to:
        date_from, date_to = date_to, date_from
    labels = tuple(_split_label(v) for v in values("label") if _is_label(v))
    tz = first("tz") or DEFAULT_TZ
    return FilterState(
        preset=preset,
        date_from=date_from,
        date_to=date_to,
        campaigns=tuple(values("campaign")),
        outcomes=tuple(o for o in values("outcome") if o in OUTCOMES),
        statuses=tuple(s.upper() for s in values("status")),
        labels=labels,
        tz=tz if is_time_zone(tz) else DEFAULT_TZ,
        live=first("live") in ("1", "true", "on", "yes"),
        **{field_name: tuple(values(name)) for name, (field_name, *_) in SEND_FILTERS.items()},
    )


def _url_values(params: Mapping[str, str | Iterable[str]], limit: int | None = MAX_URL_VALUES):
    """``values(name)``: the non-blank values of URL parameter ``name``, trimmed, deduplicated
    in order, the first ``limit``."""
    def values(name: str) -> list[str]:
        raw = params.get(name, [])
        items = [raw] if isinstance(raw, str) else list(raw)
        found = list(dict.fromkeys(v.strip() for v in items if v and v.strip()))  # dedupe, keep order
        return found[:limit] if limit is not None else found
    return values


def _is_label(text: str) -> bool:
    return "=" in text and not text.startswith("=")


def url_unhonoured(params: Mapping[str, str | Iterable[str]], default_preset: str = "all") -> tuple[Unhonoured, ...]:
    """Every URL value :func:`from_query` leaves out, with the reason and what is shown instead:
    a range that is no preset, a custom date that does not parse, an outcome that is not one,
    an unknown zone, a label without ``=``, values past :data:`MAX_URL_VALUES`. (A campaign
    or label the data lacks is kept, and reported by :func:`dashboard.scope.unknown_values`.)"""
    values = _url_values(params, None)
    found: list[Unhonoured] = []
    preset = (values("range") or [None])[0]
    if preset is not None and preset not in PRESETS:
        found.append(Unhonoured("range", preset, f"not a date range (use one of {', '.join(PRESETS)})",
                                f"showing {PRESETS[default_preset]} instead"))
    shown_preset = preset if preset in PRESETS else default_preset
    for name in ("from", "to"):
        text = (values(name) or [None])[0]
        if text is not None and _parse_date(text) is None:
            found.append(Unhonoured(name, text, "not a date (YYYY-MM-DD)",
                                    "the range is open on that side" if shown_preset == "custom" else "ignored"))
    found += [Unhonoured("outcome", o, f"not an outcome (use {', '.join(OUTCOMES)})", "ignored")
              for o in values("outcome") if o not in OUTCOMES]
    tz = (values("tz") or [None])[0]
    if tz is not None and not is_time_zone(tz):
        found.append(Unhonoured("tz", tz, "not a time zone (use an IANA name such as Europe/Berlin)",
                                f"showing {DEFAULT_TZ} instead"))
    found += [Unhonoured("label", v, "not KEY=VALUE", "ignored") for v in values("label") if not _is_label(v)]
    for name in ("campaign", "outcome", "status", "label"):
        extra = values(name)[MAX_URL_VALUES:]
        if extra:
            found.append(Unhonoured(name, extra[0], f"more than {MAX_URL_VALUES} values in the link",
                                    f"the {len(extra)} past the first {MAX_URL_VALUES} are ignored"))
    return tuple(found)


def resolve(state: FilterState, now: datetime) -> Filters:
    """The query filters for ``state`` at ``now``.

    Rolling windows end at the next whole minute after ``now``, so repeated runs within a
    minute share cached results yet a receipt that arrived a moment ago is included.
    "This month" and custom dates are whole days in the chosen time zone (a range reaching
    past what a datetime holds, years 1-9999 in UTC, is open on that side); "all" is unbounded.
    """
    zone = queries.zone_info(state.tz)
    start = end = None
    if state.preset in ROLLING_PRESETS:
        end = now.astimezone(timezone.utc).replace(second=0, microsecond=0) + timedelta(minutes=1)
        start = end - ROLLING_PRESETS[state.preset]
    elif state.preset == "month":
        local = now.astimezone(zone)
        first_day = local.date().replace(day=1)
        next_first = (first_day + timedelta(days=32)).replace(day=1)
        start, end = _midnight(first_day, zone), _midnight(next_first, zone)
    elif state.preset == "custom":
        start = _midnight(state.date_from, zone) if state.date_from else None
        end = _midnight(state.date_to, zone, days=1) if state.date_to else None
    return Filters(start=start, end=end, campaigns=state.campaigns, outcomes=state.outcomes,
                   statuses=state.statuses, labels=state.labels, tz=state.tz,
                   **{field_name: getattr(state, field_name) for field_name, *_ in SEND_FILTERS.values()})


def default_preset(data_range: tuple[datetime, datetime] | None, now: datetime) -> str:
    """The first view fits the data: "24h" when every message was sent in the last 24 hours
    (hourly buckets, not one bar beside six empty days), else ``RECENT_PRESET`` while the newest
    message falls inside it, else "all"."""
    if data_range is None:
        return "all"
    oldest, newest = data_range
    if oldest >= now - ROLLING_PRESETS["24h"]:
        return "24h"
    return RECENT_PRESET if newest >= now - ROLLING_PRESETS[RECENT_PRESET] else "all"


@lru_cache(maxsize=1)
def time_zones() -> tuple[str, ...]:
    """UTC first, then every zone the queries accept, alphabetically."""
    return (DEFAULT_TZ, *sorted(z for z in zoneinfo.available_timezones() if z != DEFAULT_TZ and is_time_zone(z)))


def is_time_zone(name: str) -> bool:
    """True when the queries accept ``name`` as a zone."""
    try:
        queries.zone_info(name)
    except (ValueError, zoneinfo.ZoneInfoNotFoundError):
        return False
    return True


def _parse_date(text: str | None) -> date | None:
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        return None


def _split_label(text: str) -> tuple[str, str]:
    key, _, value = text.partition("=")
    return key.strip(), value.strip()


def _midnight(day: date, zone: zoneinfo.ZoneInfo, days: int = 0) -> datetime | None:
    """UTC instant of the local midnight ``days`` after ``day`` began; None past years 1-9999."""
    try:
        return datetime.combine(day + timedelta(days=days), time(0), tzinfo=zone).astimezone(timezone.utc)
    except OverflowError:
        return None


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def minute_now() -> datetime:
    """Now, floored to the minute: a cache-friendly "now" for ages that may lag by < 1 min."""
    return utc_now().replace(second=0, microsecond=0)


# ---------------------------------------------------------------------------------------------
# The store and cached queries
# ---------------------------------------------------------------------------------------------


def data_dir(argv: list[str] | None = None) -> Path:
    """``--data DIR`` (or ``--data=DIR``) from the script's arguments, else ``DLRLENS_DATA``,
    else ``data/``. Only ``--data`` is looked at: under tests ``sys.argv`` is pytest's."""
    args = sys.argv[1:] if argv is None else argv
    explicit = None
    for i, arg in enumerate(args):
        if arg == "--data" and i + 1 < len(args):
            explicit = args[i + 1]
        elif arg.startswith("--data="):
            explicit = arg.split("=", 1)[1]
    return layout.data_dir(explicit)


@st.cache_resource(scope="session", show_spinner=False, on_release=lambda s: s.close())
def _open_store(directory: str) -> Store:
    return open_store(directory)  # DLRLENS_STORE: the data directory, or an Iceberg table cached in it


def store() -> Store:
    """This session's store over :func:`data_dir` (opened once, closed when the session ends)."""
    return _open_store(str(data_dir()))


@st.cache_data(show_spinner=False, max_entries=1000, ttl=timedelta(hours=1))
def _cached_call(name: str, directory: str, version: str, args: tuple, _fn: Callable, _store: Store):
    # name, directory, version and args are the cache key; _fn/_store are excluded from hashing.
    return _fn(_store, *args)


def cached(fn: Callable[..., T], *args) -> T:
    """``fn(store(), *args)`` through the result cache, keyed by (fn, args, data version).

    ``args`` must be hashable by Streamlit (Filters, strings, datetimes and tuples are).
    """
    current = store()
    return _cached_call(f"{fn.__module__}.{fn.__qualname__}", str(data_dir()), current.version(),
                        args, _fn=fn, _store=current)


def _data_range(current: Store):
    return current.data_range()


def data_range() -> tuple[datetime, datetime] | None:
    """Min and max sent time of all data (UTC), cached per data version."""
    return cached(_data_range)


# ---------------------------------------------------------------------------------------------
# Sidebar widgets and the URL mirror
# ---------------------------------------------------------------------------------------------


def sidebar() -> FilterState:
    """Render the shared filters in the sidebar, mirror them into the URL and return them.

    Call once per full run, from the entry point, before the page runs.
    """
    now = utc_now()
    preset_default = default_preset(data_range(), now)
    _read_url_once(preset_default)
    has_data = store().has_data()
    with st.sidebar:
        st.header("Filters")
        preset = st.selectbox("Date range", list(PRESETS), format_func=PRESETS.__getitem__, key=KEY_RANGE,
                              help="Messages are placed in time by when they were sent "
                                   "(their earliest receipt).")
        if preset == "custom":
            if KEY_DATES not in st.session_state:
                st.session_state[KEY_DATES] = _default_custom_dates(now)
            st.date_input("From - to (inclusive)", key=KEY_DATES, persist_state="session")
        _bounded_multiselect("Campaigns", KEY_CAMPAIGNS, KEY_CAMPAIGN_SEARCH,
                             queries.campaign_choices if has_data else None, "campaigns", placeholder="All campaigns",
                             help="A message's campaign is the `campaign` parameter of the webhook URL, "
                                  "else its batch id.")
        st.pills("Outcome", OUTCOMES, selection_mode="multi", key=KEY_OUTCOMES,
                 help="None selected means all outcomes.")
        st.multiselect("Status", [s.name for s in status_table()], key=KEY_STATUSES, placeholder="All statuses",
                       accept_new_options=True,
                       help="The status that decided a message's outcome (the failure reason of "
                            "failed messages), or the latest status of pending ones.")
        _bounded_multiselect("URL labels", KEY_LABELS, KEY_LABEL_SEARCH,
                             queries.label_choices if has_data else None, "labels", placeholder="Any labels",
                             help="Query parameters of the webhook URL (key=value). A message must have "
                                  "all selected labels.")
        send_filters(has_data)
        st.selectbox("Time zone", time_zones(), key=KEY_TZ,
                     help="Used for day/hour buckets, date presets and the times shown.")
        st.toggle("Live", key=KEY_LIVE,
                  help=f"Refresh figures every {int(LIVE_REFRESH.total_seconds())} s.")
    chosen = current_state()
    st.query_params.from_dict(to_query(chosen))
    return chosen


def send_filters(has_data: bool) -> None:
    """The country, network, sender ID and route filters, when Mobivate's send records are
    stored (``dlrlens sync``). Only the cost and "Where" figures (and the report's cost
    columns) honour them: the pages say so where they apply."""
    from dlrlens.store import sends

    if not has_data or not sends.has_sends(store().data_dir):
        return
    with st.expander("Country, network, sender, route",
                     expanded=any(st.session_state.get(key) for _, key, *_ in SEND_FILTERS.values())):
        st.caption("These apply to cost, the Where page and receipts missing; the receipt-based figures "
                   "(KPI cards, trends, failures, latency) are not split by them.")
        for field_name, key, label, column in SEND_FILTERS.values():
            chosen = list(st.session_state.get(key) or [])
            offered = cached(queries.send_choices, Filters(), column)
            st.multiselect(label, list(dict.fromkeys([*offered, *chosen])), key=key, placeholder="All",
                           help="From Mobivate's send records; applies to cost and the Where page.")


def _bounded_multiselect(label: str, key: str, search_key: str, choices: Callable | None, noun: str,
                         **widget) -> None:
    """A multiselect offering the values ``choices`` (:func:`dashboard.queries.campaign_choices`
    or ``label_choices``; None without data) ranks first, plus the values chosen. When the data
    has more than that, a search box above it finds the others (in SQL, bounded)."""
    top = cached(choices, "") if choices else queries.Choices((), 0)
    search = ""
    if top.total > len(top.values) or st.session_state.get(search_key):
        search = st.text_input(f"Search {noun}", key=search_key, icon=":material/search:",
                               placeholder=f"Part of any of the {top.total:,} {noun}").strip()
    found = cached(choices, search) if choices and search else top
    chosen = list(st.session_state.get(key) or [])
    st.multiselect(label, list(dict.fromkeys([*found.values, *chosen])), key=key, **widget)
    if search and not found.total:
        st.caption(f"No {noun} match the search.")
    elif found.total > len(found.values):
        matching = " matching the search" if search else ""
        st.caption(f"Listing the {len(found.values):,} {noun}{matching} with the most messages, of "
                   f"{found.total:,}. Search to find the others.")


def state_from(values: Mapping) -> FilterState:
    """The :class:`FilterState` held by the sidebar widgets' keys in ``values`` (session state)."""
    preset = values.get(KEY_RANGE, "all")
    dates = tuple(values.get(KEY_DATES) or ()) if preset == "custom" else ()
    return FilterState(
        preset=preset,
        date_from=dates[0] if dates else None,
        date_to=dates[-1] if dates else None,  # a range still being picked has one date
        campaigns=tuple(values.get(KEY_CAMPAIGNS) or ()),
        outcomes=tuple(values.get(KEY_OUTCOMES) or ()),
        statuses=tuple(values.get(KEY_STATUSES) or ()),
        labels=tuple(_split_label(v) for v in values.get(KEY_LABELS) or ()),
        tz=values.get(KEY_TZ, DEFAULT_TZ),
        live=bool(values.get(KEY_LIVE, False)),
        **{field_name: tuple(values.get(key) or ()) for field_name, key, *_ in SEND_FILTERS.values()},
    )


def filters_for(values: Mapping, now: datetime | None = None) -> Filters:
    """The query filters the widget values in ``values`` stand for, at ``now``."""
    return resolve(state_from(values), now or utc_now())


def current_state() -> FilterState:
    """The sidebar's choices (safe to call from a fragment rerun)."""
    return state_from(st.session_state)


def filters(now: datetime | None = None) -> Filters:
    """The current query filters, resolved at ``now`` (so a Live refresh moves rolling windows)."""
    return filters_for(st.session_state, now)


def _read_url_once(preset_default: str) -> None:
    """Seed the widgets from the URL on a session's first run; later the widgets lead."""
    if st.session_state.get(_URL_READ):
        return
    st.session_state[_URL_READ] = True
    params = {key: st.query_params.get_all(key) for key in st.query_params}
    st.session_state[_URL_PAGE_VALUES] = {name: params[name][0] for name in PAGE_PARAMETERS if params.get(name)}
    wanted = from_query(params, preset_default)
    st.session_state[_URL_UNHONOURED] = (wanted, url_unhonoured(params, preset_default))
    st.session_state[KEY_RANGE] = wanted.preset
    if wanted.preset == "custom" and (wanted.date_from or wanted.date_to):
        first = wanted.date_from or wanted.date_to
        st.session_state[KEY_DATES] = (first, wanted.date_to or first)
    st.session_state[KEY_CAMPAIGNS] = list(wanted.campaigns)
    st.session_state[KEY_OUTCOMES] = list(wanted.outcomes)
    st.session_state[KEY_STATUSES] = list(wanted.statuses)
    st.session_state[KEY_LABELS] = [f"{k}={v}" for k, v in wanted.labels]
    st.session_state[KEY_TZ] = wanted.tz
    st.session_state[KEY_LIVE] = wanted.live
    for field_name, key, *_ in SEND_FILTERS.values():
        st.session_state[key] = list(getattr(wanted, field_name))


def url_value(name: str) -> str | None:
    """The value the session's link had for the page parameter ``name`` (:data:`PAGE_PARAMETERS`).
    The sidebar rewrites the URL from the filters on every full run; a page that owns a
    parameter sets ``st.query_params[name]`` again after it."""
    return (st.session_state.get(_URL_PAGE_VALUES) or {}).get(name)


def _default_custom_dates(now: datetime) -> tuple[date, date]:
    """The data's days when known, else the last 7 days: a useful start for custom dates."""
    zone = queries.zone_info(st.session_state.get(KEY_TZ, DEFAULT_TZ))
    known = data_range()
    if known:
        return known[0].astimezone(zone).date(), known[1].astimezone(zone).date()
    today = now.astimezone(zone).date()
    return today - timedelta(days=6), today


# ---------------------------------------------------------------------------------------------
# Page helpers: live refresh and the friendly empty states
# ---------------------------------------------------------------------------------------------


def live(body: Callable[[], None]) -> Callable[[], None]:
    """Wrap a page's figures as a fragment that reruns every ``LIVE_REFRESH`` while Live is on,
    or while ``dlrlens up``'s demo is still posting (:func:`demo_started`).

    The fragment re-reads the filters from session state, so a refresh keeps them.
    """
    refresh = current_state().live or demo_started() is not None
    return st.fragment(body, run_every=LIVE_REFRESH if refresh else None)


def demo_started() -> datetime | None:
    """When ``dlrlens up``'s demo traffic, still posting, started; None when none is posting
    (``data/demo.json``, :mod:`dlrlens.store.demo`)."""
    return demo.demo_posting(data_dir())


def demo_notice() -> None:
    """While the demo is posting: say so (the figures grow, the page refreshes by itself)."""
    started = demo_started()
    if started is not None:
        st.info(f"`dlrlens up` is still posting its demo traffic (simulated Mobivate receipts, started "
                f"{charts.format_duration((utc_now() - started).total_seconds())} ago): the figures grow while it "
                f"runs, and this page refreshes every {int(LIVE_REFRESH.total_seconds())} s by itself until it ends.",
                icon=":material/autorenew:")


@st.fragment(run_every=LIVE_REFRESH)
def _await_demo_data() -> None:
    """While an empty data folder waits for the demo's first receipts: rerun the page once they land."""
    if store().has_data():
        st.rerun(scope="app")


# The collector the empty-data notice starts: `dlrlens collector`'s default port, named in the
# printed commands so that they work as printed (tests/cli/test_cli.py runs them).
NOTICE_COLLECTOR_PORT = 8080


def collecting_commands(directory: Path) -> tuple[str, str]:
    """The commands the empty-data notice offers, each runnable as printed (shell-quoted):
    start the collector on ``directory``; then, from a second terminal, post simulated Mobivate
    traffic through it (demo data)."""
    port = NOTICE_COLLECTOR_PORT
    return (f"dlrlens collector --data {shlex.quote(str(directory))} --port {port}",
            f"dlrlens simulate --url http://127.0.0.1:{port}/dlr --campaigns 5 --messages 1000")


def collecting_hint(directory: Path) -> str:
    """What to do about an empty data folder (Markdown): the :func:`collecting_commands`."""
    collector, simulate = collecting_commands(directory)
    return (f"Start the collector with `{collector}` and point Mobivate's delivery-receipt webhook at it. "
            f"For demo data, keep it running and post simulated Mobivate traffic through it from a "
            f"second terminal: `{simulate}`.")


def data_notice() -> bool:
    """Explain, with what to do, why there is nothing to show; True when there is data."""
    current = store()
    if current.has_data():
        return True
    directory = data_dir()
    if demo_started() is not None:
        demo_notice()
        _await_demo_data()
        return False
    start_collecting = collecting_hint(directory)
    if not directory.exists():
        st.info(f"The data folder `{directory}` does not exist yet. {start_collecting}",
                title="No data folder yet", icon=":material/folder_off:")
    else:
        st.info(f"The data folder `{directory}` holds no delivery receipts yet. {start_collecting}",
                title="No receipts yet", icon=":material/inbox:")
    return False


def no_match_notice(messages: int) -> bool:
    """Explain an empty filter result; True when ``messages`` > 0."""
    if messages > 0:
        return True
    st.info("No messages match these filters. Widen the date range (try **All time**) or clear the "
            "campaign, outcome, status and label filters in the sidebar.",
            title="Nothing matches", icon=":material/filter_alt_off:")
    return False


def unhonoured(f: Filters) -> tuple[Unhonoured, ...]:
    """What the view of ``f`` was asked for and cannot honour: the link's invalid values (until
    the user changes a filter) and the campaigns and labels the data does not have."""
    read = st.session_state.get(_URL_UNHONOURED)
    from_link = read[1] if read and read[0] == current_state() else ()
    if not store().has_data():
        return tuple(from_link)
    # Only the campaigns and labels matter to the check: one cache entry whatever the dates.
    return tuple(from_link) + cached(scope.unknown_values, Filters(campaigns=f.campaigns, labels=f.labels))


def scope_of(f: Filters, sidebar_applies: bool = True) -> scope.Scope:
    """The :class:`~dashboard.scope.Scope` of ``f`` in this session: its preset's name, the
    values not honoured. Downloads state it; :func:`scope_header` shows it."""
    preset = current_state().preset
    named = PRESETS[preset] if sidebar_applies and preset not in ("all", "custom") else ""
    return scope.describe(f, unhonoured(f) if sidebar_applies else (), named, sidebar_applies)


# Set by a scope button's callback: the click ran in a page's fragment, whose rerun would not
# rewrite the URL (the sidebar does that on full runs), so the next run is a full one.
_RERUN_APP = "_scope_rerun_app"


def _drop_campaigns(names: tuple[str, ...]) -> None:
    st.session_state[KEY_CAMPAIGNS] = [c for c in st.session_state.get(KEY_CAMPAIGNS) or () if c not in names]
    st.session_state[_RERUN_APP] = True


def _drop_labels(pairs: tuple[str, ...]) -> None:
    st.session_state[KEY_LABELS] = [v for v in st.session_state.get(KEY_LABELS) or () if v not in pairs]
    st.session_state[_RERUN_APP] = True


def scope_header(f: Filters, sidebar_applies: bool = True) -> scope.Scope:
    """Under a page's title, before its figures: a warning for every value the view cannot
    honour, naming it and saying what is shown (an unknown campaign stays applied, with a
    button to show all campaigns instead), then the scope line (period in the chosen zone,
    the previous period compared with, every filter). In the main area, so a phone (sidebar
    hidden) shows it too. ``sidebar_applies=False``: the page ignores the sidebar and says so."""
    if st.session_state.pop(_RERUN_APP, False):
        st.rerun(scope="app")
    demo_notice()
    covers = scope_of(f, sidebar_applies)
    unknown = {kind: tuple(u.value for u in covers.unhonoured if u.parameter == kind and u.applied)
               for kind in ("campaign", "label")}
    for problem in covers.unhonoured:
        if problem.applied and problem.parameter in unknown:
            continue  # campaigns and labels get a warning of their own, with a way out, below
        if problem.applied:  # another filter kind the data lacks (dashboard/scope.py FILTER_KINDS)
            st.warning(f"No message has the {md_text(problem.parameter)} “{md_text(problem.value)}”: the figures "
                       "below are zero.", icon=":material/link_off:")
            continue
        st.warning(f"The link's **{problem.parameter}** “{md_text(problem.value)}” is {md_text(problem.reason)}: "
                   f"{md_text(problem.instead)}.", icon=":material/link_off:")
    if unknown["campaign"]:
        names = ", ".join(f"“{md_text(n)}”" for n in unknown["campaign"])
        every = len(unknown["campaign"]) == len(f.campaigns)
        with st.container(key="unknown_campaigns"):
            st.warning(f"No message has the campaign {names}: the figures below are zero because the data holds "
                       f"no such campaign (the link may be older than the data, or the name mistyped).",
                       icon=":material/link_off:")
            st.button("Show all campaigns instead" if every else "Show the other chosen campaigns only",
                      on_click=_drop_campaigns, args=(unknown["campaign"],), key="drop_unknown_campaigns",
                      icon=":material/filter_alt_off:")
    if unknown["label"]:
        pairs = ", ".join(f"“{md_text(p)}”" for p in unknown["label"])
        with st.container(key="unknown_labels"):
            st.warning(f"No message has the URL label {pairs}: the figures below are zero.",
                       icon=":material/link_off:")
            st.button("Drop this label filter" if len(unknown["label"]) == 1 else "Drop these label filters",
                      on_click=_drop_labels, args=(unknown["label"],), key="drop_unknown_labels",
                      icon=":material/filter_alt_off:")
    with st.container(key="scope_line"):
        st.caption(md_text(covers.line()))
    return covers


def with_campaigns(f: Filters, names: Iterable[str]) -> Filters:
    """``f`` narrowed to ``names`` (for drilling into campaigns)."""
    return replace(f, campaigns=tuple(names))


def uncharted_notice(f: Filters, outcome: str | None = None) -> None:
    """Under a chart over time: how many messages matching ``f`` (with ``outcome``) it leaves
    out, being sent outside the charted span (:func:`dashboard.queries.uncharted_messages`)."""
    note = queries.uncharted_note(cached(queries.uncharted_messages, f, outcome), outcome)
    if note:
        st.warning(note, icon=":material/event_busy:")
