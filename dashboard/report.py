"""The campaign report: the dashboard's download button and ``dlrlens report`` share it.

:func:`build_report` gathers the tables (sheets) from :mod:`dashboard.queries`, so a report
always shows the same numbers as the screen. :func:`write_report` / :func:`report_bytes`
serialise it:

* ``xlsx``: one sheet per table; rates and shares shown as percentages and seconds with
  one decimal, but every cell keeps the unrounded value (to the 16 significant digits
  xlsxwriter writes; Excel computes with 15).
* ``json``: ``{sheet name: [row objects]}``; times as ISO 8601 strings with their offset,
  missing values as null.
* ``csv``: the Campaigns table only (the one table people feed into other tools; the
  other sheets are in the xlsx and json formats).

Campaign names and statuses come from whoever can post receipts, so text cells are
written as data, never as something a spreadsheet evaluates: :func:`csv_bytes` (every CSV
written from a DataFrame, here and in the dashboard) guards formula-like text cells (:func:`dashboard.safe_text.csv_cell`),
and the xlsx writer stores text with ``write_string`` only (never ``write``, which would
turn ``=...`` into a formula).

:data:`KPI_DEFINITIONS` holds the wording of every KPI; the app's help tooltips import it.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import re
import sys
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path

import pandas as pd

from dashboard import queries, safe_text
from dashboard.queries import KPI_COLUMNS, Filters, Store

FORMATS = ("csv", "xlsx", "json")
SHEETS = ("Summary", "Definitions", "Campaigns", "Failure reasons", "Daily trend")

# Terms every KPI builds on (shown first on the Definitions sheet).
TERM_DEFINITIONS: dict[str, str] = {
    "Message": "One SMS, identified by Mobivate's deliveryMessageId. A receipt stored more than once "
    "(same receipt id) counts once.",
    "Campaign": "The campaign label of the webhook URL the message's receipts arrived on (from its earliest "
    "labelled receipt), else its batchId, else (none).",
    "Sent time": "The created time of the message's earliest receipt. Date ranges and daily/hourly "
    "buckets use it, in the report's time zone.",
    "Outcome": "The final receipt (delivered, failed or unknown) with the latest created time decides: "
    "delivered, failed (its status is the failure reason) or unknown. A message without any final "
    "receipt is pending. An intermediate receipt never overrides a final one, whatever the arrival order.",
}

KPI_LABELS: dict[str, str] = {
    "messages": "Messages",
    "delivered": "Delivered",
    "failed": "Failed",
    "unknown": "Unknown",
    "pending": "Pending",
    "delivery_rate": "Delivery rate",
    "delivered_of_all": "Delivered of all",
    "latency_p50_s": "Time to deliver p50 (s)",
    "latency_p90_s": "Time to deliver p90 (s)",
    "latency_p95_s": "Time to deliver p95 (s)",
    "latency_p99_s": "Time to deliver p99 (s)",
    "latency_messages": "Messages with a time to deliver",
    "delivered_without_earlier": "Delivered without an earlier receipt",
    "within_10s": "Delivered within 10 s",
    "within_1m": "Delivered within 1 min",
    "within_5m": "Delivered within 5 min",
    "within_1h": "Delivered within 1 h",
    "webhook_lag_p50_s": "Webhook lag p50 (s)",
    "webhook_lag_p95_s": "Webhook lag p95 (s)",
    "receipts": "Receipts",
    "duplicate_rows": "Duplicate receipts stored",
    "regressions": "Regressions",
}

_WITHIN = ("Share of the messages with a time to deliver that were delivered within {} (inclusive).")
_LATENCY = ("{} percentile of the time to deliver: created time of the message's first DELIVERED receipt "
            "minus its sent time, over messages with a time to deliver (linear interpolation).")

KPI_DEFINITIONS: dict[str, str] = {
    "messages": "Distinct messages sent in the period (by sent time) that match the filters.",
    "delivered": "Messages whose outcome is delivered.",
    "failed": "Messages whose outcome is failed (their deciding status is the failure reason).",
    "unknown": "Messages whose outcome is unknown: the network reported no usable outcome, or Mobivate "
    "sent a status dlrlens does not recognise.",
    "pending": "Messages without any final receipt yet (only ACCEPTED, INTERIM_* or RETRY receipts).",
    "delivery_rate": "Delivered / (delivered + failed + unknown): the share of finished messages that "
    "were delivered. Pending messages are left out. Empty when no message has finished.",
    "delivered_of_all": "Delivered / messages, pending ones included.",
    "latency_p50_s": _LATENCY.format("Median (50th)"),
    "latency_p90_s": _LATENCY.format("90th"),
    "latency_p95_s": _LATENCY.format("95th"),
    "latency_p99_s": _LATENCY.format("99th"),
    "latency_messages": "Delivered messages that had a receipt before their first DELIVERED receipt; only "
    "these have a time to deliver.",
    "delivered_without_earlier": "Delivered messages whose first receipt was already DELIVERED, so the send "
    "time is unknown and no time to deliver is counted.",
    "within_10s": _WITHIN.format("10 seconds"),
    "within_1m": _WITHIN.format("1 minute"),
    "within_5m": _WITHIN.format("5 minutes"),
    "within_1h": _WITHIN.format("1 hour"),
    "webhook_lag_p50_s": "Median of received time minus created time over the messages' distinct receipts: "
    "how long Mobivate took to call the webhook.",
    "webhook_lag_p95_s": "95th percentile of received time minus created time over distinct receipts.",
    "receipts": "Distinct receipts of the messages (a receipt stored twice counts once).",
    "duplicate_rows": "Stored receipt rows minus distinct receipts: repeated deliveries of the same receipt "
    "(Mobivate retries), counted once everywhere else.",
    "regressions": "Intermediate receipts created after the message's deciding final receipt; they do "
    "not change the outcome.",
}

RATE_COLUMNS = {"delivery_rate", "delivered_of_all", "within_10s", "within_1m", "within_5m", "within_1h", "share"}
SECONDS_COLUMNS = {c for c in KPI_COLUMNS if c.endswith("_s")} | {"p50_s", "p90_s", "p95_s", "p99_s", "latency_s"}


# --------------------------------------------------------------------------- building


def build_report(store: Store, filters: Filters) -> dict[str, pd.DataFrame]:
    """The report's sheets (:data:`SHEETS`, in order), all from one data snapshot.

    * Summary: item, key, value: the report's scope (from, to, time zone, campaigns) then
      every overall KPI (``key`` is the :func:`queries.kpis` column, ``value`` its value).
    * Definitions: term, key, definition.
    * Campaigns: :func:`queries.campaigns`.
    * Failure reasons: :func:`queries.failure_reasons`.
    * Daily trend: day (local date in the report's zone) + :func:`queries.trend` columns.
    """
    with store.pinned():
        overall = queries.kpis(store, filters, receipt_figures=True).iloc[0]
        per_campaign = queries.campaigns(store, filters, receipt_figures=True)
        reasons = queries.failure_reasons(store, filters)
        daily = queries.trend(store, filters, bucket="day")
    first_day, last_day = report_days(filters)
    scope = [
        ("From (sent time)", "from", first_day.isoformat() if first_day else "(all data)"),
        ("To, inclusive", "to", last_day.isoformat() if last_day else "(all data)"),
        ("Time zone", "tz", filters.tz),
        ("Campaigns", "campaigns", ", ".join(filters.campaigns) if filters.campaigns else "(all)"),
        ("Generated at (UTC)", "generated_at", datetime.now(timezone.utc).replace(microsecond=0).isoformat()),
    ]
    summary = pd.DataFrame(
        scope + [(KPI_LABELS[k], k, _plain(overall[k])) for k in KPI_COLUMNS],
        columns=["item", "key", "value"],
    )
    definitions = pd.DataFrame(
        [(term, "", text) for term, text in TERM_DEFINITIONS.items()]
        + [(KPI_LABELS[k], k, KPI_DEFINITIONS[k]) for k in KPI_COLUMNS],
        columns=["term", "key", "definition"],
    )
    daily = daily.copy()
    daily.insert(0, "day", [ts.date() for ts in daily["bucket_start"]])
    return {
        "Summary": summary,
        "Definitions": definitions,
        "Campaigns": per_campaign,
        "Failure reasons": reasons,
        "Daily trend": daily.drop(columns=["bucket_start"]),
    }


def report_days(filters: Filters) -> tuple[date | None, date | None]:
    """First and last (inclusive) local date the filters cover, None where open."""
    zone = queries.zone_info(filters.tz)
    first = filters.start.astimezone(zone).date() if filters.start else None
    last = (filters.end - timedelta(microseconds=1)).astimezone(zone).date() if filters.end else None
    return first, last


def report_filename(filters: Filters, kind: str = "campaign-report", ext: str = "xlsx") -> str:
    """``dlrlens-<kind>_<first day>_<last day>.<ext>``, e.g. dlrlens-campaign-report_2026-11-01_2026-11-30.xlsx."""
    first, last = report_days(filters)
    kind = re.sub(r"[^A-Za-z0-9_-]+", "-", kind).strip("-") or "report"
    if first and last:
        span = f"{first}_{last}"
    elif first:
        span = f"{first}_onwards"
    elif last:
        span = f"until_{last}"
    else:
        span = "all-time"
    return f"dlrlens-{kind}_{span}.{ext.lstrip('.')}"


# --------------------------------------------------------------------------- writing


def write_report(report: dict[str, pd.DataFrame], path_or_buffer, fmt: str) -> None:
    """Write ``report`` as ``fmt`` (csv | xlsx | json) to a path or a binary file object."""
    data = report_bytes(report, fmt)
    if hasattr(path_or_buffer, "write"):
        path_or_buffer.write(data)
    else:
        Path(path_or_buffer).write_bytes(data)


def report_bytes(report: dict[str, pd.DataFrame], fmt: str) -> bytes:
    """The file contents of ``report`` as ``fmt`` (what a download button serves)."""
    if fmt == "csv":
        return csv_bytes(report["Campaigns"])
    if fmt == "json":
        doc = {name: [_json_record(row) for row in df.to_dict(orient="records")] for name, df in report.items()}
        return json.dumps(doc, indent=1, ensure_ascii=False, allow_nan=False).encode("utf-8")
    if fmt == "xlsx":
        return _xlsx_bytes(report)
    raise ValueError(f"unknown report format {fmt!r}; choose from {', '.join(FORMATS)}")


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """UTF-8 CSV of ``frame`` without the index, at full precision (timestamps keep their UTC
    offset), text cells guarded against formula injection (:func:`safe_text.csv_safe_frame`):
    the one writer of every CSV made from a DataFrame."""
    return safe_text.csv_safe_frame(frame).to_csv(index=False).encode("utf-8")


def _plain(value):
    """A cell value as a plain Python value (None for NaN/NaT)."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is pd.NaT or (not isinstance(value, (str, bytes, list, dict)) and pd.isna(value)):
        return None
    if hasattr(value, "item") and not isinstance(value, (pd.Timestamp,)):
        return value.item()  # numpy scalar
    return value


def _json_record(row: dict) -> dict:
    out = {}
    for key, value in row.items():
        value = _plain(value)
        if isinstance(value, (datetime, date)):
            value = value.isoformat()
        out[key] = value
    return out


def _xlsx_bytes(report: dict[str, pd.DataFrame]) -> bytes:
    import xlsxwriter

    buffer = io.BytesIO()
    book = xlsxwriter.Workbook(buffer, {"in_memory": True})
    header = book.add_format({"bold": True, "bottom": 1, "text_wrap": True, "valign": "top"})
    formats = {
        "rate": book.add_format({"num_format": "0.0%"}),
        "seconds": book.add_format({"num_format": "#,##0.0"}),
        "count": book.add_format({"num_format": "#,##0"}),
        "date": book.add_format({"num_format": "yyyy-mm-dd"}),
        "datetime": book.add_format({"num_format": "yyyy-mm-dd hh:mm:ss"}),
        "text": book.add_format({"text_wrap": False}),
        "wrap": book.add_format({"text_wrap": True, "valign": "top"}),
    }
    for name, df in report.items():
        sheet = book.add_worksheet(name[:31])
        widths = [len(str(c)) for c in df.columns]
        for col, column in enumerate(df.columns):
            sheet.write_string(0, col, str(column), header)
        for row_index, row in enumerate(df.itertuples(index=False), start=1):
            row_key = row[1] if name == "Summary" else None  # Summary: format by the KPI key
            for col, value in enumerate(row):
                column = row_key if (name == "Summary" and df.columns[col] == "value") else df.columns[col]
                shown = _write_cell(sheet, row_index, col, _plain(value), column, formats)
                widths[col] = max(widths[col], shown)
        for col, width in enumerate(widths):
            wrap = df.columns[col] in ("definition", "meaning")
            sheet.set_column(col, col, min(max(width + 2, 8), 80 if wrap else 45), formats["wrap"] if wrap else None)
        sheet.freeze_panes(1, 0)
    book.close()
    return buffer.getvalue()


def _write_cell(sheet, row: int, col: int, value, column: str, formats: dict) -> int:
    """Write one cell with the number format its column calls for; return its shown width."""
    if value is None:
        sheet.write_blank(row, col, None)
        return 0
    if isinstance(value, bool):
        sheet.write_boolean(row, col, value)
        return 5
    if isinstance(value, (int, float)):
        if column in RATE_COLUMNS:
            fmt = formats["rate"]
        elif column in SECONDS_COLUMNS:
            fmt = formats["seconds"]
        elif isinstance(value, int):
            fmt = formats["count"]
        else:
            fmt = None
        sheet.write_number(row, col, value, fmt)
        return 12
    if isinstance(value, datetime):
        naive = value.replace(tzinfo=None)  # Excel has no zones: local time of the report's zone
        sheet.write_datetime(row, col, naive, formats["datetime"])
        return 19
    if isinstance(value, date):
        sheet.write_datetime(row, col, datetime.combine(value, time()), formats["date"])
        return 10
    text = str(value)
    sheet.write_string(row, col, text)
    return len(text)


# --------------------------------------------------------------------------- CLI


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``dlrlens report`` (the caller adds ``--data``)."""
    parser.add_argument("--from", dest="date_from", metavar="DATE",
                        help="first day (YYYY-MM-DD, in --tz) of messages to include by sent time; default: all data")
    parser.add_argument("--to", dest="date_to", metavar="DATE",
                        help="last day (YYYY-MM-DD, in --tz), inclusive; default: all data")
    parser.add_argument("--campaign", dest="campaigns", action="append", default=[], metavar="NAME",
                        help="only this campaign (repeat for several); default: all")
    parser.add_argument("--tz", default="UTC", metavar="ZONE",
                        help="IANA time zone for the dates and the daily trend (default UTC)")
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default=None,
                        help="file format; default: from the --output extension, else xlsx")
    parser.add_argument("--output", "-o", required=True, metavar="FILE",
                        help="file to write (a directory: a name with the date range is chosen)")


def run_report(args: argparse.Namespace, data_dir: str | Path) -> int:
    """``dlrlens report``: build the report and write it. 0 on success, 2 on bad input, 1 if no data."""
    try:
        filters = filters_from_arguments(args)
    except ValueError as exc:
        print(f"dlrlens report: error: {exc}", file=sys.stderr)
        return 2
    output = Path(args.output)
    fmt = args.fmt or (output.suffix.lstrip(".").lower() if output.suffix.lstrip(".").lower() in FORMATS else "xlsx")
    if output.is_dir():
        output = output / report_filename(filters, "campaign-report", fmt)
    store = Store(data_dir)
    try:
        if not store.has_data():
            print(f"dlrlens report: error: no receipt files under {Path(data_dir).resolve()}", file=sys.stderr)
            return 1
        report = build_report(store, filters)
    finally:
        store.close()
    try:
        write_report(report, output, fmt)
    except OSError as exc:
        print(f"dlrlens report: error: cannot write {output}: {exc}", file=sys.stderr)
        return 1
    messages = int(report["Summary"].set_index("key").at["messages", "value"])
    print(f"wrote {output} ({fmt}): {messages} messages, {len(report['Campaigns'])} campaigns")
    return 0


def filters_from_arguments(args: argparse.Namespace) -> Filters:
    """Filters for ``--from/--to/--campaign/--tz``; ValueError with a clear message when invalid."""
    zone = queries.zone_info(args.tz)
    first = _parse_day(args.date_from, "--from")
    last = _parse_day(args.date_to, "--to")
    if first and last and last < first:
        raise ValueError(f"--to {last} is before --from {first}")
    start = datetime.combine(first, time(), tzinfo=zone) if first else None
    end = datetime.combine(last + timedelta(days=1), time(), tzinfo=zone) if last else None
    return Filters(start=start, end=end, campaigns=tuple(args.campaigns or ()), tz=args.tz)


def _parse_day(text: str | None, option: str) -> date | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{option} {text!r} is not a date (expected YYYY-MM-DD)") from None
