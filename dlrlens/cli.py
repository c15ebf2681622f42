"""The ``dlrlens`` command: one entry point, a subcommand per job.

Every subcommand takes ``--data DIR`` (default ``DLRLENS_DATA`` or ``./data``). Heavy
imports happen inside each subcommand, so ``dlrlens collector`` never loads the dashboard.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from dlrlens.store import layout

DEFAULT_COLLECTOR_PORT = 8080
DEFAULT_DASHBOARD_PORT = 8501


def _data_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="DIR", default=None,
                        help="data directory (default: $DLRLENS_DATA or ./data)")


def cmd_collector(args) -> int:
    from collector.server import serve
    from collector.settings import load_settings

    settings = load_settings(data_dir=layout.data_dir(args.data), flush_seconds=args.flush_seconds)
    serve(settings, host=args.host, port=args.port, workers=args.workers, threads=args.threads)
    return 0


def dashboard_command(data_dir: Path, host: str, port: int) -> list[str]:
    """The command line that runs the Streamlit app on ``data_dir``."""
    app_path = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
    return [sys.executable, "-m", "streamlit", "run", str(app_path),
            "--server.address", host, "--server.port", str(port), "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal",  # no Deploy button
            "--", "--data", str(data_dir)]


def cmd_dashboard(args) -> int:
    """Become Streamlit (exec): a service manager's SIGTERM then reaches the server itself,
    which frees the port; a child process would be orphaned and keep it."""
    data_dir = layout.data_dir(args.data).resolve()
    env = dict(os.environ, DLRLENS_DATA=str(data_dir))
    command = dashboard_command(data_dir, args.host, args.port)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command[0], command, env)


def _wait_healthy(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.3)
    return False


def _has_receipts(data_dir: Path) -> bool:
    return any(layout.receipts_dir(data_dir).glob(f"{layout.PARTITION_PREFIX}*/*.parquet"))


def cmd_up(args) -> int:
    """Start collector and dashboard together; with no data yet, feed demo traffic."""
    data_dir = layout.data_dir(args.data).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, DLRLENS_DATA=str(data_dir))
    me = [sys.executable, "-m", "dlrlens"]
    children: list[subprocess.Popen] = []

    def stop_all(*_):
        for child in reversed(children):
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()

    signal.signal(signal.SIGTERM, lambda *_: (stop_all(), sys.exit(0)))
    try:
        children.append(subprocess.Popen(
            me + ["collector", "--data", str(data_dir), "--host", args.host, "--port", str(args.collector_port)],
            env=env))
        collector_url = f"http://{args.host}:{args.collector_port}"
        if not _wait_healthy(collector_url + "/healthz", 60):
            print("dlrlens: the collector did not become healthy; see its log above", file=sys.stderr)
            stop_all()
            return 1
        children.append(subprocess.Popen(
            dashboard_command(data_dir, args.host, args.dashboard_port), env=env))
        print(f"dlrlens: collector on {collector_url}/dlr, dashboard on http://{args.host}:{args.dashboard_port}",
              flush=True)
        if not _has_receipts(data_dir) and not args.no_demo:
            print("dlrlens: no receipts yet, posting simulated Mobivate traffic through the collector", flush=True)
            children.append(subprocess.Popen(
                me + ["simulate", "--url", collector_url + "/dlr", "--campaigns", "8", "--messages", "4000",
                      "--rate", "400"], env=env))
        while all(child.poll() is None for child in children[:2]):
            time.sleep(1)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop_all()


# Subcommands that live in their own module: (name, help, module, its add-arguments function,
# its run(args, data_dir) function).
MODULE_COMMANDS = (
    ("simulate", "post realistic Mobivate receipts to a collector", "dlrlens.simulate", "add_arguments", "run"),
    ("report", "write the campaign report (csv, xlsx or json)", "dashboard.report",
     "add_report_arguments", "run_report"),
    ("compact", "merge small receipt files into large sorted ones (the collector also does it)",
     "dlrlens.store.compaction", "add_compact_arguments", "run_compact"),
    ("rebuild", "recompute the derived per-message state from the raw receipts", "dlrlens.store.derive",
     "add_rebuild_arguments", "run_rebuild"),
)


def _module_command(module_name: str, run: str):
    def command(args) -> int:
        function = getattr(importlib.import_module(module_name), run)
        if module_name == "dlrlens.simulate":
            return function(args)  # the simulator talks to a URL, not to a data directory
        return function(args, layout.data_dir(args.data))
    return command


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; a subcommand's own module is imported only when it is ``command``."""
    parser = argparse.ArgumentParser(prog="dlrlens", description="Delivery-receipt analytics for Mobivate SMS.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("collector", help="run the webhook collector (gunicorn)")
    _data_argument(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_COLLECTOR_PORT)
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--threads", type=int, default=16, help="threads per worker (default 16)")
    p.add_argument("--flush-seconds", type=float, default=None,
                   help="seconds between log-to-Parquet flushes (default $DLRLENS_FLUSH_SECONDS or 2)")
    p.set_defaults(func=cmd_collector)

    p = sub.add_parser("dashboard", help="run the Streamlit dashboard")
    _data_argument(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_DASHBOARD_PORT)
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("up", help="start collector and dashboard (with demo traffic when there is no data)")
    _data_argument(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--collector-port", type=int, default=DEFAULT_COLLECTOR_PORT)
    p.add_argument("--dashboard-port", type=int, default=DEFAULT_DASHBOARD_PORT)
    p.add_argument("--no-demo", action="store_true", help="never post simulated traffic")
    p.set_defaults(func=cmd_up)

    for name, help_text, module_name, add_arguments, run in MODULE_COMMANDS:
        p = sub.add_parser(name, help=help_text)
        _data_argument(p)
        if command == name:  # import the module only for the command that runs
            getattr(importlib.import_module(module_name), add_arguments)(p)
        p.set_defaults(func=_module_command(module_name, run))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
