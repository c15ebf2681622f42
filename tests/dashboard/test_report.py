"""dashboard.report: the sheets carry exactly the numbers of dashboard.queries, in every format."""

from __future__ import annotations

import io
import json
import math
from datetime import date

import openpyxl
import pandas as pd
import pytest

from dashboard import catalog
from dashboard import queries as q
from dashboard import report as r
from dashboard.queries import Filters, Store
from tests.support.factory import demo_rows, message, utc, write_demo_flushes, write_receipts
from tests.support.funnel import demo_events, write_events

BERLIN = q.zone_info("Europe/Berlin")
NOVEMBER = Filters(start=pd.Timestamp("2026-11-01", tz=BERLIN).to_pydatetime(),
                   end=pd.Timestamp("2026-11-05", tz=BERLIN).to_pydatetime(), tz="Europe/Berlin")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = write_demo_flushes(tmp_path_factory.mktemp("report") / "data")
    clicks, replies = demo_events(demo_rows(250, seed=5), click_share=0.3, reply_share=0.1)  # the same messages
    write_events(root, "clicks", clicks, "c")
    write_events(root, "replies", replies, "r")
    return root


@pytest.fixture(scope="module")
def store(data_dir):
    with Store(data_dir) as s:
        yield s


@pytest.fixture(scope="module")
def report(store):
    return r.build_report(store, NOVEMBER)


def same(a, b) -> bool:
    """Equal numbers (both missing counts as equal); numpy scalars compared as Python values."""
    a, b = (v.item() if hasattr(v, "item") else v for v in (a, b))
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or (isinstance(b, float) and math.isnan(b))
    return a == b


def test_sheets_and_summary_equal_the_queries(store, report):
    assert list(report) == list(r.SHEETS)
    expected = q.kpis(store, NOVEMBER, receipt_figures=True).iloc[0]
    summary = report["Summary"].set_index("key")["value"]
    assert expected["messages"] > 50  # the data set is not trivially empty
    for key in q.KPI_COLUMNS:
        assert same(summary[key], expected[key]), key
    assert summary["from"] == "2026-11-01" and summary["to"] == "2026-11-04" and summary["tz"] == "Europe/Berlin"
    pd.testing.assert_frame_equal(report["Campaigns"], q.campaign_table(store, NOVEMBER))
    funnel = q.funnel(store, NOVEMBER).iloc[0]
    assert funnel["clicks"] > 0 and funnel["replied"] > 0
    for key in catalog.FUNNEL_COLUMNS:
        assert same(summary[key], funnel[key]), key
    pd.testing.assert_frame_equal(report["Failure reasons"], q.failure_reasons(store, NOVEMBER))
    daily = report["Daily trend"]
    assert daily["day"].tolist() == [date(2026, 11, d) for d in (1, 2, 3, 4)]
    assert daily["messages"].sum() == expected["messages"]


def test_every_kpi_has_its_catalog_label_and_definition(report):
    assert [kpi.column for kpi in catalog.KPIS] == q.KPI_COLUMNS
    defs = report["Definitions"]
    terms = catalog.TERMS + catalog.FUNNEL_TERMS
    kpis = catalog.ALL_KPIS
    assert defs["term"].tolist() == [t.name for t in terms] + [k.label for k in kpis]
    assert defs["key"].tolist() == [""] * len(terms) + [k.column for k in kpis]
    assert defs.set_index("key").loc["delivery_rate", "definition"] == catalog.kpi("delivery_rate").definition
    summary = report["Summary"].set_index("key")
    assert summary.loc["latency_p95_s", "item"] == "Time to deliver p95 (s)"


def test_csv_is_the_campaigns_table_at_full_precision(report, tmp_path):
    path = tmp_path / "out.csv"
    r.write_report(report, path, "csv")
    back = pd.read_csv(path, keep_default_na=False, na_values=[""])
    campaigns = report["Campaigns"]
    assert back["campaign"].tolist() == campaigns["campaign"].tolist()
    for column in q.KPI_COLUMNS + catalog.FUNNEL_COLUMNS:
        for got, want in zip(back[column], campaigns[column]):
            assert same(float(got), float(want)), column


def test_xlsx_has_one_sheet_per_table_with_exact_values(report, tmp_path):
    path = tmp_path / "out.xlsx"
    r.write_report(report, path, "xlsx")
    book = openpyxl.load_workbook(path)
    assert book.sheetnames == list(r.SHEETS)
    sheet = book["Campaigns"]
    header = [c.value for c in sheet[1]]
    assert header == (["campaign"] + q.KPI_COLUMNS + catalog.FUNNEL_COLUMNS + catalog.COST_COLUMNS
                      + ["latency_from_submission_p50_s", "latency_from_submission_p95_s"])
    campaigns = report["Campaigns"]
    for row_number, (_, want) in enumerate(campaigns.iterrows(), start=2):
        cells = {h: sheet.cell(row_number, i + 1) for i, h in enumerate(header)}
        assert cells["campaign"].value == want["campaign"]
        for column in q.KPI_COLUMNS + catalog.FUNNEL_COLUMNS:
            # xlsxwriter writes 16 significant digits (Excel itself keeps 15): not rounded to the shown format.
            if isinstance(cells[column].value, float):
                assert cells[column].value == pytest.approx(float(want[column]), rel=1e-15), column
            else:
                assert same(cells[column].value, want[column]), column
    rate = sheet.cell(2, header.index("delivery_rate") + 1)
    assert rate.number_format == "0.0%"
    assert sheet.cell(2, header.index("latency_p50_s") + 1).number_format == "#,##0.0"
    assert sheet.column_dimensions["A"].width >= len("black-friday")
    summary = {row[1].value: row[2] for row in book["Summary"].iter_rows(min_row=2)}
    assert summary["delivery_rate"].number_format == "0.0%"
    assert summary["click_rate"].number_format == "0.0%"
    assert summary["messages"].value == report["Summary"].set_index("key").at["messages", "value"]
    daily = book["Daily trend"]
    assert daily.cell(2, 1).value.date() == date(2026, 11, 1)


def test_json_round_trip(report, tmp_path):
    buffer = io.BytesIO()
    r.write_report(report, buffer, "json")
    doc = json.loads(buffer.getvalue())
    assert list(doc) == list(r.SHEETS)
    campaigns = report["Campaigns"]
    assert [row["campaign"] for row in doc["Campaigns"]] == campaigns["campaign"].tolist()
    for row, (_, want) in zip(doc["Campaigns"], campaigns.iterrows()):
        for column in q.KPI_COLUMNS:
            assert same(row[column], want[column]), column
    assert doc["Daily trend"][0]["day"] == "2026-11-01"


def test_json_timestamps_are_iso_with_offset():
    frame = pd.DataFrame({"at": [pd.Timestamp("2026-11-02 00:30", tz="Europe/Berlin"), pd.NaT],
                          "x": [1.5, float("nan")]})
    doc = json.loads(r.report_bytes({"T": frame}, "json"))
    assert doc == {"T": [{"at": "2026-11-02T00:30:00+01:00", "x": 1.5}, {"at": None, "x": None}]}


def test_report_filename():
    assert r.report_filename(NOVEMBER, "campaign-report", "xlsx") == "dlrlens-campaign-report_2026-11-01_2026-11-04.xlsx"
    assert r.report_filename(Filters(), "campaign-report", ".csv") == "dlrlens-campaign-report_all-time.csv"
    assert r.report_filename(Filters(start=utc(2026, 11, 1)), "x y", "json") == "dlrlens-x-y_2026-11-01_onwards.json"
    with pytest.raises(ValueError):
        r.report_bytes({}, "pdf")


# --------------------------------------------------------------------------- a report file
# (what `dlrlens report` prints and its exit codes: tests/cli/test_cli.py)


def test_campaign_report_file_for_local_dates(data_dir, store, tmp_path):
    out = tmp_path / "november.json"
    f = r.report_filters("2026-11-01", "2026-11-04", ["welcome", "reminder"], "Europe/Berlin")
    assert f == Filters(start=NOVEMBER.start, end=NOVEMBER.end, campaigns=("welcome", "reminder"), tz="Europe/Berlin")
    written = r.write_campaign_report(data_dir, f, "json", out)
    doc = json.loads(out.read_text())
    expected = q.campaigns(store, f, receipt_figures=True)
    assert sorted(row["campaign"] for row in doc["Campaigns"]) == ["reminder", "welcome"]
    for row, (_, want) in zip(doc["Campaigns"], expected.iterrows()):
        assert row["messages"] == want["messages"] and same(row["delivery_rate"], want["delivery_rate"])
    assert written == r.WrittenReport(out, "json", int(expected["messages"].sum()), 2)


def test_format_from_extension_and_directory_output(data_dir, tmp_path):
    day = r.report_filters("2026-11-02", "2026-11-02")
    written = r.write_campaign_report(data_dir, day, r.output_format(tmp_path), tmp_path)
    assert written.path == tmp_path / "dlrlens-campaign-report_2026-11-02_2026-11-02.xlsx"
    assert openpyxl.load_workbook(written.path).sheetnames == list(r.SHEETS)
    csv_path = tmp_path / "c.csv"
    assert r.output_format(csv_path) == "csv" and r.output_format(csv_path, "csv") == "csv"
    with pytest.raises(ValueError, match="--format json contradicts the output file's extension .csv"):
        r.output_format(csv_path, "json")
    r.write_campaign_report(data_dir, r.report_filters(), r.output_format(csv_path), csv_path)
    assert pd.read_csv(csv_path, skiprows=1)["messages"].sum() == 250  # line 1: the scope


@pytest.mark.parametrize("args, message_part", [
    (("2026-13-01", None), "--from '2026-13-01' is not a date"),
    ((None, "yesterday"), "--to 'yesterday' is not a date"),
    (("2026-11-05", "2026-11-01"), "is before --from"),
    ((None, None, (), "Mars/Olympus"), "unknown time zone 'Mars/Olympus'"),
])
def test_report_filters_reject_bad_input(args, message_part):
    with pytest.raises(ValueError, match=message_part):
        r.report_filters(*args)


def test_no_receipts_no_report(tmp_path):
    with pytest.raises(r.NoReceipts, match="no receipt files"):
        r.write_campaign_report(tmp_path / "nothing", r.report_filters(), "csv", tmp_path / "r.csv")
    assert not (tmp_path / "r.csv").exists()


def test_report_on_a_period_without_messages(tmp_path):
    write_receipts(tmp_path, message("M", utc(2026, 11, 3), [("ACCEPTED", 0), ("DELIVERED", 3)]))
    with Store(tmp_path) as s:
        rep = r.build_report(s, Filters(start=utc(2026, 12, 1), end=utc(2026, 12, 3)))
    summary = rep["Summary"].set_index("key")["value"]
    assert summary["messages"] == 0 and summary["delivery_rate"] is None
    assert rep["Campaigns"].empty and rep["Daily trend"]["messages"].tolist() == [0, 0]
    for fmt in r.FORMATS:
        assert r.report_bytes(rep, fmt)
