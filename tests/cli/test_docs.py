"""The README states what the code does: KPI definitions, settings, the storage schema."""

from __future__ import annotations

import runpy
from pathlib import Path

from dlrlens.store.layout import RECEIPT_SCHEMA
from collector.settings import SETTINGS_TABLE

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_readme_kpi_definitions_are_the_ones_the_app_shows():
    kpi_docs = runpy.run_path(str(ROOT / "scripts" / "kpi_docs.py"), run_name="kpi_docs")
    assert kpi_docs["readme_with_block"](README) == README, "run: python3 scripts/kpi_docs.py --write"


def test_readme_lists_every_setting_and_column():
    for setting in SETTINGS_TABLE:
        assert f"`{setting.env}`" in README, setting.env
    for name in RECEIPT_SCHEMA.names:
        assert f"`{name}`" in README, name


def test_readme_shows_the_command_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in README
