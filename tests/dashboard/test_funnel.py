"""The funnel figures (dashboard/queries/funnel.py) equal an independent computation (the
baseline's message definition + plain pandas over the raw event rows, tests/support/funnel.py)
on a generated stream with clicks by id and by reference, retried and repeated clicks, replies
by message, by batch only, unlinked and stored twice, opt-out keywords in any case and spacing;
with derived state and a fresh tail; with events stored before their messages' receipts."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from dashboard import queries
from dlrlens.store import derive
from dlrlens.store.reader import Store
from tests.support.baseline import BaselineStore
from tests.support.factory import demo_rows, message, utc, write_receipts
from tests.support.funnel import (click_row, demo_events, oracle_events, oracle_funnel, reply_row, write_events)

FILTERS = [
    queries.Filters(),
    queries.Filters(campaigns=("welcome", "B003")),
    queries.Filters(start=utc(2026, 11, 2), end=utc(2026, 11, 4), tz="Europe/London"),
    queries.Filters(outcomes=("delivered", "failed")),
    queries.Filters(labels=(("env", "prod"),)),
]


@pytest.fixture(scope="module", params=["tail", "absorbed", "rebuilt"])
def data(request, tmp_path_factory):
    """tail: the events are all fresh tail (derived state for half the receipts); absorbed: the
    maintenance absorbed the events when half the receipts were stored (events of the other
    half wait in rows without receipts, which the fresh tail's receipts supersede); rebuilt:
    everything in a rebuilt derived state."""
    root = tmp_path_factory.mktemp("funnel") / "data"
    rows = demo_rows(900, seed=11)
    clicks, replies = demo_events(rows, seed=4)
    half = len(rows) // 2
    write_receipts(root, rows[:half])
    if request.param == "tail":
        derive.update_derived(root, now=utc(2026, 12, 1))  # derived state for the first half...
    write_events(root, "clicks", clicks[: len(clicks) // 2], "c1")
    write_events(root, "replies", replies, "r1")
    if request.param == "absorbed":
        derive.update_derived(root, now=utc(2026, 12, 1))
    write_receipts(root, rows[half:])  # ... a fresh tail for the rest
    write_events(root, "clicks", clicks[len(clicks) // 2:], "c2")
    if request.param == "rebuilt":
        derive.rebuild_derived(root, now=utc(2026, 12, 1))
    return root


def _compare(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    columns = ["messages", "delivered", "clicked", "clicks", "replied", "opted_out"]
    assert actual[columns].to_dict("records") == expected[columns].astype("int64").to_dict("records")
    for column in ("click_rate", "opt_out_rate", "click_delay_p50_s", "click_delay_p95_s"):
        np.testing.assert_allclose(actual[column].to_numpy(float), expected[column].to_numpy(float), rtol=1e-9,
                                   atol=1e-6, err_msg=column)


@pytest.mark.parametrize("f", FILTERS, ids=range(len(FILTERS)))
def test_funnel_equals_the_oracle(data, f):
    with Store(data) as store, BaselineStore(data) as baseline:
        with baseline.pinned():
            every = baseline.query(f"SELECT * FROM {baseline.messages_sql()}")
            sql, params = baseline.filtered_messages_sql(f)
            filtered = baseline.query(sql, params)
        total = queries.funnel(store, f)
        expected_total = oracle_funnel(filtered, every, data, by_campaign=False)
        assert total["clicks"].iloc[0] > 0 and total["opted_out"].iloc[0] > 0 or f.outcomes or f.campaigns
        _compare(total, expected_total)
        per_campaign = queries.funnel(store, f, by_campaign=True)
        expected = oracle_funnel(filtered, every, data, by_campaign=True).set_index("grp").loc[
            per_campaign["campaign"]].reset_index()
        _compare(per_campaign, expected)
        # Both read paths of the store agree (the baseline's messages, same funnel SQL).
        _compare(queries.funnel(baseline, f, by_campaign=True), per_campaign)
        # The campaigns add up to the total.
        for column in ("messages", "delivered", "clicked", "clicks", "replied", "opted_out"):
            assert per_campaign[column].sum() == total[column].iloc[0], column


def test_clicks_by_value_and_over_time_count_distinct_messages(data):
    """Breakdowns, top links and clicks over time against pandas over the oracle's linked clicks:
    clicks, and clicked = distinct messages (per value; over time, by the first click's bucket)."""
    with Store(data) as store, BaselineStore(data) as baseline:
        with baseline.pinned():
            every = baseline.query(f"SELECT * FROM {baseline.messages_sql()}")
        clicks, _ = oracle_events(data, every)
        linked = clicks[clicks["linked_id"].notna()].copy()
        for by in ("country", "os", "browser", "url"):
            blank = "(none)" if by == "url" else "(unknown)"
            linked["value"] = [blank if pd.isna(v) or (by != "url" and not str(v).strip()) else v for v in linked[by]]
            expected = linked.groupby("value").agg(clicks=("click_id", "size"), clicked=("linked_id", "nunique"))
            got = (queries.top_links(store, queries.Filters(), limit=1000).rename(columns={"url": "value"})
                   if by == "url" else queries.click_breakdown(store, queries.Filters(), by))
            assert got.set_index("value")[["clicks", "clicked"]].sort_index().to_dict() == expected.sort_index().to_dict()
        over_time, bucket = queries.clicks_over_time(store, queries.Filters(tz="Asia/Kolkata"), bucket="hour")
        firsts = linked.groupby("linked_id")["received_at"].min().dt.tz_convert("Asia/Kolkata").dt.floor("h")
        expected = pd.DataFrame({"clicks": linked["received_at"].dt.tz_convert("Asia/Kolkata").dt.floor("h")
                                 .value_counts(), "clicked": firsts.value_counts()}).fillna(0).astype("int64")
        got = over_time.set_index("bucket_start")[["clicks", "clicked"]]
        assert got.to_dict() == expected.sort_index().to_dict()


def test_unlinked_events_are_counted(data):
    with Store(data) as store:
        unlinked = queries.unlinked_events(store, queries.Filters()).iloc[0]
    assert unlinked["unlinked_clicks"] >= 3 and unlinked["unlinked_replies"] >= 3
    assert unlinked["batch_linked_replies"] > 0
    assert unlinked["clicks"] > unlinked["unlinked_clicks"]


@pytest.mark.parametrize("maintained", [False, True], ids=["tail", "maintained"])
def test_events_before_their_receipts_link_up_when_the_receipts_arrive(tmp_path, maintained):
    """maintained: the maintenance absorbs the events before the receipts exist, and the
    receipts after they arrive (first read as fresh tail)."""
    root = tmp_path / "data"
    sent = utc(2026, 11, 10, 9)
    write_events(root, "clicks", [click_row("early", sent + timedelta(minutes=5), message_id="M-late"),
                                  click_row("by-ref", sent + timedelta(minutes=6), batch_id="B-late",
                                            client_ref="ref-2")], "c")
    write_events(root, "replies", [reply_row("r-early", sent + timedelta(minutes=7), " Stop ",
                                             in_reply_to="M-late")], "r")
    if maintained:
        derive.update_derived(root)
    with Store(root) as store:
        before = queries.unlinked_events(store, queries.Filters()).iloc[0]
        assert (before["unlinked_clicks"], before["unlinked_replies"]) == (2, 1)
        assert queries.funnel(store, queries.Filters())["clicks"].iloc[0] == 0

        write_receipts(root, message("M-late", sent, [("ACCEPTED", 0), ("DELIVERED", 30)], campaign="late",
                                     batch_id="B-late", client_reference="ref-1")
                       + message("M-late-2", sent, [("ACCEPTED", 0), ("DELIVERED", 60)], campaign="late",
                                 batch_id="B-late", client_reference="ref-2"))
        after = queries.unlinked_events(store, queries.Filters()).iloc[0]
        assert (after["unlinked_clicks"], after["unlinked_replies"]) == (0, 0)
        row = queries.funnel(store, queries.Filters(), by_campaign=True).iloc[0]
        assert row["campaign"] == "late" and (row["clicked"], row["clicks"], row["replied"], row["opted_out"]) == (
            2, 2, 1, 1)
        assert row["click_rate"] == 1.0 and row["opt_out_rate"] == 0.5
        # Delivery to first click: 5 min - 30 s and 6 min - 60 s.
        assert row["click_delay_p50_s"] == pytest.approx((270 + 300) / 2)
        replies = queries.message_replies(store, ["M-late"])
        assert replies[["body", "opt_out", "linked_by"]].values.tolist() == [[" Stop ", True, "message"]]
        if maintained:
            derive.update_derived(root)
            assert queries.funnel(store, queries.Filters(), by_campaign=True).iloc[0].equals(row)
            assert queries.unlinked_events(store, queries.Filters()).iloc[0].equals(after)


def test_one_number_replying_by_message_and_by_batch_counts_one_replied_message(tmp_path):
    root = tmp_path / "data"
    sent = utc(2026, 11, 10, 9)
    write_receipts(root, message("M1", sent, [("ACCEPTED", 0), ("DELIVERED", 10)], campaign="c", batch_id="B")
                   + message("M2", sent, [("ACCEPTED", 0), ("DELIVERED", 20)], campaign="c", batch_id="B"))
    write_events(root, "replies", [
        reply_row("by-message", sent + timedelta(minutes=1), "Thanks", in_reply_to="M2", batch="B",
                  originator_hash="same"),
        reply_row("by-batch", sent + timedelta(minutes=9), "STOP", batch="B", originator_hash="same"),
        reply_row("other", sent + timedelta(minutes=9), "Hello", batch="B", originator_hash="other")], "r")
    with Store(root) as store:
        row = queries.funnel(store, queries.Filters()).iloc[0]
        # M2 (both replies of "same", one opting out) and batch B for "other".
        assert (row["replied"], row["opted_out"]) == (2, 1)
        replies = queries.message_replies(store, ["M2"])
        assert replies[["body", "linked_by"]].values.tolist() == [["Thanks", "message"], ["STOP", "batch"]]
        assert queries.unlinked_events(store, queries.Filters()).iloc[0]["batch_linked_replies"] == 2


def test_duplicate_and_repeated_clicks(tmp_path):
    root = tmp_path / "data"
    sent = utc(2026, 11, 10, 9)
    from tests.support.factory import message
    write_receipts(root, message("M1", sent, [("ACCEPTED", 0), ("DELIVERED", 10)], campaign="c"))
    at = sent + timedelta(minutes=1)
    write_events(root, "clicks", [click_row("same", at, message_id="M1"),
                                  click_row("same", at + timedelta(seconds=30), message_id="M1"),  # retry
                                  click_row("same", at + timedelta(seconds=80), message_id="M1"),  # retry (chain)
                                  click_row("same", at + timedelta(minutes=10), message_id="M1")], "c")  # again
    with Store(root) as store:
        row = queries.funnel(store, queries.Filters()).iloc[0]
        assert (row["clicked"], row["clicks"]) == (1, 2)
        over_time, bucket = queries.clicks_over_time(store, queries.Filters())
        assert bucket == "hour" and over_time["clicks"].sum() == 2
        assert queries.top_links(store, queries.Filters())["clicks"].tolist() == [2]
        by_os = queries.click_breakdown(store, queries.Filters(), "os")
        assert by_os[["value", "clicks", "share"]].values.tolist() == [["Android", 2, 1.0]]


def test_empty_data_gives_zero_rows(tmp_path):
    with Store(tmp_path / "nothing") as store:
        total = queries.funnel(store, queries.Filters())
        assert total[["messages", "clicks", "opted_out"]].values.tolist() == [[0, 0, 0]]
        assert np.isnan(total["click_rate"].iloc[0])
        assert queries.funnel(store, queries.Filters(), by_campaign=True).empty
        assert queries.unlinked_events(store, queries.Filters())["clicks"].tolist() == [0]
        assert queries.top_links(store, queries.Filters()).empty
        assert queries.message_replies(store, ["x"]).empty
    assert queries.FUNNEL_TABLE_COLUMNS[:2] == ["messages", "delivered"]
