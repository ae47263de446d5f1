// AVX2 N:M variant. Each 16-column chunk is handled as two mask bytes of 8 columns. A 256-entry table
// per mask byte gives the vpermps indices that move the byte's kept values into their dense lanes,
// with the sign bit set on pruned lanes so one blendv zeroes them. For m <= 8 every byte of a valid
// row holds exactly c = 8n/m bits, so byte j's values are the fixed slice [j*c, j*c + c), read with
// a masked load of exactly c elements (the count is checked per byte, a chunk of 8 columns). For
// m == 16 the chunk's 16n/m values are copied into a zeroed buffer first and byte 1 starts at
// byte 0's popcount. Blocking, tails and the threading contract are in nm_x86_tile.h.
#include <immintrin.h>

#include "nm.h"
#include "nm_x86_tile.h"

namespace sparseops::nm {
namespace {

struct Tables {
  alignas(32) int32_t perm[256][8];  // lane j: index of its value in the byte's run, or INT32_MIN (pruned)
  alignas(32) int32_t first[9][8];   // -1 on the first k lanes (maskload of k dwords)
  alignas(16) int16_t last16[8][8];  // -1 on lane k only
  Tables() {
    for (int b = 0; b < 256; ++b) {
      int r = 0;
      for (int j = 0; j < 8; ++j) perm[b][j] = ((b >> j) & 1) ? r++ : INT32_MIN;
    }
    for (int k = 0; k <= 8; ++k)
      for (int j = 0; j < 8; ++j) first[k][j] = j < k ? -1 : 0;
    for (int k = 0; k < 8; ++k)
      for (int j = 0; j < 8; ++j) last16[k][j] = j == k ? -1 : 0;
  }
};

const Tables& tables() {
  static const Tables t;
  return t;
}

static inline __m256 widen(DType d, __m128i h) {
  if (d == DType::bf16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  return _mm256_cvtph_ps(h);
}

static inline __m256 place(const Tables& t, __m256 v, unsigned byte) {
  const __m256i idx = _mm256_load_si256(reinterpret_cast<const __m256i*>(t.perm[byte]));
  return _mm256_blendv_ps(_mm256_permutevar8x32_ps(v, idx), _mm256_setzero_ps(), _mm256_castsi256_ps(idx));
}

struct Avx2Dec {
  static constexpr int W = 8;
  static constexpr int small_max = 2;  // x rows the register-only path takes
  static int constexpr sparse_min_m = 48;  // from here on, kept-only multiplies (n/m <= 1/2)
  static constexpr int RM = 2;  // 4 x 2 accumulators + 4 weights + 1 x of the 16 ymm registers
  typedef float V __attribute__((vector_size(32)));
  struct Chunk { V v[2]; };
  static inline V bcast(float w) { return (V)_mm256_set1_ps(w); }

  struct Slice {
    const Tables* t;
    int cnt, c8;      // values per chunk, per mask byte (m <= 8; 0 for m == 16)
    __m256i ld32;     // first c8 dwords (fp32 values)
    __m128i ld16;     // first c8/2 dwords (16-bit values)
    __m128i odd16;    // lane c8-1 when c8 is odd
    explicit Slice(const x86::Geo& g) : t(&tables()), cnt(g.cnt), c8(g.m <= 8 ? 8 / g.m * g.n : 0) {
      ld32 = _mm256_load_si256(reinterpret_cast<const __m256i*>(t->first[c8]));
      ld16 = _mm_load_si128(reinterpret_cast<const __m128i*>(t->first[c8 / 2]));
      odd16 = (c8 & 1) ? _mm_load_si128(reinterpret_cast<const __m128i*>(t->last16[c8 - 1])) : _mm_setzero_si128();
    }
  };

  template <DType D>
  static inline __m256 load_run(const Slice& s, const char* vrow, int64_t pos) {
    if constexpr (D == DType::f32) {
      return _mm256_maskload_ps(reinterpret_cast<const float*>(vrow) + pos, s.ld32);
    } else {
      const uint16_t* p = reinterpret_cast<const uint16_t*>(vrow) + pos;
      __m128i h = _mm_maskload_epi32(reinterpret_cast<const int*>(p), s.ld16);
      if (s.c8 & 1) h = _mm_or_si128(h, _mm_and_si128(_mm_set1_epi16(static_cast<int16_t>(p[s.c8 - 1])), s.odd16));
      return widen(D, h);
    }
  }

  template <DType D>
  static inline int decode(const Slice& s, const char* vrow, const uint8_t* mrow, int64_t c, V* w) {
    const unsigned b0 = mrow[2 * c], b1 = mrow[2 * c + 1];
    if (s.c8) {
      const int64_t pos = c * s.cnt;
      w[0] = (V)place(*s.t, load_run<D>(s, vrow, pos), b0);
      w[1] = (V)place(*s.t, load_run<D>(s, vrow, pos + s.c8), b1);
      return (__builtin_popcount(b0) ^ s.c8) | (__builtin_popcount(b1) ^ s.c8);
    }
    // m == 16: the chunk's slice into a zero-padded buffer; byte 1 starts where byte 0's run ends.
    alignas(32) float buf[24] = {};
    const int64_t pos = c * s.cnt;
    if constexpr (D == DType::f32) {
      std::memcpy(buf, reinterpret_cast<const float*>(vrow) + pos, s.cnt * 4);
    } else {
      const uint16_t* p = reinterpret_cast<const uint16_t*>(vrow) + pos;
      for (int i = 0; i < s.cnt; ++i) buf[i] = D == DType::bf16 ? bf16_to_f32(p[i]) : f16_to_f32(p[i]);
    }
    const int p0 = __builtin_popcount(b0);
    w[0] = (V)place(*s.t, _mm256_load_ps(buf), b0);
    w[1] = (V)place(*s.t, _mm256_loadu_ps(buf + p0), b1);
    return (p0 + __builtin_popcount(b1)) ^ s.cnt;
  }

  static void cvt_row(DType d, const uint16_t* s, float* dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(dst + i, widen(d, _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i))));
    for (; i < n; ++i) dst[i] = d == DType::bf16 ? bf16_to_f32(s[i]) : f16_to_f32(s[i]);
  }
};

}  // namespace

int64_t linear_avx2(const LinearArgs& a, int64_t o_begin, int64_t o_end) {
  return x86::run<Avx2Dec>(a, o_begin, o_end);
}

int64_t decode_rows_avx2(const LinearArgs& a, void* dense, int64_t ld, int64_t o_begin, int64_t o_end) {
  return x86::decode_rows<Avx2Dec>(a, dense, ld, o_begin, o_end);
}

}  // namespace sparseops::nm
