"""Charts a person can read: percentiles as points, series told apart by more than shades,
failure reasons as the top few plus "other" in clearly different colours, red for failure
only, empty charts saying why, day buckets without a time."""

from __future__ import annotations

import pandas as pd

from dashboard import charts


def rgb(color: str) -> tuple[int, int, int]:
    return tuple(int(color.lstrip("#")[i:i + 2], 16) for i in (0, 2, 4))


def is_reddish(color: str) -> bool:
    r, g, b = rgb(color)
    return r > 150 and g < 110 and b < 110


def distance(a: str, b: str) -> float:
    return sum((x - y) ** 2 for x, y in zip(rgb(a), rgb(b))) ** 0.5


def test_percentiles_are_points_with_their_own_symbols():
    by_campaign = pd.DataFrame({"campaign": ["a", "b"], "p50_s": [2.0, 5.0], "p90_s": [8.0, 9.0],
                                "p95_s": [10.0, 20.0], "p99_s": [30.0, 60.0]})
    fig = charts.percentiles_by_campaign_figure(by_campaign)
    points = [t for t in fig.data if t.showlegend is not False]
    assert {t.type for t in fig.data} == {"scatter"}, "no bars on a log axis"
    assert [t.mode for t in points] == ["markers"] * 4
    assert len({t.marker.symbol for t in points}) == 4 and len({t.marker.color for t in points}) == 4
    assert fig.layout.yaxis.type == "log"


def test_non_failure_series_are_never_red_and_differ_by_symbol():
    assert not any(is_reddish(c) for c in charts.SERIES_COLORS + list(charts.PERCENTILE_COLORS.values()))
    assert not is_reddish(charts.OUTCOME_COLORS["pending"]) and is_reddish(charts.OUTCOME_COLORS["failed"])
    trends = {name: pd.DataFrame({"bucket_start": pd.date_range("2026-11-01", periods=3, freq="D", tz="UTC"),
                                  "delivery_rate": [0.9, 0.8, 0.95]}) for name in ("a", "b", "c")}
    fig = charts.rate_trend_figure(trends)
    assert len({t.marker.symbol for t in fig.data}) == 3 and len({t.line.dash for t in fig.data}) == 3
    ages = pd.DataFrame({"age_bucket": ["<1 h", "1-24 h"], "last_status": ["ACCEPTED", "RETRY"], "messages": [3, 1]})
    assert not any(is_reddish(t.marker.color) for t in charts.pending_ages_figure(ages).data)


def test_failure_reasons_are_the_top_few_plus_other_in_distinct_colours():
    reasons = pd.DataFrame({"reason": [f"R{i}" for i in range(9)], "messages": [90, 80, 70, 60, 50, 40, 30, 20, 10]})
    reasons["share"] = reasons["messages"] / reasons["messages"].sum()
    fig = charts.failure_reasons_figure(reasons)
    shown = list(fig.data[0].y)
    assert len(shown) == charts.TOP_REASONS and charts.OTHER_REASON in shown
    other = list(fig.data[0].x)[shown.index(charts.OTHER_REASON)]
    assert other == 40 + 30 + 20 + 10
    palette = charts.REASON_PALETTE
    assert min(distance(a, b) for i, a in enumerate(palette) for b in palette[i + 1:]) > 80


def test_empty_charts_say_why():
    empty_reasons = pd.DataFrame({"reason": [], "messages": [], "share": []})
    fig = charts.failure_reasons_figure(empty_reasons)
    assert [a.text for a in fig.layout.annotations] == ["No failed messages in this period"]
    trend = pd.DataFrame({c: [] for c in ["bucket_start", "messages", "delivered", "failed", "unknown", "pending",
                                          "delivery_rate"]})
    assert "No messages sent" in charts.trend_figure(trend).layout.annotations[0].text


def test_day_buckets_are_labelled_without_a_time():
    days = pd.date_range("2026-11-01", periods=4, freq="D", tz="UTC")
    trend = pd.DataFrame({"bucket_start": days, "messages": 1, "delivered": 1, "failed": 0, "unknown": 0,
                          "pending": 0, "delivery_rate": 1.0})
    fig = charts.trend_figure(trend)
    assert fig.layout.xaxis.tickformat == "%b %d" and "%H" not in fig.layout.xaxis.hoverformat
