"""Sync throughput: records per second from the fake Mobivate API into the store.

    python3 -m tests.benchmarks.sync [--records 200000] [--days 4] [--page-size 1000]

Starts the fake API (``python3 -m dlrlens.fake_mobivate``) in its own process on loopback and
measures, in the same run:

* baseline: paging the message log with plain ``requests`` + ``json`` (what any client must
  do), records/s;
* ``dlrlens sync`` (``dlrlens.store.sends.sync``): the same pages plus the history, the campaign
  list, parsing, phone-number parsing and hashing, and the atomic merge into day files;
* a second sync of the same window (idempotent: every day file is read, merged, left as is).

Prints the three rates and the ratio sync/baseline (>= 0.2 is the goal: storing must not make
a backfill much slower than reading; the API's own speed is Mobivate's).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import requests

from dlrlens.mobivate import MobivateClient
from dlrlens.store import sends

UTC = timezone.utc


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--page-size", type=int, default=1000)
    args = parser.parse_args(argv)
    server = subprocess.Popen([sys.executable, "-m", "dlrlens.fake_mobivate", "--records", str(args.records),
                               "--days", str(args.days), "--key", "bench"], stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()
        end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        start = end - timedelta(days=args.days)
        first_day, last_day = start.date(), end.date()

        # Baseline: every page of the log, day by day, decoded and nothing else.
        began, count = time.monotonic(), 0
        session = requests.Session()
        for day in sends.days(first_day, last_day):
            page = 1
            while True:
                body = session.get(url + "/message", headers={"Authorization": "Bearer bench"}, params={
                    "startDate": f"{day}T00:00:00+0000", "endDate": f"{day}T23:59:59+0000", "page": page,
                    "pageSize": args.page_size}, timeout=60).json()
                count += len(body)
                page += 1
                if len(body) < args.page_size:
                    break
        baseline = count / (time.monotonic() - began)

        with tempfile.TemporaryDirectory() as data:
            client = MobivateClient("bench", url, url, timeout=(5, 120))
            result = sends.sync(Path(data), client, first_day, last_day, page_size=args.page_size)
            log_records = count
            ours = log_records / result.seconds
            again = sends.sync(Path(data), client, first_day, last_day, page_size=args.page_size)
            size = sum(p.stat().st_size for p in Path(data).rglob("*.parquet"))
        print(f"records in the log: {count:,} over {args.days} days (+ the same as history records)")
        print(f"baseline (page + decode only): {baseline:,.0f} log records/s")
        print(f"dlrlens sync (log + history + campaigns, parse, hash, store): {ours:,.0f} log records/s "
              f"({result.records:,} records stored in {result.seconds:.1f} s, {result.files_changed} files, "
              f"{size / max(result.records, 1):.1f} B/record on disk)")
        print(f"second sync of the same window: {again.seconds:.1f} s, {again.files_changed} files changed")
        print(f"ratio sync/baseline: {ours / baseline:.2f} (goal >= 0.2)")
    finally:
        server.terminate()
        server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
