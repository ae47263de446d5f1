// NEON CSR variant. AArch64 has no gather: the GEMV path loads four x values by index into one
// vector per step and keeps two vector accumulators; tiles are 4 q-registers (16 columns of B) per
// entry, entries two at a time.
#include <arm_neon.h>

#include "csr_impl.h"

namespace sparseops::csr {
namespace {

static inline float32x4_t val4(const float* v) { return vld1q_f32(v); }
static inline float32x4_t val4(const Bf16* v) {
  return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(reinterpret_cast<const uint16_t*>(v)), 16));
}
static inline float32x4_t val4(const F16* v) {
  return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(reinterpret_cast<const uint16_t*>(v))));
}

// Four x values by index; an index >= K (unsigned) reads x[0] instead and is flagged in *over.
template <class I>
static inline float32x4_t gather4(const float* x, const I* c, uint32_t K, uint32_t* over) {
  uint32_t k[4];
  for (int i = 0; i < 4; ++i) {
    k[i] = static_cast<uint32_t>(c[i]);
    *over |= k[i] >= K;
    k[i] = k[i] < K ? k[i] : 0;
  }
  float32x4_t r = vdupq_n_f32(x[k[0]]);
  r = vsetq_lane_f32(x[k[1]], r, 1);
  r = vsetq_lane_f32(x[k[2]], r, 2);
  return vsetq_lane_f32(x[k[3]], r, 3);
}

struct NeonOps {
  static constexpr int W = 4;
  static constexpr int kMaxNV = 4;

  template <class V, class I>
  static float dot(const V* v, const I* c, int64_t n, int64_t, const float* x, uint32_t K, bool* bad) {
    float32x4_t a0 = vdupq_n_f32(0.f), a1 = vdupq_n_f32(0.f);
    uint32_t over = 0;
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
      a0 = vfmaq_f32(a0, val4(v + j), gather4(x, c + j, K, &over));
      a1 = vfmaq_f32(a1, val4(v + j + 4), gather4(x, c + j + 4, K, &over));
    }
    if (over) {
      *bad = true;
      return 0.f;
    }
    float s = vaddvq_f32(vaddq_f32(a0, a1));
    for (; j < n; ++j) {
      const uint32_t k = static_cast<uint32_t>(c[j]);
      if (k >= K) {
        *bad = true;
        return 0.f;
      }
      s += to_f32(v[j]) * x[k];
    }
    return s;
  }

  template <int NV, class V, class I>
  static void tile(const V* v, const I* c, int64_t n, const float* b, int64_t ldb, uint32_t K, float* out,
                   bool* bad) {
    float32x4_t a[NV], e[NV];
    for (int t = 0; t < NV; ++t) a[t] = e[t] = vdupq_n_f32(0.f);
    int64_t j = 0;
    for (; j + 2 <= n; j += 2) {
      if ((static_cast<uint32_t>(c[j]) >= K) | (static_cast<uint32_t>(c[j + 1]) >= K)) {
        *bad = true;
        return;
      }
      const float w0 = to_f32(v[j]), w1 = to_f32(v[j + 1]);
      const float* r0 = b + static_cast<int64_t>(c[j]) * ldb;
      const float* r1 = b + static_cast<int64_t>(c[j + 1]) * ldb;
      for (int t = 0; t < NV; ++t) {
        a[t] = vfmaq_n_f32(a[t], vld1q_f32(r0 + t * W), w0);
        e[t] = vfmaq_n_f32(e[t], vld1q_f32(r1 + t * W), w1);
      }
    }
    if (j < n) {
      if (static_cast<uint32_t>(c[j]) >= K) {
        *bad = true;
        return;
      }
      const float w0 = to_f32(v[j]);
      const float* r0 = b + static_cast<int64_t>(c[j]) * ldb;
      for (int t = 0; t < NV; ++t) a[t] = vfmaq_n_f32(a[t], vld1q_f32(r0 + t * W), w0);
    }
    for (int t = 0; t < NV; ++t) vst1q_f32(out + t * W, vaddq_f32(a[t], e[t]));
  }
};

static_assert(NeonOps::kMaxNV * NeonOps::W == tile_columns(Isa::neon), "packed_ld pads by this tile width");

}  // namespace

int64_t spmm_neon(const SpmmArgs& a, int64_t o_begin, int64_t o_end) { return run<NeonOps>(a, o_begin, o_end); }

}  // namespace sparseops::csr
