// bf16 2:4, 1:4, 2:8 and 4:8 at large M on CPUs with AVX512-BF16: a kept-only GEMM at the bf16 dot-product rate.
// A row's kept values are stored in column order, so each two consecutive ones are a 32-bit word: a "pair", whose
// columns lie in one pair-group (2:4: a group of 4; 1:4: two groups, 8 columns; 2:8, 4:8: a group of 8, with two
// words in 4:8). vdpbf16ps multiplies 16 such words by 16 pairs of x values in one instruction. x is packed per
// pair-group as every column pair the pattern allows (2:4: 6, 1:4: 16, m = 8: 28), each a vector of tokens; a row's
// word picks its slot from its mask bits and does one dot product per 16 tokens with its broadcast value word. That
// is the kept fraction of the multiplies of dense bf16 math, and half the instructions of the fp32 kept-only GEMM.
// Pruned positions are never multiplied, so callers use it only when x is all finite. Each row's mask is checked
// per block (every group holds n bits, none past K); a bad row is named before anything is written.
// GCC 12 warns about the deliberately undefined source operand inside its own AVX-512 intrinsics.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "../common/aligned.h"
#include "../common/half.h"
#include "../common/prefetch.h"
#include "../common/transpose_avx512.h"
#include "nm.h"
#include "nm_x86_tile.h"

namespace sparseops::nm {
namespace {

// Columns per block: one cache line of 2:4 values per row (32- and 48-column blocks ran slower for m = 8 on Zen 5).
constexpr int KB = 64;

// 2:4: the pair (i, j) of a group sits in slot (1 << i) | (1 << j), the mask nibble itself, so a row finds it with
// a shift and a mask. Pair-groups are SG slots apart (13: nibbles go up to 12, and it spreads the live slots of
// successive groups over different L1 sets). Packed x of a 64-column block at 64 tokens: 16 x 6 x 256 B = 24 KiB.
// W: value words per pair-group.
struct Pat24 {
  static constexpr int n = 2, m = 4, PW = 4, SG = 13, KS = 512, NPAIR = 6, W = 1;
  static constexpr int pairs[NPAIR][2] = {{0, 1}, {0, 2}, {0, 3}, {1, 2}, {1, 3}, {2, 3}};
  static constexpr int slot_of(int i, int j) { return (1 << i) | (1 << j); }
  static inline uint64_t slot(uint64_t bits, int g, int) { return (bits >> (4 * g)) & 15; }
};
// 8-column pair-groups (1:4: one kept column per nibble; 2:8; 4:8: two words): word w's slot is i * 8 + j from the
// byte's set bits 2w and 2w + 1 (lowest first; a malformed byte gives at most 63: the buffer has room).
// Packed x per block: 1:4 8 x 16 x 256 B = 32 KiB; 2:8 / 4:8 (28 pairs) 8 x 28 x 256 B = 56 KiB.
// The slots of both words of a mask byte from one table entry (slot of word w in bits 8w..8w+7): one load instead
// of two bit scans per word (4:8 ran 5-7% faster: nm-pairs8-tries-zen5-2c-dff6611; 1:4 2-18%:
// nm-pairs14-lut-ab-zen5-2c-507a0cf).
struct SlotLut {
  uint16_t s[256];
  constexpr SlotLut() : s() {
    for (int b = 0; b < 256; ++b) {
      int v = 0;
      for (int w = 0, c = b; w < 2; ++w) {
        const int i = lowbit(c | 0x80);
        c &= c - 1;
        const int j = lowbit(c | 0x80);
        c &= c - 1;
        v |= (i * 8 + j) << (8 * w);
      }
      s[b] = static_cast<uint16_t>(v);
    }
  }
  static constexpr int lowbit(int c) {
    int i = 0;
    while (!(c & 1)) c >>= 1, ++i;
    return i;
  }
};
inline constexpr SlotLut kSlotLut{};
struct Pat8 {
  static constexpr int PW = 8, SG = 57, KS = 256;
  static constexpr int slot_of(int i, int j) { return i * 8 + j; }
  static inline uint64_t slot(uint64_t bits, int g, int w) {
    return (kSlotLut.s[(bits >> (8 * g)) & 255] >> (8 * w)) & 255;
  }
};
struct Pat14 : Pat8 {
  static constexpr int n = 1, m = 4, NPAIR = 16, W = 1;
  static constexpr int pairs[NPAIR][2] = {{0, 4}, {0, 5}, {0, 6}, {0, 7}, {1, 4}, {1, 5}, {1, 6}, {1, 7},
                                          {2, 4}, {2, 5}, {2, 6}, {2, 7}, {3, 4}, {3, 5}, {3, 6}, {3, 7}};
};
template <int N>
struct Pat8N : Pat8 {
  static constexpr int n = N, m = 8, NPAIR = 28, W = N / 2;
  static constexpr int pairs[NPAIR][2] = {{0, 1}, {0, 2}, {0, 3}, {0, 4}, {0, 5}, {0, 6}, {0, 7}, {1, 2}, {1, 3}, {1, 4},
                                          {1, 5}, {1, 6}, {1, 7}, {2, 3}, {2, 4}, {2, 5}, {2, 6}, {2, 7}, {3, 4}, {3, 5},
                                          {3, 6}, {3, 7}, {4, 5}, {4, 6}, {4, 7}, {5, 6}, {5, 7}, {6, 7}};
};
// Nonzero unless each group (m bits) among the low `live` bits of w holds exactly n set bits and the rest are clear.
template <class P>
static inline uint64_t groups_off(uint64_t w, int live) {
  uint64_t t = w - ((w >> 1) & 0x5555555555555555ull);
  t = (t & 0x3333333333333333ull) + ((t >> 2) & 0x3333333333333333ull);  // per nibble
  uint64_t want = P::n * 0x1111111111111111ull;
  if constexpr (P::m == 8) {
    t = (t + (t >> 4)) & 0x0f0f0f0f0f0f0f0full;  // per byte
    want = P::n * 0x0101010101010101ull;
  }
  return t ^ (live == 64 ? want : want & ((uint64_t(1) << live) - 1));
}

// The mask bits of columns [k0, k0 + cols) of a row (reads only the row's own bytes; up to 64 columns).
static inline uint64_t block_bits(const uint8_t* mr, int64_t k0, int cols, int64_t rb) {
  const int64_t b0 = k0 / 8;
  if (cols == KB && b0 + 8 <= rb) {
    uint64_t w;
    std::memcpy(&w, mr + b0, 8);
    return w;
  }
  uint64_t w = 0;
  for (int64_t b = b0; b < rb && b < b0 + 8; ++b) w |= static_cast<uint64_t>(mr[b]) << (8 * (b - b0));
  return w;
}

// Word permute indices: 16-bit element 2t from element 2t + lo of the first source, 2t + 1 from 2t + hi of the second.
static inline __m512i pair_index(int lo, int hi) {
  const __m512i t2 = _mm512_slli_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), 1);
  return _mm512_or_si512(_mm512_add_epi32(t2, _mm512_set1_epi32(lo)),
                         _mm512_slli_epi32(_mm512_add_epi32(t2, _mm512_set1_epi32(32 + hi)), 16));
}

// Tokens [p0, p0 + mp) of ng pair-groups from column k0, as xp[(g * SG + slot) * NT + token]: the pair's two bf16 in
// one word, lower column in the low half (the value word's order). 16 tokens x 32 columns at a time: transposed to
// 16 column-pair vectors, from which each slot is one two-source word permute (a scalar pack cost as much as a
// quarter of the 1:4 dot products). Tokens past mp are written as zero up to the next 16.
template <class P, int NT>
static void pack_block(const LinearArgs& a, int64_t p0, int mp, int64_t k0, int ng, uint32_t* xp) {
  // ix[lo | hi << 1]: word t takes x column (2t + lo) of the first source and (2t + hi) of the second.
  const __m512i ix[4] = {pair_index(0, 0), pair_index(1, 0), pair_index(0, 1), pair_index(1, 1)};
  const uint16_t* x = static_cast<const uint16_t*>(a.x);
  const int cols = ng * P::PW;
  for (int t0 = 0; t0 < mp; t0 += 16) {
    for (int c0 = 0; c0 < cols; c0 += 32) {
      const int cc = std::min(32, cols - c0);
      const __mmask32 cm = cc == 32 ? ~0u : (1u << cc) - 1;
      __m512i r[16];
#pragma GCC unroll 16
      for (int t = 0; t < 16; ++t)
        r[t] = t0 + t < mp ? _mm512_maskz_loadu_epi16(cm, x + (p0 + t0 + t) * a.ldx + k0 + c0) : _mm512_setzero_si512();
      transpose16_epi32(r);
      for (int g = c0 / P::PW; g < (c0 + cc) / P::PW; ++g) {
        const int cb = (g * P::PW - c0) / 2;
#pragma GCC unroll 28
        for (int p = 0; p < P::NPAIR; ++p) {
          const int i = P::pairs[p][0], j = P::pairs[p][1];
          const __m512i w = _mm512_permutex2var_epi16(r[cb + i / 2], ix[(i & 1) | (j & 1) << 1], r[cb + j / 2]);
          _mm512_store_si512(xp + static_cast<size_t>(g * P::SG + P::slot_of(i, j)) * NT + t0, w);
        }
      }
    }
  }
}

// One block (ng pair-groups from k0, packed x at xp) for rows [o0, o1) of a chunk, RS rows at a time (RS * NV
// chains), on acc[(o - o0) * NV + q] (L1-resident: the chunk's rows only). Prefetches each row's values two blocks
// ahead (pf: the rows and column of that block). Returns nonzero if some row's bits in this block are malformed.
template <class P, int NV, int RS, bool FULL>
static uint64_t block_rows(const LinearArgs& a, int64_t o0, int64_t o1, int64_t k0, int ng, bool first,
                           const uint32_t* xp, __m512* acc, int64_t pf_o, int64_t pf_k, int64_t o_end) {
  constexpr int NT = NV * 16, GB = KB / P::PW;
  const int64_t rb = (a.K + 7) / 8, kept = a.K / P::m * P::n;
  const int cols = (FULL ? GB : ng) * P::PW;
  const uint16_t* vals = static_cast<const uint16_t*>(a.values);
  uint64_t bad = 0;
  for (int64_t o = o0; o < o1; o += RS) {
    int64_t rows[RS];
    for (int r = 0; r < RS; ++r) rows[r] = std::min<int64_t>(o + r, o1 - 1);  // clamp: repeat the last row
    __m512 va[RS][NV];
    uint64_t bits[RS];
    const uint16_t* vr[RS];
#pragma GCC unroll 4
    for (int r = 0; r < RS; ++r) {
#pragma GCC unroll 4
      for (int q = 0; q < NV; ++q) va[r][q] = first ? _mm512_setzero_ps() : acc[(rows[r] - o0) * NV + q];
      bits[r] = block_bits(a.mask + rows[r] * rb, k0, cols, rb);
      bad |= groups_off<P>(bits[r], cols);
      vr[r] = vals + rows[r] * kept + k0 / P::m * P::n;
    }
    for (int r = 0; r < RS; ++r) {
      const int64_t po = pf_o + (o - o0) + r;
      if (po < o_end) prefetch_l1(vals + po * kept + pf_k / P::m * P::n);
    }
    // The block's value words of a row in one vector; each pair-group's word is broadcast from it by a permute
    // (a load per word would compete with the x loads, which bound the loop).
    __m512i wz[RS];
    const __mmask16 live = static_cast<__mmask16>((1u << ((FULL ? GB : ng) * P::W)) - 1);
    for (int r = 0; r < RS; ++r) wz[r] = _mm512_maskz_loadu_epi32(live, vr[r]);
    const char* xb = reinterpret_cast<const char*>(xp);
    auto group = [&](int g) __attribute__((always_inline)) {
#pragma GCC unroll 4
      for (int r = 0; r < RS; ++r)
#pragma GCC unroll 2
        for (int w = 0; w < P::W; ++w) {
          const __m512bh wv = (__m512bh)_mm512_permutexvar_epi32(_mm512_set1_epi32(g * P::W + w), wz[r]);
          const char* xg = xb + static_cast<size_t>(g * P::SG + P::slot(bits[r], g, w)) * (NT * 4);
#pragma GCC unroll 4
          for (int q = 0; q < NV; ++q)
            va[r][q] = _mm512_dpbf16_ps(va[r][q], wv, (__m512bh)_mm512_load_si512(xg + 64 * q));
        }
    };
    if constexpr (FULL) {
#pragma GCC unroll 16
      for (int g = 0; g < GB; ++g) group(g);
    } else {
      for (int g = 0; g < ng; ++g) group(g);
    }
#pragma GCC unroll 4
    for (int r = 0; r < RS; ++r)
#pragma GCC unroll 4
      for (int q = 0; q < NV; ++q) acc[(rows[r] - o0) * NV + q] = va[r][q];
  }
  return bad;
}

template <class P>
static int64_t first_bad_row(const LinearArgs& a, int64_t o_begin, int64_t o_end) {
  const int64_t rb = (a.K + 7) / 8;
  for (int64_t o = o_begin; o < o_end; ++o)
    for (int64_t k0 = 0; k0 < a.K; k0 += KB) {
      const int cols = static_cast<int>(std::min<int64_t>(KB, a.K - k0));
      if (groups_off<P>(block_bits(a.mask + o * rb, k0, cols, rb), cols)) return o;
    }
  return o_end - 1;  // unreachable after a failed block
}

// Loops: superblocks of KS columns (their packed x, 192-224 KiB at 64 tokens, stays in L2) > chunks of RC rows
// (their sums, 12 KiB, stay in L1 across the superblock) > blocks of KB columns (packed x 24-32 KiB, in L1 while the
// chunk's rows use it; 56 KiB for m = 8, yet smaller blocks ran slower: each block reloads the sums) > RS rows in
// registers.
template <class P, int NV, int RS>
static int64_t panel(const LinearArgs& a, int64_t o_begin, int64_t o_end, int64_t p0, int mp) {
  constexpr int NT = NV * 16, GB = KB / P::PW, RC = 16 * RS;
  // + 64 slots: the slot of a malformed mask byte or nibble stays inside
  AlignedF32 xpa((static_cast<size_t>(P::KS / P::PW) * P::SG + 64) * NT);
  uint32_t* xp = reinterpret_cast<uint32_t*>(xpa.p);
  AlignedF32 acca(static_cast<size_t>(o_end - o_begin) * NV * 16);
  __m512* acc = reinterpret_cast<__m512*>(acca.p);
  const int64_t rb = (a.K + 7) / 8;
  auto groups = [&](int64_t k0) { return static_cast<int>(std::min<int64_t>(GB, (a.K - k0) / P::PW)); };
  uint64_t bad = 0;
  for (int64_t ks = 0; ks < a.K; ks += P::KS) {
    const int64_t ke = std::min<int64_t>(a.K, ks + P::KS);
    for (int64_t k0 = ks; k0 < ke; k0 += KB) pack_block<P, NT>(a, p0, mp, k0, groups(k0), xp + (k0 - ks) / P::PW * P::SG * NT);
    for (int64_t oc = o_begin; oc < o_end; oc += RC) {
      const int64_t oe = std::min(o_end, oc + RC);
      for (int64_t o = oe; o < std::min(o_end, oe + RC); ++o) prefetch_l1(a.mask + o * rb + ks / 8);  // next chunk
      for (int64_t k0 = ks; k0 < ke; k0 += KB) {
        const int ng = groups(k0);
        // Two blocks ahead: this chunk's rows, or the next chunk's first blocks.
        int64_t pf_o = oc, pf_k = k0 + 2 * KB;
        if (pf_k >= ke) { pf_o = oc + RC; pf_k = ks + (pf_k - ke); }
        const uint32_t* xb = xp + (k0 - ks) / P::PW * P::SG * NT;
        __m512* ac = acc + (oc - o_begin) * NV;
        const bool first = ks == 0 && k0 == ks;
        bad |= ng == GB ? block_rows<P, NV, RS, true>(a, oc, oe, k0, ng, first, xb, ac, pf_o, pf_k, o_end)
                        : block_rows<P, NV, RS, false>(a, oc, oe, k0, ng, first, xb, ac, pf_o, pf_k, o_end);
      }
    }
  }
  if (bad) return first_bad_row<P>(a, o_begin, o_end);
  x86::store_panel(a, DType::bf16, reinterpret_cast<const float*>(acc), NT, o_begin, o_end, p0, mp);
  return -1;
}

template <class P>
static int64_t run(const LinearArgs& a, int64_t o_begin, int64_t o_end) {
  for (int64_t p0 = 0; p0 < a.M; p0 += 64) {
    const int mp = static_cast<int>(std::min<int64_t>(64, a.M - p0));
    int64_t r;
    switch ((mp + 15) / 16) {
      case 1: r = panel<P, 1, 4>(a, o_begin, o_end, p0, mp); break;
      case 2: r = panel<P, 2, 4>(a, o_begin, o_end, p0, mp); break;
      case 3: r = panel<P, 3, 3>(a, o_begin, o_end, p0, mp); break;
      default: r = panel<P, 4, 3>(a, o_begin, o_end, p0, mp); break;
    }
    if (r >= 0) return r;
  }
  return -1;
}

}  // namespace

bool pairs_fits_avx512x(const LinearArgs& a) {
  const bool p4 = a.m == 4 && (a.n == 2 || (a.n == 1 && a.K % 8 == 0)), p8 = a.m == 8 && (a.n == 2 || a.n == 4);
  return a.dtype == DType::bf16 && (p4 || p8) && x86::all_finite(a);
}

int64_t linear_pairs_avx512x(const LinearArgs& a, int64_t o_begin, int64_t o_end) {
  if (o_begin >= o_end) return -1;
  if (a.m == 8) return a.n == 4 ? run<Pat8N<4>>(a, o_begin, o_end) : run<Pat8N<2>>(a, o_begin, o_end);
  return a.n == 1 ? run<Pat14>(a, o_begin, o_end) : run<Pat24>(a, o_begin, o_end);
}

}  // namespace sparseops::nm
