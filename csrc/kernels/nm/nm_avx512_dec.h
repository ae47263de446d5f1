// The AVX-512 N:M chunk decoder (F/BW/VL/DQ only), shared by nm_avx512.cpp and nm_avx512x.cpp: a
// chunk's 16 mask bits are directly an AVX-512 k-mask; the chunk's fixed slice of kept values is read
// with a masked load (exactly cnt = 16n/m elements, whatever the mask says), widened to fp32 (bf16:
// shift, fp16: vcvtph2ps) and placed in its dense lanes with the register form of vexpandps (zeros
// elsewhere). A scalar popcount beside it checks the chunk's count.
#pragma once
#include <immintrin.h>

#include <cstring>

#include "nm.h"
#include "nm_x86_tile.h"

namespace sparseops::nm {
namespace {

struct Avx512Dec {
  static constexpr int W = 16;
  static constexpr int small_max = 4;  // x rows the register-only path takes
  static int constexpr sparse_min_m = 40;  // from here on, kept-only multiplies (n/m <= 1/2)
  static constexpr bool sparse_nv2 = false;  // 17..32-row remainders stay on the expanding path
  static constexpr int RM = 6;  // 4 x 6 accumulators + 4 weights + 1 x of the 32 zmm registers
  typedef float V __attribute__((vector_size(64)));
  struct Chunk { V v[1]; };
  static inline V bcast(float w) { return (V)_mm512_set1_ps(w); }

  struct Slice {
    int cnt;
    __mmask16 ld;  // the first cnt lanes
    explicit Slice(const x86::Geo& g) : cnt(g.cnt), ld(static_cast<__mmask16>((1u << g.cnt) - 1)) {}
  };

  // Chunk c of a row: 16 fp32 lanes into w[0]; returns nonzero if the chunk's count is off.
  template <DType D>
  static inline int decode(const Slice& s, const char* vrow, const uint8_t* mrow, int64_t c, V* w) {
    uint16_t bits;
    std::memcpy(&bits, mrow + 2 * c, 2);
    __m512 v;
    if constexpr (D == DType::f32) {
      // At most 8 values: a 256-bit load, which never splits across cache lines for 2:4 (32 B).
      const float* p = reinterpret_cast<const float*>(vrow) + c * s.cnt;
      v = s.cnt <= 8 ? _mm512_zextps256_ps512(_mm256_maskz_loadu_ps(static_cast<__mmask8>(s.ld), p))
                     : _mm512_maskz_loadu_ps(s.ld, p);
    } else {
      const __m256i h = _mm256_maskz_loadu_epi16(s.ld, reinterpret_cast<const uint16_t*>(vrow) + c * s.cnt);
      if constexpr (D == DType::bf16) v = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
      else v = _mm512_cvtph_ps(h);
    }
    w[0] = (V)_mm512_maskz_expand_ps(bits, v);
    // Bit 16 forces a 32-bit popcnt: GCC would otherwise emit `popcnt m16, r16`, whose merge into
    // the old register value makes a loop-carried dependency (measured: 3x slower decode).
    return __builtin_popcount(bits | 0x10000u) ^ (s.cnt + 1);
  }

  static void cvt_row(DType d, const uint16_t* s, float* dst, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
      const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i));
      _mm512_storeu_ps(dst + i, d == DType::bf16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
                                                 : _mm512_cvtph_ps(h));
    }
    for (; i < n; ++i) dst[i] = d == DType::bf16 ? bf16_to_f32(s[i]) : f16_to_f32(s[i]);
  }
};

}  // namespace
}  // namespace sparseops::nm
