#!/usr/bin/env bash
# Torch-free tier CI: C++ tests + native bench smoke run on the host, the tests under ASan+UBSan,
# a static aarch64 cross build run under qemu-user (correctness only: qemu timings mean nothing), and the
# aarch64 tests under ASan + UBSan in qemu (catches a NEON kernel reading past a buffer).
# Needs cmake, ninja, g++, g++-aarch64-linux-gnu, qemu-user; uses ccache when installed.
# Build directories: build-cpp/, build-asan/, build-aarch64/, build-aarch64-asan/ (override the root with
# BUILD_ROOT=...; JOBS=... sets the build parallelism).
set -euo pipefail
cd "$(dirname "$0")/.."
root="${BUILD_ROOT:-.}"
jobs="${JOBS:-$(nproc)}"
common=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DSPARSEOPS_BUILD_EXTENSION=OFF -DSPARSEOPS_BUILD_TESTS=ON)

step() { printf '\n=== %s\n' "$*"; }

step "host: configure + build (build-cpp)"
cmake -S . -B "$root/build-cpp" "${common[@]}" -DSPARSEOPS_BUILD_BENCH=ON >/dev/null
cmake --build "$root/build-cpp" -j "$jobs"
step "host: C++ tests"
"$root/build-cpp/sparseops-cpp-tests"
step "host: C++ tests with the AVX-512 extension paths off (the plain AVX-512 fallbacks)"
SPARSEOPS_AVX512_EXT=0 "$root/build-cpp/sparseops-cpp-tests"
step "host: sparseops-bench --quick (every ISA)"
"$root/build-cpp/sparseops-bench" --quick --isa all --dtype f32,bf16,f16

step "host: ASan + UBSan build (build-asan)"
cmake -S . -B "$root/build-asan" "${common[@]}" -DSPARSEOPS_SANITIZE=ON >/dev/null
cmake --build "$root/build-asan" -j "$jobs"
step "host: C++ tests under ASan + UBSan"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  "$root/build-asan/sparseops-cpp-tests"

step "aarch64: static cross build (build-aarch64)"
cmake -S . -B "$root/build-aarch64" "${common[@]}" -DSPARSEOPS_BUILD_BENCH=ON -DSPARSEOPS_STATIC=ON \
  -DCMAKE_TOOLCHAIN_FILE="$PWD/cmake/toolchains/aarch64-linux-gnu.cmake" >/dev/null
cmake --build "$root/build-aarch64" -j "$jobs"
step "aarch64: C++ tests under qemu-aarch64"
qemu-aarch64 "$root/build-aarch64/sparseops-cpp-tests"
step "aarch64: sparseops-bench --quick under qemu-aarch64 (timings not meaningful)"
qemu-aarch64 "$root/build-aarch64/sparseops-bench" --quick --isa all --dtype f32,bf16,f16 --iters 1 --warmup 0

step "aarch64: ASan + UBSan build (dynamic, build-aarch64-asan)"
cmake -S . -B "$root/build-aarch64-asan" "${common[@]}" -DSPARSEOPS_SANITIZE=ON \
  -DCMAKE_TOOLCHAIN_FILE="$PWD/cmake/toolchains/aarch64-linux-gnu.cmake" >/dev/null
cmake --build "$root/build-aarch64-asan" -j "$jobs"
step "aarch64: C++ tests under ASan + UBSan in qemu-aarch64 (LeakSanitizer cannot run under qemu)"
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  qemu-aarch64 -L /usr/aarch64-linux-gnu "$root/build-aarch64-asan/sparseops-cpp-tests"

step "all C++ checks passed"
