"""Hostile stored strings: shown as text on screen, written as data in files.

Anyone who knows the webhook URL chooses campaign names, URL labels, clientReference, batch
and message ids and (unknown) statuses. These tests store such strings and check each place
they come out:

* the helpers of ``dashboard/safe_text.py``, with hypothesis (Markdown rendered by
  markdown-it, the CSV rule in Python and in DuckDB SQL agreeing);
* every CSV the product writes (table downloads, message detail, the latency files DuckDB
  writes, ``dlrlens report``): formula-like text guarded with a quote, numbers untouched;
  Excel files hold no formula;
* every Plotly figure and every Markdown element of every page (AppTest);
* a real dashboard in Debian's Chromium: no image fetched from a tracking server, no link to
  the attacker's site (Plotly's SVG included), the names visible as typed.
"""

from __future__ import annotations

import csv
import gzip
import html
import io
import re
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
import openpyxl
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt
from streamlit.testing.v1 import AppTest

from dashboard import charts, downloads, queries, report, safe_text
from dashboard.queries import Filters, Store
from dashboard.safe_text import csv_cell, md_text, plotly_text
from dlrlens.cli import main as dlrlens_main
from tests.support.browser import CHROMIUM, MISSING, PAGE_TIMEOUT_S, fresh_page, open_options, poll
from tests.support.factory import message, write_receipts

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
ALL = Filters()

FORMULA = '=HYPERLINK("http://evil","x")'
DDE = "=cmd|' /C calc'!A0"
LINK = "[t](http://evil)"
ANCHOR = '<a href="http://evil">x</a>'
IMG_TAG = "<img src=x onerror=alert(1)>"
UNKNOWN_STATUS = "=CMD|' /C CALC'!A0"  # the collector stores an unknown status upper-cased
NUMERIC_LOOKING_ID = "-42"  # a text id that a spreadsheet would read as a number, then a formula


def image(port: int) -> str:
    """A campaign name that, rendered as Markdown, makes every viewer fetch a tracking pixel."""
    return f"![i](http://127.0.0.1:{port}/p.png)"


def hostile_names(port: int) -> list[str]:
    """The campaigns the browser drills into (at most 4 can be compared at once)."""
    return [image(port), LINK, ANCHOR, IMG_TAG]


def hostile_rows(names: list[str], sent: datetime) -> list[dict]:
    """Per campaign one delivered (with a time to deliver), one failed, one unknown (a hostile
    status) and one pending message; ids, references and labels hostile too."""
    rows = []
    for i, name in enumerate(names):
        common = dict(campaign=name, batch_id=f"+{name}", client_reference=name, labels={"note": name})
        delivered_id = NUMERIC_LOOKING_ID if i == 0 else f"@D{i}"
        rows += message(delivered_id, sent, [("ACCEPTED", 0), ("DELIVERED", 5 + i)], **common)
        rows += message(f"@F{i}", sent, [("ACCEPTED", 0), ("UNDELIVERABLE", 20)], **common)
        rows += message(f"@U{i}", sent, [("ACCEPTED", 0), (UNKNOWN_STATUS, 30)], **common)
        rows += message(f"@P{i}", sent, [("ACCEPTED", 0)], **common)
    return rows


FILE_NAMES = hostile_names(9) + [FORMULA, DDE]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile") / "data"
    write_receipts(root, hostile_rows(FILE_NAMES, datetime.now(timezone.utc) - timedelta(hours=1)))
    return root


@pytest.fixture(scope="module")
def store(data_dir):
    with Store(data_dir) as s:
        yield s


# --------------------------------------------------------------------------- helpers: Markdown

MARKDOWN = MarkdownIt("commonmark", {"html": True})
PUNCTUATION = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
# Everything a stored string may hold: any character but surrogates and NUL (which CommonMark
# replaces); line breaks included.
ANY_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=60)
# Text made of Markdown and HTML syntax, so the interesting cases come up often.
MARKUP_TEXT = st.lists(st.sampled_from(list("[]()!<>/:.@`*_#~$&|\\=-+ \n\tah")
                                       + ["http://", "www.", "<a href=", "![i](", "&lt;", ":red[", "    "]),
                       max_size=20).map("".join)


# What Streamlit's Markdown (remark-gfm, remark-emoji) finds in rendered text and turns into
# links or pictures (their JavaScript patterns; \w is ASCII there).
TEXT_AUTOLINK = re.compile(r"(https?://|www(?=\.))[-.\w]+|[-.\w+]+@[-\w]+(?:\.[-\w]+)+|:[\w+-]+:",
                           re.IGNORECASE | re.ASCII)


def visible(text: str) -> str:
    """``text`` as a reader sees it (without md_text's invisible word joiners)."""
    return text.replace(safe_text.WORD_JOINER, "")


def rendered_text(markdown: str) -> str:
    """The visible text of ``markdown`` rendered as CommonMark, asserting it made nothing but
    paragraphs or a code block (no link, image, HTML, emphasis, heading, list ...)."""
    rendered = MARKDOWN.render(markdown)
    tags = set(re.findall(r"</?([a-zA-Z0-9]+)", rendered))
    assert tags <= {"p", "pre", "code"}, (markdown, rendered)
    return html.unescape(re.sub(r"<[^>]*>", "", rendered)).strip("\n")


def unescaped_punctuation(markdown: str) -> list[str]:
    """ASCII punctuation characters in ``markdown`` without a backslash in front."""
    found, escaped = [], False
    for char in markdown:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in PUNCTUATION:
            found.append(char)
    return found


@given(ANY_TEXT | MARKUP_TEXT)
@settings(max_examples=300, deadline=None)
def test_md_text_renders_as_exactly_its_text(text):
    shown = md_text(text)
    assert not unescaped_punctuation(shown), "no link, image, tag or directive can start"
    assert "\n" not in shown and "\r" not in shown
    one_line = re.sub(r"[\r\n\u2028\u2029\x0b\x0c\x85]+", " ", text)
    rendered = rendered_text(shown)
    assert visible(rendered).split() == visible(one_line).split()
    assert not TEXT_AUTOLINK.search(rendered), "no bare URL, e-mail or emoji code left for Streamlit to link"


def test_md_text_neutralises_the_known_attacks():
    for attack in (image(1), LINK, ANCHOR, IMG_TAG, "<http://evil>", "http://evil", "www.evil.com", "a@evil.com",
                   ":red[x] :material/home:", ":smile:", "$x^2$", "# heading", "**bold**"):
        shown = md_text(attack)
        assert "](" not in shown and "<" not in shown.replace("\\<", "") and "://" not in shown, shown
        assert visible(rendered_text(shown)) == attack
        assert not TEXT_AUTOLINK.search(rendered_text(shown)), attack
    assert TEXT_AUTOLINK.search("see http://evil, a@evil.com or :smile:"), "the check can fail"
    assert md_text(None) == "" and md_text(12) == "12"


@given(ANY_TEXT | MARKUP_TEXT)
@settings(max_examples=300, deadline=None)
def test_plotly_text_has_no_tag_and_shows_the_text(text):
    shown = plotly_text(text)
    assert "<" not in shown and ">" not in shown
    assert html.unescape(shown) == text


# --------------------------------------------------------------------------- helpers: CSV


@given(ANY_TEXT | MARKUP_TEXT)
@settings(max_examples=300, deadline=None)
def test_csv_cell_never_starts_a_formula_and_keeps_the_text(text):
    cell = csv_cell(text)
    assert not cell.startswith(safe_text.FORMULA_PREFIXES)
    assert cell == text or (cell == "'" + text and text.startswith(safe_text.FORMULA_PREFIXES))


def test_csv_cell_leaves_non_text_alone():
    for value in (-1, -2.5, 0, None, float("nan"), pd.Timestamp("2026-01-01", tz="UTC"), True):
        assert csv_cell(value) is value


SQL_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)


@given(st.lists(st.none() | SQL_TEXT | MARKUP_TEXT, min_size=1, max_size=8))
@settings(max_examples=100, deadline=None)
def test_the_sql_rule_is_the_python_rule(values):
    con = duckdb.connect()
    try:
        frame = pd.DataFrame({"c": pd.Series(values, dtype=object), "n": range(len(values))})
        con.register("t", frame)
        sql = safe_text.csv_safe_select("SELECT c, n FROM t ORDER BY n", ["c"])
        got = con.execute(sql).fetchall()
    finally:
        con.close()
    assert [c for c, _ in got] == [csv_cell(v) for v in values]
    assert [n for _, n in got] == list(range(len(values))), "rows keep their order"


def test_csv_safe_frame_guards_text_cells_only():
    frame = pd.DataFrame({"campaign": ["-5", "=1+1", "ok", None, "@x"], "change": [-5, -1.5, 2.0, None, -0.0],
                          "count": [-3, 1, 2, 3, 4], "mixed": ["+1", -7, "a", None, "\tb"]})
    back = list(csv.reader(io.StringIO(report.csv_bytes(frame).decode("utf-8"))))
    assert back[0] == ["campaign", "change", "count", "mixed"]
    assert [row[0] for row in back[1:]] == ["'-5", "'=1+1", "ok", "", "'@x"]
    assert [row[1] for row in back[1:]] == ["-5.0", "-1.5", "2.0", "", "-0.0"], "numbers stay numbers"
    assert [row[2] for row in back[1:]] == ["-3", "1", "2", "3", "4"]
    assert [row[3] for row in back[1:]] == ["'+1", "-7", "a", "", "'\tb"], "numbers in a text column too"
    numbers = frame[["change", "count"]]
    assert safe_text.csv_safe_frame(numbers) is numbers, "nothing to guard: no copy"


# --------------------------------------------------------------------------- files


def csv_rows(data: bytes) -> list[dict[str, str]]:
    """The rows of a CSV download; its first line, the scope, must be ONE cell starting with
    ``#`` (no part of it a cell of its own that a spreadsheet could evaluate)."""
    text = data.decode("utf-8")
    if text.startswith(('"# dlrlens scope', "# dlrlens scope")):
        first, text = text.split("\n", 1)
        [cell] = next(csv.reader([first]))
        assert cell.startswith("# dlrlens scope: ")
    return list(csv.DictReader(io.StringIO(text)))


def assert_no_formula_cells(rows: list[dict[str, str]]) -> None:
    """No cell starts like a formula unless it is a number (a negative number in a numeric
    column); the guarded hostile values are checked by each test."""
    for row in rows:
        for column, cell in row.items():
            if cell.startswith(safe_text.FORMULA_PREFIXES):
                float(cell)  # raises for text: an unguarded formula


def guarded(values) -> set[str]:
    return {csv_cell(v) for v in values}


def test_table_downloads_guard_every_text_cell(store):
    campaigns = queries.campaigns(store, ALL)
    assert set(campaigns["campaign"]) == set(FILE_NAMES)
    files = {d.label: d for d in downloads.table_downloads(campaigns, "campaigns", ALL)}
    rows = csv_rows(files["CSV"].build())
    assert_no_formula_cells(rows)
    assert {row["campaign"] for row in rows} == guarded(FILE_NAMES)
    assert "'" + FORMULA in {row["campaign"] for row in rows}
    assert [int(row["messages"]) for row in rows] == campaigns["messages"].tolist(), "numbers stay numbers"

    found = queries.message_lookup(store, LINK, 100, "UTC")
    rows = csv_rows(downloads.table_downloads(found, "receipts", ALL)[0].build())
    assert_no_formula_cells(rows)
    assert {row["batch_id"] for row in rows} == {"'+" + LINK}
    assert {row["status"] for row in rows} >= {"'" + UNKNOWN_STATUS, "DELIVERED"}


def test_message_detail_csv_guards_ids_references_and_statuses(store):
    files = {d.label: d for d in downloads.export_downloads(store, ALL)}
    rows = csv_rows(files["Messages (CSV)"].build())
    assert_no_formula_cells(rows)
    assert len(rows) == 4 * len(FILE_NAMES)
    assert {row["client_reference"] for row in rows} == guarded(FILE_NAMES)
    assert "'" + NUMERIC_LOOKING_ID in {row["delivery_message_id"] for row in rows}
    assert "'" + UNKNOWN_STATUS in {row["reason"] for row in rows} | {row["last_status"] for row in rows}


@pytest.mark.parametrize("fmt", ["csv", "csv.gz"])
def test_latency_files_written_by_duckdb_guard_text_cells(store, fmt):
    measured = queries.latencies(store, ALL)
    files = {d.extension: d for d in downloads.latency_downloads(store, ALL, len(measured))}
    data = files["csv"].build() if fmt == "csv" else gzip.decompress(queries.latencies_file(store, ALL, "csv.gz"))
    rows = csv_rows(data)
    assert_no_formula_cells(rows)
    assert [row["campaign"] for row in rows] == [csv_cell(c) for c in measured["campaign"]], "same rows, same order"
    assert [row["delivery_message_id"] for row in rows] == [csv_cell(m) for m in measured["delivery_message_id"]]
    assert [float(row["latency_s"]) for row in rows] == measured["latency_s"].tolist()
    assert "'" + NUMERIC_LOOKING_ID in {row["delivery_message_id"] for row in rows}


def test_report_csv_from_the_cli_guards_campaigns(data_dir, tmp_path, capsys):
    out = tmp_path / "report.csv"
    assert dlrlens_main(["report", "--data", str(data_dir), "--output", str(out)]) == 0
    rows = csv_rows(out.read_bytes())
    assert_no_formula_cells(rows)
    assert {row["campaign"] for row in rows} == guarded(FILE_NAMES)
    assert sum(int(row["messages"]) for row in rows) == 4 * len(FILE_NAMES)


def formula_cells(workbook_bytes_or_path) -> list[str]:
    source = io.BytesIO(workbook_bytes_or_path) if isinstance(workbook_bytes_or_path, bytes) else workbook_bytes_or_path
    book = openpyxl.load_workbook(source)
    return [f"{sheet.title}!{cell.coordinate}" for sheet in book for row in sheet.iter_rows() for cell in row
            if cell.data_type == "f"]


def test_excel_files_hold_hostile_text_as_text_never_a_formula(store, data_dir, tmp_path):
    out = tmp_path / "report.xlsx"
    assert dlrlens_main(["report", "--data", str(data_dir), "--output", str(out)]) == 0
    assert formula_cells(out) == []
    sheet = openpyxl.load_workbook(out)["Campaigns"]
    names = {row[0] for row in sheet.iter_rows(min_row=2, values_only=True)}
    assert names == set(FILE_NAMES), "the exact names, unguarded: a cell typed as text needs no quote"

    campaigns = queries.campaigns(store, ALL)
    table_xlsx = downloads.table_downloads(campaigns, "campaigns", ALL)[1].build()
    assert formula_cells(table_xlsx) == []
    detail = queries.message_detail(store, ALL)
    assert formula_cells(downloads.excel_bytes(detail)) == []
    # The test can fail: a formula written the way xlsxwriter's write() would is detected.
    import xlsxwriter
    buffer = io.BytesIO()
    with xlsxwriter.Workbook(buffer) as book:
        book.add_worksheet().write(0, 0, FORMULA)
    assert formula_cells(buffer.getvalue()) == ["Sheet1!A1"]


# --------------------------------------------------------------------------- figures


def strings_in(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for value in node.values() for s in strings_in(value)]
    if isinstance(node, (list, tuple)):
        return [s for value in node for s in strings_in(value)]
    if hasattr(node, "tolist"):
        return strings_in(node.tolist())
    return []


def figures(store) -> dict[str, object]:
    f = ALL
    names = FILE_NAMES[:4]
    narrowed = Filters(campaigns=tuple(names))
    return {
        "trend": charts.trend_figure(queries.trend(store, f)),
        "outcomes": charts.outcome_figure(queries.outcome_breakdown(store, f)),
        "pending": charts.pending_ages_figure(queries.pending_ages(store, f, datetime.now(timezone.utc)),
                                              queries.AGE_BUCKETS),
        "reasons": charts.failure_reasons_figure(queries.failure_reasons(store, f)),
        "reasons_by_campaign": charts.failures_by_campaign_figure(queries.failure_reasons_by_campaign(store, f)),
        "reasons_over_time": charts.failures_over_time_figure(queries.failure_reasons_over_time(store, f)),
        "rate_trends": charts.rate_trend_figure({n: queries.trend(store, Filters(campaigns=(n,))) for n in names}),
        "cdf": charts.latency_cdf_figure(queries.latency_distribution(store, narrowed, True), by_campaign=names),
        "percentiles": charts.percentiles_by_campaign_figure(queries.latency_by_campaign(store, f)),
    }


def test_figures_show_data_strings_escaped_and_keep_them_out_of_templates(store):
    escaped = {plotly_text(n) for n in FILE_NAMES}
    seen = set()
    for name, fig in figures(store).items():
        spec = fig.to_plotly_json()
        texts = strings_in(spec)
        for text in texts:
            assert not re.search(r"<(a|img|span|b|i)[\s>]", text, re.I), (name, text)
        templates = [t for trace in spec["data"] for key in ("hovertemplate", "texttemplate")
                     for t in strings_in(trace.get(key))]
        assert not [t for t in templates if "evil" in t or "HYPERLINK" in t or "CALC" in t], name
        seen |= escaped & set(texts)
    assert seen == escaped, "every campaign shows in some figure, escaped"


# --------------------------------------------------------------------------- pages (AppTest)

MARKDOWN_ELEMENTS = ("markdown", "caption", "subheader", "header", "title", "info", "warning", "error", "success")


def markdown_sources(at: AppTest) -> list[str]:
    """The Markdown source of every element and widget label on the page."""
    sources = [e.value for kind in MARKDOWN_ELEMENTS for e in getattr(at, kind)]
    for kind in ("metric", "multiselect", "selectbox", "text_input", "button", "expander"):
        sources += [getattr(e, "label", "") or "" for e in getattr(at, kind)]
    return [s for s in sources if isinstance(s, str)]


def test_every_page_puts_stored_strings_into_markdown_escaped_only(monkeypatch, data_dir):
    monkeypatch.setenv("DLRLENS_DATA", str(data_dir))
    monkeypatch.delenv("DLRLENS_DASHBOARD_PASSWORD", raising=False)
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    pages = {}
    for page in ("overview", "campaigns", "failures", "latency", "lookup", "health"):
        at.switch_page(f"views/{page}.py").run()
        assert not at.exception, [e.value for e in at.exception]
        if page == "campaigns":
            at.multiselect(key="campaign_compare").set_value(FILE_NAMES[:4]).run()
            assert not at.exception, [e.value for e in at.exception]
            assert [h.value for h in at.subheader][:4] == [md_text(n) for n in FILE_NAMES[:4]]
        if page == "lookup":
            at.text_input(key="lookup_term").set_value(image(9).replace("i]", "n]")).run()
            assert not at.exception
            assert md_text(image(9).replace("i]", "n]")) in " ".join(i.value for i in at.info)
        pages[page] = markdown_sources(at)
    for page, sources in pages.items():
        for source in sources:
            for name in FILE_NAMES + [UNKNOWN_STATUS]:
                if name in source:
                    pytest.fail(f"{page}: {name!r} reaches Markdown unescaped in {source!r}")


# --------------------------------------------------------------------------- the browser


class Tracker:
    """A loopback HTTP server that records every request (the tracking pixel's server)."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        tracker = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                tracker.hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# Links and images pointing at the attacker, anywhere in the document (HTML or SVG).
EVIL_ELEMENTS_JS = """port => [...document.querySelectorAll('a, img, image')].filter(e => {
    const u = e.getAttribute('href') || e.getAttributeNS('http://www.w3.org/1999/xlink', 'href')
        || e.getAttribute('src') || '';
    return u.includes('evil') || u.includes(':' + port) || u === 'x';
}).map(e => e.outerHTML.slice(0, 300) + ' in ' + (e.parentElement?.outerHTML.slice(0, 300) || ''))"""
PLOTLY_TEXTS_JS = """() => [...document.querySelectorAll('.js-plotly-plot text')].map(t => t.textContent)"""


@pytest.fixture(scope="module")
def hostile_dashboard(tmp_path_factory):
    """A real dashboard over the hostile campaigns (receipts an hour old) and the tracker
    their image points at."""
    from tests.support.dashboard_server import running_dashboard

    if not CHROMIUM.exists():
        pytest.skip(MISSING)
    tracker = Tracker()
    root = tmp_path_factory.mktemp("hostile-browser")
    names = hostile_names(tracker.port)
    write_receipts(root / "data", hostile_rows(names, datetime.now(timezone.utc) - timedelta(hours=1)))
    try:
        with running_dashboard(root / "data") as app:
            yield app, tracker, names
    finally:
        tracker.close()


@pytest.fixture
def hostile_page(hostile_dashboard, chromium, tmp_path, request):
    """A fresh session in the module's browser (``chromium``, tests/conftest.py); when the test
    failed, ``failure.png`` (full page) is saved in ``tmp_path``."""
    with fresh_page(chromium, request, tmp_path / "failure.png") as page:
        yield page


@pytest.mark.browser
@pytest.mark.slow
def test_hostile_names_render_as_text_in_the_browser(hostile_dashboard, hostile_page, tmp_path):
    app, tracker, names = hostile_dashboard
    page = hostile_page

    def no_evil_elements(where: str) -> None:
        found = page.evaluate(EVIL_ELEMENTS_JS, tracker.port)
        assert found == [], f"{where}: elements pointing at the attacker: {found}"

    def plotly_texts(count: int, wanted: set[str], what: str) -> list[str]:
        """The text of the page's Plotly figures once ``count`` figures are drawn and show
        every string of ``wanted``."""
        def read(p):
            return p.locator(".js-plotly-plot").count(), p.evaluate(PLOTLY_TEXTS_JS)
        return poll(page, read, lambda v: v[0] >= count and wanted <= set(v[1]), PAGE_TIMEOUT_S, what)[1]

    def open_page(path: str) -> None:
        page.goto(app.url + path, timeout=PAGE_TIMEOUT_S * 1000)

    # Overview: cards and figures (no names in them), the sidebar's campaign list.
    open_page("")
    poll(page, lambda p: p.locator('[data-testid="stMetric"]').count(), lambda n: n >= 8, PAGE_TIMEOUT_S, "cards")
    plotly_texts(3, set(), "the overview's figures")
    no_evil_elements("overview")

    # Campaigns, drilled into the four hostile campaigns: their names as headings, legend
    # entries and ticks, as typed.
    open_page("/campaigns")
    picker = page.locator('[data-testid="stMultiSelect"]').filter(has=page.get_by_text("Drill into campaigns"))
    picker.wait_for(timeout=PAGE_TIMEOUT_S * 1000)
    for name in names:
        open_options(page, picker)
        page.get_by_role("option", name=name, exact=True).click()
        page.keyboard.press("Escape")
        poll(page, lambda p: [visible(h) for h in p.locator('[data-testid="stHeading"]').all_inner_texts()],
             lambda headings, name=name: name in headings, PAGE_TIMEOUT_S, f"the heading {name!r}")
    headings = [visible(h) for h in page.locator('[data-testid="stMain"] [data-testid="stHeading"]').all_inner_texts()]
    assert [h for h in headings if h in names] == names, headings
    texts = plotly_texts(3, set(names), "the drilled-in figures naming the campaigns")
    assert ANCHOR in texts and IMG_TAG in texts
    no_evil_elements("campaigns")
    page.screenshot(path=str(tmp_path / "campaigns.png"), full_page=True)

    # Failures: campaigns as ticks of the failures-by-campaign figure.
    open_page("/failures")
    plotly_texts(3, {ANCHOR, LINK, IMG_TAG}, "failures by campaign")
    no_evil_elements("failures")

    # Latency: campaigns as ticks of the percentiles figure.
    open_page("/latency")
    plotly_texts(3, {ANCHOR, LINK, IMG_TAG}, "percentiles by campaign")
    no_evil_elements("latency")

    # Lookup: a hostile reference finds its receipts; a hostile term that finds nothing is
    # quoted back as text.
    open_page("/lookup")
    field = page.get_by_label("deliveryMessageId, clientReference or batchId")
    field.fill(LINK)
    field.press("Enter")
    page.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=PAGE_TIMEOUT_S * 1000)
    no_evil_elements("lookup (found)")
    missing = image(tracker.port).replace("i]", "n]")
    field.fill(missing)
    field.press("Enter")
    notice = page.locator('[data-testid="stAlert"]').filter(has_text="No receipt has")
    notice.wait_for(timeout=PAGE_TIMEOUT_S * 1000)
    assert missing in visible(notice.inner_text())
    no_evil_elements("lookup (not found)")

    time.sleep(1)  # an image request would have been sent by now
    assert tracker.hits == [], f"the browser fetched {tracker.hits} from the tracking server"


def test_a_looked_up_term_cannot_break_the_excel_sheet_name():
    # The lookup names its files and sheet after the term; Excel refuses a sheet name that
    # ends (or starts) with an apostrophe, and xlsxwriter raised on it.
    term = "x" * 21 + "'" + FORMULA
    data = downloads.table_downloads(pd.DataFrame({"a": [1]}), f"receipts-{term[:60]}", ALL)[1].build()
    assert openpyxl.load_workbook(io.BytesIO(data)).sheetnames == ["receipts-" + "x" * 21, "Scope"]


def test_hostile_filter_values_stay_inside_the_csv_scope_cell(store):
    # The scope line names the filters, and campaign names come from whoever can post: a name
    # with commas, quotes, a newline and a formula must neither start a cell of its own nor
    # end the line.
    hostile = Filters(campaigns=(FORMULA, 'a,"=1+1",b', "x\n=2+2"), labels=(("team", "=HYPERLINK(1)"),))
    data = downloads.table_downloads(pd.DataFrame({"a": [1]}), "campaigns", hostile)[0].build()
    first, rest = data.decode().split("\n", 1)
    [cell] = next(csv.reader([first]))
    assert cell.startswith("# dlrlens scope: ") and FORMULA in cell and "team==HYPERLINK(1)" in cell
    assert rest == "a\n1\n"
