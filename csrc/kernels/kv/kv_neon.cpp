// NEON variant of bitmap-KV decode attention: records are expanded by walking their set bits (no NEON
// expand instruction; values widened on the way), the dot products, accumulation and rescaling run on
// float32x4 with fp32 accumulation.
#include <arm_neon.h>

#include "kv_attend.h"

namespace sparseops::kv {
namespace {

struct NeonOps : FP32Keys<NeonOps> {
  static inline void expand(DType d, const uint8_t* bits, const void* vals, int D, int k, float* out) {
    for (int c = 0; c < D; c += 4) vst1q_f32(out + c, vdupq_n_f32(0.0f));
    const char* v = static_cast<const char*>(vals);
    int j = 0;
    for (int c8 = 0; c8 < D / 8 && j < k; ++c8)
      for (unsigned b = bits[c8]; b && j < k; b &= b - 1) out[c8 * 8 + __builtin_ctz(b)] = ScalarOps::cvt(d, v, j++);
  }
  static inline void load(DType d, const void* row, int D, float* out) {
    if (d == DType::f32) {
      for (int c = 0; c < D; c += 4) vst1q_f32(out + c, vld1q_f32(static_cast<const float*>(row) + c));
    } else if (d == DType::bf16) {
      const uint16_t* p = static_cast<const uint16_t*>(row);
      for (int c = 0; c < D; c += 4) vst1q_f32(out + c, vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p + c), 16)));
    } else {
      ScalarOps::load(d, row, D, out);
    }
  }
  static inline void scores(const float* qf, int64_t R, const float* blk, int n, int D, float, float* s) {
    for (int64_t r = 0; r < R; ++r)
      for (int j = 0; j < n; ++j) {
        const float* q = qf + r * D;
        const float* b = blk + j * D;
        float32x4_t a0 = vdupq_n_f32(0.0f), a1 = vdupq_n_f32(0.0f);
        for (int c = 0; c < D; c += 8) {
          a0 = vfmaq_f32(a0, vld1q_f32(q + c), vld1q_f32(b + c));
          a1 = vfmaq_f32(a1, vld1q_f32(q + c + 4), vld1q_f32(b + c + 4));
        }
        s[r * kBlock + j] = vaddvq_f32(vaddq_f32(a0, a1));
      }
  }
  static inline void accum(float* acc, const float* p, const float* blk, int n, int D) {
    for (int c = 0; c < D; c += 8) {
      float32x4_t a0 = vld1q_f32(acc + c), a1 = vld1q_f32(acc + c + 4);
      for (int j = 0; j < n; ++j) {
        a0 = vfmaq_n_f32(a0, vld1q_f32(blk + j * D + c), p[j]);
        a1 = vfmaq_n_f32(a1, vld1q_f32(blk + j * D + c + 4), p[j]);
      }
      vst1q_f32(acc + c, a0);
      vst1q_f32(acc + c + 4, a1);
    }
  }
  static inline void scal(float* acc, float alpha, int D) {
    for (int c = 0; c < D; c += 4) vst1q_f32(acc + c, vmulq_n_f32(vld1q_f32(acc + c), alpha));
  }
  static inline float exp_sum(float* s, float m, int n) { return ScalarOps::exp_sum(s, m, n); }
};

}  // namespace

void partial_neon(const AttnArgs& a, int64_t b, int64_t h, int64_t t0, int64_t t1, float* part) {
  attend_partial<NeonOps>(a, b, h, t0, t1, part);
}

}  // namespace sparseops::kv
