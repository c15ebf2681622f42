"""The derived per-message state (dlrlens/store/derive.py) and the store's fast path over it
(dlrlens/store/reader.py, asked through dashboard/queries/) give exactly the straightforward
definitions (tests/support/baseline.py: BaselineStore).

The data: a generated data set (tests/benchmarks/generate.py: duplicates, out-of-order
arrival, regressions, final after final, late finals days after the send, an unrecognised
status, messages with only DELIVERED) plus hand-made messages for each edge case, delivered
in *stages* as the collector would write them (by received time). Each stage's files arrive,
the derived state absorbs some of them, and the dashboard's numbers are compared with the
baseline over the same files: exactly (``==``), frame by frame.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from dlrlens.store import compaction, derive, layout, pseudonym, reader, sends
from dashboard import queries as q
from dashboard.queries import Filters, Store
from tests.support.baseline import BaselineStore
from tests.support.factory import parquet_bytes, receipt, utc
from tests.support.funnel import demo_events, write_events

UTC = timezone.utc
END = utc(2026, 11, 20, 12, 0)  # the generated data ends here
NOW = END + timedelta(hours=1)  # "now" for hot days: 2026-11-20 is in hour files
STAGES = 5
T = utc(2026, 11, 17, 23, 59, 50)  # hand-made messages start 10 s before a UTC midnight


def at(seconds: float) -> datetime:
    return T + timedelta(seconds=seconds)


# --------------------------------------------------------------------------- data


def edge_cases() -> list[tuple[int, dict]]:
    """(stage, row) of hand-made messages, one per edge case."""
    rows: list[tuple[int, dict]] = []

    def add(stage, mid, status, created, received=None, **kw):
        rows.append((stage, receipt(mid, status, at(created), received_at=at(received if received is not None
                                                                              else created + 2), **kw)))

    # A duplicate across absorbed and fresh files, and twice in one file.
    add(1, "E-DUP", "ACCEPTED", 0, campaign="edge")
    add(1, "E-DUP", "DELIVERED", 4, campaign="edge")
    add(1, "E-DUP", "DELIVERED", 4, received=6, campaign="edge")
    add(3, "E-DUP", "DELIVERED", 4, received=900, campaign="edge")
    # Out of order across midnight: DELIVERED first (next day), ACCEPTED (the day before) later.
    add(1, "E-OOO", "DELIVERED", 15, campaign="edge")
    add(2, "E-OOO", "ACCEPTED", 0, received=600, campaign="edge")
    # A regression that arrives after the final was absorbed.
    add(1, "E-REG", "ACCEPTED", 1, campaign="edge")
    add(1, "E-REG", "DELIVERED", 5, campaign="edge")
    add(2, "E-REG", "RETRY", 9, campaign="edge")
    # Final after final, both ways, in different stages.
    add(1, "E-UP", "ACCEPTED", 0, campaign="edge")
    add(1, "E-UP", "EXPIRED", 30, campaign="edge")
    add(3, "E-UP", "DELIVERED", 3600, campaign="edge")
    add(1, "E-DOWN", "DELIVERED", 3, campaign="edge")
    add(2, "E-DOWN", "UNDELIVERABLE", 40, campaign="edge")
    # A late final, days after the send, absorbed in a later update.
    add(1, "E-LATE", "ACCEPTED", 2, campaign="late")
    add(4, "E-LATE", "DELIVERED", 3 * 86400, campaign="late")
    # Unrecognised status; only a DELIVERED receipt.
    add(1, "E-ODD", "ACCEPTED", 0)
    add(2, "E-ODD", "carrier_lost", 50)
    add(2, "E-ONLY", "DELIVERED", 7, batch_id="B-ONLY")
    # Ties of created: same received (one request) -> status name; else the later received copy.
    add(1, "E-TIE", "ACCEPTED", 0)
    add(1, "E-TIE", "DELIVERED", 8, received=20)
    add(3, "E-TIE", "REJECTED", 8, received=20)
    add(1, "E-TIE2", "ACCEPTED", 0)
    add(1, "E-TIE2", "EXPIRED", 8, received=10)
    add(2, "E-TIE2", "DELIVERED", 8, received=11)
    add(4, "E-TIE2", "EXPIRED", 8, received=30)  # a retry of EXPIRED, received last: it now wins
    # Campaign: unlabelled first, labelled later; an earlier labelled receipt arriving late.
    add(1, "E-CAMP", "ACCEPTED", 5, batch_id="B-CAMP")
    add(2, "E-CAMP", "DELIVERED", 9, campaign="second", batch_id="B-CAMP")
    add(4, "E-CAMP", "INTERIM_QUEUED", 6, received=3000, campaign="first", batch_id="B-CAMP")
    add(1, "E-BLANK", "ACCEPTED", 0, campaign="  ", batch_id="B-BLANK")
    add(1, "E-BLANK", "DELIVERED", 3, campaign="  ", batch_id="B-BLANK")
    # Label sets across receipts; a client reference only on a later receipt.
    add(1, "E-LABELS", "ACCEPTED", 0, campaign="edge", labels={"env": "prod"})
    add(3, "E-LABELS", "DELIVERED", 6, campaign="edge", labels={"env": "test", "team": "a/b"})
    add(1, "E-CREF", "ACCEPTED", 0, campaign="edge")
    add(2, "E-CREF", "DELIVERED", 5, campaign="edge", client_reference="ref-late")
    # Pending, stuck status changes; pending then final with an interim created after it.
    add(1, "E-PEND", "ACCEPTED", 0)
    add(3, "E-PEND", "INTERIM_QUEUED", 60)
    add(1, "E-PF", "ACCEPTED", 0, campaign="edge")
    add(1, "E-PF", "RETRY", 50, campaign="edge")
    add(2, "E-PF", "FAILED_NOROUTE", 20, received=70, campaign="edge")
    return rows


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> list[pa.Table]:
    """Every row (generated + hand-made), split into STAGES tables by received time (hand-made
    rows by their own stage)."""
    from tests.benchmarks.generate import generate

    source = tmp_path_factory.mktemp("generated")
    generate(source, 40_000, days=6, campaigns=8, seed=5, end=END, recent_days=2, recent_files=40,
             log=lambda *a: None)
    generated = pa.concat_tables([pq.read_table(p).cast(layout.RECEIPT_SCHEMA)
                                  for p in sorted(layout.receipts_dir(source).glob("*/*.parquet"))])
    received = generated["received_at"].to_numpy().astype("datetime64[us]").astype(np.int64)
    edges = np.quantile(received, np.linspace(0, 1, STAGES + 1)[1:-1])
    stage_of = np.searchsorted(edges, received, side="right") + 1
    hand = edge_cases()
    tables = []
    for stage in range(1, STAGES + 1):
        part = generated.filter(pa.array(stage_of == stage))
        extra = [row for s, row in hand if s == stage]
        if extra:
            part = pa.concat_tables([part, pa.Table.from_pylist(extra, schema=layout.RECEIPT_SCHEMA)])
        tables.append(part)
    return tables


@pytest.fixture(scope="module")
def staged_events(staged) -> list[tuple[list[dict], list[dict]]]:
    """(clicks, replies) per stage: the funnel's events for every message (by id, by reference,
    batch-only, unlinked, retried; tests/support/funnel.py), dealt to the stages at random, so
    that many arrive before their message's receipts and wait unplaced."""
    rows = [row for table in staged for row in table.to_pylist()]
    clicks, replies = demo_events(rows, seed=8, click_share=0.2, reply_share=0.05)
    rng = np.random.default_rng(8)
    click_stage, reply_stage = rng.integers(1, STAGES + 1, len(clicks)), rng.integers(1, STAGES + 1, len(replies))
    return [([c for c, k in zip(clicks, click_stage) if k == stage], [r for r, k in zip(replies, reply_stage) if k == stage])
            for stage in range(1, STAGES + 1)]


NUMBERS = ["447911123456", "447700900123", "61412555123", "27825551234", "4915112345678", "12015550123", "12345"]


@pytest.fixture(scope="module")
def staged_sends(staged) -> list[list[dict]]:
    """Mobivate's send records (:data:`dlrlens.store.sends.SEND_SCHEMA` rows) as each stage's
    sync leaves them: the records known by then (a later stage may change a record: a later
    ``modified``, another status and cost). Most messages have a log record, created a few
    seconds before (some after) the first receipt, in two currencies and several countries;
    some have none; some records have no receipt ever (created over the days, a few before
    their receipts' stage); some messages are in the newer API's history too (the log's record
    wins), a few only there; one record is MO (never a message of ours)."""
    rng = np.random.default_rng(21)
    rows = [row for table in staged for row in table.to_pylist()]
    first: dict[str, tuple[datetime, str | None]] = {}
    for row in rows:
        mid = row["delivery_message_id"]
        if mid not in first or row["created"] < first[mid][0]:
            first[mid] = (row["created"], row["batch_id"])
    parsed = [pseudonym.parse_number(n) for n in NUMBERS]
    key = b"k" * 32

    def record(mid, created, batch, stage, source="log", direction="MT", cost=None):
        number = parsed[int(rng.integers(len(parsed)))]
        currency = "EUR" if batch and hash(batch) % 3 == 0 else "GBP"
        return {"message_id": mid, "created": created, "modified": created + timedelta(seconds=5),
                "originator": ["ACME", "AcmeBank", "447700000001"][int(rng.integers(3))], "status": "DELIVRD",
                "direction": direction, "route_id": ["mglobal", "premium-uk"][int(rng.integers(2))], "parts": 1,
                "cost": float(cost if cost is not None else round(0.01 * int(rng.integers(1, 6)), 2)),
                "currency": currency, "sender_reference": None, "campaign_id": batch,
                "country": number.country, "network": number.network,
                "recipient_hash": pseudonym.keyed_hash(key, number.canonical), "recipient_masked": number.masked,
                "recipient": None, "source": source, "_stage": stage}
    records = []
    ids = sorted(first)
    batches = sorted({b for _, b in first.values() if b})
    for i, mid in enumerate(ids):
        sent, batch = first[mid]
        draw = rng.random()
        if draw < 0.08:
            continue  # receipts without a log record
        stage = int(rng.integers(1, STAGES + 1))
        created = sent - timedelta(seconds=int(rng.integers(-2, 6)))  # mostly before the first receipt
        records.append(record(mid, created, batch, stage, source="history" if draw < 0.1 else "log"))
        if draw > 0.97:  # also in the history, with another cost: the log's record wins
            records.append(record(mid, created, batch, stage, source="history", cost=9.99))
    for k in range(300):  # records whose receipts never arrive
        created = END - timedelta(minutes=int(rng.integers(10, 6 * 24 * 60)))
        batch = batches[k % len(batches)] if k % 4 else None
        records.append(record(f"LOGONLY-{k:04d}", created, batch, int(rng.integers(1, STAGES + 1))))
    records.append(record("MO-0001", END - timedelta(hours=3), None, 2, direction="MO"))
    changed = {records[n]["message_id"] for n in rng.choice(len(records), 200, replace=False)}
    per_stage = []
    for stage in range(1, STAGES + 1):
        known = [dict(r) for r in records if r["_stage"] <= stage]
        if stage >= 4:  # a later sync changed some records (a reporting status, a corrected cost)
            for r in known:
                if r["message_id"] in changed:
                    r.update(modified=r["modified"] + timedelta(hours=1), status="UNDELIV", cost=r["cost"] + 0.5)
        per_stage.append(known)
    return per_stage


def write_sends(data_dir: Path, records: list[dict]) -> None:
    """The records as a sync stores them (:func:`dlrlens.store.sends.store_rows`: one file per
    source and created day, merged by id, a changed record stamped, a file without changes left
    alone)."""
    sends.store_rows(data_dir, [{k: v for k, v in r.items() if k != "_stage"} for r in records])


def write_stage(data_dir: Path, table: pa.Table, stage: int, files_per_day: int = 3) -> list[Path]:
    """The stage's rows as flush files: per UTC day of created, a few files (duplicates of one
    receipt may land in different files)."""
    day = pc.strftime(table["created"], format="%Y-%m-%d").to_numpy(zero_copy_only=False)
    written = []
    for value in sorted(set(day)):
        rows = table.filter(pa.array(day == value))
        for k in range(files_per_day):
            part = rows.slice(k * rows.num_rows // files_per_day,
                              (k + 1) * rows.num_rows // files_per_day - k * rows.num_rows // files_per_day)
            if part.num_rows:
                path = layout.partition_dir(data_dir, value) / f"w{stage:03d}-{k:020d}.parquet"
                layout.atomic_write_bytes(path, _parquet(part))
                written.append(path)
    return written


def _parquet(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table.sort_by([("delivery_message_id", "ascending"), ("created", "ascending")]), sink)
    return sink.getvalue().to_pybytes()


# --------------------------------------------------------------------------- comparing


FILTERS = [
    Filters(),
    Filters(start=utc(2026, 11, 17), end=utc(2026, 11, 19)),
    Filters(start=utc(2026, 11, 18), end=utc(2026, 11, 19), campaigns=("campaign-003", "edge")),
    Filters(outcomes=("failed", "unknown")),
    Filters(statuses=("EXPIRED", "INTERIM_QUEUED", "CARRIER_LOST")),
    Filters(labels=(("env", "prod"),)),
    Filters(start=datetime(2026, 11, 18, 6), end=datetime(2026, 11, 19, 18), tz="America/New_York"),
]
# The cost and "where" figures: also with the send records' filters.
SEND_FILTERS = [0, 1, 2, 3, 6]
FILTERS_WITH_SENDS = [FILTERS[i] for i in SEND_FILTERS] + [
    Filters(countries=("GB", "(unknown)")),
    Filters(start=utc(2026, 11, 18, 5), end=utc(2026, 11, 20, 7), senders=("ACME",), routes=("mglobal",)),
]


def send_figures(store: Store, full: bool) -> dict[str, pd.DataFrame]:
    """Cost, "where", receipts missing and time from submission for FILTERS_WITH_SENDS (not
    ``full``: the second only)."""
    out = {}
    for i, f in enumerate(FILTERS_WITH_SENDS):
        if not full and i != 1:
            continue
        out[f"cost_campaign{i}"] = q.cost_by(store, f, "campaign", now=NOW)
        out[f"cost_country{i}"] = q.cost_by(store, f, "country", now=NOW)
        out[f"cost_total{i}"] = q.total_cost(store, f, now=NOW)
        out[f"where_route{i}"] = q.delivery_by(store, f, "route_id")
        out[f"where_network{i}"] = q.delivery_by(store, f, "network")
        out[f"missing{i}"] = q.receipts_missing(store, f, now=NOW)
        out[f"submission{i}"] = q.submission_latency(store, f)
    return out


def figures(store: Store, full: bool = True) -> dict[str, object]:
    """The figures the pages show (uncached): for every filter in FILTERS, or (not ``full``)
    the main ones for two filters."""
    store.clear_cache()
    out: dict[str, object] = {"kpis": q.kpis(store, FILTERS[0]), "campaigns": q.campaigns(store, FILTERS[1]),
                              "pending": q.pending_ages(store, FILTERS[0], now=NOW),
                              "latency": q.latency_by_campaign(store, FILTERS[1])}
    out.update(send_figures(store, full))
    if not full:
        return out
    out.update(campaign_names=q.campaign_names(store), label_pairs=q.label_pairs(store),
               data_range=store.data_range())
    for i, f in enumerate(FILTERS):
        out[f"kpis{i}"] = q.kpis(store, f)
        out[f"campaigns{i}"] = q.campaigns(store, f)
        out[f"trend{i}"] = q.trend(store, f)
        out[f"outcomes{i}"] = q.outcome_breakdown(store, f)
        out[f"reasons{i}"] = q.failure_reasons(store, f)
        out[f"latency{i}"] = q.latency_by_campaign(store, f)
        out[f"pending{i}"] = q.pending_ages(store, f, now=NOW)
        out[f"funnel{i}"] = q.funnel(store, f, by_campaign=True)
        out[f"funnel_total{i}"] = q.funnel(store, f)
        out[f"unlinked{i}"] = q.unlinked_events(store, f)
        out[f"clicks_over_time{i}"] = q.clicks_over_time(store, f)[0]
        out[f"clicks_by_country{i}"] = q.click_breakdown(store, f, "country")
        out[f"top_links{i}"] = q.top_links(store, f)
    out["hourly"] = q.trend(store, FILTERS[1], bucket="hour")
    out["reasons_by_campaign"] = q.failure_reasons_by_campaign(store, FILTERS[0])
    out["reasons_over_time"] = q.failure_reasons_over_time(store, FILTERS[0], bucket="day")
    out["latencies"] = q.latencies(store, FILTERS[2])
    out["distribution"] = q.latency_distribution(store, FILTERS[1], by_campaign=True)
    out["detail"] = q.message_detail(store, FILTERS[2])
    health, everything = q.data_health(store), q.data_health(store, since=utc(2000, 1, 1))
    out["health"], out["unknown_statuses"] = health["summary"], health["unknown_statuses"]
    # Per partition (all data) or straightforward (since a date): the same figures.
    pd.testing.assert_frame_equal(health["summary"], everything["summary"], check_exact=True, check_dtype=False)
    pd.testing.assert_frame_equal(health["unknown_statuses"], everything["unknown_statuses"], check_exact=True,
                                  check_dtype=False)
    first_full_minute = (health["summary"]["last_received_at"].iloc[0] - pd.Timedelta(hours=24)).ceil("min")
    recent, window = health["per_minute"], everything["per_minute"]
    pd.testing.assert_frame_equal(recent[recent["minute"] >= first_full_minute].reset_index(drop=True),
                                  window[window["minute"] >= first_full_minute].reset_index(drop=True),
                                  check_exact=True, check_dtype=False)
    return out


def assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name in want:
        if name.startswith("cost"):  # sums of costs in another order: the last bits may differ
            pd.testing.assert_frame_equal(got[name], want[name], check_exact=False, rtol=1e-12, obj=name)
        elif isinstance(want[name], pd.DataFrame):
            pd.testing.assert_frame_equal(got[name], want[name], check_exact=True, obj=name)
        else:
            assert got[name] == want[name], name


def baseline(data_dir: Path, full: bool = True) -> dict:
    with BaselineStore(data_dir, materialize=True) as store:
        return figures(store, full)


def fast_keys(want: dict) -> list[str]:
    """The figures of a not ``full`` run (see :func:`send_figures`)."""
    names = ("cost_campaign", "cost_country", "cost_total", "where_route", "where_network", "missing", "submission")
    return ["kpis", "campaigns", "pending", "latency", *(f"{name}1" for name in names)]


def fast(data_dir: Path, full: bool = True) -> dict:
    with Store(data_dir) as store:
        return figures(store, full)


def derived_rows(data_dir: Path) -> pd.DataFrame:
    """The whole derived state in force, one row per message, sorted by id."""
    manifest = derive.Manifest.load(data_dir)
    paths = [str(data_dir / f.path) for f in manifest.files]
    con = duckdb.connect()
    df = con.execute(f"SELECT {', '.join(derive.STORED_COLUMNS)} FROM read_parquet($p) ORDER BY delivery_message_id",
                     {"p": paths}).df()
    con.close()
    return df


# --------------------------------------------------------------------------- tests


def test_fast_path_equals_baseline_through_staged_updates(tmp_path, staged, staged_events, staged_sends):
    """Each stage: new files arrive (the tail; receipts, clicks, replies and send records, some
    of them replacing a day's file), the reader is exact; the state absorbs them (in small
    batches, across hot hour files and cold day files), the reader is exact again. Finally the
    incremental state is row for row the state a rebuild computes."""
    data = tmp_path / "data"
    for stage, table in enumerate(staged, start=1):
        write_stage(data, table, stage)
        write_sends(data, staged_sends[stage - 1])
        clicks, replies = staged_events[stage - 1]
        write_events(data, "clicks", clicks, f"c{stage}")
        write_events(data, "replies", replies, f"r{stage}")
        full = stage in (1, STAGES)
        want = baseline(data, full)
        assert_same(fast(data, full), want)  # stage 1: no derived data at all, everything is tail
        result = derive.update_derived(data, now=NOW, max_batch_rows=6_000 if stage % 2 else 10**9)
        assert result.get("skipped") is None
        while result.get("backlog_files"):
            assert_same(fast(data, False), {k: want[k] for k in fast_keys(want)})
            result = derive.update_derived(data, now=NOW, max_batch_rows=6_000)
        assert_same(fast(data, full), want)
    manifest = derive.Manifest.load(data)
    assert {f.kind for f in manifest.files} >= {"d", "h00", "h11"}  # cold day files and hot hour files
    event_files = {p for table in ("clicks", "replies") for p in derive.events.event_files(data, table)}
    assert manifest.absorbed == set(derive.receipt_files(data)) | event_files | set(derive.send_files(data).values())
    # Each send file's latest stamp is recorded: a replaced file's unchanged records are not read again.
    assert manifest.send_stamps == {p: derive.latest_stamp(data, p) for p in derive.send_files(data)}
    assert [f.path for f in manifest.files if not f.placed]  # events of no stored message wait unplaced
    assert not want["missing0"].empty and want["cost_campaign0"]["currency"].nunique() == 2
    incremental = derived_rows(data)
    derive.rebuild_derived(data, now=NOW)
    pd.testing.assert_frame_equal(derived_rows(data), incremental, check_exact=True)
    assert_same(fast(data), want)
    unlinked = want["unlinked0"].iloc[0]  # every kind of event was there
    assert want["funnel_total0"].iloc[0]["opted_out"] > 0 and unlinked["batch_linked_replies"] > 0
    assert 0 < unlinked["unlinked_clicks"] < unlinked["clicks"] and unlinked["unlinked_replies"] > 0
    # The edge cases came out as the definitions say.
    detail = q.message_detail(Store(data), Filters(campaigns=("edge", "late", "first", "(none)", "B-ONLY",
                                                              "B-BLANK"))).set_index("delivery_message_id")
    assert detail.loc["E-DUP", "receipts"] == 2
    assert detail.loc["E-OOO", "sent_at"] == pd.Timestamp(at(0)) and detail.loc["E-OOO", "latency_s"] == 15.0
    assert detail.loc["E-UP", "outcome"] == "delivered" and detail.loc["E-UP", "latency_s"] == 3600.0
    assert detail.loc["E-DOWN", "outcome"] == "failed" and detail.loc["E-DOWN", "reason"] == "UNDELIVERABLE"
    assert detail.loc["E-LATE", "latency_s"] == 3 * 86400 - 2
    assert detail.loc["E-ODD", "outcome"] == "unknown" and detail.loc["E-ODD", "last_status"] == "CARRIER_LOST"
    assert detail.loc["E-ONLY", "outcome"] == "delivered" and pd.isna(detail.loc["E-ONLY", "latency_s"])
    assert detail.loc["E-TIE", "reason"] == "REJECTED"
    assert detail.loc["E-TIE2", "outcome"] == "failed"
    assert detail.loc["E-CAMP", "campaign"] == "first" and detail.loc["E-BLANK", "campaign"] == "B-BLANK"
    assert detail.loc["E-CREF", "client_reference"] == "ref-late"
    assert detail.loc["E-PEND", "last_status"] == "INTERIM_QUEUED"
    assert detail.loc["E-PF", "reason"] == "FAILED_NOROUTE"
    store = Store(data)
    assert q.kpis(store, Filters(campaigns=("edge",)))["regressions"].iloc[0] == 2  # E-REG and E-PF


def test_latency_partials_kept_across_updates_stay_exact(tmp_path, staged, monkeypatch):
    """One store lives through every stage (new files in the tail, updates rewriting derived
    files): the latency partials it keeps per derived file give the baseline's percentiles,
    files that did not change are not read again, and the exact two-pass method never falls
    back to DuckDB's quantile_cont."""
    by_duckdb = reader._quantiles_by_duckdb

    def baseline_only(store, *args):
        assert isinstance(store, BaselineStore), "the fast path fell back to quantile_cont"
        return by_duckdb(store, *args)
    monkeypatch.setattr(reader, "_quantiles_by_duckdb", baseline_only)
    data = tmp_path / "data"
    reused = 0
    with Store(data) as store:
        for stage, table in enumerate(staged, start=1):
            write_stage(data, table, stage)
            for _ in ("tail", "absorbed"):
                kept = {path: partial for files in store._latency_partials.values()
                        for path, partial in files.items()}
                assert_same(figures(store, full=False), baseline(data, full=False))
                reused += sum(partial is kept.get(path) for files in store._latency_partials.values()
                              for path, partial in files.items())
                while derive.update_derived(data, now=NOW).get("backlog_files"):
                    pass
    assert reused > 0


def test_a_day_turning_cold_is_coalesced_and_figures_stay(tmp_path, staged):
    data = tmp_path / "data"
    write_stage(data, pa.concat_tables(staged), 1)
    derive.update_derived(data, now=NOW)
    hot = derive.Manifest.load(data)
    assert sum(f.kind.startswith("h") for f in hot.files) == 12  # 2026-11-20, 00:00 to 12:00
    want = fast(data)
    result = derive.update_derived(data, now=NOW + timedelta(days=3))
    assert result["absorbed_files"] == 0 and result["rewritten_files"] == derive.HOT_DAYS
    cold = derive.Manifest.load(data)
    assert all(f.kind == "d" for f in cold.files) and len(cold.files) == len({f.day for f in cold.files})
    assert_same(fast(data), want)


def test_compaction_outputs_are_covered_not_read_again(tmp_path, staged):
    data = tmp_path / "data"
    for stage, table in enumerate(staged[:2], start=1):
        write_stage(data, table, stage, files_per_day=4)
    derive.update_derived(data, now=NOW)
    want = baseline(data)
    stats = compaction.compact(data, min_age_seconds=0, settle_seconds=0, delete_grace_seconds=3600)
    assert stats.files_written > 3  # inputs are kept (grace): both visible at once
    assert_same(fast(data), want)  # outputs covered by absorbed inputs: not double counted
    result = derive.update_derived(data, now=NOW)
    assert result["absorbed_files"] == 0 and result["covered_files"] == stats.files_written
    # The inputs go (as compaction deletes them after its grace period); then a new file
    # holding copies of compacted rows appears (as a log replay makes).
    for output in layout.receipts_dir(data).glob("*/c-*.parquet"):
        for name in compaction.lineage(output):
            (output.parent / name).unlink()
    replayed = layout.partition_dir(data, "2026-11-16") / "w009-00000000000000000099.parquet"
    copies = pq.read_table(next(layout.partition_dir(data, "2026-11-16").glob("c-*.parquet"))).slice(0, 500)
    layout.atomic_write_bytes(replayed, _parquet(copies))
    again = baseline(data)
    assert again["health"]["duplicate_rows"].iloc[0] == want["health"]["duplicate_rows"].iloc[0] + copies.num_rows
    assert copies.num_rows == 500
    assert_same({k: v for k, v in again.items() if k != "health"}, {k: v for k, v in want.items() if k != "health"})
    want = again
    assert_same(fast(data), want)
    result = derive.update_derived(data, now=NOW)
    assert result["absorbed_files"] == 1 and result["pruned"] > 0
    assert_same(fast(data), want)


def test_readers_during_updates_always_see_exact_figures(tmp_path, staged):
    """Updates absorb the files in many small batches (rewriting files, replacing the
    manifest) while a reader queries: every answer equals the baseline."""
    data = tmp_path / "data"
    write_stage(data, staged[0], 1)
    derive.update_derived(data, now=NOW)  # the first update builds the state from scratch
    for stage, table in enumerate(staged[1:], start=2):
        write_stage(data, table, stage)
    f = Filters(start=utc(2026, 11, 17), end=utc(2026, 11, 20))
    with BaselineStore(data, materialize=True) as base:
        want = (q.kpis(base, f), q.campaigns(base, f))
    done = threading.Event()
    errors: list[BaseException] = []

    def updating():
        try:
            while derive.update_derived(data, now=NOW, max_batch_rows=8_000, wait=True).get("backlog_files"):
                pass
            derive.rebuild_derived(data, now=NOW)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=updating)
    reads = 0
    with Store(data) as store:
        thread.start()
        while not done.is_set() or reads < 3:
            store.clear_cache()
            pd.testing.assert_frame_equal(q.kpis(store, f), want[0], check_exact=True)
            pd.testing.assert_frame_equal(q.campaigns(store, f), want[1], check_exact=True)
            reads += 1
    thread.join()
    assert not errors
    assert derive.Manifest.load(data).version > 5


def test_a_reader_on_an_old_manifest_finishes_within_the_grace_period(tmp_path, staged):
    data = tmp_path / "data"
    write_stage(data, staged[0], 1)
    derive.update_derived(data, now=NOW)
    write_stage(data, staged[1], 2)
    with Store(data) as store:
        with store.pinned():
            before = q.kpis(store, Filters())
            old_files = [data / x.path for x in derive.Manifest.load(data).files]
            derive.update_derived(data, now=NOW)  # rewrites files, retires the old ones
            assert all(p.exists() for p in old_files)
            store.clear_cache()
            pd.testing.assert_frame_equal(q.kpis(store, Filters()), before, check_exact=True)
        after = q.kpis(store, Filters())
    pd.testing.assert_frame_equal(after, before, check_exact=True)  # the tail then, absorbed now
    retired = [data / p for p in derive.Manifest.load(data).retired]
    assert retired and set(retired) <= set(old_files) and all(p.exists() for p in retired)
    result = derive.update_derived(data, now=NOW, grace_seconds=0)
    assert result["deleted_files"] == len(retired)
    assert not derive.Manifest.load(data).retired and not any(p.exists() for p in retired)


def test_a_crash_mid_update_leaves_the_manifest_and_figures_intact(tmp_path, staged, monkeypatch):
    data = tmp_path / "data"
    write_stage(data, staged[0], 1)
    derive.update_derived(data, now=NOW)
    write_stage(data, staged[1], 2)
    want = baseline(data)
    before = Path(derive.Manifest.path(data)).read_bytes()
    real_write = derive._write_derived
    calls = []

    def crash_after_two(*args, **kwargs):
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        calls.append(1)
        return real_write(*args, **kwargs)

    monkeypatch.setattr(derive, "_write_derived", crash_after_two)
    with pytest.raises(OSError):
        derive.update_derived(data, now=NOW)
    monkeypatch.undo()
    assert Path(derive.Manifest.path(data)).read_bytes() == before
    leftover = data / derive.MESSAGES_DIR / "sent=2026-11-18" / ".d-1.parquet.999999999.tmp"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"partial")
    assert_same(fast(data), want)  # the orphans of the crash are in no manifest: invisible
    orphans = {p for p in (data / derive.MESSAGES_DIR).rglob("*.parquet")} - {
        data / f.path for f in derive.Manifest.load(data).files}
    assert len(orphans) == 2
    derive.update_derived(data, now=NOW, grace_seconds=0)
    assert_same(fast(data), want)
    assert not any(p.exists() for p in orphans) and not leftover.exists()


def test_update_skips_while_another_process_holds_the_lock(tmp_path, staged):
    data = tmp_path / "data"
    write_stage(data, staged[0].slice(0, 1000), 1)
    fd = os.open(data / derive.LOCK_NAME, os.O_RDONLY | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert derive.update_derived(data) == {"skipped": "busy"}
    finally:
        os.close(fd)
    assert derive.update_derived(data)["messages"] > 300


def test_state_hashed_by_another_duckdb_is_still_read_exactly(tmp_path, staged):
    """A manifest written by another DuckDB (another hash function): the reader hashes ids
    itself; the updater rebuilds."""
    data = tmp_path / "data"
    write_stage(data, staged[0], 1)
    derive.update_derived(data, now=NOW)
    path = derive.Manifest.path(data)
    raw = json.loads(path.read_text())
    raw["hash_probe"] = raw["hash_probe"] ^ 1
    path.write_text(json.dumps(raw))
    write_stage(data, staged[1], 2)
    want = baseline(data)
    assert_same(fast(data), want)
    assert derive.update_derived(data, now=NOW)["rebuilt"] is True
    assert_same(fast(data), want)


def test_exact_percentiles_match_duckdb_quantile_cont(tmp_path):
    """Ties, a single value, two values, huge spreads: == DuckDB's quantile_cont."""
    rng = np.random.default_rng(11)
    groups = {
        "one": [1_500_000],
        "two": [1_000, 9_000_000],
        "ties": [5_000_000] * 50 + [5_000_001] * 3,
        "spread": list(rng.integers(1, 10**11, size=997)),
        "lognormal": list(np.maximum(1, rng.lognormal(15, 2, size=5000)).astype(np.int64)),
    }
    rows = []
    for name, values in groups.items():
        for i, value in enumerate(values):
            mid = f"{name}-{i}"
            rows.append(receipt(mid, "ACCEPTED", T, campaign=name))
            rows.append(receipt(mid, "DELIVERED", T + timedelta(microseconds=int(value)), campaign=name))
    layout.atomic_write_bytes(layout.partition_dir(tmp_path, "2026-11-17") / "w.parquet",
                              parquet_bytes([r for r in rows if r["created"].day == 17]))
    layout.atomic_write_bytes(layout.partition_dir(tmp_path, "2026-11-18") / "w.parquet",
                              parquet_bytes([r for r in rows if r["created"].day != 17]))
    derive.rebuild_derived(tmp_path, now=NOW)
    with Store(tmp_path) as store, BaselineStore(tmp_path, materialize=True) as base:
        got, want = q.latency_by_campaign(store, Filters()), q.latency_by_campaign(base, Filters())
        pd.testing.assert_frame_equal(got, want, check_exact=True)
        pd.testing.assert_frame_equal(q.kpis(store, Filters()), q.kpis(base, Filters()), check_exact=True)
        distribution = q.latency_distribution(store, Filters(), by_campaign=True)
    one = got.set_index("campaign").loc["one"]
    assert one["p50_s"] == one["p99_s"] == 1.5
    assert got.set_index("campaign").loc["two", "p90_s"] == pytest.approx(0.001 + (9.0 - 0.001) * 0.9, rel=1e-15)
    # Every latency lies in exactly one bucket [from, to), buckets are about 2 % wide.
    for name, values in groups.items():
        buckets = distribution[distribution["campaign"] == name]
        seconds = np.asarray(values, dtype=np.int64) / 1e6
        assert buckets["messages"].sum() == len(values) and buckets["cumulative_share"].iloc[-1] == 1.0
        inside = [int(((seconds >= lo) & (seconds < hi)).sum()) for lo, hi in zip(buckets["from_s"], buckets["to_s"])]
        assert inside == buckets["messages"].tolist()
        assert ((buckets["to_s"] - buckets["from_s"]) / buckets["from_s"] <= 1 / 32 + 1e-9)[buckets["from_s"] >= 32e-6].all()
