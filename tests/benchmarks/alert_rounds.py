"""What an alert evaluation round costs on the Iceberg store's shared alert state, against the
same evaluation on the local store in the same run.

Starts ``weed mini`` on loopback (tests/support/seaweed.py) with a pyiceberg SQL catalog
(SQLite), commits the same receipts (one campaign firing a delivery-rate rule, then recovering)
to the receipts table and to a local data directory, then evaluates ``--rounds`` times a minute
apart (as of the receipts' times): :func:`dlrlens.alerts.engine.evaluate_now` on the Iceberg store
(import the alert_state table, evaluate through the kept mirror, claim, commit an overwrite; the
first round fires and delivers, so it also commits the outcome) and
:func:`dlrlens.alerts.engine.run_once` on the local store, each with its kept store. Prints the
median wall time of a round on each and their ratio, and the median of the round's own commit
(the overwrite of the alert_state table: ``SharedAlertState.commit_seconds``).

    python3 -m tests.benchmarks.alert_rounds [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from dlrlens.alerts import engine
from dlrlens.alerts.rules import parse
from dlrlens.store.backends import open_store, parse_store, publisher, shared_alert_state
from dlrlens.store.writer import ReceiptStorage
from tests.support.alert_streams import DROP_RULE, OPS_CHANNEL, stream
from tests.support.factory import utc, write_receipts
from tests.support.seaweed import object_store

RULES = OPS_CHANNEL + DROP_RULE
AT = utc(2026, 11, 20, 12, 0)


def delivered(url: str, title: str, body: str, timeout: float) -> None:
    return None


def timed_rounds(rounds: int, evaluate) -> list[float]:
    times = []
    for n in range(rounds):
        started = time.perf_counter()
        evaluate(AT + timedelta(minutes=n))
        times.append(time.perf_counter() - started)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.benchmarks.alert_rounds", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    rows = stream("bad", AT - timedelta(hours=1), AT + timedelta(hours=1), delivered=0.5)
    config = parse(RULES)
    choice = parse_store("iceberg:bench")
    with tempfile.TemporaryDirectory(prefix="dlrlens-alert-rounds-") as tmp:
        root = Path(tmp)
        with object_store(root / "s3") as store:
            os.environ.update(store.catalog_env("bench", root / "catalog.db"))
            collector = root / "collector"
            storage = ReceiptStorage(collector, flush_seconds=3600, publish=publisher(choice, collector))
            storage.store(rows)
            storage.flush()
            storage.close()
            local = root / "local"
            write_receipts(local, rows)

            evaluator = root / "alerts"
            shared = shared_alert_state(evaluator, choice, "bench")
            iceberg_store = open_store(evaluator, choice)
            iceberg = timed_rounds(args.rounds, lambda at: engine.evaluate_now(
                config, evaluator, at, store=iceberg_store, choice=choice, send=delivered))
            iceberg_store.close()
            commits = list(shared.commit_seconds)

            local_store = open_store(local, parse_store("local"))
            baseline = timed_rounds(args.rounds, lambda at: engine.run_once(config, local, at, store=local_store,
                                                                           send=delivered))
            local_store.close()
    iceberg_median, local_median = statistics.median(iceberg), statistics.median(baseline)
    print(f"rounds: {args.rounds} (the first fires and delivers: {len(commits)} commits in all)")
    print(f"local store round:   median {local_median * 1000:7.1f} ms")
    print(f"Iceberg store round: median {iceberg_median * 1000:7.1f} ms  ({iceberg_median / local_median:.1f}x local)")
    print(f"  of which the alert_state commit: median {statistics.median(commits) * 1000:.1f} ms "
          f"(min {min(commits) * 1000:.1f}, max {max(commits) * 1000:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
