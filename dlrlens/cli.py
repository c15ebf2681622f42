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

from dlrlens.store import demo as demo_status
from dlrlens.store import layout

DEFAULT_COLLECTOR_PORT = 8080
DEFAULT_DASHBOARD_PORT = 8501


def _data_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="DIR", default=None,
                        help="data directory (default: $DLRLENS_DATA or ./data)")


def _store_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", metavar="STORE", default=None,
                        help="where the receipts are: local (the data directory) or iceberg:<catalog>, "
                             "a pyiceberg catalog (default: $DLRLENS_STORE or local)")


def _store_choice(args, command: str):
    """``--store`` (else ``DLRLENS_STORE``) parsed; exits with status 2 naming the problem."""
    from dlrlens.store.backends import store_choice

    try:
        return store_choice(args.store)
    except ValueError as exc:
        print(f"dlrlens {command}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


# --------------------------------------------------------------------------- collector, dashboard, up


def collector_arguments(parser: argparse.ArgumentParser) -> None:
    _data_argument(parser)
    _store_argument(parser)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_COLLECTOR_PORT)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--threads", type=int, default=16, help="threads per worker (default 16)")
    parser.add_argument("--flush-seconds", type=float, default=None,
                        help="seconds between log-to-Parquet flushes (default $DLRLENS_FLUSH_SECONDS or 2)")


def dashboard_arguments(parser: argparse.ArgumentParser) -> None:
    _data_argument(parser)
    _store_argument(parser)
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

    settings = load_settings(data_dir=layout.data_dir(args.data), flush_seconds=args.flush_seconds,
                             store=_store_choice(args, "collector"))
    serve(settings, host=args.host, port=args.port, workers=args.workers, threads=args.threads)
    return 0


def dashboard_command(data_dir: Path, host: str, port: int) -> list[str]:
    """The command line that runs the Streamlit app on ``data_dir``."""
    app_path = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
    return [sys.executable, "-m", "streamlit", "run", str(app_path),
            "--server.address", host, "--server.port", str(port), "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal",  # no Deploy button
            "--theme.primaryColor", "#1f5fa8",  # the accent: blue, not an error's red (dashboard/app.py ACCENT)
            "--", "--data", str(data_dir)]


def cmd_dashboard(args) -> int:
    """Become Streamlit (exec): a service manager's SIGTERM then reaches the server itself,
    which frees the port; a child process would be orphaned and keep it."""
    data_dir = layout.data_dir(args.data).resolve()
    env = dict(os.environ, DLRLENS_DATA=str(data_dir), DLRLENS_STORE=str(_store_choice(args, "dashboard")))
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


# The demo's share of delivered messages clicked and replied to (`dlrlens simulate`'s defaults).
DEMO_CLICK_SHARE, DEMO_REPLY_SHARE = 0.1, 0.015


def cmd_up(args) -> int:
    """Start collector and dashboard together; with no data yet, feed demo traffic."""
    data_dir = layout.data_dir(args.data).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, DLRLENS_DATA=str(data_dir))
    me = [sys.executable, "-m", "dlrlens"]
    children: list[subprocess.Popen] = []
    demo_plan = fake_api = demo_started = None
    if not layout.has_receipts(data_dir) and not args.no_demo:
        from dlrlens import demo, simulate

        from collector.backfill import store_posts
        from collector.settings import load_settings

        # A week of history, so the charts have a shape: stored as received when it was due
        # (collector.backfill: the webhook's own parsers, received_at = due), never posted
        # now, or its webhook lag would read days. Then the live part: three hours of sending
        # compressed 60x (about 3 minutes), each post reaching the real webhook when it is
        # due. The dashboard says the demo is posting (data/demo.json, dlrlens.store.demo) and
        # refreshes until it ends.
        demo_started = datetime.now(timezone.utc)
        events = dict(click_share=DEMO_CLICK_SHARE, reply_share=DEMO_REPLY_SHARE)
        history = simulate.plan_traffic(8, 4000, span=demo.DEMO_SPAN, now=demo_started, **events)
        stored = store_posts(load_settings(data_dir=data_dir), history.all_posts(), seed=history.seed)
        print(f"dlrlens: demo history of the last 7 days stored ({stored.get('receipts', 0):,} receipts, "
              f"{stored.get('clicks', 0):,} clicks, {stored.get('replies', 0):,} replies)", flush=True)
        demo_plan = simulate.plan_traffic(8, 1000, start=demo_started, time_scale=60, **events)
        if not os.environ.get("MOBIVATE_API_KEY"):
            # The demo's own Mobivate, so names, costs and countries show too (never with a real key).
            fake_api = demo.start_fake_api(simulate.TrafficPlan(history.seed, history.start,
                                                                history.posts + demo_plan.posts),
                                           host="127.0.0.1")
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
    demo_poster = None
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
            print("dlrlens: no receipts yet, posting simulated Mobivate traffic through the collector (about "
                  "3 minutes, in real time)", flush=True)
            demo_poster = threading.Thread(target=_post_demo, args=(demo_plan, collector_url + "/dlr"), daemon=True)
            demo_poster.start()
            demo_status.write_demo_status(data_dir, True, demo_started)
        last_beat = time.monotonic()
        while all(child.poll() is None for child in children[:2]):
            time.sleep(1)
            if demo_poster is not None and time.monotonic() - last_beat >= demo_status.HEARTBEAT_SECONDS:
                demo_status.write_demo_status(data_dir, demo_poster.is_alive(), demo_started)
                last_beat = time.monotonic()
                if not demo_poster.is_alive():
                    demo_poster = None
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop_all()
        if demo_poster is not None:  # stopped while posting: the dashboard must not wait for it
            demo_status.write_demo_status(data_dir, False, demo_started)
        if fake_api is not None:
            fake_api.stop()


def _post_demo(plan, url: str) -> None:
    """Post the demo's simulated traffic, receipts, clicks and replies, each when it is due (a
    thread of ``dlrlens up``); one line when done."""
    from dlrlens import simulate

    stats = simulate.send(plan.all_posts(), url, rate=400, realtime=True)
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
    parser.add_argument("--click-share", type=_fraction, default=DEMO_CLICK_SHARE,
                        help="share of delivered messages clicked, posted to /click beside --url's /dlr "
                             "(default 0.1; 0 = none)")
    parser.add_argument("--reply-share", type=_fraction, default=DEMO_REPLY_SHARE,
                        help="share of delivered messages replied to (about a third STOP), posted to "
                             "/incoming (default 0.015; 0 = none)")
    parser.add_argument("--dry-run", action="store_true",
                        help="generate and describe the traffic, send nothing")
    parser.add_argument("--realtime", action="store_true",
                        help="post each receipt when it is due (its created time), not as fast as --rate allows: "
                             "realistic webhook lag; use with --start now and a --time-scale")


def cmd_simulate(args) -> int:
    """Plan the traffic, describe it, post it. Exit status 0 when every post was acknowledged."""
    from dlrlens import simulate

    plan = simulate.plan_traffic(
        args.campaigns, args.messages, seed=args.seed, start=args.start, span=timedelta(hours=args.span),
        time_scale=args.time_scale, duplicates=args.duplicates, xml_share=args.xml_share,
        out_of_order=args.out_of_order, click_share=args.click_share, reply_share=args.reply_share,
    )
    print(f"seed {plan.seed}")
    print(simulate.describe_traffic(plan.posts))
    if plan.events:
        print(simulate.describe_events(plan.events))
        try:
            simulate.endpoint_url(args.url, "click")
        except ValueError as exc:
            print(f"dlrlens simulate: {exc}; give the collector's /dlr URL, or --click-share 0 --reply-share 0",
                  file=sys.stderr)
            return 2
    if args.dry_run:
        return 0
    posts = plan.all_posts()

    def report_progress(stats) -> None:
        print(f"  ... {stats.sent}/{len(posts)} posts done", file=sys.stderr, flush=True)

    stats = simulate.send(posts, args.url, rate=args.rate, token=args.token, concurrency=args.concurrency,
                          retries=args.retries, timeout=args.timeout, progress=report_progress,
                          realtime=args.realtime)
    print(stats.summary(simulate.post_url(args.url, (), args.token)))
    return 0 if stats.ok and stats.sent == len(posts) else 1


# --------------------------------------------------------------------------- report


REPORT_EXAMPLES = """\
examples:
  dlrlens report --from 2026-11-01 --to 2026-11-30 --tz Europe/London -o november.xlsx
  dlrlens report --campaign black-friday --outcome failed --status EXPIRED -o failed.csv
  dlrlens report --label team=retail --label env=prod --format json -o - | jq .scope
  dlrlens report --strict --campaign black-friday -o bf.xlsx   # exit 2 if no such campaign

Every dashboard view can be reproduced: its URL parameters campaign, status, outcome, label
and tz are the options --campaign, --status, --outcome, --label and --tz. The file states
its scope (period, zone, every filter, what could not be honoured): the Summary sheet, the
JSON "scope" object, the CSV's first line (skip it with pandas skiprows=1).
exit status: 0 written; 1 no data or the file cannot be written; 2 bad options, or (with
--strict) a value the data does not have.
"""


def report_arguments(parser: argparse.ArgumentParser) -> None:
    from dashboard.report import FORMATS
    from dlrlens.store.selection import OUTCOMES

    parser.epilog = REPORT_EXAMPLES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    _data_argument(parser)
    _store_argument(parser)
    parser.add_argument("--from", dest="date_from", metavar="DATE",
                        help="first day (YYYY-MM-DD, in --tz) of messages to include by sent time; default: all data")
    parser.add_argument("--to", dest="date_to", metavar="DATE",
                        help="last day (YYYY-MM-DD, in --tz), inclusive; default: all data")
    parser.add_argument("--campaign", dest="campaigns", action="append", default=[], metavar="NAME",
                        help="only this campaign (repeat for several); default: all")
    parser.add_argument("--status", dest="statuses", action="append", default=[], metavar="NAME",
                        help="only messages whose deciding (or, pending, latest) status is NAME (repeatable)")
    parser.add_argument("--outcome", dest="outcomes", action="append", default=[], choices=OUTCOMES,
                        help="only messages with this outcome (repeatable); default: all")
    parser.add_argument("--label", dest="labels", action="append", default=[], metavar="KEY=VALUE",
                        help="only messages whose webhook URL had this label (repeat: all of them)")
    parser.add_argument("--tz", default="UTC", metavar="ZONE",
                        help="IANA time zone for the dates and the daily trend (default UTC)")
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default=None,
                        help="file format; default: from the --output extension, else xlsx (csv for -o -); "
                             "an error when it contradicts the extension")
    parser.add_argument("--output", "-o", required=True, metavar="FILE",
                        help="file to write (a directory: a name with the date range is chosen; "
                             "-: standard output, csv or json)")
    parser.add_argument("--strict", action="store_true",
                        help="fail (exit 2, nothing written) when a --campaign or --label is not in the data; "
                             "without it the report is written with zero figures and a warning on stderr")


def cmd_report(args) -> int:
    """Build the campaign report and write it. 0 on success, 2 on bad input (or, with
    --strict, a value the data does not have), 1 without data or when the file cannot be
    written. Warnings and the summary go to stderr when the report goes to stdout."""
    from dashboard import report

    def error(text: str, status: int) -> int:
        print(f"dlrlens report: error: {text}", file=sys.stderr)
        return status

    try:
        filters = report.report_filters(args.date_from, args.date_to, args.campaigns, args.tz,
                                        args.statuses, args.outcomes, args.labels)
        fmt = report.output_format(args.output, args.fmt)
    except ValueError as exc:
        return error(str(exc), 2)
    to_stdout = args.output == "-"
    if to_stdout and fmt == "xlsx" and sys.stdout.isatty():
        return error("refusing to write an Excel file to a terminal; redirect it (> report.xlsx) or use "
                     "--format csv|json", 2)
    output = sys.stdout.buffer if to_stdout else report.report_path(args.output, filters, fmt)
    try:
        written = report.write_campaign_report(layout.data_dir(args.data), filters, fmt, output, strict=args.strict,
                                               store=_store_choice(args, "report"))
    except report.Unhonourable as exc:
        return error(f"{exc} (--strict: nothing written)", 2)
    except report.NoReceipts as exc:
        return error(str(exc), 1)
    except OSError as exc:
        return error(f"cannot write {output if not to_stdout else 'standard output'}: {exc}", 1)
    for value in written.unhonoured:
        print(f"dlrlens report: warning: {value.text()}; the report covers it with zero figures "
              "(--strict makes this an error)", file=sys.stderr)
    where = "standard output" if written.path is None else str(written.path)
    print(f"wrote {where} ({written.fmt}): {written.messages} messages, {written.campaigns} campaigns",
          file=sys.stderr if to_stdout else sys.stdout)
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


# --------------------------------------------------------------------------- migrate


def migrate_arguments(parser: argparse.ArgumentParser) -> None:
    _data_argument(parser)
    parser.add_argument("--to", required=True, metavar="STORE",
                        help="the destination, iceberg:<catalog> (a pyiceberg catalog: .pyiceberg.yaml or "
                             "PYICEBERG_CATALOG__<NAME>__* variables)")


def cmd_migrate(args) -> int:
    """Copy the data directory's receipt, click and reply files into the Iceberg tables
    (idempotent, resumable).
    0 when done, 2 on a bad destination, 1 when it had to stop."""
    from dlrlens.store.backends import parse_store

    try:
        choice = parse_store(args.to)
        if choice.is_local:
            raise ValueError("the destination must be iceberg:<catalog>")
        from dlrlens.store.iceberg.table import check_configured

        check_configured(choice.catalog)
    except ValueError as exc:
        print(f"dlrlens migrate: error: --to {args.to}: {exc}", file=sys.stderr)
        return 2
    from dlrlens.store.iceberg.migrate import MigrationError, migrate

    data_dir = layout.data_dir(args.data)
    try:
        result = migrate(data_dir, choice.catalog,
                         progress=lambda path, rows: print(f"  copied {path} ({rows:,} rows)", flush=True))
    except MigrationError as exc:
        print(f"dlrlens migrate: error: {exc}", file=sys.stderr)
        return 1
    per_table = ", ".join(f"{count} {table}" for table, count in result.files_by_table.items())
    print(f"{result.files} files in {data_dir} ({per_table}): {result.copied} copied ({result.rows:,} rows), "
          f"{result.already} copied before, {result.covered} covered by earlier copies, in {result.seconds:.1f} s")
    if result.send_files:
        print(f"{result.send_files} send record, campaign list and names files merged into the send tables: "
              f"{result.send_partitions} partitions changed ({'all there already' if not result.send_partitions else 'copied'})")
    if result.log_segments:
        print(f"note: the write-ahead log still holds {result.log_segments} segments, not copied: start and stop "
              f"the collector once on {data_dir} (it flushes them), then run migrate again")
    return 0


# --------------------------------------------------------------------------- alerts


def alerts_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("check: evaluate every alert rule once (as of --at, default now), record what fired or "
                          "resolved and send its notifications; prints what changed; exit 0 (2: a wrong alerts "
                          "file). test NAME: send a test notification to the [[notify]] channel NAME; exit 1 with "
                          "the reason when it cannot be delivered.")
    parser.add_argument("alerts_command", choices=("check", "test"), metavar="{check,test}",
                        help="check: one evaluation; test: a test notification")
    parser.add_argument("name", nargs="?", metavar="NAME", help="test: a [[notify]] channel's name")
    _data_argument(parser)
    _store_argument(parser)  # on the Iceberg store, the shared alert state (and the receipts table)
    parser.add_argument("--file", metavar="FILE", default=None,
                        help="the alerts file (default: $DLRLENS_ALERTS_FILE or ./alerts.toml)")
    parser.add_argument("--at", metavar="ISO-TIME", type=_instant_argument, default=None,
                        help="check: evaluate as of this time (e.g. 2026-12-06T14:30:00Z; reproducible checks, "
                             "backfills)")


def _instant_argument(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r} (e.g. 2026-12-06T14:30:00Z)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def cmd_alerts(args) -> int:
    """``dlrlens alerts check`` / ``dlrlens alerts test NAME``."""
    from dlrlens.alerts import engine
    from dlrlens.alerts.rules import RulesError, load

    if (args.alerts_command == "test") != (args.name is not None) or (args.at and args.alerts_command == "test"):
        print("dlrlens alerts: error: use `dlrlens alerts check [--at ISO-TIME]` or `dlrlens alerts test NAME`",
              file=sys.stderr)
        return 2
    path = Path(args.file or os.environ.get("DLRLENS_ALERTS_FILE") or "alerts.toml")
    data_dir = layout.data_dir(args.data)
    choice = _store_choice(args, "alerts")
    try:
        config = load(path)
    except RulesError as exc:
        print(f"dlrlens alerts: error: {exc}", file=sys.stderr)
        return 2
    if args.alerts_command == "test":
        try:
            delivery = engine.send_test(config, data_dir, args.name, choice=choice)
        except KeyError:
            print(f"dlrlens alerts test: error: no [[notify]] channel named {args.name!r} in {path}; known: "
                  f"{', '.join(config.channels) or '(none)'}", file=sys.stderr)
            return 2
        if not delivery.ok:
            print(f"dlrlens alerts test: error: delivery to {args.name!r} failed after {delivery.attempts} attempts: "
                  f"{delivery.error}", file=sys.stderr)
            return 1
        print(f"sent a test notification to {args.name!r} ({delivery.seconds:.1f} s)")
        return 0
    if not data_dir.is_dir():
        # Evaluating would create the directory (the alert state lives in it) and report "0
        # firing" over no data: a wrong --data must not look like a healthy install.
        print(f"dlrlens alerts check: error: no data directory {data_dir} (pass the collector's --data, or set "
              f"DLRLENS_DATA)", file=sys.stderr)
        return 2
    result = engine.evaluate_now(config, data_dir, args.at, choice=choice)
    if result.refused:
        print("another process's evaluation committed first: this one was discarded (nothing sent); run it again",
              file=sys.stderr)
        return 1
    evaluation = result.evaluation
    print(f"evaluated {len(config.rules)} rules at {result.at:%Y-%m-%dT%H:%M:%SZ} "
          f"({evaluation.seconds:.2f} s of CPU): {len(evaluation.findings)} firing")
    for kind, pairs in (("fired", result.fired), ("resolved", result.resolved), ("repeated", result.repeated),
                        ("silenced", result.silenced)):
        for rule, grp in pairs:
            print(f"{kind}: {rule} [{grp}]")
    for finding in evaluation.findings:
        print(f"firing: {finding.rule} [{finding.grp}]: {finding.summary}")
    for rule, error in evaluation.errors.items():
        print(f"rule failed: {rule}: {error}", file=sys.stderr)
    for d in result.deliveries:
        outcome = "sent" if d.ok else f"FAILED after {d.attempts} attempts: {d.error}"
        print(f"notification to {d.channel}: {outcome}")
    return 0


# --------------------------------------------------------------------------- sync, campaigns


def _day(text: str):
    try:
        return datetime.strptime(text, "%Y-%m-%d").date()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day YYYY-MM-DD") from None


def sync_arguments(parser: argparse.ArgumentParser) -> None:
    _data_argument(parser)
    _store_argument(parser)
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
    destination = _send_destination(args, "sync")
    client = MobivateClient.from_settings(settings)
    data_dir = layout.data_dir(args.data)
    data_dir.mkdir(parents=True, exist_ok=True)
    progress = lambda text: print(f"dlrlens sync: {text}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        result = sends.sync(data_dir, client, args.date_from, args.date_to, keep_recipient=settings.keep_recipient,
                            page_size=args.page_size, progress=progress, destination=destination)
    except MobivateAuthError as exc:
        print(f"dlrlens sync: error: {exc}", file=sys.stderr)
        return 3
    except MobivateError as exc:
        print(f"dlrlens sync: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the Iceberg store's catalog or object store: named, not a trace
        print(f"dlrlens sync: error: the store could not take the records ({type(exc).__name__}: "
              f"{str(exc).splitlines()[0][:300] if str(exc) else ''}); the days merged before it are kept",
              file=sys.stderr)
        return 1
    finally:
        client.close()
    rate = result.records / result.seconds if result.seconds else 0.0
    print(f"synced {result.start}..{result.end}: {result.records} send records, {result.campaigns} campaigns, "
          f"{result.files_changed} files changed, {len(result.bad_pages)} malformed pages skipped "
          f"({result.seconds:.1f} s, {rate:,.0f} records/s)")
    return 0


def _send_destination(args, command: str):
    """Where ``command`` stores send records or names (``--store``); exits with status 2 naming
    the problem (an unconfigured catalog)."""
    from dlrlens.store.backends import send_destination

    try:
        return send_destination(layout.data_dir(args.data), _store_choice(args, command))
    except ValueError as exc:
        print(f"dlrlens {command}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def campaigns_arguments(parser: argparse.ArgumentParser) -> None:
    _data_argument(parser)
    _store_argument(parser)
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
    destination = _send_destination(args, "campaigns import")
    data_dir = layout.data_dir(args.data)
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        result = sends.import_names(data_dir, text, destination)
    except Exception as exc:  # noqa: BLE001 - the Iceberg store's catalog or object store
        print(f"dlrlens campaigns import: error: the store could not take the names ({type(exc).__name__}: "
              f"{str(exc).splitlines()[0][:300] if str(exc) else ''}); nothing imported", file=sys.stderr)
        return 1
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
    ("migrate", "copy a data directory's receipts, clicks and replies into Iceberg tables (idempotent, resumable)",
     migrate_arguments, cmd_migrate),
    ("alerts", "evaluate the alert rules once (check) or send a test notification (test)", alerts_arguments,
     cmd_alerts),
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
