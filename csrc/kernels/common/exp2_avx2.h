// 2^x in __m256 lanes for the softmax of the attention and KV kernels: 2^n * 2^f (n = round(x), |f| <= 1/2)
// with a degree-6 polynomial for 2^f (rel. error ~2e-7); 0 below -126 (where 2^n leaves the normal range) and
// for -inf. Include only from a file compiled for this ISA (-mavx2 -mfma).
#pragma once
#include <immintrin.h>

namespace sparseops {
namespace {

static inline __m256 exp2_v(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-126.0f);
  const __m256 xc = _mm256_max_ps(x, lo);
  const __m256 n = _mm256_round_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(xc, n);
  __m256 p = _mm256_set1_ps(1.5353362e-4f);
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.3398874e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.6181291e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.5504109e-2f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.4022652e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.9314718e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const __m256 r = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  return _mm256_andnot_ps(_mm256_cmp_ps(x, lo, _CMP_LT_OQ), r);  // 0 below -126 (and for -inf)
}

}  // namespace
}  // namespace sparseops
