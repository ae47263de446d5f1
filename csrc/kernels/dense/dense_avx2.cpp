// AVX2 + FMA + F16C dense variant: 8-lane fp32 tiles, hardware fp16 conversion.
#include <immintrin.h>

#include "dense_run.h"

namespace sparseops::dense {
namespace {

struct Avx2Cvt {
  static void bf16(const uint16_t* s, float* d, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
      __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i));
      _mm256_storeu_ps(d + i, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)));
    }
    for (; i < n; ++i) d[i] = bf16_to_f32(s[i]);
  }
  static void f16(const uint16_t* s, float* d, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i))));
    for (; i < n; ++i) d[i] = f16_to_f32(s[i]);
  }
};

}  // namespace

void linear_avx2(const LinearArgs& a, int64_t o_begin, int64_t o_end) {
  run_dense<8, 2, Avx2Cvt>(a, o_begin, o_end);  // 8 accumulators of 16 ymm registers
}

}  // namespace sparseops::dense
