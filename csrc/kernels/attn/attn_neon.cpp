// Block-sparse attention, NEON variant (aarch64): register-tiled fp32 GEMM (6 rows x 16 columns), vector exp2
// and online softmax with 4 query columns per vector; the algorithm is attn_impl.h's. bf16/fp16 are widened
// to fp32 by the shared scalar conversions (once per key block, off the hot loops).
#include <arm_neon.h>

#include "../common/exp2_neon.h"
#include "attn_impl.h"

namespace sparseops::attn {
namespace {

// C[MR x 16] (+)= A[MR x K] B[K x 16]; A[r][k] at A[r * ars + k * aks].
template <int MR>
static inline void micro(int64_t K, const float* A, int64_t ars, int64_t aks, const float* B, int64_t ldb, float* C,
                         int64_t ldc, bool accumulate) {
  float32x4_t c[MR][4];
  for (int r = 0; r < MR; ++r)
    for (int n = 0; n < 4; ++n) c[r][n] = accumulate ? vld1q_f32(C + r * ldc + 4 * n) : vdupq_n_f32(0.0f);
  for (int64_t k = 0; k < K; ++k) {
    const float* bk = B + k * ldb;
    const float32x4_t b0 = vld1q_f32(bk), b1 = vld1q_f32(bk + 4), b2 = vld1q_f32(bk + 8), b3 = vld1q_f32(bk + 12);
    const float* ak = A + k * aks;
    for (int r = 0; r < MR; ++r) {
      const float av = ak[r * ars];
      c[r][0] = vfmaq_n_f32(c[r][0], b0, av);
      c[r][1] = vfmaq_n_f32(c[r][1], b1, av);
      c[r][2] = vfmaq_n_f32(c[r][2], b2, av);
      c[r][3] = vfmaq_n_f32(c[r][3], b3, av);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int n = 0; n < 4; ++n) vst1q_f32(C + r * ldc + 4 * n, c[r][n]);
}

template <int MR>
static inline void micro_rows(int64_t N, int64_t K, const float* A, int64_t ars, int64_t aks, const float* B,
                              int64_t ldb, float* C, int64_t ldc, bool acc) {
  for (int64_t j = 0; j < N; j += 16) micro<MR>(K, A, ars, aks, B + j, ldb, C + j, ldc, acc);
}

struct Micro {
  template <int R>
  static void rows(int64_t N, int64_t K, const float* A, int64_t ars, int64_t aks, const float* B, int64_t ldb,
                   float* C, int64_t ldc, bool acc) {
    micro_rows<R>(N, K, A, ars, aks, B, ldb, C, ldc, acc);
  }
};

struct NeonOps {
  // whole blocks (not tuned)
  static constexpr int kTile = kMaxBlock;
  static void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t ars, int64_t aks, const float* B,
                   int64_t ldb, float* C, int64_t ldc, bool acc, int64_t kdiag, int64_t ndiag) {
    gemm_rows<Micro>(M, N, K, A, ars, aks, B, ldb, C, ldc, acc, kdiag, ndiag);
  }
  static void load(DType dt, const void* src, int64_t n, float* dst) { load_generic(dt, src, n, dst); }
  static void store(DType dt, const float* src, int64_t n, void* dst) { store_generic(dt, src, n, dst); }
  static void transpose(const float* S, int64_t lds, int64_t rows, int64_t cols, float mul, float* DT, int64_t ldd) {
    transpose_generic(S, lds, rows, cols, mul, DT, ldd);
  }
  // GenericOps::softmax with 4 query columns per vector.
  static void softmax(float* ST, int64_t ld, int64_t cols, int64_t n, int64_t diag, bool causal, int64_t nvalid,
                      float* m, float* l, float* alpha) {
    const float32x4_t ninf = vdupq_n_f32(-std::numeric_limits<float>::infinity());
    const int32_t lanes[4] = {0, 1, 2, 3};
    const int32x4_t lane = vld1q_s32(lanes);
    for (int64_t i = 0; i < n; i += 4) {
      const int32x4_t ii = vaddq_s32(lane, vdupq_n_s32(static_cast<int32_t>(i)));
      int32x4_t lim = vdupq_n_s32(static_cast<int32_t>(cols));
      if (causal) lim = vminq_s32(lim, vaddq_s32(ii, vdupq_n_s32(static_cast<int32_t>(diag + 1))));
      const uint32x4_t invalid = vcgeq_s32(ii, vdupq_n_s32(static_cast<int32_t>(nvalid)));
      lim = vbslq_s32(invalid, vdupq_n_s32(0), lim);
      float32x4_t mx = ninf;
      for (int64_t j = 0; j < cols; ++j) {
        const uint32x4_t vis = vcgtq_s32(lim, vdupq_n_s32(static_cast<int32_t>(j)));
        mx = vmaxq_f32(mx, vbslq_f32(vis, vld1q_f32(ST + j * ld + i), ninf));
      }
      const float32x4_t mold = vld1q_f32(m + i);
      const float32x4_t mnew = vmaxq_f32(mold, mx);
      const float32x4_t msafe = vbslq_f32(vceqq_f32(mnew, ninf), vdupq_n_f32(0.0f), mnew);
      float32x4_t sum = vdupq_n_f32(0.0f);
      for (int64_t j = 0; j < cols; ++j) {
        const uint32x4_t vis = vcgtq_s32(lim, vdupq_n_s32(static_cast<int32_t>(j)));
        const float32x4_t e = exp2_v(vsubq_f32(vld1q_f32(ST + j * ld + i), msafe));
        const float32x4_t p = vreinterpretq_f32_u32(vandq_u32(vis, vreinterpretq_u32_f32(e)));
        vst1q_f32(ST + j * ld + i, p);
        sum = vaddq_f32(sum, p);
      }
      const float32x4_t al = exp2_v(vsubq_f32(mold, msafe));
      vst1q_f32(alpha + i, al);
      vst1q_f32(l + i, vfmaq_f32(sum, vld1q_f32(l + i), al));
      vst1q_f32(m + i, mnew);
    }
  }
};

}  // namespace

void block_neon(const Args& a, int64_t b, const Item* items, int n, bool reverse, float* scratch) {
  run_items<NeonOps>(a, b, items, n, reverse, scratch);
}

}  // namespace sparseops::attn
