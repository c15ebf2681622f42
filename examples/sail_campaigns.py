"""The Campaigns table of the Iceberg store, computed by Sail through the PySpark client.

    pip install 'dlrlens[iceberg,engines]'
    python examples/sail_campaigns.py --catalog lake [--workers 2] [--format table|json] [--now ISO]
    python examples/sail_campaigns.py --catalog lake --remote sc://sail.internal:50051
    python examples/sail_campaigns.py --print-sql          # the Spark SQL only

Sail (``pysail``) is a Spark Connect server: an ordinary PySpark session talks to it, and it runs
the query with several workers. The figures are those of ``dlrlens report --store iceberg:NAME``'s
Campaigns sheet: every receipt KPI, funnel and cost column (one row per campaign and currency,
campaigns named as the dashboard names them; ``tests/store/test_iceberg.py`` compares each value).

1. The catalog (configured the pyiceberg way, as for ``DLRLENS_STORE=iceberg:NAME``) gives the
   tables' locations and their current snapshots: the receipts table, the clicks and replies
   tables, and Mobivate's send records (``sends``), campaign list (``campaigns``) and imported
   names (``campaign_names``) when a ``dlrlens sync`` or names import made them (a table missing
   counts as empty: without send records, the receipts' figures, no names, no cost, as the
   report shows them).
2. Without ``--remote``, a Sail server starts in this process in *local-cluster* mode with
   ``--workers`` workers: the driver splits the query into tasks and sends them to the workers
   over gRPC, as it does to worker pods in Sail's cluster mode on Kubernetes. It reaches the
   object store with the catalog's ``s3.*`` settings (given to Sail as its ``AWS_*`` variables).
   With ``--remote sc://HOST:PORT`` the query goes to a Sail server already running, which must
   reach the object store itself.
3. Sail 0.7 reads an Iceberg table by its location: it takes the newest metadata file in the
   table's ``metadata/`` folder. A commit that lost a race with another collector leaves a
   metadata file behind that may be the newest for a moment, so each read is pinned to the
   catalog's current snapshot (``snapshot-id``): such a moment gives an error, never other
   figures. (Sail also reads through an Iceberg REST catalog with OAuth or a bearer token, not
   one that wants SigV4 signing, such as SeaweedFS's or S3 Tables'.)
4. The query is :func:`dashboard.engine_sql.campaign_kpis_sql` in Spark SQL: dlrlens's own
   definitions, translated, not rewritten by hand.
5. Receipts missing (MT log records without any receipt) are counted as of ``--now`` (default:
   the current time) minus ``DLRLENS_RECEIPTS_MISSING_AFTER``, as the report counts them as of
   the time it runs: give ``--now`` to reproduce a report of another moment. Opt-outs are the
   replies matching ``DLRLENS_OPT_OUT_KEYWORDS`` (set it as the maintenance has it).

Exit status 0, or 2 with a message on stderr when the catalog or receipts table is missing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from dashboard.engine_sql import campaign_kpis_sql  # noqa: E402
from dashboard.queries.cost import missing_after_setting  # noqa: E402

RECEIPTS = "receipts"
# Each table's view in the Spark session (the catalog's tables by their own names).
VIEWS = {RECEIPTS: "receipts", "sends": "sends", "campaigns": "campaigns", "campaign_names": "campaign_names",
         "clicks": "clicks", "replies": "replies"}
DEFAULT_WORKERS = 2

# pyiceberg S3 property -> the variable Sail's object store reads (Sail's S3 guide).
SAIL_S3_VARIABLES = {"s3.endpoint": "AWS_ENDPOINT", "s3.access-key-id": "AWS_ACCESS_KEY_ID",
                     "s3.secret-access-key": "AWS_SECRET_ACCESS_KEY", "s3.session-token": "AWS_SESSION_TOKEN",
                     "s3.region": "AWS_REGION"}


def sail_environment(properties: dict, workers: int) -> dict[str, str]:
    """The variables of a local Sail server with ``workers`` workers that reaches the object
    store of a catalog with pyiceberg ``properties``."""
    env = {"SAIL_MODE": "local-cluster", "SAIL_CLUSTER__WORKER_INITIAL_COUNT": str(workers),
           "SAIL_CLUSTER__WORKER_MAX_COUNT": str(workers)}
    env |= {variable: str(properties[key]) for key, variable in SAIL_S3_VARIABLES.items() if properties.get(key)}
    if str(properties.get("s3.path-style-access", "")).lower() == "true":
        env["AWS_VIRTUAL_HOSTED_STYLE_REQUEST"] = "false"
    if str(properties.get("s3.endpoint", "")).startswith("http://"):
        env["AWS_ALLOW_HTTP"] = "true"
    return env


@dataclass(frozen=True)
class TableRead:
    """One table the query reads: its view name, location and the snapshot read."""

    view: str
    location: str
    snapshot_id: int


def current_tables(catalog_name: str) -> tuple[dict[str, TableRead], dict]:
    """{table: :class:`TableRead`} of the receipts table and of each send record table that
    exists with data (none before the first ``dlrlens sync`` or names import), and the
    catalog's properties."""
    from dlrlens.store.iceberg.send_tables import KEYED_TABLES, keyed_table
    from dlrlens.store.iceberg.table import CLICKS_TABLE, REPLIES_TABLE, open_catalog, receipts_table, written_table
    from pyiceberg.exceptions import NoSuchTableError
    from pyiceberg.utils.config import Config

    catalog = open_catalog(catalog_name)
    try:
        receipts = receipts_table(catalog, create=False)
    except NoSuchTableError:
        raise LookupError(f"catalog {catalog_name!r} has no receipts table yet (a collector creates it "
                          f"at its first flush)") from None
    if receipts.current_snapshot() is None:
        raise LookupError(f"the receipts table of catalog {catalog_name!r} has no data yet")
    found = {RECEIPTS: receipts}
    optional = [(name, lambda name: keyed_table(catalog, name, create=False)) for name in KEYED_TABLES]
    optional += [(name, lambda name: written_table(catalog, name, create=False)) for name in (CLICKS_TABLE, REPLIES_TABLE)]
    for name, load in optional:
        try:
            table = load(name)
        except NoSuchTableError:
            continue
        if table.current_snapshot() is not None:  # a sync that stored nothing yet leaves none
            found[name] = table
    reads = {name: TableRead(VIEWS[name], table.location(), table.current_snapshot().snapshot_id)
             for name, table in found.items()}
    return reads, Config().get_catalog_config(catalog_name)


def campaign_sql(tables: dict[str, TableRead], cut_off: datetime) -> str:
    """The Spark SQL of the Campaigns table over the views of ``tables``."""
    from dlrlens.store.iceberg.send_tables import CAMPAIGNS_TABLE, NAMES_TABLE, SENDS_TABLE
    from dlrlens.store.iceberg.table import CLICKS_TABLE, REPLIES_TABLE

    def view(name: str) -> str | None:
        return tables[name].view if name in tables else None
    return campaign_kpis_sql(VIEWS[RECEIPTS], dialect="spark", sends=view(SENDS_TABLE), campaigns=view(CAMPAIGNS_TABLE),
                             names=view(NAMES_TABLE), clicks=view(CLICKS_TABLE), replies=view(REPLIES_TABLE),
                             missing_before=cut_off)


def campaign_kpis(catalog_name: str, workers: int = DEFAULT_WORKERS, remote: str | None = None,
                  now: datetime | None = None) -> dict:
    """Every column of the Campaigns table of catalog ``catalog_name``'s tables, computed by
    Sail; receipts missing as of ``now`` (default: the current time)."""
    from pyspark.sql import SparkSession

    tables, properties = current_tables(catalog_name)
    cut_off = missing_before(now)
    server = None
    if remote is None:
        from pysail.spark import SparkConnectServer

        os.environ.update(sail_environment(properties, workers))  # Sail reads its settings at start
        server = SparkConnectServer("127.0.0.1", 0)
        server.start(background=True)
        remote = f"sc://127.0.0.1:{server.listening_address[1]}"
    started = time.perf_counter()
    spark = SparkSession.builder.remote(remote).getOrCreate()
    try:
        spark.conf.set("spark.sql.session.timeZone", "UTC")
        for table in tables.values():
            (spark.read.format("iceberg").option("snapshot-id", str(table.snapshot_id)).load(table.location)
             .createOrReplaceTempView(table.view))
        rows = [row.asDict() for row in spark.sql(campaign_sql(tables, cut_off)).collect()]
    finally:
        spark.stop()
        if server is not None:
            server.stop()
    return {"tables": {name: {"location": table.location, "snapshot_id": table.snapshot_id}
                       for name, table in tables.items()},
            "missing_before": cut_off.isoformat(),
            "engine": remote if server is None else f"local Sail, {workers} workers",
            "seconds": round(time.perf_counter() - started, 3), "campaigns": rows}


def _aware_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.utcoffset() is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset (e.g. 2026-11-30T12:00:00+00:00)")
    return moment


def missing_before(now: datetime | None) -> datetime:
    """The receipts-missing cut-off as the report takes it: ``now`` (default: the current time)
    minus ``DLRLENS_RECEIPTS_MISSING_AFTER``."""
    return (now or datetime.now(timezone.utc)) - missing_after_setting()


def _text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--catalog", help="pyiceberg catalog name (as in DLRLENS_STORE=iceberg:NAME)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="workers of the local Sail server")
    parser.add_argument("--remote", help="a running Sail server (sc://HOST:PORT) instead of a local one")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument("--now", type=_aware_time, help="the time receipts missing are counted at, ISO 8601 "
                        "with an offset (default: the current time; the grace is DLRLENS_RECEIPTS_MISSING_AFTER)")
    parser.add_argument("--print-sql", action="store_true", help="print the Spark SQL (every table present) and exit")
    args = parser.parse_args(argv)
    if args.print_sql:
        every = {name: TableRead(view, "", 0) for name, view in VIEWS.items()}
        print(campaign_sql(every, missing_before(args.now)))
        return 0
    if not args.catalog:
        parser.error("--catalog is required (or --print-sql)")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    try:
        result = campaign_kpis(args.catalog, args.workers, args.remote, args.now)
    except (ValueError, LookupError) as exc:
        print(f"sail_campaigns: error: {exc}", file=sys.stderr)
        return 2
    if args.format == "json":
        print(json.dumps(result, default=str, indent=1))
        return 0
    rows = result.pop("campaigns")
    print(" ".join(f"{key}={value}" for key, value in result.items()), file=sys.stderr)
    columns = list(rows[0]) if rows else ["campaign"]
    print("\t".join(columns))
    for row in rows:
        print("\t".join(_text(row[column]) for column in columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
