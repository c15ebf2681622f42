"""Generate a large receipt data set in the collector's exact layout, for the scale benchmarks.

    python3 -m tests.benchmarks.generate --receipts 100000000 --out DIR
        [--days 90 --campaigns 200 --seed 1 --end 2026-11-30T12:00:00Z --recent-days 2 --recent-files 3000]
        [--clicks 50000]

What it writes (``DIR/receipts/date=YYYY-MM-DD/*.parquet``, schema ``dlrlens.store.layout.RECEIPT_SCHEMA``):

* ~``receipts / 2.5`` messages sent uniformly over ``days`` days ending at ``--end`` (default:
  now, to the minute), each with 32-hex upper-case ids like Mobivate's;
* per message: ACCEPTED at the send (1 % of messages have only their DELIVERED receipt),
  an INTERIM_* receipt for half of them, then a final receipt after a lognormal delay
  (median ~6 s) - about 90 % delivered, 6.5 % failed (weighted reasons), 1 % unknown (5 % of
  those with the unrecognised status CARRIER_LOST), the rest still pending; 0.5 % get a
  second final receipt (final after final), 0.3 % a RETRY after their final (a regression),
  0.5 % their final 1-5 days after the send (late finals, landing in later partitions);
* webhook lag lognormal (median 1.5 s), 5 % arriving minutes late (out of order), 1.5 %
  of receipts stored twice (a Mobivate retry: same receipt_id, later received_at);
* campaign labels on 95 % of the messages (about 20 campaigns active per day, skewed),
  the others only have their batch_id (one batch per campaign and day); ``labels`` holds
  the webhook query parameters;
* nothing created or received after ``--end`` (those receipts have not happened yet);
* with ``--clicks N``: N short-URL clicks (``DIR/clicks/date=.../clicks.parquet``, one file a day,
  :data:`dlrlens.store.layout.CLICK_SCHEMA`) on messages picked uniformly, a lognormal delay
  (median 4 min) after their send, 2 % on unknown messages (unlinked); and N / 10 replies
  (``DIR/replies/...``), a third of them STOP.

Older days are written as after compaction: one file per day (``c-<time_ns>.parquet``),
sorted by (delivery_message_id, created), zstd, dictionary encoding. The last
``--recent-days`` days are written as the flusher writes them: many small files
(``w00N-<segment>.parquet``), one per (60-ish-second receive window, writer slot, day).

Generation is SQL in DuckDB (deterministic hashes of the message number and the seed), one
sent day at a time, so memory stays bounded; files are written by pyarrow with the
contract schema (DuckDB's own writer marks columns without nulls as required).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from dlrlens.store import layout

UTC = timezone.utc
DAY_US = 86_400_000_000
RECEIPTS_PER_MESSAGE = 2.51  # the expected value of the mix below, duplicates included
ACTIVE_CAMPAIGNS_PER_DAY = 20
PARQUET_OPTIONS = dict(compression="zstd", compression_level=3, use_dictionary=True, write_statistics=True)

FAILURES = [("EXPIRED", 3, 4), ("UNDELIVERABLE", 5, 5), ("REJECTED", 7, 2), ("FAILED_NOROUTE", 12, 2),
            ("FAILED_RECIPIENT_BLACKLISTED", 19, 1), ("FAILED_EXHAUSTED", 24, 1)]


def _failure_case(u: str) -> tuple[str, str]:
    """SQL CASE expressions (status, code) picking a weighted failure reason from uniform ``u``."""
    total = sum(w for _, _, w in FAILURES)
    status, code, acc = ["CASE"], ["CASE"], 0
    for name, number, weight in FAILURES:
        acc += weight
        status.append(f"WHEN {u} < {acc / total} THEN '{name}'")
        code.append(f"WHEN {u} < {acc / total} THEN {number}")
    return " ".join(status) + " END", " ".join(code) + " END"


def messages_sql(seed: int, campaigns: int) -> str:
    """One row per message numbered $lo <= i < $hi, sent in [$t0_us, $t0_us + $span_us)."""
    fail_status, fail_code = _failure_case("u_reason")
    return f"""
    WITH base AS (
        SELECT i,
               u(i, 1) AS u_time, u(i, 2) AS u_camp, u(i, 3) AS u_label, u(i, 4) AS u_out,
               u(i, 5) AS u_reason, u(i, 6) AS u_only, u(i, 7) AS u_interim, u(i, 8) AS u_faf,
               u(i, 9) AS u_reg, u(i, 10) AS u_late, u(i, 11) AS u_ref, u(i, 12) AS u_unknown,
               gauss(i, 13) AS z_delay, u(i, 14) AS u_late_days, u(i, 15) AS u_interim_at,
               u(i, 16) AS u_fmt, u(i, 17) AS u_hlr, u(i, 18) AS u_parts, u(i, 19) AS u_reg_at
        FROM range($lo, $hi) r(i)
    ), m AS (
        SELECT *,
               upper(md5('m-{seed}-' || i)) AS mid,
               ($t0_us + floor((i + u_time) * $span_us / $messages))::BIGINT // 1000 * 1000 AS sent_us,
               u_label >= 0.05 AS labelled,
               u_only < 0.01 AS only_final,
               CASE WHEN u_only < 0.01 THEN 'delivered'
                    WHEN u_out < 0.900 THEN 'delivered' WHEN u_out < 0.965 THEN 'failed'
                    WHEN u_out < 0.975 THEN 'unknown' ELSE 'pending' END AS outcome_plan
        FROM base
    ), m2 AS (
        SELECT *,
               (sent_us // {DAY_US}) AS sent_day,
               (((sent_us // {DAY_US}) * 3 + floor(pow(u_camp, 1.5) * {ACTIVE_CAMPAIGNS_PER_DAY}))::BIGINT
                    % {campaigns}) AS camp,
               greatest(50, exp(ln(6000) + 1.3 * z_delay))::BIGINT * 1000
                 + CASE WHEN u_late < 0.005 THEN (86400 + u_late_days * 4 * 86400)::BIGINT * 1000000 ELSE 0 END
                 AS delay_us
        FROM m
    )
    SELECT m2.*,
           'campaign-' || lpad(camp::VARCHAR, 3, '0') AS campaign_name,
           upper(md5('b-{seed}-' || sent_day || '-' || camp)) AS batch,
           CASE WHEN u_ref < 0.7 THEN 'ref-' || i END AS client_ref,
           CASE outcome_plan WHEN 'delivered' THEN 'DELIVERED' WHEN 'failed' THEN {fail_status}
                WHEN 'unknown' THEN CASE WHEN u_unknown < 0.05 THEN 'CARRIER_LOST' ELSE 'UNKNOWN' END END
               AS final_status,
           CASE outcome_plan WHEN 'delivered' THEN 1 WHEN 'failed' THEN {fail_code}
                WHEN 'unknown' THEN CASE WHEN u_unknown < 0.05 THEN NULL ELSE 6 END END AS final_code
    FROM m2
    """


def receipts_sql(seed: int) -> str:
    """Every stored receipt row of the messages in ``msgs`` (duplicates included), created and
    received before $end_us, with the contract's columns plus ``day`` (UTC day number of created)."""
    return f"""
    WITH slots AS (
        SELECT m.*, s.k FROM msgs m, range(5) s(k)
    ), planned AS (
        SELECT *,
               CASE k WHEN 0 THEN 'ACCEPTED'
                      WHEN 1 THEN CASE WHEN outcome_plan = 'pending' AND u_interim < 0.2 THEN 'RETRY'
                                       WHEN u_interim < 0.25 THEN 'INTERIM_ACKNOWLEDGED' ELSE 'INTERIM_QUEUED' END
                      WHEN 2 THEN CASE WHEN outcome_plan = 'delivered' THEN 'EXPIRED' ELSE 'DELIVERED' END
                      WHEN 3 THEN final_status
                      ELSE 'RETRY' END AS status,
               CASE k WHEN 0 THEN 2
                      WHEN 1 THEN CASE WHEN outcome_plan = 'pending' AND u_interim < 0.2 THEN 10
                                       WHEN u_interim < 0.25 THEN 9 ELSE 8 END
                      WHEN 2 THEN CASE WHEN outcome_plan = 'delivered' THEN 3 ELSE 1 END
                      WHEN 3 THEN final_code
                      ELSE 10 END AS status_code,
               CASE k WHEN 0 THEN 'pending' WHEN 1 THEN 'pending' WHEN 4 THEN 'pending'
                      WHEN 2 THEN CASE WHEN outcome_plan = 'delivered' THEN 'failed' ELSE 'delivered' END
                      ELSE outcome_plan END AS category,
               sent_us + CASE k WHEN 0 THEN 0
                                WHEN 1 THEN (least(delay_us, 60000000) * (0.1 + 0.5 * u_interim_at))::BIGINT
                                WHEN 2 THEN delay_us // 2
                                WHEN 3 THEN delay_us
                                ELSE delay_us + (1 + u_reg_at * 59)::BIGINT * 1000000 END
                 // 1000 * 1000 AS created_us
        FROM slots
        WHERE CASE k WHEN 0 THEN NOT only_final
                     WHEN 1 THEN NOT only_final AND u_interim < 0.5
                     WHEN 2 THEN outcome_plan IN ('delivered', 'failed') AND u_faf < 0.005
                     WHEN 3 THEN outcome_plan <> 'pending'
                     ELSE outcome_plan IN ('delivered', 'failed') AND u_reg < 0.003 END
    ), stamped AS (
        SELECT *,
               md5(concat_ws(chr(31), mid, status, coalesce(status_code::VARCHAR, ''),
                             created_us::VARCHAR, '')) AS rid,
               created_us + greatest(50000, exp(ln(1.5e6) + 0.6 * gauss(i * 8 + k, 21)))::BIGINT
                 + CASE WHEN u(i * 8 + k, 22) < 0.05 THEN (60 + u(i * 8 + k, 23) * 840)::BIGINT * 1000000
                        ELSE 0 END AS received_us,
               u(i * 8 + k, 24) AS u_dup, u(i * 8 + k, 25) AS u_dup_at
        FROM planned
    ), copies AS (
        SELECT *, received_us AS stored_received_us FROM stamped
        UNION ALL
        SELECT *, received_us + (5 + u_dup_at * 595)::BIGINT * 1000000 FROM stamped WHERE u_dup < 0.015
    )
    SELECT rid AS receipt_id,
           mid AS delivery_message_id,
           batch AS batch_id,
           client_ref AS client_reference,
           make_timestamp(created_us)::TIMESTAMPTZ AS created,
           make_timestamp(stored_received_us)::TIMESTAMPTZ AS received_at,
           status,
           status_code::INTEGER AS status_code,
           category,
           NULL::INTEGER AS part,
           CASE WHEN u_parts < 0.02 THEN 2 ELSE 1 END::INTEGER AS parts,
           CASE WHEN u_hlr < 0.05 THEN '{{"mcc": "505", "mnc": "01"}}' END AS hlr,
           NULL::VARCHAR AS extra,
           CASE WHEN labelled THEN campaign_name END AS campaign,
           CASE WHEN labelled AND u_label < 0.5 THEN '{{"campaign": "' || campaign_name || '", "env": "prod"}}'
                WHEN labelled THEN '{{"campaign": "' || campaign_name || '"}}'
                ELSE '{{}}' END AS labels,
           CASE WHEN u_fmt < 0.1 THEN 'xml' ELSE 'json' END AS source_format,
           created_us // {DAY_US} AS day,
           stored_received_us AS received_us
    FROM copies
    WHERE created_us < $end_us AND stored_received_us < $end_us
    """


def connect(seed: int) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:", config={"threads": os.cpu_count() or 2})
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    con.execute("SET preserve_insertion_order = false")
    # Uniform [0, 1) and standard normal numbers from (n, k, seed) only: reproducible, parallel.
    con.execute(f"CREATE MACRO u(n, k) AS ((hash(n, k, {seed}) >> 11)::DOUBLE / 9007199254740992.0)")
    con.execute("CREATE MACRO gauss(n, k) AS "
                "(sqrt(-2 * ln(greatest(u(n, k * 2 + 1000), 1e-300))) * cos(2 * pi() * u(n, k * 2 + 1001)))")
    return con


def day_name(day: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=day)).strftime("%Y-%m-%d")


def to_contract(batch: pa.RecordBatch | pa.Table) -> pa.Table:
    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    return table.select(layout.RECEIPT_SCHEMA.names).cast(layout.RECEIPT_SCHEMA)


def write_compacted_day(con, root: Path, day: int, query: str) -> tuple[int, int]:
    """One sorted file for a whole day, as compaction leaves it. Returns (rows, bytes)."""
    target = layout.partition_dir(root, day_name(day)) / f"c-{time.time_ns()}.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    reader = con.sql(query).to_arrow_reader(1 << 20)
    rows = 0
    with pq.ParquetWriter(target, layout.RECEIPT_SCHEMA, **PARQUET_OPTIONS) as writer:
        for batch in reader:
            table = to_contract(batch)
            rows += table.num_rows
            writer.write_table(table, row_group_size=1 << 20)
    if not rows:
        target.unlink()
        return 0, 0
    return rows, target.stat().st_size


def write_flush_files(con, root: Path, query: str, window_us: int) -> tuple[int, int, int]:
    """Small files as the flusher writes them: one per (receive window, writer slot, day),
    named ``w00<slot>-<20-digit time_ns>.parquet``. Returns (rows, files, bytes)."""
    table = con.sql(f"""
        SELECT *, received_us // {window_us} AS recv_window, hash(receipt_id) % 2 AS slot FROM ({query})
        ORDER BY recv_window, slot, day, delivery_message_id, created""").to_arrow_table()
    rows = files = size = 0
    keys = pa.Table.from_arrays([table["recv_window"], table["slot"], table["day"]], names=["w", "s", "d"])
    # Group boundaries of the sorted key columns.
    import numpy as np

    w, s, d = (keys[c].to_numpy() for c in ("w", "s", "d"))
    change = np.flatnonzero((w[1:] != w[:-1]) | (s[1:] != s[:-1]) | (d[1:] != d[:-1])) + 1
    bounds = np.concatenate([[0], change, [len(w)]]) if len(w) else np.array([0])
    for start, stop in zip(bounds[:-1], bounds[1:]):
        part = table.slice(int(start), int(stop - start))
        window, slot, day = int(w[start]), int(s[start]), int(d[start])
        segment = window * window_us * 1000 + slot  # the window's start in ns, like a log segment id
        target = layout.partition_dir(root, day_name(day)) / f"w{slot:03d}-{segment:020d}.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(to_contract(part), target, **PARQUET_OPTIONS)
        rows += part.num_rows
        files += 1
        size += target.stat().st_size
    return rows, files, size


def generate(out: Path, receipts: int, days: int = 90, campaigns: int = 200, seed: int = 1,
             end: datetime | None = None, recent_days: int = 2, recent_files: int = 3000,
             log=print) -> dict:
    """Write the data set under ``out`` (which must not hold receipts yet); return a summary."""
    out = Path(out)
    if layout.receipts_dir(out).exists():
        raise SystemExit(f"{layout.receipts_dir(out)} exists; pick an empty --out")
    end = (end or datetime.now(UTC)).astimezone(UTC).replace(second=0, microsecond=0)
    end_us = int(end.timestamp() * 1_000_000)
    t0_us = end_us - days * DAY_US
    messages = max(1, round(receipts / RECEIPTS_PER_MESSAGE))
    first_day, last_day = t0_us // DAY_US, (end_us - 1) // DAY_US
    recent_from_day = last_day - recent_days + 1
    window_us = max(1_000_000, recent_days * DAY_US * 2 // max(recent_files, 1))
    con = connect(seed)
    started = time.perf_counter()
    totals = dict(rows=0, files=0, bytes=0)
    msgs_sql, rec_sql = messages_sql(seed, campaigns), receipts_sql(seed)
    recent_parts = []
    spill_ready = False
    for day in range(first_day, last_day + 1):
        # Messages sent on this UTC day (the index range whose send time falls in it).
        lo = max(0, -(-((day * DAY_US - t0_us) * messages) // (days * DAY_US)) - 1)
        hi = min(messages, ((day + 1) * DAY_US - t0_us) * messages // (days * DAY_US) + 1)
        con.execute(f"CREATE OR REPLACE TABLE msgs AS SELECT * FROM ({msgs_sql}) "
                    f"WHERE sent_us // {DAY_US} = {day}",
                    dict(t0_us=t0_us, span_us=days * DAY_US, messages=messages, lo=lo, hi=hi))
        con.execute(f"CREATE OR REPLACE TABLE chunk AS {rec_sql}", {"end_us": end_us})
        if not spill_ready:
            con.execute("CREATE TABLE spill AS SELECT * FROM chunk WHERE FALSE")
            spill_ready = True
        con.execute(f"INSERT INTO spill SELECT * FROM chunk WHERE day > {day}")
        day_rows = (f"SELECT * FROM chunk WHERE day = {day} UNION ALL "
                    f"SELECT * FROM spill WHERE day = {day}")
        if day >= recent_from_day:
            con.execute(f"CREATE OR REPLACE TABLE recent_{day} AS {day_rows}")
            recent_parts.append(f"SELECT * FROM recent_{day}")
        else:
            rows, size = write_compacted_day(
                con, out, day, f"SELECT * EXCLUDE (day, received_us) FROM ({day_rows}) "
                               f"ORDER BY delivery_message_id, created")
            totals["rows"] += rows
            totals["files"] += 1 if rows else 0
            totals["bytes"] += size
        con.execute(f"DELETE FROM spill WHERE day = {day}")
        if (day - first_day) % 10 == 0:
            log(f"generate: day {day_name(day)} done, {totals['rows']:,} rows so far "
                f"({time.perf_counter() - started:.0f} s)")
    if recent_parts:
        rows, files, size = write_flush_files(con, out, " UNION ALL ".join(recent_parts), window_us)
        totals["rows"] += rows
        totals["files"] += files
        totals["bytes"] += size
    con.close()
    summary = dict(receipts=totals["rows"], messages=messages, files=totals["files"], bytes=totals["bytes"],
                   bytes_per_receipt=totals["bytes"] / max(totals["rows"], 1), seconds=time.perf_counter() - started,
                   start=datetime.fromtimestamp(t0_us / 1e6, UTC).isoformat(), end=end.isoformat(),
                   days=days, campaigns=campaigns, seed=seed)
    (out / "generated.json").write_text(json.dumps(summary, indent=2))
    return summary


def generate_events(out: Path, clicks: int, seed: int = 1) -> dict:
    """``clicks`` clicks and ``clicks // 10`` replies for the messages of the data set in ``out``
    (its ``generated.json``: the message count, seed and time span), written per UTC day."""
    meta = json.loads((Path(out) / "generated.json").read_text())
    messages = meta["messages"]
    t0_us = int(datetime.fromisoformat(meta["start"]).timestamp() * 1e6)
    end_us = int(datetime.fromisoformat(meta["end"]).timestamp() * 1e6)
    con = connect(seed)
    message = f"upper(md5('m-{meta['seed']}-' || floor(u(k, 1) * {messages})::BIGINT))"
    sent_us = f"({t0_us} + floor(u(k, 1) * {messages}) * {end_us - t0_us} / {messages})::BIGINT"
    at_us = f"({sent_us} + exp(ln(240) + 1.4 * gauss(k, 2)) * 1000000)::BIGINT"
    queries = {
        "clicks": f"""
            SELECT md5('c-{seed}-' || k)[:32] AS click_id, make_timestamp({at_us}) AS received_at,
                   CASE WHEN u(k, 3) < 0.02 THEN upper(md5('ghost-' || k)) ELSE {message} END AS message_id,
                   NULL::VARCHAR AS batch_id, NULL::VARCHAR AS client_ref,
                   'https://shop.example.com/p' || (k % 20) AS url,
                   CASE WHEN u(k, 4) < 0.55 THEN 'Chrome' ELSE 'Safari' END AS browser,
                   CASE WHEN u(k, 4) < 0.55 THEN 'Android' ELSE 'iOS' END AS os,
                   CASE WHEN u(k, 5) < 0.8 THEN 'United Kingdom' ELSE 'France' END AS country,
                   CASE WHEN u(k, 5) < 0.8 THEN 'UK' ELSE 'FR' END AS iso2l,
                   md5('n-' || (k % 100000)) || md5('x') AS mobile_hash, '44770****123' AS mobile_masked,
                   NULL::VARCHAR AS mobile, NULL::VARCHAR AS ip_address, NULL::VARCHAR AS extra,
                   NULL::VARCHAR AS campaign, '{{}}' AS labels, ({at_us}) // {DAY_US} AS day
            FROM range({clicks}) r(k) WHERE {at_us} < {end_us}""",
        "replies": f"""
            SELECT md5('r-{seed}-' || k)[:32] AS reply_id, make_timestamp({at_us}) AS created,
                   make_timestamp({at_us} + 2000000) AS received_at,
                   CASE WHEN u(k, 3) < 0.02 THEN upper(md5('ghost-' || k)) ELSE {message} END AS in_reply_to,
                   NULL::VARCHAR AS logical_message_id, '60777' AS recipient,
                   CASE WHEN u(k, 6) < 0.33 THEN 'STOP' ELSE 'Thanks' END AS body,
                   md5('n-' || k) || md5('y') AS originator_hash, '44770****456' AS originator_masked,
                   NULL::VARCHAR AS originator, 'U1' AS owner_user_id, NULL::VARCHAR AS extra,
                   NULL::VARCHAR AS campaign, '{{}}' AS labels, ({at_us}) // {DAY_US} AS day
            FROM range({clicks // 10}) r(k) WHERE {at_us} + 2000000 < {end_us}""",
    }
    written = {}
    for table, query in queries.items():
        spec = layout.TABLES[table]
        rows = con.sql(f"SELECT * FROM ({query}) ORDER BY day").to_arrow_table()
        days = rows["day"].to_numpy() if rows.num_rows else []
        import numpy as np

        bounds = np.concatenate([[0], np.flatnonzero(days[1:] != days[:-1]) + 1, [len(days)]]) if len(days) else []
        for start, stop in zip(bounds[:-1], bounds[1:]):
            part = rows.slice(int(start), int(stop - start)).select(spec.schema.names).cast(spec.schema)
            target = layout.table_partition_dir(out, table, day_name(int(days[start]))) / f"{table}.parquet"
            target.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(part, target, **PARQUET_OPTIONS)
        written[table] = rows.num_rows
    con.close()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--receipts", type=int, default=1_000_000, help="stored receipt rows wanted (about)")
    parser.add_argument("--out", type=Path, required=True, help="data directory to create")
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--campaigns", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--end", type=lambda s: datetime.fromisoformat(s.replace("Z", "+00:00")),
                        default=None, help="end of the data (ISO time, default now)")
    parser.add_argument("--recent-days", type=int, default=2, help="days written as small flush files")
    parser.add_argument("--recent-files", type=int, default=3000, help="about how many small files")
    parser.add_argument("--clicks", type=int, default=0, help="short-URL clicks to add (and a tenth as many replies)")
    args = parser.parse_args(argv)
    free = shutil.disk_usage(args.out.parent if args.out.parent.exists() else Path.cwd()).free
    need = args.receipts * 40  # generous: ~25 B/receipt on disk plus working space
    if free < need:
        print(f"generate: only {free / 1e9:.1f} GB free, want {need / 1e9:.1f} GB", file=sys.stderr)
        return 1
    summary = generate(args.out, args.receipts, args.days, args.campaigns, args.seed, args.end,
                       args.recent_days, args.recent_files)
    if args.clicks:
        summary["events"] = generate_events(args.out, args.clicks, args.seed)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
