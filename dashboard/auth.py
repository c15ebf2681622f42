"""Optional password gate in front of every dashboard page.

Off unless a password is configured: ``DLRLENS_DASHBOARD_PASSWORD`` in the environment, or
``dashboard_password`` in Streamlit's secrets (``.streamlit/secrets.toml``). When on, nothing
but the login form renders until the right password is given; the comparison takes
constant time. For single sign-on use ``st.login`` (OIDC) or an authenticating reverse proxy
instead (see SECURITY.md).
"""

from __future__ import annotations

import hmac
import os

import streamlit as st

PASSWORD_ENV = "DLRLENS_DASHBOARD_PASSWORD"
SECRET_KEY = "dashboard_password"
SESSION_KEY = "dlrlens_authenticated"


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


def require_login() -> None:
    """Return if the visitor may see the dashboard; otherwise show the login form and stop."""
    expected = configured_password()
    if expected is None or st.session_state.get(SESSION_KEY):
        return
    st.title("dlrlens")
    # Enter in the field submits too; the button is there for people who look for one.
    given = st.text_input("Password", type="password", key="login_password")
    st.button("Sign in")
    if given:
        if password_matches(given, expected):
            st.session_state[SESSION_KEY] = True
            st.session_state.pop("login_password", None)
            st.rerun()
        st.error("Wrong password.")
    st.stop()
