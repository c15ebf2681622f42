"""Plotly figures of the Funnel page (pure functions of query frames; no Streamlit here).

Campaign names, URLs, countries, browsers and operating systems come from webhook callers: every
one reaches Plotly through :func:`dashboard.safe_text.plotly_text`.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from dashboard.charts import RATE_COLOR, format_count, style
from dashboard.safe_text import plotly_text

STAGES = [("messages", "Sent"), ("delivered", "Delivered"), ("clicked", "Clicked"), ("replied", "Replied"),
          ("opted_out", "Opted out")]
OPT_OUT_COLOR = "#e15759"
MAX_FUNNELS = 6  # campaigns drawn as funnels side by side (the busiest)
MAX_BARS = 20  # campaigns in the rate comparison


def funnel_figure(total: pd.DataFrame, per_campaign: pd.DataFrame, title: str = "Sent to opted out") -> go.Figure:
    """The funnel of every message matching the filters, and of the busiest campaigns beside it."""
    fig = go.Figure()
    stages = [label for _, label in STAGES]
    frames = [("All campaigns", total.iloc[0])] if len(total) else []
    frames += [(plotly_text(row["campaign"]), row) for _, row in per_campaign.head(MAX_FUNNELS).iterrows()]
    for name, row in frames:
        values = [int(row[column]) for column, _ in STAGES]
        fig.add_trace(go.Funnel(name=name, y=stages, x=values, textinfo="value+percent initial",
                                hovertemplate="%{y}: %{x:,}<extra>" + name + "</extra>"))
    return style(fig, title, height=420)


def rates_figure(per_campaign: pd.DataFrame, title: str = "Click and opt-out rates by campaign") -> go.Figure:
    """Click rate and opt-out rate of the busiest campaigns, as bars (shares of delivered)."""
    shown = per_campaign.head(MAX_BARS)
    names = [plotly_text(name) for name in shown["campaign"]]
    fig = go.Figure([
        go.Bar(name="Click rate", x=names, y=shown["click_rate"], marker_color=RATE_COLOR),
        go.Bar(name="Opt-out rate", x=names, y=shown["opt_out_rate"], marker_color=OPT_OUT_COLOR),
    ])
    fig.update_layout(barmode="group", yaxis=dict(tickformat=".1%", title="of delivered"))
    return style(fig, title)


def clicks_over_time_figure(over_time: pd.DataFrame, bucket: str, title: str = "Clicks over time") -> go.Figure:
    """Clicks per hour or day of the click (its arrival time)."""
    fig = go.Figure(go.Bar(x=over_time["bucket_start"], y=over_time["clicks"], marker_color=RATE_COLOR,
                           name="Clicks", hovertemplate="%{x}: %{y:,} clicks<extra></extra>"))
    fig.update_layout(yaxis_title=f"clicks per {bucket}")
    return style(fig, title, legend=None)  # one series: no legend


def breakdown_figure(breakdown: pd.DataFrame, title: str) -> go.Figure:
    """Clicks by one dimension (country, OS, browser), most first, horizontal bars."""
    shown = breakdown.head(12).iloc[::-1]
    fig = go.Figure(go.Bar(x=shown["clicks"], y=[plotly_text(v) for v in shown["value"]], orientation="h",
                           marker_color=RATE_COLOR,
                           text=[f"{format_count(c)} ({s:.0%})" for c, s in zip(shown["clicks"], shown["share"])],
                           hovertemplate="%{y}: %{x:,} clicks<extra></extra>"))
    fig.update_layout(xaxis_title="clicks")
    return style(fig, title, legend=None, height=320)  # one series: no legend
