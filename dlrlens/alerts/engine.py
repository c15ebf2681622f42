"""From an evaluation to notifications: firing, resolved, repeat, grouping, silences; and the
process that runs it every minute beside the collector.

Alertmanager's conventions, per rule:

* A (rule, group) that starts firing is announced in one *firing* notification per rule
  and channel listing every group that started firing in the same evaluation (grouping:
  three campaigns of one rule falling at once make one message).
* While it stays firing, a *repeat* notification (again one per rule, listing every firing
  group) goes out every ``repeat_interval`` (0: never).
* When it stops firing, a *resolved* notification lists the groups that recovered.
* A silence (rule, optionally one group, a time span) mutes notifications, not the state: a
  silenced alert is tracked (the Alerts page and ``/metrics`` show it) and, if still firing
  when the silence ends, announced then; one that resolves while silenced resolves quietly.

:func:`run_once` writes the new state and the notifications in one transaction
(:meth:`dlrlens.store.alert_state.AlertState.apply`) and then delivers them
(:func:`dlrlens.alerts.notify.deliver_due`): a process that dies in between leaves them queued
for the next one, which neither repeats a sent notification nor loses a firing alert.

:func:`main` (``python3 -m dlrlens.alerts.engine``) evaluates every ``--every`` seconds while
it holds ``data/alerts.lock`` (one evaluator per data directory); :class:`AlertsProcess` is
that process supervised by the collector's master (:mod:`dlrlens.alerts.process`), like the
maintenance process (a separate process at nice +10: evaluation and delivery never take a
worker thread from the webhook).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlencode

from dlrlens.alerts import notify
from dlrlens.alerts.evaluate import Evaluation, Finding, evaluate
from dlrlens.alerts.rules import AlertsConfig, Rule, RulesError, describe, format_duration, load
from dlrlens.store import files
from dlrlens.store.alert_state import ALERTS_LOCK, AlertRow, AlertState, NewNotification, silenced
from dlrlens.store.maintenance import NICENESS, supervised_child
from dlrlens.store.reader import Store

log = logging.getLogger("dlrlens.alerts")
UTC = timezone.utc
LOCK_RETRY_SECONDS = 2.0
MAX_GROUPS_LISTED = 50  # per notification; the rest are counted ("... and 12 more")


@dataclass
class RunResult:
    """What one :func:`run_once` did."""

    at: datetime
    evaluation: Evaluation
    fired: list[tuple[str, str]] = field(default_factory=list)
    resolved: list[tuple[str, str]] = field(default_factory=list)
    repeated: list[tuple[str, str]] = field(default_factory=list)
    silenced: list[tuple[str, str]] = field(default_factory=list)
    queued: list[NewNotification] = field(default_factory=list)
    deliveries: list[notify.Delivery] = field(default_factory=list)


def dashboard_link(config: AlertsConfig, finding: Finding) -> str:
    """The dashboard page filtered to ``finding`` (empty without a dashboard URL)."""
    if not config.dashboard_url:
        return ""
    query = urlencode(finding.link, doseq=True)
    return f"{config.dashboard_url}/{finding.page}" + (f"?{query}" if query else "")


def _message(config: AlertsConfig, rule: Rule, kind: str, findings: list[Finding], groups: list[str],
             at: datetime) -> tuple[str, str]:
    """Title and body of one notification of ``rule`` listing ``groups``."""
    label = {"firing": "FIRING", "repeat": "STILL FIRING", "resolved": "RESOLVED"}[kind]
    what = f"{len(groups)} {rule.by if rule.dimension.name != 'all' else 'groups'}" if len(groups) > 1 else groups[0]
    title = f"[{label}] {rule.name}: {what}"
    by_group = {f.grp: f for f in findings}
    lines = [f"{rule.name} ({rule.kind}) at {at:%Y-%m-%d %H:%M} UTC"]
    for grp in groups[:MAX_GROUPS_LISTED]:
        finding = by_group.get(grp)
        if finding is None:  # resolved: no finding any more
            lines.append(f"- {grp}: no longer firing")
            continue
        lines.append(f"- {finding.summary}")
        link = dashboard_link(config, finding)
        if link:
            lines.append(f"  {link}")
    if len(groups) > MAX_GROUPS_LISTED:
        lines.append(f"... and {len(groups) - MAX_GROUPS_LISTED} more")
    if kind == "repeat":
        lines.append(f"(repeated every {format_duration(rule.repeat_interval)} while firing)")
    return title, "\n".join(lines)


def plan(config: AlertsConfig, stored: list[AlertRow], evaluation: Evaluation, silences: list[dict],
         now: datetime) -> tuple[list[AlertRow], list[NewNotification], RunResult]:
    """The alert rows to write and the notifications to queue for ``evaluation`` (pure)."""
    at = evaluation.at
    result = RunResult(at=at, evaluation=evaluation)
    rows: list[AlertRow] = []
    notes: list[NewNotification] = []
    by_rule: dict[str, dict[str, AlertRow]] = {}
    for row in stored:
        by_rule.setdefault(row.rule, {})[row.grp] = row
    for rule in config.rules:
        if rule.name in evaluation.errors:
            continue  # a failed evaluation neither fires nor resolves
        findings = [f for f in evaluation.findings if f.rule == rule.name]
        existing = by_rule.get(rule.name, {})
        announce, resolve, repeat = [], [], []
        for finding in findings:
            row = existing.get(finding.grp)
            muted = silenced(silences, rule.name, finding.grp)
            if row is None or row.state != "firing":
                row = AlertRow(rule=rule.name, grp=finding.grp, state="firing", since=at)
                result.fired.append((rule.name, finding.grp))
            row.evaluated_at, row.value, row.baseline = at, finding.value, finding.baseline
            row.messages, row.detail = finding.messages, dict(finding.detail, summary=finding.summary)
            if muted:
                result.silenced.append((rule.name, finding.grp))
            elif not row.announced:
                announce.append(row)
            elif (rule.repeat_interval.total_seconds() > 0 and row.last_notified is not None
                  and at - row.last_notified >= rule.repeat_interval):
                repeat.append(row)
            rows.append(row)
        firing_now = {f.grp for f in findings}
        for grp, row in existing.items():
            if row.state == "firing" and grp not in firing_now:
                result.resolved.append((rule.name, grp))
                row.state, row.resolved_at, row.evaluated_at = "resolved", at, at
                if row.announced and not silenced(silences, rule.name, grp):
                    resolve.append(row)
                row.announced = False
                rows.append(row)
        if repeat:  # a repeat lists every announced, unmuted group still firing
            repeat = [r for r in rows if r.state == "firing" and r.announced and r not in announce
                      and not silenced(silences, rule.name, r.grp)]
        for kind, group_rows in (("firing", announce), ("repeat", repeat), ("resolved", resolve)):
            if not group_rows:
                continue
            groups = sorted(r.grp for r in group_rows)
            title, body = _message(config, rule, kind, findings, groups, at)
            for channel in rule.notify:
                notes.append(NewNotification(rule.name, kind, channel, groups, title, body))
            for r in group_rows:
                if kind != "resolved":
                    r.announced = True
                r.last_notified = at
            if kind == "repeat":
                result.repeated += [(rule.name, g) for g in groups]
    result.queued = notes
    return rows, notes, result


def run_once(config: AlertsConfig, data_dir: Path, at: datetime | None = None, *, store: Store | None = None,
             deliver: bool = True, send=notify.send_apprise) -> RunResult:
    """One evaluation at ``at`` (default now), its state changes and notifications (queued in
    one transaction with the state), then delivery of everything due (this run's and any
    left by an earlier process)."""
    now = datetime.now(UTC)
    at = (at or now).astimezone(UTC)
    data_dir = Path(data_dir)
    state = AlertState(data_dir)
    state.forget_rules_except({r.name for r in config.rules})
    stored = state.alerts()
    firing = {(r.rule, r.grp) for r in stored if r.state == "firing"}
    owned = store is None
    store = store or Store(data_dir)
    try:
        evaluation = evaluate(config, store, data_dir, at, firing, state.meta())
    finally:
        if owned:
            store.close()
    rows, notes, result = plan(config, stored, evaluation, state.silences(active_at=at), now)
    meta = dict(evaluation.meta, last_evaluation_at=at.isoformat(), last_evaluation_cpu_seconds=f"{evaluation.seconds:.3f}",
                last_evaluation_errors="; ".join(f"{k}: {v}" for k, v in evaluation.errors.items()),
                alerts_file=config.source, rules=json.dumps([r.name for r in config.rules]),
                rule_table=json.dumps([describe(r) for r in config.rules]))
    state.apply(rows, notes, now, meta)
    if deliver:
        result.deliveries = notify.deliver_due(config, state, send=send)
    return result


def send_test(config: AlertsConfig, data_dir: Path, channel: str, send=notify.send_apprise) -> notify.Delivery:
    """Queue and deliver a test notification to ``channel`` (KeyError if unknown); recorded
    in the history like any other."""
    if channel not in config.channels:
        raise KeyError(channel)
    now = datetime.now(UTC)
    state = AlertState(data_dir)
    nid = state.add_test_notification(channel, "[TEST] dlrlens alerts",
                                      f"A test notification from dlrlens to channel {channel!r} at "
                                      f"{now:%Y-%m-%d %H:%M:%S} UTC. If you read this, alerts reach you here.", now)
    # Only this one (other queued notifications keep their schedule), and never retried later:
    # the person who asked sees the outcome now.
    return notify.deliver_one(config, state, channel, state.notification(nid), send, retry=False)


# --------------------------------------------------------------------------- the process


def loop(data_dir: Path, alerts_file: Path, every: float, stop: threading.Event) -> None:
    """Evaluate every ``every`` seconds until ``stop`` while holding the alerts lock. A wrong
    alerts file is logged and recorded (the last good one stays in force)."""
    held = None
    config: AlertsConfig | None = None
    store: Store | None = None  # kept: what it keeps per immutable derived file serves every evaluation
    while not stop.is_set():
        if held is None:
            held = files.lock(Path(data_dir) / ALERTS_LOCK, wait=False)
            if held is None:
                stop.wait(LOCK_RETRY_SECONDS)
                continue
            log.info("event=alerts_active pid=%d file=%s every=%.0fs", os.getpid(), alerts_file, every)
        started = time.monotonic()
        try:
            config = load(alerts_file)
        except RulesError as exc:
            log.error("event=alerts_file_refused error=%r", str(exc))
            AlertState(data_dir).apply([], [], datetime.now(UTC), {"alerts_file_error": str(exc)})
        else:
            AlertState(data_dir).apply([], [], datetime.now(UTC), {"alerts_file_error": ""})
        if config is not None:
            try:
                store = store or Store(data_dir)
                result = run_once(config, data_dir, store=store)
                if result.fired or result.resolved:
                    log.info("event=alerts_evaluated fired=%d resolved=%d notifications=%d cpu_seconds=%.2f",
                             len(result.fired), len(result.resolved), len(result.queued), result.evaluation.seconds)
            except Exception as exc:  # the loop must outlive any failure; the next tick retries
                log.error("event=alerts_failed error=%r", f"{type(exc).__name__}: {exc}")
                if store is not None:  # start the next tick on a fresh connection
                    store.close()
                    store = None
        stop.wait(max(0.0, every - (time.monotonic() - started)))
    if store is not None:
        store.close()
    if held is not None:
        held.release()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m dlrlens.alerts.engine", description="Evaluate alert rules "
                                     "periodically (the collector runs this).")
    parser.add_argument("--data", required=True)
    parser.add_argument("--file", required=True, help="the alerts file (alerts.toml)")
    parser.add_argument("--every", type=float, default=60.0, help="seconds between evaluations")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--niceness", type=int, default=NICENESS)
    parser.add_argument("--parent", type=int, default=None, help="exit when this process is gone")
    args = parser.parse_args(argv)
    parent, stop = supervised_child(args.log_level, args.niceness, args.parent)
    worker = threading.Thread(target=loop, args=(Path(args.data), Path(args.file), args.every, stop),
                              name="dlrlens-alerts", daemon=True)
    worker.start()
    while not stop.wait(1.0) and os.getppid() == parent:
        pass
    stop.set()
    worker.join(timeout=5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
