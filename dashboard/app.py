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
    ],
}


def main() -> None:
    st.set_page_config(page_title="dlrlens", page_icon=":material/sms:", layout="wide")
    downloads.expire_files_with_session()
    auth.require_login()
    page = st.navigation(PAGES)
    state.sidebar()
    auth.sign_out_button()
    page.run()


main()
