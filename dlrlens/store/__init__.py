"""dlrlens's storage engine: the one package that reads and writes the data directory.

The collector writes through it, the dashboard and ``dlrlens report`` read through it; it
imports neither of them (an import contract in CI keeps it so). Modules, in the order a
receipt meets them:

* :mod:`~dlrlens.store.layout`: where everything lives under ``data/`` and the receipt
  schema; the contract every reader and writer keeps.
* :mod:`~dlrlens.store.files`: the one way to publish a file atomically and the one way to
  take a lock on the data directory.
* :mod:`~dlrlens.store.wal`: the write-ahead log a ``200`` waits for (single writer thread,
  group commit).
* :mod:`~dlrlens.store.writer`: one collector process's receipt storage: log, flush to
  Parquet, recovery, counters.
* :mod:`~dlrlens.store.rejected`: the bounded archive of refused request bodies.
* :mod:`~dlrlens.store.compaction` and :mod:`~dlrlens.store.derive`: merging small files and
  the duplicate-insensitive per-message state; :mod:`~dlrlens.store.maintenance` runs both in
  their own process.
* :mod:`~dlrlens.store.status`: the status files (writer counters, maintenance status) as
  plain dicts, for ``/metrics`` and the Data health page.
* :mod:`~dlrlens.store.reader`: the read interface (:class:`~dlrlens.store.reader.Store`):
  SQL over the receipts, the per-message state and the fresh tail, merged in one place; what
  it is asked for is a :class:`~dlrlens.store.selection.Filters` (:mod:`~dlrlens.store.selection`),
  turned into SQL conditions by :mod:`~dlrlens.store.sql` (with the ``receipts`` relation).
* :mod:`~dlrlens.store.alert_state`: the alerts' state and history (``data/alerts.sqlite``):
  firing alerts, the notification outbox and its outcomes, silences; written by the alert
  evaluator (:mod:`dlrlens.alerts`, which this package does not import), read by the pages
  and ``/metrics``.
* :mod:`~dlrlens.store.sends`: Mobivate's send records (message log, history), campaign
  names and the sync state, joined to the receipts for names, cost, country and network;
  :mod:`~dlrlens.store.pseudonym`: phone numbers as a keyed hash, a masked form, country and
  original network (the full number only when asked).
* :mod:`~dlrlens.store.faults`: named crash points for the fault tests.

* :mod:`~dlrlens.store.backends`: which store holds the receipts (``DLRLENS_STORE``): the local
  data directory (default) or the Iceberg backend, :mod:`~dlrlens.store.iceberg` (the writer's
  publisher hook commits flushed segments to an Iceberg table; the reader's ``Store`` reads a
  local cache of its data files; ``dlrlens migrate``).

Nothing outside this package touches ``data/`` or the Iceberg tables.
"""
