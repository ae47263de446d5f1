// AVX-512 N:M variant. A chunk's 16 mask bits are directly an AVX-512 k-mask: the chunk's fixed
// slice of kept values is read with a masked load (exactly cnt = 16n/m elements, whatever the mask
// says), widened to fp32 (bf16: shift, fp16: vcvtph2ps) and placed in its dense lanes with the
// register form of vexpandps (zeros elsewhere). A scalar popcount beside it checks the chunk's
// count. Everything else (blocking, tails, threading contract) is in nm_x86_tile.h.
// GCC 12 warns about the deliberately undefined source operand inside its own AVX-512 intrinsics.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "nm.h"
#include "nm_x86_tile.h"

namespace sparseops::nm {
namespace {

struct Avx512Dec {
  static constexpr int W = 16;
  static constexpr int small_max = 4;  // x rows the register-only path takes
  static int constexpr sparse_min_m = 40;  // from here on, kept-only multiplies (n/m <= 1/2)
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

// bf16 at M == 1 with AVX512-BF16 + VBMI2: 32-column chunks, the 32 mask bits are the k-mask of
// vpexpandw (register form, after a masked load of exactly 32n/m values), and vdpbf16ps multiplies
// the expanded bf16 weight with the bf16 x directly (exact products, fp32 sums): half the
// instructions of widening to fp32. Columns past the last full 32-chunk take the 16-column path.
static int64_t run_m1_bf16_dp(const LinearArgs& a, int64_t o_begin, int64_t o_end) {
  const x86::Geo g(a);
  const int64_t n32 = a.K / 32, cnt32 = 2 * g.cnt;
  const __mmask32 ld = static_cast<__mmask32>((uint64_t(1) << cnt32) - 1);
  const int64_t k32 = n32 * 32;              // columns done by the dp loop
  const bool mid = (a.K - k32) >= 16;        // one 16-column chunk after them
  const uint16_t* x = static_cast<const uint16_t*>(a.x);
  alignas(64) float xt[32] = {};             // fp32 x of columns [k32, K)
  for (int64_t k = k32; k < a.K; ++k) xt[k - k32] = bf16_to_f32(x[k]);
  const Avx512Dec::Slice sl(g);
  // One row at a time: values and mask each stream sequentially across rows (see run_m1).
  for (int64_t o = o_begin; o < o_end; ++o) {
    const uint8_t* mr = a.mask + o * g.rb;
    const uint16_t* vr = static_cast<const uint16_t*>(a.values) + o * g.kept;
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    int bad = 0;
    auto step = [&](int64_t cc, int h) __attribute__((always_inline)) {
      uint32_t bits;
      std::memcpy(&bits, mr + 4 * cc, 4);
      const __m512i v = _mm512_maskz_loadu_epi16(ld, vr + cc * cnt32);
      const __m512i w = _mm512_maskz_expand_epi16(bits, v);
      acc[h] = _mm512_dpbf16_ps(acc[h], (__m512bh)w, (__m512bh)_mm512_loadu_si512(x + cc * 32));
      // Bit 32 forces a 64-bit popcnt on a fresh register (see Avx512Dec::decode).
      bad |= static_cast<int>(__builtin_popcountll(bits | (uint64_t(1) << 32)) ^ (cnt32 + 1));
    };
    int64_t c = 0;
    for (; c + 4 <= n32; c += 4) {
      __builtin_prefetch(vr + (c + 128) * cnt32);
      __builtin_prefetch(vr + (c + 128) * cnt32 + 32);
      if ((c & 15) == 0) __builtin_prefetch(mr + 4 * (c + 128));
      step(c, 0);
      step(c + 1, 1);
      step(c + 2, 2);
      step(c + 3, 3);
    }
    for (; c < n32; ++c) step(c, 0);
    __m512 tail = _mm512_setzero_ps();
    if (mid) {
      Avx512Dec::Chunk w;
      bad |= Avx512Dec::decode<DType::bf16>(sl, reinterpret_cast<const char*>(vr), mr, 2 * n32, w.v);
      tail = _mm512_fmadd_ps((__m512)w.v[0], _mm512_load_ps(xt), tail);
    }
    if (g.tw) {
      alignas(64) float t[16];
      bad |= !x86::decode_tail(DType::bf16, g, a.values, a.mask, o, t);
      tail = _mm512_fmadd_ps(_mm512_load_ps(t), _mm512_load_ps(xt + (mid ? 16 : 0)), tail);
    }
    if (bad) return o;
    float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]),
                                                               _mm512_add_ps(acc[2], acc[3])), tail));
    if (a.bias) s += bf16_to_f32(static_cast<const uint16_t*>(a.bias)[o]);
    static_cast<uint16_t*>(a.y)[o] = f32_to_bf16(s);
  }
  return -1;
}

}  // namespace

int64_t linear_avx512(const LinearArgs& a, int64_t o_begin, int64_t o_end) {
  if (a.dtype == DType::bf16 && a.M == 1 && o_begin < o_end) {
    const CpuFeatures& f = cpu_features();
    if (f.avx512_bf16 && f.avx512_vbmi2) return run_m1_bf16_dp(a, o_begin, o_end);
  }
  return x86::run<Avx512Dec>(a, o_begin, o_end);
}

int64_t decode_rows_avx512(const LinearArgs& a, void* dense, int64_t ld, int64_t o_begin, int64_t o_end) {
  return x86::decode_rows<Avx512Dec>(a, dense, ld, o_begin, o_end);
}

}  // namespace sparseops::nm
