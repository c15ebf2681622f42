"""Message lookup page: a support tool. Find a message by deliveryMessageId, clientReference
or batchId (any case); its summary first (campaign, outcome, reason, sent time, time to
deliver, duplicate copies hidden), then every receipt, times to the millisecond.

The query lives in the URL (``lookup?id=...``), so a link to a message can be sent; message
ids in other tables link here (:func:`dashboard.downloads.lookup_link`).
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import charts, downloads, queries, state
from dashboard.queries import Filters
from dashboard.safe_text import md_text

LOOKUP_LIMIT = 5000  # receipts; a batchId can match many messages
SUMMARY_LIMIT = 1000  # messages in the summary
SHOWN_COLUMNS = ["delivery_message_id", "created", "received_at", "status", "status_code", "category",
                 "part", "parts", "hlr", "campaign", "labels", "batch_id", "client_reference", "copies",
                 "receipt_id"]
KEY_TERM = "lookup_term"
URL_PARAMETER = "id"


def summary_cards(row) -> None:
    """One message's summary as cards: what support is asked first."""
    with st.container(key="lookup_summary"), st.grid(3, min_column_width=150):
        st.metric("Campaign", str(row["campaign"]), border=True)
        st.metric("Outcome", str(row["outcome"]), border=True,
                  help="delivered, failed, unknown or pending (no final receipt yet).")
        st.metric("Reason / status", str(row["reason"] if row["outcome"] == "failed" else row["last_status"]),
                  border=True, help="A failed message's deciding status; otherwise its deciding or latest status.")
        st.metric("Sent", downloads.timestamp_text(pd.Series([row["sent_at"]]), True).iloc[0], border=True,
                  help="The created time of its earliest receipt, in the chosen time zone.")
        st.metric("Time to deliver", downloads.format_value("latency_s", row["latency_s"]), border=True,
                  help="First DELIVERED receipt minus the sent time; — when it does not count as one.")
        st.metric("Receipts", f"{int(row['receipts'])} ({int(row['duplicates_hidden'])} duplicates hidden)",
                  border=True, help="Distinct receipts; stored copies of the same receipt are shown once.")


def lookup() -> None:
    st.title("Message lookup")
    f = state.filters()
    state.scope_header(Filters(tz=f.tz), sidebar_applies=False)
    linked = state.url_value(URL_PARAMETER)
    if linked and KEY_TERM not in st.session_state:
        st.session_state[KEY_TERM] = linked
    term = st.text_input("deliveryMessageId, clientReference or batchId", key=KEY_TERM,
                         placeholder="e.g. 6f1c9a40-... or your send reference", icon=":material/search:").strip()
    if term:
        st.query_params[URL_PARAMETER] = term  # a link to this lookup can be sent
    if not state.data_notice() or not term:
        st.caption("Shows a message's summary and every receipt stored for it, in the order Mobivate created "
                   "them. Any case matches. The sidebar filters do not apply here; times are shown in the chosen "
                   "time zone, to the millisecond. A recipient's phone number also finds its messages, through "
                   "the keyed hash of Mobivate's send records (`dlrlens sync`): the number itself is not stored.")
        return

    @state.live
    def receipts() -> None:
        f = state.filters()
        found = state.cached(queries.message_lookup, term, LOOKUP_LIMIT, f.tz)
        if found.empty:
            # The term as text (a backtick in it would end a code span and start Markdown).
            st.info(f"No receipt has deliveryMessageId, clientReference or batchId equal to “{md_text(term)}” "
                    "(in any case). Check for spaces or a partial id.", title="Not found",
                    icon=":material/search_off:")
            return
        summary = state.cached(queries.message_summary, term, SUMMARY_LIMIT, f.tz)
        messages = len(summary)
        st.subheader("Summary" if messages == 1 else f"{charts.format_count(messages)} messages", anchor=False)
        if messages == 1:
            summary_cards(summary.iloc[0])
        else:
            downloads.show_table(summary, f"messages-{term[:60]}", f, file_filters=Filters(tz=f.tz),
                                 milliseconds=True, links=("delivery_message_id",))
        st.subheader("Receipts", anchor=False)
        st.caption(f"{charts.format_count(len(found))} receipts of {charts.format_count(found['delivery_message_id'].nunique())} "
                   f"message{'s' if messages != 1 else ''}, in created order"
                   + (f" (the first {LOOKUP_LIMIT:,} receipts only)." if len(found) >= LOOKUP_LIMIT else "."))
        columns = [c for c in SHOWN_COLUMNS if c in found] + [c for c in found if c not in SHOWN_COLUMNS]
        downloads.show_table(found[columns], f"receipts-{term[:60]}", f, file_filters=Filters(tz=f.tz),
                             milliseconds=True,
                             column_config={"hlr": st.column_config.JsonColumn("HLR"),
                                            "labels": st.column_config.JsonColumn("URL labels")})
        replies_of(tuple(sorted(found["delivery_message_id"].unique())), f)

    receipts()


def masked(text) -> str:
    """A reply's text hidden: only its length shows (personal data, revealed on request)."""
    return "" if text is None else f"•••• ({len(str(text))} characters)"


def replies_of(message_ids: tuple[str, ...], f: Filters) -> None:
    """The replies to the messages found (linked by inReplyTo), their text masked unless revealed."""
    replies = state.cached(queries.message_replies, message_ids, f.tz)
    if replies.empty:
        return
    st.markdown(f"**Replies** ({charts.format_count(len(replies))})")
    reveal = st.toggle("Show reply text", key="lookup_reveal_replies", value=False,
                       help="Replies are personal data: their text is hidden unless you reveal it. The number "
                            "is always masked.")
    shown = replies if reveal else replies.assign(body=replies["body"].map(masked))
    downloads.show_table(shown, "replies", f, file_filters=Filters(tz=f.tz), key="lookup_replies")


if __name__ == "__main__":
    lookup()
