"""Campaigns page: every KPI per campaign, searchable; drill into and compare campaigns.

Campaign names are whatever a webhook caller sent: shown in Markdown only through
``safe_text.md_text`` (the tables, the multiselect's options and the figures show them as text).
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import catalog, charts, downloads, queries, sends_ui, state
from dashboard.safe_text import md_text

COMPARE_LIMIT = 4
# (column, label) of the side-by-side comparison cards
COMPARE_CARDS = [
    ("messages", "Messages"),
    ("delivery_rate", "Delivery rate"),
    ("failed", "Failed"),
    ("pending", "Pending"),
    ("latency_p50_s", "Time to deliver p50"),
    ("latency_p95_s", "Time to deliver p95"),
]


def bucket_of(trend) -> str:
    """'hour' or 'day': the bucket size the query chose for ``trend`` (read from its spacing)."""
    starts = trend["bucket_start"].sort_values()
    if len(starts) < 2:
        return "day"
    return "hour" if starts.diff().min() < pd.Timedelta(hours=23) else "day"


def campaigns() -> None:
    st.title("Campaigns")
    if not state.data_notice():
        return

    @state.live
    def figures() -> None:
        f = state.filters()
        state.scope_header(f)
        # The report's Campaigns sheet (per-receipt, funnel and cost columns): screen, table
        # downloads and `dlrlens report` have the same rows and columns in the same order;
        # tests/dashboard/test_agreement.py checks it.
        table = state.cached(queries.campaign_table, f)
        if not state.no_match_notice(int(table["messages"].sum()) if len(table) else 0):
            return
        # One row per campaign with messages for the chart (a campaign billed in two currencies
        # has two rows; one only in Mobivate's log, none of its receipts here, has no rate).
        sends_ui.campaigns_glance(state, f, table[table["messages"] > 0].drop_duplicates("campaign"))
        ordered = list(table.columns)
        search = st.text_input("Search campaigns", key="campaign_search", placeholder="Part of a campaign name",
                               icon=":material/search:")
        shown = table[ordered]
        if search:
            shown = shown[shown["campaign"].str.contains(search.strip(), case=False, regex=False)]
        st.caption(f"{len(shown)} of {len(table)} campaigns. Click a column header to sort.")
        downloads.show_table(shown, "campaigns", f)

        # Options travel to the browser on every rerun: offer the campaigns chosen and the busiest
        # of the table as searched (the search box above reaches the others).
        known = set(table["campaign"])
        offered = [c for c in st.session_state.get("campaign_compare", []) if c in known]
        offered += [c for c in shown["campaign"].head(queries.OPTION_LIMIT) if c not in offered]
        chosen = st.multiselect(
            "Drill into campaigns", offered, key="campaign_compare",
            max_selections=COMPARE_LIMIT, placeholder=f"Pick up to {COMPARE_LIMIT} campaigns to compare",
        )
        if not chosen:
            st.caption("Pick one or several campaigns to see their trend, failure reasons and latency side by side.")
            return
        selected = table.drop_duplicates("campaign").set_index("campaign").loc[chosen]
        columns = st.columns(len(chosen), border=True)
        for column, name in zip(columns, chosen):
            with column:
                st.subheader(md_text(name), anchor=False)
                with st.grid(2 if len(chosen) <= 2 else 1):  # keep values readable in narrow columns
                    for metric, label in COMPARE_CARDS:
                        st.metric(label, downloads.format_value(metric, selected.at[name, metric]),
                                  help=catalog.kpi(metric).definition)

        narrowed = state.with_campaigns(f, chosen)
        # One bucket size for every line, chosen (hour/day) for the chosen campaigns together.
        bucket = bucket_of(state.cached(queries.trend, narrowed, None))
        trends = {name: state.cached(queries.trend, state.with_campaigns(f, [name]), bucket) for name in chosen}
        st.plotly_chart(charts.rate_trend_figure(trends), key="campaign_rate_trend",
                        alt=f"Lines: the delivery rate per {bucket} of each chosen campaign, one line each.")
        state.uncharted_notice(narrowed)
        left, right = st.columns(2)
        with left:
            reasons = state.cached(queries.failure_reasons_by_campaign, narrowed)
            st.plotly_chart(charts.failures_by_campaign_figure(reasons, legend="bottom"), key="campaign_failures",
                            alt="Stacked horizontal bars: failed messages of each chosen campaign by failure reason.")
        with right:
            distribution = state.cached(queries.latency_distribution, narrowed, True)
            st.plotly_chart(charts.latency_cdf_figure(distribution, by_campaign=chosen), key="campaign_latency",
                            alt="Curves: share of each chosen campaign's delivered messages delivered within a time "
                                "(log time axis).")
        st.markdown("**Failure reasons of the chosen campaigns**")
        downloads.show_table(reasons, "campaign-failure-reasons", narrowed)
        st.markdown("**Time to deliver of the chosen campaigns**")
        downloads.show_table(state.cached(queries.latency_by_campaign, narrowed), "campaign-latency", narrowed)
        st.markdown("**Export the chosen campaigns**")
        downloads.export_buttons(narrowed, key="campaign_export")

    figures()
    sends_ui.receipts_missing_section(state, state.filters())
    sends_ui.names_upload(state.data_dir())


if __name__ == "__main__":
    campaigns()
