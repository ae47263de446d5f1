// Block-sparse attention, AVX-512 variant: register-tiled fp32 GEMM (6 rows x up to 64 columns), vector exp2
// and online softmax with 16 query columns per vector, vector dtype conversions; the algorithm is
// attn_impl.h's. bf16/fp16 inputs are widened to fp32 once per (query block, key block). A vdpbf16ps
// version of both GEMMs (P rounded to bf16) was measured ~1.6x SLOWER than this on the AVX512-BF16 dev
// machine (120 vs 75 GFLOP/s on one core, D=128), so it is not used.
#include <immintrin.h>

// GCC 12 flags the _mm512_undefined_* inside its own intrinsic headers as maybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "../common/exp2_avx512.h"
#include "attn_impl.h"

namespace sparseops::attn {
namespace {

// C[MR x 16*NR] (+)= A[MR x K] B[K x 16*NR]; A[r][k] at A[r * ars + k * aks].
template <int MR, int NR>
static inline void micro(int64_t K, const float* A, int64_t ars, int64_t aks, const float* B, int64_t ldb, float* C,
                         int64_t ldc, bool accumulate) {
  __m512 c[MR][NR];
  for (int r = 0; r < MR; ++r)
    for (int n = 0; n < NR; ++n) c[r][n] = accumulate ? _mm512_loadu_ps(C + r * ldc + 16 * n) : _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m512 b[NR];
    for (int n = 0; n < NR; ++n) b[n] = _mm512_loadu_ps(B + k * ldb + 16 * n);
    const float* ak = A + k * aks;
    for (int r = 0; r < MR; ++r) {
      const __m512 av = _mm512_set1_ps(ak[r * ars]);
      for (int n = 0; n < NR; ++n) c[r][n] = _mm512_fmadd_ps(av, b[n], c[r][n]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int n = 0; n < NR; ++n) _mm512_storeu_ps(C + r * ldc + 16 * n, c[r][n]);
}

template <int MR>
static inline void micro_rows(int64_t N, int64_t K, const float* A, int64_t ars, int64_t aks, const float* B,
                              int64_t ldb, float* C, int64_t ldc, bool acc) {
  int64_t j = 0;
  for (; j + 64 <= N; j += 64) micro<MR, 4>(K, A, ars, aks, B + j, ldb, C + j, ldc, acc);
  switch ((N - j) / 16) {
    case 3: micro<MR, 3>(K, A, ars, aks, B + j, ldb, C + j, ldc, acc); break;
    case 2: micro<MR, 2>(K, A, ars, aks, B + j, ldb, C + j, ldc, acc); break;
    case 1: micro<MR, 1>(K, A, ars, aks, B + j, ldb, C + j, ldc, acc); break;
    default: break;
  }
}

static inline __mmask16 tail_mask(int64_t n) { return static_cast<__mmask16>((1u << n) - 1u); }

struct Micro {
  template <int R>
  static void rows(int64_t N, int64_t K, const float* A, int64_t ars, int64_t aks, const float* B, int64_t ldb,
                   float* C, int64_t ldc, bool acc) {
    micro_rows<R>(N, K, A, ars, aks, B, ldb, C, ldc, acc);
  }
};

struct Avx512Ops {
  // whole blocks: 128 ran as fast as 64 on Zen 4 (1 MiB L2)
  static constexpr int kTile = kMaxBlock;
  static void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t ars, int64_t aks, const float* B,
                   int64_t ldb, float* C, int64_t ldc, bool acc, int64_t kdiag, int64_t ndiag) {
    gemm_rows<Micro>(M, N, K, A, ars, aks, B, ldb, C, ldc, acc, kdiag, ndiag);
  }
  static void load(DType dt, const void* src, int64_t n, float* dst) {
    int64_t i = 0;
    if (dt == DType::f32) {
      std::memcpy(dst, src, n * sizeof(float));
      return;
    }
    const uint16_t* s = static_cast<const uint16_t*>(src);
    for (; i < n; i += 16) {
      const __mmask16 m = n - i >= 16 ? __mmask16(0xffff) : tail_mask(n - i);
      const __m256i h = _mm256_maskz_loadu_epi16(m, s + i);
      const __m512 f = dt == DType::bf16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
                                         : _mm512_cvtph_ps(h);
      _mm512_mask_storeu_ps(dst + i, m, f);
    }
  }
  static void store(DType dt, const float* src, int64_t n, void* dst) { store_generic(dt, src, n, dst); }
  static void transpose(const float* S, int64_t lds, int64_t rows, int64_t cols, float mul, float* DT, int64_t ldd) {
    transpose_generic(S, lds, rows, cols, mul, DT, ldd);
  }
  // GenericOps::softmax with 16 query columns per vector.
  static void softmax(float* ST, int64_t ld, int64_t cols, int64_t n, int64_t diag, bool causal, int64_t nvalid,
                      float* m, float* l, float* alpha) {
    const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int64_t i = 0; i < n; i += 16) {
      // lim per lane: keys j < lim are visible.
      const __m512i ii = _mm512_add_epi32(lane, _mm512_set1_epi32(static_cast<int32_t>(i)));
      __m512i lim = _mm512_set1_epi32(static_cast<int32_t>(cols));
      if (causal)
        lim = _mm512_min_epi32(lim, _mm512_add_epi32(ii, _mm512_set1_epi32(static_cast<int32_t>(diag + 1))));
      lim = _mm512_mask_mov_epi32(lim, _mm512_cmpge_epi32_mask(ii, _mm512_set1_epi32(static_cast<int32_t>(nvalid))),
                                  _mm512_setzero_si512());
      // Every lane sees every key of the block (the common case): no per-key masks.
      const bool all = i + 16 <= nvalid && (!causal || diag + i + 1 >= cols);
      __m512 mx = ninf;
      if (all) {
        for (int64_t j = 0; j < cols; ++j) mx = _mm512_max_ps(mx, _mm512_loadu_ps(ST + j * ld + i));
      } else {
        for (int64_t j = 0; j < cols; ++j) {
          const __mmask16 vis = _mm512_cmpgt_epi32_mask(lim, _mm512_set1_epi32(static_cast<int32_t>(j)));
          mx = _mm512_mask_max_ps(mx, vis, mx, _mm512_loadu_ps(ST + j * ld + i));
        }
      }
      const __m512 mold = _mm512_loadu_ps(m + i);
      const __m512 mnew = _mm512_max_ps(mold, mx);
      const __m512 msafe = _mm512_mask_mov_ps(mnew, _mm512_cmp_ps_mask(mnew, ninf, _CMP_EQ_OQ), _mm512_setzero_ps());
      __m512 sum = _mm512_setzero_ps();
      for (int64_t j = 0; j < cols; ++j) {
        const __mmask16 vis = all ? __mmask16(0xffff)
                                  : _mm512_cmpgt_epi32_mask(lim, _mm512_set1_epi32(static_cast<int32_t>(j)));
        const __m512 p = _mm512_maskz_mov_ps(vis, exp2_v(_mm512_sub_ps(_mm512_loadu_ps(ST + j * ld + i), msafe)));
        _mm512_storeu_ps(ST + j * ld + i, p);
        sum = _mm512_add_ps(sum, p);
      }
      const __m512 al = exp2_v(_mm512_sub_ps(mold, msafe));
      _mm512_storeu_ps(alpha + i, al);
      _mm512_storeu_ps(l + i, _mm512_fmadd_ps(_mm512_loadu_ps(l + i), al, sum));
      _mm512_storeu_ps(m + i, mnew);
    }
  }
};

}  // namespace

void block_avx512(const Args& a, int64_t b, const Item* items, int n, bool reverse, float* scratch) {
  run_items<Avx512Ops>(a, b, items, n, reverse, scratch);
}

}  // namespace sparseops::attn
