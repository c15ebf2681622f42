"""The collector-wide catching-up state (dlrlens.store.catch_up): every writer slot of a data
directory answers for all of them; a dead slot's stale record does not count."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest

from dlrlens.store import catch_up, files, layout, writer
from dlrlens.store.wal import encode_record
from dlrlens.store.writer import ReceiptStorage
from tests.support.store_files import hold_replay


def stored_receipt(index: int, message_id: str) -> dict:
    """A receipt as the collector hands it to the storage."""
    now = datetime.now(timezone.utc)
    return {"receipt_id": f"{index:032x}", "delivery_message_id": message_id, "batch_id": None,
            "client_reference": None, "created": now, "received_at": now, "status": "DELIVERED",
            "status_code": 1, "category": "delivered", "part": None, "parts": 1, "hlr": None, "extra": None,
            "campaign": None, "labels": "{}", "source_format": "json"}


def leave_a_log(data, slot: str, count: int = 3) -> None:
    """A segment of ``count`` receipts in ``slot``'s log, a minute old: what a previous life left."""
    records = [stored_receipt(index, f"left-{index}") for index in range(count)]
    segment = data / layout.WAL_DIR / slot / f"{time.time_ns() - 60 * 10**9:020d}.wal"
    segment.parent.mkdir(parents=True)
    segment.write_bytes(b"".join(encode_record(record) for record in records))


def test_every_slot_says_the_collector_catches_up_until_the_last_replay_ends(tmp_path, monkeypatch):
    # Two workers on one data directory: w000 replays a backlog (held, as on a slow disk), w001
    # had nothing left. Both answer "catching up" until w000's replay is done, then both "no".
    data = tmp_path / "data"
    leave_a_log(data, "w000")
    replay = hold_replay(monkeypatch, "w000")
    replaying = ReceiptStorage(data, flush_seconds=0.2)
    idle = ReceiptStorage(data, flush_seconds=0.2)
    try:
        assert (replaying.slot, idle.slot) == ("w000", "w001")
        assert idle.wait_caught_up(10), "w001's own first pass (w000's log is its live owner's)"
        assert replaying.catching_up and not idle.catching_up
        for storage in (replaying, idle):
            state = storage.collector_catching_up()
            assert state["catching_up"] and state["slots"] == ["w000"], state
            assert datetime.fromisoformat(state["since"]) <= datetime.now(timezone.utc)
            assert state["seconds"] >= 0
    finally:
        replay.set()
    assert replaying.wait_caught_up(10)
    try:
        for storage in (replaying, idle):
            assert storage.collector_catching_up() == {"catching_up": False, "slots": [], "since": None,
                                                       "seconds": 0.0}
    finally:
        idle.close()
        replaying.close()


def test_a_stale_record_counts_only_while_its_slot_lock_is_held(tmp_path):
    # A worker killed mid-replay leaves "catching up" in its record for ever: it counts only
    # while a live process holds the slot's lock (its own, or a worker adopting its log).
    data = tmp_path / "data"
    storage = ReceiptStorage(data, flush_seconds=60)
    try:
        assert storage.wait_caught_up(10)
        catch_up.record(data, "w007", True, time.time() - 100)
        (data / layout.WAL_DIR / "w007.lock").touch()  # the dead worker's lock file, unheld
        assert storage.collector_catching_up()["catching_up"] is False
        held = files.lock(data / layout.WAL_DIR / "w007.lock", wait=False)
        try:
            state = storage.collector_catching_up()
            assert state["catching_up"] and state["slots"] == ["w007"] and state["seconds"] >= 100, state
        finally:
            held.release()
        assert storage.collector_catching_up()["catching_up"] is False
        (data / layout.WAL_DIR / "w007.lock").unlink()  # no lock file at all: no writer there either
        assert storage.collector_catching_up()["catching_up"] is False
    finally:
        storage.close()


def test_without_the_kernel_lock_list_a_record_counts_while_its_process_lives(tmp_path, monkeypatch):
    data = tmp_path / "data"
    monkeypatch.setattr(catch_up, "PROC_LOCKS", tmp_path / "no-such-file")
    assert catch_up.held_lock_inodes() is None
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    catch_up.record(data, "w003", True, time.time())
    state_path = catch_up.state_path(data, "w003")
    state_path.write_text(json.dumps(json.loads(state_path.read_text()) | {"pid": int(gone.stdout)}))
    assert catch_up.collector_state(data)["catching_up"] is False  # that process has exited
    catch_up.record(data, "w003", True, time.time())  # this process: alive
    assert catch_up.collector_state(data)["slots"] == ["w003"]


@pytest.mark.parametrize("content", ["", "{", "[]", '{"slot": "w009", "catching_up": true}',
                                     '{"slot": "w001", "catching_up": true, "since_epoch": 1.0}'])
def test_a_record_that_is_not_ours_is_left_out(tmp_path, content):
    path = catch_up.state_path(tmp_path, "w009")
    path.parent.mkdir(parents=True)
    path.write_text(content)  # torn, not a dict, no start time, another slot's name
    assert catch_up.collector_state(tmp_path)["catching_up"] is False


def test_a_storage_closed_mid_replay_clears_its_record(tmp_path, monkeypatch):
    data = tmp_path / "data"
    leave_a_log(data, "w000")
    monkeypatch.setattr(writer.ReceiptStorage, "_flush_loop", lambda self: None)  # the replay never starts
    storage = ReceiptStorage(data, flush_seconds=60)
    assert storage.collector_catching_up()["slots"] == ["w000"]
    storage.close()  # flushes what is left (the log keeps it otherwise)
    assert catch_up.collector_state(data)["catching_up"] is False


def test_a_worker_started_next_to_a_live_one_has_nothing_to_replay(tmp_path):
    # The first worker's open segment is its own, not a backlog: the second starts caught up (it
    # said "catching up" for its first pass, and so did the whole collector).
    data = tmp_path / "data"
    first = ReceiptStorage(data, flush_seconds=60)
    try:
        first.store([stored_receipt(0, "live")])
        assert first.backlog()["segments"] == 1
        second = ReceiptStorage(data, flush_seconds=60)
        try:
            assert not second.catching_up and not second.collector_catching_up()["catching_up"]
        finally:
            second.close()
    finally:
        first.close()
