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
it holds ``data/alerts.lock`` (one evaluator per data directory), reading the store that
``DLRLENS_STORE`` chooses (:func:`dlrlens.store.backends.open_store`); :class:`AlertsProcess` is
that process supervised by the collector's master (:mod:`dlrlens.alerts.process`), like the
maintenance process (a separate process at nice +10: evaluation and delivery never take a
worker thread from the webhook).

**On the Iceberg store** the state is shared by every collector's alerts process and the
dashboard through one Iceberg table (:mod:`dlrlens.store.iceberg.alert_table`), coordinated by
catalog commits only. Each :func:`run_round` loads the table's current snapshot S, imports it
into the local working copy, runs the ordinary evaluation (:func:`run_once` without delivery),
*claims* the notifications due (``sending`` until :func:`claim_seconds` from now, so no other
process delivers them meanwhile) and commits the whole state as an overwrite based on S. A
refused commit (another process committed since S) is discarded whole: nothing of it is sent,
and the next round starts from the winner's state. The winner then delivers what it claimed and
records the outcomes with another commit on the latest snapshot (re-applied by notification
id, retried on refusal). So each notification is sent by one process; only a process that dies
(or cannot reach the catalog) between a channel's acceptance and that second commit leaves
its claim to run out, and the notification is sent again by the next round: at-least-once, as
on the local store. Evaluations of every collector take turns on one state (each round builds on
the last one committed): a firing alert is announced once, whoever evaluates. The two kinds that
read the collector's own directory (:data:`COLLECTOR_KINDS`) are kept per collector: their groups
are named ``<collector id>/<group>``, and a collector resolves only its own.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlencode

from dlrlens.alerts import notify
from dlrlens.alerts.evaluate import Evaluation, Finding, evaluate
from dlrlens.alerts.rules import AlertsConfig, Rule, RulesError, describe, format_duration, load
from dlrlens.store import files
from dlrlens.store.alert_state import ALERTS_LOCK, AlertRow, AlertState, NewNotification, iso, silenced
from dlrlens.store.backends import StoreChoice, open_store, shared_alert_state, store_choice
from dlrlens.store.maintenance import NICENESS, supervised_child
from dlrlens.store.reader import Store

log = logging.getLogger("dlrlens.alerts")
UTC = timezone.utc
LOCK_RETRY_SECONDS = 2.0
MAX_GROUPS_LISTED = 50  # per notification; the rest are counted ("... and 12 more")
# Rule kinds that read the evaluating collector's own directory (refused requests, its
# maintenance and writer): on the shared state, their groups are per collector.
COLLECTOR_KINDS = ("rejected_requests", "collector_health")
CLAIM_MARGIN = timedelta(minutes=2)  # beyond the longest delivery: the outcome's commit and its retries


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
    refused: bool = False  # on the shared state: another process's round won, this one was discarded


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
         now: datetime, scope: str | None = None) -> tuple[list[AlertRow], list[NewNotification], RunResult]:
    """The alert rows to write and the notifications to queue for ``evaluation`` (pure).
    ``scope``: the evaluating collector on the shared state (:func:`scoped`): of the rules of
    :data:`COLLECTOR_KINDS`, only its own groups can resolve."""
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
            if row.state == "firing" and grp not in firing_now and _owned(rule, grp, scope):
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


def _owned(rule: Rule, grp: str, scope: str | None) -> bool:
    """Whether the evaluator of ``scope`` (None: the only one) judges ``grp`` of ``rule``."""
    return scope is None or rule.kind not in COLLECTOR_KINDS or grp.startswith(f"{scope}/")


def scoped(config: AlertsConfig, evaluation: Evaluation, scope: str) -> Evaluation:
    """``evaluation`` by collector ``scope`` as the shared state keeps it: the groups of
    :data:`COLLECTOR_KINDS` rules named ``<scope>/<group>``, its meta keys ``<key>@<scope>``
    (what it remembers between its own evaluations, e.g. its writer's error counters)."""
    kinds = {r.name: r.kind for r in config.rules}
    for finding in evaluation.findings:
        if kinds.get(finding.rule) in COLLECTOR_KINDS:
            finding.grp = f"{scope}/{finding.grp}"
    evaluation.meta = {f"{key}@{scope}": value for key, value in evaluation.meta.items()}
    return evaluation


def run_once(config: AlertsConfig, data_dir: Path, at: datetime | None = None, *, store: Store | None = None,
             deliver: bool = True, send=notify.send_apprise, scope: str | None = None,
             meta: dict[str, str] | None = None) -> RunResult:
    """One evaluation at ``at`` (default now), its state changes and notifications (queued in
    one transaction with the state, with ``meta``), then delivery of everything due (this
    run's and any left by an earlier process). ``scope``: the evaluating collector on the
    shared state (:func:`scoped`)."""
    now = datetime.now(UTC)
    at = (at or now).astimezone(UTC)
    data_dir = Path(data_dir)
    state = AlertState(data_dir)
    state.forget_rules_except({r.name for r in config.rules})
    stored = state.alerts()
    firing = {(r.rule, r.grp) for r in stored if r.state == "firing"}
    previous = state.meta()
    if scope is not None:
        previous = {key[:-len(scope) - 1]: value for key, value in previous.items() if key.endswith(f"@{scope}")}
    owned = store is None
    store = store or Store(data_dir)
    try:
        evaluation = evaluate(config, store, data_dir, at, firing, previous)
    finally:
        if owned:
            store.close()
    if scope is not None:
        evaluation = scoped(config, evaluation, scope)
    rows, notes, result = plan(config, stored, evaluation, state.silences(active_at=at), now, scope)
    meta = dict(evaluation.meta, **(meta or {}), last_evaluation_at=at.isoformat(),
                last_evaluation_cpu_seconds=f"{evaluation.seconds:.3f}",
                last_evaluation_errors="; ".join(f"{k}: {v}" for k, v in evaluation.errors.items()),
                alerts_file=config.source, rules=json.dumps([r.name for r in config.rules]),
                rule_table=json.dumps([describe(r) for r in config.rules]))
    state.apply(rows, notes, now, meta)
    if deliver:
        result.deliveries = notify.deliver_due(config, state, send=send)
    return result


def claim_seconds(config: AlertsConfig) -> timedelta:
    """How long a round's claim on the notifications it delivers lasts (see the module
    docstring): the longest a channel's deliveries can take (every attempt's hard wait, the
    back-off between them), plus :data:`CLAIM_MARGIN`. A claim that runs out makes the
    notification due again for any process."""
    timeout = config.send_timeout.total_seconds()
    attempts = config.send_attempts
    longest = attempts * (timeout * 2 + 1) + sum(notify.BACKOFF_SECONDS * 2 ** n for n in range(attempts - 1))
    return timedelta(seconds=longest) + CLAIM_MARGIN


def run_round(config: AlertsConfig, data_dir: Path, shared, at: datetime | None = None, *, store: Store,
              send=notify.send_apprise, meta: dict[str, str] | None = None) -> RunResult:
    """One evaluation on the shared alert state ``shared`` (a
    :class:`~dlrlens.store.iceberg.alert_table.SharedAlertState`; see the module docstring):
    import, evaluate, claim, commit; then, only when the commit won, deliver and record the
    outcomes. ``result.refused``: another process's round won (nothing sent). Raises when the
    catalog or object store fails (nothing sent either)."""
    with shared.round() as loaded:
        result = run_once(config, data_dir, at, store=store, deliver=False, scope=shared.committer or None, meta=meta)
        now = datetime.now(UTC)
        claimed = shared.local.claim_due(now, now + claim_seconds(config))
        try:
            shared.commit(loaded)
        except shared.Refused as exc:
            log.info("event=alerts_round_refused error=%r", str(exc))
            result.refused = True
    if result.refused:
        try:  # the working copy (/metrics reads it) shows the winner's state, not the discarded one
            shared.refresh()
        except Exception as exc:
            log.warning("event=alert_state_refresh_failed error=%r", f"{type(exc).__name__}: {exc}")
        return result
    result.deliveries = notify.deliver(config, shared.local, claimed, send)
    _record_outcomes(shared, [d.notification_id for d in result.deliveries])
    return result


def _record_outcomes(shared, ids: list[int]) -> None:
    """Commit the delivery outcomes of notifications ``ids`` (as the working copy holds them
    now) onto the shared state's latest snapshot; a failure is logged (their claims run out and
    they are sent again: at-least-once)."""
    if not ids:
        return
    outcomes = [n for n in (shared.local.notification(i) for i in ids) if n is not None]
    try:
        shared.change(lambda state: state.set_outcomes(outcomes))
    except Exception as exc:
        log.error("event=alert_outcomes_unrecorded notifications=%d error=%r", len(outcomes),
                  f"{type(exc).__name__}: {exc}")


def send_test(config: AlertsConfig, data_dir: Path, channel: str, send=notify.send_apprise,
              choice: StoreChoice | None = None) -> notify.Delivery:
    """Queue and deliver a test notification to ``channel`` (KeyError if unknown); recorded
    in the history like any other (on the Iceberg store, in the shared state: queued already
    claimed, its outcome committed after)."""
    if channel not in config.channels:
        raise KeyError(channel)
    now = datetime.now(UTC)
    title = "[TEST] dlrlens alerts"
    body = (f"A test notification from dlrlens to channel {channel!r} at {now:%Y-%m-%d %H:%M:%S} UTC. "
            f"If you read this, alerts reach you here.")
    shared = shared_alert_state(data_dir, choice)
    if shared is not None:
        def queue_claimed(state: AlertState) -> dict:
            nid = state.add_test_notification(channel, title, body, now)
            return state.claim_due(now, now + claim_seconds(config), ids=[nid])[0]

        note = shared.change(queue_claimed)
        delivery = notify.deliver_one(config, shared.local, channel, note, send, retry=False)
        _record_outcomes(shared, [delivery.notification_id])
        return delivery
    state = AlertState(data_dir)
    nid = state.add_test_notification(channel, title, body, now)
    # Only this one (other queued notifications keep their schedule), and never retried later:
    # the person who asked sees the outcome now.
    return notify.deliver_one(config, state, channel, state.notification(nid), send, retry=False)


def evaluate_now(config: AlertsConfig, data_dir: Path, at: datetime | None = None, *, store: Store | None = None,
                 choice: StoreChoice | None = None, send=notify.send_apprise, meta: dict[str, str] | None = None,
                 committer: str = "") -> RunResult:
    """One evaluation on the store ``choice`` chooses (default: ``DLRLENS_STORE``): :func:`run_once`
    on the local store, :func:`run_round` on the Iceberg store (``committer``: this collector's
    id, which scopes :data:`COLLECTOR_KINDS`). ``store``: the open reader to use (kept open by
    the caller), else one is opened and closed."""
    choice = store_choice() if choice is None else choice
    if not choice.is_local and not committer:
        from dlrlens.store.iceberg.publisher import collector_id

        committer = collector_id(data_dir)
    shared = shared_alert_state(data_dir, choice, committer)
    owned = store is None
    store = store or open_store(data_dir, choice)
    try:
        if shared is None:  # a round that works clears the last one's error (an import does on Iceberg)
            return run_once(config, data_dir, at, store=store, send=send, meta=dict(meta or {}, alerts_round_error=""))
        return run_round(config, data_dir, shared, at, store=store, send=send, meta=meta)
    finally:
        if owned:
            store.close()


# --------------------------------------------------------------------------- the process


def loop(data_dir: Path, alerts_file: Path, every: float, stop: threading.Event,
         choice: StoreChoice | None = None, send=notify.send_apprise) -> None:
    """Evaluate every ``every`` seconds until ``stop`` while holding the alerts lock, on the
    store ``choice`` chooses (default: ``DLRLENS_STORE``; see :func:`evaluate_now`). A wrong
    alerts file is logged and recorded (the last good one stays in force). A failed round is
    logged (``event=alerts_failed``) and recorded in the working copy's meta
    (``alerts_round_error``: the Alerts page and ``/metrics`` show it); the next tick retries."""
    choice = store_choice() if choice is None else choice
    held = None
    config: AlertsConfig | None = None
    file_error = ""
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
            file_error = str(exc)
        else:
            file_error = ""
        if config is None:  # nothing to evaluate with: the refusal is recorded here only
            AlertState(data_dir).apply([], [], datetime.now(UTC), {"alerts_file_error": file_error})
        else:
            try:
                store = store or open_store(data_dir, choice)
                result = evaluate_now(config, data_dir, store=store, choice=choice, send=send,
                                      meta={"alerts_file_error": file_error})
                if result.fired or result.resolved or result.refused:
                    log.info("event=alerts_evaluated fired=%d resolved=%d notifications=%d refused=%s "
                             "cpu_seconds=%.2f", len(result.fired), len(result.resolved),
                             0 if result.refused else len(result.queued), result.refused, result.evaluation.seconds)
            except Exception as exc:  # the loop must outlive any failure; the next tick retries
                error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
                log.error("event=alerts_failed error=%r", error)
                _record_failure(data_dir, error)
                if store is not None:  # start the next tick on a fresh connection
                    store.close()
                    store = None
        stop.wait(max(0.0, every - (time.monotonic() - started)))
    if store is not None:
        store.close()
    if held is not None:
        held.release()


def _record_failure(data_dir: Path, error: str) -> None:
    """Keep a failed round's error in the working copy's meta (this process's own: never
    shared, cleared by the next round's import on the Iceberg store)."""
    try:
        AlertState(data_dir).apply([], [], datetime.now(UTC), {"alerts_round_error": error,
                                                                "alerts_round_error_at": iso(datetime.now(UTC))})
    except Exception as exc:  # a full or read-only disk: the log line above says it already
        log.warning("event=alerts_failure_unrecorded error=%r", str(exc))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m dlrlens.alerts.engine", description="Evaluate alert rules "
                                     "periodically (the collector runs this).")
    parser.add_argument("--data", required=True)
    parser.add_argument("--file", required=True, help="the alerts file (alerts.toml)")
    parser.add_argument("--every", type=float, default=60.0, help="seconds between evaluations")
    parser.add_argument("--store", default=None, help="local or iceberg:<catalog> (default: $DLRLENS_STORE or local)")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--niceness", type=int, default=NICENESS)
    parser.add_argument("--parent", type=int, default=None, help="exit when this process is gone")
    args = parser.parse_args(argv)
    try:
        choice = store_choice(args.store)
    except ValueError as exc:
        parser.error(str(exc))
    parent, stop = supervised_child(args.log_level, args.niceness, args.parent)
    worker = threading.Thread(target=loop, args=(Path(args.data), Path(args.file), args.every, stop, choice),
                              name="dlrlens-alerts", daemon=True)
    worker.start()
    while not stop.wait(1.0) and os.getppid() == parent:
        pass
    stop.set()
    worker.join(timeout=5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
