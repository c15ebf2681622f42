"""One evaluation of every rule at a given time: which (rule, group) pairs fire, with figures.

Contract: :func:`evaluate` reads the data only through the store (:class:`~dlrlens.store.reader.Store`
for the figures, the same methods the dashboard's questions wrap: ``window_counts`` with
:func:`dlrlens.store.sql.counts_select` for the delivery rate, ``pending_by_age``,
``unknown_statuses``, ``receipts_received``; :mod:`dlrlens.store.status` and
:mod:`dlrlens.store.rejected` for the collector's own state). It writes nothing. It returns
the *firing* findings only: a group that was firing and is not among them has resolved. A rule
whose evaluation fails is reported in ``errors`` and neither fires nor resolves anything.

No false alarms on quiet data: every rule has a minimum volume (``min_messages``); the
baseline of ``drop_vs_baseline`` (the same window of each of the previous 7 days, on 15-minute
slot boundaries: :func:`slot_floor`) counts only
when at least ``baseline_days`` of those days had outcomes and it holds ``min_messages``
messages with an outcome; pending age is measured from each message's own sent time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd

from dlrlens.alerts.rules import AlertsConfig, Rule, format_duration
from dlrlens.store import rejected, status
from dlrlens.store.derive import SLOT_MICROS
from dlrlens.store.reader import Store, epoch_micros
from dlrlens.store.selection import Filters

log = logging.getLogger("dlrlens.alerts")
BASELINE_DAYS = 7


@dataclass
class Finding:
    """One firing (rule, group): its figures and where the dashboard shows it."""

    rule: str
    grp: str
    summary: str  # one line with the figures and the baseline
    value: float | None = None
    baseline: float | None = None
    messages: int | None = None
    page: str = ""  # dashboard page path ("" = Overview)
    link: dict = field(default_factory=dict)  # dashboard URL query parameters
    detail: dict = field(default_factory=dict)


@dataclass
class Context:
    """What every kind's evaluator gets besides its rule and the store."""

    data_dir: Path
    at: datetime
    firing: set  # this rule's groups firing before
    previous: dict  # the previous evaluation's meta
    meta: dict  # to keep for the next one
    shared_windows: dict  # (by, campaigns) -> every delivery_rate window of those rules, in one query


@dataclass
class Evaluation:
    at: datetime
    findings: list[Finding]
    errors: dict[str, str]  # rule -> error text
    meta: dict[str, str] = field(default_factory=dict)  # to keep for the next evaluation
    seconds: float = 0.0


def evaluate(config: AlertsConfig, store: Store, data_dir: Path, at: datetime,
             firing: set[tuple[str, str]] = frozenset(), previous_meta: dict | None = None) -> Evaluation:
    """Evaluate every rule of ``config`` at ``at`` (aware). ``firing``: the (rule, group)
    pairs firing before (a receipt silence stays firing until receipts come back)."""
    import time

    started = time.process_time()
    findings: list[Finding] = []
    errors: dict[str, str] = {}
    meta: dict[str, str] = {}
    # The delivery_rate rules of one grouping share one query over the union of their windows.
    shared: dict = {}
    for rule in config.rules:
        if rule.kind == "delivery_rate":
            windows = shared.setdefault((rule.by, rule.campaigns), [])
            windows += [w for w in rate_windows(rule, at) if w not in windows]
    with store.pinned():
        for rule in config.rules:
            context = Context(data_dir=Path(data_dir), at=at, firing={g for r, g in firing if r == rule.name},
                              previous=previous_meta or {}, meta=meta, shared_windows=shared)
            try:
                found = KIND_EVALUATORS[rule.kind](rule, store, context)
            except Exception as exc:  # one broken rule must not stop the others
                errors[rule.name] = f"{type(exc).__name__}: {exc}"
                log.error("event=alert_rule_failed rule=%r error=%r", rule.name, errors[rule.name])
                continue
            findings += found
    return Evaluation(at=at, findings=findings, errors=errors, meta=meta, seconds=time.process_time() - started)


def slot_floor(moment: datetime) -> datetime:
    """The start of the 15-minute slot holding ``moment``. Baseline windows and the pending
    look-back start there: they are coarse by nature, and on slot boundaries the store answers
    from its pre-aggregated rollups instead of reading a whole day's messages (measured: the
    50-rule evaluation's CPU, see tests/benchmarks/alerts.py). The current window and the
    pending age limit stay exact."""
    micros = epoch_micros(moment)
    return moment - timedelta(microseconds=micros % SLOT_MICROS)


def _percent(x: float | None) -> str:
    return "n/a" if x is None or pd.isna(x) else f"{100 * x:.1f}%"


def _range_param(window: timedelta) -> str:
    """The dashboard's date-range preset covering a window ending now."""
    return "24h" if window <= timedelta(hours=24) else "7d" if window <= timedelta(days=7) else "30d"


def _grouping(rule: Rule) -> tuple[str | None, dict]:
    return rule.dimension.group_sql(rule.by_argument)


def _group_link(rule: Rule, grp: str) -> dict:
    return rule.dimension.link_params(rule.by_argument, grp)


def _subject(rule: Rule, grp: str) -> str:
    return "all messages" if rule.dimension.name == "all" else f"{rule.by} {grp}"


# --------------------------------------------------------------------------- the kinds


def rate_windows(rule: Rule, at: datetime) -> list[tuple[datetime, datetime]]:
    """A delivery_rate rule's windows: the current one, then the baseline's previous days."""
    windows = [(at - rule.window, at)]
    if rule.drop_vs_baseline is not None:
        windows += [(slot_floor(at - timedelta(days=d) - rule.window), slot_floor(at - timedelta(days=d)))
                    for d in range(1, BASELINE_DAYS + 1)]
    return windows


def delivery_rate(rule: Rule, store: Store, ctx: Context) -> list[Finding]:
    """Delivery rate (delivered / messages with an outcome, :func:`~dlrlens.store.sql.counts_select`)
    of the messages sent in [at - window, at) per group, under ``below`` or ``drop_vs_baseline``
    points under the same window of the previous 7 days."""
    at = ctx.at
    windows = rate_windows(rule, at)
    shared = ctx.shared_windows.get((rule.by, rule.campaigns)) or windows
    group, params = _grouping(rule)
    df = store.window_counts(Filters(campaigns=rule.campaigns), shared, group, params)
    # The shared query's windows -> this rule's (0: the current window, 1..7: the baseline days).
    mine = {shared.index(w): i for i, w in enumerate(windows)}
    df = df[df["w"].isin(list(mine))].copy()
    df["w"] = df["w"].map(mine)
    df["finished"] = df["messages"] - df["pending"]
    current = df[df["w"] == 0].set_index("grp")
    past = df[(df["w"] > 0) & (df["finished"] > 0)].groupby("grp").agg(
        days=("w", "nunique"), delivered=("delivered", "sum"), finished=("finished", "sum"))
    out = []
    for grp, row in current.iterrows():
        finished = int(row["finished"])
        if finished < rule.min_messages or finished == 0:
            continue  # never alert on tiny volumes
        rate = float(row["delivered"]) / finished
        baseline = None
        history = past.loc[grp] if grp in past.index else None
        if (history is not None and history["days"] >= rule.baseline_days
                and history["finished"] >= max(rule.min_messages, 1)):
            baseline = float(history["delivered"]) / float(history["finished"])
        reasons = []
        if rule.below is not None and rate < rule.below:
            reasons.append(f"under the floor {_percent(rule.below)}")
        if rule.drop_vs_baseline is not None and baseline is not None and rate < baseline - rule.drop_vs_baseline:
            reasons.append(f"{100 * (baseline - rate):.1f} points under the baseline (limit "
                           f"{100 * rule.drop_vs_baseline:.0f})")
        if not reasons:
            continue
        base_text = (f"baseline {_percent(baseline)} (same {format_duration(rule.window)} of {int(history['days'])} "
                     f"of the previous {BASELINE_DAYS} days, {int(history['finished']):,} messages)"
                     if baseline is not None else "no baseline (not enough history)")
        out.append(Finding(
            rule=rule.name, grp=str(grp), value=rate, baseline=baseline, messages=finished,
            summary=(f"{_subject(rule, grp)}: delivery rate {_percent(rate)} over the last "
                     f"{format_duration(rule.window)} ({int(row['delivered']):,} of {finished:,} messages with an "
                     f"outcome, {int(row['pending']):,} pending), {' and '.join(reasons)}; {base_text}"),
            page="campaigns" if rule.dimension.name == "campaign" else "",
            link={"range": _range_param(rule.window), **_group_link(rule, str(grp))},
            detail={"delivered": int(row["delivered"]), "failed": int(row["failed"]), "unknown": int(row["unknown"]),
                    "pending": int(row["pending"]), "baseline_days": None if history is None else int(history["days"])}))
    return out


def receipt_silence(rule: Rule, store: Store, ctx: Context) -> list[Finding]:
    """No receipt received in [at - window, at) while traffic was expected: the window before
    had at least min_messages receipts, or the same window of at least baseline_days of the
    previous 7 days did; once firing it stays so until a receipt arrives."""
    at, firing = ctx.at, ctx.firing
    w = rule.window
    windows = [(at - w, at), (at - 2 * w, at - w)] + [
        (at - timedelta(days=d) - w, at - timedelta(days=d)) for d in range(1, BASELINE_DAYS + 1)]
    counts = store.receipts_received(windows)
    now_count, before, days = counts[0], counts[1], counts[2:]
    busy_days = sum(1 for c in days if c >= max(rule.min_messages, 1))
    expected = before >= max(rule.min_messages, 1) or busy_days >= rule.baseline_days or "all" in firing
    if now_count > 0 or not expected:
        return []
    typical = sorted(days)[len(days) // 2]
    return [Finding(rule=rule.name, grp="all", value=0, baseline=float(typical), messages=0,
                    summary=(f"no receipt received in the last {format_duration(w)}; the {format_duration(w)} before "
                             f"brought {before:,}, the same {format_duration(w)} of the previous {BASELINE_DAYS} days "
                             f"a median of {typical:,} (at least {rule.min_messages:,} on {busy_days} of them)"),
                    page="health", link={"range": "24h"}, detail={"before": before, "previous_days": days})]


def pending_age(rule: Rule, store: Store, ctx: Context) -> list[Finding]:
    """Messages sent in [at - window, at) still pending longer than older_than after their own
    sent time, per group: fires at min_messages (at least 1) of them."""
    at = ctx.at
    group, params = _grouping(rule)
    f = Filters(start=slot_floor(at - rule.window), end=at, campaigns=rule.campaigns)
    df = store.pending_by_age(f, at, (int(rule.older_than.total_seconds()),), group, params)
    old = df[df["bucket_order"] == 1]
    out = []
    for grp, rows in old.groupby("grp"):
        stuck = int(rows["messages"].sum())
        if stuck < max(rule.min_messages, 1):
            continue
        statuses = ", ".join(f"{s} {int(n):,}" for s, n in zip(rows["last_status"], rows["messages"]))
        out.append(Finding(rule=rule.name, grp=str(grp), value=float(stuck), messages=stuck,
                           summary=(f"{_subject(rule, grp)}: {stuck:,} messages sent in the last "
                                    f"{format_duration(rule.window)} pending for more than "
                                    f"{format_duration(rule.older_than)} (stuck at {statuses})"),
                           page="", link={"range": _range_param(rule.window), "outcome": "pending",
                                          **_group_link(rule, str(grp))},
                           detail={"statuses": dict(zip(rows["last_status"], map(int, rows["messages"])))}))
    return out


def unknown_status(rule: Rule, store: Store, ctx: Context) -> list[Finding]:
    """Receipts received in [at - window, at) with a status not in Mobivate's table, one group per status."""
    at = ctx.at
    df = store.unknown_statuses(at - rule.window, at)
    out = []
    for row in df.itertuples():
        if row.receipts < max(rule.min_messages, 1):
            continue
        code = "" if pd.isna(row.status_code) else f" (code {int(row.status_code)})"
        out.append(Finding(rule=rule.name, grp=str(row.status), value=float(row.receipts), messages=int(row.receipts),
                           summary=(f"status {row.status}{code}, not in Mobivate's status table: {int(row.receipts):,} "
                                    f"receipts in the last {format_duration(rule.window)}"),
                           page="health", link={"range": "24h"}))
    return out


def rejected_requests(rule: Rule, store: Store, ctx: Context) -> list[Finding]:
    """Webhook requests refused in [at - window, at) per reason (from the kept refused bodies)."""
    at, data_dir = ctx.at, ctx.data_dir
    found = rejected.rejected_between(data_dir, at - rule.window, at)
    out = []
    for reason, seen in sorted(found.items()):
        if rule.reasons and reason not in rule.reasons:
            continue
        if seen["count"] < max(rule.min_messages, 1):
            continue
        hint = " (a wrong or rotated secret looks like this)" if reason in ("unauthorized", "too_many_auth_failures") \
            else ""
        count = f"{'at least ' if seen['at_least'] else ''}{seen['count']:,}"
        out.append(Finding(rule=rule.name, grp=reason, value=float(seen["count"]), messages=seen["count"],
                           summary=f"{count} webhook requests refused as {reason} in the last "
                                   f"{format_duration(rule.window)}{hint}",
                           page="health", link={"range": "24h"}))
    return out


WRITER_ERRORS = ("storage_errors", "flush_errors", "quarantined_segments")


def collector_health(rule: Rule, store: Store, ctx: Context) -> list[Finding]:
    """The collector's own state (as of now, whatever ``at``): maintenance silent longer than
    stale_after, a maintenance task failing since its last success, writer errors (storage,
    flush, quarantined log segments) counted since the previous evaluation."""
    data_dir, previous, meta = ctx.data_dir, ctx.previous, ctx.meta
    import json

    out = []
    doc = status.maintenance_status(data_dir)
    now = pd.Timestamp.now(tz="UTC")
    if doc is not None:
        try:
            updated = pd.Timestamp(doc.get("updated_at"))
            if now - updated > pd.Timedelta(rule.stale_after):
                out.append(Finding(rule=rule.name, grp="maintenance_stale", page="health",
                                   summary=f"the collector's maintenance has not reported for "
                                           f"{format_duration((now - updated).to_pytimedelta())} (limit "
                                           f"{format_duration(rule.stale_after)}): is the collector running?"))
            successes = doc.get("last_success_at") or {}
            error_at = doc.get("last_error_at")
            task = (doc.get("last_error") or "").split(":", 1)[0]
            if error_at and (not successes.get(task) or pd.Timestamp(error_at) > pd.Timestamp(successes[task])):
                out.append(Finding(rule=rule.name, grp="maintenance_failing", page="health",
                                   summary=f"maintenance task {task} failing since {error_at}: {doc.get('last_error')}"))
        except (ValueError, TypeError, AttributeError):
            pass  # not ours: status must answer anyway
    counted = status.sum_counters(status.writer_counters(data_dir).values())["counters"]
    totals = {name: int(counted.get(name, 0)) for name in WRITER_ERRORS}
    meta["writer_errors"] = json.dumps(totals)
    before = json.loads(previous.get("writer_errors") or "null")
    if before is not None:
        grown = {name: totals[name] - before.get(name, 0) for name in WRITER_ERRORS if totals[name] > before.get(name, 0)}
        if grown:
            out.append(Finding(rule=rule.name, grp="writer_errors", page="health",
                               summary="collector writer errors since the last evaluation: "
                                       + ", ".join(f"{name} +{n}" for name, n in grown.items()),
                               detail=grown))
    return out


KIND_EVALUATORS = {"delivery_rate": delivery_rate, "receipt_silence": receipt_silence, "pending_age": pending_age,
                   "unknown_status": unknown_status, "rejected_requests": rejected_requests,
                   "collector_health": collector_health}
