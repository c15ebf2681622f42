"""dashboard.scope: one description of what a view covers, rendered the same everywhere; a new
filter kind is one row."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime, timezone

import pytest

from dashboard import scope
from dashboard.queries import Filters, zone_info

BERLIN = zone_info("Europe/Berlin")
NOVEMBER = Filters(start=datetime(2026, 11, 1, tzinfo=BERLIN), end=datetime(2026, 12, 1, tzinfo=BERLIN),
                   campaigns=("black-friday",), outcomes=("failed",), statuses=("EXPIRED",),
                   labels=(("team", "retail"),), tz="Europe/Berlin")


def test_a_period_of_whole_days_reads_as_dates_with_the_previous_period():
    covers = scope.describe(NOVEMBER)
    assert covers.period_text() == "2026-11-01 to 2026-11-30"
    assert covers.previous_text() == "2026-10-02 to 2026-10-31"  # 30 days before, in Berlin
    assert covers.days() == (datetime(2026, 11, 1).date(), datetime(2026, 11, 30).date())
    assert covers.line() == ("Period: 2026-11-01 to 2026-11-30 (Europe/Berlin) · vs previous: 2026-10-02 to "
                             "2026-10-31 · Filters: Campaigns: black-friday; Outcomes: failed; Statuses: EXPIRED; "
                             "URL labels: team=retail")


def test_a_rolling_window_reads_as_times_in_the_zone_and_open_ends_say_so():
    rolling = Filters(start=datetime(2026, 12, 5, 15, 48, tzinfo=timezone.utc),
                      end=datetime(2026, 12, 6, 15, 48, tzinfo=timezone.utc), tz="Europe/Berlin")
    assert scope.describe(rolling, preset="Last 24 hours").line().startswith(
        "Period: Last 24 hours, 2026-12-05 16:48 to 2026-12-06 16:48 (Europe/Berlin)")
    assert scope.describe(Filters()).period_text() == "all data"
    assert scope.describe(Filters()).previous_text() == "none (the period is open)"
    assert scope.describe(Filters(start=datetime(2026, 11, 1, tzinfo=timezone.utc))).period_text() == "from 2026-11-01"
    assert "whatever the sidebar filters say" in scope.describe(Filters(), sidebar_applies=False).line()


def test_rows_dict_and_csv_line_render_the_same_scope():
    gone = scope.Unhonoured("campaign", "old-campaign-2025", "not in the data: it matches no message", applied=True)
    covers = scope.describe(NOVEMBER, [gone])
    rows = {key: value for _, key, value in covers.rows()}
    assert rows["campaigns"] == "black-friday" and rows["labels"] == "team=retail" and rows["tz"] == "Europe/Berlin"
    assert rows["unhonoured"] == "campaign 'old-campaign-2025': not in the data: it matches no message"
    doc = covers.as_dict()
    assert doc["filters"] == {"campaigns": ["black-friday"], "outcomes": ["failed"], "statuses": ["EXPIRED"],
                              "labels": ["team=retail"]}
    assert doc["unhonoured"][0]["value"] == "old-campaign-2025" and doc["from"] == "2026-11-01"
    [cell] = next(csv.reader([scope.csv_scope_line(covers).decode()]))
    assert cell == scope.CSV_SCOPE_PREFIX + covers.line()
    assert "Not honoured: campaign 'old-campaign-2025'" in cell


def test_a_new_filter_kind_is_one_row(monkeypatch):
    @dataclass(frozen=True)
    class WithSegments(Filters):
        segments: tuple[str, ...] = ()

    monkeypatch.setattr(scope, "FILTER_KINDS", scope.FILTER_KINDS + (scope.FilterKind("segments", "Segments",
                                                                                      "segments"),))
    covers = scope.describe(WithSegments(segments=("vip", "new")))
    assert "Filters: Segments: vip, new" in covers.line()
    assert covers.as_dict()["filters"] == {"segments": ["vip", "new"]}
    assert ("Segments", "segments", "vip, new") in covers.rows()
    assert scope.FILTER_KINDS[-1].name == "segment"
    # A row whose attribute Filters does not have (yet) reads as no filter.
    assert scope.describe(Filters()).as_dict()["filters"] == {}


def test_send_record_filters_say_which_figures_they_filter():
    covers = scope.describe(Filters(countries=("GB",), routes=("premium",)))
    assert "Countries (cost, Where and receipts missing only): GB" in covers.line()
    assert covers.as_dict()["filters"] == {"countries": ["GB"], "routes": ["premium"]}
    assert [kind.name for kind in scope.FILTER_KINDS][-4:] == ["country", "network", "sender", "route"]


@pytest.mark.parametrize("params, parameter, instead", [
    ({"range": "fortnight"}, "range", "showing Last 7 days instead"),
    ({"range": "custom", "from": "2026-13-01"}, "from", "the range is open on that side"),
    ({"outcome": ["failed", "lost"]}, "outcome", "ignored"),
    ({"tz": "Mars/Olympus"}, "tz", "showing UTC instead"),
    ({"label": "nokey"}, "label", "ignored"),
    ({"campaign": [f"c{i}" for i in range(60)]}, "campaign", "the 10 past the first 50 are ignored"),
])
def test_every_link_value_that_cannot_be_honoured_is_named(params, parameter, instead):
    from dashboard import state

    [found] = state.url_unhonoured(params, default_preset="7d")
    assert (found.parameter, found.instead) == (parameter, instead)
    assert state.url_unhonoured({"range": "7d", "campaign": "any-name", "outcome": "failed"}) == ()
