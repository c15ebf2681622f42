#!/usr/bin/env bash
# Sourced by start.sh and test.sh: make sure the project's own virtual environment exists at
# .venv/ (or $DLRLENS_VENV) and put it first on PATH. Never installs into the system Python
# (PEP 668). Debian and Ubuntu ship venv without ensurepip unless python3-venv is installed:
# as root we install it; otherwise we say what to run.
set -euo pipefail
VENV="${DLRLENS_VENV:-$PWD/.venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
  rm -rf "$VENV"
  if ! "$PYTHON" -m venv "$VENV" >/dev/null 2>&1; then
    rm -rf "$VENV"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "installing Debian's venv support for $("$PYTHON" --version)"
      pyver="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python${pyver}-venv" >/dev/null \
        || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      "$PYTHON" -m venv "$VENV"
    else
      echo "error: '$PYTHON -m venv' failed; install your distribution's venv package" \
           "(Debian/Ubuntu: sudo apt install python3-venv) and run this again" >&2
      exit 1
    fi
  fi
fi
export VIRTUAL_ENV="$VENV"
export PATH="$VENV/bin:$PATH"
