"""Scaling benchmark: 1, 2 and 3 collectors behind haproxy, the store on object storage.

    python3 -m tests.benchmarks.collectors_scaling [--counts 1,2,3] [--seconds 15] [--rounds 1]
                                                   [--connections 32] [--workers 2] [--flush-seconds 2]
                                                   [--cpu-per-collector CORES]

Each round starts ``N`` real collectors (``dlrlens collector --store iceberg:lake``, each with its
own fresh ``--data`` and ``--workers`` gunicorn workers; tests/support/load_balanced.Fleet) writing
one Iceberg table on ``weed mini`` through pyiceberg's SQL catalog, puts haproxy in front
(tests/support/haproxy.py: round robin per request, keep-alive, health checks), and loads it with
the ingest benchmark's client (:class:`tests.benchmarks.ingest.Bench`: wrk, one realistic
Mobivate JSON receipt per request, each with its own id) through haproxy. Every round gets a
table of its own (its own namespace), so the snapshots of earlier rounds do not slow its commits.
The counts run in the given order, then (with ``--rounds 2``) in reverse, and so on; the medians
per count are compared with one collector's, all in the same run.

Each round waits until the collectors' start-up is done (their CPU use falls under a tenth of
their budgets, or of a core each: :func:`settle`) before the warm-up.

Reported per count: receipts/s, latency, the collectors' CPU per receipt (every process of every
collector and all their descendants: master, workers, the alerts process and the maintenance
process, which runs in a session of its own; commits included), haproxy's CPU per receipt, and
how many cores the machine was busy. On a machine with few cores the collectors, haproxy, the
object store and wrk share the same cores: once they are all busy, another collector process adds
no CPU to share, so the rate cannot grow with the count (the report says how busy the machine
was). Linear scaling needs CPU of its own per collector, as on separate machines.

``--cpu-per-collector CORES`` gives each collector that: a small machine of its own, on loopback
(tests/support/cpu_budget.py; needs root and cgroups: v1's ``cpu`` controller, or v2's
``cpu.max``; without them the run stops with exit status 2 and says what is missing). Collector
``n`` is started through a launcher that puts itself into cgroup ``n`` (quota CORES x 100 ms per
100 ms period) before it becomes the collector, so every process the collector starts inherits
the budget; the benchmark's own process, and so wrk, haproxy and weed, runs in one more cgroup
with the same high weight and no quota, so that a neighbour's load starves neither; every cgroup
is removed afterwards, on error too. Two more columns then: ``budget`` (the collectors' CPU as a
share of their budgets: 1.00 means each collector used all of its CPU) and ``thr %`` (periods in
which a collector used its whole quota and waited). Pick the cap so that every collector's budget
plus the rest (wrk, haproxy, weed: about 0.3 cores at 800 receipts/s) fits in the cores with room
for the neighbours: 0.25 on 2 cores (3 x 0.25 + 0.3 ~ 1.05 cores), with one worker per collector
(``--workers 1``, as on a quarter-core machine: measured 2.21x / 2.40x at 2 / 3 collectors, against
1.39-1.48x / 1.92-2.09x with two workers each, whose six processes cost 1.34-1.43 ms of CPU per
receipt instead of 0.93-0.96 ms; README, "What more collectors buy"). Give it enough connections
(``--connections 96``): a capped collector runs in bursts (at 0.25 it waits 75 ms of every 100),
so each request takes longer, and with 32 connections the client, not the collectors, set the
rate at 2 and 3 collectors (Little's law; measured at 0.3 cores: 1.33x / 1.83x at 2 / 3
collectors with 32 connections, 84-89 % of periods throttled, against 1.86x / 2.36x with 96).

After each round the collectors are stopped (each flushes its log into the table) and the table
is read back: it must hold at least as many distinct receipts as the 200 answers counted (warm-up
included), and no log segment may be left. Exit status 0 when every round kept every 200.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from dlrlens.store.iceberg.table import open_catalog, receipts_table
from tests.benchmarks.ingest import (CLK_TCK, NOISY_NEIGHBOUR_CORES, Bench, LoadResult, client_cpu_seconds,
                                     ensure_wrk, filesystem_type, group_cpu_seconds, machine_busy_seconds)
from tests.support.cpu_budget import CpuBudget, CpuBudgetError, caller_priority, cpu_budgets
from tests.support.haproxy import haproxy_binary, load_balancer
from tests.support.lake import table_column
from tests.support.load_balanced import CATALOG, Fleet
from tests.support.seaweed import object_store


MAINTENANCE_MODULE = b"dlrlens.store.maintenance"


def tree_cpu_seconds(roots: list[int]) -> tuple[float, float]:
    """User + system CPU seconds of the live processes ``roots`` and all their descendants (a
    collector's master, workers, alerts process and its maintenance process, which runs in a
    session of its own, so its process group is not the collector's), and of the maintenance
    processes among them."""
    parents, cpu = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])  # fields: state, ppid, ...; utime, stime are [11], [12]
        cpu[int(entry.name)] = int(fields[11]) + int(fields[12])
    inside = set(roots)
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in inside and pid not in inside:
                inside.add(pid)
                grew = True
    maintenance = [pid for pid in inside if MAINTENANCE_MODULE in _command_line(pid)]
    return (sum(cpu.get(pid, 0) for pid in inside) / CLK_TCK, sum(cpu.get(pid, 0) for pid in maintenance) / CLK_TCK)


def _command_line(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@dataclass
class CpuSample:
    """CPU seconds so far: the collectors' processes (and their maintenance processes' share),
    haproxy's, the object store's, this client's (wrk included once it exited), and the whole
    machine's busy time."""

    collectors: float
    maintenance: float
    balancer: float
    store: float
    client: float
    machine: float

    @classmethod
    def take(cls, collector_pids: list[int], balancer_group: int, store_group: int) -> "CpuSample":
        return cls(*tree_cpu_seconds(collector_pids), group_cpu_seconds(balancer_group),
                   group_cpu_seconds(store_group), client_cpu_seconds(), machine_busy_seconds())

    def __sub__(self, earlier: "CpuSample") -> "CpuSample":
        return CpuSample(*(getattr(self, name) - getattr(earlier, name)
                           for name in ("collectors", "maintenance", "balancer", "store", "client", "machine")))


@dataclass
class ScalingRound:
    collectors: int
    number: int
    load: LoadResult
    cpu: CpuSample
    split: str             # requests haproxy sent to each collector during the round
    commits: int = 0       # snapshots of the round's table
    check: str = ""
    durable: bool = True
    budget_cores: float = 0.0  # --cpu-per-collector (0: no budget)
    throttled: float = 0.0     # share of the budgets' scheduling periods that used the whole quota

    def per_receipt_ms(self, seconds: float) -> float:
        return seconds * 1000 / max(self.load.requests, 1)

    @property
    def busy_cores(self) -> float:
        return self.cpu.machine / self.load.seconds if self.load.seconds else 0.0

    @property
    def budget_used(self) -> float:
        """The collectors' CPU over the round as a share of their budgets (cores x count x seconds)."""
        budget = self.budget_cores * self.collectors * self.load.seconds
        return self.cpu.collectors / budget if budget else 0.0

    @property
    def other_cores(self) -> float:
        mine = self.cpu.collectors + self.cpu.balancer + self.cpu.store + self.cpu.client
        return max(0.0, self.cpu.machine - mine) / self.load.seconds if self.load.seconds else 0.0


def throttling(budgets: list[CpuBudget]) -> tuple[int, int]:
    """Scheduling periods and throttled periods of ``budgets``, summed."""
    counts = [budget.throttling() for budget in budgets]
    return sum(periods for periods, _ in counts), sum(throttled for _, throttled in counts)


def settle(collector_pids: list[int], quiet_cores: float, timeout: float = 60) -> float:
    """Wait until the collectors, just started, use under ``quiet_cores`` (their imports, the
    maintenance and alerts processes' start-up are done: under a CPU budget they take many
    seconds, which the warm-up alone would not cover); the seconds waited."""
    started = time.monotonic()
    used = tree_cpu_seconds(collector_pids)[0]
    while time.monotonic() - started < timeout:
        time.sleep(1)
        now = tree_cpu_seconds(collector_pids)[0]
        if now - used < quiet_cores:
            break
        used = now
    return time.monotonic() - started


def run_round(bench: Bench, lake, args: argparse.Namespace, count: int, number: int,
              budgets: list[CpuBudget]) -> ScalingRound:
    """``count`` collectors behind haproxy (collector ``n`` in ``budgets[n]`` when there are
    budgets), warmed up, measured, stopped; the table checked."""
    directory = bench.work_dir / f"collectors-{count}-round-{number}"
    namespace = f"scaling_{count}_{number}"
    catalog_env = dict(lake.catalog_env(CATALOG, bench.work_dir / "catalog.db"), DLRLENS_ICEBERG_NAMESPACE=namespace)
    fleet = Fleet(directory, count, dict(catalog_env, DLRLENS_STORE=f"iceberg:{CATALOG}"), workers=args.workers,
                  flush_seconds=args.flush_seconds, launchers=[budget.launcher for budget in budgets[:count]])
    fleet.start_all()
    try:
        # quiet: a tenth of the budgets, or of a core per collector without budgets
        settle(fleet.process_groups(), 0.1 * count * (args.cpu_per_collector or 1.0))
        with load_balancer(directory / "haproxy", fleet.urls) as balancer:
            url = balancer.url + "/"  # each template names its path
            warm = bench.load(url, args.warmup) if args.warmup > 0 else None
            sent_before = balancer.stats()
            groups = (fleet.process_groups(), balancer.process.pid, lake.process.pid)
            before, periods_before = CpuSample.take(*groups), throttling(budgets[:count])
            load = bench.load(url, args.seconds)
            cpu, periods = CpuSample.take(*groups) - before, throttling(budgets[:count])
            sent_after = balancer.stats()
    finally:
        fleet.stop_all()
    split = "/".join(str(int(sent_after[name]["stot"]) - int(sent_before[name]["stot"]))
                     for name in sorted(sent_after) if name != "BACKEND")
    result = ScalingRound(count, number, load, cpu, split, budget_cores=args.cpu_per_collector or 0.0)
    ran, throttled = (after - earlier for after, earlier in zip(periods, periods_before))
    result.throttled = throttled / ran if ran else 0.0
    acknowledged = load.acknowledged + (warm.acknowledged if warm else 0)
    with mock.patch.dict(os.environ, catalog_env):
        ids = table_column("receipt_id", CATALOG)
        result.commits = len(receipts_table(open_catalog(CATALOG), create=False).metadata.snapshots)
    leftover = fleet.leftover_segments()
    exits = [collector.process.returncode for collector in fleet.collectors if collector is not None]
    result.durable = len(set(ids)) >= acknowledged and leftover == 0 and all(code == 0 for code in exits)
    result.check = (f"200s counted (warm-up included) {acknowledged}, rows in the table {len(ids)} "
                    f"({len(set(ids))} distinct), log segments left {leftover}, collector exits {exits}"
                    f" -> {'OK' if result.durable else 'LOST RECEIPTS OR UNCLEAN STOP'}")
    if not args.keep:
        shutil.rmtree(directory, ignore_errors=True)
    return result


def print_report(rounds: list[ScalingRound], args: argparse.Namespace, client: str, fs_kind: str) -> None:
    print()
    print(f"collectors scaling: {os.cpu_count()} cores, client {client}, {args.connections} connections, "
          f"{args.seconds:g}s per round (+{args.warmup:g}s warm-up), each collector {args.workers} gunicorn workers, "
          f"flush every {args.flush_seconds:g}s to Iceberg on weed mini (SQL catalog), logs on {fs_kind}")
    capped = bool(args.cpu_per_collector)
    if capped:
        print(f"each collector (every process it starts) held to {args.cpu_per_collector:g} cores by a cgroup of its own")
    header = (f"{'collectors':>10} {'round':>6} {'receipts/s':>10} {'p50 ms':>7} {'p99 ms':>7} {'non-200':>7} "
              f"{'sockerr':>7} {'coll ms/r':>9} {'maint':>5} {'lb ms/r':>7} {'s3 ms/r':>7} {'busy':>5} {'others':>6} "
              + (f"{'budget':>6} {'thr %':>5} " if capped else "") + f"{'commits':>7} {'split':>14}")
    print(header)
    print("-" * len(header))
    for r in rounds:
        print(f"{r.collectors:>10} {r.number:>6} {r.load.rate:>10.0f} {r.load.p50_ms:>7.1f} {r.load.p99_ms:>7.1f} "
              f"{r.load.not_ok:>7} {r.load.socket_errors:>7} {r.per_receipt_ms(r.cpu.collectors):>9.2f} "
              f"{r.per_receipt_ms(r.cpu.maintenance):>5.2f} {r.per_receipt_ms(r.cpu.balancer):>7.2f} {r.per_receipt_ms(r.cpu.store):>7.2f} {r.busy_cores:>5.2f} {r.other_cores:>6.2f} "
              + (f"{r.budget_used:>6.2f} {r.throttled * 100:>5.0f} " if capped else "") + f"{r.commits:>7} {r.split:>14}")
    print("coll ms/r: CPU of every collector process per receipt; maint: the part of it spent by their maintenance "
          "processes;\nlb ms/r: haproxy's; s3 ms/r: the object store's;")
    print("busy: cores the whole machine kept busy; others: busy cores of processes outside the set-up and wrk;")
    if capped:
        print("budget: the collectors' CPU as a share of their budgets; thr %: scheduling periods (100 ms) in which "
              "a collector used its whole quota and waited")
    print("commits: snapshots in the round's table; split: requests haproxy sent to each collector")
    medians = {}
    for count in sorted({r.collectors for r in rounds}):
        mine = [r for r in rounds if r.collectors == count]
        medians[count] = {"rate": statistics.median(r.load.rate for r in mine),
                          "cpu": statistics.median(r.per_receipt_ms(r.cpu.collectors) for r in mine),
                          "maintenance": statistics.median(r.per_receipt_ms(r.cpu.maintenance) for r in mine),
                          "lb": statistics.median(r.per_receipt_ms(r.cpu.balancer) for r in mine),
                          "busy": statistics.median(r.busy_cores for r in mine),
                          "budget": statistics.median(r.budget_used for r in mine),
                          "throttled": statistics.median(r.throttled for r in mine)}
    base = medians.get(1) or medians[min(medians)]
    print(f"\nmedians (ratio against {min(medians)} collector(s), same run):")
    for count, m in medians.items():
        ratio = m["rate"] / base["rate"] if base["rate"] else 0.0
        print(f"  {count} collector(s): {m['rate']:.0f} receipts/s = {ratio:.2f}x ({m['rate'] / count:.0f} per "
              f"collector), collectors {m['cpu']:.2f} ms CPU (maintenance {m['maintenance']:.2f}) "
              f"per receipt, haproxy {m['lb']:.2f} ms, machine busy {m['busy']:.2f} of {os.cpu_count()} cores"
              + (f", {m['budget']:.0%} of the budgets used, {m['throttled']:.0%} of periods throttled" if capped else ""))
    noisy = [f"{r.collectors}/{r.number}" for r in rounds if r.other_cores > NOISY_NEIGHBOUR_CORES]
    if noisy:
        print(f"WARNING: other processes used over {NOISY_NEIGHBOUR_CORES} cores during rounds {', '.join(noisy)} "
              "(collectors/round): rates are understated there; run again on a quiet machine")
    for r in rounds:
        print(f"{r.collectors} collector(s), round {r.number}: {r.check}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python3 -m tests.benchmarks.collectors_scaling",
                                     description="1, 2, 3 collectors behind haproxy writing Iceberg on object storage.")
    parser.add_argument("--counts", default="1,2,3", help="collector counts, in order (default 1,2,3)")
    parser.add_argument("--seconds", type=float, default=15, help="measured seconds per round (default 15)")
    parser.add_argument("--warmup", type=float, default=3, help="unmeasured seconds before each round (default 3)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="passes over the counts, every other one in reverse (default 1)")
    parser.add_argument("--connections", type=int, default=32, help="concurrent keep-alive connections (default 32)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers per collector (default 2)")
    parser.add_argument("--flush-seconds", type=float, default=2.0,
                        help="each collector's flush (one Iceberg commit per worker) interval (default 2, the product's)")
    parser.add_argument("--cpu-per-collector", type=float, default=None, metavar="CORES",
                        help="hold each collector (master, workers, maintenance, alerts: every process it starts) "
                             "to CORES CPU seconds per second with a cgroup of its own, like a small machine of its "
                             "own (e.g. 0.3; needs root and cgroups; default: no limit)")
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--tmp-dir", default=None, help="where the data directories go (default: system temp)")
    parser.add_argument("--keep", action="store_true", help="keep data directories and logs")
    args = parser.parse_args(argv)
    try:
        args.count_list = [int(text) for text in args.counts.split(",")]
    except ValueError:
        parser.error(f"--counts must be numbers separated by commas, not {args.counts!r}")
    if min(args.count_list) < 1 or min(args.seconds, args.connections, args.workers, args.rounds,
                                        args.flush_seconds) <= 0 or args.warmup < 0:
        parser.error("counts, seconds, connections, workers, rounds and flush seconds must be positive")
    if args.cpu_per_collector is not None and not 0.01 <= args.cpu_per_collector <= (os.cpu_count() or 1):
        parser.error(f"--cpu-per-collector must be between 0.01 and {os.cpu_count()} cores, "
                     f"not {args.cpu_per_collector:g}")
    return args


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the servers


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if haproxy_binary() is None:
        print("collectors_scaling: haproxy is not available (Debian package haproxy)", file=sys.stderr)
        return 2
    wrk = ensure_wrk() if args.client in ("auto", "wrk") else None
    if args.client == "wrk" and not wrk:
        print("collectors_scaling: wrk is not available (Debian package wrk)", file=sys.stderr)
        return 2
    client = f"wrk, {args.wrk_threads} thread(s)" if wrk else "python (steals server CPU)"
    work_dir = Path(tempfile.mkdtemp(prefix="dlrlens-scaling-", dir=args.tmp_dir))
    rounds: list[ScalingRound] = []
    try:
        bench = Bench(args, work_dir, wrk)
        budgeted = (cpu_budgets(max(args.count_list), args.cpu_per_collector, "dlrlens-scaling")
                    if args.cpu_per_collector else contextlib.nullcontext([]))
        # With budgets, wrk, haproxy and weed get the collectors' weight (no quota): a neighbour's
        # load must not starve them either (tests.support.cpu_budget).
        prioritized = caller_priority("dlrlens-scaling-rest") if args.cpu_per_collector else contextlib.nullcontext()
        with budgeted as budgets, prioritized, object_store(work_dir / "s3") as lake:
            for number in range(1, args.rounds + 1):
                counts = args.count_list if number % 2 else list(reversed(args.count_list))
                for count in counts:
                    print(f"collectors_scaling: round {number}: {count} collector(s) ...", flush=True)
                    rounds.append(run_round(bench, lake, args, count, number, budgets))
                    print(f"collectors_scaling: round {number}: {count} collector(s) "
                          f"{rounds[-1].load.rate:.0f} receipts/s", flush=True)
        print_report(rounds, args, client, filesystem_type(work_dir))
    except CpuBudgetError as exc:
        print(f"collectors_scaling: --cpu-per-collector: {exc}", file=sys.stderr)
        return 2
    finally:
        if args.keep:
            print(f"collectors_scaling: kept {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    return 0 if rounds and all(r.durable for r in rounds) else 1


if __name__ == "__main__":
    raise SystemExit(main())
