"""The Campaigns KPIs of the Iceberg receipts table, computed by Sail through the PySpark client.

    pip install 'dlrlens[iceberg,engines]'
    python examples/sail_campaigns.py --catalog lake [--workers 2] [--format table|json]
    python examples/sail_campaigns.py --catalog lake --remote sc://sail.internal:50051
    python examples/sail_campaigns.py --print-sql          # the Spark SQL only

Sail (``pysail``) is a Spark Connect server: an ordinary PySpark session talks to it, and it runs
the query with several workers. The figures are those of ``dlrlens report --store iceberg:NAME``
(its Campaigns sheet, every KPI column; ``tests/store/test_iceberg.py`` compares each value).

1. The catalog (configured the pyiceberg way, as for ``DLRLENS_STORE=iceberg:NAME``) gives the
   receipts table's location and its current snapshot.
2. Without ``--remote``, a Sail server starts in this process in *local-cluster* mode with
   ``--workers`` workers: the driver splits the query into tasks and sends them to the workers
   over gRPC, as it does to worker pods in Sail's cluster mode on Kubernetes. It reaches the
   object store with the catalog's ``s3.*`` settings (given to Sail as its ``AWS_*`` variables).
   With ``--remote sc://HOST:PORT`` the query goes to a Sail server already running, which must
   reach the object store itself.
3. Sail 0.7 reads an Iceberg table by its location: it takes the newest metadata file in the
   table's ``metadata/`` folder. A commit that lost a race with another collector leaves a
   metadata file behind that may be the newest for a moment, so the read is pinned to the
   catalog's current snapshot (``snapshot-id``): such a moment gives an error, never other
   figures. (Sail also reads through an Iceberg REST catalog with OAuth or a bearer token, not
   one that wants SigV4 signing, such as SeaweedFS's or S3 Tables'.)
4. The query is :func:`dashboard.engine_sql.campaign_kpis_sql` in Spark SQL: dlrlens's own
   definitions, translated, not rewritten by hand.

Exit status 0, or 2 with a message on stderr when the catalog or table is missing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from dashboard.engine_sql import campaign_kpis_sql  # noqa: E402

VIEW = "receipts"
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


def current_table(catalog_name: str):
    """(location, current snapshot id, catalog properties) of the receipts table."""
    from dlrlens.store.iceberg.table import open_catalog, receipts_table
    from pyiceberg.exceptions import NoSuchTableError
    from pyiceberg.utils.config import Config

    try:
        table = receipts_table(open_catalog(catalog_name), create=False)
    except NoSuchTableError:
        raise LookupError(f"catalog {catalog_name!r} has no receipts table yet (a collector creates it "
                          f"at its first flush)") from None
    snapshot = table.current_snapshot()
    if snapshot is None:
        raise LookupError(f"the receipts table of catalog {catalog_name!r} has no data yet")
    return table.location(), snapshot.snapshot_id, Config().get_catalog_config(catalog_name)


def campaign_kpis(catalog_name: str, workers: int = DEFAULT_WORKERS, remote: str | None = None) -> dict:
    """Every Campaigns KPI of catalog ``catalog_name``'s receipts table, computed by Sail."""
    from pyspark.sql import SparkSession

    location, snapshot_id, properties = current_table(catalog_name)
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
        (spark.read.format("iceberg").option("snapshot-id", str(snapshot_id)).load(location)
         .createOrReplaceTempView(VIEW))
        rows = [row.asDict() for row in spark.sql(campaign_kpis_sql(VIEW, dialect="spark")).collect()]
    finally:
        spark.stop()
        if server is not None:
            server.stop()
    return {"table": location, "snapshot_id": snapshot_id, "engine": remote if server is None else
            f"local Sail, {workers} workers", "seconds": round(time.perf_counter() - started, 3), "campaigns": rows}


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
    parser.add_argument("--print-sql", action="store_true", help="print the Spark SQL and exit")
    args = parser.parse_args(argv)
    if args.print_sql:
        print(campaign_kpis_sql(VIEW, dialect="spark"))
        return 0
    if not args.catalog:
        parser.error("--catalog is required (or --print-sql)")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    try:
        result = campaign_kpis(args.catalog, args.workers, args.remote)
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
