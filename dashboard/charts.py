"""Plotly figures and human-readable number formats for the dashboard pages.

Every figure builder is a pure function from the DataFrame a query returned (columns as
documented in ``dashboard/queries/``) to a ``plotly.graph_objects.Figure``; none reads
Streamlit state, so each can be built and inspected in a plain test. An empty frame gives an
empty figure, never an error. The formatters are the one place numbers become text on screen
(downloads keep the exact values).

Plotly renders a subset of HTML in every label, and campaign names and statuses are
whatever a webhook caller sent: every data string a figure shows (category ticks, legend
names, hover text) goes through :func:`dashboard.safe_text.plotly_text` (or :func:`_texts`),
hover templates never contain data, only ``%{..}`` references to it, and axes of names are
category axes (a campaign called "2026-01-01" or "1e9" stays a name, not a date or number).
"""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboard.safe_text import plotly_text

# One colour per outcome, used by every figure that splits by outcome.
OUTCOME_COLORS = {
    "delivered": "#2e9d5b",
    "failed": "#d64545",
    "unknown": "#8c7ae6",
    "pending": "#e3a21a",
}
RATE_COLOR = "#1f5fa8"
# Series that are not failures (campaigns, pending statuses, percentiles) never get red, which
# reads as "failed": Plotly's default colour cycle starts with red, so figures use this one.
SERIES_COLORS = ["#1f5fa8", "#e3a21a", "#2a9d8f", "#8c7ae6", "#6c757d", "#17becf", "#a6761d", "#66a61e"]
# And more than colour tells series apart: a marker symbol and a dash pattern each.
SERIES_SYMBOLS = ["circle", "square", "diamond", "triangle-up", "x", "star", "cross", "triangle-down"]
SERIES_DASHES = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"]
# Failure reasons: the TOP_REASONS most common ones, by rank, take these clearly different
# colours (no two near-identical yellows); the rest are summed as OTHER_REASON in grey. Every
# failure figure ranks the same reasons by the same totals, so a reason has one colour per page.
REASON_PALETTE = ["#c0392b", "#e69f00", "#56b4e9", "#2ca02c", "#cc79a7", "#0072b2"]  # Okabe-Ito-like
TOP_REASONS = len(REASON_PALETTE)
OTHER_REASON = "Other reasons"
OTHER_COLOR = "#9e9e9e"
PERCENTILE_COLORS = {"p50": "#2a9d8f", "p90": "#1f5fa8", "p95": "#8c7ae6", "p99": "#e3a21a"}
PERCENTILE_SYMBOLS = {"p50": "circle", "p90": "square", "p95": "diamond", "p99": "triangle-up"}
# Readable ticks for log time axes: value in seconds -> label. At least 0.6 decade apart (the
# closest pair has the shortest labels), so they stay side by side in a half-width figure
# (30 min next to 1 h collided).
TIME_TICKS = {0.1: "100 ms", 1: "1 s", 10: "10 s", 60: "1 min", 600: "10 min", 3600: "1 h",
              6 * 3600: "6 h", 86400: "1 d", 7 * 86400: "7 d"}
# Receipts per minute show at least this much time, so a minute or two of data reads as
# "receipts just started", not as bars filling the plot.
PER_MINUTE_WINDOW = timedelta(hours=1)
MINUTE_MS = 60_000  # a bar's width on a date axis is in milliseconds
_LEGENDS = {
    "top": dict(orientation="h", yanchor="bottom", y=1.0, xanchor="left", x=0),  # few series
    # Under the x axis, entries side by side and wrapping: few series, any width (a phone's too).
    "below": dict(orientation="h", xref="container", x=0, xanchor="left", yref="container", y=0,
                  yanchor="bottom"),
    "right": dict(orientation="v", yanchor="top", y=1.0, xanchor="left", x=1.02),  # many series
    # Many series in a narrow figure: one entry a line under the x axis (two long status names
    # do not fit side by side in a half-width column); Plotly widens the bottom margin for it.
    "bottom": dict(orientation="h", entrywidth=1, entrywidthmode="fraction", xref="container", x=0,
                   xanchor="left", yref="container", y=0, yanchor="bottom"),
}
LEGEND_ROW_PX = 20  # height of one legend line (12 px text), for figures that grow with their legend


# ---------------------------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------------------------


def is_missing(value) -> bool:
    """True for None, NaN and pd.NA."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def format_count(value) -> str:
    """``12,345``; an em dash for a missing value."""
    return "—" if is_missing(value) else f"{int(round(float(value))):,}"


def format_percent(share, decimals: int = 1) -> str:
    """A share 0..1 as ``97.3%``; an em dash when undefined (e.g. delivery rate of 0 messages)."""
    return "—" if is_missing(share) else f"{float(share) * 100:.{decimals}f}%"


def format_duration(seconds) -> str:
    """Seconds as ``850 ms``, ``4.2 s``, ``3 min 5 s``, ``2 h 10 min`` or ``3 d 4 h``."""
    if is_missing(seconds):
        return "—"
    value = float(seconds)
    sign, value = ("-" if value < 0 else ""), abs(value)
    if value < 1:
        return f"{sign}{value * 1000:.0f} ms"
    if value < 60:
        return f"{sign}{value:.1f} s"
    whole = math.floor(value + 0.5)  # half up, as people round (114.5 s is 1 min 55 s)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{sign}{days} d {hours} h" if hours else f"{sign}{days} d"
    if hours:
        return f"{sign}{hours} h {minutes} min" if minutes else f"{sign}{hours} h"
    return f"{sign}{minutes} min {secs} s" if secs else f"{sign}{minutes} min"


def format_number(value) -> str:
    """A plain measurement that is neither count, share nor duration: ``1,234.57``; "—" if missing."""
    return "—" if is_missing(value) else f"{float(value):,.2f}"


# A value's unit -> how it reads on screen; cards and tables both format through these.
FORMATS = {"count": format_count, "share": format_percent, "seconds": format_duration, "number": format_number}


def format_change(change, unit: str) -> str | None:
    """A signed change of a value in ``unit``: ``+267``, ``-0.6 pp`` (shares change in percentage
    points), ``+2 min 45 s``, ``-627 ms``; "0" when flat; None when missing (not comparable)."""
    if is_missing(change):
        return None
    if change == 0:
        return "0"
    sign = "+" if change > 0 else ""
    if unit == "share":
        return f"{change * 100:+.1f} pp"
    if unit == "seconds":
        return sign + format_duration(change)
    if unit == "count":
        return f"{change:+,.0f}"
    return sign + format_number(change)


def format_relative_change(change) -> str:
    """A relative change (0.25 = a quarter more) as ``+25.0%``; "—" when missing."""
    return "—" if is_missing(change) else ("+" if change > 0 else "") + format_percent(change)


def _texts(values) -> list[str]:
    """Data strings as Plotly shows them literally (:func:`plotly_text`)."""
    return [plotly_text(v) for v in values]


def style(fig: go.Figure, title: str, legend: str | None = "below", height: int | None = None,
           empty: str | None = None) -> go.Figure:
    """Title top left, legend below the plot (a phone's width holds it; "bottom": one entry
    a line, for many long names), room for both, the non-red :data:`SERIES_COLORS`. ``empty``:
    said in the middle of a figure without data (why it is empty)."""
    fig.update_layout(title=dict(text=title, y=0.98, yanchor="top", x=0, xanchor="left"),
                      margin=dict(l=10, r=10, t=80 if legend == "top" else 50, b=10), colorway=SERIES_COLORS,
                      showlegend=legend is not None, legend=dict(_LEGENDS.get(legend or "top"), traceorder="normal"))
    if height:
        fig.update_layout(height=height)
    if empty:
        fig.add_annotation(text=empty, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5,
                           font=dict(size=14, color="#555555"))
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
    return fig


def series_style(index: int) -> dict:
    """Marker symbol and line dash of the ``index``-th series (colour comes from the colorway)."""
    return dict(marker=dict(symbol=SERIES_SYMBOLS[index % len(SERIES_SYMBOLS)], size=8),
                line=dict(dash=SERIES_DASHES[index % len(SERIES_DASHES)], width=2))


def _bucket_period(starts: pd.Series) -> float | None:
    """The bucket length in ms (hour or day), so bars span their bucket instead of
    being centred on its start."""
    ordered = pd.Series(starts).dropna().drop_duplicates().sort_values()
    if ordered.empty:
        return None
    if len(ordered) == 1:  # one bucket: a local midnight starts a day, anything else an hour
        only = pd.Timestamp(ordered.iloc[0])
        return 86_400_000.0 if only == only.normalize() else 3_600_000.0
    step = ordered.diff().min()
    return 3_600_000.0 if step < pd.Timedelta(hours=23) else 86_400_000.0


def bucket_name(starts: pd.Series) -> str:
    """"hour" or "day": the bucket of a trend's ``bucket_start`` column (for descriptions)."""
    return "day" if _bucket_period(starts) == 86_400_000.0 else "hour"


def _period_axis(fig: go.Figure, starts: pd.Series) -> None:
    period = _bucket_period(starts)
    if period:
        fig.update_traces(xperiod=period, xperiodalignment="middle", selector=dict(type="bar"))
        fig.update_traces(xperiod=period, xperiodalignment="middle", selector=dict(type="scatter"))
        if period == 86_400_000.0:  # a day is a date: no 00:00 on ticks or in the hover
            fig.update_xaxes(tickformat="%b %d", dtick=period, ticklabelmode="period", hoverformat="%a %b %d, %Y")
        else:
            fig.update_xaxes(hoverformat="%b %d, %H:%M")


# ---------------------------------------------------------------------------------------------
# Overview
# ---------------------------------------------------------------------------------------------


def trend_figure(trend: pd.DataFrame, title: str = "Volume and delivery rate") -> go.Figure:
    """Stacked message counts per bucket by outcome, with the delivery rate as a line (right axis)."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for outcome, color in OUTCOME_COLORS.items():
        if outcome in trend:
            fig.add_bar(x=trend["bucket_start"], y=trend[outcome], name=outcome.capitalize(),
                        marker_color=color, secondary_y=False)
    if "delivery_rate" in trend:
        fig.add_scatter(x=trend["bucket_start"], y=trend["delivery_rate"], name="Delivery rate",
                        mode="lines+markers", line=dict(color=RATE_COLOR, width=2),
                        hovertemplate="%{y:.1%}", secondary_y=True)
    fig.update_layout(barmode="stack", hovermode="x unified")
    fig.update_yaxes(title_text="Messages", secondary_y=False, rangemode="tozero")
    fig.update_yaxes(title_text="Delivery rate", tickformat=".0%", range=[0, 1.05], secondary_y=True,
                     tickvals=[0, 0.25, 0.5, 0.75, 1], showgrid=False)
    _period_axis(fig, trend["bucket_start"])
    return style(fig, title, empty=None if len(trend) else "No messages sent in this period")


def rate_trend_figure(trends: dict[str, pd.DataFrame], title: str = "Delivery rate over time") -> go.Figure:
    """One delivery-rate line per named trend (campaign comparison). Buckets without a decided
    message (no rate) are bridged, so a campaign sent in bursts still reads as one line."""
    fig = go.Figure()
    for index, (name, frame) in enumerate(trends.items()):
        fig.add_scatter(x=frame["bucket_start"], y=frame["delivery_rate"], name=plotly_text(name),
                        mode="lines+markers", connectgaps=True, hovertemplate="%{y:.1%}", **series_style(index))
    fig.update_layout(hovermode="x unified")
    fig.update_yaxes(title_text="Delivery rate", tickformat=".0%", range=[0, 1.05])
    for frame in trends.values():
        _period_axis(fig, frame["bucket_start"])
        break
    rates = [frame["delivery_rate"].notna().any() for frame in trends.values() if len(frame)]
    return style(fig, title, empty=None if any(rates) else "No finished message in this period: no delivery rate")


def outcome_figure(breakdown: pd.DataFrame, title: str = "Outcomes") -> go.Figure:
    """A donut of messages by outcome."""
    colors = [OUTCOME_COLORS.get(o, "#999999") for o in breakdown["outcome"]]
    fig = go.Figure(go.Pie(labels=_texts(str(o).capitalize() for o in breakdown["outcome"]),
                           values=breakdown["messages"], hole=0.55, sort=False,
                           marker=dict(colors=colors), texttemplate="%{label}<br>%{percent:.1%}",
                           hovertemplate="%{label}: %{value:,} messages (%{percent})<extra></extra>"))
    fig.add_annotation(text=f"{format_count(breakdown['messages'].sum())}<br>messages<br>(pending included)",
                       showarrow=False, font=dict(size=16))
    return style(fig, title, legend=None)


def pending_ages_figure(ages: pd.DataFrame, buckets: tuple[str, ...] = (),
                        title: str = "Pending messages by age") -> go.Figure:
    """Bars of pending messages per age bucket (``buckets`` fixes the axis order and shows
    empty buckets), stacked by the status they are stuck at."""
    fig = go.Figure()
    for index, (status, part) in enumerate(ages.groupby("last_status", sort=True)):
        fig.add_bar(x=_texts(part["age_bucket"]), y=part["messages"], name=plotly_text(status),
                    marker=dict(color=SERIES_COLORS[index % len(SERIES_COLORS)],
                                pattern=dict(shape=["", "/", ".", "x", "-", "|", "+", "\\"][index % 8])),
                    hovertemplate="%{fullData.name}: %{y:,} messages<extra>%{x}</extra>")
    fig.update_layout(barmode="stack")
    if buckets:
        fig.update_xaxes(categoryorder="array", categoryarray=_texts(buckets), type="category",
                         range=[-0.5, len(buckets) - 0.5], tickvals=_texts(buckets))
    fig.update_yaxes(title_text="Messages", rangemode="tozero")
    fig = style(fig, title, legend="below")
    if ages.empty or int(ages["messages"].sum()) == 0:
        fig.add_annotation(text="No pending message: every message has a final receipt", showarrow=False,
                           xref="paper", yref="paper", x=0.5, y=0.6, font=dict(size=14, color="#555555"))
    return fig


# ---------------------------------------------------------------------------------------------
# Failures
# ---------------------------------------------------------------------------------------------


def reason_colors(frame: pd.DataFrame) -> dict[str, str]:
    """The reasons a failure figure of ``frame`` (reason, messages) draws, each with its colour:
    the most common first (ties by name), at most :data:`TOP_REASONS`, the last place going to
    :data:`OTHER_REASON` when there are more."""
    ranked = _by_total(frame, "reason") if len(frame) else []
    top = ranked if len(ranked) <= TOP_REASONS else ranked[:TOP_REASONS - 1]
    colors = {reason: REASON_PALETTE[index] for index, reason in enumerate(top)}
    if len(ranked) > len(top):
        colors[OTHER_REASON] = OTHER_COLOR
    return colors


def fold_other_reasons(frame: pd.DataFrame, keep, keys: list[str]) -> pd.DataFrame:
    """``frame`` with every reason outside ``keep`` summed into :data:`OTHER_REASON`, per ``keys``."""
    if frame.empty:
        return frame
    folded = frame.assign(reason=frame["reason"].where(frame["reason"].isin(list(keep)), OTHER_REASON))
    return folded.groupby(keys + ["reason"], as_index=False, sort=False)["messages"].sum()



def _by_total(frame: pd.DataFrame, column: str) -> list:
    """Values of ``column`` by their total ``messages``, largest first (ties by name)."""
    totals = frame.groupby(column)["messages"].sum().reset_index()
    return totals.sort_values(["messages", column], ascending=[False, True])[column].tolist()


def failure_reasons_figure(reasons: pd.DataFrame, title: str = "Failure reasons") -> go.Figure:
    """Horizontal bars, the most common reason on top."""
    colors = reason_colors(reasons)
    ranked = reasons.sort_values("messages")
    if "share" in ranked:  # the others folded into one bar, its share the sum of theirs
        ranked = (ranked.assign(reason=ranked["reason"].where(ranked["reason"].isin(list(colors)), OTHER_REASON))
                  .groupby("reason", as_index=False, sort=False)[["messages", "share"]].sum()
                  .sort_values(["messages", "reason"]))
    fig = go.Figure(go.Bar(x=ranked["messages"], y=_texts(ranked["reason"]), orientation="h",
                           marker_color=[colors.get(r, OTHER_COLOR) for r in ranked["reason"]],
                           customdata=ranked["share"] if "share" in ranked else None,
                           hovertemplate="%{y}: %{x:,} messages (%{customdata:.1%} of failed)<extra></extra>"))
    fig.update_xaxes(title_text="Failed messages")
    fig.update_yaxes(type="category")
    return style(fig, title, legend=None, height=max(280, 80 + 30 * len(ranked)),
                  empty=None if len(ranked) else "No failed messages in this period")


def failures_by_campaign_figure(by_campaign: pd.DataFrame, title: str = "Failure reasons by campaign",
                                legend: str = "below") -> go.Figure:
    """Stacked horizontal bars: one bar per campaign, one segment per reason.

    ``legend="bottom"`` puts the reasons under the bars, in rows, for a narrow (half-width)
    column, where a legend on the right would be taller than the bars and cut off; the figure
    grows by the legend's rows.
    """
    fig = go.Figure()
    colors = reason_colors(by_campaign)
    by_campaign = fold_other_reasons(by_campaign, colors, ["campaign"])
    for reason, color in colors.items():
        part = by_campaign[by_campaign["reason"] == reason]
        fig.add_bar(x=part["messages"], y=_texts(part["campaign"]), name=plotly_text(reason), orientation="h",
                    marker_color=color, hovertemplate="%{fullData.name}: %{x:,}<extra>%{y}</extra>")
    campaigns = by_campaign["campaign"].nunique()
    fig.update_layout(barmode="stack")
    fig.update_xaxes(title_text="Failed messages")
    # Most failures on top.
    fig.update_yaxes(type="category", categoryorder="array",
                     categoryarray=_texts(_by_total(by_campaign, "campaign")[::-1]))
    reasons = len(colors)
    height = max(300, 90 + 34 * campaigns)
    if legend == "bottom":
        height += LEGEND_ROW_PX * reasons + 10
    elif legend == "right":  # the legend gets the plot's height, so the plot must be as tall as the legend
        height = max(height, 140 + LEGEND_ROW_PX * reasons)
    else:
        height += 2 * LEGEND_ROW_PX + 10
    return style(fig, title, legend=legend, height=height,
                  empty=None if campaigns else "No failed messages in this period")


def failures_over_time_figure(over_time: pd.DataFrame, title: str = "Failures over time") -> go.Figure:
    """Stacked bars of failed messages per bucket by reason."""
    fig = go.Figure()
    colors = reason_colors(over_time)
    starts = over_time["bucket_start"]
    over_time = fold_other_reasons(over_time, colors, ["bucket_start"])
    for reason, color in colors.items():
        part = over_time[over_time["reason"] == reason]
        fig.add_bar(x=part["bucket_start"], y=part["messages"], name=plotly_text(reason), marker_color=color)
    fig.update_layout(barmode="stack", hovermode="x unified")
    fig.update_yaxes(title_text="Failed messages", rangemode="tozero")
    _period_axis(fig, starts)
    return style(fig, title, legend="below", empty=None if len(colors) else "No failed messages in this period")


# ---------------------------------------------------------------------------------------------
# Latency
# ---------------------------------------------------------------------------------------------


def _log_time_axis(fig: go.Figure, values: pd.Series, axis: str = "x", title: str = "Time to deliver") -> None:
    """A log axis labelled with durations, covering ``values`` (seconds)."""
    positive = values[values > 0]
    low = positive.min() if len(positive) else 1.0
    high = positive.max() if len(positive) else 60.0
    ticks = [t for t in TIME_TICKS if low / 10 <= t <= high * 10] or list(TIME_TICKS)
    settings = dict(type="log", title_text=title, tickvals=ticks, ticktext=[TIME_TICKS[t] for t in ticks],
                    tickangle=0)
    (fig.update_xaxes if axis == "x" else fig.update_yaxes)(**settings)


def _merge_buckets(distribution: pd.DataFrame, bins: int) -> pd.DataFrame:
    """The buckets of ``distribution`` (from_s, to_s, messages; ~2 % wide) merged into at
    most ``bins`` runs of consecutive buckets, evenly spaced on a log axis: from_s, to_s,
    messages per run. Counts stay exact; edges are bucket edges."""
    low, high = np.log10(distribution["from_s"].min()), np.log10(distribution["to_s"].max())
    width = max(high - low, 1e-9) / bins
    run = np.minimum(((np.log10(distribution["from_s"]) - low) // width).astype(int), bins - 1)
    return (distribution.assign(run=run).groupby("run", as_index=False)
            .agg(from_s=("from_s", "min"), to_s=("to_s", "max"), messages=("messages", "sum")))


def latency_histogram_figure(distribution: pd.DataFrame, bins: int = 40,
                             title: str = "Time to deliver: distribution") -> go.Figure:
    """Message counts in log-spaced time bins, drawn as a step area on a log time axis.

    ``distribution``: :func:`dashboard.queries.latency_distribution` (one group); its
    buckets are merged into at most ``bins`` bins. Every bin is one step (y: its messages,
    from its start); a gap without messages drops to zero; the last point closes the step."""
    fig = go.Figure()
    positive = distribution[(distribution["to_s"] > 0) & (distribution["messages"] > 0)]
    if len(positive):
        merged = _merge_buckets(positive.assign(from_s=positive["from_s"].clip(lower=1e-6)), bins)
        x, y, ends = [], [], []
        for start, end, messages, following in zip(merged["from_s"], merged["to_s"], merged["messages"],
                                                   list(merged["from_s"][1:]) + [None]):
            x.append(start)
            y.append(int(messages))
            ends.append(end)
            if following is not None and following > end:  # no message between: back to zero
                x.append(end)
                y.append(0)
                ends.append(following)
        x.append(merged["to_s"].iloc[-1])
        y.append(y[-1])
        ends.append(merged["to_s"].iloc[-1])
        fig.add_scatter(x=x, y=y, mode="lines", line_shape="hv", fill="tozeroy",
                        line=dict(color=OUTCOME_COLORS["delivered"]), name="Messages", customdata=ends,
                        hovertemplate="%{x:.3~s}s - %{customdata:.3~s}s: %{y:,} messages<extra></extra>")
    fig.update_yaxes(title_text="Messages", rangemode="tozero")
    _log_time_axis(fig, pd.concat([positive["from_s"], positive["to_s"]]))
    return style(fig, title, legend=None)


def latency_cdf_figure(distribution: pd.DataFrame, by_campaign: list[str] | None = None,
                       title: str = "Time to deliver: cumulative") -> go.Figure:
    """Share of delivered messages delivered within x: one curve, or one per campaign in
    ``by_campaign`` (in that order, so colours match other figures drawn in the same order).

    ``distribution``: :func:`dashboard.queries.latency_distribution` (with ``by_campaign``,
    its by-campaign form). Each point is a bucket's upper edge and the exact share of the
    group's latencies below it; the curve starts at 0 at the first bucket's lower edge."""
    fig = go.Figure()
    if by_campaign:
        groups = [(name, distribution[distribution["campaign"] == name]) for name in by_campaign]
    else:
        groups = [("All", distribution)]
    for name, part in groups:
        part = part[part["to_s"] > 0]
        if not len(part):
            continue
        x = np.concatenate([[max(part["from_s"].iloc[0], 1e-6)], part["to_s"].to_numpy(float)])
        shares = np.concatenate([[0.0], part["cumulative_share"].to_numpy(float)])
        fig.add_scatter(x=x, y=shares, name=plotly_text(name), mode="lines",
                        hovertemplate="%{y:.1%} within %{x:.3~s}s<extra>%{fullData.name}</extra>")
    fig.update_yaxes(title_text="Share delivered", tickformat=".0%", range=[0, 1.02])
    _log_time_axis(fig, pd.concat([distribution["from_s"], distribution["to_s"]]).astype(float))
    return style(fig, title, legend="top" if by_campaign else None)


def percentiles_by_campaign_figure(by_campaign: pd.DataFrame,
                                   title: str = "Time to deliver percentiles by campaign") -> go.Figure:
    """p50/p90/p95/p99 per campaign as points on a log time axis (a bar's length on a log axis
    means nothing), each percentile its own colour and symbol; a thin line joins a campaign's
    p50 to its p99, so the spread reads at a glance."""
    fig = go.Figure()
    names = _texts(by_campaign["campaign"])
    if {"p50_s", "p99_s"} <= set(by_campaign.columns):
        xs, ys = [], []
        for name, low, high in zip(names, by_campaign["p50_s"], by_campaign["p99_s"]):
            xs += [name, name, None]
            ys += [low, high, None]
        fig.add_scatter(x=xs, y=ys, mode="lines", line=dict(color="#bbbbbb", width=2), hoverinfo="skip",
                        showlegend=False)
    for column, label in (("p50_s", "p50"), ("p90_s", "p90"), ("p95_s", "p95"), ("p99_s", "p99")):
        if column in by_campaign:
            fig.add_scatter(x=names, y=by_campaign[column], name=label, mode="markers",
                            marker=dict(color=PERCENTILE_COLORS[label], symbol=PERCENTILE_SYMBOLS[label], size=11,
                                        line=dict(width=1, color="white")),
                            customdata=[format_duration(v) for v in by_campaign[column]],
                            hovertemplate=f"{label}: " + "%{customdata}<extra>%{x}</extra>")
    fig.update_xaxes(type="category")
    values = pd.concat([by_campaign[c] for c in ("p50_s", "p99_s") if c in by_campaign] or [pd.Series(dtype=float)])
    _log_time_axis(fig, values.astype(float), axis="y")
    return style(fig, title, empty=None if len(by_campaign) else "No delivered message with a time to deliver")


# ---------------------------------------------------------------------------------------------
# Data health
# ---------------------------------------------------------------------------------------------


def receipts_per_minute_figure(per_minute: pd.DataFrame, now: pd.Timestamp | None = None,
                               title: str = "Receipts received per minute") -> go.Figure:
    """Receipts per minute of arrival at the collector, one bar per minute (``minute`` is its start).

    The time axis spans at least :data:`PER_MINUTE_WINDOW`, ending after the last minute with
    receipts, or at ``now`` (same time zone as ``minute``) while the last receipt is less than
    a window old, so a pause in arrivals shows as empty minutes at the right. Ticks read as
    clock minutes (with the day when the axis spans more than one).
    """
    span = per_minute_range(per_minute["minute"], now)
    # A gap between bars while they are wide enough to show one; solid bars (no faint slivers) else.
    narrow = span is not None and span[1] - span[0] > 3 * PER_MINUTE_WINDOW
    fig = go.Figure(go.Bar(x=per_minute["minute"], y=per_minute["receipts"], marker_color=RATE_COLOR,
                           marker_line_width=0, width=MINUTE_MS * (1.0 if narrow else 0.85), offset=0,
                           hovertemplate="%{x|%H:%M}: %{y:,} receipts<extra></extra>"))
    fig.update_yaxes(title_text="Receipts", rangemode="tozero")
    if span is not None:
        same_day = span[0].date() == (span[1] - pd.Timedelta(microseconds=1)).date()
        fig.update_xaxes(range=list(span), tickformat="%H:%M" if same_day else "%b %d %H:%M",
                         hoverformat="%H:%M")
    return style(fig, title, legend=None)


def per_minute_range(minutes: pd.Series, now: pd.Timestamp | None = None,
                     window: timedelta = PER_MINUTE_WINDOW) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """The time axis of :func:`receipts_per_minute_figure`: (start, end), at least ``window``
    long, covering every minute in ``minutes`` (bar starts) to its end; None without data."""
    minutes = pd.Series(minutes).dropna()
    if minutes.empty:
        return None
    first, end = minutes.min(), minutes.max() + pd.Timedelta(minutes=1)
    if now is not None:
        now_end = pd.Timestamp(now).floor("min") + pd.Timedelta(minutes=1)
        if end < now_end <= end + window:
            end = now_end
    return min(first, end - window), end
