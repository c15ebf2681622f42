"""Traffic simulator: realistic Mobivate delivery receipts posted to a collector's webhook.

It is both the demo-data source and a load generator (``dlrlens simulate``). Two halves:

* :func:`generate_traffic` is pure and seedable: it plans campaigns, messages and their
  receipts and returns the posts Mobivate would make, in the order it would make them.
  Nothing in it touches the network or the clock, so tests check its statistics directly.
* :func:`send` posts them over HTTP (a bounded thread pool, one ``requests`` session per
  thread), paced by ``rate``, retrying connection errors and transient statuses the way
  Mobivate would, and returns :class:`SendStats`.

:func:`plan_traffic` is one run's traffic, ending now (a seed and a start chosen when not
given). ``dlrlens simulate`` (its options and output are in :mod:`dlrlens.cli`) plans, prints
:func:`describe_traffic`, sends and prints :meth:`SendStats.summary`.

The model, in short. Each campaign (a human name and a team, both sent as webhook query
labels, since Mobivate's receipts carry no campaign) is one or a few batches (``batchId``).
Every message gets an ``ACCEPTED`` receipt, sometimes ``INTERIM_QUEUED`` /
``INTERIM_ACKNOWLEDGED`` / ``RETRY``, then one final status after a long-tailed delay;
a few percent never get a final. Receipts come as JSON or as the form-encoded
``xml=<deliveryreceipt>`` variant. Some receipts are posted twice (Mobivate's retries) and
some pending receipts arrive after their message's final (no ordering guarantee).

Clicks and replies (:func:`generate_events`): a share of the delivered messages gets a short-URL
click (some two), posted to ``/click`` minutes after delivery, and a smaller share a reply posted
to ``/incoming``, some of them opt-outs (``STOP`` in any case and spacing), a few linked only by
their batch. They go to the collector's other endpoints: the ``/dlr`` of ``--url`` becomes
``/click`` and ``/incoming`` (:func:`endpoint_url`).
"""

from __future__ import annotations

import json
import math
import random
import re
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterable, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from xml.sax.saxutils import escape as xml_escape

import requests

from dlrlens.statuses import lookup
from dlrlens.store.events import DEFAULT_OPT_OUT_KEYWORDS, normalise_reply

JSON_CONTENT_TYPE = "application/json"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"

# Mobivate sends no auth header, so the webhook's shared secret travels in the URL.
TOKEN_PARAM = "token"

# Statuses after which Mobivate would post the same receipt again; other answers are final.
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})

DEFAULT_SPAN = timedelta(hours=3)
# Default --start leaves this much (simulated) time after the last send for late finals.
DEFAULT_TAIL_ROOM = timedelta(hours=1)
# No receipt comes later than this after its message was sent (validity periods end).
MAX_DELAY = timedelta(hours=48)


# --------------------------------------------------------------------------------------
# Campaigns
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CampaignProfile:
    """How one campaign behaves.

    ``kind`` is ``bulk`` (batches blasted out within minutes) or ``trickle`` (one message
    at a time across the whole window, like OTPs). ``delivered`` is the share of final
    receipts that are DELIVERED. ``failure_bias`` multiplies the base weights of
    :data:`FAILURE_MIX` for this campaign's failures. ``weight`` is its relative volume.
    """

    name: str
    team: str
    kind: str
    delivered: float
    weight: float
    uses_reference: bool
    failure_bias: dict[str, float] = field(default_factory=dict)


# Ordered so that any prefix averages about 90% delivered: `--campaigns N` takes the first N.
CAMPAIGNS: tuple[CampaignProfile, ...] = (
    CampaignProfile("black-friday-uk", "retail", "bulk", 0.90, 3.0, False, {"EXPIRED": 1.3}),
    CampaignProfile("otp-login", "security", "trickle", 0.95, 2.0, True,
                    {"EXPIRED": 1.6, "FAILED_NOROUTE": 0.5}),
    CampaignProfile("renewal-reminder", "insurance", "bulk", 0.91, 1.5, True),
    # An old, stale list: dead numbers and opt-outs.
    CampaignProfile("winback-spring-sale", "marketing", "bulk", 0.86, 2.0, False,
                    {"UNDELIVERABLE": 2.0, "FAILED_RECIPIENT_BLACKLISTED": 3.0}),
    CampaignProfile("appointment-reminders", "health", "trickle", 0.93, 1.0, True),
    CampaignProfile("cart-abandonment", "retail", "trickle", 0.89, 1.0, True),
    CampaignProfile("delivery-updates", "logistics", "trickle", 0.92, 1.5, True),
    CampaignProfile("payment-due-notice", "billing", "bulk", 0.90, 1.0, True,
                    {"FAILED_EXHAUSTED": 1.5}),
    CampaignProfile("password-reset", "security", "trickle", 0.94, 0.8, True),
    # Sent to Australian numbers over a patchier route.
    CampaignProfile("loyalty-points-au", "marketing", "bulk", 0.88, 1.2, False,
                    {"FAILED_NOROUTE": 3.0, "FAILED_ROUTE_INVALID": 3.0}),
    CampaignProfile("event-invite-london", "events", "bulk", 0.89, 1.0, False),
    CampaignProfile("survey-nps", "cx", "bulk", 0.87, 0.8, False, {"REJECTED": 2.0}),
)


def campaign_profiles(count: int) -> list[CampaignProfile]:
    """The first ``count`` campaigns; beyond the catalogue, names repeat with ``-2``, ``-3``..."""
    if count < 1:
        raise ValueError("campaigns must be at least 1")
    profiles = []
    for index in range(count):
        base = CAMPAIGNS[index % len(CAMPAIGNS)]
        round_ = index // len(CAMPAIGNS)
        name = base.name if round_ == 0 else f"{base.name}-{round_ + 1}"
        profiles.append(CampaignProfile(name, base.team, base.kind, base.delivered, base.weight,
                                        base.uses_reference, base.failure_bias))
    return profiles


# --------------------------------------------------------------------------------------
# Statuses and delays
# --------------------------------------------------------------------------------------

# Relative frequency of each failure among a campaign's non-delivered finals.
FAILURE_MIX: dict[str, float] = {
    "EXPIRED": 30,
    "UNDELIVERABLE": 25,
    "FAILED_RECIPIENT_BLACKLISTED": 8,
    "REJECTED": 6,
    "FAILED_EXHAUSTED": 6,
    "UNKNOWN": 6,
    "FAILED_NOROUTE": 5,
    "FAILED_NACK": 4,
    "FAILED_UNKNOWN": 3,
    "FAILED_ROUTE_INVALID": 2,
    "FAILED_INTERNAL_ERROR": 1,
    "DELETED": 1,
    "FAILED_ORIGINATOR_REJECTED": 1,
    "FAILED_LIMITS_EXCEEDED": 0.5,
    "FAILED_INSUFFICIENT_CREDIT": 0.5,
}


@dataclass(frozen=True)
class Delay:
    """A lognormal delay: ``median`` seconds, spread ``sigma`` (of the log)."""

    median: float
    sigma: float

    def draw(self, rng: random.Random) -> float:
        return rng.lognormvariate(math.log(self.median), self.sigma)


QUICK_FAIL = Delay(1.5, 0.8)  # refused at submission: no route, block list, bad sender...
NETWORK_FAIL = Delay(20, 1.5)  # the network answered after trying
# DELIVERED: most handsets answer in seconds; phones that were off answer much later.
DELIVERED_FAST, DELIVERED_LATE, DELIVERED_LATE_SHARE = Delay(4, 1.3), Delay(1500, 1.2), 0.06
FINAL_DELAYS: dict[str, Delay] = {
    "EXPIRED": Delay(3 * 3600, 0.6),  # waits out the validity period
    "FAILED_EXHAUSTED": Delay(2700, 0.8),  # after the retry schedule ran out
    "UNDELIVERABLE": NETWORK_FAIL,
    "UNKNOWN": NETWORK_FAIL,
    "FAILED_NACK": NETWORK_FAIL,
    "FAILED_UNKNOWN": NETWORK_FAIL,
}
ACCEPT_DELAY = Delay(0.4, 0.6)  # send request -> ACCEPTED
PENDING_HORIZON = Delay(60, 1.5)  # how long interims keep coming for a never-final message

# Chance that a message gets each interim receipt (in this order, between ACCEPTED and final).
INTERIM_CHANCES = (("INTERIM_QUEUED", 0.20), ("INTERIM_ACKNOWLEDGED", 0.12), ("RETRY", 0.04))
RETRY_CHANCE_WHEN_SLOW = 0.6  # EXPIRED / FAILED_EXHAUSTED went through retries

DUPLICATE_LAG = Delay(30, 1.0)  # Mobivate re-posting a receipt it thinks was not taken
LATE_LAG = Delay(3, 1.0)  # how far after the final an out-of-order interim arrives

# Parts per message (long texts are split); the XML form carries one receipt per part.
PARTS_MIX = ((1, 0.88), (2, 0.09), (3, 0.03))

# How `created` is written: offset style x milliseconds. Weighted towards the documented
# "+00:00" with milliseconds; every variant appears.
CREATED_STYLES: tuple[tuple[tuple[str, bool], float], ...] = (
    (("+00:00", True), 0.40),
    (("+00:00", False), 0.10),
    (("+0000", True), 0.12),
    (("+0000", False), 0.08),
    (("Z", True), 0.20),
    (("Z", False), 0.10),
)


def status_code(name: str) -> int:
    """Mobivate's code for a documented status name (the table is the single source)."""
    found = lookup(name, None)
    if found is None:
        raise KeyError(f"{name} is not in dlrlens/statuses.csv")
    return found.code


def final_delay(status: str, rng: random.Random) -> float:
    """Seconds from send to the final receipt, long-tailed, capped at :data:`MAX_DELAY`."""
    if status == "DELIVERED":
        delay = DELIVERED_LATE if rng.random() < DELIVERED_LATE_SHARE else DELIVERED_FAST
    else:
        delay = FINAL_DELAYS.get(status, QUICK_FAIL)
    return min(delay.draw(rng), MAX_DELAY.total_seconds())


def _weighted_choice(rng: random.Random, options: Sequence, weights: Sequence[float]):
    return rng.choices(options, weights=weights, k=1)[0]


def choose_final(profile: CampaignProfile, rng: random.Random) -> str:
    if rng.random() < profile.delivered:
        return "DELIVERED"
    names = list(FAILURE_MIX)
    weights = [FAILURE_MIX[n] * profile.failure_bias.get(n, 1.0) for n in names]
    return _weighted_choice(rng, names, weights)


# --------------------------------------------------------------------------------------
# Receipts and their wire forms
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Receipt:
    """One delivery receipt as Mobivate writes it.

    ``created`` is the instant ``created_text`` denotes (UTC). ``part`` is set only for the
    XML form, which has that field; the JSON form has ``parts`` alone.
    """

    delivery_message_id: str
    batch_id: str | None
    client_reference: str | None
    created: datetime
    created_text: str
    status: str
    status_code: int
    parts: int
    part: int | None
    source_format: str  # "json" | "xml"

    @property
    def is_final(self) -> bool:
        found = lookup(self.status, None)
        return found is not None and found.category != "pending"


def format_created(instant: datetime, offset_style: str, with_millis: bool) -> str:
    """Write a UTC instant the way Mobivate does: ``2023-07-28T03:23:22.000+00:00`` and kin.

    Milliseconds are truncated; callers pass instants already on the whole unit.
    """
    text = instant.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    if with_millis:
        text += f".{instant.microsecond // 1000:03d}"
    return text + offset_style


def _ceil_instant(instant: datetime, with_millis: bool) -> datetime:
    """Round up to the precision the text will carry, so written times never go backwards."""
    unit = 1000 if with_millis else 1_000_000
    remainder = instant.microsecond % unit
    return instant if remainder == 0 else instant + timedelta(microseconds=unit - remainder)


def receipt_json(receipt: Receipt) -> bytes:
    """The JSON body, with the documented fields in the documented order (receipt.json)."""
    document = {
        "deliveryMessageId": receipt.delivery_message_id,
        "batchId": receipt.batch_id,
        "clientReference": receipt.client_reference,
        "created": receipt.created_text,
        "status": receipt.status,
        "statusCode": receipt.status_code,
        "parts": receipt.parts,
        "hlr": None,
    }
    return json.dumps(document).encode("utf-8")


def receipt_form(receipt: Receipt) -> bytes:
    """The form-encoded ``xml=<deliveryreceipt>...`` body (receipt-form.txt).

    As in the reference, the XML has no batchId; a null clientReference is left out.
    """
    fields = [("created", receipt.created_text), ("deliveryMessageId", receipt.delivery_message_id)]
    if receipt.client_reference is not None:
        fields.append(("clientReference", receipt.client_reference))
    fields += [
        ("status", receipt.status),
        ("statusCode", str(receipt.status_code)),
        ("part", str(receipt.part if receipt.part is not None else 1)),
        ("parts", str(receipt.parts)),
    ]
    xml = "<deliveryreceipt>" + "".join(
        f"<{tag}>{xml_escape(value)}</{tag}>" for tag, value in fields
    ) + "</deliveryreceipt>"
    return urlencode({"xml": xml}).encode("ascii")


def encode_receipt(receipt: Receipt) -> tuple[bytes, str]:
    """``(body, content type)`` for the receipt's own form."""
    if receipt.source_format == "xml":
        return receipt_form(receipt), FORM_CONTENT_TYPE
    return receipt_json(receipt), JSON_CONTENT_TYPE


# --------------------------------------------------------------------------------------
# Planning traffic
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimulatedPost:
    """One POST Mobivate would make.

    ``labels`` are the query parameters this post adds to the webhook URL (campaign, team).
    ``due`` is when Mobivate would post it (simulated clock): the receipt's ``created``,
    later for a ``duplicate`` (a re-post of an earlier post's identical body) and for an
    ``out_of_order`` pending receipt deliberately posted after its message's final.
    """

    labels: tuple[tuple[str, str], ...]
    body: bytes
    content_type: str
    receipt: Receipt | None  # None: a click or a reply (see ``endpoint``)
    due: datetime
    duplicate: bool = False
    out_of_order: bool = False
    endpoint: str = "dlr"  # dlr, click or incoming: the collector path it is posted to

    @property
    def campaign(self) -> str | None:
        return dict(self.labels).get("campaign")


@dataclass(frozen=True)
class _Message:
    delivery_message_id: str
    batch_id: str
    client_reference: str | None
    parts: int
    source_format: str
    timeline: tuple[tuple[str, datetime], ...]  # (status, when), in time order
    has_final: bool


def _random_hex(rng: random.Random) -> str:
    return f"{rng.getrandbits(128):032X}"


def _random_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


def _split(total: int, weights: Sequence[float]) -> list[int]:
    """Split ``total`` proportionally to ``weights`` (largest remainder), exactly."""
    whole = sum(weights)
    shares = [total * w / whole for w in weights]
    counts = [int(s) for s in shares]
    by_remainder = sorted(range(len(shares)), key=lambda i: shares[i] - counts[i], reverse=True)
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _send_times(profile: CampaignProfile, size: int, rng: random.Random, start: datetime,
                span: timedelta, scale: float) -> list[tuple[int, datetime]]:
    """``(batch number, send time)`` for each message of a campaign, in time order.

    Bulk batches each go out within minutes from a random moment of the window; a trickle
    campaign's batches tile the window and their messages spread across it.
    """
    if size == 0:
        return []
    span_s = span.total_seconds()
    if profile.kind == "bulk":
        batches = min(size, _weighted_choice(rng, (1, 2, 3), (0.5, 0.3, 0.2)))
    else:
        batches = min(size, rng.randint(2, 4))
    batch_sizes = _split(size, [rng.uniform(0.5, 1.5) for _ in range(batches)])
    sends = []
    for batch, batch_size in enumerate(batch_sizes):
        if profile.kind == "bulk":
            throughput = rng.uniform(20, 100)  # messages per second through the API
            begin = rng.uniform(0, span_s * 0.8)
            end = begin + batch_size / throughput
        else:
            begin, end = span_s * batch / batches, span_s * (batch + 1) / batches
        sends += [(batch, rng.uniform(begin, end)) for _ in range(batch_size)]
    sends.sort(key=lambda pair: pair[1])
    return [(batch, start + _seconds(offset / scale)) for batch, offset in sends]


def _timeline(profile: CampaignProfile, sent: datetime, rng: random.Random, pending_share: float,
              scale: float) -> tuple[tuple[tuple[str, datetime], ...], bool]:
    """The statuses one message goes through and when, plus whether it ends final."""
    accepted = sent + _seconds(ACCEPT_DELAY.draw(rng) / scale)
    has_final = rng.random() >= pending_share
    final = choose_final(profile, rng) if has_final else None
    if final is not None:
        last = sent + _seconds(final_delay(final, rng) / scale)
        last = max(last, accepted)
    else:
        last = accepted + _seconds(PENDING_HORIZON.draw(rng) / scale)
    slow = final in ("EXPIRED", "FAILED_EXHAUSTED")
    interims = [
        name for name, chance in INTERIM_CHANCES
        if rng.random() < (RETRY_CHANCE_WHEN_SLOW if name == "RETRY" and slow else chance)
    ]
    window = (last - accepted).total_seconds()
    moments = sorted(rng.uniform(0, window) for _ in interims)
    timeline = [("ACCEPTED", accepted)]
    timeline += [(name, accepted + _seconds(m)) for name, m in zip(interims, moments)]
    if final is not None:
        timeline.append((final, last))
    return tuple(timeline), has_final


def _plan_messages(profile: CampaignProfile, size: int, rng: random.Random, start: datetime,
                   span: timedelta, scale: float, xml_share: float,
                   pending_share: float) -> list[_Message]:
    sends = _send_times(profile, size, rng, start, span, scale)
    batch_ids = {batch: _random_hex(rng) for batch, _ in sends}
    messages = []
    for batch, sent in sends:
        source_format = "xml" if rng.random() < xml_share else "json"
        timeline, has_final = _timeline(profile, sent, rng, pending_share, scale)
        messages.append(_Message(
            # The two reference receipts show both id styles; keep each with its form.
            delivery_message_id=_random_uuid(rng) if source_format == "xml" else _random_hex(rng),
            batch_id=batch_ids[batch],
            client_reference=_random_uuid(rng) if profile.uses_reference else None,
            parts=_weighted_choice(rng, *zip(*PARTS_MIX)),
            source_format=source_format,
            timeline=timeline,
            has_final=has_final,
        ))
    return messages


def _message_receipts(message: _Message, rng: random.Random) -> list[Receipt]:
    """The message's receipts in created order: one per status, one per part for XML.

    Written ``created`` times strictly increase within a message, whatever their precision.
    """
    styles, style_weights = zip(*CREATED_STYLES)
    parts = range(1, message.parts + 1) if message.source_format == "xml" else (None,)
    receipts, floor = [], None
    for status, when in message.timeline:
        for part in parts:
            offset_style, with_millis = _weighted_choice(rng, styles, style_weights)
            # Strictly later than the previous receipt, so created order is never a tie.
            if floor is not None:
                when = max(when, floor + timedelta(milliseconds=1))
            instant = _ceil_instant(when, with_millis)
            floor = instant
            receipts.append(Receipt(
                delivery_message_id=message.delivery_message_id,
                batch_id=message.batch_id,
                client_reference=message.client_reference,
                created=instant,
                created_text=format_created(instant, offset_style, with_millis),
                status=status,
                status_code=status_code(status),
                parts=message.parts,
                part=part,
                source_format=message.source_format,
            ))
    return receipts


def generate_traffic(
    campaigns: int,
    messages: int,
    seed: int | None,
    start: datetime,
    *,
    duplicates: float = 0.02,
    xml_share: float = 0.2,
    out_of_order: float = 0.01,
    pending_share: float = 0.04,
    time_scale: float = 1.0,
    span: timedelta = DEFAULT_SPAN,
    until: datetime | None = None,
) -> list[SimulatedPost]:
    """Plan the posts Mobivate would make for ``messages`` messages over ``campaigns`` campaigns.

    Pure: the same arguments (and seed) give the same posts, byte for byte.

    * Messages are split unevenly between campaigns and sent from ``start`` across ``span``;
      every simulated duration (the send window and receipt delays) is divided by
      ``time_scale``, so 60 turns three hours into three minutes.
    * ``pending_share`` of messages never get a final receipt.
    * Each message gets the XML form with probability ``xml_share``, else JSON.
    * Each post is posted once more (identical body, a little later) with probability
      ``duplicates``.
    * With probability ``out_of_order``, a message that has a final gets one of its pending
      receipts posted after the final.
    * Posts due after ``until`` are left out: they have not happened yet (their messages
      look pending). ``None`` keeps everything.

    Returns the posts sorted by ``due``: ``created`` order except for duplicates and the
    deliberately late receipts.
    """
    if messages < 0:
        raise ValueError("messages must not be negative")
    for name, value in (("duplicates", duplicates), ("xml_share", xml_share),
                        ("out_of_order", out_of_order), ("pending_share", pending_share)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1")
    if time_scale <= 0:
        raise ValueError("time_scale must be positive")
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    start = start.astimezone(timezone.utc)

    rng = random.Random(seed)
    profiles = campaign_profiles(campaigns)
    sizes = _split(messages, [p.weight * rng.lognormvariate(0, 0.3) for p in profiles])
    planned: list[SimulatedPost] = []
    for profile, size in zip(profiles, sizes):
        labels = (("campaign", profile.name), ("team", profile.team))
        for message in _plan_messages(profile, size, rng, start, span, time_scale, xml_share,
                                      pending_share):
            posts = []
            for receipt in _message_receipts(message, rng):
                body, content_type = encode_receipt(receipt)
                posts.append(SimulatedPost(labels, body, content_type, receipt, receipt.created))
            if message.has_final and rng.random() < out_of_order:
                posts = _post_one_pending_after_final(posts, rng, time_scale)
            planned += posts
            planned += [
                SimulatedPost(p.labels, p.body, p.content_type, p.receipt,
                              p.due + _seconds(DUPLICATE_LAG.draw(rng) / time_scale),
                              duplicate=True, out_of_order=p.out_of_order)
                for p in posts if rng.random() < duplicates
            ]
    # Stable sort: equal due times keep planning order (ACCEPTED before its interims).
    planned.sort(key=lambda post: post.due)
    if until is not None:
        planned = [post for post in planned if post.due <= until]
    return planned


def _post_one_pending_after_final(posts: list[SimulatedPost], rng: random.Random,
                                  scale: float) -> list[SimulatedPost]:
    final_due = max(p.due for p in posts if p.receipt.is_final)
    pending = [i for i, p in enumerate(posts) if not p.receipt.is_final]
    chosen = posts[rng.choice(pending)]
    late = SimulatedPost(chosen.labels, chosen.body, chosen.content_type, chosen.receipt,
                         final_due + _seconds(LATE_LAG.draw(rng) / scale), out_of_order=True)
    return [late if p is chosen else p for p in posts]


def describe_traffic(posts: Sequence[SimulatedPost]) -> str:
    """A few lines on what was generated: volumes, formats, final mix, time range."""
    if not posts:
        return "no posts generated"
    originals = [p for p in posts if not p.duplicate]
    by_message: dict[str, str | None] = {}
    for post in originals:
        if post.receipt.is_final:
            by_message[post.receipt.delivery_message_id] = post.receipt.status
        else:
            by_message.setdefault(post.receipt.delivery_message_id, None)
    finals = Counter(s for s in by_message.values() if s is not None)
    total_finals = sum(finals.values())
    campaigns = sorted({p.campaign for p in posts if p.campaign})
    mix = ", ".join(f"{name} {count / total_finals:.1%}" for name, count in finals.most_common(6))
    created = [p.receipt.created for p in posts]
    return "\n".join([
        f"{len(by_message)} messages in {len(campaigns)} campaigns ({', '.join(campaigns)})",
        f"{len(posts)} posts: {len(originals)} receipts + {len(posts) - len(originals)} duplicates, "
        f"{sum(p.receipt.source_format == 'xml' for p in posts)} xml-form, "
        f"{sum(p.out_of_order for p in originals)} out of order",
        f"{len(by_message) - total_finals} without a final so far; finals: {mix}",
        f"created {min(created).isoformat()} .. {max(created).isoformat()}",
    ])


# --------------------------------------------------------------------------------------
# Sending
# --------------------------------------------------------------------------------------


def post_url(url: str, labels: Iterable[tuple[str, str]], token: str | None = None) -> str:
    """``url`` with the labels (and ``token``) added to its query string.

    The given URL's own parameters are kept as they are, in order, and win over a label or
    token of the same name.
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    present = {key for key, _ in query}
    extra = list(labels) + ([(TOKEN_PARAM, token)] if token is not None else [])
    query += [(key, value) for key, value in extra if key not in present]
    return urlunsplit(parts._replace(query=urlencode(query)))


def redact_url(url: str) -> str:
    """``url`` with the webhook secret hidden, for printing.

    Hides every place the collector takes a secret from: the ``token`` parameter, the
    HTTP Basic password and the path segment after ``/dlr/``.
    """
    parts = urlsplit(url)
    query = [(k, "***" if k == TOKEN_PARAM else v)
             for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username}:***@{netloc.rpartition('@')[2]}"
    path = re.sub(r"(/(?:dlr|click|incoming)/).+", r"\1***", parts.path)
    return urlunsplit(parts._replace(netloc=netloc, path=path, query=urlencode(query, safe="*")))


@dataclass
class SendStats:
    """What happened to the posts. Each post counts once, by its last attempt.

    ``acked``: a 2xx answer. ``non_200``: the other answers, by status code. ``errors``:
    no answer at all (connection refused, reset, timeout) after the retries. ``retries``:
    extra attempts made.
    """

    sent: int = 0
    acked: int = 0
    non_200: Counter = field(default_factory=Counter)
    errors: int = 0
    retries: int = 0
    elapsed: float = 0.0
    last_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.acked == self.sent

    def summary(self, url: str | None = None) -> str:
        rate = self.sent / self.elapsed if self.elapsed > 0 else 0.0
        refused = ", ".join(f"{count}x{status}" for status, count in sorted(self.non_200.items()))
        target = f" to {redact_url(url)}" if url else ""
        return (f"simulate: {self.sent} posts{target}: {self.acked} acked, "
                f"{sum(self.non_200.values())} non-2xx{f' ({refused})' if refused else ''}, "
                f"{self.errors} errors, {self.retries} retries, "
                f"{self.elapsed:.1f}s ({rate:.0f} posts/s)"
                + (f"; last error: {self.last_error}" if self.last_error else ""))


def describe_failure(exc: BaseException) -> str:
    """A one-line reason for a failed post, without the URL's secret."""
    # requests wraps urllib3's MaxRetryError, whose `reason` says what actually went wrong.
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    text = f"{type(exc).__name__}: {reason or exc}"
    return re.sub(rf"({TOKEN_PARAM}=)[^&\s'\"]*", r"\1***", text)


def _backoff(attempt: int, base: float, response: requests.Response | None) -> float:
    """Seconds before retry number ``attempt`` (0-based): doubling, capped; honours a short
    Retry-After."""
    cap = max(base, 5.0)
    if response is not None:
        try:
            return min(float(response.headers.get("Retry-After", "")), cap)
        except ValueError:
            pass
    return min(base * 2 ** attempt, cap)


def send(
    posts: Sequence[SimulatedPost],
    url: str,
    rate: float = 0.0,
    token: str | None = None,
    concurrency: int = 4,
    *,
    retries: int = 3,
    timeout: float = 10.0,
    backoff: float = 0.25,
    progress: Callable[[SendStats], None] | None = None,
    progress_every: float = 5.0,
    realtime: bool = False,
) -> SendStats:
    """POST every post to ``url`` (plus its labels and ``token`` in the query string).

    Posts are started in the given order, at most ``rate`` per second (0: no pacing), on
    ``concurrency`` threads, each with its own ``requests.Session``; with more than one
    thread neighbours may arrive swapped, so use ``concurrency=1`` for exact order.
    Connection errors, timeouts and :data:`RETRYABLE_STATUSES` are retried up to
    ``retries`` times with doubling backoff from ``backoff`` seconds. ``progress`` (if
    given) is called with the running stats about every ``progress_every`` seconds.
    Ctrl-C stops dispatching, lets in-flight posts finish and returns the stats so far.
    ``realtime``: no post starts before its ``due`` time on the wall clock, so a receipt
    reaches the webhook when Mobivate would send it and the webhook lag (received minus
    created) reads as it would live: well under a second here, instead of however long ago
    back-dated traffic was created.
    """
    if rate < 0:
        raise ValueError("rate must not be negative")
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    stats = SendStats()
    lock = threading.Lock()
    local = threading.local()
    sessions: list[requests.Session] = []
    # Bounds the posts handed to the pool, so a million posts are not all queued at once.
    slots = threading.BoundedSemaphore(concurrency * 2)

    def session() -> requests.Session:
        if not hasattr(local, "session"):
            local.session = requests.Session()
            local.session.headers["User-Agent"] = "dlrlens-simulate"
            with lock:
                sessions.append(local.session)
        return local.session

    def deliver(post: SimulatedPost) -> None:
        target = post_url(endpoint_url(url, post.endpoint), post.labels, token)
        status, attempts, failure = None, 0, None
        try:
            while True:
                response = None
                try:
                    response = session().post(target, data=post.body, timeout=timeout,
                                              headers={"Content-Type": post.content_type})
                    status = response.status_code
                    response.close()
                    transient = status in RETRYABLE_STATUSES
                except (requests.ConnectionError, requests.Timeout) as exc:
                    status, transient, failure = None, True, exc
                except requests.RequestException as exc:  # a bad URL: retrying cannot help
                    status, transient, failure = None, False, exc
                if not transient or attempts >= retries:
                    break
                time.sleep(_backoff(attempts, backoff, response))
                attempts += 1
        finally:
            with lock:
                stats.sent += 1
                stats.retries += attempts
                if status is None:
                    stats.errors += 1
                    stats.last_error = describe_failure(failure)
                elif 200 <= status < 300:
                    stats.acked += 1
                else:
                    stats.non_200[status] += 1
            slots.release()

    began = time.monotonic()
    next_report = began + progress_every
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="simulate")
    try:
        for index, post in enumerate(posts):
            if realtime:
                early = (post.due - datetime.now(timezone.utc)).total_seconds()
                if early > 0:
                    time.sleep(early)
            if rate > 0:
                wait = began + index / rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            slots.acquire()
            pool.submit(deliver, post)
            if progress is not None and time.monotonic() >= next_report:
                next_report = time.monotonic() + progress_every
                with lock:
                    stats.elapsed = time.monotonic() - began
                    progress(stats)
    except KeyboardInterrupt:
        pass
    finally:
        pool.shutdown(wait=True)
        for each in sessions:
            each.close()
        stats.elapsed = time.monotonic() - began
    return stats


# --------------------------------------------------------------------------------------
# A whole run (``dlrlens simulate``: the options and the printing are in dlrlens/cli.py)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrafficPlan:
    """The posts of one run and what chose them: ``seed`` (drawn when none was given) and
    ``start``, the first send (chosen when none was given). ``posts`` are the receipts,
    ``events`` the clicks and replies (:func:`generate_events`); :meth:`all_posts` both, by due time."""

    seed: int
    start: datetime
    posts: list[SimulatedPost]
    events: list[SimulatedPost] = field(default_factory=list)

    def all_posts(self) -> list[SimulatedPost]:
        return sorted(self.posts + self.events, key=lambda post: post.due)


def plan_traffic(
    campaigns: int,
    messages: int,
    *,
    seed: int | None = None,
    start: datetime | None = None,
    span: timedelta = DEFAULT_SPAN,
    time_scale: float = 1.0,
    duplicates: float = 0.02,
    xml_share: float = 0.2,
    out_of_order: float = 0.01,
    now: datetime | None = None,
    click_share: float = 0.0,
    reply_share: float = 0.0,
) -> TrafficPlan:
    """The traffic of a run that ends now: :func:`generate_traffic` with a random seed unless
    ``seed``, and sending from ``start``, by default timed so that sending ends
    :data:`DEFAULT_TAIL_ROOM` (scaled) before ``now`` (default: the clock). Receipts not yet
    due by ``now`` are left out, unless ``start`` is in the future (then those times are what
    was asked for). ``click_share`` / ``reply_share`` of the delivered messages get clicks /
    replies (:func:`generate_events`; none by default)."""
    now = now or datetime.now(timezone.utc)
    start = start or now - (span + DEFAULT_TAIL_ROOM) / time_scale
    seed = seed if seed is not None else random.SystemRandom().randrange(2**32)
    posts = generate_traffic(
        campaigns, messages, seed, start,
        duplicates=duplicates, xml_share=xml_share, out_of_order=out_of_order,
        time_scale=time_scale, span=span,
        until=max(now, start + span / time_scale),
    )
    events = generate_events(posts, seed, click_share=click_share, reply_share=reply_share, time_scale=time_scale,
                             until=max(now, start + span / time_scale))
    return TrafficPlan(seed, start, posts, events)


# --------------------------------------------------------------------------------------
# Clicks and replies
# --------------------------------------------------------------------------------------

CLICK_DELAY = Delay(240, 1.4)  # delivery -> first click: most within minutes, a tail over hours
REPEAT_CLICK_SHARE = 0.15  # clickers who come back to the link later
REPLY_DELAY = Delay(600, 1.3)
OPT_OUT_SHARE = 0.35  # of replies
BATCH_ONLY_REPLY_SHARE = 0.05  # replies whose inReplyTo Mobivate could not fill: linked by batch only
OPT_OUT_TEXTS = ("STOP", "Stop", "stop ", " STOP", "S T O P", "stopall", "Unsubscribe", "QUIT", "end")
OTHER_REPLIES = ("Thanks", "Yes please", "Who is this?", "ok", "Call me", "Stop sending me offers please")
CLICK_ENVIRONMENTS = ((("Android", "Chrome"), 0.52), (("iOS", "Safari"), 0.38), (("iOS", "Chrome"), 0.05),
                      (("Android", "Samsung Internet"), 0.05))
CLICK_COUNTRIES = ((("United Kingdom", "UK"), 0.82), (("Ireland", "IE"), 0.06), (("France", "FR"), 0.04),
                   (("Australia", "AU"), 0.05), (("United States", "US"), 0.03))
SHORT_CODE = "60777"


def endpoint_url(url: str, endpoint: str) -> str:
    """``url`` (the collector's ``/dlr`` or ``/dlr/SECRET``) for ``endpoint`` (``dlr``, ``click``
    or ``incoming``): the ``dlr`` path segment replaced. ValueError when the URL has no ``/dlr``."""
    if endpoint == "dlr":
        return url
    parts = urlsplit(url)
    path, found = re.subn(r"/dlr(?=/|$)", f"/{endpoint}", parts.path, count=1)
    if not found:
        # The URL itself is not named: a secret in an unexpected place of its path would be printed.
        raise ValueError(f"cannot derive the /{endpoint} URL: the webhook URL's path has no /dlr segment")
    return urlunsplit(parts._replace(path=path))


def _mobile(rng: random.Random) -> str:
    return f"4477009{rng.randrange(10**5):05d}"


def generate_events(posts: Sequence[SimulatedPost], seed: int | None, *, click_share: float = 0.1,
                    reply_share: float = 0.015, time_scale: float = 1.0,
                    until: datetime | None = None) -> list[SimulatedPost]:
    """Clicks and replies of the delivered messages of ``posts`` (receipts), as Mobivate posts them.

    Pure and seedable. ``click_share`` of the delivered messages get a click (a few come back
    later for a second one) at a lognormal delay after delivery; ``reply_share`` get a reply,
    :data:`OPT_OUT_SHARE` of them an opt-out. Delays are divided by ``time_scale``; events due
    after ``until`` are left out. Sorted by due time.
    """
    for name, value in (("click_share", click_share), ("reply_share", reply_share)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1")
    rng = random.Random(f"events-{seed}")
    delivered: dict[str, Receipt] = {}
    for post in posts:
        receipt = post.receipt
        if receipt is not None and receipt.status == "DELIVERED" and not post.duplicate:
            delivered.setdefault(receipt.delivery_message_id, receipt)
    environments, environment_weights = zip(*CLICK_ENVIRONMENTS)
    countries, country_weights = zip(*CLICK_COUNTRIES)
    events: list[SimulatedPost] = []
    for message_id, receipt in delivered.items():
        mobile = _mobile(rng)
        landing = f"https://shop.example.com/{receipt.batch_id[:8].lower()}?utm_source=sms"
        if rng.random() < click_share:
            os_name, browser = _weighted_choice(rng, environments, environment_weights)
            country, iso2l = _weighted_choice(rng, countries, country_weights)
            document = {"mobile": mobile, "messageId": message_id, "batchId": receipt.batch_id,
                        "clientRef": receipt.client_reference, "browser": browser, "country": country,
                        "ipAddress": f"203.0.113.{rng.randrange(1, 255)}", "iso2l": iso2l, "os": os_name,
                        "url": landing}
            body = json.dumps(document).encode("utf-8")
            first = receipt.created + _seconds(CLICK_DELAY.draw(rng) / time_scale)
            events.append(SimulatedPost((), body, JSON_CONTENT_TYPE, None, first, endpoint="click"))
            if rng.random() < REPEAT_CLICK_SHARE:
                again = first + _seconds(rng.uniform(600, 86400) / time_scale)
                events.append(SimulatedPost((), body, JSON_CONTENT_TYPE, None, again, endpoint="click"))
        if rng.random() < reply_share:
            text = rng.choice(OPT_OUT_TEXTS) if rng.random() < OPT_OUT_SHARE else rng.choice(OTHER_REPLIES)
            created = receipt.created + _seconds(REPLY_DELAY.draw(rng) / time_scale)
            document = {"id": _random_hex(rng), "originator": mobile, "recipient": SHORT_CODE, "body": text,
                        "created": format_created(_ceil_instant(created, True), "+0000", True),
                        "inReplyTo": None if rng.random() < BATCH_ONLY_REPLY_SHARE else message_id,
                        "logicalMessageId": receipt.batch_id, "ownerUserId": "0B8E6C4A2D1F4E3B9A7C5D3E1F0A2B4C"}
            events.append(SimulatedPost((), json.dumps(document).encode("utf-8"), JSON_CONTENT_TYPE, None,
                                        created + _seconds(rng.uniform(0.5, 3)), endpoint="incoming"))
    events.sort(key=lambda post: post.due)
    if until is not None:
        events = [post for post in events if post.due <= until]
    return events


def describe_events(events: Sequence[SimulatedPost]) -> str:
    """One line on the clicks and replies generated."""
    clicks = sum(post.endpoint == "click" for post in events)
    replies = [json.loads(post.body) for post in events if post.endpoint == "incoming"]
    opt_outs = sum(normalise_reply(r["body"]) in DEFAULT_OPT_OUT_KEYWORDS for r in replies)
    return f"{clicks} clicks to /click, {len(replies)} replies to /incoming ({opt_outs} opt-outs)"
