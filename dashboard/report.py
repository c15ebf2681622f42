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

Labels, units and definitions of the KPIs come from :mod:`dashboard.catalog`. ``dlrlens report``
(its options and output are in :mod:`dlrlens.cli`) calls :func:`report_filters` and
:func:`write_campaign_report`.
"""

from __future__ import annotations

import io
import json
import math
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path

import pandas as pd

from dashboard import catalog, queries, safe_text, scope
from dashboard.queries import Filters, Store
from dlrlens.store.backends import StoreChoice, open_store, store_choice

FORMATS = ("csv", "xlsx", "json")
SHEETS = ("Summary", "Definitions", "Campaigns", "Failure reasons", "Daily trend", "By country", "By network")



# --------------------------------------------------------------------------- building


def build_report(store: Store, filters: Filters, unhonoured=()) -> dict[str, pd.DataFrame]:
    """The report's sheets (:data:`SHEETS`, in order), all from one data snapshot.

    * Summary: item, key, value: the report's scope (:meth:`dashboard.scope.Scope.rows`: period,
      time zone, previous period, every filter, the values not honoured, ``unhonoured``) then
      every overall KPI (``key`` is the :func:`queries.kpis` column, ``value`` its value).
    * Definitions: term, key, definition.
    * Campaigns: :func:`queries.campaign_table` (the Campaigns page's table: receipt, funnel and
      cost columns, one row per campaign and currency).
    * Failure reasons: :func:`queries.failure_reasons`.
    * Daily trend: day (local date in the report's zone) + :func:`queries.trend` columns.
    * By country / By network: :func:`queries.where_table`.
    """
    with store.pinned():
        # A record, not .iloc[0]: a row of mixed dtypes would turn every count into a float.
        overall = queries.kpis(store, filters, receipt_figures=True).to_dict(orient="records")[0]
        per_campaign = queries.campaign_table(store, filters)
        funnel_total = queries.funnel(store, filters).to_dict(orient="records")[0]
        reasons = queries.failure_reasons(store, filters)
        daily = queries.trend(store, filters, bucket="day")
        by_country = queries.where_table(store, filters, "country")
        by_network = queries.where_table(store, filters, "network")
    scope_rows = report_scope(filters, unhonoured).rows() + [
        ("Generated at (UTC)", "generated_at", datetime.now(timezone.utc).replace(microsecond=0).isoformat())]
    summary = pd.DataFrame(
        scope_rows + [(kpi.label, kpi.column, _plain(overall[kpi.column])) for kpi in catalog.KPIS]
        + [(kpi.label, kpi.column, _plain(funnel_total[kpi.column])) for kpi in catalog.FUNNEL_KPIS],
        columns=["item", "key", "value"],
    )
    definitions = pd.DataFrame(
        [(term.name, "", term.definition) for term in catalog.TERMS + catalog.FUNNEL_TERMS]
        + [(kpi.label, kpi.column, kpi.definition) for kpi in catalog.ALL_KPIS],
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
        "By country": by_country,
        "By network": by_network,
    }


def report_scope(filters: Filters, unhonoured=()) -> scope.Scope:
    """What a report for ``filters`` covers (:func:`dashboard.scope.describe`)."""
    return scope.describe(filters, unhonoured)


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


def write_report(report: dict[str, pd.DataFrame], path_or_buffer, fmt: str,
                 covers: scope.Scope | None = None) -> None:
    """Write ``report`` as ``fmt`` (csv | xlsx | json) to a path or a binary file object;
    ``covers``: its scope (see :func:`report_bytes`)."""
    data = report_bytes(report, fmt, covers)
    if hasattr(path_or_buffer, "write"):
        path_or_buffer.write(data)
    else:
        Path(path_or_buffer).write_bytes(data)


def report_bytes(report: dict[str, pd.DataFrame], fmt: str, covers: scope.Scope | None = None) -> bytes:
    """The file contents of ``report`` as ``fmt`` (what a download button serves).

    ``covers`` (the report's :class:`~dashboard.scope.Scope`) is stated in the file: the CSV's
    first line (:func:`dashboard.scope.csv_scope_line`), the JSON's ``scope`` object (first
    key); the xlsx states it in its Summary sheet (:func:`build_report`)."""
    if fmt == "csv":
        return csv_bytes(report["Campaigns"], covers)
    if fmt == "json":
        doc = {"scope": covers.as_dict()} if covers is not None else {}
        doc.update({name: [_json_record(row) for row in df.to_dict(orient="records")]
                    for name, df in report.items()})
        return json.dumps(doc, indent=1, ensure_ascii=False, allow_nan=False).encode("utf-8")
    if fmt == "xlsx":
        return _xlsx_bytes(report)
    raise ValueError(f"unknown report format {fmt!r}; choose from {', '.join(FORMATS)}")


def csv_bytes(frame: pd.DataFrame, covers: scope.Scope | None = None) -> bytes:
    """UTF-8 CSV of ``frame`` without the index, at full precision (timestamps keep their UTC
    offset), text cells guarded against formula injection (:func:`safe_text.csv_safe_frame`):
    the one writer of every CSV made from a DataFrame. With ``covers``, the first line states
    the scope (:func:`dashboard.scope.csv_scope_line`; read it back with ``skiprows=1``)."""
    body = safe_text.csv_safe_frame(frame).to_csv(index=False).encode("utf-8")
    return (scope.csv_scope_line(covers) if covers is not None else b"") + body


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
        "amount": book.add_format({"num_format": "#,##0.00####"}),
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
        unit = catalog.unit(column)  # shares and seconds by the column's unit
        if unit == "share":
            fmt = formats["rate"]
        elif unit == "seconds":
            fmt = formats["seconds"]
        elif unit == "amount":
            fmt = formats["amount"]
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


# --------------------------------------------------------------------------- a report file


class NoReceipts(LookupError):
    """The data directory holds no receipt files: there is nothing to report."""


class Unhonourable(ValueError):
    """``--strict``: the report was asked for values it cannot honour (``unhonoured``)."""

    def __init__(self, unhonoured) -> None:
        self.unhonoured = tuple(unhonoured)
        super().__init__("; ".join(u.text() for u in self.unhonoured))


@dataclass(frozen=True)
class WrittenReport:
    """What :func:`write_campaign_report` wrote: the file (None: a stream), its format, what
    it covers and the values it could not honour."""

    path: Path | None
    fmt: str
    messages: int
    campaigns: int
    unhonoured: tuple = ()


def report_filters(date_from: str | None = None, date_to: str | None = None, campaigns=(),
                   tz: str = "UTC", statuses=(), outcomes=(), labels=()) -> Filters:
    """Filters for the days ``date_from`` .. ``date_to`` (YYYY-MM-DD, inclusive, in ``tz``;
    None: open), ``campaigns``, ``statuses``, ``outcomes`` and ``labels`` (``KEY=VALUE``
    texts; none: all). ValueError with a message naming the option (``--from``, ``--to``,
    ``--label``, the zone, the outcome) when a value is invalid."""
    zone = queries.zone_info(tz)
    first = _parse_day(date_from, "--from")
    last = _parse_day(date_to, "--to")
    if first and last and last < first:
        raise ValueError(f"--to {last} is before --from {first}")
    start = datetime.combine(first, time(), tzinfo=zone) if first else None
    end = datetime.combine(last + timedelta(days=1), time(), tzinfo=zone) if last else None
    return Filters(start=start, end=end, campaigns=tuple(campaigns or ()), tz=tz, statuses=tuple(statuses or ()),
                   outcomes=tuple(outcomes or ()), labels=tuple(parse_label(text) for text in labels or ()))


def parse_label(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` as a pair (both trimmed); ValueError naming ``--label`` otherwise."""
    key, sep, value = str(text).partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--label {text!r} is not KEY=VALUE (e.g. --label team=retail)")
    return key.strip(), value.strip()


# Extensions people give report files, by the format they mean.
EXTENSION_FORMATS = {"csv": "csv", "xlsx": "xlsx", "xls": "xlsx", "json": "json"}


def output_format(output: str | Path, fmt: str | None = None) -> str:
    """``fmt`` if given, else the format of ``output``'s extension, else xlsx (csv for ``-``,
    standard output). ValueError when ``fmt`` contradicts the extension (``--format csv -o
    report.xlsx`` would write CSV text into a file Excel refuses)."""
    stdout = str(output) == "-"
    extension = "" if stdout else Path(output).suffix.lstrip(".").lower()
    implied = EXTENSION_FORMATS.get(extension)
    if fmt and implied and fmt != implied:
        raise ValueError(f"--format {fmt} contradicts the output file's extension .{extension} "
                         f"(which means {implied}); change one of them")
    return fmt or implied or ("csv" if stdout else "xlsx")


def report_path(output: str | Path, filters: Filters, fmt: str) -> Path:
    """``output``, or for a directory a file in it named by :func:`report_filename`."""
    output = Path(output)
    return output / report_filename(filters, "campaign-report", fmt) if output.is_dir() else output


def write_campaign_report(data_dir: str | Path, filters: Filters, fmt: str, output, *,
                          strict: bool = False, store: StoreChoice | None = None) -> WrittenReport:
    """Build the campaign report of ``data_dir`` for ``filters`` and write it as ``fmt`` to
    :func:`report_path` of ``output``, or to ``output`` itself when it is a binary file object
    (standard output).

    The values the data does not have (:func:`dashboard.scope.unknown_values`: a campaign
    name with no message) stay applied and are named in the report's scope and in
    :attr:`WrittenReport.unhonoured`; with ``strict`` they raise :class:`Unhonourable` before
    anything is written. ``store``: where the receipts are (default ``DLRLENS_STORE``, see
    :mod:`dlrlens.store.backends`). Raises :class:`NoReceipts` when there is no receipt file,
    OSError when the file cannot be written."""
    choice = store_choice() if store is None else store
    reader = open_store(data_dir, choice)
    try:
        if not reader.has_data():
            where = Path(data_dir).resolve() if choice.is_local else f"the receipts table of {choice}"
            raise NoReceipts(f"no receipt files under {where}")
        unhonoured = scope.unknown_values(reader, filters)
        if strict and unhonoured:
            raise Unhonourable(unhonoured)
        report = build_report(reader, filters, unhonoured)
    finally:
        reader.close()
    path = None if hasattr(output, "write") else report_path(output, filters, fmt)
    write_report(report, output if path is None else path, fmt, report_scope(filters, unhonoured))
    messages = int(report["Summary"].set_index("key").at["messages", "value"])
    return WrittenReport(path, fmt, messages, report["Campaigns"]["campaign"].nunique(), unhonoured)


def _parse_day(text: str | None, option: str) -> date | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{option} {text!r} is not a date (expected YYYY-MM-DD)") from None
