// AVX-512 bitmap-KV decode attention with VBMI2 (vpexpandw expand-loads of bf16/fp16 records), built
// with -mavx512vbmi2 etc.; called by partial_avx512 only when avx512_ext() holds.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "kv_avx512_ops.h"

namespace sparseops::kv {

void partial_avx512x(const AttnArgs& a, int64_t b, int64_t h, int64_t t0, int64_t t1, float* part) {
  attend_partial<Avx512Ops<true>>(a, b, h, t0, t1, part);
}

}  // namespace sparseops::kv
