"""Where page: delivery rate, failures and cost by the recipient's country and original
network, the sender ID and the route, from Mobivate's send records joined to the receipts
(``dlrlens sync``). The sidebar's country/network/sender/route filters apply here.

Networks and sender IDs are data: tables show them as text, figures through ``plotly_text``.
"""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from dashboard import catalog, downloads, queries, state
from dashboard.charts import RATE_COLOR, style, _texts
from dlrlens.store import sends

CHART_VALUES = 20


def rate_figure(table, dimension: str, label: str) -> go.Figure:
    """Delivery rate of the busiest values of ``dimension``, volume in the bar labels."""
    top = table.head(CHART_VALUES).sort_values("delivery_rate", na_position="first")
    fig = go.Figure(go.Bar(y=_texts(top[dimension]), x=top["delivery_rate"], orientation="h", marker_color=RATE_COLOR,
                           text=[f"{m:,} msgs" for m in top["messages"]], textposition="auto",
                           hovertemplate="%{y}<br>delivery rate %{x:.1%}<extra></extra>"))
    fig.update_yaxes(type="category", automargin=True)
    fig.update_xaxes(tickformat=".0%", range=[0, 1])
    return style(fig, f"Delivery rate by {label.lower()}", legend=None, height=max(260, 100 + 22 * len(top)))


def where() -> None:
    st.title("Where")
    if not state.data_notice():
        return
    if not sends.has_sends(state.store().data_dir):
        st.info("Country, network, sender ID, route and cost come from Mobivate's message log. Set MOBIVATE_API_KEY "
                "and run `dlrlens sync --from DATE --to DATE` (the collector then syncs by itself).",
                icon=":material/public:")
        return

    @state.live
    def figures() -> None:
        f = state.filters()
        state.scope_header(f)
        st.caption("Messages with receipts, by their send record. A message not in the synced log, or whose number "
                   "did not parse, is under (unknown). Networks are the original network of the number's prefix: "
                   "numbers get ported.")
        tabs = st.tabs(list(queries.DIMENSIONS.values()))
        for tab, (dimension, label) in zip(tabs, queries.DIMENSIONS.items()):
            with tab:
                table = state.cached(queries.where_table, f, dimension)
                if table.empty:
                    st.caption("No message matches the filters.")
                    continue
                st.plotly_chart(rate_figure(table.drop_duplicates(dimension), dimension, label),
                                key=f"where_{dimension}")
                st.caption(catalog.kpi("delivery_rate").definition + " " + catalog.kpi("cost").definition)
                downloads.show_table(table, f"where-{dimension}", f)

    figures()


if __name__ == "__main__":
    where()
