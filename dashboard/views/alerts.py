"""Alerts page: the rules as last evaluated, what is firing now, silences (with a form to mute
a rule or one of its groups for a time span), each notify channel's delivery status and the
notification history. Everything comes from ``data/alerts.sqlite`` (the collector's alert
evaluator writes it; see README "Alerts")."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import streamlit as st

from dashboard import downloads, queries, state
from dashboard.queries import Filters
from dashboard.safe_text import md_text

SILENCE_SPANS = {"1 hour": timedelta(hours=1), "4 hours": timedelta(hours=4), "1 day": timedelta(days=1),
                 "1 week": timedelta(days=7)}


def silence_form(rules: list[str], now) -> None:
    """Mute a rule (or one group of it) from now for a chosen span."""
    with st.form("silence_form", clear_on_submit=True):
        st.markdown("**Silence** (notifications stop; the alert is still tracked and shown)")
        columns = st.columns([2, 2, 1, 3])
        rule = columns[0].selectbox("Rule", rules, key="silence_rule")
        group = columns[1].text_input("Group (empty: every group)", key="silence_group",
                                      help="A campaign, label value, status or reason exactly as the firing table "
                                           "shows it.")
        span = columns[2].selectbox("For", list(SILENCE_SPANS), key="silence_span")
        comment = columns[3].text_input("Why", key="silence_comment", max_chars=200)
        if st.form_submit_button("Silence", type="primary"):
            if not rule:
                st.error("Pick a rule.")
            else:
                try:
                    queries.add_silence(state.data_dir(), rule, group.strip() or None, now,
                                        now + SILENCE_SPANS[span], comment.strip())
                except Exception as exc:  # the shared state's catalog down: say so, the page stays
                    st.error(f"The silence could not be saved: {md_text(f'{type(exc).__name__}: {exc}')}")
                    return
                st.success(f"Silenced {md_text(rule)}"
                           + (f" for {md_text(group.strip())}" if group.strip() else "") + f" for {span}.")


def alerts() -> None:
    st.title("Alerts")
    f = state.filters()
    # The rules carry their own groups and windows: the sidebar's filters do not apply here.
    state.scope_header(Filters(tz=f.tz), sidebar_applies=False)
    now = state.utc_now()
    overview = queries.alerts_overview(state.data_dir(), now)
    if pd.isna(overview["evaluated_at"]):
        st.info("No alert evaluation yet. Write the rules in an alerts file (see `alerts.example.toml`), point the "
                "collector at it with `DLRLENS_ALERTS_FILE`, or run `dlrlens alerts check` once.",
                icon=":material/notifications_off:")
    else:
        evaluated = pd.Timestamp(overview["evaluated_at"]).tz_convert(f.tz)
        cpu = f", {overview['cpu_seconds']:.2f} s of CPU" if overview["cpu_seconds"] is not None else ""
        st.caption(f"Last evaluation: {evaluated:%Y-%m-%d %H:%M:%S %Z}{cpu}.")
    if overview["state_error"]:
        st.error("The alert state could not be brought up to date; what follows may be stale.\n\n"
                 + md_text(overview["state_error"]), icon=":material/cloud_off:")
    if overview["file_error"]:
        st.error("The alerts file was refused; the last good rules stay in force.\n\n"
                 + md_text(overview["file_error"]), icon=":material/error:")
    if overview["errors"]:
        st.warning("Rules that failed at the last evaluation (they neither fire nor resolve until they work): "
                   + md_text(overview["errors"]), icon=":material/warning:")

    st.subheader("Firing now", anchor=False)
    if overview["firing"].empty:
        st.caption("Nothing is firing.")
    else:
        downloads.show_table(overview["firing"], "alerts-firing", f)

    failing = overview["channels"][overview["channels"]["failing"].astype(bool)] if len(overview["channels"]) else \
        overview["channels"]
    if len(failing):
        st.error("Notify channels failing: " + ", ".join(md_text(c) for c in failing["channel"])
                 + ". Their notifications are retried with back-off.", icon=":material/notifications_off:")

    st.subheader("Silences", anchor=False)
    rules = list(overview["rules"]["rule"])
    if rules:
        silence_form(rules, now)
    active = overview["silences"]
    if active.empty:
        st.caption("No silence.")
    else:
        current = active[(active["starts_at"] <= now) & (active["ends_at"] > now)]
        downloads.show_table(active, "alerts-silences", f)
        if len(current):
            ending = st.selectbox("End a silence now", [None] + list(current["id"]), key="silence_end",
                                  format_func=lambda i: "" if i is None else
                                  f"#{i}: {current.set_index('id').loc[i, 'rule']} / "
                                  f"{current.set_index('id').loc[i, 'group']}")
            if ending is not None and st.button("End it", key="silence_end_button"):
                try:
                    queries.end_silence(state.data_dir(), int(ending), now)
                except Exception as exc:  # the shared state's catalog down: say so, the page stays
                    st.error(f"The silence could not be ended: {md_text(f'{type(exc).__name__}: {exc}')}")
                else:
                    st.rerun()

    st.subheader("Rules", anchor=False)
    if overview["rules"].empty:
        st.caption("No rules evaluated yet.")
    else:
        downloads.show_table(overview["rules"], "alerts-rules", f)

    st.subheader("Notify channels", anchor=False)
    if overview["channels"].empty:
        st.caption("No notification sent yet.")
    else:
        downloads.show_table(overview["channels"], "alerts-channels", f)

    st.subheader("History", anchor=False)
    if overview["history"].empty:
        st.caption("No notification yet.")
    else:
        st.caption("The latest 200 notifications, newest first: firing, repeat, resolved and test messages per "
                   "channel, and whether they were delivered.")
        downloads.show_table(overview["history"], "alerts-history", f)


if __name__ == "__main__":
    alerts()
