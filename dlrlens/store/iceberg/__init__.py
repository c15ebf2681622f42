"""The store's second backend: Apache Iceberg tables on object storage (issue #10).

Selected with ``DLRLENS_STORE=iceberg:<catalog name>`` (or ``--store``; see
:mod:`dlrlens.store.backends`); the catalog is configured the pyiceberg way (``.pyiceberg.yaml``
or ``PYICEBERG_CATALOG__<NAME>__*`` variables). pyiceberg is an optional dependency (the
``iceberg`` extra): only this package imports it, and only when the backend is chosen.

- :mod:`~dlrlens.store.iceberg.table`: the catalog, the receipts table (the contract schema,
  partitioned by UTC day of ``created``) and the snapshot-summary keys that make commits
  idempotent.
- :mod:`~dlrlens.store.iceberg.publisher`: the collector's side. Each flush of a log slot's
  closed segments becomes one append commit recording ``dlrlens.segment =
  <collector>/<slot>/<segment>[,...]`` and the slot's last commit in a table property; a
  segment already committed (a replay after a crash, however late) is never committed twice; a
  failed commit leaves the segments in the local log and is retried with back-off.
- :mod:`~dlrlens.store.iceberg.maintain`: the table's compaction, snapshot expiry and
  orphan-file cleanup, and the commits of the derived state, run by every collector's
  maintenance process, all as catalog commits (no leader).
- :mod:`~dlrlens.store.iceberg.derived`: the derived per-message state as a second table,
  ``<namespace>.receipts_messages``: the derived messages files as its data files (their
  companions beside them), each snapshot recording the receipts snapshot it absorbed;
  committed by the maintenance processes (a commit based on a snapshot that is no longer the
  table's is refused, and its maintainer adopts the winner's state), adopted by readers.
- :mod:`~dlrlens.store.iceberg.mirror`: the read side. pyiceberg plans the table's data
  files, which are copied once into a local cache laid out like a data directory; the
  ordinary :class:`~dlrlens.store.reader.Store` (DuckDB) reads that, with the derived
  per-message state adopted from the derived table (an empty cache) and kept up to date
  locally from the cached receipts.
- :mod:`~dlrlens.store.iceberg.migrate`: copies a local data directory's receipt files into the
  table, one commit per file, idempotent and resumable.

Imports neither app nor the command line.
"""
