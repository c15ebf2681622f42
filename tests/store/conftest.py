"""Fixtures of the store's tests: a running object store (``weed mini`` on loopback) with the
Iceberg catalog ``lake`` configured by environment variables."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from tests.support.seaweed import object_store


@contextlib.contextmanager
def running_lake(tmp_path: Path, monkeypatch, catalog: str):
    """A running object store and the catalog ``lake``: pyiceberg's SQL catalog on a SQLite file
    (``sql``, its warehouse in the store's bucket) or the store's own Iceberg REST catalog
    (``rest``, requests signed with SigV4)."""
    with object_store(tmp_path / "s3") as store:
        env = store.catalog_env("lake", tmp_path / "catalog.db") if catalog == "sql" else store.rest_catalog_env("lake")
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("DLRLENS_STORE", raising=False)
        yield store


@pytest.fixture
def lake(tmp_path, monkeypatch):
    with running_lake(tmp_path, monkeypatch, "sql") as store:
        yield store


@pytest.fixture(params=["sql", "rest"])
def each_lake(request, tmp_path, monkeypatch):
    """:func:`running_lake` with each kind of catalog."""
    with running_lake(tmp_path, monkeypatch, request.param) as store:
        yield store
