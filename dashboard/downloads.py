"""Tables with their download buttons, the campaign report and the message-level detail.

Downloads carry the exact values the queries returned (no rounding, no display formatting);
only the screen formats numbers (:func:`display_frame`).

Each file on offer is a :class:`Download` (label, file name, MIME type, a ``build()`` that
makes the bytes). :func:`table_downloads` and :func:`export_downloads` decide what is offered
and are plain functions, so tests check names and bytes without a browser;
:func:`show_table` and the ``*_buttons`` functions only place them on the page.

Buttons hand ``st.download_button`` the ``build`` callable, so a file is made only when
someone clicks (a rerun never pays for an Excel file nobody asked for). Streamlit runs it on
another thread; the session's :class:`~dashboard.queries.Store` serialises its queries, so it
may be used from there.

File names come from :func:`dashboard.report.report_filename` (view and date range), e.g.
``dlrlens-campaigns_2026-11-01_2026-11-05.csv``. Excel files are written by the report's
writer, so they carry the same number formats as ``dlrlens report``.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import queries, report, state
from dashboard.queries import Filters, Store

CSV_MIME = "text/csv"
EXCEL_MIME = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
PARQUET_MIME = "application/vnd.apache.parquet"
JSON_MIME = "application/json"
SHARE_COLUMNS = report.RATE_COLUMNS
SECONDS_COLUMNS = report.SECONDS_COLUMNS


# ---------------------------------------------------------------------------------------------
# Bytes
# ---------------------------------------------------------------------------------------------


def in_zone(frame: pd.DataFrame, tz: str) -> pd.DataFrame:
    """A copy with every tz-aware timestamp column converted to ``tz`` (same instants)."""
    converted = frame.copy()
    for column in converted.columns:
        if isinstance(converted[column].dtype, pd.DatetimeTZDtype):
            converted[column] = converted[column].dt.tz_convert(tz)
    return converted


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """UTF-8 CSV without the index, full precision; timestamps keep their UTC offset."""
    return frame.to_csv(index=False).encode("utf-8")


def excel_bytes(frame: pd.DataFrame, tz: str = state.DEFAULT_TZ, sheet: str = "data") -> bytes:
    """An .xlsx workbook with one sheet, written like the report (full-precision cells, shares
    formatted as percentages). Excel has no time zones: timestamps are wall-clock times in ``tz``."""
    sheet_name = re.sub(r"[\[\]:*?/\\]", "-", sheet)[:31] or "data"  # characters Excel refuses
    return report.report_bytes({sheet_name: in_zone(frame, tz)}, "xlsx")


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    """Parquet (types and time zones preserved)."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def detail_bytes(store: Store, f: Filters, extension: str) -> bytes:
    """One row per message matching ``f`` (:func:`queries.message_detail`) as csv or parquet."""
    frame = queries.message_detail(store, f)
    return parquet_bytes(frame) if extension == "parquet" else csv_bytes(frame)


def campaign_report_bytes(store: Store, f: Filters, fmt: str = "xlsx") -> bytes:
    """The campaign report for ``f`` (the same file ``dlrlens report`` writes)."""
    buffer = io.BytesIO()
    report.write_report(report.build_report(store, f), buffer, fmt)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Tables and buttons
# ---------------------------------------------------------------------------------------------


def column_label(column: str) -> str:
    """A column's heading on screen: the report's KPI label, else the name in words."""
    label = report.KPI_LABELS.get(column) or column.removesuffix("_s").replace("_", " ")
    return label.removesuffix(" (s)")[:1].upper() + label.removesuffix(" (s)")[1:]


def readable_seconds(seconds: pd.Series) -> pd.Series:
    """Seconds rounded for reading: 0.1 s under 10 s, whole seconds under 1 h, whole minutes above."""
    values = pd.to_numeric(seconds, errors="coerce").astype("float64")
    rounded = np.select([values < 10, values < 3600], [values.round(1), values.round(0)], (values / 60).round(0) * 60)
    return pd.Series(rounded, index=values.index)


def display_frame(frame: pd.DataFrame, tz: str) -> tuple[pd.DataFrame, dict]:
    """``frame`` ready for ``st.dataframe``: times in ``tz``, seconds as durations (sortable,
    shown as "1 min, 7 sec"), and a column config with labels, formats and KPI help."""
    shown = in_zone(frame, tz)
    config = {}
    for column in frame.columns:
        label, help_text = column_label(column), report.KPI_DEFINITIONS.get(column)
        if column in SHARE_COLUMNS:
            config[column] = st.column_config.NumberColumn(label, help=help_text, format="percent")
        elif column in SECONDS_COLUMNS:
            shown[column] = pd.to_timedelta(readable_seconds(shown[column]), unit="s")
            config[column] = st.column_config.NumberColumn(label, help=help_text, format="localized")
        else:
            config[column] = st.column_config.Column(label, help=help_text)
    return shown, config


def show_table(frame: pd.DataFrame, view: str, f: Filters, key: str | None = None,
               file_filters: Filters | None = None, **dataframe_args) -> None:
    """Show a query's table readably (labels, percentages, durations, times in the chosen zone)
    with its CSV and Excel buttons, which carry the exact values.

    ``view`` names the files; ``file_filters`` (default ``f``) gives their date range.
    """
    key = key or view
    shown, config = display_frame(frame, f.tz)
    config.update(dataframe_args.pop("column_config", {}))
    with st.container(key=f"table_{key}"):  # the table and its buttons, addressable by key
        st.dataframe(shown, hide_index=True, column_config=config, **dataframe_args)
        table_buttons(frame, view, file_filters or f, key)


@dataclass(frozen=True)
class Download:
    """One file offered for download; ``build`` makes its bytes (only when clicked)."""

    label: str
    file_name: str
    mime: str
    build: Callable[[], bytes]
    help: str | None = None
    icon: str = ":material/download:"

    @property
    def extension(self) -> str:
        return self.file_name.rsplit(".", 1)[-1]


def table_downloads(frame: pd.DataFrame, view: str, f: Filters) -> list[Download]:
    """The table behind a view as CSV and Excel, named after the view and ``f``'s date range."""
    return [
        Download("CSV", report.report_filename(f, view, "csv"), CSV_MIME, lambda: csv_bytes(frame),
                 "This table's exact values as CSV."),
        Download("Excel", report.report_filename(f, view, "xlsx"), EXCEL_MIME,
                 lambda: excel_bytes(frame, f.tz, view), "This table's exact values as an Excel workbook."),
    ]


def export_downloads(store: Store, f: Filters) -> list[Download]:
    """The campaign report (Excel, JSON) and the message-level detail (CSV, Parquet) for ``f``."""
    return [
        Download("Campaign report (Excel)", report.report_filename(f, "campaign-report", "xlsx"), EXCEL_MIME,
                 lambda: campaign_report_bytes(store, f, "xlsx"),
                 "Summary, KPI definitions, campaigns, failure reasons and daily trend: the same file "
                 "`dlrlens report` writes.", ":material/summarize:"),
        Download("Campaign report (JSON)", report.report_filename(f, "campaign-report", "json"), JSON_MIME,
                 lambda: campaign_report_bytes(store, f, "json"), "The same report as JSON.",
                 ":material/data_object:"),
        Download("Messages (CSV)", report.report_filename(f, "messages", "csv"), CSV_MIME,
                 lambda: detail_bytes(store, f, "csv"),
                 "One row per message matching the filters: campaign, outcome, reason, sent and delivered "
                 "times, time to deliver."),
        Download("Messages (Parquet)", report.report_filename(f, "messages", "parquet"), PARQUET_MIME,
                 lambda: detail_bytes(store, f, "parquet"), "The same rows as Parquet, with exact types."),
    ]


def buttons(downloads: list[Download], key: str, style: str = "secondary") -> None:
    """One row of download buttons, keyed ``download_<key>_<file extension>`` (unique per row)."""
    with st.container(horizontal=True, gap="small"):
        for item in downloads:
            st.download_button(item.label, item.build, file_name=item.file_name, mime=item.mime,
                               key=f"download_{key}_{item.extension}", help=item.help, icon=item.icon,
                               on_click="ignore", type=style)


def table_buttons(frame: pd.DataFrame, view: str, f: Filters, key: str | None = None) -> None:
    """CSV and Excel buttons for the table behind a view."""
    buttons(table_downloads(frame, view, f), key or view, style="tertiary")


def export_buttons(f: Filters, key: str = "export") -> None:
    """Campaign report and message-level detail buttons for ``f``."""
    buttons(export_downloads(state.store(), f), key)
