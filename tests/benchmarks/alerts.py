"""Alert figures: the CPU cost of one evaluation with 50 rules, and the time from the first bad
receipt to the notification under load.

    python3 -m tests.benchmarks.alerts cost --data DIR [--rules 50] [--runs 3]
    python3 -m tests.benchmarks.alerts latency [--every 60] [--trials 3] [--rate 200]

``cost``: ``DIR`` (written to: a few small receipt files are added) is a generated data set (``python3 -m tests.benchmarks.generate --receipts N
--out DIR``, then ``dlrlens rebuild --data DIR`` as the collector's maintenance keeps it). 50
rules of every kind (delivery rate per campaign against a floor and the 7-day baseline, per
label, overall; pending age per campaign; unknown statuses; receipt silence; refused requests;
collector health) are evaluated at the data's last sent time: CPU seconds of the whole process
(DuckDB's threads included, ``time.process_time``) for a fresh ``Store`` (what ``dlrlens alerts
check`` does, and the alerts process's first evaluation) and for the ``Store`` the collector's
alerts process keeps between evaluations, with 300 new receipts stored before each (median of
``--runs``), with the wall time. Baseline in the same run: the same 50 questions
answered by the dashboard's own query functions (``dashboard.queries.campaigns`` per window).

``latency``: the real collector (gunicorn, 2 workers, maintenance, the alerts process every
``--every`` seconds) on a fresh directory, loaded with ``--rate`` receipts/s of healthy traffic
(tests.benchmarks.freshness.Load). Each trial, at a random moment, a new campaign starts failing:
30 UNDELIVERABLE receipts in one request (the rule needs ``min_messages = 20``); measured: from
that request to the FIRING notification at a JSON webhook on loopback. Goal: < 120 s with a
60 s evaluation.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import requests

UTC = timezone.utc


def fifty_rules(campaign: str = "") -> str:
    text = '[alerts]\nrepeat_interval = "4h"\n[[notify]]\nname = "ops"\nurl = "json://127.0.0.1:9/none"\n'
    windows = ["15m", "30m", "1h", "2h", "6h"]
    n = 0

    def rule(body: str) -> str:
        nonlocal n
        n += 1
        return f'[[rule]]\nname = "r{n:02d}"\nnotify = ["ops"]\n{body}'
    for i in range(20):
        text += rule(f'kind = "delivery_rate"\nby = "campaign"\nwindow = "{windows[i % 5]}"\nmin_messages = 50\n'
                     f'below = {0.80 + i / 200:.3f}\ndrop_vs_baseline = 0.05\n')
    for i in range(5):
        text += rule(f'kind = "delivery_rate"\nby = "label:campaign"\nwindow = "{windows[i]}"\nmin_messages = 50\n'
                     f'below = 0.9\n')
    for i in range(5):
        text += rule(f'kind = "delivery_rate"\nwindow = "{windows[i]}"\nmin_messages = 50\ndrop_vs_baseline = 0.03\n')
    for i in range(10):
        text += rule(f'kind = "pending_age"\nby = "campaign"\nolder_than = "{windows[i % 5]}"\nwindow = "1d"\n'
                     f'min_messages = 10\n')
    for i in range(4):
        text += rule(f'kind = "unknown_status"\nwindow = "{windows[i]}"\n')
    for i in range(3):
        text += rule(f'kind = "receipt_silence"\nwindow = "{windows[i]}"\n')
    for i in range(2):
        text += rule(f'kind = "rejected_requests"\nwindow = "{windows[i]}"\n')
    text += rule('kind = "collector_health"\n')
    return text


def cost(args) -> int:
    from dashboard import queries
    from dlrlens.alerts.evaluate import evaluate
    from dlrlens.alerts.rules import parse
    from dlrlens.store.reader import Store
    from tests.support.factory import receipt, write_receipts

    config = parse(fifty_rules())
    assert len(config.rules) == args.rules == 50
    with Store(args.data) as probe:
        at = probe.data_range()[1].replace(microsecond=0) + timedelta(seconds=1)
        receipts = int(probe.query(f"SELECT count(*) AS n FROM {probe.raw_sql()}")["n"].iloc[0])
    print(f"data: {args.data}, {receipts:,} stored receipt rows; evaluating 50 rules at {at.isoformat()}")

    def timed(fn):
        cpu, wall = time.process_time(), time.perf_counter()
        out = fn()
        return time.process_time() - cpu, time.perf_counter() - wall, out

    fresh = []
    for _ in range(args.runs):
        def once():
            with Store(args.data) as store:
                return evaluate(config, store, Path(args.data), at)
        fresh.append(timed(once))
    kept = []
    with Store(args.data) as store:
        evaluate(config, store, Path(args.data), at)  # the first evaluation after a start
        for run in range(args.runs):
            # As in production, new receipts arrive between two evaluations (a flush of 300
            # receipts into the latest day): the data version changes, nothing is answered
            # from the previous evaluation's results.
            write_receipts(args.data, [receipt(f"bench-{run}-{i}", "DELIVERED", at - timedelta(seconds=30 + i),
                                               campaign="bench") for i in range(300)])
            kept.append(timed(lambda: evaluate(config, store, Path(args.data), at)))
        firing = len(kept[-1][2].findings)
        errors = kept[-1][2].errors
        # Baseline: the dashboard's own question per delivery-rate rule and window (campaigns table).
        def dashboard_way():
            store.clear_cache()
            for rule in config.rules:
                if rule.kind != "delivery_rate":
                    continue
                days = range(0, 8) if rule.drop_vs_baseline else range(0, 1)
                for d in days:
                    end = at - timedelta(days=d)
                    queries.campaigns(store, queries.Filters(start=end - rule.window, end=end))
        baseline = timed(dashboard_way)
    med = lambda runs, k: statistics.median(r[k] for r in runs)  # noqa: E731
    print(f"fresh store (dlrlens alerts check): {med(fresh, 0):.2f} s CPU, {med(fresh, 1):.2f} s wall "
          f"(median of {args.runs})")
    print(f"kept store (the collector's alerts process): {med(kept, 0):.2f} s CPU, {med(kept, 1):.2f} s wall "
          f"(median of {args.runs})")
    print(f"baseline, the dashboard's campaigns() per delivery-rate rule and window ({30 * 1 + 25 * 7} "
          f"queries, cache cleared): {baseline[0]:.2f} s CPU, {baseline[1]:.2f} s wall")
    print(f"ratio kept-store evaluation / baseline CPU: {med(kept, 0) / baseline[0]:.2f}")
    print(f"firing: {firing}; rule errors: {errors or 'none'}")
    print(json.dumps({"receipts": receipts, "fresh_cpu_s": med(fresh, 0), "kept_cpu_s": med(kept, 0),
                      "fresh_wall_s": med(fresh, 1), "kept_wall_s": med(kept, 1), "baseline_cpu_s": baseline[0]}))
    return 0


def latency(args) -> int:
    from tests.benchmarks.freshness import Load
    from tests.support.receipts import receipt
    from tests.support.servers import start_collector
    from tests.support.sinks import WebhookSink

    root = Path(tempfile.mkdtemp(prefix="dlrlens-alerts-bench-"))
    rules = root / "alerts.toml"
    results = []
    with WebhookSink() as sink:
        rules.write_text(f'[[notify]]\nname = "hook"\nurl = "{sink.url()}"\n[[rule]]\nname = "drop"\n'
                         'kind = "delivery_rate"\nby = "campaign"\nwindow = "10m"\nmin_messages = 20\nbelow = 0.85\n'
                         'notify = ["hook"]\n')
        collector = start_collector(root / "data", env={"DLRLENS_ALERTS_FILE": str(rules),
                                                        "DLRLENS_ALERTS_SECONDS": str(args.every)})
        load = Load(f"{collector.url}/dlr", args.rate).start()
        try:
            rng = random.Random(7)
            time.sleep(5)
            for trial in range(args.trials):
                time.sleep(rng.uniform(0, args.every))  # a random phase against the evaluation clock
                name = f"victim-{trial}"
                now = datetime.now(UTC)
                bad = [receipt(f"{name}-{i}", "UNDELIVERABLE", 3, created=(now + timedelta(milliseconds=i)).isoformat())
                       for i in range(30)]
                started = time.time()
                answer = requests.post(f"{collector.url}/dlr?campaign={name}", json=bad, timeout=30)
                assert answer.status_code == 200, answer.text
                deadline = started + 4 * args.every + 60
                while time.time() < deadline:
                    hit = [d for d in sink.received if name in d["title"]]
                    if hit:
                        results.append(hit[0]["_at"] - started)
                        print(f"trial {trial}: notified {results[-1]:.1f} s after the first bad receipt", flush=True)
                        break
                    time.sleep(0.1)
                else:
                    print(f"trial {trial}: no notification within {deadline - started:.0f} s", flush=True)
        finally:
            load.stop()
            collector.stop()
            shutil.rmtree(root, ignore_errors=True)
    print(f"load: {load.acked} receipts acked during the run ({args.rate}/s asked), {load.failed} failed")
    if results:
        print(f"evaluation every {args.every:g} s: first bad receipt -> notification p50 "
              f"{statistics.median(results):.1f} s, max {max(results):.1f} s over {len(results)} trials "
              f"(goal < 120 s with 60 s)")
    return 0 if len(results) == args.trials and max(results) < 120 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.benchmarks.alerts", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    c = sub.add_parser("cost")
    c.add_argument("--data", required=True)
    c.add_argument("--rules", type=int, default=50)
    c.add_argument("--runs", type=int, default=3)
    lat = sub.add_parser("latency")
    lat.add_argument("--every", type=float, default=60.0)
    lat.add_argument("--trials", type=int, default=3)
    lat.add_argument("--rate", type=float, default=200.0)
    args = parser.parse_args(argv)
    return cost(args) if args.what == "cost" else latency(args)


if __name__ == "__main__":
    sys.exit(main())
