"""Data health page: is data arriving, and how clean is it? Receipts per minute, last receipt,
duplicates, regressions, rejected requests by reason, statuses Mobivate sent that we don't know,
and whether the collector's maintenance keeps up."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import catalog, charts, downloads, queries, sends_ui, state
from dashboard.queries import Filters
from dashboard.safe_text import md_text


def _age(moment, now) -> str:
    return "" if charts.is_missing(moment) else charts.format_duration((now - moment).total_seconds())


def clock_time(moment, now, tz: str) -> str:
    """``moment`` short enough for a card's delta chip: "at 14:22:02" today (in ``tz``), else
    "at Nov 27 14:22"; the full timestamp goes in the card's help."""
    local, today = pd.Timestamp(moment).tz_convert(tz), pd.Timestamp(now).tz_convert(tz).date()
    return "at " + local.strftime("%H:%M:%S" if local.date() == today else "%b %d %H:%M")


# Silence longer than this (or than 10 intervals) means maintenance is not running.
MAINTENANCE_SILENT_SECONDS = 120


def maintenance(now) -> None:
    """When the derived state and compaction last ran, and the last error if it is current."""
    st.subheader("Maintenance", anchor=False)
    status = queries.maintenance_status(state.data_dir())
    if status is None:
        st.caption("The collector's maintenance (derived per-message state every few seconds, compaction "
                   "every minute) has not reported yet. Figures are exact without it, only slower.")
        return
    with st.grid(3, min_column_width=150):
        st.metric("Derived state updated", _ago(status["derive_at"], now), border=True,
                  help="When the collector last absorbed new receipts into the per-message state the pages "
                       "read. Receipts not absorbed yet are added at query time, so figures stay exact.")
        st.metric("Last compaction", _ago(status["compact_at"], now), border=True,
                  help="When the collector last merged small receipt files into large sorted ones.")
        st.metric("Maintenance errors", charts.format_count(status["errors"]), border=True,
                  help="Failed maintenance steps since the maintenance process started; each is retried.")
    intervals = [s for s in status["interval_seconds"].values() if s and s > 0]
    silent_limit = max([MAINTENANCE_SILENT_SECONDS] + [10 * s for s in intervals])
    silent_for = (now - status["updated_at"]).total_seconds() if not charts.is_missing(status["updated_at"]) else None
    if silent_for is not None and silent_for > silent_limit:
        st.warning(f"Maintenance has not reported for {charts.format_duration(silent_for)}: the collector may be "
                   "stopped. Figures stay exact; pages get slower as unabsorbed receipts pile up.",
                   icon=":material/schedule:")
    # Still failing: the task of the last error ("derive: ..." or "compact: ...") has not
    # succeeded since.
    task = (status["last_error"] or "").split(":", 1)[0]
    task_success = status.get(f"{task}_at", pd.NaT)
    failing = not charts.is_missing(status["last_error_at"]) and (
        charts.is_missing(task_success) or status["last_error_at"] > task_success)
    if failing:
        # The error text may quote stored data (a file name, a value): shown as text.
        st.error(f"Maintenance failed {_ago(status['last_error_at'], now)}: {md_text(status['last_error'])}. It retries "
                 "at every tick; the collector's log has one line per failure (event=maintenance_failed).",
                 icon=":material/error:")


def _ago(moment, now) -> str:
    age = _age(moment, now)
    return f"{age} ago" if age else "not yet"


def health() -> None:
    st.title("Data health")

    @state.live
    def figures() -> None:
        f = state.filters()
        state.scope_header(Filters(tz=f.tz), sidebar_applies=False)
        everything = Filters(tz=f.tz)  # the files state what they cover: all stored data
        if state.data_notice():
            health_frames = state.cached(queries.data_health, None)
            summary = health_frames["summary"].iloc[0] if len(health_frames["summary"]) else pd.Series(dtype=object)
            now = state.utc_now()
            last = summary.get("last_received_at")
            with st.grid(5, min_column_width=150):
                received = None if charts.is_missing(last) else pd.Timestamp(last).tz_convert(f.tz)
                st.metric("Since the last receipt", _age(last, now) or "no receipt", border=True, height="stretch",
                          delta=None if received is None else clock_time(received, now, f.tz),
                          delta_color="off", delta_arrow="off",
                          help="How long ago the collector last received a receipt (its own clock)"
                               + ("." if received is None else
                                  f": {received.strftime('%Y-%m-%d %H:%M:%S %Z')}."))
                for column, label, text in (
                    ("receipts", "Receipts", catalog.kpi("receipts").definition),
                    ("messages", "Messages", "Distinct messages (deliveryMessageIds) stored."),
                    ("duplicate_rows", "Duplicate rows", catalog.kpi("duplicate_rows").definition),
                    ("regressions", "Regressions", catalog.kpi("regressions").definition),
                ):
                    st.metric(label, charts.format_count(summary.get(column)), border=True, height="stretch", help=text)
            st.plotly_chart(charts.receipts_per_minute_figure(downloads.in_zone(health_frames["per_minute"], f.tz),
                                                              pd.Timestamp(now).tz_convert(f.tz)),
                            key="health_per_minute",
                            alt="Bars: receipts the collector received per minute, over at least the last hour.")
            with st.expander("Receipts per minute (table)"):
                downloads.show_table(health_frames["per_minute"], "receipts-per-minute", f, file_filters=everything)
            st.subheader("Unknown statuses seen", anchor=False)
            unknown = health_frames["unknown_statuses"]
            if unknown.empty:
                st.caption("Every status received is in Mobivate's documented table.")
            else:
                st.caption("Status names or codes not in Mobivate's table; they count as *unknown* outcomes.")
                downloads.show_table(unknown, "unknown-statuses", f, file_filters=everything)

        maintenance(state.utc_now())
        sends_ui.sync_state_section(state.store().data_dir, state.utc_now())

        st.subheader("Rejected requests", anchor=False)
        rejected = queries.rejected_summary(state.data_dir())  # a few small files; not worth caching
        if rejected.empty:
            st.caption("The collector has rejected no request.")
        else:
            st.caption("Requests the collector refused (bad secret, unparsable body, ...), by reason. "
                       "Their raw bodies are kept under `rejected/` in the data folder.")
            downloads.show_table(rejected, "rejected", f, file_filters=everything)

        alert_channels()

    figures()


def alert_channels() -> None:
    """Notify channels whose latest delivery failed (details on the Alerts page)."""
    failing = queries.alert_channel_failures(state.data_dir())
    if len(failing):
        st.subheader("Alert channels failing", anchor=False)
        st.caption("Alert notifications to these channels fail; they are retried with back-off. See the Alerts page.")
        downloads.show_table(failing, "alert-channels-failing", state.filters())


if __name__ == "__main__":
    health()
