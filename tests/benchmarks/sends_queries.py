"""Query benchmark with Mobivate's send records joined: cost and "Where" figures against the
straightforward join, at scale.

    python3 -m tests.benchmarks.generate --receipts 2000000 --out DIR --days 30 --campaigns 50
    python3 -m tests.benchmarks.sends_queries --data DIR [--log-share 0.9] [--missing 0.02] [--repeat 3]

Adds to ``DIR`` (a data set of ``tests.benchmarks.generate``) send records in the store's
layout (``sends/log/YYYY-MM-DD.parquet``, :data:`dlrlens.store.sends.SEND_SCHEMA`): one for
``--log-share`` of the messages (created 0-5 s before the first receipt, cost 0.01-0.05 in GBP,
a tenth of the campaigns in EUR, numbers from a pool of several countries and an unparseable
one), plus ``--missing`` x messages of log records whose receipts never arrived; and Mobivate
names for half of the batch ids. Then brings the derived state up to date and measures:

* *ours*: ``cost_by`` campaign (with the exact percentiles of the time from submission),
  ``cost_by`` country, ``delivery_by`` country and route, ``receipts_missing`` and
  ``submission_latency`` on ``dashboard.queries.Store``, over the derived state that absorbed
  the send records (no join at query time): for the last 30 days, all time and one campaign
  over one week (the dashboard's filter change): the first run (cold result cache, new
  filters), then warm (result cache cleared each run), median of ``--repeat``;
* *baseline*: the same functions on ``tests.support.baseline.BaselineStore``
  (messages grouped from the raw receipts, then joined to the send records): the
  straightforward join; every frame compared with ours (identical, or the run fails).

Goals as for the other pages: <= 1 s warm, a filter change <= 300 ms (its first run), at
100 M receipts with 40 M log records (``--log-share 0.98 --missing 0.03``; the baseline
takes many minutes a case there: ``--skip-baseline``).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from datetime import timedelta, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dlrlens.store import derive, pseudonym, sends

UTC = timezone.utc
NUMBERS = ["447911123456", "447700900123", "61412555123", "27825551234", "4915112345678", "12015550123",
           "33612345678", "12345"]


def add_send_records(data_dir: Path, log_share: float, missing: float) -> int:
    """Write send records for the data set's messages; returns how many."""
    # It spills (grouping 100 M receipts by message): under the data set's tmp/, not the working directory.
    con = derive.connect({"threads": 2, "memory_limit": "3GB"}, data_dir / "tmp" / "bench-sends")
    key = pseudonym.installation_key(data_dir)
    pool = []
    for i, number in enumerate(NUMBERS):
        parsed = pseudonym.parse_number(number)
        pool.append((i, parsed.country, parsed.network, pseudonym.keyed_hash(key, parsed.canonical), parsed.masked))
    con.execute("CREATE TABLE pool (i INTEGER, country VARCHAR, network VARCHAR, h VARCHAR, masked VARCHAR)")
    con.executemany("INSERT INTO pool VALUES (?, ?, ?, ?, ?)", pool)
    receipts = f"read_parquet('{data_dir}/receipts/*/*.parquet', union_by_name = true)"
    share = int(log_share * 1000)
    con.execute(f"""
        CREATE TABLE m AS
        SELECT delivery_message_id AS id, min(created) AS first, arg_min(batch_id, created) AS batch_id
        FROM {receipts} GROUP BY ALL""")
    n_messages = con.execute("SELECT count(*) FROM m").fetchone()[0]
    n_missing = int(missing * n_messages)
    con.execute(f"""
        CREATE TABLE s AS
        WITH picked AS (
            SELECT id, first - INTERVAL 1 SECOND * (hash(id) % 5)::BIGINT AS created, batch_id FROM m
            WHERE hash(id || 'log') % 1000 < {share}
            UNION ALL
            SELECT 'MISSING' || lpad(i::VARCHAR, 25, '0'), (SELECT min(first) FROM m) +
                   INTERVAL 1 SECOND * (hash(i) % (SELECT epoch(max(first) - min(first))::BIGINT FROM m))::BIGINT,
                   NULL
            FROM range({n_missing}) t(i))
        SELECT id AS message_id, created, created + INTERVAL 5 SECOND AS modified,
               ['ACME', 'AcmeBank', '447700000001'][1 + (hash(id || 'o') % 3)::BIGINT] AS originator,
               'DELIVERED' AS status, 'MT' AS direction, ['mglobal', 'premium-uk'][1 + (hash(id || 'r') % 2)::BIGINT] AS route_id,
               1 AS parts, (1 + (hash(id || 'c') % 5)::BIGINT) / 100.0 AS cost,
               CASE WHEN hash(coalesce(batch_id, id)) % 10 = 0 THEN 'EUR' ELSE 'GBP' END AS currency,
               NULL AS sender_reference, batch_id AS campaign_id,
               pool.country, pool.network, pool.h AS recipient_hash, pool.masked AS recipient_masked,
               NULL AS recipient, 'log' AS source, now() AS changed_at
        FROM picked JOIN pool ON pool.i = (hash(id || 'n') % {len(NUMBERS)})::INTEGER""")
    days = [d for (d,) in con.execute("SELECT DISTINCT created::DATE FROM s ORDER BY 1").fetchall()]
    for day in days:
        table = con.sql("SELECT * FROM s WHERE created::DATE = $d ORDER BY message_id", params={"d": day}).to_arrow_table()
        path = sends.day_path(data_dir, "log", day)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.cast(sends.SEND_SCHEMA), path, compression="zstd")
    names = con.sql("SELECT DISTINCT batch_id AS campaign_id, 'Name of ' || batch_id AS name FROM m "
                    "WHERE batch_id IS NOT NULL AND hash(batch_id) % 2 = 0").to_arrow_table()
    table = pa.table({"campaign_id": names["campaign_id"], "name": names["name"],
                      "recipient_count": pa.nulls(len(names), pa.int64()), "scheduled": pa.nulls(len(names), pa.string()),
                      "status": pa.nulls(len(names), pa.string())}).cast(sends.CAMPAIGN_SCHEMA)
    (data_dir / sends.CAMPAIGNS_DIR).mkdir(exist_ok=True)
    pq.write_table(table, data_dir / sends.MOBIVATE_CAMPAIGNS)
    count = con.execute("SELECT count(*) FROM s").fetchone()[0]
    con.close()
    return count


def run_case(store, f, now, seconds: dict | None = None):
    """The questions, by name; ``seconds``: filled with each question's time."""
    from dashboard import queries

    questions = {
        "cost by campaign": lambda: queries.cost_by(store, f, "campaign", now),
        "cost by country": lambda: queries.cost_by(store, f, "country", now),
        "delivery by country": lambda: queries.delivery_by(store, f, "country"),
        "receipts missing": lambda: queries.receipts_missing(store, f, now),
        "delivery by route": lambda: queries.delivery_by(store, f, "route_id"),
        "time from submission": lambda: queries.submission_latency(store, f),
    }
    out = {}
    for name, ask in questions.items():
        began = time.monotonic()
        out[name] = ask()
        if seconds is not None:
            seconds[name] = time.monotonic() - began
    return out


def main(argv=None) -> int:
    from dashboard.queries import Filters, Store
    from tests.support.baseline import BaselineStore

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--log-share", type=float, default=0.9)
    parser.add_argument("--missing", type=float, default=0.02)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-baseline", action="store_true",
                        help="only time ours (at 100 M the baseline takes many minutes a case)")
    parser.add_argument("--materialize-baseline", action="store_true",
                        help="the baseline groups the receipts by message once (timed apart), then joins per case: "
                             "what makes the identity check feasible at 100 M")
    args = parser.parse_args(argv)
    data = args.data
    if not sends.has_sends(data):
        began = time.monotonic()
        count = add_send_records(data, args.log_share, args.missing)
        print(f"wrote {count:,} send records in {time.monotonic() - began:.1f} s")
    if derive.Manifest.load(data) is None:
        began = time.monotonic()
        derive.rebuild_derived(data)
        print(f"derived state rebuilt in {time.monotonic() - began:.1f} s")
    else:
        while derive.update_derived(data, wait=True).get("backlog_files"):
            pass
    with Store(data) as store:
        first, last = store.data_range()
    end = (last + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    now = end + timedelta(days=2)
    windows = {"last 30 days": Filters(start=end - timedelta(days=30), end=end), "all time": Filters()}
    with Store(data) as store:
        from dashboard.queries import campaigns

        week = Filters(start=end - timedelta(days=7), end=end)
        top = campaigns(store, week)
        named = top.loc[~top["campaign"].str.len().eq(32), "campaign"]
        if len(named):
            # The dashboard's filter change: one campaign, one week (its first run is the figure).
            windows["one campaign, one week"] = Filters(start=week.start, end=end, campaigns=(str(named.iloc[0]),))
    failures = 0
    baseline = None
    if not args.skip_baseline:
        began = time.monotonic()
        baseline = BaselineStore(data, settings={"threads": 2, "memory_limit": "12GB"},
                                 materialize=args.materialize_baseline)
        baseline.refresh()
        if args.materialize_baseline:
            print(f"baseline: receipts grouped by message in {time.monotonic() - began:.1f} s (not in its times)")
    print(f"| case | ours, first run | ours (median of {args.repeat}, warm) | baseline | ratio | identical |")
    print("| --- | --- | --- | --- | --- | --- |")
    with Store(data) as store:
        store.refresh()  # the snapshot (and id index) of the data, as an open dashboard has it
        for window, f in windows.items():
            began = time.monotonic()
            per_question: dict = {}
            run_case(store, f, now, per_question)  # the first run: nothing cached for these filters
            first_s = time.monotonic() - began
            print("  first run: " + ", ".join(f"{k} {v:.2f} s" for k, v in per_question.items()), flush=True)
            times = []
            for _ in range(args.repeat):
                store._results.clear()
                began = time.monotonic()
                ours = run_case(store, f, now)
                times.append(time.monotonic() - began)
            ours_s = statistics.median(times)
            if args.skip_baseline:
                print(f"| cost + where + missing, {window} | {first_s:.2f} s | {ours_s:.2f} s | - | - | - |", flush=True)
                continue
            baseline._results.clear()
            began = time.monotonic()
            theirs = run_case(baseline, f, now)
            base_s = time.monotonic() - began
            same = True
            for name in ours:
                try:
                    pd.testing.assert_frame_equal(ours[name].reset_index(drop=True),
                                                  theirs[name].reset_index(drop=True), check_dtype=False, rtol=1e-9)
                except AssertionError as exc:
                    same = False
                    print(f"DIFFERENT: {window}, {name}: {str(exc)[:300]}")
            failures += not same
            print(f"| cost + where + missing, {window} | {first_s:.2f} s | {ours_s:.2f} s | {base_s:.2f} s | "
                  f"{base_s / ours_s:.1f}x | {'yes' if same else 'NO'} |")
    if baseline is not None:
        baseline.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak RSS of this process: {peak:.2f} GiB" + ("" if args.skip_baseline else " (the baseline's included)"))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
