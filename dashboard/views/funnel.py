"""Funnel page: per campaign, sent -> delivered -> clicked -> replied -> opted out; rates
compared across campaigns; clicks over time, by country / OS / browser; the top links.

Every sidebar filter applies to the messages; their clicks and replies follow them, whenever they
came (see the Click and Reply terms). Clicks and replies that match no stored message are
counted apart, under the figures. Campaign names, URLs and click attributes come from webhook
callers: tables show them as text, figures through ``plotly_text``.
"""

from __future__ import annotations

import streamlit as st

from dashboard import catalog, charts, downloads, funnel_charts, queries, state

CARDS = ["delivered", "clicked", "click_rate", "clicks", "replied", "opted_out", "opt_out_rate",
         "click_delay_p50_s"]
TOP_LINKS = 20


def funnel() -> None:
    st.title("Funnel")
    if not state.data_notice():
        return

    @state.live
    def figures() -> None:
        f = state.filters()
        state.scope_header(f)
        total = state.cached(queries.funnel, f)
        if not state.no_match_notice(int(total["messages"].iloc[0]) if len(total) else 0):
            return
        row = total.iloc[0]
        with st.grid(4):
            for column in CARDS:
                st.metric(catalog.kpi(column).label, downloads.format_value(column, row[column]), border=True,
                          help=catalog.kpi(column).definition)
        unlinked = state.cached(queries.unlinked_events, f).iloc[0]
        st.caption(
            f"Clicks and replies count with their message (its sent time and filters). In the date range, "
            f"{charts.format_count(unlinked['unlinked_clicks'])} of {charts.format_count(unlinked['clicks'])} clicks "
            f"and {charts.format_count(unlinked['unlinked_replies'])} of {charts.format_count(unlinked['replies'])} "
            f"replies match no stored message yet (they count once their message's receipts arrive); "
            f"{charts.format_count(unlinked['batch_linked_replies'])} replies are linked by their batch only."
        )
        per_campaign = state.cached(queries.funnel, f, True)
        st.plotly_chart(funnel_charts.funnel_figure(total, per_campaign), key="funnel_chart")
        st.plotly_chart(funnel_charts.rates_figure(per_campaign), key="funnel_rates")
        downloads.show_table(per_campaign, "funnel-by-campaign", f)

        over_time, bucket = state.cached(queries.clicks_over_time, f, None)
        if over_time.empty:
            st.info("No click on the messages matching these filters yet.", icon=":material/ads_click:")
            return
        st.plotly_chart(funnel_charts.clicks_over_time_figure(over_time, bucket), key="funnel_clicks_time")
        for column, (by, title) in zip(st.columns(3), (("country", "Clicks by country"), ("os", "Clicks by OS"),
                                                       ("browser", "Clicks by browser"))):
            with column:
                st.plotly_chart(funnel_charts.breakdown_figure(state.cached(queries.click_breakdown, f, by), title),
                                key=f"funnel_by_{by}")
        st.markdown(f"**Top links** (the {TOP_LINKS} most clicked)")
        downloads.show_table(state.cached(queries.top_links, f, TOP_LINKS), "funnel-top-links", f)

    figures()


if __name__ == "__main__":
    funnel()
