"""A 200 means durable: crashes, torn log tails and failing storage lose no acknowledged receipt."""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import requests

from dlrlens.store import layout
from dlrlens.store.writer import ReceiptStorage
from dlrlens.store.wal import StorageError, WriteAheadLog, encode_record, list_segments, read_segment
from tests.support.reliability import kill_at_random
from tests.support.receipts import receipt, stored_rows
from tests.support.servers import running_collector, wait_until


def message_ids(data_dir: Path) -> list[str]:
    return [row["delivery_message_id"] for row in stored_rows(data_dir)]


def assert_files_whole(data_dir: Path) -> None:
    """Every visible Parquet file reads completely with the contract schema."""
    for path in Path(data_dir).glob(layout.PARQUET_GLOB):
        table = pq.read_table(path)
        assert table.schema.equals(layout.RECEIPT_SCHEMA, check_metadata=False), path
        assert table.column("delivery_message_id").null_count == 0


@pytest.mark.slow
def test_ten_random_sigkills_lose_no_acknowledged_receipt(tmp_path):
    # Ten kills (~30 s) in the suite; the soak (python3 -m tests.support.reliability --kills 60)
    # runs longer. Twenty cost 62 s of a suite that must stay near ten minutes.
    result = kill_at_random(tmp_path / "data", kills=10, seed=7)
    print(result.line())
    assert result.acked > 10 * 20
    assert result.lost == 0
    assert result.duplicated_in_kpis == 0
    assert_files_whole(tmp_path / "data")
    assert not list((tmp_path / "data" / "wal").glob("*/*.wal")), "recovered log segments are removed"


def test_torn_log_tail_is_skipped_and_the_rest_recovered(tmp_path):
    data = tmp_path / "data"
    slot_dir = data / "wal" / "w000"
    slot_dir.mkdir(parents=True)
    now = datetime.now(timezone.utc)
    records = []
    for index in range(3):
        records.append({
            "receipt_id": f"{index:032x}", "delivery_message_id": f"torn-{index}", "batch_id": None,
            "client_reference": None, "created": now, "received_at": now, "status": "DELIVERED",
            "status_code": 1, "category": "delivered", "part": None, "parts": 1, "hlr": None, "extra": None,
            "campaign": None, "labels": "{}", "source_format": "json",
        })
    lines = b"".join(encode_record(r) for r in records)
    segment = slot_dir / "00000000000000000001.wal"
    segment.write_bytes(lines + encode_record(records[0])[:-9])  # a torn last line
    assert read_segment(segment) == (read_segment(segment)[0], True)
    storage = ReceiptStorage(data, flush_seconds=60)
    try:
        assert storage.wait_caught_up(30), "the flusher replays the log at once, in the background"
        assert sorted(message_ids(data)) == ["torn-0", "torn-1", "torn-2"]
        assert not segment.exists()
    finally:
        storage.close()


def test_group_commit_shares_fsyncs(tmp_path):
    log = WriteAheadLog(tmp_path / "wal")
    slow_fsync_calls = []

    def slow_fsync(fd):
        slow_fsync_calls.append(fd)
        time.sleep(0.01)  # a disk's fsync: concurrent appends gather behind it

    log._fsync = slow_fsync
    documents = [{"x": 1}]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda _: log.append(documents), range(400)))
    assert log.fsyncs < 200, f"{log.fsyncs} fsyncs for 400 appends"
    closed_up_to = log.rotate()
    [segment] = list_segments(log.log_dir)
    assert int(segment.stem) == closed_up_to
    assert len(segment.read_bytes().splitlines()) == 400


def test_announced_arrivals_share_one_fsync(tmp_path):
    """Requests announced before parsing join the batch the writer is holding for them."""
    log = WriteAheadLog(tmp_path / "wal", gather_seconds=10)
    arrivals = [log.arrival() for _ in range(8)]
    handles = [arrival.__enter__() for arrival in arrivals]

    def parse_then_append(index):
        time.sleep(0.05 * index)  # bodies finish parsing one after another
        handles[index].append([{"n": index}])
        arrivals[index].__exit__(None, None, None)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(parse_then_append, range(8)))
    assert log.fsyncs == 1
    log.close()


def test_a_cancelled_arrival_releases_the_writer(tmp_path):
    log = WriteAheadLog(tmp_path / "wal", gather_seconds=30)
    with log.arrival() as waiting_for_a_body:
        with ThreadPoolExecutor(1) as pool:
            appended = pool.submit(log.append, [{"n": 1}])
            time.sleep(0.2)
            assert not appended.done(), "the writer holds the batch for the announced request"
            waiting_for_a_body.cancel()  # e.g. its body was refused
            appended.result(timeout=10)
    assert log.fsyncs == 1
    log.close()


def test_an_arrival_that_fails_to_encode_does_not_hold_later_batches(tmp_path):
    log = WriteAheadLog(tmp_path / "wal", gather_seconds=30)
    with log.arrival() as arrival:
        with pytest.raises(TypeError):
            arrival.append([{"not json": object()}])
    started = time.monotonic()
    log.append([{"n": 1}])
    assert time.monotonic() - started < 10, "the failed arrival was withdrawn"
    log.close()


def test_append_nowait_reports_durability_to_callbacks_after_the_fsync(tmp_path):
    """The non-blocking append (the collector's held answers): the batch's callbacks run only
    once its fsync returned, before a waiter wakes; a failed fsync reaches them as the error."""
    log = WriteAheadLog(tmp_path / "wal")
    fsync_started, release_fsync = threading.Event(), threading.Event()
    real_fsync = log._fsync

    def held_fsync(fd):
        fsync_started.set()
        release_fsync.wait(10)
        real_fsync(fd)

    log._fsync = held_fsync
    seen = []
    batch = log.append_nowait([{"n": 1}])
    batch.add_done_callback(lambda done: seen.append(("first", done.error)))
    assert fsync_started.wait(10)
    batch.add_done_callback(lambda done: seen.append(("second", done.error)))
    time.sleep(0.1)
    assert seen == [], "no callback before the fsync returned"
    release_fsync.set()
    batch.wait()
    assert seen == [("first", None), ("second", None)], "callbacks ran before wait() returned"
    late = []
    batch.add_done_callback(late.append)
    assert late == [batch], "a callback added after the fact runs at once"

    def failing_fsync(fd):
        raise OSError(28, "No space left on device")

    log._fsync = failing_fsync
    failed = log.append_nowait([{"n": 2}])
    errors = []
    failed.add_done_callback(lambda done: errors.append(done.error))
    with pytest.raises(StorageError):
        failed.wait()
    assert len(errors) == 1 and isinstance(errors[0], OSError)
    log._fsync = real_fsync
    log.close()
    with pytest.raises(StorageError):
        log.append_nowait([{"n": 3}])  # a closed log refuses at once, not through the batch
    records, torn = read_segment(list_segments(log.log_dir)[0])
    assert records == [{"n": 1}] and not torn, "the failed batch was cut off the segment"


def test_the_flusher_gets_exactly_what_the_file_holds(tmp_path):
    log = WriteAheadLog(tmp_path / "wal")
    documents = [{"receipt_id": f"{i:032x}", "text": "é\u2028\"x", "n": i, "none": None} for i in range(50)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda doc: log.append([doc]), documents))
    log.rotate()
    [segment] = list_segments(log.log_dir)
    in_memory = log.take_documents(segment)
    assert sorted(in_memory, key=lambda d: d["n"]) == documents
    assert in_memory == read_segment(segment)[0]
    assert log.take_documents(segment) is None, "handed over once"
    log.close()


# -- storage failure ---------------------------------------------------------------------------


@contextlib.contextmanager
def small_filesystem(path: Path, size: str = "4m"):
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(path: Path) -> Path:
    filler = path / "filler"
    with open(filler, "wb") as fh:
        with contextlib.suppress(OSError):
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
    return filler


def test_full_or_read_only_storage_answers_503_and_recovers(tmp_path):
    with small_filesystem(tmp_path / "fs") as fs:
        data = fs / "data"
        with running_collector(data, workers=1, flush_seconds=0.2, log_dir=tmp_path) as collector:
            acked = []
            for index in range(5):
                assert requests.post(collector.dlr, json=receipt(f"ok-{index}"), timeout=10).status_code == 200
                acked.append(f"ok-{index}")
            wait_until(lambda: len(message_ids(data)) == 5, 20, what="first flush")

            filler = fill(fs)
            answers = [requests.post(collector.dlr, json=receipt(f"full-{i}"), timeout=10) for i in range(20)]
            # A batch may still fit in the last free bytes; once the disk is full, never 200.
            statuses = [a.status_code for a in answers]
            assert statuses[-1] == 503 and set(statuses) <= {200, 503}, statuses
            acked += [f"full-{i}" for i, a in enumerate(answers) if a.status_code == 200]
            refused = answers[-1].json()
            assert refused["error"] == "storage_unavailable" and refused["message"]
            assert requests.get(collector.url + "/healthz", timeout=10).status_code == 503

            filler.unlink()
            answer = wait_until(lambda: (a := requests.post(collector.dlr, json=receipt("after-full"), timeout=10))
                                .status_code == 200 and a, 20, what="recovery after disk full")
            assert answer.json()["stored"] == 1
            acked.append("after-full")

            # Remounting fails while a file is open for writing; the log closes its segment at
            # each flush tick when idle, so retry until it goes through.
            wait_until(lambda: subprocess.run(["mount", "-o", "remount,ro", str(fs)],
                                              capture_output=True).returncode == 0, 20, what="read-only remount")
            try:
                answer = requests.post(collector.dlr, json=receipt("read-only"), timeout=10)
                assert answer.status_code == 503 and answer.json()["error"] == "storage_unavailable"
            finally:
                subprocess.run(["mount", "-o", "remount,rw", str(fs)], check=True)
            answer = wait_until(lambda: (a := requests.post(collector.dlr, json=receipt("after-ro"), timeout=10))
                                .status_code == 200 and a, 20, what="recovery after read-only")
            acked.append("after-ro")
            wait_until(lambda: set(acked) <= set(message_ids(data)), 30, what="acked receipts in Parquet")
        stored = message_ids(data)
        assert set(acked) <= set(stored)
        assert "read-only" not in stored
        assert_files_whole(data)


# -- a crash between any two steps of the write path -----------------------------------------

CRASH_POINTS = ["wal:before-fsync", "wal:after-fsync", "parquet:before-fsync", "parquet:before-rename",
                "parquet:before-dir-fsync", "flush:between-partitions", "flush:before-segment-delete"]


def post_until_acked(session: requests.Session, url: str, doc: dict, attempts: int = 50) -> None:
    """Post like Mobivate retrying: again until a 200 (the worker may be restarting)."""
    for _ in range(attempts):
        try:
            if session.post(url, json=doc, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{doc['deliveryMessageId']} never acknowledged")


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_crash_at_each_write_step_loses_nothing_and_shows_no_partial_file(tmp_path, point):
    data = tmp_path / "data"
    marker = tmp_path / "crashed"
    sent = []
    with running_collector(data, workers=1, flush_seconds=0.2,
                           env={"DLRLENS_CRASH_AT": f"{point}@{marker}"}) as collector:
        with requests.Session() as session:
            for index in range(30):
                # Two UTC days, so a flush writes two partitions.
                created = f"2026-11-{20 + index % 2}T23:59:{index:02d}Z"
                doc = receipt(f"{point}-{index}", created=created)
                post_until_acked(session, collector.dlr, doc)
                sent.append(doc["deliveryMessageId"])
                assert_files_whole(data)
                time.sleep(0.05)
        wait_until(marker.exists, 20, what=f"the crash at {point}")
        wait_until(lambda: set(sent) <= set(message_ids(data)), 30, what="recovery")
    rows = stored_rows(data)
    assert {r["delivery_message_id"] for r in rows} == set(sent)
    # A process killed after writing its log but before answering leaves that receipt in the
    # log (the kernel still has it), and the sender retries it: a second copy with the same
    # receipt_id, which the KPIs count once. That can only be the one request in flight at
    # the crash (posts are sequential); a flush replayed after the crash adds no copy.
    assert len({r["receipt_id"] for r in rows}) == len(sent)
    assert len(rows) - len(sent) <= 1
    assert_files_whole(data)
    assert not list(data.glob("receipts/*/.*.tmp")), "temporary files of the dead writer are cleaned up"


def test_flushing_while_appending_never_loses_a_receipt(tmp_path):
    """Rotation races appends: a flush must take only segments closed before it started."""
    data = tmp_path / "data"
    storage = ReceiptStorage(data, flush_seconds=0.001)
    now = datetime.now(timezone.utc)

    def record(n: int) -> dict:
        return {"receipt_id": f"{n:032x}", "delivery_message_id": f"race-{n}", "batch_id": None,
                "client_reference": None, "created": now, "received_at": now, "status": "DELIVERED",
                "status_code": 1, "category": "delivered", "part": None, "parts": 1, "hlr": None,
                "extra": None, "campaign": None, "labels": "{}", "source_format": "json"}

    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda n: storage.store([record(n)]), range(3000)))
    finally:
        storage.close()
    assert sorted(message_ids(data)) == sorted(f"race-{n}" for n in range(3000))
