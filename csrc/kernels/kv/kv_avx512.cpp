// AVX-512 variant of bitmap-KV decode attention (F/BW/VL/DQ); the loop is in kv_avx512_decode.h. With
// avx512_ext() the loaders of kv_avx512x.cpp run instead (Intel: expand-loads; AMD: permutes).
// GCC 12 warns about the deliberately undefined source operand inside its own AVX-512 intrinsics.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "kv_avx512_decode.h"

namespace sparseops::kv {

void partial_avx512(const AttnArgs& a, int64_t b, int64_t h, int64_t t0, int64_t t1, float* part) {
  if (avx512_ext())
    return cpu_features().intel ? partial_expand_avx512x(a, b, h, t0, t1, part) : partial_avx512x(a, b, h, t0, t1, part);
  switch (a.dtype) {
    case DType::bf16: return decode_partial<LoadWiden<DType::bf16>>(a, b, h, t0, t1, part);
    case DType::f16: return decode_partial<LoadWiden<DType::f16>>(a, b, h, t0, t1, part);
    case DType::f32: return decode_partial<LoadWiden<DType::f32>>(a, b, h, t0, t1, part);
  }
}

}  // namespace sparseops::kv
