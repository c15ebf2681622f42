"""The demo's Mobivate: send records matching simulated traffic, served by the local fake API
(:mod:`dlrlens.fake_mobivate`), so ``dlrlens up`` on an empty data folder shows campaign names,
costs, countries and networks too.

Contract: :func:`send_records` turns a :class:`dlrlens.simulate.TrafficPlan`'s posts into
message-log records (one per simulated message, created 1-3 s before its first receipt, a
number from several countries or an unparseable one, a cost in GBP or, for one campaign in
four, EUR) plus ``missing_share`` of records whose receipts never come (the Campaigns page's
"Receipts missing"), and a campaign list naming every batch id. Deterministic for a plan.
Never used unless the user asked for the demo and has no API key of their own.
"""

from __future__ import annotations

import random
from datetime import timedelta

from dlrlens.fake_mobivate import NUMBER_PLANS, UNPARSEABLE_NUMBER, FakeServer, create_app

DEMO_KEY = "demo-key"
# How long the demo's traffic spans, so that the charts over time have a shape.
DEMO_SPAN = timedelta(days=7)


def send_records(plan, missing_share: float = 0.02) -> tuple[list[dict], list[dict]]:
    """(message-log records, campaign list) for the messages of ``plan``'s posts."""
    rng = random.Random(plan.seed)
    first: dict[str, tuple] = {}
    for post in plan.posts:
        r = post.receipt
        campaign = dict(post.labels).get("campaign")
        if r.delivery_message_id not in first or r.created < first[r.delivery_message_id][0]:
            first[r.delivery_message_id] = (r.created, r.batch_id, r.client_reference, campaign)
    batches = sorted({batch for _, batch, _, _ in first.values() if batch})
    campaigns = [{"id": batch, "name": f"Demo send {i + 1}", "recipientCount": 0,
                  "scheduled": None, "status": "Completed"} for i, batch in enumerate(batches)]
    # One campaign in four is billed in EUR, the others in GBP: two currencies, never added,
    # and (as a sender's accounts usually are) one currency per campaign.
    names = sorted({str(campaign) for _, _, _, campaign in first.values()})
    euro = {name for i, name in enumerate(names) if i % 4 == 3}

    def currency(campaign) -> str:
        return "EUR" if str(campaign) in euro else "GBP"

    records = []
    for message_id, (created, batch, reference, campaign) in sorted(first.items()):
        records.append(_record(rng, message_id, created - timedelta(seconds=rng.uniform(1, 3)), batch, reference,
                               currency(campaign)))
    for i in range(int(len(first) * missing_share)):
        created, batch, _, campaign = first[rng.choice(sorted(first))]
        records.append(_record(rng, "%032X" % rng.getrandbits(128), created, batch, f"missing-{i}",
                               currency(campaign), status="SENT"))
    records.sort(key=lambda r: (r["created"], r["id"]))
    return records, campaigns


def _record(rng: random.Random, message_id: str, created, batch, reference, currency: str,
            status: str = "DELIVERED") -> dict:
    if rng.random() < 0.02:
        recipient = UNPARSEABLE_NUMBER
    else:
        _, prefix, digits = NUMBER_PLANS[rng.randrange(len(NUMBER_PLANS))]
        recipient = prefix + "".join(str(rng.randrange(10)) for _ in range(digits))
    stamp = created.strftime("%Y-%m-%dT%H:%M:%S+0000")
    return {"id": message_id, "created": stamp, "modified": stamp, "originator": rng.choice(["DLRDEMO", "AcmeBank"]),
            "recipient": recipient, "body": "(demo)", "status": status, "direction": "MT", "inReplyTo": None,
            "routeId": rng.choice(["mglobal", "premium"]), "parts": 1, "cost": rng.choice([0.03, 0.035, 0.04]),
            "currency": currency, "senderReference": reference, "campaignId": batch}


def start_fake_api(plan, host: str = "127.0.0.1") -> FakeServer:
    """The fake Mobivate API over :func:`send_records` of ``plan``, on a free loopback port."""
    records, campaigns = send_records(plan)
    return FakeServer(create_app(records, campaigns, api_key=DEMO_KEY), host=host)


def demo_environment(server: FakeServer) -> dict[str, str]:
    """The settings that point a collector's periodic sync at the demo's fake API."""
    return {"MOBIVATE_API_KEY": DEMO_KEY, "DLRLENS_MOBIVATE_URL": server.url,
            "DLRLENS_MOBIVATE_MESSAGES_URL": server.url, "DLRLENS_SYNC_SECONDS": "20", "DLRLENS_SYNC_DAYS": "8"}
