"""``dlrlens report`` refuses what it cannot do, and reproduces any dashboard view: every
error of its options (one test each), the sidebar's filters, ``--strict``, ``-o -`` and the
scope stated in the file."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pandas as pd
import pytest

from dashboard import queries, report
from dashboard.queries import Filters, Store
from dlrlens import cli
from tests.support.factory import write_demo_flushes
from tests.support.servers import REPO


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_demo_flushes(tmp_path_factory.mktemp("report-cli") / "data")


def run(data_dir, *argv) -> int:
    return cli.main(["report", "--data", str(data_dir), *argv])


@pytest.mark.parametrize("argv, message_part", [
    (["--format", "csv", "-o", "{dir}/r.xlsx"], "--format csv contradicts the output file's extension .xlsx"),
    (["--format", "xlsx", "-o", "{dir}/r.json"], "--format xlsx contradicts the output file's extension .json"),
    (["--format", "json", "-o", "{dir}/r.xls"], "--format json contradicts"),
    (["--label", "noequals", "-o", "{dir}/r.csv"], "--label 'noequals' is not KEY=VALUE"),
    (["--label", "=value", "-o", "{dir}/r.csv"], "--label '=value' is not KEY=VALUE"),
    (["--strict", "--campaign", "old-campaign-2025", "-o", "{dir}/r.csv"],
     "campaign 'old-campaign-2025': not in the data"),
    (["--strict", "--label", "team=nobody", "-o", "{dir}/r.csv"], "label 'team=nobody': not in the data"),
])
def test_every_refusal_exits_2_names_the_problem_and_writes_nothing(data_dir, tmp_path, capsys, argv, message_part):
    argv = [a.replace("{dir}", str(tmp_path)) for a in argv]
    assert run(data_dir, *argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("dlrlens report: error: ") and message_part in captured.err
    assert captured.out == ""
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_outcome_is_refused_by_the_parser(data_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(data_dir, "--outcome", "lost", "-o", str(tmp_path / "r.csv"))
    assert exit_info.value.code == 2
    assert "invalid choice: 'lost'" in capsys.readouterr().err


def test_excel_to_a_terminal_is_refused(data_dir, monkeypatch, capsys):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert run(data_dir, "--format", "xlsx", "-o", "-") == 2
    assert "refusing to write an Excel file to a terminal" in capsys.readouterr().err


def test_an_unknown_campaign_without_strict_warns_and_reports_zero(data_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert run(data_dir, "--campaign", "old-campaign-2025", "-o", str(out)) == 0
    err = capsys.readouterr().err
    assert "dlrlens report: warning: campaign 'old-campaign-2025': not in the data" in err
    doc = json.loads(out.read_text())
    assert doc["Campaigns"] == []
    summary = {row["key"]: row["value"] for row in doc["Summary"]}
    assert summary["messages"] == 0 and summary["campaigns"] == "old-campaign-2025"
    assert doc["scope"]["filters"] == {"campaigns": ["old-campaign-2025"]}
    assert doc["scope"]["unhonoured"][0]["value"] == "old-campaign-2025"


def test_sidebar_filters_give_the_dashboards_figures_and_the_file_names_them(data_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert run(data_dir, "--status", "delivered", "--outcome", "delivered", "--label", "env=prod",
               "--tz", "Europe/Berlin", "-o", str(out)) == 0
    doc = json.loads(out.read_text())
    f = Filters(statuses=("DELIVERED",), outcomes=("delivered",), labels=(("env", "prod"),), tz="Europe/Berlin")
    with Store(data_dir) as store:
        expected = queries.campaigns(store, f, receipt_figures=True)
    assert expected["messages"].sum() > 0
    assert [row["messages"] for row in doc["Campaigns"]] == expected["messages"].tolist()
    assert all(isinstance(row["receipts"], int) for row in doc["Campaigns"])  # counts are integers
    assert doc["scope"]["filters"] == {"outcomes": ["delivered"], "statuses": ["DELIVERED"], "labels": ["env=prod"]}
    assert doc["scope"]["tz"] == "Europe/Berlin"
    summary = {row["key"]: row["value"] for row in doc["Summary"]}
    assert (summary["statuses"], summary["outcomes"], summary["labels"]) == ("DELIVERED", "delivered", "env=prod")


def test_csv_to_standard_output_starts_with_its_scope_line(data_dir):
    done = subprocess.run([sys.executable, "-m", "dlrlens", "report", "--data", str(data_dir), "--campaign",
                           "welcome", "-o", "-"], cwd=REPO, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    first, _, rest = done.stdout.decode().partition("\n")
    [scope_cell] = next(csv.reader([first]))  # one cell, whatever it holds
    assert scope_cell.startswith("# dlrlens scope: ") and "Campaigns: welcome" in scope_cell
    table = pd.read_csv(io.StringIO(rest))
    assert table["campaign"].tolist() == ["welcome"]
    assert b"wrote standard output (csv)" in done.stderr


def test_help_shows_examples(capsys):
    with pytest.raises(SystemExit):
        cli.main(["report", "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "--strict --campaign black-friday" in out and "-o - | jq .scope" in out


def test_output_format_rules():
    assert report.output_format("-") == "csv"
    assert report.output_format("-", "json") == "json"
    assert report.output_format("a.XLSX") == "xlsx"
    assert report.output_format("a.report", "json") == "json"
    assert report.output_format("a.report") == "xlsx"
    with pytest.raises(ValueError, match="contradicts"):
        report.output_format("a.csv", "json")
