"""The alerts process beside the collector: :class:`AlertsProcess` runs
``python3 -m dlrlens.alerts.engine`` supervised by the collector's master exactly like the
maintenance process (spawned, restarted when it dies, stopped with the collector, exits when
its parent does). Light on purpose: the gunicorn master imports it before forking its
workers, so it loads neither DuckDB nor apprise (the child process does).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from dlrlens.alerts.rules import RulesError, load
from dlrlens.store.maintenance import MaintenanceProcess

log = logging.getLogger("dlrlens.alerts")


class AlertsProcess(MaintenanceProcess):
    """``python3 -m dlrlens.alerts.engine --every S`` supervised like the maintenance process."""

    def __init__(self, data_dir: Path, alerts_file: Path, every: float, log_level: str = "info",
                 store: str = "local"):
        super().__init__(data_dir, interval=0, compact_every=0, log_level=log_level)
        # --store: the collector's choice, which may come from its own --store, not the environment.
        self.command = [sys.executable, "-m", "dlrlens.alerts.engine", "--data", str(data_dir),
                        "--file", str(alerts_file), "--every", str(every), "--log-level", log_level,
                        "--store", store]


def start_process(settings) -> AlertsProcess | None:
    """The supervised alerts process for the collector's ``settings``; None without an alerts
    file (``DLRLENS_ALERTS_FILE``) or with evaluation turned off."""
    if settings.alerts_file is None or settings.alerts_seconds <= 0:
        return None
    if not settings.store.is_local and not getattr(settings, "iceberg_derived", True):
        # The evaluation reads a local copy of the tables (the cache the maintenance would share).
        log.warning("event=alerts_keep_a_copy reason=%r", "DLRLENS_ICEBERG_DERIVED=0 asks for no copy of the "
                    "history on this machine, but the alerts process evaluates the Iceberg tables through a copy "
                    "under the data directory; unset DLRLENS_ALERTS_FILE here and let other collectors evaluate "
                    "(the alert state is shared)")
    try:
        load(settings.alerts_file)
    except RulesError as exc:  # started anyway: it retries the file every tick
        log.error("event=alerts_file_refused error=%r", str(exc))
    return AlertsProcess(settings.data_dir, settings.alerts_file, settings.alerts_seconds,
                         settings.log_level, str(settings.store)).start()
