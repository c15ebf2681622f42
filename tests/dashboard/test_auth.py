"""The dashboard's optional password gate, its back-off on wrong guesses and its sign-out:
through Streamlit's AppTest, and (download links dying with the sign-in or the session) in
Debian's Chromium against a real dashboard, at the end."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dashboard import auth
from tests.support.browser import CHANGE_TIMEOUT_S, CHROMIUM, MISSING, PAGE_TIMEOUT_S, VIEWPORT
from tests.support.factory import demo_rows, write_receipts

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")
PASSWORD = "correct horse"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def clock(monkeypatch):
    """Every test starts with no counted failures (the throttle is process-wide, and AppTest
    runs the app in this process) and a clock the test moves."""
    fake = FakeClock()
    monkeypatch.setattr(auth.THROTTLE, "clock", fake)
    auth.THROTTLE.clear()
    yield fake
    auth.THROTTLE.clear()


def _app(tmp_path, monkeypatch, password: str | None) -> AppTest:
    if not (tmp_path / "data").exists():
        write_receipts(tmp_path / "data", demo_rows(50, seed=3))
    monkeypatch.setenv("DLRLENS_DATA", str(tmp_path / "data"))
    if password is None:
        monkeypatch.delenv("DLRLENS_DASHBOARD_PASSWORD", raising=False)
    else:
        monkeypatch.setenv("DLRLENS_DASHBOARD_PASSWORD", password)
    return AppTest.from_file(APP, default_timeout=60)


def attempt(app: AppTest, password: str) -> AppTest:
    """Type ``password`` and press Sign in (one submission of the login form)."""
    [t for t in app.text_input if t.label == "Password"][0].input(password)
    [b for b in app.button if b.label == "Sign in"][0].click().run()
    return app


def errors(app: AppTest) -> list[str]:
    return [e.value for e in app.error]


def test_without_a_password_the_dashboard_is_open(tmp_path, monkeypatch):
    app = _app(tmp_path, monkeypatch, None).run()
    assert not app.exception
    assert app.metric, "KPI cards render"
    assert not [t for t in app.text_input if t.label == "Password"]
    assert not [b for b in app.sidebar.button if b.label == "Sign out"], "nothing to sign out of"


def test_with_a_password_nothing_shows_until_it_is_given(tmp_path, monkeypatch):
    app = _app(tmp_path, monkeypatch, PASSWORD).run()
    assert not app.exception
    assert not app.metric and not app.dataframe, "no figure before login"
    assert [b.label for b in app.button] == ["Sign in"]

    attempt(app, "wrong")
    assert errors(app) == ["Wrong password."]
    assert not app.metric

    attempt(app, PASSWORD)
    assert not app.exception
    assert app.metric, "KPI cards render after login"
    assert not app.error


def test_a_rerun_does_not_count_the_same_attempt_again(tmp_path, monkeypatch):
    app = _app(tmp_path, monkeypatch, PASSWORD).run()
    attempt(app, "wrong")
    for _ in range(auth.FREE_ATTEMPTS + 2):
        app.run()  # a rerun without pressing Sign in (a widget elsewhere, a refresh)
    assert [c.failures for c in auth.THROTTLE._counts.values()] == [1, 1]  # session and address


def test_wrong_passwords_lock_out_every_attempt_with_a_growing_wait(tmp_path, monkeypatch, clock):
    app = _app(tmp_path, monkeypatch, PASSWORD).run()
    for _ in range(auth.FREE_ATTEMPTS - 1):
        assert errors(attempt(app, "guess")) == ["Wrong password."]
    # The fifth wrong password locks for 1 s, and the page says so.
    assert errors(attempt(app, "guess")) == ["Wrong password. Too many wrong passwords: try again in 1 s."]

    # While locked even the right password is refused, unchecked and uncounted.
    assert errors(attempt(app, PASSWORD)) == ["Too many wrong passwords: try again in 1 s."]
    assert not app.metric
    clock.now += 0.5
    assert errors(attempt(app, PASSWORD)) == ["Too many wrong passwords: try again in 1 s."]

    # Each further wrong password doubles the wait: 2 s, 4 s, ...
    clock.now += 0.6
    assert errors(attempt(app, "guess")) == ["Wrong password. Too many wrong passwords: try again in 2 s."]
    clock.now += 2.1
    assert errors(attempt(app, "guess")) == ["Wrong password. Too many wrong passwords: try again in 4 s."]

    # Once the wait has passed the right password gets in, and the counts start over.
    clock.now += 4.1
    attempt(app, PASSWORD)
    assert app.metric and not app.error
    assert len(auth.THROTTLE) == 0


def test_a_new_session_from_the_same_address_is_locked_too(tmp_path, monkeypatch):
    app = _app(tmp_path, monkeypatch, PASSWORD).run()
    for _ in range(auth.FREE_ATTEMPTS):
        attempt(app, "guess")
    # A fresh session (a new tab, a cleared cookie) from the same address starts locked.
    other = _app(tmp_path, monkeypatch, PASSWORD).run()
    assert errors(attempt(other, PASSWORD)) == ["Too many wrong passwords: try again in 1 s."]
    assert not other.metric


def test_lock_seconds_double_from_one_second_up_to_a_minute():
    waits = [auth.lock_seconds(n) for n in range(1, 15)]
    assert waits == [0, 0, 0, 0, 1, 2, 4, 8, 16, 32, 60, 60, 60, 60]
    assert auth.lock_seconds(10**6) == auth.MAX_WAIT_S


def test_throttle_keys_are_independent_forgotten_when_quiet_and_bounded(clock):
    throttle = auth.Throttle(clock=clock, max_records=3)
    for _ in range(auth.FREE_ATTEMPTS):
        throttle.failed(["address:a"])
    assert throttle.wait(["address:a"]) == 1.0
    assert throttle.wait(["address:b"]) == 0.0
    assert throttle.wait(["address:b", "address:a"]) == 1.0, "the longest lock of any key"
    clock.now += auth.FORGET_AFTER_S + 1
    assert throttle.wait(["address:a"]) == 0.0
    throttle.failed(["address:a"])
    assert throttle._counts["address:a"].failures == 1, "a quiet count starts over"

    for key in ("b", "c", "d"):
        throttle.failed([f"address:{key}"])
    assert len(throttle) == 3 and "address:a" not in throttle._counts, "least recently used dropped"


def test_throttle_counts_every_failure_from_many_threads(clock):
    throttle = auth.Throttle(clock=clock)
    threads = [threading.Thread(target=lambda: [throttle.failed(["address:x"]) for _ in range(200)])
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert throttle._counts["address:x"].failures == 1600


def test_sign_out_shows_the_login_form_again(tmp_path, monkeypatch):
    app = _app(tmp_path, monkeypatch, PASSWORD).run()
    attempt(app, PASSWORD)
    assert app.metric
    [b for b in app.sidebar.button if b.label == "Sign out"][0].click().run()
    assert not app.exception
    assert not app.metric and [t for t in app.text_input if t.label == "Password"]


# --------------------------------------------------------------------------- a real dashboard

@pytest.fixture(scope="module")
def protected_dashboard(tmp_path_factory):
    """A real dashboard (``dlrlens dashboard``) with a password, on demo data."""
    from tests.support.dashboard_server import running_dashboard

    if not CHROMIUM.exists():
        pytest.skip(MISSING)
    root = tmp_path_factory.mktemp("auth-browser")
    write_receipts(root / "data", demo_rows(50, seed=3))
    with running_dashboard(root / "data", env={auth.PASSWORD_ENV: PASSWORD}) as app:
        yield app


# ``chromium`` (tests/conftest.py): one headless browser for the module.


def signed_in_download(chromium, dashboard):
    """A new browser session that signs in and downloads the campaign report (JSON);
    returns (context, page, the file's /media URL, its bytes)."""
    context = chromium.new_context(viewport=VIEWPORT, accept_downloads=True)
    context.set_default_timeout(PAGE_TIMEOUT_S * 1000)
    page = context.new_page()
    page.goto(dashboard.url, timeout=PAGE_TIMEOUT_S * 1000)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    button = page.get_by_role("button", name="Campaign report (JSON)", exact=True)  # the Overview's export
    button.wait_for()
    context.set_default_timeout(CHANGE_TIMEOUT_S * 1000)
    with page.expect_download() as started:
        button.click()
    download = started.value
    return context, page, download.url, Path(download.path()).read_bytes()


def wait_for_status(url: str, status: int, timeout: float = 30) -> int:
    """GET ``url`` with a fresh client (no cookie, no session) until it answers ``status``."""
    import time

    import requests

    deadline = time.monotonic() + timeout
    while True:
        got = requests.get(url, timeout=10).status_code
        if got == status or time.monotonic() > deadline:
            return got
        time.sleep(0.3)


@pytest.mark.browser
@pytest.mark.slow
def test_signing_out_ends_the_sessions_download_links(protected_dashboard, chromium):
    import requests

    context, page, url, data = signed_in_download(chromium, protected_dashboard)
    try:
        assert "/media/" in url and json.loads(data)["Campaigns"], url
        fetched = requests.get(url, timeout=10)  # anyone with the link, while signed in
        assert fetched.status_code == 200 and fetched.content == data

        page.get_by_role("button", name="Sign out").click()
        page.get_by_label("Password", exact=True).wait_for()
        assert wait_for_status(url, 404, timeout=5) == 404, "the link outlived the sign-in"
    finally:
        context.close()


@pytest.mark.browser
@pytest.mark.slow
def test_closing_the_session_ends_its_download_links(protected_dashboard, chromium):
    import requests

    context, page, url, data = signed_in_download(chromium, protected_dashboard)
    assert requests.get(url, timeout=10).status_code == 200
    context.close()  # the tab is closed: the session's browser disconnects
    assert wait_for_status(url, 404) == 404, "the link outlived the session"
