#!/usr/bin/env bash
# Guards run-time ISA dispatch, on the objects of the given build directory:
# 1. An object compiled with AVX2/AVX-512 flags may export only its entry points (names ending in _avx2 /
#    _avx512 / _avx512x). Any other global or weak definition (an out-of-line std::vector member, a
#    non-static helper) could be what the linker picks for the scalar path too, and crash CPUs without it.
# 2. Instructions beyond what the dispatch promises: *_avx2 objects no EVEX (zmm / k registers), *_avx512
#    objects nothing from AVX512-BF16 / VBMI2 / VPOPCNTDQ / FP16 (those belong in *_avx512x, called only when
#    avx512_ext() holds), *_avx512x objects no FP16. A compiler given more flags may emit such instructions
#    anywhere (GCC emitted AVX512-FP16 vmovw in plain bf16 code), faulting on CPUs that lack them.
# Usage: .ci/isa_symbols.sh BUILD_DIR
set -euo pipefail
dir=${1:?build directory}
bad=0
ext='vdpbf16ps|vcvtne2ps2bf16|vcvtneps2bf16|vpexpand[bw]|vpcompress[bw]|vpshl[dv][wdq]?|vpshr[dv][wdq]?|vpopcnt[bwdq]'
fp16='vmovw|vmovsh|v[a-z0-9]*(ph|sh)|vcvt[a-z0-9]*(2ph|2sh|ph2|sh2)[a-z0-9]*'  # minus F16C's vcvtph2ps/vcvtps2ph
while IFS= read -r obj; do
  isa=$(basename "$obj" | sed -E 's/.*_(avx2|avx512|avx512x)\.cpp\.o$/\1/')
  while IFS= read -r sym; do
    case "$sym" in
      DW.ref.__gxx_personality_v0) ;;
      *"_${isa}("*) ;;
      *) echo "ISA leak: $(basename "$obj") exports '$sym'"; bad=1 ;;
    esac
  done < <(nm -C --defined-only "$obj" | awk '$2 ~ /^[TWVDBRu]$/ {sub(/^[0-9a-f]+ [A-Za-z] /, ""); print}')
  case "$isa" in
    avx2) forbid='%zmm|%k[0-7]' ; field=all ;;
    avx512) forbid="^($ext|$fp16)\$" ; field=mnemonic ;;
    avx512x) forbid="^($fp16)\$" ; field=mnemonic ;;
  esac
  if [ "$field" = all ]; then
    found=$(objdump -d --no-show-raw-insn "$obj" | grep -E "$forbid" | head -3 || true)
  else
    found=$(objdump -d --no-show-raw-insn "$obj" | awk 'NF >= 2 && $1 ~ /:$/ {print $2}' \
            | grep -Ev '^(vcvtph2ps|vcvtps2ph|push)$' | grep -E "$forbid" | sort | uniq -c | head -5 || true)
  fi
  if [ -n "$found" ]; then
    echo "ISA overreach: $(basename "$obj") ($isa) contains instructions its dispatch does not promise:"
    echo "$found"
    bad=1
  fi
done < <(find "$dir" -name '*_avx2.cpp.o' -o -name '*_avx512.cpp.o' -o -name '*_avx512x.cpp.o')
[ "$bad" = 0 ] && echo "ISA objects export only their entry points and use only the instructions their dispatch checks"
exit "$bad"
