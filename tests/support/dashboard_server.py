"""The real Streamlit dashboard (``dlrlens dashboard``) for the browser test and
``scripts/screenshots.py``: started in its own process group on a free loopback port and
always stopped; plus what both need around it: waiting until posted receipts are in Parquet,
and a full-page screenshot of a Streamlit page."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import duckdb
import requests

from dlrlens.store import layout
from tests.support.servers import REPO, free_port, stop_process_group, wait_started, wait_until

START_TIMEOUT = 90  # seconds; Streamlit's first start imports a lot on a busy 2-core machine
STOP_TIMEOUT = 20


@dataclass
class Dashboard:
    process: subprocess.Popen
    url: str
    data_dir: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Stop ``dlrlens`` and the Streamlit child it runs (see :func:`stop_process_group`)."""
        stop_process_group(self.process, STOP_TIMEOUT)


def parquet_counts(data_dir: Path) -> tuple[int, int]:
    """(rows, distinct receipt_ids) in the receipt files the dashboard reads.

    Rows alone cannot tell when everything is flushed: compaction briefly shows rows twice
    (merged copy and inputs) and re-posted receipts are extra rows of the same receipt_id.
    """
    if not list(Path(data_dir).glob(layout.PARQUET_GLOB)):
        return 0, 0
    with duckdb.connect() as con:
        rows, distinct = con.execute(
            "SELECT count(*), count(DISTINCT receipt_id) FROM read_parquet(?, union_by_name = true)",
            [layout.parquet_glob(data_dir)]).fetchone()
    return rows, distinct


def wait_for_parquet(data_dir: Path, rows: int, distinct: int, timeout: float = 60) -> None:
    """Wait until the Parquet files hold ``distinct`` receipts in at least ``rows`` rows."""
    def flushed():
        found_rows, found_distinct = parquet_counts(data_dir)
        return found_distinct == distinct and found_rows >= rows
    wait_until(flushed, timeout, interval=0.3, what=f"{distinct} receipts ({rows} rows) in Parquet")


def _healthy(url: str) -> bool:
    try:
        return requests.get(url + "/_stcore/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def start_dashboard(data_dir: Path, *, port: int | None = None, log_dir: Path | None = None,
                    timeout: float = START_TIMEOUT, env: dict[str, str] | None = None) -> Dashboard:
    """Run ``python3 -m dlrlens dashboard --data DIR`` on 127.0.0.1 and wait until Streamlit
    answers ``/_stcore/health``. Raises RuntimeError (with the log) if it exits first.

    Output goes to ``dashboard-<port>.log`` in ``log_dir`` (default: beside ``data_dir``).
    ``env``: settings for the app on top (e.g. ``DLRLENS_DASHBOARD_PASSWORD``).
    """
    port = port or free_port()
    log_path = Path(log_dir or Path(data_dir).parent) / f"dashboard-{port}.log"
    # Only the data directory given here reaches the app, never the caller's DLRLENS_* or
    # STREAMLIT_* settings.
    extra = env or {}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DLRLENS_", "STREAMLIT_"))}
    # Run the code as it was at start: other work editing the checkout must not make
    # Streamlit reload modules mid-test (and watching files costs CPU on a busy machine).
    env["STREAMLIT_SERVER_FILE_WATCHER_TYPE"] = "none"
    env.update(extra)
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "dlrlens", "dashboard", "--data", str(data_dir), "--host", "127.0.0.1",
             "--port", str(port)],
            cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return wait_started(Dashboard(process, f"http://127.0.0.1:{port}", Path(data_dir), log_path), _healthy,
                        timeout, "dashboard", interval=0.3)


@contextlib.contextmanager
def running_dashboard(data_dir: Path, **kwargs):
    """:func:`start_dashboard` as a context manager that always stops it."""
    dashboard = start_dashboard(data_dir, **kwargs)
    try:
        yield dashboard
    finally:
        dashboard.stop()


# The heights of Streamlit's two scrolling areas (main column and sidebar); the document itself
# never scrolls, so a browser "full page" screenshot would hold only the first screen.
_CONTENT_HEIGHT_JS = """() => Math.max(...['stMain', 'stSidebarContent'].map(
    id => document.querySelector(`[data-testid="${id}"]`)?.scrollHeight || 0))"""


def full_page_screenshot(page, path: Path, *, max_height: int = 6000) -> Path:
    """Save a Playwright ``page`` of the dashboard as one PNG of its whole content.

    The viewport is grown to the content height (at most ``max_height`` pixels; charts re-lay
    out, so it is measured again), shot, then restored.
    """
    original = page.viewport_size
    height = original["height"]
    for _ in range(3):
        wanted = min(max(page.evaluate(_CONTENT_HEIGHT_JS), original["height"]), max_height)
        if wanted <= height:
            break
        height = wanted
        page.set_viewport_size({"width": original["width"], "height": height})
        page.wait_for_timeout(400)  # let the app lay out in the taller window
    try:
        page.screenshot(path=str(path), full_page=True)
    finally:
        if height != original["height"]:
            page.set_viewport_size(original)
    return Path(path)
