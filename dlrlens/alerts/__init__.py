"""Alerts: tell the team when delivery breaks (see README, "Alerts").

* :mod:`dlrlens.alerts.rules`: ``alerts.toml`` parsed and validated (:func:`~dlrlens.alerts.rules.load`);
  a wrong file is refused whole, naming the line and the key.
* :mod:`dlrlens.alerts.dimensions`: what a rule's ``by`` may name (one row per dimension).
* :mod:`dlrlens.alerts.evaluate`: one evaluation of every rule at a given time, from the
  store's read interface (the dashboard's own query functions: no second KPI definition).
* :mod:`dlrlens.alerts.engine`: state changes (firing, resolved, repeat, grouping, silences)
  written with their notifications in one transaction (:mod:`dlrlens.store.alert_state`), then
  delivered; :class:`~dlrlens.alerts.engine.AlertsProcess` runs it every minute beside the
  collector's maintenance process.
* :mod:`dlrlens.alerts.notify`: delivery through apprise, per channel in parallel, with a
  timeout, retries with exponential back-off and every failure recorded.

Imports neither the collector nor the dashboard (import-linter contract ``alerts-below-apps``).
"""
