"""The maintenance thread: one process at a time does the work, another takes over when it
dies, failures never stop it, and it drives the derived state and compaction."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest
import requests

from dlrlens.store import compaction, layout
from collector import metrics
from dlrlens.store.compaction import bytes_per_receipt
from dlrlens.store import maintenance
from dlrlens.store.maintenance import Maintainer, start
from tests.support.servers import REPO, wait_until
from tests.support.store_files import (
    stored_rows,
    synthetic_receipts,
    visible_files,
    write_flush_files,
)

# Compaction without waiting: every file eligible, every partition settled, inputs deleted at once.
EAGER = {"min_age_seconds": 0, "settle_seconds": 0, "delete_grace_seconds": 0}

CHILD = """
import json, signal, sys, threading
from pathlib import Path
from dlrlens.store import layout
from dlrlens.store.maintenance import start

data, status_path = Path(sys.argv[1]), Path(sys.argv[2])
maintainer = start(data, interval=0, compact_every=0.1, lock_retry_seconds=0.1, compact_options=json.loads(sys.argv[3]))
done = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: done.set())

def report(**extra):
    status = dict(maintainer.status(), lock_attempts=maintainer.lock_attempts, **extra)
    layout.atomic_write_bytes(status_path, json.dumps(status, default=str).encode())

while not done.is_set():
    report()
    done.wait(0.05)
maintainer.stop()
report(stopped=True)
"""


def spawn_maintainer(data: Path, status_path: Path) -> subprocess.Popen:
    """A process that runs a maintainer (compaction every 0.1 s, no derived state) and keeps
    writing its status to ``status_path``; SIGTERM stops it cleanly."""
    return subprocess.Popen([sys.executable, "-c", CHILD, str(data), str(status_path), json.dumps(EAGER)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def read_status(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def status_where(path: Path, predicate, what: str) -> dict:
    return wait_until(lambda: (status := read_status(path)) is not None and predicate(status) and status,
                      60, what=what)


def test_only_one_process_maintains_and_another_takes_over_when_it_dies(tmp_path):
    data = tmp_path / "data"
    write_flush_files(data, synthetic_receipts(2000, seed=21), 4)
    first_status, second_status = tmp_path / "first.json", tmp_path / "second.json"
    first = spawn_maintainer(data, first_status)
    second = None
    try:
        status_where(first_status, lambda s: s["active"] and s["runs"]["compact"] >= 1, "first maintainer at work")
        second = spawn_maintainer(data, second_status)
        idle = status_where(second_status, lambda s: s["lock_attempts"] >= 3, "second maintainer retrying the lock")
        assert not idle["active"] and idle["runs"] == {"derive": 0, "compact": 0}
        assert len(visible_files(data)) == 1, "the active maintainer compacted"

        first.kill()  # its lock dies with it
        first.wait(30)
        write_flush_files(data, synthetic_receipts(1000, seed=22), 3)
        before = stored_rows(data)
        status_where(second_status, lambda s: s["active"], "second maintainer taking over")
        wait_until(lambda: len(visible_files(data)) == 1, 60, what="compaction by the second maintainer")
        assert stored_rows(data) == before

        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0, second.stderr.read().decode()
        final = read_status(second_status)
        assert final["stopped"] and final["runs"]["compact"] >= 1 and final["errors"] == {"derive": 0, "compact": 0}
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(30)


def test_stop_releases_the_lock_to_another_maintainer(tmp_path):
    data = tmp_path / "data"
    holder = start(data, interval=0, compact_every=60, lock_retry_seconds=0.05)
    waiting = None
    try:
        wait_until(lambda: holder.active, 30, what="first maintainer active")
        waiting = start(data, interval=0, compact_every=60, lock_retry_seconds=0.05)
        wait_until(lambda: waiting.lock_attempts >= 3, 30, what="second maintainer retrying")
        assert not waiting.active and holder.active

        holder.stop()

        assert not holder.active and not holder._thread.is_alive()
        wait_until(lambda: waiting.active, 30, what="second maintainer taking the released lock")
    finally:
        holder.stop()
        if waiting is not None:
            waiting.stop()


def test_a_failing_task_is_logged_on_one_line_and_the_thread_goes_on(tmp_path, monkeypatch, caplog):
    data = tmp_path / "data"
    write_flush_files(data, synthetic_receipts(1000, seed=23), 3)
    before = stored_rows(data)
    real_compact = compaction.compact
    calls = []

    def failing_twice(data_dir, **options):
        calls.append(options)
        if len(calls) <= 2:
            raise OSError("disk on fire")
        return real_compact(data_dir, **options)

    monkeypatch.setattr(compaction, "compact", failing_twice)
    caplog.set_level(logging.INFO, logger="dlrlens.collector")
    maintainer = Maintainer(data, interval=0, compact_every=0.02, compact_options=EAGER).start()
    try:
        wait_until(lambda: maintainer.runs["compact"] >= 1, 30, what="a compaction after two failures")
    finally:
        maintainer.stop()

    assert maintainer.errors == {"derive": 0, "compact": 2}
    assert maintainer.last_error == "compact: OSError: disk on fire"
    failures = [r for r in caplog.records if "event=maintenance_failed" in r.getMessage()]
    assert [r.getMessage() for r in failures] == ["event=maintenance_failed task=compact error='OSError: disk on fire'"] * 2
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in failures)
    # What people and alerts read: the status file, written after every task.
    status = json.loads((data / layout.MAINTENANCE_STATUS).read_text())
    assert status["errors"] == {"derive": 0, "compact": 2} and status["runs"]["compact"] >= 1
    assert status["last_error"] == "compact: OSError: disk on fire" and status["last_error_at"]
    assert set(status["last_success_at"]) == {"compact"}
    assert status["interval_seconds"] == {"derive": 0, "compact": 0.02}
    text = "\n".join(metrics.maintenance_lines(data))
    assert 'dlrlens_maintenance_errors_total{task="compact"} 2' in text
    assert 'dlrlens_maintenance_last_success_timestamp_seconds{task="compact"}' in text
    assert all(options == EAGER for options in calls)
    assert len(visible_files(data)) == 1 and stored_rows(data) == before
    compacted = [r.getMessage() for r in caplog.records if "event=compacted" in r.getMessage()]
    assert len(compacted) == 1 and "files_merged=3 files_written=1 rows=1000 " in compacted[0]


@pytest.fixture
def fake_derive(monkeypatch):
    """A stand-in ``dlrlens.store.derive`` recording the data directories it is asked to update."""
    calls: list[Path] = []
    module = types.ModuleType("dlrlens.store.derive")

    def update_derived(data_dir: Path) -> dict:
        calls.append(Path(data_dir))
        return {"files_absorbed": len(calls)}

    module.update_derived = update_derived
    monkeypatch.setattr(maintenance, "derive", module)
    return calls


def test_derived_state_is_updated_every_interval(tmp_path, fake_derive):
    data = tmp_path / "data"
    maintainer = start(data, interval=0.02, compact_every=0)
    try:
        wait_until(lambda: len(fake_derive) >= 3, 30, what="three derived-state updates")
    finally:
        maintainer.stop()
    assert set(fake_derive) == {data}
    assert maintainer.runs == {"derive": len(fake_derive), "compact": 0}
    assert maintainer.last_results["derive"] == {"files_absorbed": len(fake_derive)}


def test_start_returns_none_when_both_tasks_are_disabled(tmp_path):
    assert start(tmp_path, interval=0, compact_every=0) is None
    assert not (tmp_path / "maintenance.lock").exists()


def test_bytes_per_receipt_counts_each_stored_file_once(tmp_path):
    data = tmp_path / "data"
    assert bytes_per_receipt(data) == (0, 0)
    paths = write_flush_files(data, synthetic_receipts(3000, seed=25), 3)
    paths += write_flush_files(data, synthetic_receipts(500, seed=26, day="2026-11-04"), 1)
    assert bytes_per_receipt(data) == (sum(p.stat().st_size for p in paths), 3500)

    compaction.compact(data, settle_seconds=0, delete_grace_seconds=30)  # inputs wait 30 s

    [output] = [p for p in visible_files(data) if p.name.startswith("c-")]
    assert len(visible_files(data)) == 5
    assert bytes_per_receipt(data) == (output.stat().st_size + paths[-1].stat().st_size, 3500)
    assert layout.RECEIPTS_DIR in str(output)


# -- the collector's maintenance process ----------------------------------------------------


def maintenance_pids(data: Path) -> list[int]:
    """Pids of maintenance processes working on ``data`` (their command line names it)."""
    found = subprocess.run(["pgrep", "-f", f"dlrlens.store.maintenance --data {data} "], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


def niceness(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def test_the_collector_runs_one_lower_priority_maintenance_process_and_restarts_it(tmp_path):
    from tests.support.servers import running_collector

    data = tmp_path / "data"
    with running_collector(data, workers=2, env={"DLRLENS_MAINTENANCE_SECONDS": "0.5"}) as running:
        [pid] = wait_until(lambda: len(pids := maintenance_pids(data)) == 1 and pids, 30, what="maintenance process")
        # It lowers its priority first thing in main(), after its imports.
        wait_until(lambda: niceness(pid) == niceness(running.process.pid) + 10, 30,
                   what="maintenance yielding the CPU to the webhook (nice +10)")
        wait_until(lambda: (data / "maintenance.lock").exists(), 30, what="maintenance lock taken")

        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: (pids := maintenance_pids(data)) and pids != [pid], 30, what="restarted maintenance")
        assert "event=maintenance_process_exited" in running.log()
        wait_until(lambda: "dlrlens_maintenance_runs_total" in requests.get(running.url + "/metrics", timeout=10).text,
                   30, what="maintenance status in /metrics")
    wait_until(lambda: not maintenance_pids(data), 30, what="maintenance stopped with the collector")


def test_the_maintenance_process_ends_when_the_collector_is_killed(tmp_path):
    from tests.support.servers import start_collector

    data = tmp_path / "data"
    running = start_collector(data, workers=1)
    try:
        wait_until(lambda: maintenance_pids(data), 30, what="maintenance process")
        running.kill()  # SIGKILL: no chance to stop its child
        wait_until(lambda: not maintenance_pids(data), 30, what="orphaned maintenance process leaving")
    finally:
        running.stop()
