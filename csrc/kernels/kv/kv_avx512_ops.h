// AVX-512 vector helpers of the bitmap-KV decode loop (kv_avx512_decode.h): bf16/fp16 widening, the softmax
// exp, and tree16, which folds 16 per-token partial-sum vectors into one vector of 16 scores.
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "../common/exp2_avx512.h"
#include "kv_attend.h"

namespace sparseops::kv {
namespace {

static inline __m512 widen16(DType d, const void* p, __mmask16 ld) {
  if (d == DType::f32) return _mm512_maskz_loadu_ps(ld, p);
  const __m256i h = _mm256_maskz_loadu_epi16(ld, p);
  return d == DType::bf16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
                          : _mm512_cvtph_ps(h);
}

// exp(x) for the softmax: 2^(x log2 e), so that attention and KV share one polynomial.
static inline __m512 exp512(__m512 x) { return exp2_v(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f))); }

// Permute indices of tree16, level by level (g = 8, 4, 2, 1 lanes per token after the level): output
// lane o takes, from vector a (o < 8) or b, group (o % 8) / g of width 2g, first half ("lo") or second.
struct TreeIndex {
  alignas(64) int32_t lo[4][16], hi[4][16];
  TreeIndex() {
    for (int l = 0, g = 8; l < 4; ++l, g /= 2)
      for (int o = 0; o < 16; ++o) {
        lo[l][o] = ((o % 8) / g) * 2 * g + o % g + (o >= 8 ? 16 : 0);
        hi[l][o] = lo[l][o] + g;
      }
  }
};
const TreeIndex kTree;

// 16 vectors of per-token partial sums -> one vector of the 16 token sums: a 4-level permute-add
// tree (45 ops instead of 16 horizontal reductions). Destroys x.
static inline __m512 tree16(__m512* x) {
#pragma GCC unroll 4
  for (int l = 0, m = 16; l < 4; ++l, m /= 2) {
    const __m512i lo = _mm512_load_si512(kTree.lo[l]), hi = _mm512_load_si512(kTree.hi[l]);
#pragma GCC unroll 8
    for (int i = 0; i < m / 2; ++i)
      x[i] = _mm512_add_ps(_mm512_permutex2var_ps(x[2 * i], lo, x[2 * i + 1]),
                           _mm512_permutex2var_ps(x[2 * i], hi, x[2 * i + 1]));
  }
  return x[0];
}

static inline void scal(float* acc, float alpha, int n) {  // n a multiple of 16
  const __m512 a = _mm512_set1_ps(alpha);
  for (int c = 0; c < n; c += 16) _mm512_storeu_ps(acc + c, _mm512_mul_ps(a, _mm512_loadu_ps(acc + c)));
}

}  // namespace
}  // namespace sparseops::kv
