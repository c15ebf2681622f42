"""Clock and order: receipts that arrive late, out of order or dated in the future are stored
and classified by the documented rules, end to end (real collector, real HTTP, query layer)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import requests

from dashboard import queries
from tests.support.receipts import receipt, stored_rows
from tests.support.servers import running_collector, wait_until

T0 = datetime(2026, 11, 10, 9, 0, 0, tzinfo=timezone.utc)


def at(offset_seconds: float) -> str:
    return (T0 + timedelta(seconds=offset_seconds)).isoformat(timespec="milliseconds")


def test_late_out_of_order_and_future_receipts(tmp_path):
    # Within the accepted window (DLRLENS_CREATED_MAX_AHEAD, 1 day): further ahead is refused.
    future = (datetime.now(timezone.utc) + timedelta(hours=12)).replace(microsecond=0)
    posts = [
        # Out of order: the DELIVERED arrives before its ACCEPTED.
        receipt("m-ooo", "DELIVERED", 1, at(5)), receipt("m-ooo", "ACCEPTED", 2, at(0)),
        # A final that comes three days after the send, posted last.
        receipt("m-late", "ACCEPTED", 2, at(0)),
        # Dated in the future (a skewed clock): stored as sent; its first receipt is final.
        receipt("m-future", "DELIVERED", 1, future.isoformat()),
        # Regression: an intermediate receipt created after the final one.
        receipt("m-regress", "ACCEPTED", 2, at(0)), receipt("m-regress", "DELIVERED", 1, at(10)),
        receipt("m-regress", "INTERIM_QUEUED", 8, at(20)),
        # Final after final: the latest created decides, whatever the arrival order.
        receipt("m-twice", "ACCEPTED", 2, at(0)), receipt("m-twice", "EXPIRED", 3, at(100)),
        receipt("m-twice", "DELIVERED", 1, at(50)),
        receipt("m-late", "UNDELIVERABLE", 5, at(3 * 86400)),
    ]
    with running_collector(tmp_path / "data", workers=1, flush_seconds=0.2) as collector:
        with requests.Session() as session:
            for doc in posts:
                assert session.post(collector.dlr + "?campaign=clock", json=doc, timeout=10).status_code == 200
        wait_until(lambda: len(stored_rows(collector.data_dir)) == len(posts), 20, what="all receipts stored")

    store = queries.Store(tmp_path / "data")
    try:
        detail = queries.message_detail(store, queries.Filters()).set_index("delivery_message_id")
        assert detail.loc["m-ooo", "outcome"] == "delivered"
        assert detail.loc["m-ooo", "latency_s"] == 5.0
        assert (detail.loc["m-late", "outcome"], detail.loc["m-late", "reason"]) == ("failed", "UNDELIVERABLE")
        assert detail.loc["m-late", "sent_at"] == T0
        assert detail.loc["m-future", "outcome"] == "delivered"
        assert detail.loc["m-future", "sent_at"] == future
        assert detail.loc["m-regress", "outcome"] == "delivered"
        assert (detail.loc["m-twice", "outcome"], detail.loc["m-twice", "reason"]) == ("failed", "EXPIRED")

        figures = queries.kpis(store, queries.Filters()).iloc[0]
        assert (figures["messages"], figures["delivered"], figures["failed"], figures["pending"]) == (5, 3, 2, 0)
        assert figures["delivered_without_earlier"] == 1  # m-future: its only receipt is the final
        health = queries.data_health(store)["summary"].iloc[0]
        assert health["regressions"] == 1

        # The date filter uses the sent time: the future message is outside "until now".
        until_now = queries.Filters(start=T0 - timedelta(days=1), end=datetime.now(timezone.utc))
        assert queries.kpis(store, until_now).iloc[0]["messages"] == 4
    finally:
        store.close()
