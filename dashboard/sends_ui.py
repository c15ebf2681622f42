"""Dashboard parts over Mobivate's send records (``dlrlens sync``): the campaigns-at-a-glance
chart, the campaign cost table, the names CSV upload, the receipts-missing list and the sync
state. Pages call these sections; the figure builders are pure (testable without Streamlit).

Campaign names, sender IDs and networks are data: shown through ``safe_text`` (figures:
:func:`~dashboard.safe_text.plotly_text`; Markdown: :func:`~dashboard.safe_text.md_text`).
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboard import catalog
from dashboard.charts import RATE_COLOR, style, _texts, format_count, format_duration
from dashboard.safe_text import md_text

GLANCE_LIMIT = 25  # campaigns in the at-a-glance chart (the busiest)


def glance_frame(table: pd.DataFrame, cost: pd.DataFrame, limit: int = GLANCE_LIMIT) -> pd.DataFrame:
    """The busiest ``limit`` campaigns of the campaign table, sorted by delivery rate (best
    last: it reads top-down in a horizontal bar chart), with cost per delivered per currency
    (columns ``cpd_<currency>``)."""
    top = table.nlargest(limit, "messages")[["campaign", "messages", "delivery_rate"]].copy()
    if not cost.empty:
        priced = cost[cost["currency"].notna()]
        wide = priced.pivot_table(index="campaign", columns="currency", values="cost_per_delivered", aggfunc="first")
        wide.columns = [f"cpd_{c}" for c in wide.columns]
        top = top.merge(wide, left_on="campaign", right_index=True, how="left")
    return top.sort_values(["delivery_rate", "messages"], na_position="first").reset_index(drop=True)


def glance_figure(frame: pd.DataFrame, shown_of: int) -> go.Figure:
    """Delivery rate (bars, volume in the label) and cost per delivered message (per currency)
    by campaign, sorted by delivery rate."""
    currencies = [c[4:] for c in frame.columns if c.startswith("cpd_")]
    fig = make_subplots(rows=1, cols=2 if currencies else 1, shared_yaxes=True, horizontal_spacing=0.03,
                        column_widths=[0.62, 0.38] if currencies else None)
    names = _texts(frame["campaign"])
    fig.add_trace(go.Bar(y=names, x=frame["delivery_rate"], orientation="h", marker_color=RATE_COLOR,
                         name="Delivery rate", text=[f"{format_count(m)} msgs" for m in frame["messages"]],
                         textposition="auto", customdata=frame["messages"],
                         hovertemplate="%{y}<br>delivery rate %{x:.1%}<br>%{customdata:,} messages<extra></extra>"),
                  row=1, col=1)
    for currency in currencies:
        fig.add_trace(go.Bar(y=names, x=frame[f"cpd_{currency}"], orientation="h", name=f"Cost per delivered ({currency})",
                             hovertemplate="%{y}<br>%{x:.4f} per delivered<extra></extra>"),
                      row=1, col=2)
    fig.update_yaxes(type="category", automargin=True)
    fig.update_xaxes(tickformat=".0%", range=[0, 1], row=1, col=1, title_text="Delivery rate")
    if currencies:
        fig.update_xaxes(row=1, col=2, title_text="Cost per delivered")
    title = "Campaigns at a glance" + (f" (the {len(frame)} busiest of {shown_of})" if shown_of > len(frame) else "")
    return style(fig, title, legend="top", height=max(320, 120 + 24 * len(frame)))


def sync_summary(status: dict | None, now: datetime) -> tuple[str, str | None]:
    """(caption, error or None) describing the last sync of send records for Data health."""
    if not status:
        return ("Mobivate's send records (names, cost, country) have not been synced: set MOBIVATE_API_KEY and "
                "run `dlrlens sync --from DATE --to DATE`, or let the collector sync them.", None)
    parts = []
    if status.get("last_success_at"):
        at = datetime.fromisoformat(status["last_success_at"])
        result = status.get("last_result") or {}
        parts.append(f"Last sync {format_duration((now - at).total_seconds())} ago: {result.get('from')} to "
                     f"{result.get('to')}, {format_count(result.get('records'))} records, "
                     f"{format_count(result.get('bad_pages'))} malformed pages skipped.")
    error = None
    if status.get("last_error_at") and (not status.get("last_success_at")
                                        or status["last_error_at"] > status["last_success_at"]):
        at = datetime.fromisoformat(status["last_error_at"])
        kind = "The Mobivate API key was refused" if status.get("auth_error") else "The last sync failed"
        error = (f"{kind} {format_duration((now - at).total_seconds())} ago "
                 f"({status.get('consecutive_failures')} failure(s) in a row): {status.get('last_error')}")
    return " ".join(parts) or "No successful sync yet.", error


# --------------------------------------------------------------------------- Streamlit sections


def campaigns_glance(store_state, f, table: pd.DataFrame) -> None:
    """The Campaigns page's opening chart and its cost table."""
    import streamlit as st

    from dashboard import downloads, queries

    cost = store_state.cached(queries.cost_by, f, "campaign", store_state.minute_now())
    st.plotly_chart(glance_figure(glance_frame(table, cost), len(table)), key="campaign_glance")
    if cost.empty or cost["currency"].isna().all():
        st.caption("No cost yet: costs, countries and Mobivate's campaign names come from its message log "
                   "(`dlrlens sync`, or the collector with MOBIVATE_API_KEY set).")
        return
    with st.expander("Cost by campaign and currency", expanded=False):
        st.caption(catalog.kpi("cost").definition + " " + catalog.kpi("currency").definition)
        downloads.show_table(cost, "campaign-cost", f)


def names_upload(data_dir) -> None:
    """Upload a ``batch_id,name`` CSV of campaign names (nothing stored when a row is bad)."""
    import streamlit as st

    from dlrlens.store import sends
    from dlrlens.store.backends import send_destination

    with st.expander("Name campaigns (CSV upload)"):
        st.caption("A CSV with the header `batch_id,name`: a campaign without a URL label shows its name instead of "
                   "its batch id. An imported name wins over Mobivate's; a file with a bad row is not imported.")
        upload = st.file_uploader("Campaign names", type=["csv"], key="campaign_names_upload")
        if upload is None:
            return
        try:
            text = upload.getvalue().decode("utf-8-sig")
        except UnicodeDecodeError:
            st.error("The file is not UTF-8 text.")
            return
        try:
            result = sends.import_names(data_dir, text, send_destination(data_dir))
        except Exception as exc:  # noqa: BLE001 - the Iceberg store's catalog or object store failed
            st.error(md_text(f"Nothing imported: the store could not take the names ({type(exc).__name__}: "
                             f"{str(exc)[:300]}). Try again when it is back."))
            return
        if result.errors:
            st.error("Nothing imported: " + "; ".join(md_text(e) for e in result.errors[:10])
                     + (f" (and {len(result.errors) - 10} more)" if len(result.errors) > 10 else ""))
        else:
            st.success(f"Imported {len(result.names)} campaign names.")


def receipts_missing_section(store_state, f) -> None:
    """Messages Mobivate's log has and no receipt ever arrived for, per campaign and listed."""
    import streamlit as st

    from dashboard import downloads, queries
    from dashboard.queries.cost import missing_after_setting
    from dlrlens.store import sends

    if not sends.has_sends(store_state.data_dir()):
        return  # nothing synced: nothing to compare the receipts with
    missing_after = missing_after_setting()
    listed = store_state.cached(queries.receipts_missing, f, store_state.minute_now(), missing_after)
    st.subheader("Receipts missing", anchor=False)
    if listed.empty:
        st.caption(f"Every message in Mobivate's synced log older than {format_duration(missing_after.total_seconds())} "
                   "has at least one receipt.")
        return
    st.warning(f"{format_count(len(listed))} message(s) in Mobivate's log have no receipt at all after "
               f"{format_duration(missing_after.total_seconds())}: was the webhook down or misconfigured? "
               "They do not change the receipt-based figures.", icon=":material/mark_email_unread:")
    per_campaign = listed.groupby("campaign").size().rename("receipts_missing").reset_index()
    downloads.show_table(per_campaign.sort_values("receipts_missing", ascending=False), "receipts-missing-by-campaign", f)
    with st.expander("The messages (recipient masked)"):
        downloads.show_table(listed, "receipts-missing", f)


def sync_state_section(data_dir, now: datetime) -> None:
    """Data health: when send records were last synced, and the last error (auth named)."""
    import streamlit as st

    from dlrlens.store import sends

    st.subheader("Mobivate send records", anchor=False)
    caption, error = sync_summary(sends.sync_status(data_dir), now)
    st.caption(md_text(caption))
    if error:
        st.error(md_text(error), icon=":material/key:")
