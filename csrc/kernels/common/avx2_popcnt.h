// Per-byte popcount with a nibble table (AVX2 has no vpopcntb). Static inline only: included by files
// built with AVX2 flags (half.h explains why that matters).
#pragma once
#include <immintrin.h>

namespace sparseops {
namespace {

static inline __m128i popcnt_epi8(__m128i v) {
  const __m128i lut = _mm_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4), lo = _mm_set1_epi8(0x0f);
  return _mm_add_epi8(_mm_shuffle_epi8(lut, _mm_and_si128(v, lo)),
                      _mm_shuffle_epi8(lut, _mm_and_si128(_mm_srli_epi16(v, 4), lo)));
}

static inline __m256i popcnt_epi8(__m256i v) {
  const __m256i lut = _mm256_broadcastsi128_si256(_mm_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4));
  const __m256i lo = _mm256_set1_epi8(0x0f);
  return _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(v, lo)),
                         _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), lo)));
}

}  // namespace
}  // namespace sparseops
