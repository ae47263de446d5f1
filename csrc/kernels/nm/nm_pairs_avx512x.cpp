// bf16 2:4 at large M on CPUs with AVX512-BF16: a kept-only GEMM at the bf16 dot-product rate.
// A group's two kept values are stored side by side (column order), so they are one 32-bit word, and vdpbf16ps
// multiplies 16 such words by 16 pairs of x values in one instruction. x is packed per group as its six possible
// column pairs (01 02 03 12 13 23), each a vector of tokens: a row's group picks its pair by the mask nibble and
// does one dot product per 16 tokens with its broadcast value word. That is half the multiplies of dense bf16 math
// and of the expanding kernels, and half the instructions of the fp32 kept-only GEMM (one per kept value).
// Pruned positions are never multiplied, so callers use it only when x is all finite. Each row's mask is checked
// per block (every nibble holds two bits, none past K); a bad row is named before anything is written.
// GCC 12 warns about the deliberately undefined source operand inside its own AVX-512 intrinsics.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "../common/aligned.h"
#include "../common/half.h"
#include "../common/prefetch.h"
#include "nm.h"

namespace sparseops::nm {
namespace {

constexpr int KB = 64;      // columns per block: the block's packed x (16 groups x 6 pairs x 64 tokens) is 24 KiB
constexpr int GB = KB / 4;  // groups per block
constexpr int NP = 6;       // column pairs of a group

// Packed x keeps a group's pair (i, j) in slot (1 << i) | (1 << j): the mask nibble itself, so a row finds its
// pair with a shift and a mask, no table load. Groups are SG slots apart (nibbles go up to 12; 13 also spreads
// the six live slots of successive groups over different L1 sets).
constexpr int SG = 13;
constexpr int kPairCol[NP][2] = {{0, 1}, {0, 2}, {0, 3}, {1, 2}, {1, 3}, {2, 3}};

// Nonzero unless each of the low 4*ng nibbles of w holds exactly two set bits and the rest are clear.
static inline uint64_t nibbles_off(uint64_t w, int ng) {
  uint64_t t = w - ((w >> 1) & 0x5555555555555555ull);
  t = (t & 0x3333333333333333ull) + ((t >> 2) & 0x3333333333333333ull);
  const uint64_t want = ng == 16 ? 0x2222222222222222ull : 0x2222222222222222ull & ((uint64_t(1) << (4 * ng)) - 1);
  return t ^ want;
}

// The mask bits of columns [k0, k0 + 4 ng) of a row (reads only the row's own bytes).
static inline uint64_t block_bits(const uint8_t* mr, int64_t k0, int ng, int64_t rb) {
  const int64_t b0 = k0 / 8;
  if (ng == GB && b0 + 8 <= rb) {
    uint64_t w;
    std::memcpy(&w, mr + b0, 8);
    return w;
  }
  uint64_t w = 0;
  for (int64_t b = b0; b < rb && b < b0 + 8; ++b) w |= static_cast<uint64_t>(mr[b]) << (8 * (b - b0));
  return w;
}

// Tokens [p0, p0 + mp) of columns [k0, k0 + 4 ng), as xp[(g * SG + slot) * NT + token]: the pair's two bf16 in
// one word, lower column in the low half (the weight word's order). Tokens past mp stay as they were (zero).
template <int NT>
static void pack_block(const LinearArgs& a, int64_t p0, int mp, int64_t k0, int ng, uint32_t* xp) {
  for (int t = 0; t < mp; ++t) {
    const uint16_t* row = static_cast<const uint16_t*>(a.x) + (p0 + t) * a.ldx + k0;
    for (int g = 0; g < ng; ++g) {
      const uint32_t c[4] = {row[4 * g], row[4 * g + 1], row[4 * g + 2], row[4 * g + 3]};
      for (int p = 0; p < NP; ++p) {
        const int i = kPairCol[p][0], j = kPairCol[p][1];
        xp[(g * SG + ((1 << i) | (1 << j))) * NT + t] = c[i] | (c[j] << 16);
      }
    }
  }
}

// Word g of w in every lane.
static inline __m512i word_of(__m512i w, int g) {
  const __m512i lane = _mm512_permutexvar_epi32(_mm512_set1_epi32(g), w);
  return lane;
}

// One block (16 groups at k0, packed x at xp) for rows [o0, o1) of a chunk, RS rows at a time (RS * NV chains),
// on acc[(o - o0) * NV + q] (L1-resident: the chunk's rows only). Prefetches each row's values two blocks ahead
// (pf: the rows and column of that block). Returns nonzero if some row's bits in this block are malformed.
template <int NV, int RS, bool FULL>
static uint64_t block_rows(const LinearArgs& a, int64_t o0, int64_t o1, int64_t k0, int ng, bool first,
                           const uint32_t* xp, __m512* acc, int64_t pf_o, int64_t pf_k, int64_t o_end) {
  constexpr int NT = NV * 16;
  const int64_t rb = (a.K + 7) / 8, kept = a.K / 2;
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
      bits[r] = block_bits(a.mask + rows[r] * rb, k0, FULL ? GB : ng, rb);
      bad |= nibbles_off(bits[r], FULL ? GB : ng);
      vr[r] = vals + rows[r] * kept + k0 / 2;
    }
    for (int r = 0; r < RS; ++r) {
      const int64_t po = pf_o + (o - o0) + r;
      if (po < o_end) prefetch_l1(vals + po * kept + pf_k / 2);
    }
    // The block's 16 value words of a row in one vector; each group's word is broadcast from it by two shuffles
    // (a load per group would compete with the x loads, which bound the loop).
    __m512i wz[RS];
    const __mmask16 live = FULL ? __mmask16(0xffff) : static_cast<__mmask16>((1u << ng) - 1);
    for (int r = 0; r < RS; ++r) wz[r] = _mm512_maskz_loadu_epi32(live, vr[r]);
    const char* xb = reinterpret_cast<const char*>(xp);
    auto group = [&](int g) __attribute__((always_inline)) {
#pragma GCC unroll 4
      for (int r = 0; r < RS; ++r) {
        const __m512bh wv = (__m512bh)word_of(wz[r], g);
        const char* xg = xb + static_cast<size_t>(g * SG + ((bits[r] >> (4 * g)) & 15)) * (NT * 4);
#pragma GCC unroll 4
        for (int q = 0; q < NV; ++q) va[r][q] = _mm512_dpbf16_ps(va[r][q], wv, (__m512bh)_mm512_load_si512(xg + 64 * q));
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

static int64_t first_bad_row(const LinearArgs& a, int64_t o_begin, int64_t o_end) {
  const int64_t rb = (a.K + 7) / 8;
  for (int64_t o = o_begin; o < o_end; ++o)
    for (int64_t k0 = 0; k0 < a.K; k0 += KB) {
      const int ng = static_cast<int>(std::min<int64_t>(GB, (a.K - k0) / 4));
      if (nibbles_off(block_bits(a.mask + o * rb, k0, ng, rb), ng)) return o;
    }
  return o_end - 1;  // unreachable after a failed block
}

// Loops: superblocks of KS columns (their packed x, 192 KiB at 64 tokens, stays in L2) > chunks of RC rows (their
// sums, 12 KiB, stay in L1 across the superblock) > blocks of KB columns (packed x 24 KiB, in L1 while the chunk's
// rows use it) > RS rows in registers.
template <int NV, int RS>
static int64_t panel(const LinearArgs& a, int64_t o_begin, int64_t o_end, int64_t p0, int mp) {
  constexpr int NT = NV * 16;
  constexpr int KS = 512, RC = 16 * RS;
  AlignedF32 xpa((static_cast<size_t>(KS / 4) * SG + 3) * NT);  // + 3: a malformed nibble 15 stays inside
  uint32_t* xp = reinterpret_cast<uint32_t*>(xpa.p);
  AlignedF32 acca(static_cast<size_t>(o_end - o_begin) * NV * 16);
  __m512* acc = reinterpret_cast<__m512*>(acca.p);
  const int64_t rb = (a.K + 7) / 8;
  uint64_t bad = 0;
  for (int64_t ks = 0; ks < a.K; ks += KS) {
    const int64_t ke = std::min<int64_t>(a.K, ks + KS);
    for (int64_t k0 = ks; k0 < ke; k0 += KB)
      pack_block<NT>(a, p0, mp, k0, static_cast<int>(std::min<int64_t>(GB, (a.K - k0) / 4)), xp + (k0 - ks) / 4 * SG * NT);
    for (int64_t oc = o_begin; oc < o_end; oc += RC) {
      const int64_t oe = std::min(o_end, oc + RC);
      for (int64_t o = oe; o < std::min(o_end, oe + RC); ++o) prefetch_l1(a.mask + o * rb + ks / 8);  // next chunk
      for (int64_t k0 = ks; k0 < ke; k0 += KB) {
        const int ng = static_cast<int>(std::min<int64_t>(GB, (a.K - k0) / 4));
        // Two blocks ahead: this chunk's rows, or the next chunk's first blocks.
        int64_t pf_o = oc, pf_k = k0 + 2 * KB;
        if (pf_k >= ke) { pf_o = oc + RC; pf_k = ks + (pf_k - ke); }
        const uint32_t* xb = xp + (k0 - ks) / 4 * SG * NT;
        __m512* ac = acc + (oc - o_begin) * NV;
        bad |= ng == GB ? block_rows<NV, RS, true>(a, oc, oe, k0, ng, ks == 0 && k0 == ks, xb, ac, pf_o, pf_k, o_end)
                        : block_rows<NV, RS, false>(a, oc, oe, k0, ng, ks == 0 && k0 == ks, xb, ac, pf_o, pf_k, o_end);
      }
    }
  }
  if (bad) return first_bad_row(a, o_begin, o_end);
  // acc holds, per output row, the sums of the panel's tokens; y is [M, O]: write runs along O (see sparse_panel).
  constexpr int OR = 64;
  const float* lanes = reinterpret_cast<const float*>(acc);
  const uint16_t* bias = static_cast<const uint16_t*>(a.bias);
  uint16_t* y = static_cast<uint16_t*>(a.y);
  for (int64_t o0 = o_begin; o0 < o_end; o0 += OR) {
    const int n = static_cast<int>(std::min<int64_t>(OR, o_end - o0));
    float b[OR];
    for (int j = 0; j < n; ++j) b[j] = bias ? bf16_to_f32(bias[o0 + j]) : 0.0f;
    const float* l0 = lanes + (o0 - o_begin) * NT;
    for (int i = 0; i < mp; ++i)
      for (int j = 0; j < n; ++j) y[(p0 + i) * a.ldy + o0 + j] = f32_to_bf16(l0[j * NT + i] + b[j]);
  }
  return -1;
}

}  // namespace

bool pairs24_fits_avx512x(const LinearArgs& a) {
  if (a.dtype != DType::bf16 || a.n != 2 || a.m != 4) return false;
  for (int64_t i = 0; i < a.M; ++i) {
    const uint16_t* u = static_cast<const uint16_t*>(a.x) + i * a.ldx;
    uint16_t worst = 0;
    for (int64_t k = 0; k < a.K; ++k) worst = std::max<uint16_t>(worst, u[k] & 0x7fff);
    if (worst >= 0x7f80) return false;
  }
  return true;
}

int64_t linear_pairs24_avx512x(const LinearArgs& a, int64_t o_begin, int64_t o_end) {
  if (o_begin >= o_end) return -1;
  for (int64_t p0 = 0; p0 < a.M; p0 += 64) {
    const int mp = static_cast<int>(std::min<int64_t>(64, a.M - p0));
    int64_t r;
    switch ((mp + 15) / 16) {
      case 1: r = panel<1, 4>(a, o_begin, o_end, p0, mp); break;
      case 2: r = panel<2, 4>(a, o_begin, o_end, p0, mp); break;
      case 3: r = panel<3, 3>(a, o_begin, o_end, p0, mp); break;
      default: r = panel<4, 3>(a, o_begin, o_end, p0, mp); break;
    }
    if (r >= 0) return r;
  }
  return -1;
}

}  // namespace sparseops::nm
