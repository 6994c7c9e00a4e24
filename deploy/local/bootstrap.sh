#!/usr/bin/env bash
# Create the project venv and install collector with its dev extra, pinned by requirements.lock.
# On a bare Debian, python3 has no venv module until python3-venv is installed.
set -euo pipefail
PY=${1:-python3}
VENV=${2:-.venv}
if ! command -v "$PY" >/dev/null 2>&1; then
  echo "bootstrap: $PY not found; installing python3 from Debian" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv python3-dev
fi
if [ ! -x "$VENV/bin/python" ]; then
  if ! "$PY" -m venv "$VENV" 2>/dev/null; then
    echo "bootstrap: installing python3-venv (Debian ships venv separately)" >&2
    rm -rf "$VENV"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    "$PY" -m venv "$VENV"
  fi
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
# Exact versions with hashes from requirements.lock ('make lock' refreshes it), so two
# installs a month apart get the same packages; then collector itself, without deps.
"$VENV/bin/python" -m pip install -q --require-hashes -r requirements.lock
"$VENV/bin/python" -m pip install -q --no-deps -e .
# protobuf classes are generated on first use (collector/models/protogen.py): once here,
# so that a broken grpcio-tools/protobuf pair shows at install time, not in a worker
"$VENV/bin/python" -c 'from collector.models.protogen import pb2; pb2()'
echo "bootstrap: $("$VENV/bin/python" --version) in $VENV with collector installed"
