"""Optional password gate in front of every dashboard page, with a back-off on wrong guesses
and a sign-out that ends the session's download links.

Off unless a password is configured: ``DLRLENS_DASHBOARD_PASSWORD`` in the environment, or
``dashboard_password`` in Streamlit's secrets (``.streamlit/secrets.toml``). When on, nothing
but the login form renders until the right password is given; the comparison takes
constant time. For single sign-on use ``st.login`` (OIDC) or an authenticating reverse proxy
instead (see SECURITY.md).

**Guessing.** Wrong passwords are counted per browser session and per client address
(``st.context.ip_address``; local connections, which Streamlit reports as None, share one
count), in one process-wide :class:`Throttle` (so a new session does not start over).
:data:`FREE_ATTEMPTS` wrong passwords cost nothing; then each one locks its session and
address for :func:`lock_seconds` (1 s, 2 s, 4 s, ... up to :data:`MAX_WAIT_S`), counted from
that failure. While locked, every attempt (the right password too: checking it would tell a
guesser at full speed which guess is right) is refused without being checked or counted, and
the page says how long to wait; nothing sleeps, so the server stays responsive. The right
password, when accepted, clears both counts; counts quiet for :data:`FORGET_AFTER_S` start
over. An attacker spread over many addresses is slowed per address only: put an
authenticating proxy in front of a public deployment (SECURITY.md).

**Signing out.** :func:`sign_out_button` (sidebar, while signed in with a password) ends the
sign-in and makes the session's download links answer 404 at once
(:func:`dashboard.downloads.expire_session_files`).
"""

from __future__ import annotations

import hmac
import math
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from dashboard import downloads

PASSWORD_ENV = "DLRLENS_DASHBOARD_PASSWORD"
SECRET_KEY = "dashboard_password"
SESSION_KEY = "dlrlens_authenticated"
FORM_KEY = "login"
THROTTLE_SESSION_KEY = "dlrlens_login_session"

FREE_ATTEMPTS = 5  # wrong passwords before the first lock (typos happen)
FIRST_WAIT_S = 1.0
MAX_WAIT_S = 60.0
FORGET_AFTER_S = 15 * 60.0  # a count without a failure for this long starts over
MAX_RECORDS = 10_000  # counts kept (least recently used dropped first): bounded memory
LOCAL_ADDRESS = "local"  # Streamlit gives no address for connections from this machine


def configured_password() -> str | None:
    """The dashboard password from the environment, else from Streamlit secrets, else None."""
    password = os.environ.get(PASSWORD_ENV)
    if password:
        return password
    try:
        return st.secrets.get(SECRET_KEY) or None
    except Exception:  # no secrets.toml at all: Streamlit raises rather than returning empty
        return None


def password_matches(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


# ---------------------------------------------------------------------------------------------
# Back-off
# ---------------------------------------------------------------------------------------------


def lock_seconds(failures: int) -> float:
    """How long ``failures`` consecutive wrong passwords lock out, from the last one: 0 up to
    :data:`FREE_ATTEMPTS`, then 1 s, doubling with each further failure, at most
    :data:`MAX_WAIT_S`."""
    if failures < FREE_ATTEMPTS:
        return 0.0
    return min(MAX_WAIT_S, FIRST_WAIT_S * 2.0 ** min(failures - FREE_ATTEMPTS, 64))


@dataclass
class _Count:
    failures: int = 0
    last_failure: float = 0.0  # clock time


class Throttle:
    """Consecutive wrong passwords per key (``session:<id>``, ``address:<ip>``), shared by
    every session of the process (thread-safe), at most ``max_records`` keys (the least
    recently used are dropped)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_records: int = MAX_RECORDS) -> None:
        self.clock = clock
        self.max_records = max_records
        self._counts: OrderedDict[str, _Count] = OrderedDict()
        self._lock = threading.Lock()

    def wait(self, keys: Iterable[str]) -> float:
        """Seconds until an attempt under ``keys`` may be checked (0: now): the longest lock
        of any of them."""
        now = self.clock()
        with self._lock:
            return max((self._remaining(key, now) for key in keys), default=0.0)

    def failed(self, keys: Iterable[str]) -> None:
        """Count a wrong password under each of ``keys``."""
        now = self.clock()
        with self._lock:
            for key in keys:
                count = self._current(key, now) or _Count()
                count.failures += 1
                count.last_failure = now
                self._counts[key] = count
                self._counts.move_to_end(key)
            while len(self._counts) > self.max_records:
                self._counts.popitem(last=False)

    def succeeded(self, keys: Iterable[str]) -> None:
        """The right password: ``keys`` start over."""
        with self._lock:
            for key in keys:
                self._counts.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()

    def __len__(self) -> int:
        return len(self._counts)

    def _current(self, key: str, now: float) -> _Count | None:
        """The count of ``key``, None when there is none or it is forgotten (lock held)."""
        count = self._counts.get(key)
        if count is not None and now - count.last_failure > FORGET_AFTER_S:
            del self._counts[key]
            return None
        return count

    def _remaining(self, key: str, now: float) -> float:
        count = self._current(key, now)
        if count is None:
            return 0.0
        self._counts.move_to_end(key)
        return max(0.0, count.last_failure + lock_seconds(count.failures) - now)


THROTTLE = Throttle()


def client_keys() -> list[str]:
    """The throttle keys of this run: its session and its client's address."""
    # A random id kept in the session's state names the session (it lives exactly as long).
    session = st.session_state.setdefault(THROTTLE_SESSION_KEY, secrets.token_hex(16))
    address = st.context.ip_address
    if not isinstance(address, str) or not address:  # None from this machine (and AppTest's mock)
        address = LOCAL_ADDRESS
    return [f"session:{session}", f"address:{address}"]


def lock_message(wait: float) -> str:
    return f"Too many wrong passwords: try again in {math.ceil(wait)} s."


# ---------------------------------------------------------------------------------------------
# The gate
# ---------------------------------------------------------------------------------------------


def require_login() -> None:
    """Return if the visitor may see the dashboard; otherwise show the login form and stop."""
    expected = configured_password()
    if expected is None or st.session_state.get(SESSION_KEY):
        return
    st.title("dlrlens")
    # A form: one submission is one attempt (Enter in the field submits too), and the field
    # is emptied after it, so a rerun never checks (or counts) the same password again.
    with st.form(FORM_KEY, clear_on_submit=True, border=False):
        given = st.text_input("Password", type="password", key="login_password")
        submitted = st.form_submit_button("Sign in")
    if submitted and given:
        keys = client_keys()
        wait = THROTTLE.wait(keys)
        if wait > 0:
            st.error(lock_message(wait))  # refused unchecked, even if right
        elif password_matches(given, expected):
            THROTTLE.succeeded(keys)
            st.session_state[SESSION_KEY] = True
            st.rerun()
        else:
            THROTTLE.failed(keys)
            wait = THROTTLE.wait(keys)
            st.error("Wrong password." + (" " + lock_message(wait) if wait > 0 else ""))
    st.stop()


def sign_out() -> None:
    """End this session's sign-in and its download links (a button callback)."""
    st.session_state.pop(SESSION_KEY, None)
    ctx = get_script_run_ctx()
    if ctx is not None:
        downloads.expire_session_files(ctx.session_id)


def sign_out_button() -> None:
    """A "Sign out" button in the sidebar while signed in with a password; nothing otherwise."""
    if configured_password() is None or not st.session_state.get(SESSION_KEY):
        return
    st.sidebar.button("Sign out", key="sign_out", icon=":material/logout:", on_click=sign_out,
                      help="Sign out of the dashboard; the files you downloaded in this session can no "
                           "longer be fetched by their links.")
