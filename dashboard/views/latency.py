"""Latency page: how long delivered messages took, as a distribution, a cumulative curve and
percentiles by campaign."""

from __future__ import annotations

import streamlit as st

from dashboard import catalog, charts, downloads, queries, state

PERCENTILE_CARDS = [("latency_p50_s", "p50"), ("latency_p90_s", "p90"), ("latency_p95_s", "p95"),
                    ("latency_p99_s", "p99")]
SHOWN_MESSAGES = 1000  # rows of "Every measured message" on screen (the downloads hold all)
WITHIN_CARDS = [("within_10s", "Within 10 s"), ("within_1m", "Within 1 min"), ("within_5m", "Within 5 min"),
                ("within_1h", "Within 1 h")]


def latency() -> None:
    st.title("Latency")
    if not state.data_notice():
        return

    @state.live
    def figures() -> None:
        f = state.filters()
        state.scope_header(f)
        kpi = state.cached(queries.kpis, f)
        if not state.no_match_notice(int(kpi["messages"].iloc[0]) if len(kpi) else 0):
            return
        row = kpi.iloc[0]
        measured = int(row["latency_messages"])
        st.caption(
            f"Time to deliver = first DELIVERED receipt minus the message's first receipt, over "
            f"{charts.format_count(measured)} delivered messages. "
            f"{charts.format_count(row['delivered_without_earlier'])} delivered messages had no earlier "
            "receipt and are left out."
        )
        if measured == 0:
            st.info("No delivered message with an earlier receipt matches these filters, so there is no "
                    "time to deliver to show.", icon=":material/timer_off:")
            return
        with st.grid(4, min_column_width=150):  # two a row on a phone
            for column, label in PERCENTILE_CARDS:
                st.metric(f"Time to deliver {label}", downloads.format_value(column, row[column]), border=True,
                          help=catalog.kpi(column).definition)
            for column, label in WITHIN_CARDS:
                st.metric(f"Delivered {label.lower()}", downloads.format_value(column, row[column]), border=True,
                          help=catalog.kpi(column).definition)

        from_submission(f)

        distribution = state.cached(queries.latency_distribution, f)
        left, right = st.columns(2)
        with left:
            st.plotly_chart(charts.latency_histogram_figure(distribution), key="latency_histogram",
                            alt="Step chart: delivered messages by time to deliver, on a log time axis.")
        with right:
            st.plotly_chart(charts.latency_cdf_figure(distribution), key="latency_cdf",
                            alt="Curve: share of delivered messages delivered within a time, on a log time axis.")
        by_campaign = state.cached(queries.latency_by_campaign, f)
        st.plotly_chart(charts.percentiles_by_campaign_figure(by_campaign), key="latency_by_campaign",
                        alt="Points: the 50th, 90th, 95th and 99th percentile of the time to deliver of each "
                            "campaign, on a log time axis; the table below holds the values.")
        downloads.show_table(by_campaign, "latency-by-campaign", f)
        # on_change="rerun": the expander's body runs only while it is open (a month at scale
        # has millions of measured messages; even picking the slowest reads them all).
        rows = st.expander("Every measured message", key="latency_rows", on_change="rerun")
        with rows:
            if rows.open:
                slowest = state.cached(queries.slowest_latencies, f, SHOWN_MESSAGES)
                st.caption(f"The {charts.format_count(len(slowest))} slowest of {charts.format_count(measured)} "
                           "measured messages. The downloads hold every one, by campaign and time to deliver.")
                downloads.show_table(slowest, "latencies", f, links=("delivery_message_id",),
                                     files=downloads.latency_downloads(state.store(), f, measured, state.scope_of(f)))

    figures()


def from_submission(f) -> None:
    """Time from submission (Mobivate's log created time) beside the time to deliver, for the
    delivered messages whose send record is synced; says what it needs when none is."""
    row = state.cached(queries.submission_latency, f).iloc[0]
    count = int(row["latency_from_submission_messages"])
    if count == 0:
        st.caption("Time from submission (Mobivate's own created time to delivery) needs its send records: "
                   "`dlrlens sync`, or the collector with MOBIVATE_API_KEY set.")
        return
    with st.grid(4, min_column_width=150):
        for column in queries.SUBMISSION_COLUMNS:
            st.metric(catalog.label(column).removesuffix(" (s)"), downloads.format_value(column, row[column]),
                      border=True, help=catalog.kpi(column).definition)
    st.caption(f"Time from submission over {charts.format_count(count)} delivered messages with a Mobivate log "
               "record; the time to deliver above starts at the first receipt instead.")


if __name__ == "__main__":
    latency()

