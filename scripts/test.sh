#!/usr/bin/env bash
# Everything CI checks, on a fresh machine: set-up, C++ tests of the torch-free tier (x86 every ISA,
# ASan+UBSan, aarch64 under qemu), the CUDA compile check, the pytest suite, and smoke runs of the CLI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
start=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - start )) s] $*"; }

stamp "set-up"
bash scripts/setup.sh

stamp "C++ tests (x86, ASan+UBSan, aarch64 under qemu) and native bench smoke"
bash .ci/cpp.sh
bash .ci/isa_symbols.sh build-cpp
bash .ci/isa_symbols.sh build  # the extension scikit-build-core built
bash .ci/prefetch_kept.sh build-cpp

if command -v nvcc >/dev/null; then
  stamp "CUDA compile check (every .cu for sm_80 and sm_90a; CUDA glue against torch headers)"
  cmake -S . -B build-cudacheck -G Ninja -DSPARSEOPS_BUILD_EXTENSION=OFF -DSPARSEOPS_CUDA_COMPILE_CHECK=ON \
        -DPython_EXECUTABLE="$(command -v "$PY")" >/dev/null
  cmake --build build-cudacheck
else
  stamp "CUDA compile check skipped: nvcc not found"
fi

stamp "CLI smoke: python -m sparseops info; python -m sparseops.bench nm --quick"
"$PY" -m sparseops info
"$PY" -m sparseops.bench nm --quick --json build/bench-nm-quick.json --plot build/bench-nm-quick.png

stamp "pytest"
"$PY" -m pytest tests -q -p no:cacheprovider
stamp "all tests passed"
