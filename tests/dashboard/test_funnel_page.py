"""The Funnel page, the funnel columns of the Campaigns page and the replies in Message lookup,
in-process with Streamlit's AppTest over generated receipts, clicks and replies: the figures
on screen are the queries', filters apply, reply text is masked until revealed."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dashboard import catalog, downloads, queries
from dashboard.queries import Filters, Store
from tests.support.factory import demo_rows, write_receipts
from tests.support.funnel import demo_events, write_events

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("funnel-page") / "data"
    rows = demo_rows(400, seed=9)
    write_receipts(root, rows)
    clicks, replies = demo_events(rows, seed=2, click_share=0.2, reply_share=0.08)
    write_events(root, "clicks", clicks, "c")
    write_events(root, "replies", replies, "r")
    return root


def run(monkeypatch, data: Path, page: str, query: dict | None = None) -> AppTest:
    monkeypatch.setenv("DLRLENS_DATA", str(data))
    at = AppTest.from_file(str(APP), default_timeout=60)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    at.run()
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def table(at: AppTest, key: str):
    return at.container(key=f"table_{key}").dataframe[0].value


@pytest.mark.parametrize("query, f", [
    ({"range": "all"}, Filters()),
    ({"range": "all", "campaign": "welcome"}, Filters(campaigns=("welcome",))),
])
def test_funnel_page_shows_the_query_figures(monkeypatch, data, query, f):
    at = run(monkeypatch, data, "views/funnel.py", query)
    assert at.title[0].value == "Funnel"
    with Store(data) as store:
        total = queries.funnel(store, f).iloc[0]
        per_campaign = queries.funnel(store, f, True)
        links = queries.top_links(store, f, 20)
    shown = {m.label: m.value for m in at.metric}
    for column in ("clicked", "click_rate", "opted_out", "click_delay_p50_s"):
        assert shown[catalog.kpi(column).label] == downloads.format_value(column, total[column]), column
    assert table(at, "funnel-by-campaign")["campaign"].tolist() == per_campaign["campaign"].tolist()
    assert table(at, "funnel-by-campaign")["clicks"].tolist() == per_campaign["clicks"].tolist()
    assert table(at, "funnel-top-links")["clicks"].tolist() == links["clicks"].tolist()
    keys = {chart.proto.id or "" for chart in at.get("plotly_chart")}
    assert len(at.get("plotly_chart")) >= 6, keys
    assert "match no stored message" in " ".join(c.value for c in at.caption)


def test_campaigns_table_has_the_funnel_columns(monkeypatch, data):
    at = run(monkeypatch, data, "views/campaigns.py", {"range": "all"})
    shown = table(at, "campaigns")
    with Store(data) as store:
        expected = queries.campaigns_with_funnel(store, Filters())
    for column in catalog.FUNNEL_COLUMNS:
        assert column in shown, column
    assert shown.set_index("campaign")["opted_out"].to_dict() == expected.set_index("campaign")["opted_out"].to_dict()


def test_lookup_shows_replies_masked_until_revealed(monkeypatch, data):
    with Store(data) as store:
        replies = queries.message_replies(store, [f"M09{n:06d}" for n in range(400)])
    message_id, body = replies.iloc[0]["delivery_message_id"], replies.iloc[0]["body"]
    at = run(monkeypatch, data, "views/lookup.py")
    at.text_input(key="lookup_term").set_value(message_id).run()
    hidden = table(at, "lookup_replies")
    assert hidden["body"].tolist()[0] == f"•••• ({len(body)} characters)"
    assert hidden["originator_masked"].str.contains(r"\*\*\*\*").all()
    at.toggle(key="lookup_reveal_replies").set_value(True).run()
    assert table(at, "lookup_replies")["body"].tolist()[0] == body


def test_funnel_figures_show_hostile_names_as_text():
    import pandas as pd

    from dashboard import funnel_charts

    hostile = '<img src=x onerror="fetch(1)">'
    row = {"messages": 10, "delivered": 8, "clicked": 2, "replied": 1, "opted_out": 1, "click_rate": 0.25,
           "opt_out_rate": 0.125}
    per_campaign = pd.DataFrame([{"campaign": hostile, **row}])
    figures = [funnel_charts.funnel_figure(pd.DataFrame([row]), per_campaign),
               funnel_charts.rates_figure(per_campaign),
               funnel_charts.breakdown_figure(pd.DataFrame([{"value": hostile, "clicks": 3, "clicked": 2,
                                                             "share": 1.0}]), "Clicks by country")]
    for figure in figures:
        text = figure.to_json()
        assert "<img" not in text and "&lt;img" in text
