#!/usr/bin/env bash
# The main job: set up (idempotent), then `python -m sparseops demo`: sparsify SmolLM2-135M (Wanda 2:4), install
# the bitmap KV cache and block-sparse prefill attention, generate, and compare with the dense model (bytes,
# prefill time, decode tokens/s, perplexity, text). Extra arguments go to the demo (e.g. --quick,
# --sparsity 0.5, --kv-sparsity 0.7, --attention none); `python -m sparseops demo --help` lists them.
# Kernel benchmarks: python -m sparseops.bench nm|csr|kv|attn (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/setup.sh
"$PY" -m sparseops info
exec "$PY" -m sparseops demo "$@"
