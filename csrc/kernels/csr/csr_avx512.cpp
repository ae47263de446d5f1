// AVX-512 CSR variant: the AVX2 scheme at 16 lanes. GEMV reads 16 x values by scalar loads (indices checked
// by one vector compare first) with two accumulators and masked loads for a row's tail; tiles are up to 4 zmm
// (64 columns of B) per entry, entries two (four at one zmm) at a time.
// GCC 12 warns about the deliberately undefined source operand inside its own AVX-512 intrinsics.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "../common/transpose_avx512.h"
#include "csr_impl.h"
#include "csr_x86_load.h"

namespace sparseops::csr {
namespace {

static inline __m512i idx16(const uint16_t* c) {
  return _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(c)));
}
static inline __m512i idx16(const int32_t* c) { return _mm512_loadu_si512(c); }
static inline __m512 val16(const float* v) { return _mm512_loadu_ps(v); }
static inline __m512 val16(const Bf16* v) {
  __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(v)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
static inline __m512 val16(const F16* v) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(v))); }
// The first lanes of `live` only (masked loads: nothing past them is read, so a row's tail needs no copy).
static inline __m512i idx16(const uint16_t* c, __mmask16 live) {
  return _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(live, c));
}
static inline __m512i idx16(const int32_t* c, __mmask16 live) { return _mm512_maskz_loadu_epi32(live, c); }
static inline __m512 val16(const float* v, __mmask16 live) { return _mm512_maskz_loadu_ps(live, v); }
static inline __m512 val16(const Bf16* v, __mmask16 live) {
  __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(live, v));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
static inline __m512 val16(const F16* v, __mmask16 live) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(live, v)); }

struct Avx512Ops {
  static constexpr int W = 16;
  static constexpr int kMaxNV = 4;

  // x[c[0..16)] by scalar loads (csr_x86_load.h), which beat vgatherdps at 90-95% sparsity on Zen 4 as on
  // Zen 3. Indices must be checked first.
  template <class I>
  static inline __m512 load16(const float* x, const I* c) {
    const __m256 lo = _mm256_set_m128(load4(x, c + 4), load4(x, c));
    const __m256 hi = _mm256_set_m128(load4(x, c + 12), load4(x, c + 8));
    return _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1);
  }

  template <class V, class I>
  static float dot(const V* v, const I* c, int64_t n, int64_t, const float* x, uint32_t K, bool* bad) {
    const __m512i kv = _mm512_set1_epi32(static_cast<int>(K));
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 32 <= n; j += 32) {
      prefetch_entries<32>(v + j, c + j);
      // every index < K (unsigned) before any is dereferenced
      if ((_mm512_cmplt_epu32_mask(idx16(c + j), kv) & _mm512_cmplt_epu32_mask(idx16(c + j + 16), kv)) != 0xffff) {
        *bad = true;
        return 0.f;
      }
      a0 = _mm512_fmadd_ps(val16(v + j), load16(x, c + j), a0);
      a1 = _mm512_fmadd_ps(val16(v + j + 16), load16(x, c + j + 16), a1);
    }
    for (; j < n; j += 16) {  // 1..31 left, 16 lanes at a time: masked loads, dead lanes read x[0] times 0
      const __mmask16 live = n - j >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << (n - j)) - 1u);
      const __m512i idx = idx16(c + j, live);
      if (static_cast<__mmask16>(_mm512_cmplt_epu32_mask(idx, kv) | ~live) != 0xffff) {
        *bad = true;
        return 0.f;
      }
      alignas(64) int32_t k[16];
      _mm512_store_si512(k, idx);
      a1 = _mm512_fmadd_ps(val16(v + j, live), _mm512_maskz_mov_ps(live, load16(x, k)), a1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
  }

  // Entries U at a time into U sets of NV accumulators. At M <= 16 (NV = 1) two entries at a time left two
  // dependent FMA chains, half the FMA rate at latency 4; four entries make four chains.
  template <int NV, class V, class I>
  static void tile(const V* v, const I* c, int64_t n, const float* b, int64_t ldb, uint32_t K, float* out,
                   bool* bad) {
    constexpr int U = NV == 1 ? 4 : 2;
    __m512 s[U][NV];
    for (int u = 0; u < U; ++u)
      for (int t = 0; t < NV; ++t) s[u][t] = _mm512_setzero_ps();
    auto entry = [&](int64_t e, int u) __attribute__((always_inline)) {  // s[u] += v[e] * B's row c[e] (checked)
      const __m512 w = _mm512_set1_ps(to_f32(v[e]));
      const float* r = b + static_cast<int64_t>(c[e]) * ldb;
      for (int t = 0; t < NV; ++t) s[u][t] = _mm512_fmadd_ps(w, _mm512_loadu_ps(r + t * W), s[u][t]);
    };
    int64_t j = 0;
    if constexpr (NV == 1) {
      // 32 entries per vector check of their indices: the scalar compare per entry cost 13-21% at M <= 16
      // (bench/results/csr-tile-check-ab-zen5-2c-1d1aa2b); at M=128 (four vectors per entry) this ran 1-3% slower.
      const __m512i kv = _mm512_set1_epi32(static_cast<int>(K));
      for (; j + 32 <= n; j += 32) {
        prefetch_entries<32>(v + j, c + j);
        if ((_mm512_cmplt_epu32_mask(idx16(c + j), kv) & _mm512_cmplt_epu32_mask(idx16(c + j + 16), kv)) != 0xffff) {
          *bad = true;
          return;
        }
#pragma GCC unroll 8
        for (int u0 = 0; u0 < 32; u0 += U)
          for (int u = 0; u < U; ++u) entry(j + u0 + u, u);
      }
    }
    for (; j + U <= n; j += U) {
      // the entry streams, as in dot(), where one tile covers all of B's columns (M <= 16); with several column
      // blocks per row the prefetches repeat and measured mixed at M=128 (csr-prefetch-tile-ab-xeon2c-31abde3)
      if (NV * W <= 16 && (j & 31) == 0) prefetch_entries<32>(v + j, c + j);
      uint32_t over = 0;
      for (int u = 0; u < U; ++u) over |= static_cast<uint32_t>(static_cast<uint32_t>(c[j + u]) >= K);
      if (over) {
        *bad = true;
        return;
      }
      for (int u = 0; u < U; ++u) entry(j + u, u);
    }
    for (; j < n; ++j) {
      if (static_cast<uint32_t>(c[j]) >= K) {
        *bad = true;
        return;
      }
      entry(j, 0);
    }
    for (int u = 1; u < U; ++u)
      for (int t = 0; t < NV; ++t) s[0][t] = _mm512_add_ps(s[0][t], s[u][t]);
    for (int t = 0; t < NV; ++t) _mm512_storeu_ps(out + t * W, s[0][t]);
  }
};

static_assert(Avx512Ops::kMaxNV * Avx512Ops::W == tile_columns(Isa::avx512), "packed_ld pads by this tile width");

// pack_b for row-major x (unit stride along k): 16 rows x 16 k at a time through a register transpose, the
// finiteness of each row checked on the same loads. The column-by-column scalar pack wrote a different line per
// element and took ~25-30 us for x [16, 4096] on one thread, a tenth of a whole M=16 call at 95% sparsity.
template <class V>
static void pack_rows(const V* src, int64_t sj, int64_t K, int64_t N, float* b, int64_t ldb, uint8_t* nonfinite,
                      int64_t j0, int64_t j1) {
  const __m512i mag = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000);
  for (int64_t jb = j0; jb < j1; jb += 16) {
    const int jn = static_cast<int>(std::min<int64_t>(16, std::max<int64_t>(0, N - jb)));
    uint32_t bad = 0;
    for (int64_t k0 = 0; k0 < K; k0 += 16) {
      const int kn = static_cast<int>(std::min<int64_t>(16, K - k0));
      const __mmask16 live = static_cast<__mmask16>((1u << kn) - 1u);
      __m512i r[16];
      for (int j = 0; j < 16; ++j) {
        r[j] = _mm512_castps_si512(j < jn ? val16(src + (jb + j) * sj + k0, live) : _mm512_setzero_ps());
        bad |= static_cast<uint32_t>(_mm512_cmpge_epu32_mask(_mm512_and_si512(r[j], mag), inf) != 0) << j;
      }
      transpose16_epi32(r);
      for (int k = 0; k < kn; ++k) _mm512_storeu_si512(b + (k0 + k) * ldb + jb, r[k]);
    }
    if (nonfinite)
      for (int j = 0; j < jn; ++j) nonfinite[jb + j] = (bad >> j) & 1;
  }
}

}  // namespace

int64_t spmm_avx512(const SpmmArgs& a, int64_t o_begin, int64_t o_end) { return run<Avx512Ops>(a, o_begin, o_end); }

void pack_b_avx512(DType dtype, const void* src, int64_t sk, int64_t sj, int64_t K, int64_t N, float* b, int64_t ldb,
                   uint8_t* nonfinite, int64_t j_begin, int64_t j_end) {
  if (sk != 1 || N < 2 || ldb % 16 || j_begin % 16 || (j_end - j_begin) % 16)
    return pack_b(dtype, src, sk, sj, K, N, b, ldb, nonfinite, j_begin, j_end);
  switch (dtype) {
    case DType::f32: return pack_rows(static_cast<const float*>(src), sj, K, N, b, ldb, nonfinite, j_begin, j_end);
    case DType::bf16: return pack_rows(static_cast<const Bf16*>(src), sj, K, N, b, ldb, nonfinite, j_begin, j_end);
    case DType::f16: return pack_rows(static_cast<const F16*>(src), sj, K, N, b, ldb, nonfinite, j_begin, j_end);
  }
}

}  // namespace sparseops::csr
