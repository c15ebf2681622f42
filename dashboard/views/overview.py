"""Overview page: KPI cards against the previous period, trend, outcomes, pending ages."""

from __future__ import annotations

import streamlit as st

from dashboard import catalog, charts, downloads, queries, state
from dashboard.safe_text import md_text

# (kpis() column, card label, True when a rise is bad news). Values are formatted by the
# column's unit (downloads.format_value), as in the tables, so a card and a cell read the same.
CARDS = [
    ("messages", "Messages", False),
    ("delivered", "Delivered", False),
    ("failed", "Failed", True),
    ("unknown", "Unknown", True),
    ("pending", "Pending", True),
    ("delivery_rate", "Delivery rate", False),
    ("latency_p50_s", "Time to deliver p50", True),
    ("latency_p95_s", "Time to deliver p95", True),
]
# Short, so it fits beside a long change ("-2 min 45 s") in a quarter-width card.
DELTA_DESCRIPTION = "vs previous"


def delta_text(change, unit: str) -> str | int | None:
    """A card's change against the previous period, in the value's own unit (shares in
    percentage points); 0 when flat (shown grey, without an arrow); None when not comparable."""
    text = charts.format_change(change, unit)
    return 0 if text == "0" else text


def overview() -> None:
    st.title("Overview")
    if not state.data_notice():
        return

    @state.live
    def figures() -> None:
        f = state.filters()
        state.scope_header(f)
        kpis = state.cached(queries.kpis_with_change, f).set_index("metric")
        # A previous period without messages is no baseline: "+4,000 vs previous" would read as growth.
        empty_before = f.previous_period() is not None and kpis.at["messages", "previous"] == 0
        with st.grid(4, min_column_width=150, key="kpi_cards"):  # two a row on a phone
            for metric, label, rise_is_bad in CARDS:
                unit = downloads.unit_of(metric)
                change = None if empty_before else delta_text(kpis.at[metric, "change"], unit)
                st.metric(label, downloads.format_value(metric, kpis.at[metric, "value"]), delta=change, border=True,
                          height="stretch", delta_color="inverse" if rise_is_bad else "normal",
                          help=catalog.kpi(metric).definition,
                          delta_description=DELTA_DESCRIPTION if change is not None else None)
        if f.previous_period() is None:
            st.caption("Changes against the previous period show for a bounded date range (not *All time*).")
        elif empty_before:
            st.caption(f"No change shown: no data in the previous period ({md_text(state.scope_of(f).previous_text())}) "
                       "to compare with.")
        else:
            st.caption("Changes compare with the previous period of the same length.")
        if not state.no_match_notice(int(kpis.at["messages", "value"])):
            return

        trend = state.cached(queries.trend, f, None)
        st.plotly_chart(charts.trend_figure(trend), key="overview_trend",
                        alt=f"Stacked bars: messages per {charts.bucket_name(trend['bucket_start'])} by outcome "
                            f"(delivered, failed, unknown, pending), {charts.format_count(trend['messages'].sum())} "
                            "in all; a line: the delivery rate of each bucket, on the right axis.")
        state.uncharted_notice(f)
        left, right = st.columns(2)
        with left:
            breakdown = state.cached(queries.outcome_breakdown, f)
            st.plotly_chart(charts.outcome_figure(breakdown), key="overview_outcomes",
                            alt="Donut of messages by outcome: " + ", ".join(
                                f"{o} {charts.format_count(m)}" for o, m in zip(breakdown["outcome"], breakdown["messages"]))
                                + ".")
            st.caption("Shares of all messages, pending ones included; the delivery rate card leaves pending "
                       "messages out (delivered / finished messages), so the two differ while messages are pending.")
        with right:
            ages = state.cached(queries.pending_ages, f, state.minute_now())
            st.plotly_chart(charts.pending_ages_figure(ages, queries.AGE_BUCKETS), key="overview_pending",
                            alt=f"Bars: {charts.format_count(ages['messages'].sum())} pending messages by how long "
                                "they have waited (<1 h, 1-24 h, 1-3 d, >3 d), stacked by the status they are stuck at.")

        with st.expander("Tables behind these figures"):
            for title, frame, view in (("KPIs against the previous period", kpis.reset_index(), "kpis"),
                                       ("Volume and delivery rate", trend, "trend"),
                                       ("Outcomes", breakdown, "outcomes"),
                                       ("Pending messages by age and status", ages, "pending-ages")):
                st.markdown(f"**{title}**")
                downloads.show_table(frame, view, f)
        st.markdown("**Export**")
        downloads.export_buttons(f)

    figures()


if __name__ == "__main__":
    overview()
