// Block-sparse attention, AVX2 + FMA + F16C variant: register-tiled fp32 GEMM (6 rows x 16 columns),
// vector exp2 and online softmax with 8 query columns per vector; the algorithm is attn_impl.h's.
#include <immintrin.h>

#include "../common/exp2_avx2.h"
#include "attn_impl.h"

namespace sparseops::attn {
namespace {

// C[MR x 16] (+)= A[MR x K] B[K x 16]; A[r][k] at A[r * ars + k * aks].
template <int MR>
static inline void micro(int64_t K, const float* A, int64_t ars, int64_t aks, const float* B, int64_t ldb, float* C,
                         int64_t ldc, bool accumulate) {
  __m256 c[MR][2];
  for (int r = 0; r < MR; ++r)
    for (int n = 0; n < 2; ++n) c[r][n] = accumulate ? _mm256_loadu_ps(C + r * ldc + 8 * n) : _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const __m256 b0 = _mm256_loadu_ps(B + k * ldb), b1 = _mm256_loadu_ps(B + k * ldb + 8);
    const float* ak = A + k * aks;
    for (int r = 0; r < MR; ++r) {
      const __m256 av = _mm256_broadcast_ss(ak + r * ars);
      c[r][0] = _mm256_fmadd_ps(av, b0, c[r][0]);
      c[r][1] = _mm256_fmadd_ps(av, b1, c[r][1]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int n = 0; n < 2; ++n) _mm256_storeu_ps(C + r * ldc + 8 * n, c[r][n]);
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

struct Avx2Ops {
  // 64-row / 64-key tiles: at 128 the GEMM operands (64 KiB each) leave L1; ~10% slower on Zen 3
  static constexpr int kTile = 64;
  static void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t ars, int64_t aks, const float* B,
                   int64_t ldb, float* C, int64_t ldc, bool acc, int64_t kdiag, int64_t ndiag) {
    gemm_rows<Micro>(M, N, K, A, ars, aks, B, ldb, C, ldc, acc, kdiag, ndiag);
  }
  static void load(DType dt, const void* src, int64_t n, float* dst) {
    if (dt == DType::f32) {
      std::memcpy(dst, src, n * sizeof(float));
      return;
    }
    const uint16_t* s = static_cast<const uint16_t*>(src);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i));
      const __m256 f = dt == DType::bf16 ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
                                         : _mm256_cvtph_ps(h);
      _mm256_storeu_ps(dst + i, f);
    }
    load_generic(dt, s + i, n - i, dst + i);
  }
  static void store(DType dt, const float* src, int64_t n, void* dst) { store_generic(dt, src, n, dst); }
  // GenericOps::transpose in 8 x 8 tiles.
  static void transpose(const float* S, int64_t lds, int64_t rows, int64_t cols, float mul, float* DT, int64_t ldd) {
    const __m256 vm = _mm256_set1_ps(mul);
    const int64_t r8 = rows & ~int64_t(7), c8 = cols & ~int64_t(7);
    for (int64_t r = 0; r < r8; r += 8)
      for (int64_t c = 0; c < c8; c += 8) {
        __m256 x[8], y[8];
        for (int k = 0; k < 8; ++k) x[k] = _mm256_mul_ps(vm, _mm256_loadu_ps(S + (r + k) * lds + c));
        for (int k = 0; k < 8; k += 2) {
          y[k] = _mm256_unpacklo_ps(x[k], x[k + 1]);
          y[k + 1] = _mm256_unpackhi_ps(x[k], x[k + 1]);
        }
        for (int k = 0; k < 8; k += 4) {
          x[k] = _mm256_shuffle_ps(y[k], y[k + 2], _MM_SHUFFLE(1, 0, 1, 0));
          x[k + 1] = _mm256_shuffle_ps(y[k], y[k + 2], _MM_SHUFFLE(3, 2, 3, 2));
          x[k + 2] = _mm256_shuffle_ps(y[k + 1], y[k + 3], _MM_SHUFFLE(1, 0, 1, 0));
          x[k + 3] = _mm256_shuffle_ps(y[k + 1], y[k + 3], _MM_SHUFFLE(3, 2, 3, 2));
        }
        // x[0..3]: columns c+0, c+1, c+2, c+3 of rows r..r+3 (low half) and of rows r..r+3 from the second
        // 128-bit lane (columns c+4..c+7); x[4..7] the same for rows r+4..r+7.
        for (int k = 0; k < 4; ++k) {
          _mm256_storeu_ps(DT + (c + k) * ldd + r, _mm256_permute2f128_ps(x[k], x[k + 4], 0x20));
          _mm256_storeu_ps(DT + (c + k + 4) * ldd + r, _mm256_permute2f128_ps(x[k], x[k + 4], 0x31));
        }
      }
    for (int64_t r = 0; r < rows; ++r)  // the edges
      for (int64_t c = r < r8 ? c8 : 0; c < cols; ++c) DT[c * ldd + r] = S[r * lds + c] * mul;
  }
  // GenericOps::softmax with 8 query columns per vector.
  static void softmax(float* ST, int64_t ld, int64_t cols, int64_t n, int64_t diag, bool causal, int64_t nvalid,
                      float* m, float* l, float* alpha) {
    const __m256 ninf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int64_t i = 0; i < n; i += 8) {
      const __m256i ii = _mm256_add_epi32(lane, _mm256_set1_epi32(static_cast<int32_t>(i)));
      __m256i lim = _mm256_set1_epi32(static_cast<int32_t>(cols));
      if (causal) lim = _mm256_min_epi32(lim, _mm256_add_epi32(ii, _mm256_set1_epi32(static_cast<int32_t>(diag + 1))));
      const __m256i invalid = _mm256_cmpgt_epi32(ii, _mm256_set1_epi32(static_cast<int32_t>(nvalid - 1)));
      lim = _mm256_andnot_si256(invalid, lim);
      // Keys from jend on are invisible to every lane (causal triangle / padding rows): P = 0 there, no exp.
      // all: every lane sees every key below jend (full blocks): no per-key masks.
      const int64_t jend = i >= nvalid ? 0 : causal ? std::min<int64_t>(cols, std::max<int64_t>(0, diag + i + 8)) : cols;
      const bool all = i + 8 <= nvalid && (!causal || diag + i + 1 >= cols);
      __m256 mx = ninf;
      if (all) {
        __m256 mx1 = ninf;
        int64_t j = 0;
        for (; j + 2 <= jend; j += 2) {
          mx = _mm256_max_ps(mx, _mm256_loadu_ps(ST + j * ld + i));
          mx1 = _mm256_max_ps(mx1, _mm256_loadu_ps(ST + (j + 1) * ld + i));
        }
        if (j < jend) mx = _mm256_max_ps(mx, _mm256_loadu_ps(ST + j * ld + i));
        mx = _mm256_max_ps(mx, mx1);
      } else {
        for (int64_t j = 0; j < jend; ++j) {
          const __m256 vis = _mm256_castsi256_ps(_mm256_cmpgt_epi32(lim, _mm256_set1_epi32(static_cast<int32_t>(j))));
          mx = _mm256_max_ps(mx, _mm256_blendv_ps(ninf, _mm256_loadu_ps(ST + j * ld + i), vis));
        }
      }
      const __m256 mold = _mm256_loadu_ps(m + i);
      const __m256 mnew = _mm256_max_ps(mold, mx);
      const __m256 msafe = _mm256_andnot_ps(_mm256_cmp_ps(mnew, ninf, _CMP_EQ_OQ), mnew);
      __m256 sum = _mm256_setzero_ps();
      if (all) {
        __m256 sum1 = _mm256_setzero_ps();
        int64_t j = 0;
        for (; j + 2 <= jend; j += 2) {
          const __m256 p0 = exp2_v(_mm256_sub_ps(_mm256_loadu_ps(ST + j * ld + i), msafe));
          const __m256 p1 = exp2_v(_mm256_sub_ps(_mm256_loadu_ps(ST + (j + 1) * ld + i), msafe));
          _mm256_storeu_ps(ST + j * ld + i, p0);
          _mm256_storeu_ps(ST + (j + 1) * ld + i, p1);
          sum = _mm256_add_ps(sum, p0);
          sum1 = _mm256_add_ps(sum1, p1);
        }
        if (j < jend) {
          const __m256 p0 = exp2_v(_mm256_sub_ps(_mm256_loadu_ps(ST + j * ld + i), msafe));
          _mm256_storeu_ps(ST + j * ld + i, p0);
          sum = _mm256_add_ps(sum, p0);
        }
        sum = _mm256_add_ps(sum, sum1);
      } else {
        for (int64_t j = 0; j < jend; ++j) {
          const __m256 vis = _mm256_castsi256_ps(_mm256_cmpgt_epi32(lim, _mm256_set1_epi32(static_cast<int32_t>(j))));
          const __m256 p = _mm256_and_ps(vis, exp2_v(_mm256_sub_ps(_mm256_loadu_ps(ST + j * ld + i), msafe)));
          _mm256_storeu_ps(ST + j * ld + i, p);
          sum = _mm256_add_ps(sum, p);
        }
      }
      for (int64_t j = jend; j < cols; ++j) _mm256_storeu_ps(ST + j * ld + i, _mm256_setzero_ps());
      const __m256 al = exp2_v(_mm256_sub_ps(mold, msafe));
      _mm256_storeu_ps(alpha + i, al);
      _mm256_storeu_ps(l + i, _mm256_fmadd_ps(_mm256_loadu_ps(l + i), al, sum));
      _mm256_storeu_ps(m + i, mnew);
    }
  }
};

}  // namespace

void block_avx2(const Args& a, int64_t b, const Item* items, int n, bool reverse, float* scratch) {
  run_items<Avx2Ops>(a, b, items, n, reverse, scratch);
}

}  // namespace sparseops::attn
