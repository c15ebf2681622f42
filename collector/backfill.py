"""Store traffic that never reached a webhook, with the arrival times it would have had.

``dlrlens up``'s demo opens on a week of history so its charts have a shape. Posting a
back-dated week through the webhook now would make every receipt look days late (webhook lag
is ``received_at - created``), so the history is stored here instead, and only the live part
of the demo travels through the real webhook, each post when it is due.

Contract: :func:`store_posts` parses each post exactly as the collector would (the same
parsers, label policy, limits and privacy settings, from the collector's ``Settings``), with
``received_at`` = the post's ``due`` time plus a webhook lag drawn from :data:`WEBHOOK_LAG`
(seeded: the same posts give the same records) instead of now, and stores the records through the
store's durable writer (:class:`dlrlens.store.writer.ReceiptStorage`, a log slot of its own,
flushed before it returns). A post the parsers refuse raises :class:`BadBody`: the posts come
from the simulator, never from a user, so a refusal is a bug to see, not data to skip.
"""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import timedelta
from typing import Iterable

from collector.app import event_privacy, label_policy, receipt_limits, table_parsers
from collector.parsing import checked_url_labels
from collector.settings import Settings
from dlrlens.simulate import Delay, SimulatedPost
from dlrlens.store.writer import ReceiptStorage

# Mobivate's post to our webhook, as the live demo measured it (p50 1.3 s, p95 5 s over loopback
# plus Mobivate's own queue): a lognormal around a second.
WEBHOOK_LAG = Delay(1.2, 0.8)
# The simulator's endpoint of a post -> the table its records go to.
TABLES = {"dlr": "receipts", "click": "clicks", "incoming": "replies"}
# Records handed to the writer at once: one log append and fsync per batch, not per post
# (a week of demo traffic is ~15,000 posts).
BATCH_RECORDS = 5_000


def store_posts(settings: Settings, posts: Iterable[SimulatedPost], seed: int = 0) -> dict[str, int]:
    """Parse and store ``posts`` as received a webhook lag after their due times; records
    stored per table."""
    parsers, policy = table_parsers(receipt_limits(settings), event_privacy(settings)), label_policy(settings)
    rng = random.Random(seed)
    pending: dict[str, list[dict]] = defaultdict(list)
    stored: dict[str, int] = defaultdict(int)
    storage = ReceiptStorage(settings.data_dir)
    try:
        def hand_over(table: str) -> None:
            storage.store(pending[table], table)
            stored[table] += len(pending[table])
            pending[table] = []

        for post in posts:
            table = TABLES[post.endpoint]
            received_at = post.due + timedelta(seconds=WEBHOOK_LAG.draw(rng))
            parsed = parsers[table](post.body, post.content_type, checked_url_labels(list(post.labels), policy),
                                    received_at)
            pending[table].extend(parsed.records)
            if len(pending[table]) >= BATCH_RECORDS:
                hand_over(table)
        for table in list(pending):
            if pending[table]:
                hand_over(table)
        storage.flush()
    finally:
        storage.close()
    return dict(stored)
