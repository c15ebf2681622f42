"""Failures page: failure reasons ranked, by campaign and over time; what each status means."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dlrlens.statuses import status_table
from dashboard import charts, downloads, queries, state


def failures() -> None:
    st.title("Failures")

    @state.live
    def figures() -> None:
        f = state.filters()
        state.scope_header(f)
        reasons = state.cached(queries.failure_reasons, f)
        failed = int(reasons["messages"].sum()) if len(reasons) else 0
        kpi = state.cached(queries.kpis, f)
        if not state.no_match_notice(int(kpi["messages"].iloc[0]) if len(kpi) else 0):
            return
        if failed == 0:
            st.success("No failed messages match these filters.", icon=":material/check_circle:")
            return
        st.caption(f"{charts.format_count(failed)} failed messages. A failed message's reason is the "
                   "status of its deciding final receipt.")
        st.plotly_chart(charts.failure_reasons_figure(reasons), key="failure_reasons",
                        alt="Horizontal bars: failed messages by reason, most common first: " + ", ".join(
                            f"{r} {charts.format_count(m)}" for r, m in zip(reasons["reason"][:5], reasons["messages"][:5]))
                            + (", and others." if len(reasons) > 5 else "."))
        downloads.show_table(reasons, "failure-reasons", f)
        by_campaign = state.cached(queries.failure_reasons_by_campaign, f)
        st.plotly_chart(charts.failures_by_campaign_figure(by_campaign), key="failures_by_campaign",
                        alt="Stacked horizontal bars: failed messages of each campaign by failure reason.")
        over_time = state.cached(queries.failure_reasons_over_time, f, None)
        st.plotly_chart(charts.failures_over_time_figure(over_time), key="failures_over_time",
                        alt="Stacked bars: failed messages over time by failure reason.")
        state.uncharted_notice(f, "failed")
        with st.expander("Tables behind these figures"):
            st.markdown("**By campaign**")
            downloads.show_table(by_campaign, "failure-reasons-by-campaign", f)
            st.markdown("**Over time**")
            downloads.show_table(over_time, "failure-reasons-over-time", f)

    if state.data_notice():
        figures()

    st.subheader("What Mobivate's statuses mean", anchor=False)
    meanings = pd.DataFrame([vars(s) for s in status_table()]).rename(columns={"name": "status"})
    downloads.show_table(meanings, "statuses", state.filters())
    st.caption("A status name Mobivate sends that is not in this table counts as an *unknown* outcome.")


if __name__ == "__main__":
    failures()
