"""Query benchmark: the dashboard's fast path against the straightforward query, at scale.

    python3 -m tests.benchmarks.queries --data DIR [--repeat 5] [--skip-baseline] [--no-rebuild]

``DIR`` is a data set made by ``python3 -m tests.benchmarks.generate`` (or a real one). The
derived per-message state is brought up to date first (``rebuild_derived`` when there is
none, timed and reported; else ``update_derived`` until nothing is left).

Measured, each for the last 30 days of the data and for all time:

* Overview: what the Overview page computes: ``kpis_with_change`` (KPI cards with the previous
  period), ``trend``, ``outcome_breakdown``, ``pending_ages``;
* Campaigns: ``campaigns`` (every KPI per campaign) and, with Mobivate's send records in the
  data set, ``campaigns_with_cost`` (its cost columns, one row per campaign and currency);

* Funnel (when the data set has clicks: ``generate --clicks N``): what the Funnel page computes:
  ``funnel`` (overall and per campaign), ``unlinked_events``, ``clicks_over_time``,
  ``click_breakdown`` by country, ``top_links``;

and a *filter change* (one campaign, one week: the Overview set plus the Campaigns table),
and a *cold start* (a new process: imports, opening the store, first Overview figures).

*ours*: ``dashboard.queries.Store`` in this process, warm (one run before), its result cache
cleared before each run so that every run computes; the median of ``--repeat`` runs. What
the store keeps per immutable derived file (the latency partials, see
``Store.latency_counts``) is kept between runs, as it is between data versions in a running
dashboard; the warm-up run starts without it and is printed as *first run*.
*baseline*: the same functions on ``tests.support.baseline.BaselineStore``: the straightforward
definition, GROUP BY delivery_message_id over the raw Parquet files (its ``messages_sql``),
done once per case (page) into a temporary table, then the page's queries on it with DuckDB's
quantile_cont; run once per case in a child process (its memory is not ours). Every case's
results are compared with ours: they must be identical.

Goals (issue 4): Overview and Campaigns <= 1 s warm and >= 10x faster than the baseline; a
filter change <= 0.3 s; cold start <= 15 s. Also printed: bytes per receipt on disk (receipts
and derived state) and the peak RSS of this process (goal < 4 GiB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from dlrlens.store import derive, layout, sends

UTC = timezone.utc
RESULT_MARKER = "DLRLENS_QUERIES_RESULT "
GOAL_WARM_S = 1.0
GOAL_RATIO = 10.0
GOAL_FILTER_S = 0.3
GOAL_COLD_S = 15.0
GOAL_RSS_GIB = 4.0


# --------------------------------------------------------------------------- the cases


def cases(data_dir: Path) -> dict[str, dict]:
    """name -> {"kind": overview|campaigns|filter, "filters": Filters arguments (JSON-able)}."""
    from dashboard.queries import Filters, Store, campaigns

    with Store(data_dir) as store:
        first, last = store.data_range()
        end = (last + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        month = {"start": (end - timedelta(days=30)).isoformat(), "end": end.isoformat()}
        week = {"start": (end - timedelta(days=7)).isoformat(), "end": end.isoformat()}
        top = campaigns(store, Filters(**{k: datetime.fromisoformat(v) for k, v in week.items()}))
        campaign = str(top.loc[~top["campaign"].str.len().eq(32), "campaign"].iloc[0])
    return {
        "Overview, last 30 days": {"kind": "overview", "filters": month},
        "Overview, all time": {"kind": "overview", "filters": {}},
        "Campaigns, last 30 days": {"kind": "campaigns", "filters": month},
        "Campaigns, all time": {"kind": "campaigns", "filters": {}},
        "Filter change: one campaign, one week": {"kind": "filter", "filters": dict(week, campaigns=[campaign])},
        **({"Funnel, last 30 days": {"kind": "funnel", "filters": month},
            "Funnel, all time": {"kind": "funnel", "filters": {}}}
           if (data_dir / layout.CLICKS_DIR).is_dir() else {}),
    }


def make_filters(spec: dict):
    from dashboard.queries import Filters

    return Filters(start=datetime.fromisoformat(spec["start"]) if "start" in spec else None,
                   end=datetime.fromisoformat(spec["end"]) if "end" in spec else None,
                   campaigns=tuple(spec.get("campaigns", ())))


def run_case(store, kind: str, f, now: datetime) -> dict:
    """The page's queries for ``kind``; returns the frames (for comparing)."""
    from dashboard import queries as q

    out = {}
    if kind in ("overview", "filter"):
        out["kpis_with_change"] = q.kpis_with_change(store, f)
        out["trend"] = q.trend(store, f)
        out["outcome_breakdown"] = q.outcome_breakdown(store, f)
        out["pending_ages"] = q.pending_ages(store, f, now=now)
    if kind in ("campaigns", "filter"):
        out["campaigns"] = q.campaigns(store, f)
        if sends.has_sends(store.data_dir):
            # With Mobivate's send records: the cost columns too, as the Campaigns page adds them.
            out["campaigns_with_cost"] = q.campaigns_with_cost(out["campaigns"], q.cost_by(store, f, "campaign"))
    if kind == "funnel":
        out["funnel"] = q.funnel(store, f)
        out["funnel_by_campaign"] = q.funnel(store, f, True)
        out["unlinked_events"] = q.unlinked_events(store, f)
        out["clicks_over_time"] = q.clicks_over_time(store, f)[0]
        out["clicks_by_country"] = q.click_breakdown(store, f, "country")
        out["top_links"] = q.top_links(store, f)
    return out


def same(a: dict, b: dict) -> bool:
    import pandas as pd

    try:
        for name in a:
            # Sums of costs in another order may differ in the last bits.
            pd.testing.assert_frame_equal(a[name], b[name], check_exact=name != "campaigns_with_cost", rtol=1e-12)
    except AssertionError as exc:
        print(f"  DIFFERENT {name}: {str(exc)[:300]}")
        return False
    return True


# --------------------------------------------------------------------------- child processes


def child_baseline(data_dir: Path, names: list[str], out: Path) -> None:
    """Run the baseline for ``names`` cases; pickle their frames to ``out``; print timings.

    The straightforward GROUP BY over every raw receipt does not depend on the case's
    filters, so it runs once (timed) into a temporary table; a case's baseline time is that
    plus the case's own queries on it (a page render did exactly that before the derived
    state). Unused per-message columns (distinct receipts, stored rows, label sets) are left
    out so that DuckDB skips their aggregates (no case filters by label): the baseline is not
    made slower than needed.
    """
    import pickle

    from tests.support.baseline import BaselineStore

    spec = json.loads(os.environ["DLRLENS_BENCH_CASES"])
    now = datetime.fromisoformat(os.environ["DLRLENS_BENCH_NOW"])
    results, seconds = {}, {}
    settings = {"threads": os.cpu_count() or 2, "memory_limit": os.environ.get("DLRLENS_BENCH_MEMORY", "8GB")}
    with BaselineStore(data_dir, settings=settings, materialize=True,
                       columns="* EXCLUDE (receipts, stored_rows, label_sets), '[]' AS label_sets") as store:
        started = time.perf_counter()
        store.refresh()
        grouping = time.perf_counter() - started
        print(f"baseline: GROUP BY delivery_message_id over the raw receipts: {grouping:.1f} s", flush=True)
        for name in names:
            store.clear_cache()
            started = time.perf_counter()
            results[name] = run_case(store, spec[name]["kind"], make_filters(spec[name]["filters"]), now)
            seconds[name] = grouping + time.perf_counter() - started
            print(f"baseline: {name}: {seconds[name]:.1f} s", flush=True)
    out.write_bytes(pickle.dumps(results))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(RESULT_MARKER + json.dumps({"seconds": seconds, "grouping": grouping, "peak_rss": rss}), flush=True)


def child_cold(data_dir: Path) -> None:
    """A new dashboard process: import, open the store, first Overview figures (last 30 days)."""
    started = time.perf_counter()
    from dashboard.queries import Store

    spec = json.loads(os.environ["DLRLENS_BENCH_CASES"])["Overview, last 30 days"]
    now = datetime.fromisoformat(os.environ["DLRLENS_BENCH_NOW"])
    store = Store(data_dir)
    run_case(store, "overview", make_filters(spec["filters"]), now)
    seconds = time.perf_counter() - started
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(RESULT_MARKER + json.dumps({"seconds": seconds, "peak_rss": rss}), flush=True)


def _child(args: list[str], env: dict) -> dict:
    """Run this module with ``args`` in a new process, echo its output as it comes, return
    its result line."""
    process = subprocess.Popen([sys.executable, "-m", "tests.benchmarks.queries", *args], env={**os.environ, **env},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=Path(__file__).resolve().parents[2])
    result = None
    for line in process.stdout:
        if line.startswith(RESULT_MARKER):
            result = json.loads(line[len(RESULT_MARKER):])
        else:
            print(f"  | {line.rstrip()}", flush=True)
    errors = process.stderr.read()
    if process.wait() != 0 or result is None:
        raise RuntimeError(f"child {args} failed ({process.returncode}):\n{errors[-3000:]}")
    return result


def drop_page_cache() -> bool:
    """Ask the kernel to drop clean page cache (root only); False when not allowed."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------- disk


def disk_report(data_dir: Path) -> dict:
    from dlrlens.store.compaction import bytes_per_receipt

    size, rows = bytes_per_receipt(data_dir)
    manifest = derive.Manifest.load(data_dir)
    derived = sum((data_dir / f.path).stat().st_size for f in manifest.files) if manifest else 0
    messages = sum(f.rows for f in manifest.files) if manifest else 0
    return {"receipt_rows": rows, "receipt_bytes": size, "receipt_files": len(derive.receipt_files(data_dir)),
            "bytes_per_receipt": size / rows if rows else float("nan"),
            "derived_bytes": derived, "derived_files": len(manifest.files) if manifest else 0,
            "messages": messages, "derived_bytes_per_receipt": derived / rows if rows else float("nan"),
            "derived_bytes_per_message": derived / messages if messages else float("nan")}


def add_tail(data_dir: Path, receipts: int, files: int = 8) -> int:
    """Write ``receipts`` fresh receipts as ``files`` flush files the derived state has not
    absorbed (as ~10 s of traffic look between two updates): finals for messages sent in the
    last hours (their stored rows get replaced), first receipts of new messages, and 1 %
    late finals for messages sent weeks ago. Returns the receipts written."""
    import uuid

    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.benchmarks.generate import to_contract

    manifest = derive.Manifest.load(data_dir)
    by_age = sorted(manifest.files, key=lambda f: f.sent_max_us)
    recent, old = [str(data_dir / f.path) for f in by_age[-3:]], [str(data_dir / by_age[len(by_age) // 2].path)]
    con = duckdb.connect()
    pick = "SELECT delivery_message_id, campaign FROM read_parquet($f) USING SAMPLE {n} ROWS"
    known = con.execute(pick.format(n=receipts // 2), {"f": recent}).fetchall()
    late = con.execute(pick.format(n=max(1, receipts // 100)), {"f": old}).fetchall()
    con.close()
    now = datetime.now(UTC)
    rows = [(mid, campaign, "DELIVERED", 1, "delivered") for mid, campaign in known + late]
    rows += [(uuid.uuid4().hex.upper(), "campaign-001", "ACCEPTED", 2, "pending")
             for _ in range(max(0, receipts - len(rows)))]
    table = pa.table({
        "receipt_id": [uuid.uuid4().hex for _ in rows], "delivery_message_id": [r[0] for r in rows],
        "batch_id": [None] * len(rows), "client_reference": [None] * len(rows),
        "created": pa.array([now] * len(rows), pa.timestamp("us", tz="UTC")),
        "received_at": pa.array([now] * len(rows), pa.timestamp("us", tz="UTC")),
        "status": [r[2] for r in rows], "status_code": pa.array([r[3] for r in rows], pa.int32()),
        "category": [r[4] for r in rows], "part": pa.array([None] * len(rows), pa.int32()),
        "parts": pa.array([1] * len(rows), pa.int32()), "hlr": [None] * len(rows), "extra": [None] * len(rows),
        "campaign": [r[1] if not r[1].startswith("B") else None for r in rows],
        "labels": [json.dumps({"campaign": r[1]}) for r in rows], "source_format": ["json"] * len(rows)})
    day = layout.partition_dir(data_dir, now.strftime("%Y-%m-%d"))
    day.mkdir(parents=True, exist_ok=True)
    for k in range(files):
        part = table.slice(k * len(rows) // files, (k + 1) * len(rows) // files - k * len(rows) // files)
        pq.write_table(to_contract(part), day / f"w9{k:02d}-{time.time_ns():020d}.parquet")
    return len(rows)


def bring_up_to_date(data_dir: Path, rebuild: bool) -> dict:
    if derive.Manifest.load(data_dir) is None or rebuild:
        started = time.perf_counter()
        result = derive.rebuild_derived(data_dir)
        result["wall"] = time.perf_counter() - started
        return result
    total = {"absorbed_files": 0, "seconds": 0.0}
    while True:
        result = derive.update_derived(data_dir, wait=True)
        total["absorbed_files"] += result.get("absorbed_files", 0)
        total["seconds"] += result.get("seconds", 0.0)
        if not result.get("backlog_files"):
            return total


def print_table(header: tuple, rows: list[tuple]) -> None:
    """``rows`` under ``header`` in aligned columns, a blank line before and after."""
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    print()
    for row in [header, tuple("-" * w for w in widths)] + rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)))
    print()


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=5, help="warm runs per case (median reported)")
    parser.add_argument("--skip-baseline", action="store_true", help="only measure the fast path")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the derived state first (timed)")
    parser.add_argument("--tail", type=int, default=0, metavar="N",
                        help="after updating, add N fresh receipts the derived state has not absorbed "
                             "(the tail a running collector leaves between two updates) and measure with it")
    parser.add_argument("--child", choices=["baseline", "cold"], help=argparse.SUPPRESS)
    parser.add_argument("--names", default="", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    data_dir = args.data.resolve()
    if args.child == "baseline":
        child_baseline(data_dir, json.loads(args.names), args.out)
        return 0
    if args.child == "cold":
        child_cold(data_dir)
        return 0

    print(f"queries benchmark on {data_dir} ({os.cpu_count()} cores)", flush=True)
    maintenance = bring_up_to_date(data_dir, args.rebuild)
    print(f"derived state: {json.dumps(maintenance)}", flush=True)
    if args.tail:
        print(f"fresh tail: {add_tail(data_dir, args.tail)} receipts in 8 files not absorbed", flush=True)
    disk = disk_report(data_dir)
    spec = cases(data_dir)
    now = datetime.now(UTC)
    env = {"DLRLENS_BENCH_CASES": json.dumps(spec), "DLRLENS_BENCH_NOW": now.isoformat()}

    # Cold start first, before this process warms anything of its own.
    dropped = drop_page_cache()
    cold = _child(["--data", str(data_dir), "--child", "cold"], env)
    print(f"cold start: {cold['seconds']:.2f} s (page cache {'dropped' if dropped else 'warm: could not drop'})",
          flush=True)

    from dashboard.queries import Store

    ours: dict[str, float] = {}
    first: dict[str, float] = {}
    cached: dict[str, float] = {}
    frames: dict[str, dict] = {}
    with Store(data_dir) as store:
        for name, case in spec.items():
            f = make_filters(case["filters"])
            # Warm-up, timed: nothing kept per derived file yet (as right after a start).
            store.clear_cache(partials=True)
            started = time.perf_counter()
            frames[name] = run_case(store, case["kind"], f, now)
            first[name] = time.perf_counter() - started
            runs = []
            for _ in range(args.repeat):
                store.clear_cache()
                started = time.perf_counter()
                run_case(store, case["kind"], f, now)
                runs.append(time.perf_counter() - started)
            ours[name] = statistics.median(runs)
            started = time.perf_counter()
            run_case(store, case["kind"], f, now)
            cached[name] = time.perf_counter() - started
            print(f"ours: {name}: median {ours[name]:.3f} s of {[round(r, 3) for r in runs]}, "
                  f"first run {first[name]:.3f} s, cached {cached[name] * 1000:.1f} ms", flush=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    baseline: dict[str, float] = {}
    identical: dict[str, bool] = {}
    baseline_rss = baseline_grouping = None
    if not args.skip_baseline:
        import pickle
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "baseline.pickle"
            result = _child(["--data", str(data_dir), "--child", "baseline", "--names", json.dumps(list(spec)),
                             "--out", str(out)], env)
            baseline, baseline_rss, baseline_grouping = result["seconds"], result["peak_rss"], result["grouping"]
            expected = pickle.loads(out.read_bytes())
        identical = {name: same(frames[name], expected[name]) for name in spec}

    rows = []
    for name, case in spec.items():
        goal = GOAL_FILTER_S if case["kind"] == "filter" else GOAL_WARM_S
        base = baseline.get(name)
        ratio = base / ours[name] if base else None
        # A filter change is a goal of time only. The funnel's baseline links every click and reply
        # to every message when asked; ours reads the link the derived state keeps: both goals.
        timed_only = case["kind"] == "filter"
        ok = ours[name] <= goal and (timed_only or ratio is None or ratio >= GOAL_RATIO)
        goal_text = f"<= {goal:g} s" + ("" if timed_only else f", >= {GOAL_RATIO:g}x")
        rows.append((name, f"{ours[name]:.3f}", f"{base:.1f}" if base else "-", f"{ratio:.0f}x" if ratio else "-",
                     goal_text, "PASS" if ok else "FAIL", {True: "yes", False: "NO", None: "-"}[identical.get(name)]))
    rows.append(("Cold start (new process to first figures)", f"{cold['seconds']:.2f}", "-", "-",
                 f"<= {GOAL_COLD_S:g} s", "PASS" if cold["seconds"] <= GOAL_COLD_S else "FAIL", "-"))
    rows.append(("Peak RSS of the dashboard process (GiB)", f"{rss / 2**30:.2f}", "-", "-", f"< {GOAL_RSS_GIB:g} GiB",
                 "PASS" if rss < GOAL_RSS_GIB * 2**30 else "FAIL", "-"))
    print_table(("query", "ours (s)", "baseline (s)", "ratio", "goal", "result", "identical"), rows)
    print(f"receipts: {disk['receipt_rows']:,} rows in {disk['receipt_files']} files, {disk['receipt_bytes'] / 1e9:.2f} GB, "
          f"{disk['bytes_per_receipt']:.1f} bytes/receipt")
    print(f"derived state: {disk['messages']:,} messages in {disk['derived_files']} files, "
          f"{disk['derived_bytes'] / 1e9:.2f} GB, {disk['derived_bytes_per_receipt']:.1f} bytes/receipt "
          f"({disk['derived_bytes_per_message']:.1f} bytes/message)")
    print(f"peak RSS: this process {rss / 2**30:.2f} GiB, cold-start process {cold['peak_rss'] / 2**30:.2f} GiB"
          + (f", baseline process {baseline_rss / 2**30:.2f} GiB" if baseline_rss else ""))
    if baseline_grouping:
        print(f"baseline: its GROUP BY over the raw receipts took {baseline_grouping:.1f} s of each case's time")
    print("first run (no latency partials kept yet): " + ", ".join(f"{n} {v:.2f} s" for n, v in first.items()))
    print("cached repeat (same version): " + ", ".join(f"{n.split(',')[0]} {v * 1000:.0f} ms" for n, v in cached.items()))
    failed = [r for r in rows if r[5] == "FAIL"] or [n for n, v in identical.items() if not v]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
