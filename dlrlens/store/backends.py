"""Which store holds the receipts: the local data directory (default) or an Iceberg table.

One setting chooses: ``DLRLENS_STORE`` (or ``--store`` on the commands that take ``--data``):

* ``local`` (default): everything under the data directory, exactly as described in
  :mod:`dlrlens.store.layout`.
* ``iceberg:<catalog name>``: receipts in the Iceberg table ``<namespace>.receipts`` of that
  pyiceberg catalog (:mod:`dlrlens.store.iceberg`). The data directory stays: a collector keeps
  its write-ahead log, counters and refused bodies there; the dashboard and ``dlrlens report``
  keep their cache of the table's files there.

This module imports pyiceberg only when the Iceberg backend is chosen.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

STORE_ENV = "DLRLENS_STORE"
_ICEBERG = re.compile(r"iceberg:([A-Za-z0-9][A-Za-z0-9-]*)")


@dataclass(frozen=True)
class StoreChoice:
    """A parsed ``DLRLENS_STORE`` value."""

    catalog: str | None = None  # None: the local data directory

    @property
    def is_local(self) -> bool:
        return self.catalog is None

    def __str__(self) -> str:
        return "local" if self.catalog is None else f"iceberg:{self.catalog}"


def parse_store(text: str) -> StoreChoice:
    """``local`` or ``iceberg:<catalog name>`` (letters, digits and ``-``: the name is also
    part of ``PYICEBERG_CATALOG__<NAME>__*`` variable names, where ``_`` would read as ``-``)."""
    value = text.strip()
    if value in ("", "local"):
        return StoreChoice()
    match = _ICEBERG.fullmatch(value)
    if not match:
        raise ValueError("expected 'local' or 'iceberg:<catalog name>' (letters, digits, '-')")
    return StoreChoice(match[1].lower())


def store_choice(explicit: str | None = None) -> StoreChoice:
    """``explicit`` (``--store``), else ``DLRLENS_STORE``, else local."""
    source = "--store" if explicit is not None else STORE_ENV
    text = explicit if explicit is not None else os.environ.get(STORE_ENV, "")
    try:
        return parse_store(text)
    except ValueError as exc:
        raise ValueError(f"{source}={text!r} is not valid: {exc}") from None


def publisher(choice: StoreChoice, data_dir: Path):
    """The collector's flush destination for ``choice``: None for the local data directory (the
    writer's own Parquet files), else an :class:`~dlrlens.store.iceberg.publisher.IcebergPublisher`.
    Raises ValueError when the catalog is not configured."""
    if choice.is_local:
        return None
    from dlrlens.store.iceberg.publisher import IcebergPublisher
    from dlrlens.store.iceberg.table import check_configured

    check_configured(choice.catalog)
    return IcebergPublisher(choice.catalog, Path(data_dir))


def send_destination(data_dir: str | Path, choice: StoreChoice | None = None):
    """Where a sync of Mobivate's send records and a campaign-names import store what they bring
    (``choice`` default: :func:`store_choice`): :class:`dlrlens.store.sends.LocalSends` of the
    data directory, or the Iceberg store's send tables
    (:class:`dlrlens.store.iceberg.send_tables.IcebergSends`). Raises ValueError when the
    catalog is not configured."""
    choice = store_choice() if choice is None else choice
    if choice.is_local:
        from dlrlens.store.sends import LocalSends

        return LocalSends(Path(data_dir))
    from dlrlens.store.iceberg.send_tables import IcebergSends
    from dlrlens.store.iceberg.table import check_configured

    check_configured(choice.catalog)
    return IcebergSends(choice.catalog)


def open_store(data_dir: str | Path, choice: StoreChoice | None = None, settings: dict | None = None):
    """The read interface (:class:`~dlrlens.store.reader.Store`) over ``choice`` (default:
    :func:`store_choice`): the data directory itself, or the Iceberg table cached under it."""
    choice = store_choice() if choice is None else choice
    if choice.is_local:
        from dlrlens.store.reader import Store

        return Store(data_dir, settings)
    from dlrlens.store.iceberg.mirror import IcebergStore
    from dlrlens.store.iceberg.table import check_configured

    check_configured(choice.catalog)
    return IcebergStore(choice.catalog, data_dir, settings)


def shared_alert_state(data_dir: str | Path, choice: StoreChoice | None = None, committer: str = ""):
    """Where the alert state is shared for ``choice`` (default: :func:`store_choice`): None on the
    local store (each data directory's ``alerts.sqlite`` is the state), else the Iceberg table's
    :class:`~dlrlens.store.iceberg.alert_table.SharedAlertState` with its working copy in
    ``data_dir``. Raises ValueError when the catalog is not configured."""
    choice = store_choice() if choice is None else choice
    if choice.is_local:
        return None
    from dlrlens.store.iceberg.alert_table import shared_alert_state as shared
    from dlrlens.store.iceberg.table import check_configured

    check_configured(choice.catalog)
    return shared(choice.catalog, data_dir, committer)
