"""A receipt stream for a fake Mobivate's message log (:mod:`dlrlens.fake_mobivate`) and a
client of that fake: what the tests of Mobivate's send records on the Iceberg store feed.

* :func:`stream`: receipts for most MT records of the log (every 7th gets none: receipts
  missing), six messages the log does not know (no send record: cost unknown), every third
  message without its batch id.
* :func:`client`: a :class:`dlrlens.mobivate.MobivateClient` of a running fake that never sleeps.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from dlrlens.mobivate import MobivateClient, Retry
from dlrlens.store import sends
from tests.support.factory import receipt


def stream(records: list[dict], campaigns: list[dict], start: datetime) -> list[dict]:
    """Receipts for most MT records of the log (some never get one), a few for messages the log
    does not know (from ``start``, hourly), some campaign sends by batch id."""
    rows = []
    for i, record in enumerate(r for r in records if r["direction"] == "MT"):
        if i % 7 == 0:
            continue
        created = sends.parse_time(record["created"]) + timedelta(seconds=5)
        batch = record["campaignId"] if i % 3 else None
        rows.append(receipt(record["id"], "ACCEPTED", created, batch_id=batch))
        final = ("DELIVERED", "UNDELIVERABLE", "EXPIRED")[i % 3]
        rows.append(receipt(record["id"], final, created + timedelta(seconds=30 + i % 90), batch_id=batch))
    rows += [receipt(f"NOLOG{k:027d}", "DELIVERED", start + timedelta(hours=k), batch_id=campaigns[0]["id"])
             for k in range(6)]
    return rows


def client(server) -> MobivateClient:
    return MobivateClient("k", server.url, server.url, retry=Retry(sleep=lambda s: None))
