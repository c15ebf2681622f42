"""The demo's Mobivate (dlrlens up on an empty data folder): send records for the simulated
messages, traffic over the last 7 days, served by the fake API and synced like a real one."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import duckdb

from dlrlens import demo, simulate
from dlrlens.mobivate import MobivateClient
from dlrlens.store import sends

UTC = timezone.utc


def test_demo_send_records_match_the_simulated_messages_over_seven_days(tmp_path):
    now = datetime(2026, 12, 6, 12, tzinfo=UTC)
    plan = simulate.plan_traffic(4, 300, seed=3, span=demo.DEMO_SPAN, now=now)
    created = [p.receipt.created for p in plan.posts]
    assert max(created) - min(created) > timedelta(days=6)  # the charts get a shape
    messages = {p.receipt.delivery_message_id for p in plan.posts}
    records, campaigns = demo.send_records(plan)
    ids = {r["id"] for r in records}
    assert messages < ids and len(ids - messages) == int(len(messages) * 0.02)  # some receipts never come
    assert {r["currency"] for r in records} == {"GBP", "EUR"} and campaigns
    with demo.start_fake_api(plan) as server:
        env = demo.demo_environment(server)
        client = MobivateClient(env["MOBIVATE_API_KEY"], server.url, server.url)
        result = sends.sync(tmp_path, client, (now - timedelta(days=8)).date(), now.date())
    assert result.records >= len(records) and not result.bad_pages
    (countries,), = duckdb.connect().execute(
        f"SELECT count(DISTINCT country) FROM {sends.sends_sql(tmp_path)}").fetchall()
    assert countries >= 5
