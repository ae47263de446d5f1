// AVX-512 dense variant: 16-lane fp32 tiles (4 outputs x 4 x-rows in 16 of the 32 zmm registers).
// GCC 12 warns about the deliberately undefined source operand inside its own AVX-512 intrinsics.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "dense_run.h"

namespace sparseops::dense {
namespace {

struct Avx512Cvt {
  static void bf16(const uint16_t* s, float* d, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
      __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i));
      _mm512_storeu_ps(d + i, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
    }
    for (; i < n; ++i) d[i] = bf16_to_f32(s[i]);
  }
  static void f16(const uint16_t* s, float* d, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
      _mm512_storeu_ps(d + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i))));
    for (; i < n; ++i) d[i] = f16_to_f32(s[i]);
  }
};

}  // namespace

void linear_avx512(const LinearArgs& a, int64_t o_begin, int64_t o_end) {
  run_dense<16, 4, Avx512Cvt>(a, o_begin, o_end);
}

}  // namespace sparseops::dense
