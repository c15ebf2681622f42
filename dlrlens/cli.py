"""The ``dlrlens`` command: one entry point, a subcommand per job.

This module owns every subcommand's options and everything they print. The engines they
drive are plain functions that return values: :func:`dlrlens.simulate.plan_traffic` and
:func:`~dlrlens.simulate.send`, :func:`dlrlens.store.compaction.compact`,
:func:`dlrlens.store.derive.rebuild_derived`, :func:`dashboard.report.write_campaign_report`.
A new subcommand is a ``*_arguments`` function, a ``cmd_*`` function and a row of
:data:`SUBCOMMANDS`.

Every subcommand but ``simulate`` (which posts to a collector's URL) takes ``--data DIR``
(default ``$DLRLENS_DATA`` or ``./data``). Heavy imports happen inside the functions of a
subcommand, and only the running subcommand's options are built, so ``dlrlens collector``
never loads the dashboard.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from dlrlens.store import layout

DEFAULT_COLLECTOR_PORT = 8080
DEFAULT_DASHBOARD_PORT = 8501


def _data_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="DIR", default=None,
                        help="data directory (default: $DLRLENS_DATA or ./data)")


# --------------------------------------------------------------------------- collector, dashboard, up


def collector_arguments(parser: argparse.ArgumentParser) -> None:
    _data_argument(parser)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_COLLECTOR_PORT)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--threads", type=int, default=16, help="threads per worker (default 16)")
    parser.add_argument("--flush-seconds", type=float, default=None,
                        help="seconds between log-to-Parquet flushes (default $DLRLENS_FLUSH_SECONDS or 2)")


def dashboard_arguments(parser: argparse.ArgumentParser) -> None:
    _data_argument(parser)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_DASHBOARD_PORT)


def up_arguments(parser: argparse.ArgumentParser) -> None:
    _data_argument(parser)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--collector-port", type=int, default=DEFAULT_COLLECTOR_PORT)
    parser.add_argument("--dashboard-port", type=int, default=DEFAULT_DASHBOARD_PORT)
    parser.add_argument("--no-demo", action="store_true", help="never post simulated traffic")


def cmd_collector(args) -> int:
    """Run the webhook collector under gunicorn until stopped."""
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


def cmd_up(args) -> int:
    """Start collector and dashboard together; with no data yet, feed demo traffic."""
    data_dir = layout.data_dir(args.data).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, DLRLENS_DATA=str(data_dir))
    me = [sys.executable, "-m", "dlrlens"]
    children: list[subprocess.Popen] = []
    demo_plan, fake_api = None, None
    if not layout.has_receipts(data_dir) and not args.no_demo:
        from dlrlens import demo, simulate

        demo_plan = simulate.plan_traffic(8, 4000, span=demo.DEMO_SPAN)
        if not os.environ.get("MOBIVATE_API_KEY"):
            # The demo's own Mobivate, so names, costs and countries show too (never with a real key).
            fake_api = demo.start_fake_api(demo_plan, host="127.0.0.1")
            env.update(demo.demo_environment(fake_api))
            print(f"dlrlens: demo Mobivate API (send records) on {fake_api.url}", flush=True)

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
        if demo_plan is not None:
            print("dlrlens: no receipts yet, posting simulated Mobivate traffic (the last 7 days) through the "
                  "collector", flush=True)
            threading.Thread(target=_post_demo, args=(demo_plan, collector_url + "/dlr"), daemon=True).start()
        while all(child.poll() is None for child in children[:2]):
            time.sleep(1)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop_all()
        if fake_api is not None:
            fake_api.stop()


def _post_demo(plan, url: str) -> None:
    """Post the demo's simulated traffic (a thread of ``dlrlens up``); one line when done."""
    from dlrlens import simulate

    stats = simulate.send(plan.posts, url, rate=400)
    print(f"dlrlens: demo traffic: {stats.summary(url)}", flush=True)


# --------------------------------------------------------------------------- simulate


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative(kind: type) -> Callable[[str], float]:
    def parse(text: str):
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError("must not be negative")
        return value
    return parse


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _iso_time(text: str) -> datetime:
    """An ISO 8601 time; without an offset it is taken as UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def simulate_arguments(parser: argparse.ArgumentParser) -> None:
    from dlrlens.simulate import DEFAULT_SPAN, TOKEN_PARAM

    parser.add_argument("--url", required=True,
                        help="the collector's webhook URL, e.g. http://127.0.0.1:8080/dlr "
                             "(an existing query string is kept)")
    parser.add_argument("--campaigns", type=_positive_int, default=5,
                        help="number of campaigns (default 5)")
    parser.add_argument("--messages", type=_non_negative(int), default=2000,
                        help="messages in total, split unevenly between campaigns (default 2000)")
    parser.add_argument("--rate", type=_non_negative(float), default=0.0,
                        help="posts per second; 0 = as fast as possible (default)")
    parser.add_argument("--seed", type=int, default=None,
                        help="random seed for reproducible traffic (default: random, printed)")
    parser.add_argument("--duplicates", type=_fraction, default=0.02,
                        help="share of receipts posted twice, as Mobivate's retries do (default 0.02)")
    parser.add_argument("--xml-share", type=_fraction, default=0.2,
                        help="share of messages whose receipts use the form-encoded XML "
                             "(default 0.2)")
    parser.add_argument("--out-of-order", type=_fraction, default=0.01,
                        help="share of messages with a pending receipt posted after the final "
                             "(default 0.01)")
    parser.add_argument("--time-scale", type=_positive_float, default=1.0,
                        help="compress simulated time: durations (send window, delays) are "
                             "divided by this (default 1 = realistic)")
    parser.add_argument("--span", type=_positive_float, default=DEFAULT_SPAN.total_seconds() / 3600,
                        help="hours of simulated sending, before --time-scale (default 3)")
    parser.add_argument("--start", type=_iso_time, default=None,
                        help="ISO time of the first send (default: so sending ends an hour, "
                             "scaled, before now); receipts not yet due by now are left out")
    parser.add_argument("--token", default=None,
                        help=f"webhook secret, sent as the '{TOKEN_PARAM}' query parameter")
    parser.add_argument("--concurrency", type=_positive_int, default=4,
                        help="parallel connections (default 4; 1 keeps the exact order)")
    parser.add_argument("--retries", type=_non_negative(int), default=3,
                        help="retries of a post after a connection error or 429/502/503/504 "
                             "(default 3)")
    parser.add_argument("--timeout", type=_positive_float, default=10.0,
                        help="seconds to wait for each answer (default 10)")
    parser.add_argument("--dry-run", action="store_true",
                        help="generate and describe the traffic, send nothing")


def cmd_simulate(args) -> int:
    """Plan the traffic, describe it, post it. Exit status 0 when every post was acknowledged."""
    from dlrlens import simulate

    plan = simulate.plan_traffic(
        args.campaigns, args.messages, seed=args.seed, start=args.start, span=timedelta(hours=args.span),
        time_scale=args.time_scale, duplicates=args.duplicates, xml_share=args.xml_share,
        out_of_order=args.out_of_order,
    )
    print(f"seed {plan.seed}")
    print(simulate.describe_traffic(plan.posts))
    if args.dry_run:
        return 0

    def report_progress(stats) -> None:
        print(f"  ... {stats.sent}/{len(plan.posts)} posts done", file=sys.stderr, flush=True)

    stats = simulate.send(plan.posts, args.url, rate=args.rate, token=args.token, concurrency=args.concurrency,
                          retries=args.retries, timeout=args.timeout, progress=report_progress)
    print(stats.summary(simulate.post_url(args.url, (), args.token)))
    return 0 if stats.ok and stats.sent == len(plan.posts) else 1


# --------------------------------------------------------------------------- report


def report_arguments(parser: argparse.ArgumentParser) -> None:
    from dashboard.report import FORMATS

    _data_argument(parser)
    parser.add_argument("--from", dest="date_from", metavar="DATE",
                        help="first day (YYYY-MM-DD, in --tz) of messages to include by sent time; default: all data")
    parser.add_argument("--to", dest="date_to", metavar="DATE",
                        help="last day (YYYY-MM-DD, in --tz), inclusive; default: all data")
    parser.add_argument("--campaign", dest="campaigns", action="append", default=[], metavar="NAME",
                        help="only this campaign (repeat for several); default: all")
    parser.add_argument("--tz", default="UTC", metavar="ZONE",
                        help="IANA time zone for the dates and the daily trend (default UTC)")
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default=None,
                        help="file format; default: from the --output extension, else xlsx")
    parser.add_argument("--output", "-o", required=True, metavar="FILE",
                        help="file to write (a directory: a name with the date range is chosen)")


def cmd_report(args) -> int:
    """Build the campaign report and write it. 0 on success, 2 on bad input, 1 without data
    or when the file cannot be written."""
    from dashboard import report

    try:
        filters = report.report_filters(args.date_from, args.date_to, args.campaigns, args.tz)
    except ValueError as exc:
        print(f"dlrlens report: error: {exc}", file=sys.stderr)
        return 2
    fmt = report.output_format(args.output, args.fmt)
    output = report.report_path(args.output, filters, fmt)
    try:
        written = report.write_campaign_report(layout.data_dir(args.data), filters, fmt, output)
    except report.NoReceipts as exc:
        print(f"dlrlens report: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"dlrlens report: error: cannot write {output}: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {written.path} ({written.fmt}): {written.messages} messages, {written.campaigns} campaigns")
    return 0


# --------------------------------------------------------------------------- compact, rebuild


def compact_arguments(parser: argparse.ArgumentParser) -> None:
    from dlrlens.store.compaction import DELETE_GRACE_SECONDS, SETTLE_SECONDS

    _data_argument(parser)
    parser.add_argument("--min-age", type=float, default=60.0, metavar="S",
                        help="leave files younger than S seconds alone (default 60: the current flushes)")
    parser.add_argument("--settle", type=float, default=SETTLE_SECONDS, metavar="S",
                        help=f"merge a partition into one file once it got no new data for S seconds "
                             f"(default {SETTLE_SECONDS:.0f}; 0 merges every partition fully now)")
    parser.add_argument("--grace", type=float, default=DELETE_GRACE_SECONDS, metavar="S",
                        help=f"keep merged files S seconds for queries that are reading them, then delete "
                             f"them (default {DELETE_GRACE_SECONDS:.0f}; 0 only when nothing reads the data)")


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def cmd_compact(args) -> int:
    """Compact once, wait out the grace period and delete the merged files, print what was
    done. Exit status 1 if a partition failed."""
    from dlrlens.store import compaction

    data_dir = layout.data_dir(args.data)
    stats = compaction.compact(data_dir, min_age_seconds=args.min_age, settle_seconds=args.settle,
                               delete_grace_seconds=args.grace)
    print(f"partitions: {stats.partitions_examined} examined, {stats.partitions_compacted} compacted")
    print(f"merged {stats.files_merged} files into {stats.files_written} "
          f"({stats.rows:,} rows): {_mb(stats.bytes_before)} -> {_mb(stats.bytes_after)} in {stats.seconds:.1f} s")
    removed, failures = stats.files_removed, list(stats.failures)
    if stats.files_written and args.grace > 0:
        print(f"waiting {args.grace:.0f} s for running queries before deleting the merged files", flush=True)
        time.sleep(args.grace)
        finished = compaction.remove_superseded(data_dir, delete_grace_seconds=args.grace)
        removed += finished.files_removed
        failures += finished.failures
    print(f"removed {removed} merged files and {stats.temp_files_removed} temporary files")
    size, receipts = compaction.bytes_per_receipt(data_dir)
    per_receipt = f"{size / receipts:.1f} bytes per receipt" if receipts else "no receipts"
    print(f"stored: {receipts:,} receipts in {_mb(size)}, {per_receipt}")
    for failure in failures:
        print(f"failed: {failure}")
    return 1 if failures else 0


def rebuild_arguments(parser: argparse.ArgumentParser) -> None:
    from dlrlens.store.derive import REBUILD_SETTINGS

    _data_argument(parser)
    parser.add_argument("--memory-limit", default=REBUILD_SETTINGS["memory_limit"], metavar="SIZE",
                        help="DuckDB memory limit while rebuilding; the rest spills to data/tmp (default %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: all cores)")


def cmd_rebuild(args) -> int:
    """Recompute the derived per-message state from all receipts."""
    from dlrlens.store import derive

    settings = {"memory_limit": args.memory_limit}
    if args.threads:
        settings["threads"] = args.threads
    result = derive.rebuild_derived(layout.data_dir(args.data), settings=settings)
    print(f"rebuilt the per-message state: {result['messages']:,} messages from {result['receipts']:,} "
          f"receipt rows in {result['absorbed_files']} files -> {result['rewritten_files']} derived files "
          f"(version {result['version']}) in {result['seconds']:.1f} s")
    return 0


# --------------------------------------------------------------------------- sync, campaigns


def _day(text: str):
    try:
        return datetime.strptime(text, "%Y-%m-%d").date()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day YYYY-MM-DD") from None


def sync_arguments(parser: argparse.ArgumentParser) -> None:
    _data_argument(parser)
    parser.add_argument("--from", dest="date_from", metavar="DATE", type=_day, required=True,
                        help="first UTC day (YYYY-MM-DD) of Mobivate send records to fetch")
    parser.add_argument("--to", dest="date_to", metavar="DATE", type=_day, required=True,
                        help="last UTC day (YYYY-MM-DD), inclusive")
    parser.add_argument("--page-size", type=int, default=1000, help="message-log page size (at most 1000)")


def cmd_sync(args) -> int:
    """Fetch Mobivate's message log, history and campaign list for the days and store them.
    0 on success (malformed pages skipped are reported), 2 on bad input or settings, 3 for a
    key problem (401/403), 1 for any other API failure."""
    from dlrlens.mobivate import MobivateAuthError, MobivateClient, MobivateError, MobivateSettings
    from dlrlens.store import sends

    if args.date_to < args.date_from:
        print("dlrlens sync: error: --to is before --from", file=sys.stderr)
        return 2
    try:
        settings = MobivateSettings.from_env()
    except ValueError as exc:
        print(f"dlrlens sync: error: {exc}", file=sys.stderr)
        return 2
    if not settings.configured:
        print("dlrlens sync: error: no Mobivate API key: set MOBIVATE_API_KEY (nothing is fetched without one)",
              file=sys.stderr)
        return 2
    client = MobivateClient.from_settings(settings)
    data_dir = layout.data_dir(args.data)
    data_dir.mkdir(parents=True, exist_ok=True)
    progress = lambda text: print(f"dlrlens sync: {text}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        result = sends.sync(data_dir, client, args.date_from, args.date_to, keep_recipient=settings.keep_recipient,
                            page_size=args.page_size, progress=progress)
    except MobivateAuthError as exc:
        print(f"dlrlens sync: error: {exc}", file=sys.stderr)
        return 3
    except MobivateError as exc:
        print(f"dlrlens sync: error: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    rate = result.records / result.seconds if result.seconds else 0.0
    print(f"synced {result.start}..{result.end}: {result.records} send records, {result.campaigns} campaigns, "
          f"{result.files_changed} files changed, {len(result.bad_pages)} malformed pages skipped "
          f"({result.seconds:.1f} s, {rate:,.0f} records/s)")
    return 0


def campaigns_arguments(parser: argparse.ArgumentParser) -> None:
    _data_argument(parser)
    parser.add_argument("action", choices=["import"], help="import: campaign names from a CSV")
    parser.add_argument("file", metavar="FILE.csv", help="CSV with the header batch_id,name")


def cmd_campaigns(args) -> int:
    """Import campaign names. 0 when stored, 2 when the file has bad rows (nothing stored)."""
    from dlrlens.store import sends

    try:
        text = Path(args.file).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"dlrlens campaigns import: error: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    data_dir = layout.data_dir(args.data)
    data_dir.mkdir(parents=True, exist_ok=True)
    result = sends.import_names(data_dir, text)
    if result.errors:
        for error in result.errors[:50]:
            print(f"dlrlens campaigns import: {args.file}: {error}", file=sys.stderr)
        more = len(result.errors) - 50
        print(f"dlrlens campaigns import: error: {len(result.errors)} bad row(s){f' ({more} more not shown)' if more > 0 else ''}; "
              f"nothing imported", file=sys.stderr)
        return 2
    print(f"imported {len(result.names)} campaign names")
    return 0


# --------------------------------------------------------------------------- the parser

# (name, help, adds its options, runs it), in the order `dlrlens --help` lists them.
SUBCOMMANDS: tuple[tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[..., int]], ...] = (
    ("collector", "run the webhook collector (gunicorn)", collector_arguments, cmd_collector),
    ("dashboard", "run the Streamlit dashboard", dashboard_arguments, cmd_dashboard),
    ("up", "start collector and dashboard (with demo traffic when there is no data)", up_arguments, cmd_up),
    ("simulate", "post realistic Mobivate receipts to a collector", simulate_arguments, cmd_simulate),
    ("report", "write the campaign report (csv, xlsx or json)", report_arguments, cmd_report),
    ("compact", "merge small receipt files into large sorted ones (the collector also does it)",
     compact_arguments, cmd_compact),
    ("rebuild", "recompute the derived per-message state from the raw receipts", rebuild_arguments, cmd_rebuild),
    ("sync", "fetch Mobivate's send records (names, cost, country) for some days", sync_arguments, cmd_sync),
    ("campaigns", "import campaign names from a CSV (batch_id,name)", campaigns_arguments, cmd_campaigns),
)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s options are built (each subcommand's own imports
    happen there), the other subcommands are listed by name."""
    parser = argparse.ArgumentParser(prog="dlrlens", description="Delivery-receipt analytics for Mobivate SMS.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text, add_arguments, run in SUBCOMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text[:1].upper() + help_text[1:] + ".")
        if name == command:
            add_arguments(p)
        p.set_defaults(func=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
