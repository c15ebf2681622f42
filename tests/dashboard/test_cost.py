"""Cost, currency, receipts missing, names and "Where" figures over Mobivate's send records
joined to the receipts, against an independent plain-pandas computation on a generated stream
(receipts for most log records, receipts with no record, records with no receipt, two
currencies, several countries, an unparseable number, imported and Mobivate names)."""

from __future__ import annotations

import math
from pathlib import Path
import random
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from dashboard import queries
from dashboard.queries import Filters, Store
from dlrlens import fake_mobivate as fm
from dlrlens.mobivate import MobivateClient, Retry
from dlrlens.store import pseudonym, sends
from tests.support.factory import receipt, write_receipts

UTC = timezone.utc
START = datetime(2026, 11, 2, tzinfo=UTC)
NOW = START + timedelta(days=5)
FINALS = [("DELIVERED", "delivered"), ("UNDELIVERABLE", "failed"), ("EXPIRED", "failed"), ("UNKNOWN", "unknown")]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A data directory with receipts and synced send records, and the plain truth of it."""
    data = tmp_path_factory.mktemp("cost")
    records, campaigns = fm.generate_records(600, START, START + timedelta(days=2), seed=11)
    rng = random.Random(5)
    rows, truth = [], []
    mt = [r for r in records if r["direction"] == "MT"]
    for i, record in enumerate(mt):
        created = sends.parse_time(record["created"])
        if i % 9 == 0:  # a message whose receipts never arrived
            truth.append(dict(id=record["id"], has_receipt=False, label=None, batch=None, sent=created,
                              outcome=None, delivered_at=None))
            continue
        label = "promo-label" if i % 13 == 0 else None
        batch = record["campaignId"] if i % 17 else None
        first = created + timedelta(seconds=rng.randint(1, 30))
        steps = [("ACCEPTED", first)]
        outcome, delivered_at = "pending", None
        if i % 11:
            status, outcome = FINALS[rng.randrange(len(FINALS))]
            final_at = first + timedelta(seconds=rng.randint(1, 600))
            steps.append((status, final_at))
            delivered_at = final_at if outcome == "delivered" else None
        rows += [receipt(record["id"], status, at, campaign=label, batch_id=batch) for status, at in steps]
        rows.append(rows[-1])  # a duplicate receipt changes nothing
        truth.append(dict(id=record["id"], has_receipt=True, label=label, batch=batch, sent=first,
                          outcome=outcome, delivered_at=delivered_at))
    for k in range(15):  # receipts with no log record
        at = START + timedelta(hours=k)
        rows.append(receipt(f"NOLOG{k:027d}", "DELIVERED", at, batch_id=campaigns[0]["id"]))
        truth.append(dict(id=f"NOLOG{k:027d}", has_receipt=True, label=None, batch=campaigns[0]["id"],
                          sent=at, outcome="delivered", delivered_at=at))
    write_receipts(data, rows)
    with fm.FakeServer(fm.create_app(records, campaigns, api_key="k")) as server:
        client = MobivateClient("k", server.url, server.url, retry=Retry(sleep=lambda s: None))
        sends.sync(data, client, START.date(), (START + timedelta(days=2)).date())
    sends.import_names(data, f"batch_id,name\n{campaigns[1]['id']},Imported name\n")
    names = {c["id"]: c["name"] for c in campaigns} | {campaigns[1]["id"]: "Imported name"}
    log = {r["id"]: r for r in mt}
    frame = pd.DataFrame(truth)

    def campaign(row):
        record = log.get(row.id)
        cid = record["campaignId"] if record and not row.has_receipt else None
        for value in (row.label, names.get(row.batch), names.get(cid), row.batch, cid):
            if isinstance(value, str) and value:
                return value
        return "(none)"
    frame["campaign"] = frame.apply(campaign, axis=1)
    frame["in_log"] = frame["id"].isin(log)
    frame["cost"] = frame["id"].map(lambda i: log[i]["cost"] if i in log else None)
    frame["currency"] = frame["id"].map(lambda i: log[i]["currency"] if i in log else None)
    frame["log_created"] = frame["id"].map(lambda i: sends.parse_time(log[i]["created"]) if i in log else None)
    frame["country"] = frame["id"].map(
        lambda i: (pseudonym.parse_number(log[i]["recipient"]).country if i in log else None) or "(unknown)")
    store = Store(data)
    yield store, frame, records
    store.close()


def expected_cost(frame: pd.DataFrame, group: str) -> pd.DataFrame:
    rows = []
    missing_before = NOW - timedelta(hours=24)
    for key, part in frame.groupby(group, dropna=False):
        without_cost = int((part.has_receipt & ~part.in_log).sum())
        currencies = sorted(part.currency.dropna().unique())
        for currency in currencies or [None]:
            sub = part[part.currency == currency] if currency else part[part.currency.isna()]
            delivered = int((sub.outcome == "delivered").sum())
            cost = sub.cost.sum() if currency else math.nan
            rows.append({group: key, "currency": currency, "messages": int(sub.has_receipt.sum()),
                         "delivered": delivered, "cost": cost,
                         "cost_per_delivered": cost / delivered if delivered else math.nan,
                         "failed_cost": sub[sub.outcome.isin(["failed", "unknown"])].cost.sum()
                         if currency and sub.outcome.isin(["failed", "unknown"]).any() else math.nan,
                         "messages_without_cost": without_cost,
                         "receipts_missing": int((~sub.has_receipt & (sub.log_created < missing_before)).sum())})
    return pd.DataFrame(rows).sort_values([group, "currency"], na_position="last").reset_index(drop=True)


def test_cost_per_campaign_and_currency_equals_plain_pandas(world):
    store, frame, _ = world
    got = queries.cost_by(store, Filters(), "campaign", now=NOW)
    want = expected_cost(frame, "campaign")
    columns = list(want.columns)
    pd.testing.assert_frame_equal(got[columns].reset_index(drop=True), want, check_dtype=False, rtol=1e-9)
    # Never two currencies in one row, and one campaign does bill in two.
    assert got.groupby("campaign")["currency"].nunique().max() == 2
    assert "Imported name" in set(got.campaign) and "promo-label" in set(got.campaign)


def test_total_and_country_cost_equal_plain_pandas(world):
    store, frame, _ = world
    total = queries.total_cost(store, Filters(), now=NOW)
    want = expected_cost(frame.assign(total="all"), "total").drop(columns=["total"])
    pd.testing.assert_frame_equal(total[list(want.columns)], want, check_dtype=False, rtol=1e-9)
    by_country = queries.cost_by(store, Filters(), "country", now=NOW)
    got, want = by_country, expected_cost(frame, "country")
    pd.testing.assert_frame_equal(got[list(want.columns)], want, check_dtype=False, rtol=1e-9)
    assert set(got.country) == set(want.country) >= {"GB", "US", "DE", "AU", "ZA", "FR", "(unknown)"}
    assert math.isclose(got.cost.sum(), want.cost.sum())


def test_time_from_submission_equals_plain_pandas(world):
    store, frame, _ = world
    got = queries.submission_latency(store, Filters()).iloc[0]
    delivered = frame[(frame.outcome == "delivered") & frame.in_log].dropna(subset=["log_created"])
    seconds = pd.Series([(d - c).total_seconds() for d, c in zip(delivered.delivered_at, delivered.log_created)
                         if d > c])
    assert got["latency_from_submission_messages"] == len(seconds) > 100
    assert math.isclose(got["latency_from_submission_p50_s"], seconds.quantile(0.5), rel_tol=1e-9)
    assert math.isclose(got["latency_from_submission_p95_s"], seconds.quantile(0.95), rel_tol=1e-9)
    per_campaign = queries.cost_by(store, Filters(), "campaign", now=NOW)
    both = per_campaign.dropna(subset=["latency_from_submission_p50_s"])
    assert len(both) > 3 and (both["latency_from_submission_p95_s"] >= both["latency_from_submission_p50_s"]).all()


def test_a_period_counts_billed_messages_by_log_time_when_no_receipt(world):
    store, frame, _ = world
    f = Filters(start=START, end=START + timedelta(days=1))
    got = queries.total_cost(store, f, now=NOW)
    inside = frame[(frame.sent >= START) & (frame.sent < START + timedelta(days=1))]
    assert math.isclose(got.cost.sum(), inside.cost.sum())
    assert got.receipts_missing.sum() == (~inside.has_receipt).sum() > 0


def test_receipts_missing_lists_log_records_without_receipts_after_the_grace(world):
    store, frame, _ = world
    listed = queries.receipts_missing(store, Filters(), now=NOW)
    assert set(listed.delivery_message_id) == set(frame[~frame.has_receipt].id)
    assert listed.log_status.notna().all() and listed.recipient_masked.str.contains(r"\*").all()
    assert queries.receipts_missing(store, Filters(), now=START).empty  # within the grace: not missing yet
    # They never change the receipt-based KPIs.
    assert queries.kpis(store, Filters()).messages[0] == int(frame.has_receipt.sum())


def test_campaign_names_reach_the_receipt_pages_and_filters(world):
    store, frame, _ = world
    table = queries.campaigns(store, Filters())
    assert "Imported name" in set(table.campaign)
    named = frame[frame.has_receipt & (frame.campaign == "Imported name")]
    row = table[table.campaign == "Imported name"].iloc[0]
    assert row.messages == len(named)
    only = queries.kpis(store, Filters(campaigns=("Imported name",)))
    assert only.messages[0] == len(named)
    latency = queries.latency_by_campaign(store, Filters())
    assert "Imported name" in set(latency.campaign)


def test_where_figures_and_send_filters(world):
    store, frame, _ = world
    by_country = queries.delivery_by(store, Filters(), "country")
    with_receipts = frame[frame.has_receipt]
    want = with_receipts.groupby("country").size().to_dict()
    assert dict(zip(by_country.country, by_country.messages)) == want
    gb = queries.delivery_by(store, Filters(countries=("GB",)), "country")
    assert list(gb.country) == ["GB"]
    assert set(queries.delivery_by(store, Filters(), "originator").originator) >= {"ACME", "AcmeBank"}
    assert queries.send_choices(store, Filters(), "route_id")[:2] != []
    with pytest.raises(ValueError):
        queries.delivery_by(store, Filters(), "recipient")



def test_the_report_carries_the_cost_columns_and_country_and_network_sheets(world, tmp_path):
    import json

    import openpyxl

    from dashboard import report
    from dashboard.catalog import COST_COLUMNS

    store, frame, _ = world
    out = report.write_campaign_report(store.data_dir, Filters(), "csv", tmp_path / "r.csv")
    header = out.path.read_text().splitlines()[1].split(",")  # line 0: the scope
    assert header[0] == "campaign" and header[-8:-2] == COST_COLUMNS == [
        "cost", "currency", "cost_per_delivered", "failed_cost", "messages_without_cost", "receipts_missing"]
    doc = json.loads(report.write_campaign_report(store.data_dir, Filters(), "json", tmp_path / "r.json")
                     .path.read_text())
    rows = doc["Campaigns"]
    assert math.isclose(sum(r["cost"] or 0 for r in rows), frame.cost.sum())
    assert {r["country"] for r in doc["By country"]} >= {"GB", "DE", "(unknown)"}
    assert doc["By network"] and all("delivery_rate" in r for r in doc["By network"])
    book = openpyxl.load_workbook(report.write_campaign_report(store.data_dir, Filters(), "xlsx",
                                                               tmp_path / "r.xlsx").path)
    assert book.sheetnames[-2:] == ["By country", "By network"]


# --------------------------------------------------------------------------- pages


APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"


def open_app(monkeypatch, data_dir, page: str | None = None):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("DLRLENS_DATA", str(data_dir))
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_where_campaigns_and_health_pages_show_the_send_records(world, monkeypatch):
    store, frame, _ = world
    at = open_app(monkeypatch, store.data_dir, "views/geography.py")
    assert at.title[0].value == "Where" and len(at.tabs) == 4
    assert at.get("plotly_chart") and at.dataframe
    countries = at.container(key="table_where-country").dataframe[0].value
    assert {"GB", "(unknown)"} <= set(countries.country)
    at = open_app(monkeypatch, store.data_dir, "views/campaigns.py")
    import json

    first = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert first["layout"]["title"]["text"].startswith("Campaigns at a glance")  # the page opens with it
    assert "Imported name" in first["data"][0]["y"] and "msgs" in first["data"][0]["text"][0]
    texts = " ".join(w.value for w in at.warning)
    assert "have no receipt at all" in texts  # receipts missing, named on the page
    at = open_app(monkeypatch, store.data_dir, "views/health.py")
    assert "Last sync" in " ".join(c.value for c in at.caption)


def test_where_page_explains_how_to_get_send_records(monkeypatch, tmp_path):
    write_receipts(tmp_path, [receipt("M1", "DELIVERED", START)])
    at = open_app(monkeypatch, tmp_path, "views/geography.py")
    assert "dlrlens sync" in " ".join(i.value for i in at.info)


@pytest.mark.browser
def test_the_where_page_and_the_campaigns_chart_render_in_the_browser(world, chromium, tmp_path, request):
    from tests.support.browser import fresh_page, poll
    from tests.support.dashboard_server import running_dashboard

    store, _, _ = world
    texts_js = "() => [...document.querySelectorAll('.js-plotly-plot text')].map(t => t.textContent)"
    with running_dashboard(store.data_dir, log_dir=tmp_path) as app, \
            fresh_page(chromium, request, tmp_path / "failure.png") as page:
        page.goto(app.url + "/campaigns", timeout=90_000)
        texts = poll(page, lambda p: p.evaluate(texts_js),
                     lambda t: "Imported name" in t and any("Campaigns at a glance" in x for x in t), 90,
                     "the campaigns chart")
        assert any("msgs" in t for t in texts)  # the volume is visible on the bars
        page.goto(app.url + "/geography", timeout=90_000)
        poll(page, lambda p: p.evaluate(texts_js), lambda t: "GB" in t and any("by country" in x for x in t), 90,
             "the Where page's chart")


def test_lookup_by_phone_number_goes_through_the_hash(world):
    store, frame, records = world
    with_receipt = set(frame[frame.has_receipt].id)
    target = next(r for r in records if r["id"] in with_receipt and r["recipient"].startswith("49"))
    typed = "+" + target["recipient"][:2] + " " + target["recipient"][2:5] + " " + target["recipient"][5:]
    found = queries.message_lookup(store, typed)
    same_number = {r["id"] for r in records if r["recipient"] == target["recipient"]} & with_receipt
    assert set(found.delivery_message_id) == same_number and target["id"] in same_number
    assert queries.message_lookup(store, "+49 000").empty  # too short to be a number: no match
    assert pseudonym.lookup_hash(store.data_dir / "nowhere", typed) is None  # no key: never created by a reader


def test_send_filters_travel_in_the_url():
    from dashboard import state

    chosen = state.FilterState(countries=("GB", "(unknown)"), networks=("Vodacom",), senders=("ACME",),
                               routes=("mglobal",))
    query = state.to_query(chosen)
    assert query["country"] == ["GB", "(unknown)"] and query["sender"] == ["ACME"]
    back = state.from_query(query)
    assert back == chosen
    f = state.resolve(back, NOW)
    assert f.countries == ("GB", "(unknown)") and f.routes == ("mglobal",) and f.has_send_filters()
