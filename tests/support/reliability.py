"""Fault drills shared by the test suite (short) and the soak script (long).

``kill_at_random`` runs the real collector, posts receipts from several client threads, and
SIGKILLs the whole collector (master and workers) at random moments, restarting it each time.
Every receipt carries its own message id, so "exactly once in the KPIs" means: every id that
got a 200 is counted by the dashboard's query layer, and messages == distinct ids stored.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import duckdb
import requests

from dlrlens.store import layout
from dlrlens.store.backends import open_store, parse_store
from tests.support.servers import running_collector, start_collector, wait_until


@dataclass
class DrillResult:
    kills: int
    acked: int
    stored: int
    lost: int
    duplicated_in_kpis: int
    kpi_messages: int

    def line(self) -> str:
        return " ".join(f"{k}={v}" for k, v in asdict(self).items())


def _receipt(message_id: str) -> dict:
    return {"deliveryMessageId": message_id, "batchId": "drill", "clientReference": None,
            "created": "2026-11-20T10:00:00.000+00:00", "status": "DELIVERED", "statusCode": 1,
            "parts": 1, "hlr": None}


class Poster:
    """Client threads posting unique receipts until stopped; remembers what got 200."""

    def __init__(self, url: str, prefix: str, threads: int = 4, limit: int = 100_000):
        self.url, self.prefix, self.threads, self.limit = url, prefix, threads, limit
        self.acked: set[str] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(threads)
        self._futures = []

    def _run(self, worker: int) -> None:
        with requests.Session() as session:
            for n in range(self.limit):
                if self._stop.is_set():
                    return
                message_id = f"{self.prefix}-{worker}-{n}"
                try:
                    answer = session.post(self.url, json=_receipt(message_id), timeout=5)
                except requests.RequestException:
                    time.sleep(0.05)
                    continue
                if answer.status_code == 200:
                    with self._lock:
                        self.acked.add(message_id)

    def __enter__(self):
        self._futures = [self._pool.submit(self._run, w) for w in range(self.threads)]
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for future in self._futures:
            future.result(timeout=60)
        self._pool.shutdown()


def stored_message_ids(data_dir: Path) -> list[str]:
    return stored_column(data_dir, "delivery_message_id")


def stored_column(data_dir: Path, column: str) -> list:
    """``column`` of every receipt row in the data directory's Parquet files."""
    if not list(Path(data_dir).glob(layout.PARQUET_GLOB)):
        return []
    rows = duckdb.execute(f"SELECT {column} FROM read_parquet(?)", [layout.parquet_glob(data_dir)]).fetchall()
    return [row[0] for row in rows]


def kpi_messages(data_dir: Path, store_choice: str = "local") -> int:
    """Messages as the dashboard counts them (its query layer, not a copy of its SQL), in the
    data directory, or in the store ``store_choice`` (``iceberg:NAME``) cached under it."""
    from dashboard import queries

    store = open_store(data_dir, parse_store(store_choice))
    try:
        return int(queries.kpis(store, queries.Filters()).iloc[0]["messages"])
    finally:
        store.close()


def kill_at_random(data_dir: Path, kills: int, seed: int = 1, min_acks: int = 20,
                   max_delay: float = 1.0, threads: int = 4, workers: int = 2) -> DrillResult:
    rng = random.Random(seed)
    acked: set[str] = set()
    for round_number in range(kills):
        collector = start_collector(data_dir, workers=workers, flush_seconds=0.2)
        try:
            with Poster(collector.dlr, f"kill{round_number}", threads=threads) as poster:
                wait_until(lambda: len(poster.acked) >= min_acks, 60, what="acknowledged receipts")
                time.sleep(rng.uniform(0.0, max_delay))
                collector.kill()
            acked |= poster.acked
        finally:
            collector.stop()
    with running_collector(data_dir, workers=workers, flush_seconds=0.2):
        pass  # the restart recovers every log; a clean stop flushes the rest
    stored = stored_message_ids(data_dir)
    distinct = set(stored)
    messages = kpi_messages(data_dir)
    return DrillResult(kills=kills, acked=len(acked), stored=len(distinct), lost=len(acked - distinct),
                       duplicated_in_kpis=messages - len(distinct), kpi_messages=messages)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Soak: SIGKILL the collector at random while posting.")
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--data", type=Path, default=None, help="data dir (default: a new temporary one)")
    args = parser.parse_args(argv)
    import tempfile

    data = args.data or Path(tempfile.mkdtemp(prefix="dlrlens-soak-")) / "data"
    started = time.monotonic()
    result = kill_at_random(data, args.kills, seed=args.seed, threads=args.threads, min_acks=50, max_delay=2.0)
    print(json.dumps(dict(asdict(result), seconds=round(time.monotonic() - started, 1), data=str(data))))
    return 0 if result.lost == 0 and result.duplicated_in_kpis == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
