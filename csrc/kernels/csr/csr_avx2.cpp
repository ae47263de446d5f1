// AVX2 CSR variant. GEMV: 16 column indices are range-checked with one vector compare, then x is read with
// scalar loads (load8); two accumulators alternate; a tail of fewer than 16 goes 8 lanes at a time. Tiles: 4 ymm of B's row per
// entry, entries taken two at a time into separate accumulator sets (8 FMA chains hide FMA latency).
#include <immintrin.h>

#include "csr_impl.h"
#include "csr_x86_load.h"

namespace sparseops::csr {
namespace {

static inline __m256i idx8(const uint16_t* c) {
  return _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c)));
}
static inline __m256i idx8(const int32_t* c) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c)); }
static inline __m256 val8(const float* v) { return _mm256_loadu_ps(v); }
static inline __m256 val8(const Bf16* v) {
  __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
static inline __m256 val8(const F16* v) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v))); }

static inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// x[c[0..8)] by scalar loads (csr_x86_load.h). Indices must be checked first.
template <class I>
static inline __m256 load8(const float* x, const I* c) {
  return _mm256_set_m128(load4(x, c + 4), load4(x, c));
}

// Whether the 16 indices at c are all < K (unsigned): one vector compare before any of them is dereferenced.
static inline bool in_range16(const uint16_t* c, uint32_t K) {
  const __m256i i = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c));
  const __m256i kmax = _mm256_set1_epi16(static_cast<short>(K - 1));  // K <= 65536 for uint16 indices
  return _mm256_movemask_epi8(_mm256_cmpeq_epi16(_mm256_min_epu16(i, kmax), i)) == -1;
}
// -1 in the lanes of idx that are <= kmax (unsigned), else 0.
static inline __m256i lanes_in(__m256i idx, __m256i kmax) {
  return _mm256_cmpeq_epi32(_mm256_min_epu32(idx, kmax), idx);
}
static inline bool in_range16(const int32_t* c, uint32_t K) {
  const __m256i kmax = _mm256_set1_epi32(static_cast<int>(K - 1));
  return _mm256_movemask_epi8(_mm256_and_si256(lanes_in(idx8(c), kmax), lanes_in(idx8(c + 8), kmax))) == -1;
}

struct Avx2Ops {
  static constexpr int W = 8;
  static constexpr int kMaxNV = 4;

  template <class V, class I>
  static float dot(const V* v, const I* c, int64_t n, int64_t readable, const float* x, uint32_t K, bool* bad) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
      prefetch_entries<16>(v + j, c + j);
      if (!in_range16(c + j, K)) {
        *bad = true;
        return 0.f;
      }
      a0 = _mm256_fmadd_ps(val8(v + j), load8(x, c + j), a0);
      a1 = _mm256_fmadd_ps(val8(v + j + 8), load8(x, c + j + 8), a1);
    }
    // 1..15 left, 8 lanes at a time: whole vectors of the indices and values (read past the row's end while
    // that stays inside the arrays, else from a zero-padded copy) with the dead lanes zeroed, and the x values
    // by scalar loads as above. A copy loop and a masked vgatherdps per row weighed on short (sparse) rows.
    const __m256i kmax = _mm256_set1_epi32(static_cast<int>(K - 1));
    for (; j < n; j += 8) {
      const int r = static_cast<int>(std::min<int64_t>(8, n - j));
      const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32(r), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
      __m256i idx;
      __m256 val;
      if (j + 8 <= readable) {
        idx = idx8(c + j);
        val = val8(v + j);
      } else {
        I ci[8] = {};
        V vi[8] = {};
        for (int t = 0; t < r; ++t) { ci[t] = c[j + t]; vi[t] = v[j + t]; }
        idx = idx8(ci);
        val = val8(vi);
      }
      idx = _mm256_and_si256(idx, live);  // dead lanes read x[0], then count as 0 * 0
      if (_mm256_movemask_epi8(lanes_in(idx, kmax)) != -1) {
        *bad = true;
        return 0.f;
      }
      alignas(32) int32_t k[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(k), idx);
      const __m256 xv = _mm256_and_ps(load8(x, k), _mm256_castsi256_ps(live));
      a1 = _mm256_fmadd_ps(_mm256_and_ps(val, _mm256_castsi256_ps(live)), xv, a1);
    }
    return hsum(_mm256_add_ps(a0, a1));
  }

  template <int NV, class V, class I>
  static void tile(const V* v, const I* c, int64_t n, const float* b, int64_t ldb, uint32_t K, float* out,
                   bool* bad) {
    __m256 a[NV], e[NV];
    for (int t = 0; t < NV; ++t) a[t] = e[t] = _mm256_setzero_ps();
    auto entry = [&](int64_t k, __m256* acc) __attribute__((always_inline)) {  // acc += v[k] * B's row c[k] (checked)
      const __m256 w = _mm256_set1_ps(to_f32(v[k]));
      const float* r = b + static_cast<int64_t>(c[k]) * ldb;
      for (int t = 0; t < NV; ++t) acc[t] = _mm256_fmadd_ps(w, _mm256_loadu_ps(r + t * W), acc[t]);
    };
    int64_t j = 0;
    if (NV * W <= 16) {
      // 16 entries per vector check of their indices (in_range16) instead of a compare per entry, as in the
      // AVX-512 tile (bench/results/csr-tile-check-ab-zen5-2c-1d1aa2b: on Zen 5 under SPARSEOPS_ISA=avx2, bf16
      // 1.11-1.22x, fp32 1.00-1.07x)
      for (; j + 16 <= n; j += 16) {
        if ((j & 31) == 0) prefetch_entries<32>(v + j, c + j);
        if (!in_range16(c + j, K)) {
          *bad = true;
          return;
        }
#pragma GCC unroll 8
        for (int u = 0; u < 16; u += 2) {
          entry(j + u, a);
          entry(j + u + 1, e);
        }
      }
    }
    for (; j + 2 <= n; j += 2) {
      // the entry streams, as in dot(), where one tile covers all of B's columns (M <= 16); with several column
      // blocks per row the prefetches repeat and measured mixed at M=128 (csr-prefetch-tile-ab-xeon2c-31abde3)
      if (NV * W <= 16 && (j & 31) == 0) prefetch_entries<32>(v + j, c + j);
      if ((static_cast<uint32_t>(c[j]) >= K) | (static_cast<uint32_t>(c[j + 1]) >= K)) {
        *bad = true;
        return;
      }
      entry(j, a);
      entry(j + 1, e);
    }
    if (j < n) {
      if (static_cast<uint32_t>(c[j]) >= K) {
        *bad = true;
        return;
      }
      entry(j, a);
    }
    for (int t = 0; t < NV; ++t) _mm256_storeu_ps(out + t * W, _mm256_add_ps(a[t], e[t]));
  }
};

static_assert(Avx2Ops::kMaxNV * Avx2Ops::W == tile_columns(Isa::avx2), "packed_ld pads by this tile width");

}  // namespace

int64_t spmm_avx2(const SpmmArgs& a, int64_t o_begin, int64_t o_end) { return run<Avx2Ops>(a, o_begin, o_end); }

}  // namespace sparseops::csr
