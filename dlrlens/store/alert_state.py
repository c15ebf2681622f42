"""The alerts' state and history under the data directory: ``data/alerts.sqlite``.

What it holds (one SQLite database in WAL mode, every change one transaction):

* ``alerts``: one row per (rule, group) ever evaluated as firing: ``state`` (firing |
  resolved), ``since`` (when it started firing), ``resolved_at``, ``announced`` (a firing
  notification went out for this episode: a silenced alert is tracked but not announced),
  ``last_notified``, and the figures of the last evaluation (value, baseline, messages,
  detail as JSON).
* ``notifications``: every notification, one row per (rule, kind, channel): kind firing |
  repeat | resolved | test, the groups it lists (JSON), title and body as sent, ``status``
  (pending | retrying | sending | sent | failed; ``sending``, only on the Iceberg store: claimed
  by the process whose round won, until ``next_attempt_at``), attempts, the last error, when it was sent. It is also
  the *outbox*: the evaluation writes its state change and the pending notifications in one
  transaction, and delivery marks each one sent or failed afterwards. A process that dies in
  between leaves them pending and the next process delivers them, so a restart neither
  repeats a sent notification nor loses a firing alert (only a crash between a channel's
  acceptance and the row's update can send one twice: at-least-once, as Alertmanager).
* ``silences``: a rule (and optionally one group of it) muted from starts_at to ends_at.
* ``meta``: the last evaluation's time, CPU seconds, errors, rule names (JSON), the alerts
  file's error when it was refused (text).

On the Iceberg store this database is each process's working copy of the state shared in an
Iceberg table (:mod:`dlrlens.store.iceberg.alert_table`): :meth:`AlertState.rows` exports it as
rows, keeping a bounded history (:data:`HISTORY_PER_RULE`, :data:`ENDED_SILENCES_KEPT`), and
:meth:`AlertState.replace` imports them.

Writers: the alert evaluator (one per data directory, holding ``data/alerts.lock``) and the
dashboard's silence form; SQLite serialises them (a writer waits up to
:data:`BUSY_TIMEOUT_MS`). Readers (the dashboard, ``/metrics``) only read. Times are stored as
ISO 8601 UTC text with microseconds (fixed width, so text order is time order).

Imports nothing from the collector, the dashboard or the alert engine (:mod:`dlrlens.alerts`).
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

UTC = timezone.utc
ALERTS_DB = "alerts.sqlite"
ALERTS_LOCK = "alerts.lock"  # flock: the one alert evaluator of a data directory
BUSY_TIMEOUT_MS = 10_000
NOTIFICATION_KINDS = ("firing", "repeat", "resolved", "test")
# What an export (:meth:`AlertState.rows`) keeps: every notification still to deliver, and the
# latest of those done (sent or failed) per rule; every silence in force or to come, and the
# latest ended ones. The shared state is rewritten whole by every commit: it must stay small
# (measured as JSON: an alert row 0.6 KB, a notification listing 50 groups 9.3 KB, one of one
# group under 1 KB; 60 campaigns firing at once with their notification, 45 KB in all).
HISTORY_PER_RULE = 20
ENDED_SILENCES_KEPT = 100
# A resolved alert row only describes its last episode (a group firing again starts a new one):
# kept this long after it resolved, so groups that come and go (campaigns) do not pile up.
RESOLVED_KEPT = timedelta(days=7)
# Meta keys that describe this process, not the shared state: never exported.
LOCAL_META = ("alerts_round_error", "alerts_round_error_at")
_EXPORTED = {"alert": "alerts", "notification": "notifications", "silence": "silences", "meta": "meta"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    rule TEXT NOT NULL, grp TEXT NOT NULL, state TEXT NOT NULL, since TEXT NOT NULL, resolved_at TEXT,
    announced INTEGER NOT NULL DEFAULT 0, last_notified TEXT, evaluated_at TEXT,
    value REAL, baseline REAL, messages INTEGER, detail TEXT,
    PRIMARY KEY (rule, grp));
CREATE TABLE IF NOT EXISTS notifications (
    id INTEGER PRIMARY KEY AUTOINCREMENT, created_at TEXT NOT NULL, rule TEXT NOT NULL, kind TEXT NOT NULL,
    channel TEXT NOT NULL, groups TEXT NOT NULL, title TEXT NOT NULL, body TEXT NOT NULL,
    status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at TEXT, last_error TEXT,
    last_attempt_at TEXT, sent_at TEXT);
CREATE INDEX IF NOT EXISTS notifications_due ON notifications (status, next_attempt_at);
CREATE INDEX IF NOT EXISTS notifications_channel ON notifications (channel, last_attempt_at);
CREATE TABLE IF NOT EXISTS silences (
    id INTEGER PRIMARY KEY AUTOINCREMENT, rule TEXT NOT NULL, grp TEXT, starts_at TEXT NOT NULL,
    ends_at TEXT NOT NULL, comment TEXT NOT NULL DEFAULT '', created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


def iso(moment: datetime | None) -> str | None:
    """``moment`` (aware) as the stored text: ISO 8601 UTC with microseconds."""
    return None if moment is None else moment.astimezone(UTC).isoformat(timespec="microseconds")


def instant(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


@dataclass
class AlertRow:
    """One (rule, group) alert as stored."""

    rule: str
    grp: str
    state: str  # firing | resolved
    since: datetime
    resolved_at: datetime | None = None
    announced: bool = False
    last_notified: datetime | None = None
    evaluated_at: datetime | None = None
    value: float | None = None
    baseline: float | None = None
    messages: int | None = None
    detail: dict = field(default_factory=dict)


@dataclass
class NewNotification:
    """A notification to send (written pending, in the same transaction as the state change)."""

    rule: str
    kind: str
    channel: str
    groups: list[str]
    title: str
    body: str


def db_path(data_dir: Path) -> Path:
    return Path(data_dir) / ALERTS_DB


class AlertState:
    """The alert tables of one data directory (a connection per call: usable from any thread
    or process). Creates the database on first use unless ``create`` is False, in which case
    reading a directory without one gives empty answers."""

    def __init__(self, data_dir: str | Path, create: bool = True):
        self.path = db_path(Path(data_dir))
        self._ready = False
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._ensure()

    def _ensure(self) -> bool:
        if self._ready:
            return True
        if not self.path.parent.is_dir():
            return False
        with self._connect() as con:
            con.executescript(_SCHEMA)
        self._ready = True
        return True

    @contextmanager
    def _connect(self):
        con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            con.row_factory = sqlite3.Row
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")  # a notification marked sent stays marked
            con.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            yield con
        finally:
            con.close()

    @contextmanager
    def transaction(self):
        """One write transaction (BEGIN IMMEDIATE: the writer lock is taken at once)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._ensure()
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def _rows(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        if not self.path.exists() or not self._ensure():
            return []
        with self._connect() as con:
            return con.execute(sql, params).fetchall()

    # -- alerts

    def alerts(self, state: str | None = None, rule: str | None = None) -> list[AlertRow]:
        """Every stored alert (or those in ``state`` / of ``rule``), by rule then group."""
        where, params = [], []
        if state is not None:
            where.append("state = ?")
            params.append(state)
        if rule is not None:
            where.append("rule = ?")
            params.append(rule)
        sql = "SELECT * FROM alerts" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY rule, grp"
        return [_alert(r) for r in self._rows(sql, tuple(params))]

    def firing_counts(self) -> dict[str, int]:
        """{rule: groups firing now} (for ``dlrlens_alerts_firing``): every rule of the last
        evaluation (``meta`` key ``rules``, 0 when none of its groups fires) and every rule
        with a firing group."""
        try:
            counts = {str(name): 0 for name in json.loads(self.meta().get("rules") or "[]")}
        except (ValueError, TypeError):
            counts = {}
        for r in self._rows("SELECT rule, count(*) AS n FROM alerts WHERE state = 'firing' GROUP BY rule"):
            counts[r["rule"]] = r["n"]
        return dict(sorted(counts.items()))

    def apply(self, alerts: list[AlertRow], notifications: list[NewNotification], at: datetime,
              meta: dict[str, str] | None = None) -> list[int]:
        """Store ``alerts`` (upserted by rule and group) and queue ``notifications`` (pending,
        due at once) in one transaction; returns the notifications' ids."""
        ids = []
        with self.transaction() as con:
            for a in alerts:
                con.execute(
                    "INSERT INTO alerts (rule, grp, state, since, resolved_at, announced, last_notified, evaluated_at, "
                    "value, baseline, messages, detail) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) "
                    "ON CONFLICT (rule, grp) DO UPDATE SET state=excluded.state, since=excluded.since, "
                    "resolved_at=excluded.resolved_at, announced=excluded.announced, "
                    "last_notified=excluded.last_notified, evaluated_at=excluded.evaluated_at, value=excluded.value, "
                    "baseline=excluded.baseline, messages=excluded.messages, detail=excluded.detail",
                    (a.rule, a.grp, a.state, iso(a.since), iso(a.resolved_at), int(a.announced), iso(a.last_notified),
                     iso(a.evaluated_at), a.value, a.baseline, a.messages, json.dumps(a.detail, default=str)))
            for n in notifications:
                cursor = con.execute(
                    "INSERT INTO notifications (created_at, rule, kind, channel, groups, title, body, status, "
                    "next_attempt_at) VALUES (?,?,?,?,?,?,?,'pending',?)",
                    (iso(at), n.rule, n.kind, n.channel, json.dumps(n.groups), n.title, n.body, iso(at)))
                ids.append(cursor.lastrowid)
            for key, value in (meta or {}).items():
                con.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
                            "value = excluded.value", (key, value))
        return ids

    def forget_rules_except(self, rules: set[str]) -> int:
        """Drop the alerts of rules no longer in the file (they can neither fire nor resolve)."""
        with self.transaction() as con:
            names = sorted(rules)
            marks = ",".join("?" * len(names))
            where = f"rule NOT IN ({marks})" if names else "TRUE"
            return con.execute(f"DELETE FROM alerts WHERE {where}", names).rowcount

    def meta(self) -> dict[str, str]:
        return {r["key"]: r["value"] for r in self._rows("SELECT key, value FROM meta")}

    # -- the outbox

    def due(self, now: datetime) -> list[dict]:
        """Notifications waiting to be (re)tried at ``now``, oldest first (a claim that ran out,
        ``sending`` past its ``next_attempt_at``, is due again: its process died sending)."""
        return [_notification(r) for r in self._rows(
            "SELECT * FROM notifications WHERE status IN ('pending', 'retrying', 'sending') AND next_attempt_at <= ? "
            "ORDER BY id", (iso(now),))]

    def claim_due(self, now: datetime, until: datetime, ids: list[int] | None = None) -> list[dict]:
        """Mark the notifications due at ``now`` (or those of ``ids``) ``sending`` until
        ``until`` (no one else delivers them before then); them as they were, oldest first."""
        with self.transaction() as con:
            if ids is None:
                rows = con.execute("SELECT * FROM notifications WHERE status IN ('pending', 'retrying', 'sending') "
                                   "AND next_attempt_at <= ? ORDER BY id", (iso(now),)).fetchall()
            else:
                marks = ",".join("?" * len(ids))
                rows = con.execute(f"SELECT * FROM notifications WHERE id IN ({marks}) ORDER BY id", ids).fetchall()
            con.executemany("UPDATE notifications SET status = 'sending', next_attempt_at = ? WHERE id = ?",
                            [(iso(until), r["id"]) for r in rows])
        return [_notification(r) for r in rows]

    def set_outcomes(self, outcomes: list[dict]) -> int:
        """Write the delivery fields (status, attempts, times, last error) of ``outcomes``
        (notifications as :meth:`notification` returns them) onto the rows of the same id;
        how many rows were there."""
        found = 0
        with self.transaction() as con:
            for n in outcomes:
                found += con.execute(
                    "UPDATE notifications SET status = ?, attempts = ?, last_attempt_at = ?, last_error = ?, "
                    "next_attempt_at = ?, sent_at = ? WHERE id = ?",
                    (n["status"], n["attempts"], iso(n["last_attempt_at"]), n["last_error"], iso(n["next_attempt_at"]),
                     iso(n["sent_at"]), n["id"])).rowcount
        return found

    def record_attempt(self, notification_id: int, *, ok: bool, at: datetime, error: str | None = None,
                       retry_at: datetime | None = None) -> None:
        """One delivery attempt's outcome: sent; or failed, to retry at ``retry_at`` (None:
        given up, status failed)."""
        status = "sent" if ok else ("retrying" if retry_at is not None else "failed")
        with self.transaction() as con:
            con.execute("UPDATE notifications SET status = ?, attempts = attempts + 1, last_attempt_at = ?, "
                        "last_error = ?, next_attempt_at = ?, sent_at = ? WHERE id = ?",
                        (status, iso(at), None if ok else error, iso(retry_at), iso(at) if ok else None,
                         notification_id))

    def add_test_notification(self, channel: str, title: str, body: str, at: datetime) -> int:
        return self.apply([], [NewNotification("(test)", "test", channel, [], title, body)], at)[0]

    def notification(self, notification_id: int) -> dict | None:
        rows = self._rows("SELECT * FROM notifications WHERE id = ?", (notification_id,))
        return _notification(rows[0]) if rows else None

    def history(self, limit: int = 200, rule: str | None = None) -> list[dict]:
        """The latest notifications (newest first), every status."""
        where, params = ("WHERE rule = ?", (rule, limit)) if rule else ("", (limit,))
        return [_notification(r) for r in self._rows(
            f"SELECT * FROM notifications {where} ORDER BY id DESC LIMIT ?", params)]

    def channel_status(self) -> list[dict]:
        """Per notify channel: channel, sent, failed_attempts (notifications whose last attempt
        failed, still retrying or given up), last_success_at, last_failure_at, last_error,
        failing (its latest attempt failed)."""
        rows = self._rows("""
            SELECT channel,
                   count(*) FILTER (WHERE status = 'sent') AS sent,
                   count(*) FILTER (WHERE status IN ('retrying', 'failed')) AS failing_notifications,
                   max(sent_at) AS last_success_at,
                   max(last_attempt_at) FILTER (WHERE status IN ('retrying', 'failed')) AS last_failure_at,
                   (SELECT n.last_error FROM notifications n WHERE n.channel = o.channel AND n.last_error IS NOT NULL
                    ORDER BY n.last_attempt_at DESC LIMIT 1) AS last_error
            FROM notifications o WHERE attempts > 0 GROUP BY channel ORDER BY channel""")
        out = []
        for r in rows:
            success, failure = instant(r["last_success_at"]), instant(r["last_failure_at"])
            out.append({"channel": r["channel"], "sent": r["sent"], "failing_notifications": r["failing_notifications"],
                        "last_success_at": success, "last_failure_at": failure, "last_error": r["last_error"],
                        "failing": failure is not None and (success is None or failure > success)})
        return out

    # -- export and import (the shared state of the Iceberg store)

    def rows(self) -> list[tuple[str, str, str]]:
        """The whole state as (kind, key, payload JSON) rows, kind alert | notification |
        silence | meta | sequence, with a bounded history (see :data:`HISTORY_PER_RULE`,
        :data:`RESOLVED_KEPT`) and
        without this process's own meta (:data:`LOCAL_META`)."""
        out = []
        now = datetime.now(UTC)
        for r in self._rows("SELECT * FROM alerts WHERE state != 'resolved' OR resolved_at > ? ORDER BY rule, grp",
                            (iso(now - RESOLVED_KEPT),)):
            out.append(("alert", json.dumps([r["rule"], r["grp"]]), json.dumps(dict(r))))
        for r in self._rows(
                "SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY rule, status IN ('sent', 'failed') "
                "ORDER BY id DESC) AS newest FROM notifications) WHERE status NOT IN ('sent', 'failed') OR newest <= ? "
                "ORDER BY id", (HISTORY_PER_RULE,)):
            out.append(("notification", str(r["id"]), json.dumps({k: r[k] for k in r.keys() if k != "newest"})))
        for r in self._rows("SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY ends_at > ? ORDER BY id DESC) "
                            "AS newest FROM silences) WHERE ends_at > ? OR newest <= ? ORDER BY id",
                            (iso(now),) * 2 + (ENDED_SILENCES_KEPT,)):
            out.append(("silence", str(r["id"]), json.dumps({k: r[k] for k in r.keys() if k != "newest"})))
        for r in self._rows("SELECT key, value FROM meta ORDER BY key"):
            if r["key"] not in LOCAL_META:
                out.append(("meta", r["key"], json.dumps(r["value"])))
        for r in self._rows("SELECT name, seq FROM sqlite_sequence ORDER BY name"):
            out.append(("sequence", r["name"], json.dumps(r["seq"])))  # ids stay unique after a trimmed history
        return out

    def replace(self, rows: list[tuple[str, str, str]], keep_local_meta: bool = True) -> None:
        """Make the state exactly ``rows`` (as :meth:`rows` gives them), in one transaction;
        this process's own meta (:data:`LOCAL_META`) stays unless ``keep_local_meta`` is False.
        Raises ValueError on a row of an unknown kind or column."""
        with self.transaction() as con:
            columns = {table: {c["name"] for c in con.execute(f"PRAGMA table_info({table})")}
                       for table in _EXPORTED.values()}
            local = ([] if not keep_local_meta else
                     con.execute(f"SELECT key, value FROM meta WHERE key IN ({','.join('?' * len(LOCAL_META))})",
                                 LOCAL_META).fetchall())
            for table in _EXPORTED.values():
                con.execute(f"DELETE FROM {table}")
            con.execute("DELETE FROM sqlite_sequence")
            sequences = {}
            for kind, key, payload in rows:
                value = json.loads(payload)
                if kind == "meta":
                    con.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))
                elif kind == "sequence":
                    sequences[key] = int(value)  # after the rows: their inserts set it too
                elif kind in _EXPORTED:
                    table = _EXPORTED[kind]
                    unknown = set(value) - columns[table]
                    if unknown:
                        raise ValueError(f"the shared alert state has {kind} columns this dlrlens does not know: "
                                         f"{', '.join(sorted(unknown))}")
                    names = sorted(value)
                    con.execute(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                                [value[n] for n in names])
                else:
                    raise ValueError(f"the shared alert state has a row of unknown kind {kind!r}")
            for name, seq in sequences.items():
                if not con.execute("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = ?", (seq, name)).rowcount:
                    con.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (name, seq))
            con.executemany("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                            [(r["key"], r["value"]) for r in local])

    # -- silences

    def add_silence(self, rule: str, grp: str | None, starts_at: datetime, ends_at: datetime, comment: str = "",
                    at: datetime | None = None) -> int:
        """Mute ``rule`` (only its group ``grp`` when given) from ``starts_at`` to ``ends_at``."""
        if not ends_at > starts_at:
            raise ValueError("a silence must end after it starts")
        if not rule.strip():
            raise ValueError("a silence needs a rule name")
        with self.transaction() as con:
            return con.execute(
                "INSERT INTO silences (rule, grp, starts_at, ends_at, comment, created_at) VALUES (?,?,?,?,?,?)",
                (rule, grp or None, iso(starts_at), iso(ends_at), comment, iso(at or datetime.now(UTC)))).lastrowid

    def end_silence(self, silence_id: int, at: datetime) -> None:
        """End a silence at ``at`` (kept in the history)."""
        with self.transaction() as con:
            con.execute("UPDATE silences SET ends_at = min(ends_at, ?) WHERE id = ?", (iso(at), silence_id))

    def silences(self, active_at: datetime | None = None) -> list[dict]:
        """Every silence (newest first), or those in force at ``active_at``."""
        if active_at is None:
            rows = self._rows("SELECT * FROM silences ORDER BY id DESC")
        else:
            rows = self._rows("SELECT * FROM silences WHERE starts_at <= ? AND ends_at > ? ORDER BY id DESC",
                              (iso(active_at), iso(active_at)))
        return [{"id": r["id"], "rule": r["rule"], "grp": r["grp"], "starts_at": instant(r["starts_at"]),
                 "ends_at": instant(r["ends_at"]), "comment": r["comment"], "created_at": instant(r["created_at"])}
                for r in rows]


def silenced(silences: list[dict], rule: str, grp: str) -> bool:
    """Whether any of ``silences`` (in force) mutes ``grp`` of ``rule``."""
    return any(s["rule"] == rule and (s["grp"] is None or s["grp"] == grp) for s in silences)


def _alert(r: sqlite3.Row) -> AlertRow:
    return AlertRow(rule=r["rule"], grp=r["grp"], state=r["state"], since=instant(r["since"]),
                    resolved_at=instant(r["resolved_at"]), announced=bool(r["announced"]),
                    last_notified=instant(r["last_notified"]), evaluated_at=instant(r["evaluated_at"]),
                    value=r["value"], baseline=r["baseline"], messages=r["messages"],
                    detail=json.loads(r["detail"] or "{}"))


def _notification(r: sqlite3.Row) -> dict:
    out = dict(r)
    out["groups"] = json.loads(out["groups"])
    for key in ("created_at", "next_attempt_at", "last_attempt_at", "sent_at"):
        out[key] = instant(out[key])
    return out
