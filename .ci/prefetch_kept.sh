#!/usr/bin/env bash
# Guards software prefetches: GCC 12 silently deleted whole loops of __builtin_prefetch (tree DCE) in the
# attention and KV kernels, so prefetches that benchmarks were credited with never ran. Every kernel source is
# compiled to assembly with the flags the given Ninja build used, with and without -fno-tree-dce; the counts of
# prefetch instructions must match (use common/prefetch.h, an asm volatile, where they would not).
# Usage: .ci/prefetch_kept.sh BUILD_DIR (a Ninja build of the torch-free tier)
set -euo pipefail
dir=${1:?build directory}
root=$(cd "$(dirname "$0")/.." && pwd)
bad=0
n=0
while IFS= read -r src; do
  rel=${src#"$root"/}
  flags=$(grep -A4 -F "$rel.o:" "$dir/build.ninja" | sed -n 's/^ *FLAGS = //p' | head -1 || true)
  defs=$(grep -A4 -F "$rel.o:" "$dir/build.ninja" | sed -n 's/^ *DEFINES = //p' | head -1 || true)
  incs=$(grep -A4 -F "$rel.o:" "$dir/build.ninja" | sed -n 's/^ *INCLUDES = //p' | head -1 || true)
  [ -n "$flags" ] || continue
  # shellcheck disable=SC2086
  a=$(g++ $flags $defs $incs -S "$src" -o - 2>/dev/null | grep -cE '^\s+prefetch' || true)
  # shellcheck disable=SC2086
  b=$(g++ $flags $defs $incs -fno-tree-dce -S "$src" -o - 2>/dev/null | grep -cE '^\s+prefetch' || true)
  n=$((n + 1))
  if [ "$a" != "$b" ]; then
    echo "prefetch dropped: $rel keeps $a prefetch instructions, $b without tree DCE"
    bad=1
  fi
done < <(grep -rl --include='*.cpp' -E 'prefetch|_impl\.h|_decode\.h|_tile\.h|_load\.h' "$root/csrc/kernels")
[ "$bad" = 0 ] && echo "software prefetches survive the optimiser in all $n kernel sources checked"
exit "$bad"
