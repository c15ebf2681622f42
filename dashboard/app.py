"""dlrlens dashboard: the Streamlit entry point.

Run ``streamlit run dashboard/app.py -- --data DIR`` (or set ``DLRLENS_DATA``; default
``data/``), or ``dlrlens dashboard``. This file only routes: it renders the shared sidebar
filters (``dashboard/state.py``) and runs the chosen page, one file per page in
``dashboard/views/``, each a single function.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run dashboard/app.py` puts dashboard/ on sys.path, not the repository root.
_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import streamlit as st  # noqa: E402

from dashboard import auth, downloads, state  # noqa: E402

VIEWS = Path(__file__).resolve().parent / "views"
# Served by the app itself (a Material icon as page_icon is fetched from a font CDN: no icon
# offline, and a request to a third party from every viewer).
FAVICON = Path(__file__).resolve().parent / "assets" / "favicon.png"
# The accent colour: a blue, so selected filters and primary buttons do not read as errors
# (Streamlit's default accent is red). Passed to Streamlit as --theme.primaryColor by
# `dlrlens dashboard` (dlrlens.cli.dashboard_command).
ACCENT = "#1f5fa8"
# What the theme cannot say:
# * nav links and buttons get a visible keyboard focus ring;
# * on a phone (narrow screens) Plotly's mode bar, which covers the chart titles, is hidden
#   (zoom by pinching still works), and card values are smaller so "3 min 54 s" fits half a
#   phone's width;
# * the grid's own "Download as CSV" is hidden: it writes the shown text without the scope
#   line; each table's CSV and Excel buttons carry the exact values and what they cover.
STYLE = f"""<style>
[data-testid="stSidebarNavLink"]:focus-visible, button:focus-visible, a:focus-visible,
[role="option"]:focus-visible {{ outline: 3px solid {ACCENT} !important; outline-offset: 2px; }}
[data-testid="stElementToolbar"] button[aria-label="Download as CSV"] {{ display: none; }}
@media (max-width: 640px) {{ .js-plotly-plot .modebar-container {{ display: none !important; }}
  [data-testid="stMetricValue"] {{ font-size: 1.75rem; }} }}
</style>"""

PAGES = {
    "Delivery": [
        st.Page(VIEWS / "overview.py", title="Overview", icon=":material/dashboard:", default=True,
                help="Delivery KPIs against the previous period, volume and delivery rate over time, "
                     "outcomes and how long pending messages have waited."),
        st.Page(VIEWS / "campaigns.py", title="Campaigns", icon=":material/campaign:",
                help="Every KPI per campaign; pick campaigns to drill in and compare side by side."),
        st.Page(VIEWS / "failures.py", title="Failures", icon=":material/error:",
                help="Failure reasons ranked, by campaign and over time, with what each status means."),
        st.Page(VIEWS / "latency.py", title="Latency", icon=":material/timer:",
                help="How long messages took to be delivered: distribution, cumulative curve, "
                     "percentiles by campaign."),
        st.Page(VIEWS / "funnel.py", title="Funnel", icon=":material/filter_alt:",
                help="Sent, delivered, clicked, replied, opted out per campaign; clicks over time, by "
                     "country, OS and browser; the top links."),
        st.Page(VIEWS / "geography.py", title="Where", icon=":material/public:",
                help="Delivery rate, failures and cost by country, original network, sender ID and route "
                     "(from Mobivate's send records, `dlrlens sync`)."),
    ],
    "Investigate": [
        st.Page(VIEWS / "lookup.py", title="Message lookup", icon=":material/search:",
                help="Every receipt of a message, found by deliveryMessageId, clientReference or batchId."),
        st.Page(VIEWS / "health.py", title="Data health", icon=":material/monitor_heart:",
                help="Is data arriving? Receipts per minute, duplicates, regressions, rejected "
                     "requests and unknown statuses."),
        st.Page(VIEWS / "alerts.py", title="Alerts", icon=":material/notifications:",
                help="Alert rules, what is firing, silences, notify channels and the notification history."),
    ],
}


def main() -> None:
    st.set_page_config(page_title="dlrlens", page_icon=str(FAVICON), layout="wide")
    st.html(STYLE)
    downloads.expire_files_with_session()
    auth.require_login()
    page = st.navigation(PAGES)
    st.set_page_config(page_title=f"{page.title} · dlrlens")  # each page its own browser title
    state.sidebar()
    auth.sign_out_button()
    page.run()


main()
