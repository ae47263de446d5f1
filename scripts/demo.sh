#!/usr/bin/env bash
# The main job: set up (idempotent), then benchmark sparseops' N:M linear against dense F.linear on this
# machine. Extra arguments go to `python -m sparseops.bench nm` (e.g. --quick, --dtype bf16).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/setup.sh
mkdir -p bench/out
"$PY" -m sparseops info
exec "$PY" -m sparseops.bench nm --json bench/out/nm.json --plot bench/out/nm.png "$@"
