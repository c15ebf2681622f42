"""The alerts' state as the Alerts and Data health pages show it (read from
:mod:`dlrlens.store.alert_state`, ``data/alerts.sqlite``, written by the alert evaluator).

* :func:`alerts_overview`: the last evaluation (time, CPU seconds, errors, a refused alerts
  file), the rules as last evaluated, the firing alerts, the silences, the notification
  history and each notify channel's delivery status, as frames.
* :func:`alert_channel_failures`: the channels whose latest delivery failed (Data health).
* :func:`add_silence` / :func:`end_silence`: the page's silence form (the store's writer).

On the Iceberg store (``DLRLENS_STORE=iceberg:...``, :func:`dlrlens.store.backends.store_choice`)
the state is the one every collector shares (:mod:`dlrlens.store.iceberg.alert_table`): read
from a working copy under the data directory refreshed at most every
:data:`~dlrlens.store.iceberg.alert_table.REFRESH_SECONDS` (a failed refresh shows as
``state_error`` and the copy is served), and a silence is a commit to the table (retried on
a concurrent commit), which every collector's next evaluation honours.

Contract: never raises for a data directory without alerts (empty frames, ``evaluated_at``
NaT); times are UTC Timestamps.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pandas as pd

from dlrlens.store.alert_state import AlertState
from dlrlens.store.backends import shared_alert_state

COMMITTER = "dashboard"  # names the dashboard's commits in the shared state's snapshots

FIRING_COLUMNS = ["rule", "group", "since", "silenced", "figures", "last_notified"]
HISTORY_COLUMNS = ["created_at", "rule", "kind", "channel", "groups", "status", "attempts", "sent_at", "last_error"]
CHANNEL_COLUMNS = ["channel", "failing", "sent", "failing_notifications", "last_success_at", "last_failure_at",
                   "last_error"]
SILENCE_COLUMNS = ["id", "rule", "group", "starts_at", "ends_at", "comment"]
RULE_COLUMNS = ["rule", "kind", "by", "condition", "notify", "repeat"]


def _frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=columns)
    for column in columns:
        if column.endswith("_at") or column in ("since", "last_notified"):
            frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame


def _read_state(data_dir: str | Path) -> tuple[AlertState, str]:
    """The alert state to read (on the Iceberg store, the shared state's working copy, refreshed
    when due) and why it may be stale ("" when it is not)."""
    shared = shared_alert_state(data_dir, committer=COMMITTER)
    if shared is None:
        return AlertState(data_dir, create=False), ""
    shared.refresh_if_due()
    return shared.local, shared.last_error or ""


def _change(data_dir: str | Path, apply):
    """``apply(state)`` on the alert state: the data directory's, or committed to the shared one."""
    shared = shared_alert_state(data_dir, committer=COMMITTER)
    if shared is None:
        return apply(AlertState(data_dir))
    return shared.change(apply)


def alerts_overview(data_dir: str | Path, now: datetime, history_limit: int = 200) -> dict:
    """{"evaluated_at", "cpu_seconds", "errors", "file_error", "state_error", "rules", "firing",
    "silences", "history", "channels"} (see the module docstring). ``state_error``: why the
    state shown may be stale (the shared state could not be read, or the last evaluation round
    failed); "" when it is not."""
    state, refresh_error = _read_state(data_dir)
    meta = state.meta()
    active = state.silences(active_at=now)
    firing = []
    for a in state.alerts(state="firing"):
        muted = any(s["rule"] == a.rule and s["grp"] in (None, a.grp) for s in active)
        firing.append({"rule": a.rule, "group": a.grp, "since": a.since, "silenced": muted,
                       "figures": a.detail.get("summary", ""), "last_notified": a.last_notified})
    try:
        rules = json.loads(meta.get("rule_table") or "[]")
    except ValueError:
        rules = []
    history = [dict(n, groups=", ".join(n["groups"])) for n in state.history(history_limit)]
    silences = [dict(s, group=s["grp"] or "(all)") for s in state.silences()]
    return {
        "evaluated_at": pd.Timestamp(meta["last_evaluation_at"]) if meta.get("last_evaluation_at") else pd.NaT,
        "cpu_seconds": float(meta["last_evaluation_cpu_seconds"]) if meta.get("last_evaluation_cpu_seconds") else None,
        "errors": meta.get("last_evaluation_errors") or "",
        "file_error": meta.get("alerts_file_error") or "",
        "state_error": refresh_error or meta.get("alerts_round_error") or "",
        "rules": _frame(rules, RULE_COLUMNS),
        "firing": _frame(firing, FIRING_COLUMNS),
        "silences": _frame(silences, SILENCE_COLUMNS),
        "history": _frame(history, HISTORY_COLUMNS),
        "channels": _frame(state.channel_status(), CHANNEL_COLUMNS),
    }


def alert_channel_failures(data_dir: str | Path) -> pd.DataFrame:
    """The notify channels whose latest delivery attempt failed (columns of the channel status)."""
    channels = _frame(_read_state(data_dir)[0].channel_status(), CHANNEL_COLUMNS)
    return channels[channels["failing"].astype(bool)].reset_index(drop=True)


def add_silence(data_dir: str | Path, rule: str, group: str | None, starts_at: datetime, ends_at: datetime,
                comment: str) -> int:
    """Mute ``rule`` (only ``group`` when given) from ``starts_at`` to ``ends_at``."""
    return _change(data_dir, lambda state: state.add_silence(rule, group or None, starts_at, ends_at, comment))


def end_silence(data_dir: str | Path, silence_id: int, at: datetime) -> None:
    _change(data_dir, lambda state: state.end_silence(silence_id, at))
