#!/bin/bash
# Native A/B of the AVX-512 bitmap-KV decode kernel between two commits (or a commit and the working tree):
#   bash bench/probes/kv_decode_ab.sh OLD [NEW]      (NEW defaults to the working tree)
# Builds partial_avx512x from each tree's csrc/kernels/kv/kv_avx512x.cpp (the VBMI2 variant) renamed to
# partial_A / partial_B, links both with kv_decode_ab.cpp and the kernel library in build-cpp (for the compressor
# and ISA detection), and runs fp32 / bf16 / fp16 at s = 0 and 0.7, T = 2048 (hot in cache) and 131072
# (KV_AB_T, KV_AB_S, KV_AB_D narrow the grid; dtype 0 fp32, 1 bf16, 2 fp16).
set -euo pipefail
root=$(git rev-parse --show-toplevel)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/A" "$tmp/B"
git -C "$root" archive "$1" csrc | tar -x -C "$tmp/A"
if [ $# -ge 2 ]; then git -C "$root" archive "$2" csrc | tar -x -C "$tmp/B"; else cp -r "$root/csrc" "$tmp/B/"; fi
F="-O3 -fno-math-errno -std=c++17 -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx2 -mfma -mf16c -mavx512bf16 -mavx512vbmi2 -mavx512vpopcntdq -mavx512bitalg -mbmi2"
for v in A B; do
  g++ $F -Wno-maybe-uninitialized -Dpartial_avx512x=partial_$v -Dpartial_expand_avx512x=partial_expand_$v -I"$tmp/$v/csrc" -c "$tmp/$v/csrc/kernels/kv/kv_avx512x.cpp" -o "$tmp/$v.o"
done
[ -f "$root/build-cpp/libsparseops_kernels.a" ] || { echo "build the C++ tier first (README: build-cpp)"; exit 1; }
g++ -O2 -std=c++17 -I"$root/csrc" "$root/bench/probes/kv_decode_ab.cpp" "$tmp/A.o" "$tmp/B.o" \
  "$root/build-cpp/libsparseops_kernels.a" -o "$tmp/ab" -lpthread
echo "# A = $1, B = ${2:-working tree}; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), one thread"
for T in ${KV_AB_T:-2048 131072}; do for s in ${KV_AB_S:-0.0 0.7}; do for d in ${KV_AB_D:-0 1 2}; do "$tmp/ab" $T $s $d; done; done; done
