"""Phone numbers without keeping them: a keyed hash to look up and join, a masked form to show,
country and original network from the number's prefix.

Contract: :func:`number_hash` is ``HMAC-SHA256(installation key, E.164 digits)`` in hex: the
same number written any way phonenumbers understands (``+44 7700 900123``, ``447700900123``)
has one hash, so a lookup hashes the user's input the same way. The key is 32 random bytes at
``data/keys/msisdn.key`` (mode 600), created once under ``data/keys/.msisdn.lock`` at first
use and shared by every component that hashes numbers: the synced send records' recipients,
and the clickers and repliers of the collector's click and reply webhooks (:func:`hash_msisdn`
and :func:`mask_msisdn` with the key read once per worker). Losing it only means hashes made
afterwards no longer match earlier ones. Nothing here logs a number.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import phonenumbers
from phonenumbers import carrier

from dlrlens.store import files, layout

KEY_PATH = layout.MSISDN_KEY
KEY_LOCK = f"{layout.KEYS_DIR}/.msisdn.lock"
KEY_BYTES = 32
_NOT_DIGIT = re.compile(r"\D")


def installation_key(data_dir: Path) -> bytes:
    """The data directory's HMAC key, created (atomically, once) when missing."""
    path = Path(data_dir) / KEY_PATH
    try:
        key = path.read_bytes()
        if len(key) == KEY_BYTES:
            return key
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    with files.locked(Path(data_dir) / KEY_LOCK, wait=True):
        try:
            key = path.read_bytes()  # another process made it while this one waited
        except FileNotFoundError:
            key = b""
        if len(key) != KEY_BYTES:
            key = os.urandom(KEY_BYTES)
            files.publish_bytes(path, key)
            os.chmod(path, 0o600)
    return key


_PHONE_LIKE = re.compile(r"\+?[\d\s().-]{7,24}")


def lookup_hash(data_dir: Path, text: str) -> str | None:
    """The hash a lookup by phone number searches for (:func:`number_hash` of ``text``), or
    None when ``text`` does not look like a phone number or no number was ever hashed here
    (no key: a reader never creates one)."""
    text = (text or "").strip()
    if not _PHONE_LIKE.fullmatch(text) or len(_NOT_DIGIT.sub("", text)) < 7:
        return None
    try:
        key = (Path(data_dir) / KEY_PATH).read_bytes()
    except FileNotFoundError:
        return None
    number = parse_number(text)
    return keyed_hash(key, number.canonical) if number and len(key) == KEY_BYTES else None


@dataclass(frozen=True)
class Number:
    """What is kept of a recipient number: ``canonical`` (E.164 digits, or the digits as sent
    when phonenumbers cannot parse it; never stored unless asked), country (ISO region or
    None), original network (carrier name for the prefix, or None), masked form. Validity is
    not checked (a third of the parsing time): a possible number of a country counts there."""

    canonical: str
    country: str | None
    network: str | None
    masked: str


@lru_cache(maxsize=65536)
def parse_number(text: str | None) -> Number | None:
    """Country, original network and masked form of a recipient number (international form
    without ``+`` as Mobivate writes it, or with it). None for an empty value."""
    if text is None or not str(text).strip():
        return None
    text = str(text).strip()
    digits = _NOT_DIGIT.sub("", text)
    try:
        parsed = phonenumbers.parse(text if text.startswith("+") else "+" + digits, None)
    except phonenumbers.NumberParseException:
        parsed = None
    if parsed is not None and phonenumbers.is_possible_number(parsed):
        canonical = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)[1:]
        # An invalid number (a fictional range, say) still has its country code's main region.
        country = (phonenumbers.region_code_for_number(parsed)
                   or phonenumbers.region_code_for_country_code(parsed.country_code))
        network = carrier.name_for_number(parsed, "en") or None
        return Number(canonical, country if country not in (None, "ZZ") else None, network, mask(canonical))
    return Number(digits or text, None, None, mask(digits or text))


def canonical_number(text: str) -> str | None:
    """The canonical digits of what a user typed (a lookup), or None when nothing is left."""
    number = parse_number(text)
    return number.canonical if number else None


def number_hash(data_dir: Path, msisdn: str | None) -> str | None:
    """Hex HMAC-SHA256 of the number's canonical digits with the installation key."""
    return hash_msisdn(installation_key(data_dir), msisdn)


def hash_msisdn(key: bytes, msisdn: str | None) -> str | None:
    """:func:`number_hash` with the key already read (the collector's hot path); None for an
    empty value. ``+44 7700 900123`` and ``447700900123`` have one hash."""
    number = parse_number(msisdn)
    return None if number is None else keyed_hash(key, number.canonical)


def mask_msisdn(msisdn: str | None) -> str | None:
    """:func:`mask` of a number that may be missing (None stays None)."""
    return mask(msisdn) if msisdn else None


def key_fingerprint(key: bytes) -> str:
    """What tells two number keys apart without revealing either (an HMAC of a fixed text, 64
    bits): the Iceberg store records the first collector's, and every collector compares its own
    with it (:func:`dlrlens.store.iceberg.maintain.check_number_key`)."""
    return hmac.new(key, b"dlrlens number key fingerprint", hashlib.sha256).hexdigest()[:16]


def keyed_hash(key: bytes, canonical: str) -> str:
    return hmac.new(key, canonical.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def mask(number: str) -> str:
    """The number for display: its first digits (country and network, at most 5) and last 3,
    at least 4 hidden (``447001234123`` -> ``44700****123``); 7 digits or fewer keep the last 2."""
    digits = _NOT_DIGIT.sub("", number)
    if not digits:
        return "*" * min(len(number), 8)
    if len(digits) <= 7:
        return "*" * max(0, len(digits) - 2) + digits[-2:]
    head = min(5, len(digits) - 7)
    return digits[:head] + "*" * (len(digits) - head - 3) + digits[-3:]
