"""Fixtures shared by the whole suite (helpers that are not fixtures live in ``tests/support/``).

* The collector in-process, as in Flask's tutorial: ``make_app`` builds apps with
  :func:`collector.app.create_app` over a temporary data directory, ``app`` is one with the
  default settings and ``client`` its ``app.test_client()``: fast, for the app's branches.
* The real collector (gunicorn on a loopback port), for what only a real server shows:
  ``collectors`` starts some for a module, ``collector`` is a module's default one.
* ``chromium``: one headless browser per module, for the tests that open the real dashboard.
* The order of the files: those with ``slow`` or ``browser`` tests first (for scripts/test.sh's
  two pytest-xdist workers, see :func:`pytest_collection_modifyitems`).
"""

from __future__ import annotations

import contextlib
import os

import pytest

from collector.app import create_app
from collector.settings import load_settings
from tests.support.browser import CHROMIUM, MISSING, launched_chromium
from tests.support.servers import start_collector

# -- the order of the test files ---------------------------------------------------------------


LONG_FILE_MARKERS = ("slow", "browser")


def pytest_collection_modifyitems(items):
    """Files with a test marked ``slow`` or ``browser`` first, the others after them, each file's
    tests in their order: scripts/test.sh hands whole files to two pytest-xdist workers in this
    order (``--dist loadfile --no-loadscope-reorder``), so the short files fill in at the end
    instead of one worker running a long drill alone while the other idles."""
    long_files = {item.path for item in items if any(item.get_closest_marker(m) for m in LONG_FILE_MARKERS)}
    items.sort(key=lambda item: item.path not in long_files)


# -- the Flask app in-process ----------------------------------------------------------------


@pytest.fixture
def make_app(tmp_path, monkeypatch):
    """``make_app(**settings)``: a collector app (``create_app``) with ``settings`` on top of the
    defaults (any ``Settings`` field, e.g. ``tokens=("s",)``); no flush unless asked (60 s).

    Each app gets its own data directory (``tmp_path/data``, then ``data-2``, ...) unless
    ``data_dir`` is given; the caller's ``DLRLENS_*`` variables are ignored. Every app's storage
    is closed (flushed) after the test."""
    for name in [name for name in os.environ if name.startswith("DLRLENS_")]:
        monkeypatch.delenv(name)
    made = []
    with contextlib.ExitStack() as closing:
        def make(**settings):
            settings.setdefault("data_dir", tmp_path / ("data" if not made else f"data-{len(made) + 1}"))
            settings.setdefault("flush_seconds", 60.0)
            app = create_app(load_settings(**settings))
            app.config["TESTING"] = True
            made.append(app)
            closing.callback(app.extensions["dlrlens"]["storage"].close)
            return app
        yield make


@pytest.fixture
def app(make_app):
    """The collector app with the default settings, over ``tmp_path/data``."""
    return make_app()


@pytest.fixture
def client(app):
    """``app.test_client()``: requests go through the whole WSGI app, in this process."""
    return app.test_client()


# -- the real collector -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def collectors(tmp_path_factory):
    """``collectors(name, **options)``: start a real collector (``dlrlens collector``, gunicorn,
    options as :func:`tests.support.servers.start_collector` takes them) on a fresh data
    directory for the module's tests; every one is stopped after the module."""
    with contextlib.ExitStack() as started:
        def start(name: str = "collector", **options):
            running = start_collector(tmp_path_factory.mktemp(name) / "data", **options)
            started.callback(running.stop)
            return running
        yield start


@pytest.fixture(scope="module")
def collector(collectors):
    """A real collector shared by a module's tests: two workers, flushing every 0.3 s. A module
    that needs other settings overrides this fixture (with ``collectors``)."""
    return collectors("collector", workers=2, flush_seconds=0.3)


# -- the browser ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium():
    """Headless Chromium (a Playwright ``Browser``) for the module; skips when it or Playwright
    is missing. Each test opens its own context (a fresh session)."""
    if not CHROMIUM.exists():
        pytest.skip(MISSING)
    pytest.importorskip("playwright.sync_api")
    with launched_chromium() as browser:
        yield browser
