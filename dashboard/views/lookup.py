"""Message lookup page: every receipt of a message, found by deliveryMessageId, clientReference
or batchId."""

from __future__ import annotations

import streamlit as st

from dashboard import charts, downloads, queries, state
from dashboard.queries import Filters
from dashboard.safe_text import md_text

LOOKUP_LIMIT = 5000  # receipts; a batchId can match many messages
SHOWN_COLUMNS = ["delivery_message_id", "created", "received_at", "status", "status_code", "category",
                 "part", "parts", "hlr", "campaign", "labels", "batch_id", "client_reference", "copies",
                 "receipt_id"]


def lookup() -> None:
    st.title("Message lookup")
    term = st.text_input("deliveryMessageId, clientReference or batchId", key="lookup_term",
                         placeholder="e.g. 6f1c9a40-... or your send reference", icon=":material/search:").strip()
    if not state.data_notice() or not term:
        st.caption("Shows every receipt stored for the message(s), in the order Mobivate created them. "
                   "The sidebar filters do not apply here; times are shown in the chosen time zone. "
                   "A recipient's phone number also finds its messages, through the keyed hash of Mobivate's "
                   "send records (`dlrlens sync`): the number itself is not stored.")
        return

    @state.live
    def receipts() -> None:
        f = state.filters()
        found = state.cached(queries.message_lookup, term, LOOKUP_LIMIT, f.tz)
        if found.empty:
            # The term as text (a backtick in it would end a code span and start Markdown).
            st.info(f"No receipt has deliveryMessageId, clientReference or batchId equal to “{md_text(term)}”. "
                    "The match is exact; check for spaces or a partial id.", title="Not found",
                    icon=":material/search_off:")
            return
        messages = found["delivery_message_id"].nunique()
        st.caption(f"{charts.format_count(len(found))} receipts of {charts.format_count(messages)} "
                   f"message{'s' if messages != 1 else ''}"
                   + (f" (the first {LOOKUP_LIMIT:,} receipts only)." if len(found) >= LOOKUP_LIMIT else "."))
        columns = [c for c in SHOWN_COLUMNS if c in found] + [c for c in found if c not in SHOWN_COLUMNS]
        downloads.show_table(found[columns], f"receipts-{term[:60]}", f, file_filters=Filters(tz=f.tz),
                             column_config={"hlr": st.column_config.JsonColumn("HLR"),
                                            "labels": st.column_config.JsonColumn("URL labels")})

    receipts()


if __name__ == "__main__":
    lookup()
