#!/usr/bin/env bash
# Install dlrlens and start the product: collector on :8080, dashboard on :8501, on ./data
# (or $DLRLENS_DATA). With no receipts yet, simulated Mobivate traffic is posted through the
# collector so the dashboard has something to show. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e .
exec python3 -m dlrlens up "$@"
