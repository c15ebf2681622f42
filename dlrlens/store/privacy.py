"""Phone numbers in the event tables: a keyed hash to link and count, a masked form to show.

The clicker's and the replier's numbers are personal data. The store keeps, by default, only
``HMAC-SHA256(installation key, digits of the number)`` (so the same person is recognised
across events, e.g. a batch-linked reply, without keeping the number) and a masked form for
display (:func:`mask_msisdn`: ``447001234123`` -> ``44700****123``). The key
(:data:`dlrlens.store.layout.MSISDN_KEY`) is 32 random bytes created at first use under the
data directory, under a lock so that every collector worker uses the same one. Losing it
only means that hashes made afterwards no longer match earlier ones.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from pathlib import Path

from dlrlens.store import files, layout

KEY_BYTES = 32
_NOT_DIGIT = re.compile(r"\D")


def installation_key(data_dir: Path) -> bytes:
    """The data directory's HMAC key, created (atomically, once) when missing."""
    path = Path(data_dir) / layout.MSISDN_KEY
    try:
        key = path.read_bytes()
        if len(key) == KEY_BYTES:
            return key
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    with files.locked(path.parent / ".msisdn.lock", wait=True):
        try:
            key = path.read_bytes()  # another worker made it while this one waited
        except FileNotFoundError:
            key = b""
        if len(key) != KEY_BYTES:
            key = os.urandom(KEY_BYTES)
            files.publish_bytes(path, key)
            os.chmod(path, 0o600)
    return key


def msisdn_digits(number: str) -> str:
    """The digits of a phone number (``+44 7700-123`` and ``447700123`` are one number)."""
    return _NOT_DIGIT.sub("", number)


def hash_msisdn(key: bytes, number: str | None) -> str | None:
    """Hex HMAC-SHA256 of the number's digits (of the text as sent when it has none)."""
    if not number:
        return None
    canonical = msisdn_digits(number) or number
    return hmac.new(key, canonical.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def mask_msisdn(number: str | None) -> str | None:
    """The number for display: the first digits (country and network, at most 5) and the last
    3, at least 4 hidden (``447001234123`` -> ``44700****123``, ``4400001234`` -> ``440****234``);
    a number of 7 digits or fewer keeps only its last 2."""
    if not number:
        return None
    digits = msisdn_digits(number)
    if not digits:
        return "*" * min(len(number), 8)
    if len(digits) <= 7:
        return "*" * (len(digits) - 2) + digits[-2:]
    head = min(5, len(digits) - 7)
    return digits[:head] + "*" * (len(digits) - head - 3) + digits[-3:]
