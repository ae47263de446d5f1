// AVX-512 N:M, the path that needs AVX512-BF16 + VBMI2 (built with them; called only when
// avx512_ext() says the CPU has them).
// GCC 12 warns about the deliberately undefined source operand inside its own AVX-512 intrinsics.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "nm_avx512_dec.h"

namespace sparseops::nm {

// bf16 at M == 1 with AVX512-BF16 + VBMI2: 32-column chunks, the 32 mask bits are the k-mask of
// vpexpandw (register form, after a masked load of exactly 32n/m values), and vdpbf16ps multiplies
// the expanded bf16 weight with the bf16 x directly (exact products, fp32 sums): half the
// instructions of widening to fp32. Columns past the last full 32-chunk take the 16-column path.
int64_t linear_m1_bf16_avx512x(const LinearArgs& a, int64_t o_begin, int64_t o_end) {
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

}  // namespace sparseops::nm
