"""The screen, its downloads and ``dlrlens report`` agree: the Campaigns table has the same
columns in the same order everywhere, every column filled, headed by the catalog's KPI labels
on screen (column keys in the files, for machines), counts as integers in JSON; and every
format states the same scope (:mod:`dashboard.scope`)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import openpyxl
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from dashboard import catalog, downloads, scope
from dashboard.queries import Filters, Store
from dlrlens import cli
from tests.support.factory import demo_rows, write_receipts

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
CAMPAIGN_COLUMNS = (["campaign"] + [kpi.column for kpi in catalog.KPIS] + catalog.FUNNEL_COLUMNS + catalog.COST_COLUMNS
                    + ["latency_from_submission_p50_s", "latency_from_submission_p95_s"])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("agreement") / "data"
    write_receipts(root, demo_rows(200))
    return root


@pytest.fixture(scope="module")
def screen(data_dir):
    """The Campaigns page over all data, as a browser session gets it."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DLRLENS_DATA", str(data_dir))
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params["range"] = "all"
    at.run()
    at.switch_page("views/campaigns.py").run()
    assert not at.exception, [e.value for e in at.exception]
    yield at
    mp.undo()


def test_screen_downloads_and_report_have_the_same_columns_in_the_same_order(screen, data_dir, tmp_path):
    frame = screen.container(key="table_campaigns").dataframe[0].value
    assert list(frame.columns) == CAMPAIGN_COLUMNS
    for column in ("receipts", "duplicate_rows", "webhook_lag_p50_s", "webhook_lag_p95_s"):
        assert frame[column].notna().all(), f"{column} is empty on screen"

    csv_file, excel_file = downloads.table_downloads(frame, "campaigns", Filters())
    rows = list(csv.reader(io.StringIO(csv_file.build().decode())))
    assert rows[1] == CAMPAIGN_COLUMNS  # rows[0]: the scope line
    sheet = openpyxl.load_workbook(io.BytesIO(excel_file.build()), read_only=True).worksheets[0]
    assert [c.value for c in next(sheet.iter_rows(max_row=1))] == CAMPAIGN_COLUMNS

    out = tmp_path / "r.csv"
    assert cli.main(["report", "--data", str(data_dir), "-o", str(out)]) == 0
    from_report = pd.read_csv(out, skiprows=1)
    assert list(from_report.columns) == CAMPAIGN_COLUMNS
    pd.testing.assert_frame_equal(from_report, pd.read_csv(io.BytesIO(csv_file.build()), skiprows=1))


def test_screen_headings_are_the_catalog_labels():
    frame = pd.DataFrame({c: [1] for c in CAMPAIGN_COLUMNS})
    _, config = downloads.display_frame(frame, "UTC")
    for kpi in catalog.KPIS:
        assert config[kpi.column]["label"] == kpi.label.removesuffix(" (s)"), kpi.column


def test_counts_are_integers_in_json(data_dir):
    with Store(data_dir) as store:
        doc = json.loads(downloads.campaign_report_bytes(store, Filters(), "json"))
    counts = [kpi.column for kpi in catalog.KPIS if kpi.unit == "count"]
    for row in doc["Campaigns"]:
        for column in counts:
            assert isinstance(row[column], int), (column, row[column])
    summary = {row["key"]: row["value"] for row in doc["Summary"]}
    assert all(isinstance(summary[c], int) for c in counts)


def test_every_format_states_the_same_scope(data_dir):
    f = Filters(campaigns=("welcome", "old-campaign-2025"), statuses=("EXPIRED",), outcomes=("failed",),
                labels=(("env", "prod"),), tz="Europe/Berlin")
    with Store(data_dir) as store:
        covers = scope.describe(f, scope.unknown_values(store, f))
        as_json = json.loads(downloads.campaign_report_bytes(store, f, "json"))
        book = openpyxl.load_workbook(io.BytesIO(downloads.campaign_report_bytes(store, f, "xlsx")), read_only=True)
        detail_csv = downloads.detail_bytes(store, f, "csv", covers)
    assert as_json["scope"] == covers.as_dict()
    assert as_json["scope"]["filters"] == {"campaigns": ["welcome", "old-campaign-2025"], "outcomes": ["failed"],
                                           "statuses": ["EXPIRED"], "labels": ["env=prod"]}
    assert [u["value"] for u in as_json["scope"]["unhonoured"]] == ["old-campaign-2025"]
    summary = {row[1]: row[2] for row in book["Summary"].iter_rows(min_row=2, values_only=True)}
    for item, key, value in covers.rows():
        assert summary[key] == value, key
    assert summary["campaigns"] == "welcome, old-campaign-2025" and summary["statuses"] == "EXPIRED"
    assert summary["labels"] == "env=prod" and summary["outcomes"] == "failed"
    [line] = next(csv.reader([detail_csv.decode().split("\n", 1)[0]]))
    assert line == "# dlrlens scope: " + covers.line()


def test_parquet_downloads_carry_the_scope_in_their_metadata(data_dir):
    import pyarrow.parquet as pq

    f = Filters(campaigns=("welcome",), tz="Europe/Berlin")
    with Store(data_dir) as store:
        covers = scope.describe(f)
        files = {d.label: d for d in downloads.export_downloads(store, f, covers)}
        latency = {d.extension: d for d in downloads.latency_downloads(store, f, 10, covers)}
        for data in (files["Messages (Parquet)"].build(), latency["parquet"].build()):
            meta = pq.read_schema(io.BytesIO(data)).metadata
            assert json.loads(meta[downloads.PARQUET_SCOPE_KEY.encode()]) == covers.as_dict()
