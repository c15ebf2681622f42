"""Mobivate send records: the API client against the fake API over real HTTP (paging, retries,
auth, malformed pages), the idempotent sync into the store, names import, and privacy (no full
number or message text in any stored file by default; lookups through the keyed hash)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dlrlens import fake_mobivate as fm
from dlrlens.mobivate import (MalformedPage, MobivateAuthError, MobivateClient, MobivateError, MobivateSettings,
                              Retry, retry_after_seconds)
from dlrlens.store import pseudonym, sends
from tests.support.servers import REPO

UTC = timezone.utc
START = datetime(2026, 11, 2, tzinfo=UTC)
KEY = "test-key"


@pytest.fixture()
def fake():
    records, campaigns = fm.generate_records(250, START, START + timedelta(days=2), seed=3)
    with fm.FakeServer(fm.create_app(records, campaigns, api_key=KEY)) as server:
        server.records, server.campaigns = records, campaigns
        yield server


def client_for(server, key=KEY, sleeps=None, **options) -> MobivateClient:
    sleeps = [] if sleeps is None else sleeps
    return MobivateClient(key, server.url, server.url, retry=Retry(attempts=4, sleep=sleeps.append), **options)


def log_ids(client, start=START, end=START + timedelta(days=2), page_size=100, **kw) -> list[str]:
    return [r["id"] for page in client.message_log(start, end, page_size=page_size, **kw) for r in page]


def stored(data_dir: Path, sql: str):
    return duckdb.connect().execute(sql.format(sends=sends.sends_sql(data_dir), names=sends.names_sql(data_dir))).fetchall()


# --------------------------------------------------------------------------- paging


def test_paging_reads_every_record_once_and_stops_on_a_short_page(fake):
    client = client_for(fake)
    assert log_ids(client) == [r["id"] for r in fake.records]
    assert client.calls == 3  # 100 + 100 + 50


def test_an_exact_multiple_of_the_page_size_ends_on_an_empty_page(fake):
    client = client_for(fake)
    assert log_ids(client, page_size=50) == [r["id"] for r in fake.records]
    pages = [q for path, q in fake.app.config["CALLS"] if path == "/message"]
    assert len(pages) == 6 and "page=6" in pages[-1]


def test_a_page_that_changes_between_calls_duplicates_but_never_loses_a_record(fake, tmp_path):
    fake.switches.insert_after_first_page = True
    ids = log_ids(client_for(fake))
    assert set(ids) >= {r["id"] for r in fake.records} and len(ids) > len(set(ids))
    fake.app.config["SWITCHES"] = fm.Switches(duplicate_every=7)
    sends.sync(tmp_path, client_for(fake), START.date(), START.date() + timedelta(days=1), page_size=100)
    (count, distinct), = stored(tmp_path, "SELECT count(*), count(DISTINCT message_id) FROM {sends} WHERE source = 'log'")
    assert count == distinct == len(fake.records) + 1


def test_campaigns_and_both_history_shapes_page_by_offset(fake):
    client = client_for(fake)
    assert [c["id"] for page in client.campaigns(START.date(), START.date(), limit=3) for c in page] == \
        [c["id"] for c in fake.campaigns]
    documented = [r for page in client.history(START.date(), START.date() + timedelta(days=2), limit=64) for r in page]
    fake.switches.history_shape = "observed"
    observed = [r for page in client.history(START.date(), START.date() + timedelta(days=2), limit=64) for r in page]
    assert [r["id"] for r in documented] == [r["id"] for r in observed]
    assert "sent_on" in documented[0] and "price" in observed[0]


def test_no_newer_api_url_means_no_call_to_it(fake):
    client = MobivateClient(KEY, fake.url, "")
    assert list(client.campaigns(START.date(), START.date())) == []
    assert fake.app.config["CALLS"] == []


# --------------------------------------------------------------------------- errors


def test_401_and_403_name_the_key_problem_without_the_key(fake):
    for status in (401, 403):
        fake.switches.statuses = [status]
        with pytest.raises(MobivateAuthError) as error:
            log_ids(client_for(fake))
        assert "MOBIVATE_API_KEY" in str(error.value) and KEY not in str(error.value)
    with pytest.raises(MobivateAuthError):
        log_ids(client_for(fake, key="wrong-secret-123"))
    with pytest.raises(MobivateAuthError, match="MOBIVATE_API_KEY"):
        MobivateClient("", fake.url)


def test_429_waits_retry_after_and_5xx_back_off_then_succeed(fake):
    fake.switches.statuses = [429, 500, 503]
    fake.switches.retry_after = "7"
    sleeps: list[float] = []
    client = client_for(fake, sleeps=sleeps)
    assert len(log_ids(client)) == len(fake.records)
    assert sleeps[0] == 7.0 and len(sleeps) == 3 and all(0 <= s <= 30 for s in sleeps)
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", 1.0) == 0.0  # a date in the past
    assert retry_after_seconds("nonsense", 2.5) == 2.5 and retry_after_seconds("100000", 1) == 300.0


def test_persistent_5xx_gives_up_with_a_clear_error(fake):
    fake.switches.statuses = [500] * 10
    with pytest.raises(MobivateError, match="500 after 4 attempts"):
        log_ids(client_for(fake))


def test_a_slow_answer_times_out_and_is_retried(fake):
    fake.switches.slow_calls, fake.switches.slow_seconds = 1, 1.0
    sleeps: list[float] = []
    client = client_for(fake, sleeps=sleeps, timeout=(1.0, 0.3))
    assert len(log_ids(client)) == len(fake.records) and len(sleeps) == 1


def test_a_malformed_page_is_reported_and_skipped_never_half_stored(fake, tmp_path):
    fake.switches.malformed = ["/message:2"]
    fake.switches.bad_record_pages = ["/message:3"]
    day = START.date()
    result = sends.sync(tmp_path, client_for(fake), day, day, page_size=50)
    assert len(result.bad_pages) == 2
    assert any("not JSON" in e for e in result.bad_pages) and any("record 0" in e for e in result.bad_pages)
    (count,), = stored(tmp_path, "SELECT count(*) FROM {sends} WHERE source = 'log'")
    on_day = sum(r["created"].startswith(day.isoformat()) for r in fake.records)
    assert on_day == 125 and count == 50  # pages 2 and 3 (a bad record) left out whole: page 1 only
    status = sends.sync_status(tmp_path)
    assert status["last_result"]["bad_pages"] == 2 and "last_error" not in status


def test_malformed_pages_in_a_row_stop_with_an_error(fake):
    fake.switches.malformed = [f"/message:{p}" for p in range(1, 6)]
    errors: list[MalformedPage] = []
    with pytest.raises(MobivateError, match="malformed pages in a row"):
        log_ids(client_for(fake), on_malformed=errors.append)
    assert len(errors) == 3


# --------------------------------------------------------------------------- storing


def test_syncing_a_window_twice_changes_nothing(fake, tmp_path):
    day = START.date()
    first = sends.sync(tmp_path, client_for(fake), day, day + timedelta(days=1))
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.parquet")}
    content = {p: p.read_bytes() for p in before}
    again = sends.sync(tmp_path, client_for(fake), day, day + timedelta(days=1))
    assert first.files_changed > 0 and again.files_changed == 0
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.parquet")} == before
    assert {p: p.read_bytes() for p in before} == content
    # An overlapping later window adds nothing twice either.
    sends.sync(tmp_path, client_for(fake), day + timedelta(days=1), day + timedelta(days=2))
    (count, distinct), = stored(tmp_path, "SELECT count(*), count(DISTINCT message_id) FROM {sends}")
    assert count == distinct == len(fake.records)


def test_a_later_modified_record_replaces_the_stored_one(tmp_path):
    converter = sends.RecordConverter(pseudonym.installation_key(tmp_path))
    record = {"id": "A" * 32, "created": "2026-11-02T10:00:00+0000", "modified": "2026-11-02T10:00:05+0000",
              "recipient": "447911123456", "status": "SENT", "direction": "MT", "cost": 0.01, "currency": "gbp"}
    sends.store_rows(tmp_path, converter.page([record], "log"))
    newer = dict(record, modified="2026-11-02T10:01:00+0000", status="DELIVERED", cost=0.02)
    older = dict(record, modified="2026-11-02T09:00:00+0000", status="FAILED")
    assert sends.store_rows(tmp_path, converter.page([newer, older], "log")) == 1
    assert stored(tmp_path, "SELECT status, cost, currency FROM {sends}") == [("DELIVERED", 0.02, "GBP")]


def test_a_changed_record_is_stamped_after_every_stamp_of_its_file(tmp_path):
    """changed_at grows within a file even when the clock steps back (the derived state absorbs
    a replaced file's records stamped after the latest it read); unchanged records keep theirs."""
    converter = sends.RecordConverter(pseudonym.installation_key(tmp_path))
    base = {"created": "2026-11-02T10:00:00+0000", "modified": "2026-11-02T10:00:05+0000", "recipient": "447911123456",
            "status": "SENT", "direction": "MT", "cost": 0.01, "currency": "GBP"}
    sends.store_rows(tmp_path, converter.page([dict(base, id="A" * 32), dict(base, id="B" * 32)], "log"))
    path = sends.day_path(tmp_path, "log", START.date())
    table = pq.read_table(path)
    future = datetime(2100, 1, 1, tzinfo=timezone.utc)  # a stamp from a clock far ahead
    table = table.set_column(table.schema.get_field_index("changed_at"), "changed_at",
                             pa.array([future, future], sends.UTC_TIMESTAMP))
    pq.write_table(table, path)
    changed = dict(base, id="B" * 32, modified="2026-11-02T10:09:00+0000", status="DELIVERED")
    assert sends.store_rows(tmp_path, converter.page([changed, dict(base, id="A" * 32)], "log")) == 1
    stamps = dict(stored(tmp_path, "SELECT message_id, changed_at FROM {sends}"))
    assert stamps["A" * 32] == future and stamps["B" * 32] == future + timedelta(microseconds=1)


def test_sync_state_records_an_auth_failure(fake, tmp_path):
    fake.switches.statuses = [401]
    with pytest.raises(MobivateAuthError):
        sends.sync(tmp_path, client_for(fake), START.date(), START.date())
    status = sends.sync_status(tmp_path)
    assert "401" in status["auth_error"] and status["consecutive_failures"] == 1 and status["last_error_at"]
    sends.sync(tmp_path, client_for(fake), START.date(), START.date())
    status = sends.sync_status(tmp_path)
    assert status["auth_error"] is None and status["last_success_at"] and status["consecutive_failures"] == 0


# --------------------------------------------------------------------------- country, network, privacy


def test_country_and_network_from_several_countries_and_an_unparseable_number(tmp_path):
    cases = {"447911123456": ("GG", None), "447700900123": ("GB", None), "61412555123": ("AU", "Telstra"),
             "27825551234": ("ZA", "Vodacom"), "4915112345678": ("DE", "T-Mobile"), "+1 201-555-0123": ("US", None),
             fm.UNPARSEABLE_NUMBER: (None, None), "not a number": (None, None)}
    for number, (country, _) in cases.items():
        parsed = pseudonym.parse_number(number)
        assert parsed.country == country, number
    assert pseudonym.parse_number("61412555123").network  # a carrier the library knows for the prefix
    assert pseudonym.parse_number("27825551234").network == "Vodacom"
    assert pseudonym.parse_number(None) is None and pseudonym.parse_number("  ") is None


def test_no_full_number_or_text_in_any_stored_file_by_default_and_lookup_by_hash(fake, tmp_path):
    sends.sync(tmp_path, client_for(fake), START.date(), START.date() + timedelta(days=1))
    numbers = {r["recipient"] for r in fake.records if len(r["recipient"]) > 7}
    blob = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    import pyarrow.parquet as pq
    text = "\n".join(str(pq.read_table(p).to_pylist()) for p in tmp_path.rglob("*.parquet"))
    assert not any(n in text or n.encode() in blob for n in numbers)
    assert "must never be stored" not in text
    countries = {c for (c,) in stored(tmp_path, "SELECT DISTINCT country FROM {sends}")}
    assert {"GB", "US", "DE", "AU", "ZA", "FR"} <= countries and None in countries
    target = next(r for r in fake.records if r["recipient"].startswith("2782"))
    typed = "+" + target["recipient"][:2] + " " + target["recipient"][2:]  # as a user would type it
    found = stored(tmp_path, "SELECT message_id, recipient_masked FROM {sends} WHERE recipient_hash = '"
                   + pseudonym.number_hash(tmp_path, typed) + "'")
    assert target["id"] in [m for m, _ in found] and all("****" in masked for _, masked in found)
    assert oct((tmp_path / pseudonym.KEY_PATH).stat().st_mode & 0o777) == "0o600"


def test_keep_recipient_keeps_the_full_number(fake, tmp_path):
    sends.sync(tmp_path, client_for(fake), START.date(), START.date(), keep_recipient=True)
    kept = {r for (r,) in stored(tmp_path, "SELECT recipient FROM {sends} WHERE recipient IS NOT NULL")}
    assert kept and kept <= {pseudonym.canonical_number(r["recipient"]) for r in fake.records}


def test_settings_come_from_the_environment_and_name_a_bad_variable():
    assert not MobivateSettings.from_env({}).configured
    settings = MobivateSettings.from_env({"MOBIVATE_API_KEY": "k", "DLRLENS_KEEP_RECIPIENT": "yes",
                                          "DLRLENS_RECEIPTS_MISSING_AFTER": "12h"})
    assert settings.configured and settings.keep_recipient and settings.receipts_missing_after == 43200
    with pytest.raises(ValueError, match="DLRLENS_MOBIVATE_MESSAGES_URL"):
        MobivateSettings.from_env({"DLRLENS_MOBIVATE_MESSAGES_URL": "ftp://x"})


# --------------------------------------------------------------------------- names


def test_names_import_is_all_or_nothing_with_line_numbers(tmp_path):
    bad = "batch_id,name\nb1,Spring sale\n,no id\nb2,\nb3,a,b\nb1,Other name\n"
    result = sends.import_names(tmp_path, bad)
    assert [e.split(":")[0] for e in result.errors] == ["line 3", "line 4", "line 5", "line 6"]
    assert not (tmp_path / sends.IMPORTED_NAMES).exists()
    assert sends.import_names(tmp_path, "id,title\nx,y\n").errors[0].startswith("line 1")
    assert not sends.import_names(tmp_path, "batch_id,name\nb1,Spring sale\nb2,Black Friday\n").errors
    assert sends.import_names(tmp_path, "batch_id,name\nb2,Black Friday 2026\n").names
    assert sorted(stored(tmp_path, "SELECT * FROM {names}")) == [("b1", "Spring sale"), ("b2", "Black Friday 2026")]


def test_an_imported_name_wins_over_mobivates(fake, tmp_path):
    sends.sync(tmp_path, client_for(fake), START.date(), START.date())
    first = fake.campaigns[0]["id"]
    sends.import_names(tmp_path, f"batch_id,name\n{first},Mine\n")
    names = dict(stored(tmp_path, "SELECT * FROM {names}"))
    assert names[first] == "Mine" and names[fake.campaigns[1]["id"]] == "Campaign 2"


# --------------------------------------------------------------------------- command line


def run_cli(*args, env=None, cwd=None):
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith(("DLRLENS_", "MOBIVATE_"))}
    return subprocess.run([sys.executable, "-m", "dlrlens", *args], capture_output=True, text=True,
                          env=base | (env or {}), cwd=cwd or REPO, timeout=120)


def test_the_sync_command_reports_progress_auth_errors_and_bad_input(fake, tmp_path):
    env = {"MOBIVATE_API_KEY": KEY, "DLRLENS_MOBIVATE_URL": fake.url, "DLRLENS_MOBIVATE_MESSAGES_URL": fake.url}
    done = run_cli("sync", "--from", "2026-11-02", "--to", "2026-11-03", "--data", str(tmp_path), env=env)
    assert done.returncode == 0, done.stderr
    assert "2026-11-02:" in done.stderr and "records/s" in done.stdout
    assert f"{len(fake.records)}" in done.stderr.splitlines()[-1] or "send records" in done.stdout
    wrong = run_cli("sync", "--from", "2026-11-02", "--to", "2026-11-02", "--data", str(tmp_path),
                    env=env | {"MOBIVATE_API_KEY": "wrong-key-xyz"})
    assert wrong.returncode == 3 and "MOBIVATE_API_KEY" in wrong.stderr and "wrong-key-xyz" not in wrong.stderr
    missing = run_cli("sync", "--from", "2026-11-02", "--to", "2026-11-02", "--data", str(tmp_path))
    assert missing.returncode == 2 and "MOBIVATE_API_KEY" in missing.stderr
    backwards = run_cli("sync", "--from", "2026-11-03", "--to", "2026-11-02", "--data", str(tmp_path), env=env)
    assert backwards.returncode == 2 and "before" in backwards.stderr
    bad_day = run_cli("sync", "--from", "yesterday", "--to", "2026-11-02", env=env)
    assert bad_day.returncode == 2 and "YYYY-MM-DD" in bad_day.stderr


def test_the_campaigns_import_command(tmp_path):
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    good.write_text("batch_id,name\nb1,Spring\n")
    bad.write_text("batch_id,name\nb1,\n")
    data = tmp_path / "data"
    failed = run_cli("campaigns", "import", str(bad), "--data", str(data))
    assert failed.returncode == 2 and "line 2" in failed.stderr and "nothing imported" in failed.stderr
    done = run_cli("campaigns", "import", str(good), "--data", str(data))
    assert done.returncode == 0 and "imported 1" in done.stdout
    assert json.loads(json.dumps(stored(data, "SELECT * FROM {names}"))) == [["b1", "Spring"]]


# --------------------------------------------------------------------------- periodic sync


def test_periodic_sync_reads_recent_days_and_backs_off_after_failures(fake, tmp_path):
    settings = MobivateSettings(api_key=KEY, mobivate_url=fake.url, mobivate_messages_url=fake.url,
                                sync_seconds=60, sync_days=3)
    now = START + timedelta(days=1, hours=5)
    done = sends.periodic_sync(tmp_path, settings, now=now, client=client_for(fake))
    assert done["from"] == "2026-11-01" and done["to"] == "2026-11-03" and done["records"] > 0
    fake.switches.statuses = [500] * 4
    with pytest.raises(MobivateError):
        sends.periodic_sync(tmp_path, settings, now=now, client=client_for(fake))
    failed_at = datetime.fromisoformat(sends.sync_status(tmp_path)["last_error_at"])
    skipped = sends.periodic_sync(tmp_path, settings, now=failed_at + timedelta(seconds=100), client=client_for(fake))
    assert "backing off" in skipped["skipped"]  # 60 s x 2**1 = 120 s after the failure
    retried = sends.periodic_sync(tmp_path, settings, now=failed_at + timedelta(seconds=121), client=client_for(fake))
    assert "skipped" not in retried and sends.sync_status(tmp_path)["consecutive_failures"] == 0


def test_the_maintenance_process_syncs_when_a_key_is_configured(fake, tmp_path, monkeypatch):
    from dlrlens.store import maintenance
    from tests.support.servers import wait_until

    monkeypatch.setenv("MOBIVATE_API_KEY", KEY)
    monkeypatch.setenv("DLRLENS_MOBIVATE_URL", fake.url)
    monkeypatch.setenv("DLRLENS_SYNC_SECONDS", "0.2")
    maintainer = maintenance.start(tmp_path, interval=60, compact_every=0, lock_retry_seconds=0.1)
    try:
        wait_until(lambda: maintainer.runs["sync"] >= 2, timeout=30, what="two periodic syncs")
    finally:
        maintainer.stop()
    assert maintainer.errors["sync"] == 0 and sends.sync_status(tmp_path)["last_success_at"]
    monkeypatch.delenv("MOBIVATE_API_KEY")
    assert maintenance.Maintainer(tmp_path).sync_settings is None  # no key: nothing talks to Mobivate
