"""Mobivate's own send records, read through its HTTP API: the message log (older API), the
campaign list and the message history (newer API).

Contract:

* Nothing here talks to Mobivate unless an API key is configured (``MOBIVATE_API_KEY``): the
  :class:`MobivateSettings` of an installation without one have ``configured`` False, and
  :class:`MobivateClient` refuses to be built without a key.
* Every call has a connect and a read timeout; 5xx answers, timeouts and connection errors are
  retried with exponential back-off and jitter; ``429`` waits ``Retry-After`` (seconds or an
  HTTP date, capped) before retrying; 401/403 raise :class:`MobivateAuthError` at once (a key
  problem never fixes itself by retrying); other 4xx raise :class:`MobivateError`. The key is
  sent only in the ``Authorization`` header and never appears in an exception or a log line.
* A page whose body is not the documented shape raises :class:`MalformedPage` (naming the
  page); the pagers (:meth:`MobivateClient.message_log`, ...) report it to ``on_malformed``
  and go on with the next page, so the caller stores only pages that parsed.
* Records are returned as Mobivate sent them (dicts); turning them into stored rows (and
  dropping personal data) is the store's job (:mod:`dlrlens.store.sends`).

Paging (facts in the Mobivate documentation, see README "Mobivate send records"): the message
log ``GET /message?startDate=&endDate=&page=&pageSize=`` answers a JSON array a page; the last
page is the first one shorter than ``pageSize`` (an exact multiple ends on an empty page). The
campaign list ``GET /messages/campaigns?fromDate=&toDate=&offset=&limit=`` and the history
``GET /messages/history`` answer ``{"records": [...], "total": n}``; the history's live body is
reported as ``{"results": [...], "matches": n}``: both are accepted.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import time
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Callable, Iterator

import requests

log = logging.getLogger("dlrlens.mobivate")

OLD_API_DEFAULT_URL = "https://api.mobivatebulksms.com"
MAX_PAGE_SIZE = 1000  # the message log's documented maximum pageSize
CAMPAIGN_PAGE_SIZE = 100
HISTORY_PAGE_SIZE = 1000
MAX_RETRY_AFTER_SECONDS = 300.0
# A run of malformed pages this long ends the paging with an error (the end is unknowable).
MAX_MALFORMED_IN_A_ROW = 3


class MobivateError(RuntimeError):
    """A Mobivate API call failed (the message names the endpoint and the reason, never the key)."""


class MobivateAuthError(MobivateError):
    """401/403: the API key is missing, wrong, or not allowed to read this endpoint."""


class MalformedPage(MobivateError):
    """A page whose body is not the documented shape (it is skipped, never half-stored)."""


# --------------------------------------------------------------------------- settings


def _positive_seconds(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError("expected 0 (off) or a positive number of seconds")
    return value


def _url(text: str) -> str:
    text = text.strip().rstrip("/")
    if text and not text.startswith(("http://", "https://")):
        raise ValueError("expected an http:// or https:// URL")
    return text


def parse_flag(text: str) -> bool:
    """A boolean setting: 1/true/yes/on or 0/false/no/off (empty: off)."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


# (attribute, environment variable, default, parser, meaning): the collector's settings table
# (collector/settings.py) lists the same rows, so the README's Configuration table documents them.
SETTINGS = (
    ("mobivate_url", "DLRLENS_MOBIVATE_URL", OLD_API_DEFAULT_URL, _url,
     "Base URL of Mobivate's older API (message log). Nothing talks to Mobivate unless `MOBIVATE_API_KEY` is set."),
    ("mobivate_messages_url", "DLRLENS_MOBIVATE_MESSAGES_URL", "", _url,
     "Base URL of Mobivate's newer API (campaign names, message history); Mobivate gives each customer "
     "its host, so there is no default: without it only the message log is synced."),
    ("sync_seconds", "DLRLENS_SYNC_SECONDS", "300", _positive_seconds,
     "Seconds between the maintenance process's syncs of Mobivate's send records (when "
     "`MOBIVATE_API_KEY` is set; 0 turns it off). Each sync reads the last `DLRLENS_SYNC_DAYS` days again."),
    ("sync_days", "DLRLENS_SYNC_DAYS", "2", lambda text: max(1, int(text)),
     "UTC days (today included) each periodic sync reads again: the windows overlap, so late log "
     "updates (status, cost) arrive; stored records are merged by id, never duplicated."),
    ("keep_recipient", "DLRLENS_KEEP_RECIPIENT", "0", parse_flag,
     "1 keeps the recipient's full number in the synced send records; by default only its country, "
     "original network, a keyed hash (for lookups) and a masked form are stored."),
    ("receipts_missing_after", "DLRLENS_RECEIPTS_MISSING_AFTER", "24h", None,
     "A message in Mobivate's log with no receipt this long after it was created counts as "
     "`receipts_missing` (seconds or 90s, 15m, 12h, 1d)."),
)


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``12h`` or ``1d``; ValueError otherwise."""
    text = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], units[text[-1]]) if text and text[-1] in units else (text, 1)
    try:
        value = float(number) * unit
    except ValueError:
        raise ValueError("expected seconds or a duration such as 90s, 15m, 12h, 1d") from None
    if value < 0:
        raise ValueError("expected a positive duration")
    return value


@dataclass(frozen=True)
class MobivateSettings:
    api_key: str = ""
    mobivate_url: str = OLD_API_DEFAULT_URL
    mobivate_messages_url: str = ""
    sync_seconds: float = 300.0
    sync_days: int = 2
    keep_recipient: bool = False
    receipts_missing_after: float = 86400.0

    @property
    def configured(self) -> bool:
        """Whether a key is set: without one nothing talks to Mobivate."""
        return bool(self.api_key)

    @classmethod
    def from_env(cls, environ=None) -> "MobivateSettings":
        """Settings from the environment (ValueError naming the variable for a bad value)."""
        environ = os.environ if environ is None else environ
        values = {"api_key": environ.get("MOBIVATE_API_KEY", "").strip()}
        for attribute, variable, default, parser, _ in SETTINGS:
            text = environ.get(variable, default)
            try:
                values[attribute] = (parser or parse_duration)(text)
            except ValueError as exc:
                raise ValueError(f"{variable}={text!r}: {exc}") from None
        return cls(**values)


# --------------------------------------------------------------------------- client


@dataclass
class Retry:
    """How calls are retried: ``attempts`` in all, back-off ``base * 2**n`` (capped at ``cap``)
    with full jitter; ``sleep`` is replaceable in tests."""

    attempts: int = 5
    base: float = 0.5
    cap: float = 30.0
    sleep: Callable[[float], None] = time.sleep

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.cap, self.base * (2 ** attempt)))


def _day(value: date | datetime) -> str:
    return value.strftime("%Y-%m-%d")


def _log_time(value: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS+0000`` (the log's documented date-time form), in UTC."""
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+0000")


def retry_after_seconds(value: str | None, default: float) -> float:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), capped."""
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return default
        if moment is None:
            return default
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        seconds = (moment - datetime.now(timezone.utc)).total_seconds()
    return min(max(0.0, seconds), MAX_RETRY_AFTER_SECONDS)


class MobivateClient:
    """Calls to Mobivate's API with one key (see the module docstring for the error rules)."""

    def __init__(self, api_key: str, log_url: str = OLD_API_DEFAULT_URL, messages_url: str = "", *,
                 timeout: tuple[float, float] = (5.0, 30.0), retry: Retry | None = None,
                 session: requests.Session | None = None):
        if not api_key:
            raise MobivateAuthError("no Mobivate API key: set MOBIVATE_API_KEY")
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        self.log_url = log_url.rstrip("/")
        self.messages_url = messages_url.rstrip("/")
        self.timeout = timeout
        self.retry = retry or Retry()
        self.session = session or requests.Session()
        self.calls = 0
        self.retries = 0

    @classmethod
    def from_settings(cls, settings: MobivateSettings, **options) -> "MobivateClient":
        return cls(settings.api_key, settings.mobivate_url, settings.mobivate_messages_url, **options)

    def close(self) -> None:
        self.session.close()

    # -- one call

    def get(self, base: str, path: str, params: dict):
        """GET ``base + path`` with ``params``; the decoded JSON body (see the module rules).
        Raises :class:`MalformedPage` when the body is not JSON."""
        url = base + path
        where = f"GET {path}"
        for attempt in range(self.retry.attempts):
            self.calls += 1
            last = attempt == self.retry.attempts - 1
            try:
                response = self.session.get(url, params=params, headers=self._headers, timeout=self.timeout)
            except (requests.Timeout, requests.ConnectionError) as exc:
                if last:
                    raise MobivateError(f"{where}: {type(exc).__name__} after {attempt + 1} attempts "
                                        f"(is {base} reachable?)") from None
                self._wait(self.retry.delay(attempt), where, type(exc).__name__)
                continue
            status = response.status_code
            if status in (401, 403):
                raise MobivateAuthError(
                    f"{where}: Mobivate answered {status} "
                    f"({'unauthorized' if status == 401 else 'forbidden'}): check MOBIVATE_API_KEY "
                    f"(wrong, revoked, or not allowed to read this endpoint)")
            if status == 429 or status >= 500:
                if last:
                    raise MobivateError(f"{where}: Mobivate answered {status} after {attempt + 1} attempts")
                wait = (retry_after_seconds(response.headers.get("Retry-After"), self.retry.delay(attempt))
                        if status == 429 else self.retry.delay(attempt))
                self._wait(wait, where, str(status))
                continue
            if status >= 400:
                raise MobivateError(f"{where}: Mobivate answered {status}: {_error_message(response)}")
            try:
                return response.json()
            except ValueError:
                raise MalformedPage(f"{where} {_describe(params)}: the body is not JSON") from None
        raise AssertionError("unreachable")

    def _wait(self, seconds: float, where: str, why: str) -> None:
        self.retries += 1
        log.warning("event=mobivate_retry call=%r reason=%s wait_seconds=%.2f", where, why, seconds)
        self.retry.sleep(seconds)

    # -- pagers

    def message_log(self, start: datetime, end: datetime, *, page_size: int = MAX_PAGE_SIZE,
                    on_malformed: Callable[[MalformedPage], None] | None = None) -> Iterator[list[dict]]:
        """Pages (lists of records) of the message log created in [start, end]; stops at the
        first page shorter than ``page_size`` (an empty one after an exact multiple)."""
        page_size = min(page_size, MAX_PAGE_SIZE)
        page, malformed_in_a_row = 1, 0
        while True:
            params = {"startDate": _log_time(start), "endDate": _log_time(end), "page": page, "pageSize": page_size}
            page += 1
            try:
                body = self.get(self.log_url, "/message", params)
                records = _records(body, "/message", params, list_body=True, required=("id",))
            except MalformedPage as exc:
                _report(on_malformed, exc)
                malformed_in_a_row += 1
                if malformed_in_a_row >= MAX_MALFORMED_IN_A_ROW:
                    raise MobivateError(f"GET /message: {malformed_in_a_row} malformed pages in a row; "
                                        f"stopped at page {page - 1}") from None
                continue
            malformed_in_a_row = 0
            yield records
            if len(records) < page_size:
                return

    def campaigns(self, start: date, end: date, *, limit: int = CAMPAIGN_PAGE_SIZE,
                  on_malformed: Callable[[MalformedPage], None] | None = None) -> Iterator[list[dict]]:
        """Pages of the newer API's campaign list for [start, end] (days); nothing without its URL."""
        yield from self._offset_pages("/messages/campaigns", {"fromDate": _day(start), "toDate": _day(end)},
                                      limit, ("id",), on_malformed)

    def history(self, start: date, end: date, *, limit: int = HISTORY_PAGE_SIZE,
                on_malformed: Callable[[MalformedPage], None] | None = None) -> Iterator[list[dict]]:
        """Pages of the newer API's message history (documented or observed shape)."""
        yield from self._offset_pages("/messages/history", {"fromDate": _day(start), "toDate": _day(end)},
                                      limit, ("id",), on_malformed)

    def _offset_pages(self, path: str, window: dict, limit: int, required, on_malformed) -> Iterator[list[dict]]:
        if not self.messages_url:
            return
        offset, malformed_in_a_row = 0, 0
        while True:
            params = {**window, "offset": offset, "limit": limit}
            try:
                body = self.get(self.messages_url, path, params)
                records = _records(body, path, params, list_body=False, required=required)
            except MalformedPage as exc:
                _report(on_malformed, exc)
                offset += limit
                malformed_in_a_row += 1
                if malformed_in_a_row >= MAX_MALFORMED_IN_A_ROW:
                    raise MobivateError(f"GET {path}: {malformed_in_a_row} malformed pages in a row; "
                                        f"stopped at offset {offset - limit}") from None
                continue
            malformed_in_a_row = 0
            yield records
            total = body.get("total", body.get("matches"))
            offset += len(records)
            if len(records) < limit or (isinstance(total, int) and offset >= total):
                return


def _report(on_malformed, exc: MalformedPage) -> None:
    log.warning("event=mobivate_malformed_page error=%r", str(exc))
    if on_malformed is not None:
        on_malformed(exc)


def _describe(params: dict) -> str:
    shown = {k: params[k] for k in ("page", "offset", "startDate", "fromDate") if k in params}
    return " ".join(f"{k}={v}" for k, v in shown.items())


def _records(body, path: str, params: dict, *, list_body: bool, required) -> list[dict]:
    """The records of a page body, or :class:`MalformedPage` naming what is wrong."""
    where = f"GET {path} {_describe(params)}"
    if list_body:
        records = body
    elif isinstance(body, dict):
        records = body.get("records", body.get("results"))
    else:
        records = None
    if not isinstance(records, list):
        raise MalformedPage(f"{where}: expected {'a JSON array' if list_body else 'records or results'}, "
                            f"got {type(body).__name__}")
    for i, record in enumerate(records):
        if not isinstance(record, dict) or any(not isinstance(record.get(k), (str, int)) for k in required):
            raise MalformedPage(f"{where}: record {i} is not an object with {', '.join(required)}")
    return records


def _error_message(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return "(no JSON error body)"
    message = body.get("message") if isinstance(body, dict) else None
    return str(message)[:200] if message else "(no message)"
