"""Background maintenance of the collector: derived per-message state, compaction, and (with the
Iceberg store) the table's compaction, snapshot expiry and orphan-file cleanup.

The collector's master process runs one maintenance process (:class:`MaintenanceProcess`,
``python3 -m dlrlens.store.maintenance``) at a lower CPU priority, so that under load the webhook
(which must answer Mobivate quickly) gets the cores first and maintenance catches up when the
load drops; the dashboard merges what maintenance has not absorbed yet, so figures stay exact.
The master restarts the process when it dies; the process exits when its parent does.

In any process, :func:`start` runs a :class:`Maintainer` thread; only the one holding a
non-blocking ``flock`` on ``data/maintenance.lock`` does the work (one per data directory,
however many collectors share it), the others retry the lock every ``lock_retry_seconds``,
so when the holder dies (the kernel drops its lock) another takes over within that time. The active maintainer runs ``dlrlens.store.derive.update_derived``
every ``interval`` seconds (when that module exists) and :func:`dlrlens.store.compaction.compact`
every ``compact_every`` seconds. With the Iceberg store (an :class:`IcebergSchedule`), it also
runs :class:`dlrlens.store.iceberg.maintain.TableMaintenance` (of the receipts, clicks, replies
and derived tables) and :class:`dlrlens.store.iceberg.maintain.DerivedPublisher` (its derived state,
from its own mirror of the table under ``cache/iceberg/``, committed to the derived table)
every ``IcebergSchedule.every`` seconds: those tasks need no lock (the ``flock`` above is per data directory, i.e. per machine),
because every change it makes to the shared table is a catalog commit that any number of
collectors' maintainers may race safely. A failing task is logged on one line
(``event=maintenance_failed``) and retried at its next tick: nothing stops the thread but
:meth:`Maintainer.stop`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from dlrlens.store import compaction, derive, files, layout, pseudonym, sends
from dlrlens.store.events import EVENT_TABLES

log = logging.getLogger("dlrlens.collector")

LOCK_NAME = "maintenance.lock"
LOCK_RETRY_SECONDS = 60.0
PROCESS_LOCK_RETRY_SECONDS = 2.0  # a restarted collector's new process waits for the old one's lock
NICENESS = 10  # CFS weight ~1/10 of the webhook's when both want the CPU
RESTART_DELAY_SECONDS = 1.0
# The least DLRLENS_ICEBERG_ORPHAN_GRACE: a shorter grace could take the files of a commit in
# flight (written, not committed yet) for orphans and corrupt the table. A commit takes seconds,
# retries included, but may wait on the timeouts of a slow object store.
MIN_ORPHAN_GRACE_SECONDS = 600.0
# The least DLRLENS_ICEBERG_SNAPSHOT_RETENTION: a commit that lost a race is retried by pyiceberg
# from the snapshot it started from; expired under it, the commit starts over (its data files
# written again). Harmless now and then, wasteful if a retention of a few seconds made it common.
MIN_SNAPSHOT_RETENTION_SECONDS = 10.0
ICEBERG_TOTALS = ("files_compacted", "expired_snapshots", "orphans_deleted", "orphan_bytes_deleted", "conflicts")


@dataclass(frozen=True)
class IcebergSchedule:
    """The Iceberg table's maintenance (``DLRLENS_ICEBERG_*`` settings): catalog, seconds between
    runs, snapshot retention and orphan-file grace in seconds, and whether this process keeps a
    copy of the tables and commits the derived state from it (``DLRLENS_ICEBERG_DERIVED``)."""

    catalog: str
    every: float
    retention_seconds: float
    orphan_grace_seconds: float
    derived: bool = True

    def arguments(self) -> list[str]:
        """The same as ``python3 -m dlrlens.store.maintenance`` arguments."""
        return ["--iceberg-catalog", self.catalog, "--iceberg-every", str(self.every),
                "--snapshot-retention", str(self.retention_seconds), "--orphan-grace", str(self.orphan_grace_seconds),
                *(() if self.derived else ("--no-iceberg-derived",))]


class Maintainer:
    """The maintenance thread of one process (see the module docstring)."""

    def __init__(self, data_dir: Path, *, interval: float = 5.0, compact_every: float = 60.0,
                 lock_retry_seconds: float = LOCK_RETRY_SECONDS, compact_options: dict | None = None,
                 iceberg: IcebergSchedule | None = None):
        self.data_dir = Path(data_dir)
        self.interval = interval
        self.compact_every = compact_every
        self.lock_retry_seconds = lock_retry_seconds
        self.compact_options = dict(compact_options or {})  # keyword arguments of compaction.compact
        self.lock_attempts = 0
        self.runs = {"derive": 0, "compact": 0}
        self.errors = {"derive": 0, "compact": 0}
        # Mobivate's send records, when a key is configured (dlrlens.store.sends.periodic_sync;
        # never in the webhook's processes). None: off.
        self.sync_settings = sends.periodic_settings()
        if self.sync_settings is not None:
            self.runs["sync"] = self.errors["sync"] = 0
        self.iceberg = iceberg if iceberg is not None and iceberg.every > 0 else None
        # The periodic sync stores into the store's own send tables (also with the table's
        # maintenance turned off): the data directory is only the collector's log on Iceberg.
        self._send_catalog = iceberg.catalog if iceberg is not None else None
        self._send_destination = None
        self._table_maintenance = None  # made at the first run (imports pyiceberg)
        self._derived_maintenance = None
        self._events_maintenance = {}  # table name -> its TableMaintenance (clicks, replies, send tables, alert_state)
        self._derived_publisher = None
        self.iceberg_totals = dict.fromkeys(ICEBERG_TOTALS, 0)
        if self.iceberg is not None:
            self.runs["iceberg"] = self.errors["iceberg"] = 0
            self.runs["iceberg_derived"] = self.errors["iceberg_derived"] = 0
        self.last_results: dict[str, dict] = {}
        self.last_error: str | None = None
        self.last_error_at: datetime | None = None
        self.last_success_at: dict[str, datetime] = {}
        self._lock: files.FileLock | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dlrlens-maintenance", daemon=True)

    @property
    def active(self) -> bool:
        """Whether this process holds the maintenance lock (and so does the work)."""
        return self._lock is not None

    def start(self) -> Maintainer:
        self._thread.start()
        return self

    def stop(self, timeout: float = 60.0) -> bool:
        """Stop after the task in progress (if any) and release the lock. Returns whether the
        thread ended within ``timeout``."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._lock is not None and not self._thread.is_alive():
            self._lock.release()
            self._lock = None
        return not self._thread.is_alive()

    def status(self) -> dict:
        """Counters for metrics and health pages."""
        return {"active": self.active, "runs": dict(self.runs), "errors": dict(self.errors),
                "last_error": self.last_error, "last_results": dict(self.last_results)}

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        next_due = {"derive": 0.0, "compact": 0.0, "sync": 0.0, "iceberg": 0.0, "iceberg_derived": 0.0}
        every = {"derive": self.interval, "compact": self.compact_every}
        tasks = {"derive": self._update_derived, "compact": self._compact}
        if self.sync_settings is not None:
            every["sync"] = self.sync_settings.sync_seconds
            tasks["sync"] = self._sync
        if self.iceberg is not None:
            every["iceberg"] = every["iceberg_derived"] = self.iceberg.every
            tasks["iceberg"] = self._maintain_table
            if self.iceberg.derived:  # else no copy of the tables here (DLRLENS_ICEBERG_DERIVED=0)
                tasks["iceberg_derived"] = self._commit_derived
        while not self._stop.is_set():
            if not self.active and not self._take_lock():
                self._stop.wait(self.lock_retry_seconds)
                continue
            for name, task in tasks.items():
                if every[name] > 0 and time.monotonic() >= next_due[name] and not self._stop.is_set():
                    self._run_task(name, task)
                    next_due[name] = time.monotonic() + every[name]
            waits = [next_due[name] - time.monotonic() for name in tasks if every[name] > 0]
            self._stop.wait(max(0.0, min(waits)) if waits else self.lock_retry_seconds)

    def _take_lock(self) -> bool:
        self.lock_attempts += 1
        self._lock = files.lock(self.data_dir / LOCK_NAME, wait=False)
        if self._lock is None:
            return False
        log.info("event=maintenance_active pid=%d", os.getpid())
        return True

    def _run_task(self, name: str, task) -> None:
        try:
            result = task()
        except Exception as exc:  # the thread must outlive any failure; the next tick retries
            self.errors[name] += 1
            self.last_error = f"{name}: {type(exc).__name__}: {exc}"
            self.last_error_at = datetime.now(timezone.utc)
            log.error("event=maintenance_failed task=%s error=%r", name, f"{type(exc).__name__}: {exc}")
        else:
            self.runs[name] += 1
            self.last_success_at[name] = datetime.now(timezone.utc)
            if result is not None:
                self.last_results[name] = result
        self._write_status()

    def status_document(self) -> dict:
        """What ``data/maintenance.json`` holds (times as ISO 8601 UTC): pid, updated_at, the
        intervals, runs and errors per task, last_success_at per task, last_error(_at)."""
        def iso(moment: datetime | None) -> str | None:
            return moment.isoformat() if moment else None

        document = {"pid": os.getpid(), "updated_at": iso(datetime.now(timezone.utc)),
                    "interval_seconds": {"derive": self.interval, "compact": self.compact_every,
                                         **({"sync": self.sync_settings.sync_seconds} if self.sync_settings else {}),
                                         **({"iceberg": self.iceberg.every, "iceberg_derived": self.iceberg.every}
                                   if self.iceberg else {})},
                    "runs": dict(self.runs), "errors": dict(self.errors),
                    "last_success_at": {name: iso(at) for name, at in self.last_success_at.items()},
                    "last_error": self.last_error, "last_error_at": iso(self.last_error_at)}
        if self.iceberg is not None:
            # The table's figures after the last run, and this process's totals (for /metrics).
            document["iceberg"] = {"catalog": self.iceberg.catalog, "last_run": self.last_results.get("iceberg"),
                                   "totals": dict(self.iceberg_totals)}
        return document

    def _write_status(self) -> None:
        try:
            files.publish_bytes(self.data_dir / layout.MAINTENANCE_STATUS, json.dumps(self.status_document()).encode())
        except OSError as exc:  # the status is for people; the work goes on without it
            log.warning("event=maintenance_status_unwritable error=%r", str(exc))

    def _update_derived(self) -> dict:
        return derive.update_derived(self.data_dir)

    def _sync(self) -> dict:
        if self._send_destination is None and self._send_catalog is not None:
            from dlrlens.store.iceberg.send_tables import IcebergSends

            self._send_destination = IcebergSends(self._send_catalog)
        return sends.periodic_sync(self.data_dir, self.sync_settings, destination=self._send_destination)

    def _maintain_table(self) -> dict:
        if self._table_maintenance is None:
            from dlrlens.store.iceberg.alert_table import ALERT_TABLE
            from dlrlens.store.iceberg.derived import DERIVED_TABLE
            from dlrlens.store.iceberg.maintain import TableMaintenance
            from dlrlens.store.iceberg.send_tables import KEYED_TABLES

            self._table_maintenance = TableMaintenance(self.iceberg.catalog,
                                                       retention_seconds=self.iceberg.retention_seconds,
                                                       orphan_grace_seconds=self.iceberg.orphan_grace_seconds,
                                                       work_dir=self.data_dir / layout.ICEBERG_COMPACTION_DIR)
            self._derived_maintenance = TableMaintenance(self.iceberg.catalog, table=DERIVED_TABLE,
                                                         retention_seconds=self.iceberg.retention_seconds,
                                                         orphan_grace_seconds=self.iceberg.orphan_grace_seconds)
            # The events' tables are compacted like the receipts'; a send table's partitions and the
            # alert state are replaced whole by each commit that changes them: expiry and orphans only.
            self._events_maintenance = {
                name: TableMaintenance(self.iceberg.catalog, table=name, retention_seconds=self.iceberg.retention_seconds,
                                       orphan_grace_seconds=self.iceberg.orphan_grace_seconds,
                                       work_dir=self.data_dir / layout.ICEBERG_COMPACTION_DIR / name)
                for name in (*EVENT_TABLES, *KEYED_TABLES, ALERT_TABLE)}
        result = self._table_maintenance.run()
        result["derived_table"] = self._derived_maintenance.run()
        for name, events_maintenance in self._events_maintenance.items():
            result[f"{name}_table"] = events_maintenance.run()
        for name in ICEBERG_TOTALS:
            self.iceberg_totals[name] += result.get(name, 0)
        if result.get("files_compacted") or result.get("expired_snapshots") or result.get("orphans_deleted"):
            log.info("event=iceberg_maintained compacted=%d expired=%d snapshots=%d data_files=%d orphans_deleted=%d "
                     "objects=%d metadata_bytes=%d conflicts=%d seconds=%.2f", result["files_compacted"],
                     result["expired_snapshots"], result["snapshots"], result["data_files"], result["orphans_deleted"],
                     result["objects"], result["metadata_bytes"], result["conflicts"], result["seconds"])
        if self._table_maintenance.table is not None:  # last: a mismatch raises, the work above is done
            from dlrlens.store.iceberg.maintain import check_number_key

            result["number_key"] = check_number_key(self._table_maintenance.table,
                                                    pseudonym.key_fingerprint(pseudonym.installation_key(self.data_dir)))
        return result

    def _commit_derived(self) -> dict:
        """This collector's derived state committed to the Iceberg derived table (or the
        committed one adopted): :class:`dlrlens.store.iceberg.maintain.DerivedPublisher`."""
        if self._derived_publisher is None:
            from dlrlens.store.iceberg.maintain import DerivedPublisher

            self._derived_publisher = DerivedPublisher(self.iceberg.catalog, self.data_dir)
        result = self._derived_publisher.run()
        if result.get("committed") or result.get("refused") or result.get("adopted"):
            log.info("event=iceberg_derived committed=%s refused=%s added=%s removed=%s adopted=%s seconds=%s",
                     result.get("committed"), result.get("refused"), result.get("added"), result.get("removed"),
                     bool(result.get("adopted")), result.get("seconds"))
        return result

    def _compact(self) -> dict:
        stats = compaction.compact(self.data_dir, **self.compact_options)
        if stats.files_written or stats.files_removed or stats.errors:
            log.info("event=compacted files_merged=%d files_written=%d rows=%d bytes_before=%d bytes_after=%d "
                     "files_removed=%d errors=%d seconds=%.2f", stats.files_merged, stats.files_written,
                     stats.rows, stats.bytes_before, stats.bytes_after, stats.files_removed, stats.errors,
                     stats.seconds)
        return stats.as_dict()


def start(data_dir: Path, *, interval: float = 5.0, compact_every: float = 60.0,
          lock_retry_seconds: float = LOCK_RETRY_SECONDS, compact_options: dict | None = None,
          iceberg: IcebergSchedule | None = None) -> Maintainer | None:
    """Start this process's maintenance thread; ``None`` when every task is disabled (<= 0).

    The returned maintainer works only while it holds the lock (``.active``); call
    :meth:`Maintainer.stop` at shutdown.
    """
    if interval <= 0 and compact_every <= 0 and (iceberg is None or iceberg.every <= 0):
        return None
    return Maintainer(data_dir, interval=interval, compact_every=compact_every,
                      lock_retry_seconds=lock_retry_seconds, compact_options=compact_options, iceberg=iceberg).start()


# -- the maintenance process -------------------------------------------------------------------


class MaintenanceProcess:
    """``python3 -m dlrlens.store.maintenance`` as a supervised child of the calling process.

    :meth:`start` starts a thread that spawns it and restarts it (after
    ``RESTART_DELAY_SECONDS``) whenever it exits while it should run; :meth:`stop` asks it to
    finish (SIGTERM) and waits.

    It is spawned with ``os.posix_spawn``, not ``subprocess``: Popen waits on a pipe until the
    child has exec'd, and a gunicorn worker forked by the master at that moment inherits the
    pipe's write end and keeps it open for ever, leaving the supervisor waiting with it.
    The master may also reap the child itself (gunicorn waits for any child), so its exit
    status is not always known.
    """

    def __init__(self, data_dir: Path, *, interval: float, compact_every: float, log_level: str = "info",
                 iceberg: IcebergSchedule | None = None):
        self.command = [sys.executable, "-m", "dlrlens.store.maintenance", "--data", str(data_dir),
                        "--interval", str(interval), "--compact-every", str(compact_every),
                        "--log-level", log_level, *(iceberg.arguments() if iceberg else [])]
        self.restarts = 0
        self.pid: int | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="dlrlens-maintenance-supervisor", daemon=True)

    def start(self) -> MaintenanceProcess:
        self._thread.start()
        return self

    def _spawn(self) -> int:
        # The collector package must be importable wherever the collector was started from.
        package_root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        # setsid: a Ctrl-C or a signal to the collector's process group reaches the master,
        # which stops this process after the workers (see stop), not before.
        return os.posix_spawn(sys.executable, [*self.command, "--parent", str(os.getpid())], env,
                              file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)], setsid=True)

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            self.pid = self._spawn()
            code = _wait_for_exit(self.pid)
            if self._stopping.is_set():
                return
            self.restarts += 1
            log.error("event=maintenance_process_exited code=%s restarting_in=%.0fs", code, RESTART_DELAY_SECONDS)
            self._stopping.wait(RESTART_DELAY_SECONDS)

    def stop(self, timeout: float = 15.0) -> None:
        """Ask the process to stop after its current step and wait (an interrupted compaction
        is crash-safe, so after ``timeout`` it is killed)."""
        self._stopping.set()
        if self.pid is not None and _signal(self.pid, signal.SIGTERM):
            deadline = time.monotonic() + timeout
            while _alive(self.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _signal(self.pid, signal.SIGKILL):
                while _alive(self.pid):
                    time.sleep(0.05)
        self._thread.join(timeout=5)


def _wait_for_exit(pid: int) -> str:
    """Block until child ``pid`` ends; its exit code, signal, or 'unknown' (reaped elsewhere)."""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return "unknown"
    return str(os.waitstatus_to_exitcode(status))


def _alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False  # reaped (by us or by the master)
    return done == 0


def _signal(pid: int, signum: int) -> bool:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


def iceberg_schedule(settings) -> IcebergSchedule | None:
    """The Iceberg table's maintenance for the collector's ``settings`` (None: the local store;
    ``every`` 0: turned off, the catalog still naming where the periodic sync stores)."""
    if settings.store.is_local:
        return None
    return IcebergSchedule(settings.store.catalog, max(0.0, settings.iceberg_maintenance_seconds),
                           settings.iceberg_snapshot_retention.total_seconds(),
                           settings.iceberg_orphan_grace.total_seconds(), settings.iceberg_derived)


def start_process(settings) -> MaintenanceProcess | None:
    """Start the supervised maintenance process for the collector's ``settings``; ``None``
    when every task is disabled."""
    iceberg = iceberg_schedule(settings)
    if settings.maintenance_seconds <= 0 and settings.compact_seconds <= 0 and (iceberg is None or iceberg.every <= 0):
        return None
    return MaintenanceProcess(settings.data_dir, interval=settings.maintenance_seconds,
                              compact_every=settings.compact_seconds, log_level=settings.log_level,
                              iceberg=iceberg).start()


def supervised_child(log_level: str, niceness: int, parent: int | None) -> tuple[int, threading.Event]:
    """Set up a process a :class:`MaintenanceProcess` supervises (this one, the alerts one):
    log lines to stderr, lower CPU priority, an event set by SIGTERM/SIGINT. Returns the pid of
    the parent to outlive no longer (given by the supervisor: the imports take a second, and it
    may already be gone) and that event."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    os.nice(niceness)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return parent or os.getppid(), stop


def main(argv: list[str] | None = None) -> int:
    """Run maintenance in this process until SIGTERM/SIGINT or until the parent process dies."""
    parser = argparse.ArgumentParser(prog="python3 -m dlrlens.store.maintenance", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between derived-state updates")
    parser.add_argument("--compact-every", type=float, default=60.0, help="seconds between compactions")
    parser.add_argument("--iceberg-catalog", default=None, help="the Iceberg store's catalog: maintain its table")
    parser.add_argument("--iceberg-every", type=float, default=0.0,
                        help="seconds between runs of the table's maintenance")
    parser.add_argument("--no-iceberg-derived", dest="iceberg_derived", action="store_false",
                        help="keep no copy of the tables here and commit no derived state (with --iceberg-catalog)")
    parser.add_argument("--snapshot-retention", type=float,
                        help="seconds a superseded snapshot is kept (with --iceberg-catalog)")
    parser.add_argument("--orphan-grace", type=float,
                        help="seconds an unreferenced file is kept before it is deleted (with --iceberg-catalog)")
    parser.add_argument("--niceness", type=int, default=NICENESS)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--parent", type=int, default=None,
                        help="pid of the supervising process: exit when it is gone (default: the parent at start)")
    args = parser.parse_args(argv)
    if args.iceberg_catalog and (args.snapshot_retention is None or args.orphan_grace is None):
        parser.error("--iceberg-catalog needs --snapshot-retention and --orphan-grace")
    parent, stop = supervised_child(args.log_level, args.niceness, args.parent)
    iceberg = (IcebergSchedule(args.iceberg_catalog, args.iceberg_every, args.snapshot_retention, args.orphan_grace,
                               args.iceberg_derived) if args.iceberg_catalog else None)
    maintainer = start(Path(args.data), interval=args.interval, compact_every=args.compact_every,
                       lock_retry_seconds=PROCESS_LOCK_RETRY_SECONDS, iceberg=iceberg)
    if maintainer is None:
        return 0
    # Without a supervisor nobody would stop us: leave when the parent is gone (re-parented).
    while not stop.wait(1.0) and os.getppid() == parent:
        pass
    if not maintainer.stop(timeout=5):
        os._exit(0)  # a compaction still running is crash-safe: abandon it with the process
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
