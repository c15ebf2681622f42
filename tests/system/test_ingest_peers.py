"""The ingest benchmark's durable peers, end to end and short: a real PostgreSQL cluster of the
benchmark's own on loopback (tests/support/postgres.py) behind Flask + psycopg, and Flask +
SQLite in WAL mode, each loaded for a second by the benchmark's own round, each 200 found again
in its table. The figures themselves come from ``python3 -m tests.benchmarks.ingest`` (README)."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest

from tests.benchmarks import ingest
from tests.benchmarks.durable_peers import TABLE, SqliteStore
from tests.support.postgres import postgres_bin_dir, running_postgres

ARGS = ["--seconds", "1", "--warmup", "0", "--rounds", "1", "--client", "python", "--connections", "4",
        "--workers", "1", "--threads", "4"]


def _round(bench: ingest.Bench, target: str) -> ingest.Round:
    result = bench.round(target, 1)
    assert result.load.acknowledged > 0 and result.load.not_ok == 0, result.load
    assert result.durable and result.stored_check.endswith("OK"), result.stored_check
    return result


def test_postgres_peer_commits_every_acknowledged_receipt(tmp_path):
    if postgres_bin_dir() is None:  # installed with apt-get when missing and root (CI is)
        pytest.skip("Debian's postgresql is not installed and cannot be installed here")
    bench = ingest.Bench(ingest.parse_args(ARGS), tmp_path / "work", wrk=None)
    bench.work_dir.mkdir()
    with running_postgres() as cluster:  # in the system temp directory: pytest's is root's alone
        with psycopg.connect(cluster.dsn) as connection:
            settings = dict(connection.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN ('synchronous_commit', 'fsync')").fetchall())
        assert settings == {"synchronous_commit": "on", "fsync": "on"}, "a COMMIT waits for the disk"
        bench.postgres = cluster
        result = _round(bench, "postgres")
    assert result.cpu.server > 0, "PostgreSQL's CPU and the workers' are counted"


def test_sqlite_peer_commits_every_acknowledged_receipt_in_wal_mode(tmp_path):
    bench = ingest.Bench(ingest.parse_args(ARGS), tmp_path, wrk=None)
    bench.args.keep = True  # look at the database afterwards
    _round(bench, "sqlite")
    database = ingest.sqlite_database(tmp_path / "sqlite-1")
    with sqlite3.connect(database) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        webhook, campaign, body = connection.execute(f"SELECT webhook, campaign, body FROM {TABLE} LIMIT 1").fetchone()
    connection.close()
    assert (webhook, campaign) == ("/dlr", "bench") and '"deliveryMessageId"' in body
    assert SqliteStore.stored_rows(database)[0] > 0
