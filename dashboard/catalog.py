"""The KPI catalog: every KPI's column, label, unit and definition, written once.

Everyone reads it from here: the query layer names its columns after it
(:data:`KPI_COLUMNS`, :data:`COUNT_KPIS`, :data:`RECEIPT_KPIS`, :data:`LATENCY_COLUMNS`,
:data:`TREND_COLUMNS`), the pages show a KPI's :attr:`Kpi.definition` as its help tooltip,
downloads and the report format numbers by :func:`unit`, the report's Summary and
Definitions sheets list :data:`TERMS` and :data:`KPIS`, and ``scripts/kpi_docs.py`` prints
the README's KPI table from them (``tests/cli/test_docs.py`` keeps the README equal).

Plain data, no imports beyond the standard library: importing it costs nothing.

A new KPI: add a :class:`Kpi` to :data:`KPIS` (its position is its column's position in
every table), compute the column in :mod:`dashboard.queries`, and regenerate the README
block with ``python3 scripts/kpi_docs.py --write``.
"""

from __future__ import annotations

from dataclasses import dataclass

# How a number reads: a count (1,234), a share of 0..1 (89.3%), a duration in seconds (3.5 s).
UNITS = ("count", "share", "seconds", "amount", "text")  # amount: money in the row's currency


@dataclass(frozen=True)
class Term:
    """A notion every KPI builds on (shown before the KPIs in the report and the README)."""

    name: str
    definition: str


@dataclass(frozen=True)
class Kpi:
    """One KPI.

    ``column``: its key, the column name in every table, download and report. ``label``: its
    name for people. ``unit``: one of :data:`UNITS`. ``definition``: what it counts, in the
    words every tooltip, the report and the README show. ``per_receipt``: computed from the
    raw receipts rather than the per-message state (slow at scale: NaN unless asked for,
    see :data:`RECEIPT_KPIS`).
    """

    column: str
    label: str
    unit: str
    definition: str
    per_receipt: bool = False

    def __post_init__(self):
        if self.unit not in UNITS:
            raise ValueError(f"{self.column}: unit {self.unit!r} is not one of {UNITS}")


TERMS: tuple[Term, ...] = (
    Term("Message", "One SMS, identified by Mobivate's deliveryMessageId. A receipt stored more than once "
         "(same receipt id) counts once."),
    Term("Campaign", "The campaign label of the webhook URL the message's receipts arrived on (from its earliest "
         "labelled receipt), else the campaign name of its batchId (imported with `dlrlens campaigns import` or "
         "the Campaigns page, else Mobivate's campaign list from `dlrlens sync`), else its batchId, else (none). "
         "A message in Mobivate's log without any receipt: the name of its log campaignId, else that id."),
    Term("Sent time", "The created time of the message's earliest receipt. Date ranges and daily/hourly "
         "buckets use it, in the report's time zone."),
    Term("Outcome", "The final receipt (delivered, failed or unknown) with the latest created time decides: "
         "delivered, failed (its status is the failure reason) or unknown. A message without any final "
         "receipt is pending. An intermediate receipt never overrides a final one, whatever the arrival order."),
)

_LATENCY = ("{} percentile of the time to deliver: created time of the message's first DELIVERED receipt "
            "minus its sent time, over messages with a time to deliver (linear interpolation).")
_WITHIN = "Share of the messages with a time to deliver that were delivered within {} (inclusive)."

# In column order: every KPI table (queries.kpis, queries.campaigns, the report) has them so.
KPIS: tuple[Kpi, ...] = (
    Kpi("messages", "Messages", "count",
        "Distinct messages sent in the period (by sent time) that match the filters."),
    Kpi("delivered", "Delivered", "count", "Messages whose outcome is delivered."),
    Kpi("failed", "Failed", "count",
        "Messages whose outcome is failed (their deciding status is the failure reason)."),
    Kpi("unknown", "Unknown", "count",
        "Messages whose outcome is unknown: the network reported no usable outcome, or Mobivate "
        "sent a status dlrlens does not recognise."),
    Kpi("pending", "Pending", "count",
        "Messages without any final receipt yet (only ACCEPTED, INTERIM_* or RETRY receipts)."),
    Kpi("delivery_rate", "Delivery rate", "share",
        "Delivered / (delivered + failed + unknown): the share of finished messages that "
        "were delivered. Pending messages are left out. Empty when no message has finished."),
    Kpi("delivered_of_all", "Delivered of all", "share", "Delivered / messages, pending ones included."),
    Kpi("latency_p50_s", "Time to deliver p50 (s)", "seconds", _LATENCY.format("Median (50th)")),
    Kpi("latency_p90_s", "Time to deliver p90 (s)", "seconds", _LATENCY.format("90th")),
    Kpi("latency_p95_s", "Time to deliver p95 (s)", "seconds", _LATENCY.format("95th")),
    Kpi("latency_p99_s", "Time to deliver p99 (s)", "seconds", _LATENCY.format("99th")),
    Kpi("latency_messages", "Messages with a time to deliver", "count",
        "Delivered messages that had a receipt before their first DELIVERED receipt; only "
        "these have a time to deliver."),
    Kpi("delivered_without_earlier", "Delivered without an earlier receipt", "count",
        "Delivered messages whose first receipt was already DELIVERED, so the send "
        "time is unknown and no time to deliver is counted."),
    Kpi("within_10s", "Delivered within 10 s", "share", _WITHIN.format("10 seconds")),
    Kpi("within_1m", "Delivered within 1 min", "share", _WITHIN.format("1 minute")),
    Kpi("within_5m", "Delivered within 5 min", "share", _WITHIN.format("5 minutes")),
    Kpi("within_1h", "Delivered within 1 h", "share", _WITHIN.format("1 hour")),
    Kpi("webhook_lag_p50_s", "Webhook lag p50 (s)", "seconds",
        "Median of received time minus created time over the messages' distinct receipts: "
        "how long Mobivate took to call the webhook.", per_receipt=True),
    Kpi("webhook_lag_p95_s", "Webhook lag p95 (s)", "seconds",
        "95th percentile of received time minus created time over distinct receipts.", per_receipt=True),
    Kpi("receipts", "Receipts", "count",
        "Distinct receipts of the messages (a receipt stored twice counts once).", per_receipt=True),
    Kpi("duplicate_rows", "Duplicate receipts stored", "count",
        "Stored receipt rows minus distinct receipts: repeated deliveries of the same receipt "
        "(Mobivate retries), counted once everywhere else.", per_receipt=True),
    Kpi("regressions", "Regressions", "count",
        "Intermediate receipts created after the message's deciding final receipt; they do "
        "not change the outcome."),
)

# The campaign funnel (clicks and replies, dashboard.queries.funnel): its own tables and the
# Funnel page; appended to the Campaigns table and the report beside KPIS.
FUNNEL_TERMS: tuple[Term, ...] = (
    Term("Click", "A short-URL click Mobivate reported (click webhook). It belongs to the message whose "
         "deliveryMessageId is its messageId, else to the message of its batchId with its clientRef as "
         "clientReference; a click matching no stored message is unlinked (counted apart) until that "
         "message's receipts arrive. The same click received again within 60 s is a retry and counts once. "
         "Funnel figures follow their messages: a click counts with its message's sent time and filters."),
    Term("Reply", "An incoming message (incoming webhook). It belongs to the message it replies to (inReplyTo), "
         "else to its batch (logicalMessageId: the receipts do not say which number got which message, so it "
         "counts as one message per batch and replier, attributed to the batch's first sent message, whose "
         "campaign and filters it follows; but when the same number also replied by inReplyTo to a message of "
         "that batch, it belongs to that message), else it is unlinked. The same reply id stored twice counts "
         "once."),
)

_FUNNEL_DELAY = ("{} of the time from delivery (created time of the message's first DELIVERED receipt) to its "
                 "first click, over clicked messages (linear interpolation); negative when the click reached us "
                 "before the DELIVERED receipt's created time.")

FUNNEL_KPIS: tuple[Kpi, ...] = (
    Kpi("clicked", "Clicked", "count", "Delivered messages with at least one click."),
    Kpi("click_rate", "Click rate", "share", "Clicked / delivered. Empty when no message was delivered."),
    Kpi("clicks", "Clicks", "count", "All clicks on the messages (delivered or not), each click once."),
    Kpi("replied", "Replied", "count",
        "Messages with at least one reply (a reply linked only to its batch counts as one message per batch "
        "and replier, unless that number replied to a message of the batch: then it is that message's)."),
    Kpi("opted_out", "Opted out", "count",
        "Replied messages with an opt-out reply: its text, ignoring case and whitespace, is one of the "
        "keywords (STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT; DLRLENS_OPT_OUT_KEYWORDS)."),
    Kpi("opt_out_rate", "Opt-out rate", "share", "Opted out / delivered. Empty when no message was delivered."),
    Kpi("click_delay_p50_s", "Time to first click p50 (s)", "seconds", _FUNNEL_DELAY.format("Median")),
    Kpi("click_delay_p95_s", "Time to first click p95 (s)", "seconds", _FUNNEL_DELAY.format("95th percentile")),
)
FUNNEL_COLUMNS: list[str] = [k.column for k in FUNNEL_KPIS]


# Cost and send-record KPIs (dashboard/queries/cost.py), from Mobivate's message log (`dlrlens
# sync`), which the derived state keeps with each message. One row per campaign and currency: two currencies are never added.
_SENT_IN_PERIOD = ("messages sent in the period (sent time: the earliest receipt, else the log's created time), "
                   "messages whose receipts never arrived included (they were billed)")
_FROM_SUBMISSION = ("{} of the time from submission: created time of the message's first DELIVERED receipt minus its "
                    "created time in Mobivate's log, over delivered messages whose log record was created before "
                    "that receipt (linear interpolation). The time to deliver, beside it, starts at the first "
                    "receipt instead: a proxy for when the message reached Mobivate's network when no log record "
                    "is synced.")
COST_KPIS: tuple[Kpi, ...] = (
    Kpi("cost", "Cost", "amount", f"Sum of Mobivate's log cost over the {_SENT_IN_PERIOD}, in `currency`. A "
        "message's record is its MT record in the message log, else in the newer API's history (the latest "
        "modified). Rounded to a millionth of the currency, so that the same records give the same sum on every "
        "store (a floating-point sum depends on the order it adds in)."),
    Kpi("currency", "Currency", "text",
        "The currency of `cost` as Mobivate's log gives it; a campaign billed in two currencies has one row per "
        "currency. Empty when none of its messages has a log record."),
    Kpi("cost_per_delivered", "Cost per delivered", "amount",
        "cost / delivered messages among the messages billed in that currency."),
    Kpi("failed_cost", "Failed cost", "amount",
        "Cost of the messages whose outcome is failed or unknown."),
    Kpi("messages_without_cost", "Messages without cost", "count",
        "Messages of the campaign with receipts but no Mobivate log record (not synced yet, or outside the "
        "synced days): their cost is unknown and not in `cost` (per campaign, on each of its currency rows)."),
    Kpi("receipts_missing", "Receipts missing", "count",
        "MT messages in Mobivate's log with no receipt at all DLRLENS_RECEIPTS_MISSING_AFTER (default 24 h) "
        "after their log created time: the webhook was down or misconfigured. They never change the "
        "receipt-based KPIs."),
    Kpi("latency_from_submission_p50_s", "Time from submission p50 (s)", "seconds", _FROM_SUBMISSION.format("Median")),
    Kpi("latency_from_submission_p95_s", "Time from submission p95 (s)", "seconds",
        _FROM_SUBMISSION.format("95th percentile")),
)
COST_COLUMNS: list[str] = [k.column for k in COST_KPIS if not k.column.startswith("latency_")]

# Every KPI, in the order the report's Definitions sheet and the README list them.
ALL_KPIS: tuple[Kpi, ...] = KPIS + FUNNEL_KPIS + COST_KPIS
_BY_COLUMN: dict[str, Kpi] = {k.column: k for k in ALL_KPIS}

# Units of the other numeric columns of the tables (not KPIs, not counts).
COLUMN_UNITS: dict[str, str] = {
    "share": "share",  # a failure reason's share of the failed messages
    "p50_s": "seconds", "p90_s": "seconds", "p95_s": "seconds", "p99_s": "seconds",  # per-campaign latency
    "latency_s": "seconds",  # one message's time to deliver
}

# ---------------------------------------------------------------------------------- column lists

KPI_COLUMNS: list[str] = [k.column for k in KPIS]
COUNT_KPIS: list[str] = [k.column for k in KPIS if k.unit == "count"]
RECEIPT_KPIS: list[str] = [k.column for k in KPIS if k.per_receipt]
LATENCY_PERCENTILE_KPIS: list[str] = [c for c in KPI_COLUMNS if c.startswith("latency_p")]
WITHIN_KPIS: list[str] = [c for c in KPI_COLUMNS if c.startswith("within_")]
# queries.latency_by_campaign: per campaign, the percentiles named without the latency_ prefix.
LATENCY_COLUMNS: list[str] = (["latency_messages"] + [c.removeprefix("latency_") for c in LATENCY_PERCENTILE_KPIS]
                              + WITHIN_KPIS)
# queries.trend: per time bucket, the outcome counts and the delivery rate.
TREND_COLUMNS: list[str] = ["bucket_start"] + KPI_COLUMNS[:KPI_COLUMNS.index("delivery_rate") + 1]

SHARE_COLUMNS: frozenset[str] = frozenset(
    [k.column for k in ALL_KPIS if k.unit == "share"] + [c for c, u in COLUMN_UNITS.items() if u == "share"])
SECONDS_COLUMNS: frozenset[str] = frozenset(
    [k.column for k in ALL_KPIS if k.unit == "seconds"] + [c for c, u in COLUMN_UNITS.items() if u == "seconds"])

# ---------------------------------------------------------------------------------- look-ups


def kpi(column: str) -> Kpi:
    """The KPI of ``column``; KeyError if it is not one."""
    try:
        return _BY_COLUMN[column]
    except KeyError:
        raise KeyError(f"{column!r} is not a KPI; see dashboard.catalog.KPIS") from None


def find(column: str) -> Kpi | None:
    """The KPI of ``column``, or None."""
    return _BY_COLUMN.get(column)


def definition(column: str) -> str | None:
    """The definition of the KPI ``column`` (a tooltip's text), or None for other columns."""
    found = _BY_COLUMN.get(column)
    return found.definition if found else None


def label(column: str) -> str | None:
    """The label of the KPI ``column``, or None for other columns."""
    found = _BY_COLUMN.get(column)
    return found.label if found else None


def unit(column: str) -> str | None:
    """How the numbers of ``column`` read: a KPI's unit, a known table column's, else None."""
    found = _BY_COLUMN.get(column)
    return found.unit if found else COLUMN_UNITS.get(column)
