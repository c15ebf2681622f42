"""Delivery of queued notifications through apprise (Slack, e-mail, Teams, JSON webhooks, ...).

Contract: :func:`deliver_due` sends every notification the outbox holds due
(:meth:`dlrlens.store.alert_state.AlertState.due`), each channel in its own thread so a
failing or slow channel never delays another; within a channel, each attempt is bounded by
``send_timeout`` (apprise's connect and read timeouts, and a hard wait on the sending thread),
and failed attempts are retried ``send_attempts`` times with exponential back-off
(:data:`BACKOFF_SECONDS`, doubling). Every outcome is recorded in the store: sent; or
retrying at a later evaluation (back-off doubling from :data:`RETRY_AFTER`, capped at
:data:`RETRY_AFTER_MAX`) until ``retry_for`` after it was queued; then failed. Channel failures
show on the Data health and Alerts pages. Never raises for a delivery problem.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qsl, urlsplit

from dlrlens.alerts.rules import AlertsConfig
from dlrlens.store.alert_state import AlertState

log = logging.getLogger("dlrlens.alerts")
UTC = timezone.utc
BACKOFF_SECONDS = 1.0  # before the 2nd attempt; doubles before each next one
RETRY_AFTER = timedelta(minutes=1)  # a notification still failing after its attempts: next try
RETRY_AFTER_MAX = timedelta(minutes=15)
ERROR_CHARS = 300


@dataclass
class Delivery:
    notification_id: int
    channel: str
    ok: bool
    attempts: int
    error: str | None
    seconds: float


def _with_timeouts(url: str, timeout: float) -> str:
    """``url`` with apprise's connect (cto) and read (rto) timeouts, unless it sets them."""
    keys = {k for k, _ in parse_qsl(urlsplit(url).query, keep_blank_values=True)}
    extra = [f"{k}={timeout:g}" for k in ("cto", "rto") if k not in keys]
    if not extra:
        return url
    return url + ("&" if "?" in url else "?") + "&".join(extra)


def send_apprise(url: str, title: str, body: str, timeout: float) -> str | None:
    """One attempt: None when apprise reports success, else the reason (never the URL: it
    holds the channel's secrets)."""
    import apprise

    outcome: dict = {}

    def attempt() -> None:
        try:
            app = apprise.Apprise()
            if not app.add(_with_timeouts(url, timeout)):
                outcome["error"] = "not a valid apprise URL (unknown scheme or malformed)"
                return
            result = app.notify(title=title, body=body, body_format=apprise.NotifyFormat.TEXT)
            if result:
                outcome["error"] = None
                return
            # apprise's own account of the failure (its log entries of this call).
            lines = [e.message for e in getattr(result, "logs", lambda: [])() if e.level in ("WARNING", "ERROR")]
            outcome["error"] = "; ".join(lines[-2:]) or "the channel refused the notification"
        except Exception as exc:  # a plugin's bug is a failed delivery, not a crash
            outcome["error"] = f"{type(exc).__name__}: {exc}"

    worker = threading.Thread(target=attempt, name="dlrlens-alert-send", daemon=True)
    worker.start()
    # apprise bounds each connection by cto/rto; this bounds the whole attempt (e.g. SMTP's
    # several round trips) whatever the plugin does.
    worker.join(timeout * 2 + 1)
    if worker.is_alive():
        return f"no answer within {timeout * 2 + 1:g} s"
    return outcome.get("error", "no outcome")


def deliver_due(config: AlertsConfig, state: AlertState, now: datetime | None = None, send=send_apprise) -> list[Delivery]:
    """Send every due notification (see the module docstring); what happened to each."""
    now = now or datetime.now(UTC)
    return deliver(config, state, state.due(now), send)


def deliver(config: AlertsConfig, state: AlertState, due: list[dict], send=send_apprise) -> list[Delivery]:
    """Send the notifications ``due`` (as the store gives them), each channel in its own thread,
    recording each outcome in ``state``; what happened to each."""
    by_channel: dict[str, list[dict]] = {}
    for n in due:
        by_channel.setdefault(n["channel"], []).append(n)
    if not by_channel:
        return []

    def run(channel: str, notes: list[dict]) -> list[Delivery]:
        return [deliver_one(config, state, channel, n, send) for n in notes]

    with ThreadPoolExecutor(max_workers=len(by_channel), thread_name_prefix="dlrlens-alert-channel") as pool:
        futures = [pool.submit(run, channel, notes) for channel, notes in by_channel.items()]
        return [d for f in futures for d in f.result()]


def deliver_one(config: AlertsConfig, state: AlertState, channel: str, n: dict, send, retry: bool = True) -> Delivery:
    """Send one notification (attempts with back-off) and record the outcome."""
    started = time.monotonic()
    target = config.channels.get(channel)
    attempts, error = 0, "the channel is no longer in the alerts file"
    if target is not None:
        timeout = config.send_timeout.total_seconds()
        for attempt in range(config.send_attempts):
            if attempt:
                time.sleep(BACKOFF_SECONDS * 2 ** (attempt - 1))
            attempts += 1
            error = send(target.url, n["title"], n["body"], timeout)
            if error is None:
                break
    at = datetime.now(UTC)
    retry_at = None
    if retry and error is not None and target is not None and at < n["created_at"] + config.retry_for:
        rounds = n["attempts"] // max(config.send_attempts, 1)
        retry_at = at + min(RETRY_AFTER * 2 ** rounds, RETRY_AFTER_MAX)
    error = None if error is None else error[:ERROR_CHARS]
    state.record_attempt(n["id"], ok=error is None, at=at, error=error, retry_at=retry_at)
    if error is not None:
        log.error("event=alert_notification_failed channel=%r rule=%r kind=%s attempts=%d retry=%s error=%r",
                  channel, n["rule"], n["kind"], attempts, "yes" if retry_at else "no", error)
    else:
        log.info("event=alert_notification_sent channel=%r rule=%r kind=%s", channel, n["rule"], n["kind"])
    return Delivery(notification_id=n["id"], channel=channel, ok=error is None, attempts=attempts, error=error,
                    seconds=time.monotonic() - started)
