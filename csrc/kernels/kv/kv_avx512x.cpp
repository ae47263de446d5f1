// AVX-512 bitmap-KV decode attention with VBMI2 (vpexpandw expand-loads of bf16/fp16 records), built
// with -mavx512vbmi2 etc.; called by partial_avx512 only when avx512_ext() holds. The loop is in
// kv_avx512_decode.h.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "kv_avx512_decode.h"

namespace sparseops::kv {

void partial_avx512x(const AttnArgs& a, int64_t b, int64_t h, int64_t t0, int64_t t1, float* part) {
  switch (a.dtype) {
    case DType::bf16: return decode_partial<LoadBf16Vbmi2>(a, b, h, t0, t1, part);
    case DType::f16: return decode_partial<LoadF16Vbmi2>(a, b, h, t0, t1, part);
    case DType::f32: return decode_partial<LoadWiden<DType::f32>>(a, b, h, t0, t1, part);
  }
}

}  // namespace sparseops::kv
