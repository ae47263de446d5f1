// AVX-512 N:M 1:4 at M == 1, selecting x instead of placing weights (the AVX2 select14 at 512 bits; needs the
// avx512x extensions for vdpbf16ps). With x re-laid as four phase arrays X_k[g] = x[4g + k], the candidates of a
// block of groups are four aligned vectors every row shares; a row takes its kept one per lane with three masked
// blends keyed by two k-masks from its mask bits (bits 1|3 and 2|3 of each nibble, gathered by pext), then one
// dot product (bf16, 32 groups = 128 columns) or FMA (fp32, 16 groups) with its values. Placement does per-column
// work (a rank and a permute per 32 columns, density-independent), which left 1:4 compute bound on Zen 5.
// Pruned positions are never multiplied, so the callers take placement when x holds NaN/Inf. Each row's mask is
// checked first: two bits per byte and no empty nibble, i.e. one bit per group.
// GCC 12 warns about the deliberately undefined source operand inside its own AVX-512 intrinsics.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstring>
#include <type_traits>

#include "../common/aligned.h"
#include "../common/half.h"
#include "nm.h"
#include "nm_place_avx512x.h"
#include "nm_x86_tile.h"

namespace sparseops::nm {
namespace {

// Lane masks of the 16 groups of mask word w: k0 lane g = the kept column of group g is 1 or 3, k1 = 2 or 3.
static inline uint32_t sel0(uint64_t w) {
  return static_cast<uint32_t>(_pext_u64(w | (w >> 2), 0x2222222222222222ull));
}
static inline uint32_t sel1(uint64_t w) {
  return static_cast<uint32_t>(_pext_u64(w | (w >> 1), 0x4444444444444444ull));
}

template <DType D>
int64_t select14(const LinearArgs& a, int64_t o_begin, int64_t o_end) {
  using T = std::conditional_t<D == DType::f32, float, uint16_t>;
  constexpr int L = 64 / sizeof(T);  // groups per block: lanes of one vector
  const int64_t G = a.K / 4, nb = G / L, Gp = (nb + 1) * L, rb = (a.K + 7) / 8;
  AlignedF32 buf(static_cast<size_t>(4 * Gp) * sizeof(T) / 4);
  T* xt = reinterpret_cast<T*>(buf.p);
  const T* x = static_cast<const T*>(a.x);
  for (int64_t k = 0; k < a.K; ++k) xt[(k % 4) * Gp + k / 4] = x[k];
  for (int64_t o = o_begin; o < o_end; ++o) {
    const uint8_t* mr = a.mask + o * rb;
    const T* vr = static_cast<const T*>(a.values) + o * G;
    if (nibbles_off(mr, nb * L / 2)) return o;
    __m512 acc[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
    auto block = [&](int64_t b, int e) __attribute__((always_inline)) {
      const T* xb = xt + b * L;
      if constexpr (D == DType::f32) {
        uint64_t w;
        std::memcpy(&w, mr + 8 * b, 8);
        const __mmask16 k0 = static_cast<__mmask16>(sel0(w)), k1 = static_cast<__mmask16>(sel1(w));
        const __m512 t0 = _mm512_mask_blend_ps(k0, _mm512_load_ps(xb), _mm512_load_ps(xb + Gp));
        const __m512 t1 = _mm512_mask_blend_ps(k0, _mm512_load_ps(xb + 2 * Gp), _mm512_load_ps(xb + 3 * Gp));
        acc[e] = _mm512_fmadd_ps(_mm512_loadu_ps(vr + b * L), _mm512_mask_blend_ps(k1, t0, t1), acc[e]);
      } else {
        uint64_t w0, w1;
        std::memcpy(&w0, mr + 16 * b, 8);
        std::memcpy(&w1, mr + 16 * b + 8, 8);
        const __mmask32 k0 = sel0(w0) | (sel0(w1) << 16), k1 = sel1(w0) | (sel1(w1) << 16);
        const __m512i t0 = _mm512_mask_blend_epi16(k0, _mm512_load_si512(xb), _mm512_load_si512(xb + Gp));
        const __m512i t1 = _mm512_mask_blend_epi16(k0, _mm512_load_si512(xb + 2 * Gp), _mm512_load_si512(xb + 3 * Gp));
        acc[e] = _mm512_dpbf16_ps(acc[e], (__m512bh)_mm512_loadu_si512(vr + b * L),
                                  (__m512bh)_mm512_mask_blend_epi16(k1, t0, t1));
      }
    };
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
      __builtin_prefetch(reinterpret_cast<const char*>(vr + b * L) + 8192);
      __builtin_prefetch(reinterpret_cast<const char*>(vr + b * L) + 8192 + 64);
      block(b, 0);
      block(b + 1, 1);
    }
    if (b < nb) block(b, 0);
    float s = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
    for (int64_t g = nb * L; g < G; ++g) {  // fewer than L groups left
      const unsigned nib = (mr[g / 2] >> (4 * (g % 2))) & 0xF;
      if (__builtin_popcount(nib) != 1) return o;
      const T xv = xt[__builtin_ctz(nib) * Gp + g];
      if constexpr (D == DType::f32) s += vr[g] * xv;
      else s += bf16_to_f32(vr[g]) * bf16_to_f32(xv);
    }
    if ((G % 2) && (mr[G / 2] >> 4)) return o;  // padding bits past K must be clear
    if (a.bias) s += x86::elem_to_f32(D, a.bias, o);
    x86::store_out(D, a.y, o, s);
  }
  return -1;
}

}  // namespace

bool select14_fits_avx512x(const LinearArgs& a) {
  if (a.M != 1 || a.n != 1 || a.m != 4 || (a.dtype != DType::f32 && a.dtype != DType::bf16) || a.K < 256) return false;
  // Every row walks all of the re-laid x: beyond ~32 KiB it leaves L1 beside the row's streams, and fp32 at
  // K = 11008 (43 KiB) ran 1.35x slower than placement on Zen 5 (bench/results/nm-m1-tries-zen5-2c-4c7dad6.txt;
  // bf16 there, 22 KiB, ran 1.48x faster: nm-m1-select14-ab-zen5-2c-4c7dad6.txt).
  if (a.K * (a.dtype == DType::f32 ? 4 : 2) > 32768) return false;
  return x86::all_finite(a);
}

int64_t linear_select14_avx512x(const LinearArgs& a, int64_t o_begin, int64_t o_end) {
  return a.dtype == DType::f32 ? select14<DType::f32>(a, o_begin, o_end) : select14<DType::bf16>(a, o_begin, o_end);
}

}  // namespace sparseops::nm
