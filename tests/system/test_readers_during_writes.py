"""Readers during writes: the dashboard's query functions run in a loop while receipts stream
into the real collector, its maintenance keeps the derived state fresh, and compaction merges
and deletes files under them. No query may fail, and totals never go down."""

from __future__ import annotations

import threading
import time

from dlrlens.store import compaction
from dashboard import queries
from tests.support.reliability import Poster, stored_message_ids
from tests.support.servers import running_collector, wait_until


def test_queries_never_fail_and_totals_never_drop_while_writing_and_compacting(tmp_path):
    data = tmp_path / "data"
    stop = threading.Event()
    compactions = {"runs": 0, "files_removed": 0}

    def compact_forever():
        while not stop.is_set():
            stats = compaction.compact(data, min_age_seconds=0.5, min_files=2, settle_seconds=0,
                                       delete_grace_seconds=0.5)
            compactions["runs"] += 1
            compactions["files_removed"] += stats.files_removed
            time.sleep(0.2)

    env = {"DLRLENS_MAINTENANCE_SECONDS": "0.5", "DLRLENS_COMPACT_SECONDS": "0"}
    with running_collector(data, workers=2, flush_seconds=0.2, env=env) as collector:
        compactor = threading.Thread(target=compact_forever, daemon=True)
        store = queries.Store(data)
        readings: list[int] = []
        try:
            with Poster(collector.dlr, "rw", threads=3) as poster:
                compactor.start()
                # At least 20 s and 20 query rounds (a round takes seconds when the machine is busy,
                # e.g. the suite's other worker), and until compaction has removed files.
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline or compactions["files_removed"] < 5 or len(readings) <= 20:
                    assert time.monotonic() < deadline + 60, \
                        f"compaction removed {compactions['files_removed']} files in {len(readings)} query rounds"
                    figures = queries.kpis(store, queries.Filters()).iloc[0]
                    queries.campaigns(store, queries.Filters())
                    queries.trend(store, queries.Filters())
                    readings.append(int(figures["messages"]))
                    assert readings[-1] >= max(readings), f"total went down: {readings[-5:]}"
                    time.sleep(0.05)
            acked = poster.acked
        finally:
            stop.set()
            compactor.join(timeout=60)
        # Everything acknowledged shows up in the figures once flushed.
        wait_until(lambda: int(queries.kpis(store, queries.Filters()).iloc[0]["messages"])
                   >= len(acked), 30, what="every acknowledged receipt in the figures")
        final = int(queries.kpis(store, queries.Filters()).iloc[0]["messages"])
        store.close()
    assert final == len(set(stored_message_ids(data)))
    assert len(readings) > 20 and readings[-1] > readings[0]
    print(f"readings={len(readings)} compactions={compactions} acked={len(acked)} final={final}")
