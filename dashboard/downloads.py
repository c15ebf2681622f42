"""Tables with their download buttons, the campaign report and the message-level detail.

Downloads carry the exact values the queries returned (no rounding, no display formatting);
only the screen formats numbers (:func:`display_frame`), with the same formatters as the KPI
cards (``charts.FORMATS``), so a value reads the same in a card and in a table.

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
writer, so they carry the same number formats as ``dlrlens report``. CSV text cells are
guarded against formula injection (:func:`dashboard.report.csv_bytes`).

**Links die with the session.** A clicked file is served at ``/media/<id>`` to anyone with the
link, without the dashboard's password. Streamlit deletes it after two later script runs of
any session (on an idle server: never), and drops a closed tab's session, kept for a
reconnect, without any clean-up. :func:`expire_session_files` deletes the files at once; the
sign-out calls it, and :func:`expire_files_with_session` has Streamlit call it when the
session's browser disconnects (a closed tab, a reload, a lost network).
"""

from __future__ import annotations

import gzip
import io
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlencode

import pandas as pd
import streamlit as st
from streamlit import runtime
from streamlit.runtime.scriptrunner import get_script_run_ctx

from dashboard import catalog, charts, queries, report, scope, state
from dashboard.queries import Filters, Store

CSV_MIME = "text/csv"
EXCEL_MIME = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
PARQUET_MIME = "application/vnd.apache.parquet"
JSON_MIME = "application/json"
# Tables up to this many cells show text formatted like the cards over their exact numbers
# (a pandas Styler: sorting still goes by the number). A Styler costs ~0.3 s for 20,000 cells on every
# run, so larger tables (every measured message, a big lookup) get Streamlit's number formats.
STYLED_CELLS_LIMIT = 20_000
# Number formats of those larger tables, computed by the browser: close to the cards (shares
# get two decimals: the format's one-decimal precision truncates, 6.896 % would read 6.8 %).
FALLBACK_FORMATS = {"share": "percent", "seconds": "%.1f s", "count": "localized", "number": "%.2f"}
MISSING = "—"  # a missing value on screen, as on the cards (charts.format_*)
TIMESTAMP_FORMAT = "YYYY-MM-DD HH:mm:ssZ"  # momentJS: 2026-11-27 14:22:02+00:00
TIMESTAMP_FORMAT_MS = "YYYY-MM-DD HH:mm:ss.SSSZ"  # the lookup's receipts: order within a second matters
# The grid sizes a column from its first ~10 rows, once, when the table first appears, and
# keeps that width while rows change (drilling into a second campaign cut the new, longer
# texts). So styled tables get widths computed here from every cell's text, in pixels of the
# grid's font (Source Sans 14 px, as measured in Chromium) for ' ' .. '~'; other characters
# ("—", accents, CJK) count as an em.
GLYPH_PX = (
    2.8, 4.05, 5.96, 6.96, 6.96, 11.54, 8.53, 3.49, 4.24, 4.24, 5.85, 6.96, 3.49, 4.35, 3.49, 4.9,
    6.96, 6.96, 6.96, 6.96, 6.96, 6.96, 6.96, 6.96, 6.96, 6.96, 3.49, 3.49, 6.96, 6.96, 6.96, 5.95,
    11.86, 7.6, 8.23, 7.99, 8.61, 7.38, 6.92, 8.64, 9.13, 3.68, 6.71, 8.11, 6.8, 10.18, 9.06, 9.3,
    7.92, 9.3, 7.97, 7.48, 7.5, 9.03, 7.21, 11, 7.18, 6.66, 7.55, 4.24, 4.9, 4.24, 6.96, 7,
    7.59, 7.06, 7.74, 6.38, 7.77, 6.94, 4.09, 7.06, 7.62, 3.44, 3.46, 6.93, 3.57, 11.61, 7.66, 7.59,
    7.77, 7.77, 4.86, 5.87, 4.73, 7.62, 6.54, 10.07, 6.24, 6.54, 5.95, 4.24, 3.37, 4.24, 6.96,
)
EM_PX = 14.0
CELL_PADDING_PX = 20  # the grid's 8 px each side, and slack for rounding
HEADER_EXTRA_PX = 4  # a sorted column's arrow may cover the end of a long heading
MAX_COLUMN_PX = 600  # wider texts are cut (a status meaning is ~490 px)
# kpis_with_change: one row per KPI (``metric``); these columns hold that KPI's unit.
METRIC_VALUE_COLUMNS = ("value", "previous")
METRIC_CHANGE_COLUMNS = ("change",)


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


# UTF-8 CSV without the index, full precision, timestamps with their UTC offset, text cells
# guarded against formula injection: the report's writer, so every CSV is written one way.
csv_bytes = report.csv_bytes


def excel_bytes(frame: pd.DataFrame, tz: str = state.DEFAULT_TZ, sheet: str = "data",
                covers: scope.Scope | None = None) -> bytes:
    """An .xlsx workbook with the table's sheet, written like the report (full-precision cells, shares
    formatted as percentages), and with ``covers`` a second sheet, "Scope", stating what it
    covers (:meth:`dashboard.scope.Scope.rows`). Excel has no time zones: timestamps are
    wall-clock times in ``tz``."""
    # Characters Excel refuses, and an apostrophe at either end (a looked-up term names the sheet).
    sheet_name = re.sub(r"[\[\]:*?/\\]", "-", sheet)[:31].strip("'") or "data"
    if sheet_name.lower() == SCOPE_SHEET.lower():
        sheet_name = "data"
    sheets = {sheet_name: in_zone(frame, tz)}
    if covers is not None:
        sheets[SCOPE_SHEET] = pd.DataFrame(covers.rows(), columns=["item", "key", "value"])
    return report.report_bytes(sheets, "xlsx")


SCOPE_SHEET = "Scope"


# The Parquet key-value metadata key holding a file's scope (Scope.as_dict() as JSON).
PARQUET_SCOPE_KEY = "dlrlens_scope"


def parquet_scope(covers: scope.Scope) -> dict[str, str]:
    """The key-value metadata that states ``covers`` in a Parquet file."""
    return {PARQUET_SCOPE_KEY: json.dumps(covers.as_dict(), ensure_ascii=False)}


def parquet_bytes(frame: pd.DataFrame, covers: scope.Scope | None = None) -> bytes:
    """Parquet (types and time zones preserved); with ``covers``, the scope in the file's
    key-value metadata (:data:`PARQUET_SCOPE_KEY`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    if covers is not None:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               **{k.encode(): v.encode() for k, v in parquet_scope(covers).items()}})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def detail_bytes(store: Store, f: Filters, extension: str, covers: scope.Scope | None = None) -> bytes:
    """One row per message matching ``f`` (:func:`queries.message_detail`) as csv (its first
    line the scope, ``covers``, default that of ``f``) or parquet."""
    frame = queries.message_detail(store, f)
    covers = covers or scope.describe(f)
    return parquet_bytes(frame, covers) if extension == "parquet" else csv_bytes(frame, covers)


def scoped_csv(data: bytes, fmt: str, covers: scope.Scope) -> bytes:
    """A CSV written elsewhere (DuckDB) with the scope line first; ``csv.gz``: a gzip member
    of its own in front (concatenated members are one valid gzip stream)."""
    line = scope.csv_scope_line(covers)
    return gzip.compress(line) + data if fmt == "csv.gz" else line + data


def campaign_report_bytes(store: Store, f: Filters, fmt: str = "xlsx", covers: scope.Scope | None = None) -> bytes:
    """The campaign report for ``f`` (the same file ``dlrlens report`` writes), stating
    ``covers`` (default: the scope of ``f``, with the campaigns and labels the data lacks)."""
    covers = covers or scope.describe(f, scope.unknown_values(store, f))
    buffer = io.BytesIO()
    report.write_report(report.build_report(store, f, covers.unhonoured), buffer, fmt, covers)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Tables and buttons
# ---------------------------------------------------------------------------------------------


def column_label(column: str) -> str:
    """A column's heading on screen: the KPI's label (:mod:`dashboard.catalog`), else the name in words."""
    label = catalog.label(column) or column.removesuffix("_s").replace("_", " ")
    return label.removesuffix(" (s)")[:1].upper() + label.removesuffix(" (s)")[1:]


def unit_of(name: str) -> str:
    """The unit of a KPI or column by name (:func:`dashboard.catalog.unit`): "share" (0..1),
    "seconds", else "count"."""
    return catalog.unit(name) or "count"


def format_value(name: str, value) -> str:
    """A KPI's value as its card shows it (and its table cell): by the unit of ``name``."""
    return charts.FORMATS[unit_of(name)](value)


def column_unit(column: str, values: pd.Series) -> str | None:
    """How a column's numbers read on screen: "share", "seconds", "count" (whole numbers, also
    when stored as floats because some are missing), "number"; None for anything else."""
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        return None
    if catalog.unit(column) in ("share", "seconds"):
        return catalog.unit(column)
    present = pd.to_numeric(values, errors="coerce").dropna()
    if pd.api.types.is_integer_dtype(values) or (present == present.round()).all():
        return "count"
    return "number"


def cell_formats(frame: pd.DataFrame) -> list[tuple[Callable, object]]:
    """``(formatter, cells)`` pairs that make ``frame``'s numbers read like the cards (cells as
    a ``.loc`` / Styler subset; a later pair overrides an earlier one):
    one per numeric column, by :func:`column_unit`; in a KPI table (a ``metric`` column, as
    ``queries.kpis_with_change`` returns), value and change cells by their row's KPI."""
    formats: list[tuple[Callable, object]] = []
    for column in frame.columns:
        unit = column_unit(column, frame[column])
        if unit:
            formats.append((charts.FORMATS[unit], pd.IndexSlice[:, [column]]))
    if "metric" in frame and frame.index.is_unique:
        for unit in ("count", "share", "seconds"):
            rows = frame.index[frame["metric"].map(unit_of) == unit]
            values = [c for c in METRIC_VALUE_COLUMNS if c in frame]
            changes = [c for c in METRIC_CHANGE_COLUMNS if c in frame]
            if len(rows) and values:
                formats.append((charts.FORMATS[unit], pd.IndexSlice[rows, values]))
            if len(rows) and changes:
                formats.append((lambda v, unit=unit: charts.format_change(v, unit) or MISSING,
                                pd.IndexSlice[rows, changes]))
        if "relative_change" in frame:
            formats.append((charts.format_relative_change, pd.IndexSlice[:, ["relative_change"]]))
    return formats


def is_timestamp(values: pd.Series) -> bool:
    return isinstance(values.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(values)


def timestamp_text(moments: pd.Series, milliseconds: bool = False) -> pd.Series:
    """Timestamps as :data:`TIMESTAMP_FORMAT` shows them: ``2026-11-27 14:22:02+00:00``
    (with ``milliseconds``, :data:`TIMESTAMP_FORMAT_MS`: ``2026-11-27 14:22:02.125+00:00``)."""
    pattern = "%Y-%m-%d %H:%M:%S.%f%z" if milliseconds else "%Y-%m-%d %H:%M:%S%z"
    text = moments.dt.strftime(pattern).str.replace(r"([+-]\d\d)(\d\d)$", r"\1:\2", regex=True)
    if milliseconds:
        text = text.str.replace(r"(\.\d{3})\d{3}", r"\1", regex=True)
    return text.where(moments.notna(), MISSING).astype(str)


def text_px(text: str) -> float:
    """The width of ``text`` in the grid's font, in pixels (see :data:`GLYPH_PX`)."""
    return sum(GLYPH_PX[ord(c) - 32] if 32 <= ord(c) < 127 else EM_PX for c in text)


def column_widths(text: pd.DataFrame, labels: dict[str, str] | None = None) -> dict[str, int]:
    """Pixel widths that show every cell of ``text`` (:func:`display_text`) and its heading
    (``labels[column]``, else the column name) whole, up to :data:`MAX_COLUMN_PX`."""
    widths = {}
    for column in text.columns:
        heading = (labels or {}).get(column, str(column))
        # The widest text is among the longest; measuring only those keeps big tables cheap.
        values = pd.Series(text[column].unique(), dtype=object)
        longest = values[values.str.len().sort_values(ascending=False).index[:20]]
        cells = max((text_px(v) for v in longest), default=0.0)
        wanted = max(cells + CELL_PADDING_PX, text_px(heading) + CELL_PADDING_PX + HEADER_EXTRA_PX)
        widths[column] = int(min(MAX_COLUMN_PX, math.ceil(wanted)))
    return widths


def display_text(frame: pd.DataFrame, milliseconds: bool = False) -> pd.DataFrame:
    """Every cell of ``frame`` as text, formatted as :func:`display_frame`'s styled table shows
    it (missing values "—"); ``frame`` as shown, i.e. already in the chosen zone."""
    text = frame.astype(object).where(frame.notna(), MISSING).astype(str)
    for column in frame.columns:
        if is_timestamp(frame[column]):
            text[column] = timestamp_text(frame[column], milliseconds)
    for formatter, subset in cell_formats(frame):
        part = frame.loc[subset]
        text.loc[part.index, part.columns] = part.map(lambda value, fmt=formatter: fmt(value) or MISSING)
    return text


def lookup_link(message_id) -> str:
    """The Message lookup page's address for one message (relative: the app may sit behind a
    path prefix)."""
    return "lookup?" + urlencode({"id": str(message_id)})


# display_frame(links=...): the column whose cells open the Message lookup, and the pattern
# that shows the id itself as the link's text.
LOOKUP_LINK_TEXT = r"lookup\?id=(.*)"


def display_frame(frame: pd.DataFrame, tz: str, milliseconds: bool = False, links: tuple[str, ...] = ()):
    """``frame`` ready for ``st.dataframe``, and its column config (labels, KPI help, formats).

    Times are shown in ``tz``. Numbers read as the cards print them
    (``89.3%``, ``3.5 s``, ``1 min 5 s``, ``1,234``): a pandas Styler puts that text over the
    exact numbers, so a click on a heading still sorts by number, and the columns are sized
    to the text. Tables over :data:`STYLED_CELLS_LIMIT` cells get :data:`FALLBACK_FORMATS`
    instead. Returns ``(DataFrame or Styler, column config)``. ``milliseconds``: times show
    them. ``links``: message-id columns whose cells link to the Message lookup (on screen only:
    the downloads keep the ids).
    """
    shown = in_zone(frame, tz).reset_index(drop=True)
    styled = shown.size <= STYLED_CELLS_LIMIT
    labels = {column: column_label(column) for column in shown.columns}
    widths = column_widths(display_text(shown, milliseconds), labels) if styled else {}
    links = [c for c in links if c in shown]
    for column in links:
        shown[column] = shown[column].map(lambda v: lookup_link(v) if pd.notna(v) else None)
    config = {}
    for column in shown.columns:
        label, help_text, width = labels[column], catalog.definition(column), widths.get(column)
        if help_text:  # the key the downloads and the report head this column with
            help_text = f"{help_text} (`{column}` in the downloads and `dlrlens report`.)"
        unit = column_unit(column, shown[column])
        if column in links:
            config[column] = st.column_config.LinkColumn(label, help="Opens the message's lookup.", width=width,
                                                         display_text=LOOKUP_LINK_TEXT)
        elif is_timestamp(shown[column]):
            config[column] = st.column_config.DatetimeColumn(
                label, help=help_text, width=width, format=TIMESTAMP_FORMAT_MS if milliseconds else TIMESTAMP_FORMAT)
        elif unit:
            config[column] = st.column_config.NumberColumn(
                label, help=help_text, width=width, format=None if styled else FALLBACK_FORMATS[unit])
        else:
            config[column] = st.column_config.Column(label, help=help_text, width=width)
    if not styled:
        return shown, config
    styler = shown.style.format(na_rep=MISSING)
    for formatter, subset in cell_formats(shown):
        styler = styler.format(formatter, subset=subset, na_rep=MISSING)
    for column in shown.columns:
        if is_timestamp(shown[column]):
            # As the widths were measured (the grid's own format would apply to a plain frame only).
            text = dict(zip(shown[column], timestamp_text(shown[column], milliseconds)))
            styler = styler.format(lambda v, text=text: text.get(v, MISSING), subset=[column], na_rep=MISSING)
    return styler, config


def show_table(frame: pd.DataFrame, view: str, f: Filters, key: str | None = None,
               file_filters: Filters | None = None, files: list["Download"] | None = None,
               milliseconds: bool = False, links: tuple[str, ...] = (), **dataframe_args) -> None:
    """Show a query's table readably (labels, percentages, durations, times in the chosen zone)
    with its CSV and Excel buttons, which carry the exact values.

    ``view`` names the files; ``file_filters`` (default ``f``) gives their date range.
    ``files``: other files to offer instead (a table showing part of the rows offers all).
    """
    key = key or view
    covers = state.scope_of(file_filters or f, sidebar_applies=file_filters is None)
    shown, config = display_frame(frame, f.tz, milliseconds, links)
    config.update(dataframe_args.pop("column_config", {}))
    with st.container(key=f"table_{key}"):  # the table and its buttons, addressable by key
        st.dataframe(shown, hide_index=True, column_config=config, placeholder=MISSING, **dataframe_args)
        buttons(files if files is not None else table_downloads(frame, view, file_filters or f, covers), key,
                style="tertiary")


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


def table_downloads(frame: pd.DataFrame, view: str, f: Filters, covers: scope.Scope | None = None) -> list[Download]:
    """The table behind a view as CSV and Excel, named after the view and ``f``'s date range,
    each stating ``covers`` (default: the scope of ``f``): the CSV's first line, the workbook's
    Scope sheet."""
    covers = covers or scope.describe(f)
    return [
        Download("CSV", report.report_filename(f, view, "csv"), CSV_MIME, lambda: csv_bytes(frame, covers),
                 "This table's exact values as CSV; its first line states the period and filters."),
        Download("Excel", report.report_filename(f, view, "xlsx"), EXCEL_MIME,
                 lambda: excel_bytes(frame, f.tz, view, covers),
                 "This table's exact values as an Excel workbook; its Scope sheet states the period and filters."),
    ]


GZIP_CSV_ABOVE_ROWS = 1_000_000  # ~100 MB of CSV: above it the file is offered gzip-compressed


def latency_downloads(store: Store, f: Filters, measured: int, covers: scope.Scope | None = None) -> list[Download]:
    """Every measured message matching ``f`` (``measured`` of them) as CSV and Parquet,
    written by :func:`queries.latencies_file` when clicked. No Excel: a sheet holds at most
    1,048,576 rows, and a month at scale has millions. Above :data:`GZIP_CSV_ABOVE_ROWS` the
    CSV comes gzip-compressed (same rows, ~5x smaller), because the file is held in memory
    while it is served and millions of CSV rows are gigabytes. The CSV's first line states
    ``covers`` (default: the scope of ``f``)."""
    covers = covers or scope.describe(f)
    rows = f"All {charts.format_count(measured)} measured messages"
    csv_format, csv_mime, csv_note = "csv", CSV_MIME, ""
    if measured > GZIP_CSV_ABOVE_ROWS:
        csv_format, csv_mime, csv_note = "csv.gz", "application/gzip", " gzip-compressed (too many rows for plain text)"
    return [
        Download("CSV", report.report_filename(f, "latencies", csv_format), csv_mime,
                 lambda: scoped_csv(queries.latencies_file(store, f, csv_format), csv_format, covers),
                 f"{rows} as CSV{csv_note}, by campaign and time to deliver; times in the chosen zone."),
        Download("Parquet", report.report_filename(f, "latencies", "parquet"), PARQUET_MIME,
                 lambda: queries.latencies_file(store, f, "parquet", parquet_scope(covers)),
                 f"{rows} as Parquet, with exact types (much smaller than the CSV)."),
    ]


def export_downloads(store: Store, f: Filters, covers: scope.Scope | None = None) -> list[Download]:
    """The campaign report (Excel, JSON) and the message-level detail (CSV, Parquet) for ``f``,
    stating ``covers`` (default: see :func:`campaign_report_bytes`)."""
    return [
        Download("Campaign report (Excel)", report.report_filename(f, "campaign-report", "xlsx"), EXCEL_MIME,
                 lambda: campaign_report_bytes(store, f, "xlsx", covers),
                 "Summary, KPI definitions, campaigns, failure reasons and daily trend: the same file "
                 "`dlrlens report` writes.", ":material/summarize:"),
        Download("Campaign report (JSON)", report.report_filename(f, "campaign-report", "json"), JSON_MIME,
                 lambda: campaign_report_bytes(store, f, "json", covers), "The same report as JSON.",
                 ":material/data_object:"),
        Download("Messages (CSV)", report.report_filename(f, "messages", "csv"), CSV_MIME,
                 lambda: detail_bytes(store, f, "csv", covers),
                 "One row per message matching the filters: campaign, outcome, reason, sent and delivered "
                 "times, time to deliver."),
        Download("Messages (Parquet)", report.report_filename(f, "messages", "parquet"), PARQUET_MIME,
                 lambda: detail_bytes(store, f, "parquet", covers),
                 "The same rows as Parquet, with exact types; the scope in its metadata."),
    ]


def buttons(downloads: list[Download], key: str, style: str = "secondary") -> None:
    """One row of download buttons, keyed ``download_<key>_<file extension>`` (unique per row)."""
    with st.container(horizontal=True, gap="small"):
        for item in downloads:
            st.download_button(item.label, item.build, file_name=item.file_name, mime=item.mime,
                               key=f"download_{key}_{item.extension}", help=item.help, icon=item.icon,
                               on_click="ignore", type=style)


class _SessionEnd:
    """Held in a session-scoped resource cache, released when the session's browser disconnects."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id


def expire_session_files(session_id: str) -> None:
    """Make the download links of session ``session_id`` answer 404 now.

    Streamlit keeps a clicked download referenced by no session (so a second click builds it
    again) and deletes unreferenced files on the second sweep after they appear (the first
    only marks them, so the browser can still fetch the file); a sweep runs at the end of
    every script run. Two sweeps right away end this session's files, and also any other
    session's download made since the last two sweeps: a click whose fetch has not started
    yet fails and is repeated. A rare retry, against links that outlive their sign-in.
    """
    if not runtime.exists():  # a plain test run without Streamlit's server
        return
    manager = runtime.get_instance().media_file_mgr
    manager.clear_session_refs(session_id)
    manager.remove_orphaned_files()
    manager.remove_orphaned_files()


@st.cache_resource(scope="session", show_spinner=False,
                   on_release=lambda end: expire_session_files(end.session_id))
def _session_end(session_id: str) -> _SessionEnd:
    return _SessionEnd(session_id)


def expire_files_with_session() -> None:
    """Have this session's download links expire when its browser disconnects: Streamlit
    releases session-scoped resources then (a disconnected session kept for a reconnect
    keeps none; a reconnect's next run registers again). Call on every run."""
    ctx = get_script_run_ctx()
    if ctx is not None:
        _session_end(ctx.session_id)


def export_buttons(f: Filters, key: str = "export") -> None:
    """Campaign report and message-level detail buttons for ``f``, stating its scope."""
    buttons(export_downloads(state.store(), f, state.scope_of(f)), key)
