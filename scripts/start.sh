#!/usr/bin/env bash
# Install dlrlens into the project's own virtual environment (.venv/, see scripts/venv.sh) and
# start the product: collector on :8080, dashboard on :8501, on ./data (or $DLRLENS_DATA). With
# no receipts yet, simulated Mobivate traffic is posted through the collector so the dashboard
# has something to show. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
python -m pip install --quiet --disable-pip-version-check -e .
exec python -m dlrlens up "$@"
