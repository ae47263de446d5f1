// AVX-512 variant of bitmap-KV decode attention (F/BW/VL/DQ); the ops are in kv_avx512_ops.h. With
// VBMI2 (and BF16, VPOPCNTDQ: avx512_ext()) the bf16/fp16 expand-load variant in kv_avx512x.cpp runs.
// GCC 12 warns about the deliberately undefined source operand inside its own AVX-512 intrinsics.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "kv_avx512_ops.h"

namespace sparseops::kv {

void partial_avx512(const AttnArgs& a, int64_t b, int64_t h, int64_t t0, int64_t t1, float* part) {
  if (avx512_ext()) return partial_avx512x(a, b, h, t0, t1, part);
  attend_partial<Avx512Ops<false>>(a, b, h, t0, t1, part);
}

}  // namespace sparseops::kv
