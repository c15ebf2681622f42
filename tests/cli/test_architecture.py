"""The import contracts (pyproject.toml, ``[tool.importlinter]``) hold: imports go one way,
collector -> dlrlens.store <- dashboard, with dlrlens.cli on top (README, "Architecture").

``scripts/test.sh`` runs ``lint-imports`` before the suite to fail fast; this runs it again
inside the suite, so a broken contract is a counted test failure too."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIG = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]


def lint_imports() -> str:
    """The ``lint-imports`` of this interpreter's environment (else the one on PATH)."""
    beside = Path(sys.executable).parent / "lint-imports"
    found = str(beside) if beside.exists() else shutil.which("lint-imports")
    assert found, "lint-imports is missing: pip install -e '.[test]'"
    return found


def test_the_contracts_are_the_documented_ones():
    assert CONFIG["root_packages"] == ["collector", "dashboard", "dlrlens"]
    contracts = {c["id"]: c for c in CONFIG["contracts"]}
    assert set(contracts) == {"apps-independent", "store-below-apps", "shared-below-apps", "no-sibling-cycles",
                              "alerts-below-apps", "store-below-alerts"}
    assert set(contracts["alerts-below-apps"]["forbidden_modules"]) == {"collector", "dashboard", "dlrlens.cli"}
    assert contracts["store-below-alerts"]["forbidden_modules"] == ["dlrlens.alerts"]
    assert contracts["apps-independent"]["modules"] == ["collector", "dashboard"]
    assert {"collector", "dashboard", "dlrlens.cli"} <= set(contracts["store-below-apps"]["forbidden_modules"])
    assert contracts["no-sibling-cycles"]["type"] == "acyclic_siblings"


def test_imports_keep_every_contract():
    done = subprocess.run([lint_imports(), "--no-logo", "--no-cache"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Contracts: {len(CONFIG['contracts'])} kept, 0 broken." in done.stdout
