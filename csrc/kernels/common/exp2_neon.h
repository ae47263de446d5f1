// 2^x in float32x4_t lanes for the softmax of the attention and KV kernels: 2^n * 2^f (n = round(x), |f| <= 1/2)
// with a degree-6 polynomial for 2^f (rel. error ~2e-7); 0 below -126 (where 2^n leaves the normal range) and
// for -inf. Include only from a file compiled for this ISA (NEON).
#pragma once
#include <arm_neon.h>

namespace sparseops {
namespace {

static inline float32x4_t exp2_v(float32x4_t x) {
  const float32x4_t lo = vdupq_n_f32(-126.0f);
  const float32x4_t xc = vmaxq_f32(x, lo);
  const float32x4_t n = vrndnq_f32(xc);
  const float32x4_t f = vsubq_f32(xc, n);
  float32x4_t p = vdupq_n_f32(1.5353362e-4f);
  p = vfmaq_f32(vdupq_n_f32(1.3398874e-3f), p, f);
  p = vfmaq_f32(vdupq_n_f32(9.6181291e-3f), p, f);
  p = vfmaq_f32(vdupq_n_f32(5.5504109e-2f), p, f);
  p = vfmaq_f32(vdupq_n_f32(2.4022652e-1f), p, f);
  p = vfmaq_f32(vdupq_n_f32(6.9314718e-1f), p, f);
  p = vfmaq_f32(vdupq_n_f32(1.0f), p, f);
  const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
  const float32x4_t r = vmulq_f32(p, vreinterpretq_f32_s32(e));
  const uint32x4_t under = vcltq_f32(x, lo);  // also true for -inf
  return vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(r), under));
}

}  // namespace
}  // namespace sparseops
