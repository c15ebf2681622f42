"""The demo's week of history is stored as the webhook would have stored it, received when it
was due: its webhook lag reads seconds, not the days a back-dated post would show."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import duckdb
import pytest

from collector.backfill import store_posts
from collector.parsing import BadBody
from collector.settings import load_settings
from dashboard import queries
from dashboard.queries import Filters, Store
from dlrlens import simulate
from dlrlens.store import layout


def test_history_is_stored_as_received_when_due(tmp_path):
    data = tmp_path / "data"
    now = datetime.now(timezone.utc).replace(microsecond=0)
    plan = simulate.plan_traffic(3, 300, seed=7, span=timedelta(days=7), now=now, click_share=0.2, reply_share=0.05)
    posts = plan.all_posts()
    stored = store_posts(load_settings(data_dir=data), posts, seed=plan.seed)

    assert stored["clicks"] == sum(p.endpoint == "click" for p in posts) > 0
    assert stored["replies"] == sum(p.endpoint == "incoming" for p in posts) > 0
    assert not list((data / layout.WAL_DIR).glob("*/*.wal")), "everything flushed to Parquet"
    received = duckdb.connect().execute(f"""
        SELECT min(created), max(created), count(DISTINCT delivery_message_id),
               quantile_cont(epoch(received_at) - epoch(created), 0.5), min(epoch(received_at) - epoch(created))
        FROM read_parquet('{data}/receipts/*/*.parquet')""").fetchone()
    first, last, messages, median_lag, min_lag = received
    assert last - first > timedelta(days=6), "a week of history: the charts have a shape"
    assert messages == len({p.receipt.delivery_message_id for p in plan.posts})
    assert 0 < min_lag and 0.5 < median_lag < 10, "received about a second after it was due, not now"

    store = Store(data)
    try:
        kpis = queries.kpis(store, Filters(), receipt_figures=True).iloc[0]
        assert kpis["messages"] == messages and kpis["webhook_lag_p50_s"] < 60
        assert queries.funnel(store, Filters()).iloc[0]["clicks"] == stored["clicks"]
    finally:
        store.close()


def test_a_post_the_webhook_would_refuse_raises(tmp_path):
    post = simulate.SimulatedPost(labels=(), body=b"{not json", content_type="application/json", receipt=None,
                                  due=datetime.now(timezone.utc))
    with pytest.raises(BadBody):
        store_posts(load_settings(data_dir=tmp_path / "data"), [post])
