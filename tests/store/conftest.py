"""Fixtures of the store's tests."""

from __future__ import annotations

import pytest

from tests.support.seaweed import object_store


@pytest.fixture
def lake(tmp_path, monkeypatch):
    """A running object store (``weed mini`` on loopback) and the pyiceberg SQL catalog ``lake``
    (a SQLite file, its warehouse in the store's bucket) configured by environment variables."""
    with object_store(tmp_path / "s3") as store:
        for name, value in store.catalog_env("lake", tmp_path / "catalog.db").items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("DLRLENS_STORE", raising=False)
        yield store
