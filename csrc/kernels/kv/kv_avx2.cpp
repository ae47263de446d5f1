// AVX2 variant of bitmap-KV decode attention. AVX2 has no expand instruction: a record's values are
// first widened to fp32 in a padded stack buffer, then each bitmap byte picks a lane permutation from a
// 256-entry table (vpermps) that moves the next popcount(byte) values to their channels; a blend
// zeroes the pruned lanes. Records whose popcount is not k take the scalar, clamped path.
#include <immintrin.h>

#include "kv_attend.h"

namespace sparseops::kv {
namespace {

struct ExpandTable {
  alignas(32) int32_t perm[256][8];  // lane i takes value number (set bits of the byte below i)
  alignas(32) int32_t keep[256][8];  // -1 where bit i is set
  ExpandTable() {
    for (int b = 0; b < 256; ++b)
      for (int i = 0, n = 0; i < 8; ++i) {
        const bool set = (b >> i) & 1;
        perm[b][i] = set ? n : 0;
        keep[b][i] = set ? -1 : 0;
        n += set;
      }
  }
};
const ExpandTable kTable;

static inline __m256 widen8(DType d, const char* p) {
  if (d == DType::f32) return _mm256_loadu_ps(reinterpret_cast<const float*>(p));
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return d == DType::bf16 ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)) : _mm256_cvtph_ps(h);
}

static inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

struct Avx2Ops : FP32Keys<Avx2Ops> {
  static inline void expand(DType d, const uint8_t* bits, const void* vals, int D, int k, float* out) {
    if (record_popcount(bits, D / 8) != k || D > 1024) return ScalarOps::expand(d, bits, vals, D, k, out);
    alignas(32) float tmp[1024 + 8];
    const char* v = static_cast<const char*>(vals);
    const int es = static_cast<int>(dtype_size(d));
    int i = 0;
    for (; i + 8 <= k; i += 8) _mm256_store_ps(tmp + i, widen8(d, v + i * es));
    for (; i < k; ++i) tmp[i] = ScalarOps::cvt(d, v, i);
    _mm256_storeu_ps(tmp + k, _mm256_setzero_ps());  // what the last byte may read past k
    int off = 0;
    for (int c = 0; c < D / 8; ++c) {
      const uint8_t b = bits[c];
      const __m256 x = _mm256_permutevar8x32_ps(_mm256_loadu_ps(tmp + off),
                                                _mm256_load_si256(reinterpret_cast<const __m256i*>(kTable.perm[b])));
      _mm256_storeu_ps(out + 8 * c,
                       _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_load_si256(
                                            reinterpret_cast<const __m256i*>(kTable.keep[b])))));
      off += __builtin_popcount(b);
    }
  }
  static inline void load(DType d, const void* row, int D, float* out) {
    const char* p = static_cast<const char*>(row);
    const int es = static_cast<int>(dtype_size(d));
    for (int c = 0; c < D; c += 8) _mm256_storeu_ps(out + c, widen8(d, p + c * es));
  }
  static inline void scores(const float* qf, int64_t R, const float* blk, int n, int D, float, float* s) {
    for (int64_t r = 0; r < R; ++r)
      for (int j = 0; j < n; ++j) {
        const float* q = qf + r * D;
        const float* b = blk + j * D;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        for (int c = 0; c < D; c += 16) {
          a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + c), _mm256_loadu_ps(b + c), a0);
          a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + c + 8), _mm256_loadu_ps(b + c + 8), a1);
        }
        s[r * kBlock + j] = hsum8(_mm256_add_ps(a0, a1));
      }
  }
  static inline void accum(float* acc, const float* p, const float* blk, int n, int D) {
    for (int c = 0; c < D; c += 16) {
      __m256 a0 = _mm256_loadu_ps(acc + c), a1 = _mm256_loadu_ps(acc + c + 8);
      for (int j = 0; j < n; ++j) {
        const __m256 pj = _mm256_set1_ps(p[j]);
        a0 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(blk + j * D + c), a0);
        a1 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(blk + j * D + c + 8), a1);
      }
      _mm256_storeu_ps(acc + c, a0);
      _mm256_storeu_ps(acc + c + 8, a1);
    }
  }
  static inline void scal(float* acc, float alpha, int D) {
    const __m256 a = _mm256_set1_ps(alpha);
    for (int c = 0; c < D; c += 8) _mm256_storeu_ps(acc + c, _mm256_mul_ps(a, _mm256_loadu_ps(acc + c)));
  }
  static inline float exp_sum(float* s, float m, int n) { return ScalarOps::exp_sum(s, m, n); }
};

}  // namespace

void partial_avx2(const AttnArgs& a, int64_t b, int64_t h, int64_t t0, int64_t t1, float* part) {
  attend_partial<Avx2Ops>(a, b, h, t0, t1, part);
}

}  // namespace sparseops::kv
