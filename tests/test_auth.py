"""The dashboard's optional password gate, through Streamlit's AppTest."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from factory import demo_rows, write_receipts

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")


def _app(tmp_path, monkeypatch, password: str | None) -> AppTest:
    write_receipts(tmp_path / "data", demo_rows(50, seed=3))
    monkeypatch.setenv("DLRLENS_DATA", str(tmp_path / "data"))
    if password is None:
        monkeypatch.delenv("DLRLENS_DASHBOARD_PASSWORD", raising=False)
    else:
        monkeypatch.setenv("DLRLENS_DASHBOARD_PASSWORD", password)
    return AppTest.from_file(APP, default_timeout=60)


def test_without_a_password_the_dashboard_is_open(tmp_path, monkeypatch):
    app = _app(tmp_path, monkeypatch, None).run()
    assert not app.exception
    assert app.metric, "KPI cards render"
    assert not [t for t in app.text_input if t.label == "Password"]


def test_with_a_password_nothing_shows_until_it_is_given(tmp_path, monkeypatch):
    app = _app(tmp_path, monkeypatch, "correct horse").run()
    assert not app.exception
    assert not app.metric and not app.dataframe, "no figure before login"
    password = [t for t in app.text_input if t.label == "Password"][0]

    assert [b.label for b in app.button] == ["Sign in"]
    password.input("wrong").run()
    assert [e.value for e in app.error] == ["Wrong password."]
    assert not app.metric

    [t for t in app.text_input if t.label == "Password"][0].input("correct horse").run()
    assert not app.exception
    assert app.metric, "KPI cards render after login"
    assert not app.error
