#!/usr/bin/env bash
# Install everything the test suite needs into the project's own virtual environment (.venv/,
# see scripts/venv.sh) plus Debian's chromium for the browser test, check the import
# contracts, then run the whole suite. Extra arguments go to pytest, after ours: e.g.
# `scripts/test.sh tests/store/test_iceberg.py -x`, or `-n 0` to run in one process, `-n 4`
# for four workers.
#
# Two pytest-xdist workers, each taking whole test files (module fixtures, such as a shared
# collector, start once): most tests wait on real servers, not on the CPU, so two workers on
# 2 cores take the suite from about 15.5 to about 9 minutes (README, "Tests").
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh

python -m pip install --quiet --disable-pip-version-check -e '.[test]'

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing Debian's chromium for the browser test"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "chromium is missing and this is not root: the browser test will be skipped" >&2
  fi
fi

# Fail fast when an import breaks the architecture's one direction (pyproject.toml,
# [tool.importlinter]); tests/cli/test_architecture.py runs the same check inside the suite.
lint-imports --no-logo

exec python -m pytest -n 2 --dist loadfile --no-loadscope-reorder "$@"
