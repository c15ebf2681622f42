"""The Campaigns table from another engine at scale: ``examples/sail_campaigns.py`` (Sail,
local-cluster) against the same SQL in DuckDB and against ``dlrlens report``, one run.

    python3 -m tests.benchmarks.sail_campaigns [--records 100000] [--campaigns 40] [--workers 2]

Starts ``weed mini`` on loopback with an Iceberg catalog (``tests.support.seaweed``), writes
through a collector the receipts of a fake Mobivate's log of ``--records`` records over two
days (``tests.support.send_records.stream``: about 1.7 receipts per record), clicks and
replies (``tests.support.funnel.demo_events``), syncs the log, the campaign list and imported
names into the send record tables, then times:

* ``dlrlens report --store iceberg:lake --format json`` (empty cache: the derived state is
  built; then again, warm);
* *baseline*: ``dashboard.engine_sql.campaign_kpis_sql`` in DuckDB over the tables read by
  pyiceberg (one process, every core);
* *sail*: the example (a Sail server with ``--workers`` workers in its process).

Every row and column of both engines is compared with the report's Campaigns sheet (the run
fails on a difference). Prints the times and sail / baseline. Stops its servers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb

from dashboard.engine_sql import campaign_columns, campaign_kpis_sql
from dlrlens import fake_mobivate as fm
from dlrlens.store import sends
from dlrlens.store.backends import parse_store, publisher
from dlrlens.store.iceberg.send_tables import KEYED_TABLES, IcebergSends, keyed_table
from dlrlens.store.iceberg.table import open_catalog, written_table
from dlrlens.store.writer import ReceiptStorage
from tests.support.funnel import demo_events
from tests.support.lake import assert_same_campaigns, report_json
from tests.support.seaweed import object_store
from tests.support.send_records import client, stream

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sail_campaigns.py"
START = datetime(2026, 11, 2, tzinfo=timezone.utc)


def fill(work: Path, records: int, campaigns: int) -> dict:
    """The lake's tables (see the module docstring); what was written."""
    log, campaign_list = fm.generate_records(records, START, START + timedelta(days=2), seed=23, campaigns=campaigns)
    rows = stream(log, campaign_list, START)
    clicks, replies = demo_events(rows, seed=5, click_share=0.2, reply_share=0.05)
    collector = ReceiptStorage(work / "collector", flush_seconds=3600,
                               publish=publisher(parse_store("iceberg:lake"), work / "collector"))
    try:
        for part in range(4):  # several commits and data files
            collector.store(rows[part::4])
            collector.store(clicks[part::4], "clicks")
            collector.store(replies[part::4], "replies")
            collector.flush()
    finally:
        collector.close()
    with fm.FakeServer(fm.create_app(log, campaign_list, api_key="k")) as server:
        sends.sync(work / "collector", client(server), START.date(), (START + timedelta(days=2)).date(),
                   destination=IcebergSends("lake"))
    names = "batch_id,name\n" + "".join(f"{c['id']},Imported {i}\n" for i, c in enumerate(campaign_list[::2]))
    sends.import_names(work / "collector", names, IcebergSends("lake"))
    return {"receipts": len(rows), "clicks": len(clicks), "replies": len(replies), "log records": len(log)}


def duckdb_rows(missing_before: datetime) -> list[dict]:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    catalog = open_catalog("lake")
    for name in ("receipts", "clicks", "replies"):
        con.register(name, written_table(catalog, name, create=False).scan().to_arrow())
    for name in KEYED_TABLES:
        con.register(name, keyed_table(catalog, name, create=False).scan().to_arrow())
    sql = campaign_kpis_sql("receipts", sends="sends", campaigns="campaigns", names="campaign_names",
                            clicks="clicks", replies="replies", missing_before=missing_before)
    frame = con.execute(sql).fetchdf().astype(object)
    return frame.where(frame.notna(), None).to_dict("records")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000, help="records of the fake Mobivate's log")
    parser.add_argument("--campaigns", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2, help="Sail local-cluster workers")
    parser.add_argument("--tmp-dir", type=Path, default=None, help="where the object store and caches go")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.tmp_dir, prefix="dlrlens-sail-") as tmp:
        work = Path(tmp)
        with object_store(work / "s3") as store:
            os.environ.update(store.catalog_env("lake", work / "catalog.db"))
            os.environ["DLRLENS_RECEIPTS_MISSING_AFTER"] = "24h"
            written = fill(work, args.records, args.campaigns)
            print(", ".join(f"{key}={value}" for key, value in written.items()), flush=True)
            now = datetime.now(timezone.utc)
            started = time.perf_counter()
            report = report_json(work / "reader", "iceberg:lake", work / "report.json")["Campaigns"]
            cold = time.perf_counter() - started
            started = time.perf_counter()
            report_json(work / "reader", "iceberg:lake", work / "report.json")
            warm = time.perf_counter() - started
            started = time.perf_counter()
            in_duckdb = duckdb_rows(now - timedelta(hours=24))
            baseline = time.perf_counter() - started
            started = time.perf_counter()
            run = subprocess.run([sys.executable, str(EXAMPLE), "--catalog", "lake", "--workers", str(args.workers),
                                  "--format", "json", "--now", now.isoformat()], capture_output=True, text=True)
            sail = time.perf_counter() - started
            if run.returncode != 0:
                print(run.stderr[-3000:], file=sys.stderr)
                return 1
            computed = json.loads(run.stdout)
            for engine, rows in (("duckdb", in_duckdb), ("sail", computed["campaigns"])):
                assert_same_campaigns(engine, rows, report, campaign_columns())
    print(f"campaign rows: {len(report)} (every column of both engines equal to the report's)")
    print(f"dlrlens report: {cold:.1f} s cold (derived state built), {warm:.1f} s warm")
    print(f"baseline (DuckDB, same SQL, tables read by pyiceberg): {baseline:.2f} s")
    print(f"sail ({args.workers} workers, whole example): {sail:.1f} s (query {computed['seconds']:.1f} s)")
    print(f"sail / baseline: {sail / baseline:.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
