#!/usr/bin/env bash
# Guards run-time ISA dispatch: an object compiled with AVX2/AVX-512 flags may export only its entry
# points (names ending in _avx2 / _avx512). Any other global or weak definition (an out-of-line
# std::vector member, a non-static helper) could be what the linker picks for the scalar path too, and
# crash CPUs without that ISA. Usage: .ci/isa_symbols.sh BUILD_DIR
set -euo pipefail
dir=${1:?build directory}
bad=0
while IFS= read -r obj; do
  isa=$(basename "$obj" | sed -E 's/.*_(avx2|avx512)\.cpp\.o$/\1/')
  while IFS= read -r sym; do
    case "$sym" in
      DW.ref.__gxx_personality_v0) ;;
      *"_${isa}("*) ;;
      *) echo "ISA leak: $(basename "$obj") exports '$sym'"; bad=1 ;;
    esac
  done < <(nm -C --defined-only "$obj" | awk '$2 ~ /^[TWVDBRu]$/ {sub(/^[0-9a-f]+ [A-Za-z] /, ""); print}')
done < <(find "$dir" -name '*_avx2.cpp.o' -o -name '*_avx512.cpp.o')
[ "$bad" = 0 ] && echo "ISA objects export only their entry points"
exit "$bad"
