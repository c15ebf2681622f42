"""Who may post receipts: the webhook secret, the source-network allow-list, the failure
limiter, and keeping the secret out of every log line.

Mobivate signs nothing and cannot send custom headers, so the secret rides in the URL:
``?token=SECRET``, the HTTP Basic password (``https://dlr:SECRET@host/dlr``) or the last
path segment (``/dlr/SECRET``). Several secrets may be valid at once, for rotation.

Contracts:

* :func:`token_matches` compares in constant time, every candidate against every secret.
* :class:`FailureLimiter` counts wrong or missing secrets per *source* (an IPv4 address; an
  IPv6 /64, which one subscriber usually holds whole; an IPv4-mapped IPv6 address counts as
  its IPv4 address) in a sliding window, in one SQLite file that every worker process shares
  (``data/.auth-failures.sqlite``, kept by :mod:`dlrlens.store.auth_failures`), so the limit
  is exact whatever worker a request reaches.
  It is consulted only for a request whose secret is wrong: a request with the right secret
  is never refused and never touches the file (the app checks the secret first), so a guesser
  behind Mobivate's NAT cannot lock Mobivate out. At most ``max_sources`` sources are kept;
  the least recently failing go first, so a spray from many sources cannot unblock the
  guessers that are still at it. When the file cannot be used (disk full, read-only) the
  limiter fails open: the answer is 401, never 429 or 500.
* :data:`LOG_REDACTOR` (a :class:`SecretRedactor`) removes every secret this process was
  configured with, in each form a request can carry it (plain, percent-encoded, inside a
  base64 Basic credential), from each log record that passes through a handler or logger it
  is installed on. ``collector.server`` installs it on gunicorn's and the root logger's
  handlers, ``collector.app`` on the ``dlrlens`` logger.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import logging
import re
import time
from pathlib import Path

from dlrlens.store.auth_failures import AuthFailures, AuthFailuresUnavailable

AUTH_FAILURE_LIMIT = 20       # failures per source within the window before it is refused
AUTH_FAILURE_WINDOW = 60.0    # seconds
AUTH_FAILURE_SOURCES = 10_000  # sources remembered at most (least recently failing are forgotten)

log = logging.getLogger("dlrlens.collector")


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


def _ip(address: str | None):
    try:
        ip = ipaddress.ip_address((address or "").split("%", 1)[0])
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip


def address_allowed(address: str | None, networks: tuple) -> bool:
    """True when no allow-list is set or ``address`` lies in one of ``networks``."""
    if not networks:
        return True
    ip = _ip(address)
    return ip is not None and any(ip in network for network in networks)


def source_of(address: str | None) -> str:
    """The key failures are counted under: an IPv4 address, or the /64 of an IPv6 address
    (one home or server gets a whole /64, so counting single IPv6 addresses could be walked
    around with 2**64 of them). Anything else (a unix socket) counts as itself."""
    ip = _ip(address)
    if ip is None:
        return address or "-"
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class FailureLimiter:
    """Wrong-secret counts per source in a sliding window, shared by every worker process.

    The policy lives here (what a source is: :func:`source_of`; the limit; the window; failing
    open); the counts live in one file in the data directory, kept by
    :class:`dlrlens.store.auth_failures.AuthFailures` (SQLite, see there why).

    Cost, measured on the shared 2-core test machine: 30-75 us per failed request
    (``record_failure``), 70-145 us each with two processes failing at once, 50-75 us for a
    new source at the 10,000-source bound (the COUNT and the eviction included). A refused
    request costs more elsewhere (its body is kept under ``rejected/``). A request with the
    right secret costs nothing here: it never reaches the limiter.
    """

    def __init__(self, path: str | Path, limit: int = AUTH_FAILURE_LIMIT, window: float = AUTH_FAILURE_WINDOW,
                 max_sources: int = AUTH_FAILURE_SOURCES, clock=time.time, busy_timeout: float = 0.5):
        self.path = Path(path)
        self.limit = limit
        self.window = window
        self.max_sources = max_sources
        # Wall-clock time: every process reads the same clock, and the file outlives a reboot
        # (after which monotonic time restarts from zero).
        self.clock = clock
        # More than `limit` failure times per source would change no answer.
        self._failures = AuthFailures(self.path, window=window, keep=limit, max_sources=max_sources,
                                      busy_timeout=busy_timeout)
        self._last_warning = 0.0

    def record_failure(self, address: str | None) -> bool:
        """Count one wrong secret from ``address``'s source; True when the source had already
        failed ``limit`` times within the window (the answer is then 429, not 401). Refused
        attempts count too, so a source that keeps guessing stays refused."""
        try:
            return self._failures.record(source_of(address), self.clock()) >= self.limit
        except AuthFailuresUnavailable as exc:
            self._unavailable(exc)
            return False

    def blocked(self, address: str | None) -> bool:
        """True when ``address``'s source has failed ``limit`` times within the window (read only)."""
        try:
            return self._failures.recent(source_of(address), self.clock()) >= self.limit
        except AuthFailuresUnavailable as exc:
            self._unavailable(exc)
            return False

    def sources(self) -> int:
        """How many sources are remembered."""
        return self._failures.sources()

    def _unavailable(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_warning > 60 or not self._last_warning:  # one line a minute at most
            self._last_warning = now
            log.warning("event=auth_limiter_unavailable error=%r (wrong secrets get 401, not 429)", str(exc))


# -- keeping secrets out of the logs -------------------------------------------------------

REDACTED = "<redacted>"


def _char_pattern(char: str) -> str:
    """A regular expression for one character of a secret as a request may carry it: itself,
    percent-encoded (either hex case), its UTF-8 bytes read as Latin-1 (how gunicorn decodes a
    request line) or as ``\\xNN`` escapes (a bytes repr), ``+`` for a space."""
    raw = char.encode("utf-8", "surrogatepass")
    forms = {re.escape(char), re.escape(raw.decode("latin-1")),
             "(?i:" + "".join(f"%{byte:02x}" for byte in raw) + ")"}
    if len(raw) > 1 or raw[0] >= 0x80:
        forms.add("(?i:" + "".join(f"\\\\x{byte:02x}" for byte in raw) + ")")
    if char == " ":
        forms.add(r"\+")
    return "(?:" + "|".join(sorted(forms)) + ")"


def _base64_forms(secret: str) -> set[str]:
    """The part of any base64 text (``Basic dXNlcjpTRUNSRVQ=``) that encodes ``secret`` alone,
    for each of the three alignments the bytes before it can give it."""
    data = secret.encode("utf-8", "surrogatepass")
    forms = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + data).decode("ascii")
        core = encoded[-(-8 * offset // 6):8 * (offset + len(data)) // 6]  # characters made of secret bits only
        if len(core) >= 4:
            forms |= {core, core.replace("+", "-").replace("/", "_")}
    return forms


def secret_pattern(secrets) -> re.Pattern | None:
    """One expression matching every form of every secret (None when there is none)."""
    alternatives = set()
    for secret in secrets:
        if secret:
            alternatives.add("".join(_char_pattern(char) for char in secret))
            alternatives |= {re.escape(form) for form in _base64_forms(secret)}
    if not alternatives:
        return None
    return re.compile("|".join(sorted(alternatives, key=len, reverse=True)))


class SecretRedactor(logging.Filter):
    """A logging filter that replaces every form of every added secret with ``<redacted>`` in
    the record's message, its formatted exception and its stack. Records are never dropped.

    Installed on a handler it sees every record that handler writes, whichever logger it came
    from; on a logger, only the records logged to that very logger."""

    def __init__(self, secrets=()):
        super().__init__()
        self._secrets: frozenset[str] = frozenset()
        self._pattern: re.Pattern | None = None
        self.add(secrets)

    def add(self, secrets) -> None:
        """Redact ``secrets`` too (a process keeps every secret it was ever configured with)."""
        wanted = self._secrets | {secret for secret in secrets if secret}
        if wanted != self._secrets:
            self._pattern = secret_pattern(wanted)  # swapped whole: threads may be logging
            self._secrets = frozenset(wanted)

    def redact(self, text: str) -> str:
        pattern = self._pattern
        return text if pattern is None else pattern.sub(REDACTED, text)

    def filter(self, record: logging.LogRecord) -> bool:
        if self._pattern is None:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken format: logging would print msg and args raw to stderr
            message = f"{record.msg} {record.args!r}"
        redacted = self.redact(message)
        if redacted != message or record.args:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


LOG_REDACTOR = SecretRedactor()


def redact_secrets_in_logs(secrets) -> SecretRedactor:
    """Register ``secrets`` with :data:`LOG_REDACTOR` and return it (to install on handlers)."""
    LOG_REDACTOR.add(secrets)
    return LOG_REDACTOR
