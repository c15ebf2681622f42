"""Who may post receipts: the webhook secret and the source-network allow-list.

Mobivate signs nothing and cannot send custom headers, so the secret rides in the URL:
``?token=SECRET``, the HTTP Basic password (``https://dlr:SECRET@host/dlr``) or the last
path segment (``/dlr/SECRET``). Several secrets may be valid at once, for rotation.
Comparisons take constant time. A source that keeps failing is refused for a while (429)
so the secret cannot be guessed at line speed.
"""

from __future__ import annotations

import hmac
import ipaddress
import threading
import time
from collections import defaultdict, deque

AUTH_FAILURE_LIMIT = 20       # failures per source within the window before it is refused
AUTH_FAILURE_WINDOW = 60.0    # seconds


def token_matches(candidates: list[str | None], secrets: tuple[str, ...]) -> bool:
    """True when any candidate equals any secret. Every comparison is made, in constant time."""
    matched = False
    for candidate in candidates:
        if candidate is None:
            continue
        given = candidate.encode("utf-8", "surrogatepass")
        for secret in secrets:
            matched |= hmac.compare_digest(given, secret.encode("utf-8"))
    return matched


def address_allowed(address: str | None, networks: tuple) -> bool:
    """True when no allow-list is set or ``address`` lies in one of ``networks``."""
    if not networks:
        return True
    try:
        ip = ipaddress.ip_address((address or "").split("%", 1)[0])
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


class FailureLimiter:
    """Counts authentication failures per source address in a sliding window."""

    def __init__(self, limit: int = AUTH_FAILURE_LIMIT, window: float = AUTH_FAILURE_WINDOW, clock=time.monotonic):
        self.limit = limit
        self.window = window
        self.clock = clock
        self._failures: dict[str, deque] = defaultdict(deque)
        self._lock = threading.Lock()

    def _trim(self, times: deque, now: float) -> None:
        while times and now - times[0] > self.window:
            times.popleft()

    def blocked(self, address: str) -> bool:
        with self._lock:
            times = self._failures.get(address)
            if not times:
                return False
            self._trim(times, self.clock())
            if not times:
                del self._failures[address]
                return False
            return len(times) >= self.limit

    def record_failure(self, address: str) -> None:
        with self._lock:
            if len(self._failures) > 10_000:  # bound memory under a spray from many sources
                self._failures.clear()
            times = self._failures[address]
            now = self.clock()
            self._trim(times, now)
            times.append(now)
