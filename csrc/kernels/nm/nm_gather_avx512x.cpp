// AVX-512 N:M 2:8 and 1:4 at M == 1, fetching x at the kept columns instead of placing weights (needs the avx512x
// extensions: VPOPCNTDQ / BITALG popcounts, and vdpbf16ps for bf16). Every mask byte holds two kept columns, so
// 64 columns keep exactly 16 values, in column order. Their columns come from the mask bytes by a shuffle and a
// popcount (KeptColumns); two-source permutes of the x vectors of those columns (8 lanes from each 32: fp32; 16 bf16
// lanes from each 64: bf16) put the matching x beside every value, and one FMA or dot product multiplies a whole
// vector of kept values. (vpcompressb of the column numbers under the mask bits ran 1.7-1.9x slower than placement.) Placement (nm_place_avx512x.h) instead spends a rank and a
// permute on every 16 or 32 columns, density-independent, which left 2:8 compute bound on Zen 5.
// Pruned positions are never multiplied, so callers take placement when x holds NaN/Inf. Each row's mask is
// checked first (two bits in every byte; 1:4: one in every nibble).
// GCC 12 warns about the deliberately undefined source operand inside its own AVX-512 intrinsics.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstring>
#include <type_traits>

#include "../common/half.h"
#include "nm.h"
#include "nm_place_avx512x.h"
#include "nm_x86_tile.h"

namespace sparseops::nm {
namespace {

// The columns of the kept values of one step: lane j (fp32: 16 dwords from 8 mask bytes; bf16: 32 words from 16)
// belongs to mask byte j / 2 and takes its lowest (even j) or second-lowest (odd j) set bit, so its column is
// 8 * (j / 2) plus the trailing zeros of that byte, with the lowest bit cleared on odd lanes. vpshufb puts the byte
// in its lane (every 128-bit lane holds all the step's mask bytes); trailing zeros of u are popcount(~u & (u - 1)).
template <DType D>
struct KeptColumns {
  static constexpr int E = D == DType::f32 ? 4 : 2, L = 64 / E;  // lane bytes, lanes
  __m512i sel, base;
  KeptColumns() {
    alignas(64) uint8_t sl[64], bs[64] = {};
    for (int j = 0; j < L; ++j)
      for (int b = 0; b < E; ++b) {
        sl[E * j + b] = b == 0 ? static_cast<uint8_t>(j / 2) : 0x80;
        if (b == 0) bs[E * j] = static_cast<uint8_t>(8 * (j / 2));
      }
    sel = _mm512_load_si512(sl);
    base = _mm512_load_si512(bs);
  }
  // mb: the step's mask bytes in every 128-bit lane.
  inline __m512i operator()(__m512i mb) const {
    const __m512i v = _mm512_shuffle_epi8(mb, sel);
    if constexpr (D == DType::f32) {
      const __m512i one = _mm512_set1_epi32(1);
      const __m512i u = _mm512_mask_and_epi32(v, 0xaaaa, v, _mm512_sub_epi32(v, one));
      return _mm512_add_epi32(_mm512_popcnt_epi32(_mm512_andnot_si512(u, _mm512_sub_epi32(u, one))), base);
    } else {
      const __m512i one = _mm512_set1_epi16(1);
      const __m512i u = _mm512_mask_mov_epi16(v, 0xaaaaaaaau, _mm512_and_si512(v, _mm512_sub_epi16(v, one)));
      return _mm512_add_epi16(_mm512_popcnt_epi16(_mm512_andnot_si512(u, _mm512_sub_epi16(u, one))), base);
    }
  }
};

// Nonzero if a row's mask bytes do not each hold two bits (1:4: one in each nibble).
static inline bool row_off(const LinearArgs& a, const uint8_t* mr, int64_t rb) {
  return a.m == 4 ? nibbles_off(mr, rb) != 0 : bytes_off(mr, rb, _mm512_set1_epi8(2)) != 0;
}

// The row's kept values times x over mask bytes [b0, rb), a scalar tail: two kept columns per byte.
template <class T>
static inline float tail_dot(const uint8_t* mr, const T* vr, const T* x, int64_t b0, int64_t rb) {
  auto f = [](T v) { return std::is_same_v<T, float> ? static_cast<float>(v) : bf16_to_f32(static_cast<uint16_t>(v)); };
  float y = 0.f;
  for (int64_t b = b0; b < rb; ++b) {
    const unsigned m = mr[b];
    const int i = __builtin_ctz(m), j = __builtin_ctz(m & (m - 1));
    y += f(vr[2 * b]) * f(x[8 * b + i]) + f(vr[2 * b + 1]) * f(x[8 * b + j]);
  }
  return y;
}

// 2:8, or 1:4 with whole mask bytes: two kept columns in every mask byte.
static inline bool two_per_byte(const LinearArgs& a) {
  return (a.n == 2 && a.m == 8) || (a.n == 1 && a.m == 4 && a.K % 8 == 0);
}

template <DType D>
int64_t gather(const LinearArgs& a, int64_t o_begin, int64_t o_end) {
  using T = std::conditional_t<D == DType::f32, float, uint16_t>;
  constexpr int C = D == DType::f32 ? 64 : 128;  // columns per step: one vector of 16 / 32 kept values
  const int64_t rb = a.K / 8, kept = a.K / 4, ns = a.K / C;
  const T* x = static_cast<const T*>(a.x);
  const KeptColumns<D> cols;
  for (int64_t o = o_begin; o < o_end; ++o) {
    const uint8_t* mr = a.mask + o * rb;
    const T* vr = static_cast<const T*>(a.values) + o * kept;
    if (row_off(a, mr, rb)) return o;
    __m512 acc[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
    auto step = [&](int64_t s, int e) __attribute__((always_inline)) {
      const T* xs = x + s * C;
      if constexpr (D == DType::f32) {
        int64_t q;
        std::memcpy(&q, mr + s * 8, 8);
        const __m512i idx = cols(_mm512_set1_epi64(q));
        const __m512 lo = _mm512_permutex2var_ps(_mm512_loadu_ps(xs), idx, _mm512_loadu_ps(xs + 16));
        const __m512 hi = _mm512_permutex2var_ps(_mm512_loadu_ps(xs + 32), idx, _mm512_loadu_ps(xs + 48));
        acc[e] = _mm512_fmadd_ps(_mm512_loadu_ps(vr + s * 16), _mm512_mask_blend_ps(0xff00, lo, hi), acc[e]);
      } else {
        const __m512i idx = cols(_mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(mr + s * 16))));
        const __m512i lo = _mm512_permutex2var_epi16(_mm512_loadu_si512(xs), idx, _mm512_loadu_si512(xs + 32));
        const __m512i hi = _mm512_permutex2var_epi16(_mm512_loadu_si512(xs + 64), idx, _mm512_loadu_si512(xs + 96));
        acc[e] = _mm512_dpbf16_ps(acc[e], (__m512bh)_mm512_loadu_si512(vr + s * 32),
                                  (__m512bh)_mm512_mask_blend_epi16(0xffff0000u, lo, hi));
      }
    };
    int64_t s = 0;
    for (; s + 2 <= ns; s += 2) {
      __builtin_prefetch(reinterpret_cast<const char*>(vr + s * (C / 4)) + 8192);
      __builtin_prefetch(reinterpret_cast<const char*>(vr + s * (C / 4)) + 8192 + 64);
      step(s, 0);
      step(s + 1, 1);
    }
    if (s < ns) step(s, 0);
    // columns past the last full step
    float y = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1])) + tail_dot(mr, vr, x, ns * (C / 8), rb);
    if (a.bias) y += x86::elem_to_f32(D, a.bias, o);
    x86::store_out(D, a.y, o, y);
  }
  return -1;
}

// bf16 at M = 2..8: the column step once per row and step, then two permutes and one dot product per token (the
// kept values and their columns are every token's).
template <int NT>
int64_t gather_tokens(const LinearArgs& a, int64_t o_begin, int64_t o_end) {
  constexpr int C = 128;
  const int64_t rb = a.K / 8, kept = a.K / 4, ns = a.K / C;
  const uint16_t* x = static_cast<const uint16_t*>(a.x);
  const KeptColumns<DType::bf16> cols;
  for (int64_t o = o_begin; o < o_end; ++o) {
    const uint8_t* mr = a.mask + o * rb;
    const uint16_t* vr = static_cast<const uint16_t*>(a.values) + o * kept;
    if (row_off(a, mr, rb)) return o;
    __m512 acc[NT];
    for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t s = 0; s < ns; ++s) {
      if ((s & 1) == 0) __builtin_prefetch(reinterpret_cast<const char*>(vr + s * 32) + 8192);
      const __m512i idx = cols(_mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(mr + s * 16))));
      const __m512bh v = (__m512bh)_mm512_loadu_si512(vr + s * 32);
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) {
        const uint16_t* xs = x + t * a.ldx + s * C;
        const __m512i lo = _mm512_permutex2var_epi16(_mm512_loadu_si512(xs), idx, _mm512_loadu_si512(xs + 32));
        const __m512i hi = _mm512_permutex2var_epi16(_mm512_loadu_si512(xs + 64), idx, _mm512_loadu_si512(xs + 96));
        acc[t] = _mm512_dpbf16_ps(acc[t], v, (__m512bh)_mm512_mask_blend_epi16(0xffff0000u, lo, hi));
      }
    }
    for (int t = 0; t < NT; ++t) {
      float y = _mm512_reduce_add_ps(acc[t]) + tail_dot(mr, vr, x + t * a.ldx, ns * (C / 8), rb);
      if (a.bias) y += x86::elem_to_f32(DType::bf16, a.bias, o);
      x86::store_out(DType::bf16, a.y, t * a.ldy + o, y);
    }
  }
  return -1;
}

}  // namespace

bool gather_tokens_fits_avx512x(const LinearArgs& a) {
  // Every row reads all tokens' x: up to 64 KiB of it the gather ran 1.36-5.9x faster than the dot-product kernel
  // (vpexpandw per row and 32 columns), at 88 KiB (K = 11008, M = 4) 0.86-0.92x (nm-gather-tokens-ab-zen5-2c-fee490a).
  return a.dtype == DType::bf16 && a.M >= 2 && a.M <= 8 && a.M * a.K * 2 <= 65536 && two_per_byte(a) &&
         x86::all_finite(a);
}

int64_t linear_gather_tokens_avx512x(const LinearArgs& a, int64_t o_begin, int64_t o_end) {
  switch (a.M) {
    case 2: return gather_tokens<2>(a, o_begin, o_end);
    case 3: return gather_tokens<3>(a, o_begin, o_end);
    case 4: return gather_tokens<4>(a, o_begin, o_end);
    case 5: return gather_tokens<5>(a, o_begin, o_end);
    case 6: return gather_tokens<6>(a, o_begin, o_end);
    case 7: return gather_tokens<7>(a, o_begin, o_end);
    default: return gather_tokens<8>(a, o_begin, o_end);
  }
}

bool gather_m1_fits_avx512x(const LinearArgs& a) {
  // Every row reads all of x. 2:8: fp32 x past 32 KiB leaves L1 beside the row's streams, and at K = 11008 (43 KiB)
  // the gather ran 1.3x slower than placement (bench/results/nm-m1-gather28-ab-zen5-2c-aebfb44.txt); bf16 there
  // (22 KiB) ran 1.5x faster. 1:4: 1.1-1.4x faster than the select GEMV with x of 8-16 KiB, 4% slower with bf16 x
  // of 22 KiB (nm-m1-gather-ab-zen5-2c-aebfb44.txt), so 1:4 up to 16 KiB.
  const int64_t xbytes = a.K * (a.dtype == DType::f32 ? 4 : 2);
  const bool fits = (a.dtype == DType::f32 || a.dtype == DType::bf16) && xbytes <= (a.m == 4 ? 16384 : 32768);
  return a.M == 1 && two_per_byte(a) && fits && x86::all_finite(a);
}

int64_t linear_gather_m1_avx512x(const LinearArgs& a, int64_t o_begin, int64_t o_end) {
  return a.dtype == DType::f32 ? gather<DType::f32>(a, o_begin, o_end) : gather<DType::bf16>(a, o_begin, o_end);
}

}  // namespace sparseops::nm
