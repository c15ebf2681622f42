"""Generated receipt streams for the alert tests (written with :mod:`tests.support.factory`).

:func:`stream` makes ``per_minute`` messages a minute of one campaign over [start, end), each
with one final receipt ``settle`` seconds after its sent time: DELIVERED, or UNDELIVERABLE for
the share ``1 - delivered`` of them (exactly, by position: no randomness); ``pending`` leaves
that share of messages at ACCEPTED instead (no final receipt).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from tests.support.factory import message

# An alerts file's parts the tests share: the channel "ops" (a URL no one answers) and a
# delivery-rate drop below 85 % per campaign over 30 minutes (20 messages at least), notifying it.
OPS_CHANNEL = """
[[notify]]
name = "ops"
url = "json://ops.invalid/hook"
"""


def drop_rule(notify: tuple[str, ...] = ("ops",)) -> str:
    """The drop rule notifying the channels ``notify``."""
    channels = ", ".join(f'"{name}"' for name in notify)
    return f"""
[[rule]]
name = "drop"
kind = "delivery_rate"
by = "campaign"
window = "30m"
min_messages = 20
below = 0.85
notify = [{channels}]
"""


DROP_RULE = drop_rule()


def hook_rules(url: str) -> str:
    """The alerts file of the collector tests: channel "hook" at ``url``, the drop rule over 10
    minutes and refused requests (3 unauthorized in 10 minutes), both notifying it."""
    return f"""
[[notify]]
name = "hook"
url = "{url}"
[[rule]]
name = "drop"
kind = "delivery_rate"
by = "campaign"
window = "10m"
min_messages = 20
below = 0.85
notify = ["hook"]
[[rule]]
name = "refused"
kind = "rejected_requests"
window = "10m"
min_messages = 3
reasons = ["unauthorized"]
notify = ["hook"]
"""


def stream(campaign: str, start: datetime, end: datetime, *, per_minute: int = 2, delivered: float = 0.97,
           pending: float = 0.0, settle: float = 5.0, prefix: str | None = None, labels: dict | None = None,
           received_delay: float = 2.0) -> list[dict]:
    rows: list[dict] = []
    prefix = prefix or campaign
    minute, i = start, 0
    while minute < end:
        for k in range(per_minute):
            sent = minute + timedelta(seconds=k * 60 / per_minute)
            position = (i * 37) % 100  # spreads each share evenly over time
            if position < round(pending * 100):
                steps = [("ACCEPTED", 1.0)]
            elif position < round(pending * 100) + round((1 - delivered) * 100):
                steps = [("ACCEPTED", 1.0), ("UNDELIVERABLE", settle)]
            else:
                steps = [("ACCEPTED", 1.0), ("DELIVERED", settle)]
            for row in message(f"{prefix}-{sent:%Y%m%d%H%M%S}-{k}", sent, steps, campaign=campaign, labels=labels):
                row["received_at"] = row["created"] + timedelta(seconds=received_delay)
                rows.append(row)
            i += 1
        minute += timedelta(minutes=1)
    return rows


def daily(campaign: str, at: datetime, days: int, span: timedelta, **options) -> list[dict]:
    """:func:`stream` over [at - d days - span, at - d days) for d = 1..days (the baseline)."""
    rows = []
    for d in range(1, days + 1):
        end = at - timedelta(days=d)
        rows += stream(campaign, end - span, end, prefix=f"{campaign}-d{d}", **options)
    return rows
