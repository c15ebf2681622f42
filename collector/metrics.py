"""Prometheus text exposition of the collector's counters.

Each writer slot (worker process) persists its counters to ``stats/<slot>.json`` at every
flush; ``/metrics`` sums every slot's file, with this process's live values instead of its
own file, so any worker answers for the whole collector.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from dlrlens.store import status as store_status
from dlrlens.store.alert_state import AlertState

HELP = {
    "requests": ("dlrlens_requests_total", "Webhook requests received."),
    "received": ("dlrlens_receipts_received_total", "Receipts found in accepted bodies (stored or refused)."),
    "stored": ("dlrlens_receipts_stored_total", "Receipts acknowledged durable (fsynced in the log)."),
    "duplicates_seen": ("dlrlens_duplicates_seen_total",
                        "Receipts whose receipt_id this worker had seen recently (retries, replays)."),
    "storage_errors": ("dlrlens_storage_errors_total", "Requests answered 503 because storage failed."),
    "flushes": ("dlrlens_flushes_total", "Log-to-Parquet flushes that wrote receipts."),
    "flushed_receipts": ("dlrlens_flushed_receipts_total", "Receipts written to Parquet."),
    "flush_errors": ("dlrlens_flush_errors_total", "Flushes that failed (retried on the next tick)."),
    "quarantined_segments": ("dlrlens_quarantined_segments_total",
                             "Log segments that could not be converted and were set aside in wal/quarantine."),
    "auth_failures": ("dlrlens_auth_failures_total", "Requests with a missing or wrong secret."),
    "forbidden": ("dlrlens_forbidden_total", "Requests from sources outside the allow-list."),
    "publish_errors": ("dlrlens_publish_errors_total",
                       "Flushes that could not publish to the store (Iceberg) and left the segments in the log."),
    "click_requests": ("dlrlens_click_requests_total", "Click webhook requests received (POST /click)."),
    "clicks_received": ("dlrlens_clicks_received_total", "Clicks found in accepted bodies (stored or refused)."),
    "clicks_stored": ("dlrlens_clicks_stored_total", "Clicks acknowledged durable (fsynced in the log)."),
    "reply_requests": ("dlrlens_reply_requests_total", "Incoming-message webhook requests received (POST /incoming)."),
    "replies_received": ("dlrlens_replies_received_total", "Replies found in accepted bodies (stored or refused)."),
    "replies_stored": ("dlrlens_replies_stored_total", "Replies acknowledged durable (fsynced in the log)."),
}


def collect(storage) -> dict:
    """Sum of every slot's counters, this process's own taken live."""
    others = [snap for slot, snap in store_status.writer_counters(storage.data_dir).items() if slot != storage.slot]
    summed = store_status.sum_counters([storage.counters.snapshot(), *others])
    return {"counters": {name: summed["counters"].get(name, 0) for name in HELP},
            "rejected": summed["rejected"], "flush_seconds_sum": summed["flush_seconds_sum"]}


def render(storage) -> str:
    data = collect(storage)
    lines: list[str] = []
    for name, (metric, text) in HELP.items():
        lines += [f"# HELP {metric} {text}", f"# TYPE {metric} counter", f"{metric} {data['counters'][name]}"]
    lines += ["# HELP dlrlens_rejected_total Requests or receipts refused, by reason.",
              "# TYPE dlrlens_rejected_total counter"]
    for reason, value in sorted(data["rejected"].items()):
        lines.append(f'dlrlens_rejected_total{{reason="{reason}"}} {value}')
    lines += ["# HELP dlrlens_flush_seconds Time spent flushing the log to Parquet.",
              "# TYPE dlrlens_flush_seconds summary",
              f"dlrlens_flush_seconds_sum {data['flush_seconds_sum']:.6f}",
              f"dlrlens_flush_seconds_count {data['counters']['flushes']}",
              "# HELP dlrlens_last_flush_seconds Duration of this worker's last flush.",
              "# TYPE dlrlens_last_flush_seconds gauge",
              f"dlrlens_last_flush_seconds {storage.counters.last_flush_seconds:.6f}"]
    backlog = storage.collector_backlog()
    replay = storage.collector_catching_up()
    lines += ["# HELP dlrlens_log_backlog_bytes Bytes acknowledged in the collector's logs (every worker's), "
              "not yet in Parquet.",
              "# TYPE dlrlens_log_backlog_bytes gauge",
              f"dlrlens_log_backlog_bytes {backlog['bytes']}",
              "# HELP dlrlens_log_backlog_segments Log segments of the collector (every worker) waiting for a flush.",
              "# TYPE dlrlens_log_backlog_segments gauge",
              f"dlrlens_log_backlog_segments {backlog['segments']}",
              "# HELP dlrlens_log_backlog_age_seconds Age of the oldest of them (0 when none).",
              "# TYPE dlrlens_log_backlog_age_seconds gauge",
              f"dlrlens_log_backlog_age_seconds {backlog['oldest_age_seconds']}",
              "# HELP dlrlens_catching_up 1 while the collector (any of its workers) replays what a previous run "
              "left in the logs (it acknowledges meanwhile).",
              "# TYPE dlrlens_catching_up gauge",
              f"dlrlens_catching_up {int(replay['catching_up'])}",
              "# HELP dlrlens_catching_up_seconds How long the oldest replay still going has been (0 when none).",
              "# TYPE dlrlens_catching_up_seconds gauge",
              f"dlrlens_catching_up_seconds {replay['seconds']}",
              "# HELP dlrlens_worker_catching_up 1 while this worker replays what a previous run left.",
              "# TYPE dlrlens_worker_catching_up gauge",
              f"dlrlens_worker_catching_up {int(storage.catching_up)}"]
    if storage.publish is not None:
        lines += publisher_lines(storage)
    lines += maintenance_lines(Path(storage.data_dir))
    lines += alerts_lines(Path(storage.data_dir))
    return "\n".join(lines) + "\n"


PUBLISHER_COUNTERS = {
    "commits": ("dlrlens_store_commits_total", "Commits to the store's tables (one per flush and table with rows; "
                                               "a catch-up commits several log segments at once)."),
    "committed_segments": ("dlrlens_store_committed_segments_total", "Log segments committed to the store's tables."),
    "committed_receipts": ("dlrlens_store_committed_receipts_total", "Receipts committed to the store's table."),
    "committed_clicks": ("dlrlens_store_committed_clicks_total", "Clicks committed to the store's clicks table."),
    "committed_replies": ("dlrlens_store_committed_replies_total", "Replies committed to the store's replies table."),
    "already_committed": ("dlrlens_store_already_committed_total",
                          "Segments found already committed (a replay after a crash) and not committed again."),
    "conflicts": ("dlrlens_store_commit_conflicts_total",
                  "Commits refused because another writer committed first (retried at once)."),
    "failures": ("dlrlens_store_commit_failures_total",
                 "Commit attempts that failed (catalog or object store unreachable; retried with back-off)."),
}


def publisher_lines(storage) -> list[str]:
    """Publishing to the Iceberg store: this worker's commits, and what waits in the collector's logs."""
    status = storage.publish.health(storage.wal_root, storage.flush_seconds)
    backlog = status["unpublished"]
    lines: list[str] = []
    for name, (metric, text) in PUBLISHER_COUNTERS.items():
        lines += [f"# HELP {metric} {text} This worker's.", f"# TYPE {metric} counter", f"{metric} {status[name]}"]
    gauges = (("dlrlens_store_degraded", "1 while the collector cannot publish to the store: this worker's last "
                                         "commit failed or a log segment waits too long (receipts are still "
                                         "acknowledged from the local log).", int(status["degraded"])),
              ("dlrlens_store_backlog_segments", "Log segments of the collector (every worker) not in the store yet.",
               backlog["segments"]),
              ("dlrlens_store_backlog_receipts", "Receipts acknowledged by the collector, not in the store yet.",
               backlog["receipts"]),
              ("dlrlens_store_backlog_age_seconds", "Age of the oldest of them (0 when none).",
               backlog["oldest_age_seconds"]))
    for metric, text, value in gauges:
        lines += [f"# HELP {metric} {text}", f"# TYPE {metric} gauge", f"{metric} {value}"]
    return lines


def maintenance_lines(data_dir: Path) -> list[str]:
    """The maintenance process's status file as metrics (none before its first task)."""
    status = store_status.maintenance_status(data_dir)
    if status is None:
        return []  # none yet
    try:
        return _maintenance_lines(status)
    except (ValueError, KeyError, TypeError, AttributeError):
        return []  # not ours: metrics must answer anyway


def _maintenance_lines(status: dict) -> list[str]:
    lines = ["# HELP dlrlens_maintenance_runs_total Maintenance tasks that succeeded (derive, compact, sync, iceberg).",
             "# TYPE dlrlens_maintenance_runs_total counter"]
    lines += [f'dlrlens_maintenance_runs_total{{task="{task}"}} {int(n)}' for task, n in sorted(status["runs"].items())]
    lines += ["# HELP dlrlens_maintenance_errors_total Maintenance tasks that failed (retried at the next tick).",
              "# TYPE dlrlens_maintenance_errors_total counter"]
    lines += [f'dlrlens_maintenance_errors_total{{task="{task}"}} {int(n)}'
              for task, n in sorted(status["errors"].items())]
    lines += ["# HELP dlrlens_maintenance_last_success_timestamp_seconds When each task last succeeded.",
              "# TYPE dlrlens_maintenance_last_success_timestamp_seconds gauge"]
    for task, at in sorted(status["last_success_at"].items()):
        if at:
            stamp = datetime.fromisoformat(at).timestamp()
            lines.append(f'dlrlens_maintenance_last_success_timestamp_seconds{{task="{task}"}} {stamp:.3f}')
    if status.get("iceberg"):
        lines += _iceberg_maintenance_lines(status["iceberg"])
    return lines


ICEBERG_TOTALS = {
    "files_compacted": ("dlrlens_iceberg_files_compacted_total", "Data files of the Iceberg table this collector's "
                                                                 "maintenance merged into compaction outputs."),
    "expired_snapshots": ("dlrlens_iceberg_expired_snapshots_total", "Snapshots of the Iceberg table this "
                                                                     "collector's maintenance expired."),
    "orphans_deleted": ("dlrlens_iceberg_orphan_files_deleted_total", "Unreferenced files under the table's "
                                                                      "location it deleted."),
    "orphan_bytes_deleted": ("dlrlens_iceberg_orphan_bytes_deleted_total", "Their bytes."),
    "conflicts": ("dlrlens_iceberg_maintenance_conflicts_total", "Its commits refused because another writer "
                                                                 "(say another collector's maintenance) committed "
                                                                 "first (retried on fresh metadata)."),
}
ICEBERG_GAUGES = {
    "snapshots": ("dlrlens_iceberg_snapshots", "Snapshots the Iceberg table holds (after the last maintenance run)."),
    "metadata_bytes": ("dlrlens_iceberg_metadata_bytes", "Size of its current metadata file (every commit rewrites "
                                                         "it, every reader reads it)."),
    "orphans_waiting": ("dlrlens_iceberg_orphans_waiting", "Unreferenced files younger than the grace."),
    "data_files": ("dlrlens_iceberg_data_files", "Data files the table's current snapshot holds."),
}


def _iceberg_maintenance_lines(iceberg: dict) -> list[str]:
    """The Iceberg table's maintenance: this process's totals, the table's size after the last run."""
    lines: list[str] = []
    for name, (metric, text) in ICEBERG_TOTALS.items():
        lines += [f"# HELP {metric} {text}", f"# TYPE {metric} counter", f"{metric} {int(iceberg['totals'][name])}"]
    last = iceberg.get("last_run") or {}
    if "snapshots" not in last:
        return lines  # no run yet (or no table yet)
    for name, (metric, text) in ICEBERG_GAUGES.items():
        lines += [f"# HELP {metric} {text}", f"# TYPE {metric} gauge", f"{metric} {int(last[name])}"]
    lines += ["# HELP dlrlens_iceberg_objects Files under the table's location by kind, before the last cleanup.",
              "# TYPE dlrlens_iceberg_objects gauge"]
    lines += [f'dlrlens_iceberg_objects{{kind="{kind}"}} {int(n)}' for kind, n in sorted(last["by_kind"].items())]
    return lines


def alerts_lines(data_dir: Path) -> list[str]:
    """``dlrlens_alerts_firing{rule=...}``: groups firing per alert rule (none before the first
    evaluation; see dlrlens.store.alert_state); ``dlrlens_alerts_round_failing``: 1 while this
    collector's last evaluation round failed (once one has failed)."""
    try:
        state = AlertState(data_dir, create=False)
        firing = state.firing_counts()
        round_error = state.meta().get("alerts_round_error")
    except Exception:  # a locked or foreign file: metrics must answer anyway
        return []
    lines = []
    if round_error is not None:
        lines += ["# HELP dlrlens_alerts_round_failing 1 while the last alert evaluation round failed (its log: "
                  "event=alerts_failed; on the Iceberg store, the catalog or object store out of reach).",
                  "# TYPE dlrlens_alerts_round_failing gauge", f"dlrlens_alerts_round_failing {int(bool(round_error))}"]
    if not firing:
        return lines
    lines += ["# HELP dlrlens_alerts_firing Groups (campaigns, statuses, ...) firing per alert rule.",
              "# TYPE dlrlens_alerts_firing gauge"]
    for rule, n in firing.items():
        escaped = rule.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        lines.append(f'dlrlens_alerts_firing{{rule="{escaped}"}} {int(n)}')
    return lines
