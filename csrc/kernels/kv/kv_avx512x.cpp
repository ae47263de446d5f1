// AVX-512 bitmap-KV decode attention with the extensions (avx512_ext(); built with -mavx512vbmi2 etc.),
// called by partial_avx512 only when they exist. The loop is in kv_avx512_decode.h. Two variants:
// partial_avx512x (AMD) places bf16/fp16 records by permutes and prefetches records a softmax step ahead;
// partial_expand_avx512x (Intel) uses VBMI2 expand-loads and no prefetch, which measured faster on an AMX Xeon
// (kv-prefetch-ab-xeon2c-46873d2). The AMD choices are measured on Zen 5 only (bench/results/
// kv-perm-ab-zen5-2c-96668e7, kv-bf16-dot-ab-zen5-2c-6d0c09f).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "kv_avx512_decode.h"

namespace sparseops::kv {

void partial_expand_avx512x(const AttnArgs& a, int64_t b, int64_t h, int64_t t0, int64_t t1, float* part) {
  switch (a.dtype) {
    case DType::bf16: return decode_partial<LoadBf16Vbmi2>(a, b, h, t0, t1, part);
    case DType::f16: return decode_partial<LoadF16Vbmi2>(a, b, h, t0, t1, part);
    case DType::f32: return decode_partial<LoadWiden<DType::f32>>(a, b, h, t0, t1, part);
  }
}

void partial_avx512x(const AttnArgs& a, int64_t b, int64_t h, int64_t t0, int64_t t1, float* part) {
  switch (a.dtype) {
    case DType::bf16: return decode_partial<LoadBf16Words, true, LoadBf16Words>(a, b, h, t0, t1, part);
    case DType::f16: return decode_partial<LoadF16Perm, true>(a, b, h, t0, t1, part);
    case DType::f32: return decode_partial<LoadWiden<DType::f32>, true>(a, b, h, t0, t1, part);
  }
}

}  // namespace sparseops::kv
