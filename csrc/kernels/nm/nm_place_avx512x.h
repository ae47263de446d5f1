// Placing kept N:M values by permutation instead of vpexpandw / vexpandps, for the avx512x GEMVs (needs
// BITALG's vpopcntw / vpopcntb and VPOPCNTDQ; included only by *_avx512x.cpp files). Internal linkage.
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace sparseops::nm {
namespace {

// Nonzero if any of the n mask bytes at m does not hold count (a vector of c) set bits.
static inline __mmask64 bytes_off(const uint8_t* m, int64_t n, __m512i count) {
  __mmask64 bad = 0;
  int64_t b = 0;
  for (; b + 64 <= n; b += 64) bad |= _mm512_cmpneq_epi8_mask(_mm512_popcnt_epi8(_mm512_loadu_si512(m + b)), count);
  if (b < n) {
    const __mmask64 live = (~uint64_t(0)) >> (64 - (n - b));
    bad |= _mm512_mask_cmpneq_epi8_mask(live, _mm512_popcnt_epi8(_mm512_maskz_loadu_epi8(live, m + b)), count);
  }
  return bad;
}

// Nonzero if a byte of m[0, n) does not hold exactly one set bit in each nibble (1:4): two per byte, none empty.
static inline __mmask64 nibbles_off(const uint8_t* m, int64_t n) {
  const __m512i lo = _mm512_set1_epi8(0x0f), hi = _mm512_set1_epi8(static_cast<char>(0xf0));
  __mmask64 bad = bytes_off(m, n, _mm512_set1_epi8(2));
  for (int64_t b = 0; b < n; b += 64) {
    const __mmask64 live = n - b >= 64 ? ~__mmask64(0) : (~uint64_t(0)) >> (64 - (n - b));
    const __m512i v = _mm512_maskz_loadu_epi8(live, m + b);
    bad |= _mm512_mask_testn_epi8_mask(live, v, lo) | _mm512_mask_testn_epi8_mask(live, v, hi);
  }
  return bad;
}

// vpexpandw without vpexpandw, for patterns whose every mask byte holds the same count c = 8n/m of kept
// columns (m <= 8) and whose 64 columns keep at most 32 values (n/m <= 1/2). A register vpexpandw (or
// vexpandps) issues once per ~5 cycles on Zen 5 (1.22 ns each in four independent chains,
// bench/results/probe-shuffle-rates-zen5-2c-386561e.txt), which bounded every
// expanding loop there; vpermw issues about once per cycle. Each kept column's source word is its byte's base
// (c per earlier byte) plus the set bits below it in its byte: vpshufb puts each column's mask byte in its word
// lane, an AND keeps the bits below the column, vpopcntw counts them. The byte counts are checked apart, a row
// at a time (bytes_off()).
struct Place64 {
  __m512i sel_lo, sel_hi, below, base_lo, base_hi, count;
  __mmask32 ld;  // the 8c values of 64 columns
  explicit Place64(int c) : count(_mm512_set1_epi8(static_cast<char>(c))),
                            ld(static_cast<__mmask32>((uint64_t(1) << (8 * c)) - 1)) {
    alignas(64) uint8_t sl[64], sh[64];
    alignas(64) uint16_t be[32], bl[32], bh[32];
    for (int j = 0; j < 32; ++j) {
      // vpshufb indexes within 128-bit lanes, each of which holds all 8 mask bytes (a broadcast); 0x80 gives 0
      sl[2 * j] = static_cast<uint8_t>(j / 8); sh[2 * j] = static_cast<uint8_t>(4 + j / 8);
      sl[2 * j + 1] = sh[2 * j + 1] = 0x80;
      be[j] = static_cast<uint16_t>((1u << (j % 8)) - 1u);
      bl[j] = static_cast<uint16_t>((j / 8) * c); bh[j] = static_cast<uint16_t>((4 + j / 8) * c);
    }
    sel_lo = _mm512_load_si512(sl); sel_hi = _mm512_load_si512(sh); below = _mm512_load_si512(be);
    base_lo = _mm512_load_si512(bl); base_hi = _mm512_load_si512(bh);
  }
  static bool fits(int n, int m) { return m <= 8 && 2 * n <= m; }
  // Columns [0, 32) to lo and [32, 64) to hi from the 8 mask bytes at m8 and their kept values v (the first 8c
  // words). A byte whose count is not c gives unspecified outputs (bytes_off() finds it).
  inline void place(const uint8_t* m8, __m512i v, __m512i& lo, __m512i& hi) const {
    int64_t q;
    uint32_t k0, k1;
    std::memcpy(&q, m8, 8); std::memcpy(&k0, m8, 4); std::memcpy(&k1, m8 + 4, 4);
    const __m512i mb = _mm512_set1_epi64(q);
    const __m512i il =
        _mm512_add_epi16(_mm512_popcnt_epi16(_mm512_and_si512(_mm512_shuffle_epi8(mb, sel_lo), below)), base_lo);
    const __m512i ih =
        _mm512_add_epi16(_mm512_popcnt_epi16(_mm512_and_si512(_mm512_shuffle_epi8(mb, sel_hi), below)), base_hi);
    lo = _mm512_maskz_permutexvar_epi16(k0, il, v);
    hi = _mm512_maskz_permutexvar_epi16(k1, ih, v);
  }
};

// Place64's scheme for fp32 values: 32 columns (4 mask bytes, at most 16 kept values: one zmm) to two zmm of 16
// lanes by vpermps, each lane's mask byte put in its dword by vpshufb and counted by vpopcntd.
struct Place32f {
  __m512i sel[2], below, base[2], count;
  explicit Place32f(int c) : count(_mm512_set1_epi8(static_cast<char>(c))) {
    alignas(64) uint8_t sl[2][64];
    alignas(64) uint32_t be[16], ba[2][16];
    for (int h = 0; h < 2; ++h)
      for (int j = 0; j < 16; ++j) {
        for (int b = 0; b < 4; ++b) sl[h][4 * j + b] = b == 0 ? static_cast<uint8_t>(2 * h + j / 8) : 0x80;
        be[j] = (1u << (j % 8)) - 1u;
        ba[h][j] = static_cast<uint32_t>((2 * h + j / 8) * c);
      }
    for (int h = 0; h < 2; ++h) { sel[h] = _mm512_load_si512(sl[h]); base[h] = _mm512_load_si512(ba[h]); }
    below = _mm512_load_si512(be);
  }
  // Columns [16h, 16h + 16) of the 32 whose 4 mask bytes are at m4 and kept values are v.
  inline __m512 place(const uint8_t* m4, __m512 v, int h) const {
    int32_t q;
    uint16_t k;
    std::memcpy(&q, m4, 4); std::memcpy(&k, m4 + 2 * h, 2);
    const __m512i mb = _mm512_set1_epi32(q);
    const __m512i idx =
        _mm512_add_epi32(_mm512_popcnt_epi32(_mm512_and_si512(_mm512_shuffle_epi8(mb, sel[h]), below)), base[h]);
    return _mm512_maskz_permutexvar_ps(k, idx, v);
  }
};

}  // namespace
}  // namespace sparseops::nm
