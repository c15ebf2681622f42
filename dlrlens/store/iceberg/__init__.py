"""The store's second backend: Apache Iceberg tables on object storage (issue #10).

Selected with ``DLRLENS_STORE=iceberg:<catalog name>`` (or ``--store``; see
:mod:`dlrlens.store.backends`); the catalog is configured the pyiceberg way (``.pyiceberg.yaml``
or ``PYICEBERG_CATALOG__<NAME>__*`` variables). pyiceberg is an optional dependency (the
``iceberg`` extra): only this package imports it, and only when the backend is chosen.

- :mod:`~dlrlens.store.iceberg.table`: the catalog, the tables the collectors write (receipts,
  clicks, replies: the contract schemas of :data:`dlrlens.store.layout.TABLES`, partitioned by
  UTC day like the local ``date=`` folders) and the snapshot-summary keys and table properties
  that make commits idempotent.
- :mod:`~dlrlens.store.iceberg.publisher`: the collector's side. Each flush of a log slot's
  closed segments becomes one append commit per table it has rows for (receipts, then clicks,
  then replies) recording ``dlrlens.segment = <collector>/<slot>/<segment>[,...]``, and in a
  table property the slot's segments the table holds that the log still holds; a segment
  already committed to a table (a replay after a crash, however late, also one between the
  receipts commit and the events commits) is never committed to it twice; a segment leaves the
  log once every table holds its rows; a failed commit leaves the segments in the local log and
  is retried with back-off.
- :mod:`~dlrlens.store.iceberg.maintain`: the receipts, clicks and replies tables' compaction,
  every table's snapshot expiry and orphan-file cleanup (the alert state's too), and the
  commits of the derived state, run by every collector's maintenance process, all as catalog
  commits (no leader).
- :mod:`~dlrlens.store.iceberg.derived`: the derived per-message state as a second table,
  ``<namespace>.receipts_messages``: the derived messages files as its data files (their
  companions beside them), each snapshot recording the receipts snapshot it absorbed (and
  the clicks and replies tables' snapshots);
  committed by the maintenance processes (a commit based on a snapshot that is no longer the
  table's is refused, and its maintainer adopts the winner's state), adopted by readers.
- :mod:`~dlrlens.store.iceberg.send_tables`: Mobivate's send records, campaign list and
  imported names as the tables ``sends`` (partitioned by source and UTC day), ``campaigns`` and
  ``campaign_names``, written by the syncs and names imports: a day's records merged into the
  partition by the local files' rules and replaced in one overwrite commit; a commit refused
  because another syncer's landed first merges again. The mirror caches each partition as the
  local file it stands for.
- :mod:`~dlrlens.store.iceberg.mirror`: the read side. pyiceberg plans the data files of the
  receipts, clicks and replies tables, which are copied once into a local cache laid out like a
  data directory; the ordinary :class:`~dlrlens.store.reader.Store` (DuckDB) reads that (the
  Funnel page included), with the derived per-message state adopted from the derived table
  (an empty cache) and kept up to date locally from the cached receipts, clicks and replies.
- :mod:`~dlrlens.store.iceberg.alert_table`: the alert state shared by every collector's alerts
  process and the dashboard, ``<namespace>.alert_state``: the whole state of
  :mod:`dlrlens.store.alert_state` as small rows, rewritten by one overwrite commit per change,
  based on the snapshot the change imported (a commit based on a snapshot that is no longer the
  table's is refused: the round that made it is discarded, or the change retried on the new one).
  Each process's ``alerts.sqlite`` is its working copy.
- :mod:`~dlrlens.store.iceberg.migrate`: copies a local data directory's receipt, click and
  reply files into their tables, in batches, idempotent and resumable.

Imports neither app nor the command line.
"""
