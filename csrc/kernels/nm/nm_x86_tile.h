// Driver shared by the AVX2 and AVX-512 N:M kernels (static inline templates only: each ISA file
// instantiates it with its own flags, see half.h).
//
// Weights are decoded chunk by chunk: a chunk is 16 columns (always a multiple of m), its kept values
// are the fixed slice [c*cnt, (c+1)*cnt) with cnt = 16n/m, and a decoder (the ISA's `Dec`) turns the
// slice plus the chunk's 16 mask bits into 16 dense fp32 lanes (zeros where pruned) and reports
// whether the chunk's set-bit count was right. Dense FMAs on the expanded weight give what dense math
// on the pruned weight gives, NaN/Inf included. The last K % 16 columns go through a scalar decoder.
//
// Paths (run() picks one):
//  M == 1          run_m1: one row at a time, chunks expanded straight into FMAs; memory bound, so the
//                  values and mask are read as two sequential streams with software prefetch.
//  M <= small_max  run_small: 4 output rows x M x rows, expanded in registers.
//  larger M        run_blocked: OB output rows x KB columns decoded into an L1 buffer once and reused
//                  by every x row (register tile 4 output rows x RM x rows).
//  M >= sparse_min_m, n/m <= 1/2, x all finite: run_sparse, which multiplies only the kept weights
//                  (broadcast FMAs over x transposed into panels of 4 vectors of x rows).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../common/aligned.h"
#include "../common/half.h"
#include "nm.h"

namespace sparseops::nm::x86 {
namespace {

constexpr int CW = 16;   // columns per chunk
constexpr int RO = 4;    // output rows per register tile

struct Geo {
  int n, m;
  int64_t K, kept, rb;  // in_features, values per row, mask bytes per row
  int cnt;              // values per full chunk
  int64_t nfull;        // full chunks per row
  int tw, tcnt;         // tail columns (K % 16) and their value count
  int64_t Kp;           // K rounded up to 16
  size_t es;            // element size
  explicit Geo(const LinearArgs& a)
      : n(a.n), m(a.m), K(a.K), kept(a.K / a.m * a.n), rb((a.K + 7) / 8), cnt(CW / a.m * a.n),
        nfull(a.K / CW), tw(static_cast<int>(a.K % CW)), tcnt(static_cast<int>(a.K % CW) / a.m * a.n),
        Kp((a.K + CW - 1) / CW * CW), es(a.dtype == DType::f32 ? 4 : 2) {}
};

static inline float elem_to_f32(DType d, const void* p, int64_t i) {
  if (d == DType::f32) return static_cast<const float*>(p)[i];
  const uint16_t h = static_cast<const uint16_t*>(p)[i];
  return d == DType::bf16 ? bf16_to_f32(h) : f16_to_f32(h);
}

static inline void store_out(DType d, void* y, int64_t idx, float s) {
  if (d == DType::f32) static_cast<float*>(y)[idx] = s;
  else static_cast<uint16_t*>(y)[idx] = d == DType::bf16 ? f32_to_bf16(s) : f32_to_f16(s);
}

// The tail chunk (columns [16*nfull, K)) of row o as 16 fp32 lanes, zero padded. Reads only the
// mask bytes that exist and only the tail's own value slice; false if its count (padding bits
// included) is off.
static inline bool decode_tail(DType d, const Geo& g, const void* values, const uint8_t* mask, int64_t o,
                               float* dst) {
  const uint8_t* mrow = mask + o * g.rb + g.nfull * 2;
  const int nbytes = (g.tw + 7) / 8;
  uint32_t bits = 0;
  for (int b = 0; b < nbytes; ++b) bits |= static_cast<uint32_t>(mrow[b]) << (8 * b);
  const int64_t base = o * g.kept + g.nfull * g.cnt;
  int r = 0;
  for (int j = 0; j < CW; ++j) {
    float v = 0.0f;
    if (j < g.tw && ((bits >> j) & 1) && r < g.tcnt) v = elem_to_f32(d, values, base + r++);
    dst[j] = v;
  }
  return __builtin_popcount(bits) == g.tcnt && (bits >> g.tw) == 0;  // no bits past K
}

// Every chunk count of row o (used to name the first bad row once some chunk failed). For m <= 8
// also every whole mask byte (8/m whole groups, so 8n/m bits), which is what the AVX2 decoder checks.
static inline bool row_ok(const Geo& g, const uint8_t* mask, int64_t o) {
  const uint8_t* mrow = mask + o * g.rb;
  if (g.m <= 8)
    for (int64_t b = 0; b < g.K / 8; ++b)
      if (__builtin_popcount(mrow[b]) != 8 / g.m * g.n) return false;
  for (int64_t c = 0; c < g.nfull; ++c)
    if (__builtin_popcount(mrow[2 * c] | (mrow[2 * c + 1] << 8)) != g.cnt) return false;
  if (g.tw) {
    uint32_t bits = 0;
    for (int b = 0; b < (g.tw + 7) / 8; ++b) bits |= static_cast<uint32_t>(mrow[2 * g.nfull + b]) << (8 * b);
    if (__builtin_popcount(bits) != g.tcnt || (bits >> g.tw) != 0) return false;
  }
  return true;
}

static inline int64_t first_bad(const Geo& g, const uint8_t* mask, int64_t o_begin, int64_t o_end) {
  for (int64_t o = o_begin; o < o_end; ++o)
    if (!row_ok(g, mask, o)) return o;
  return o_end - 1;  // unreachable when called after a failed chunk
}

// x converted once to fp32 rows of Kp columns, zero padded.
template <class Dec>
static inline AlignedF32 convert_x(const LinearArgs& a, const Geo& g) {
  AlignedF32 xf(static_cast<size_t>(a.M * g.Kp));
  for (int64_t i = 0; i < a.M; ++i) {
    const char* src = static_cast<const char*>(a.x) + i * a.ldx * g.es;
    float* dst = xf.p + i * g.Kp;
    if (a.dtype == DType::f32) std::memcpy(dst, src, a.K * 4);
    else Dec::cvt_row(a.dtype, reinterpret_cast<const uint16_t*>(src), dst, a.K);
  }
  return xf;
}

template <class Dec>
using Vec = typename Dec::V;

template <class Dec>
static inline Vec<Dec> vload(const float* p) {
  Vec<Dec> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <class Dec>
static inline float hsum(Vec<Dec> v) {
  float l[Dec::W];
  std::memcpy(l, &v, sizeof l);
  float s = 0.0f;
  for (int i = 0; i < Dec::W; ++i) s += l[i];
  return s;
}

// ---- M <= 4: expand in registers -----------------------------------------------------------------
// MR x rows: each chunk of 4 output rows is expanded once and FMA'd into all MR x rows.
template <class Dec, DType D, int MR>
static int64_t run_small(const LinearArgs& a, const Geo& g, int64_t o_begin, int64_t o_end) {
  typedef Vec<Dec> V;
  constexpr int NV = CW / Dec::W;  // vectors per chunk
  const AlignedF32 xv = convert_x<Dec>(a, g);
  const float* x = xv.p;
  const int64_t xs = g.Kp;
  const typename Dec::Slice sl(g);
  for (int64_t o0 = o_begin; o0 < o_end; o0 += RO) {
    int64_t rows[RO];
    for (int r = 0; r < RO; ++r) rows[r] = std::min<int64_t>(o0 + r, o_end - 1);  // clamp: repeat the last row
    const uint8_t* mr[RO];
    const char* vr[RO];
    for (int r = 0; r < RO; ++r) {
      mr[r] = a.mask + rows[r] * g.rb;
      vr[r] = static_cast<const char*>(a.values) + rows[r] * g.kept * g.es;
    }
    V acc[RO][MR];
#pragma GCC unroll 16
    for (int r = 0; r < RO; ++r)
#pragma GCC unroll 4
      for (int i = 0; i < MR; ++i) acc[r][i] = V{};
    int bad = 0;
    const int64_t pf = 1024 / CW;  // prefetch distance in chunks (8 streams: help the prefetcher)
    for (int64_t c = 0; c < g.nfull; ++c) {
      if ((c & 3) == 0) {
        for (int r = 0; r < RO; ++r) __builtin_prefetch(vr[r] + (c + pf) * g.cnt * g.es);
        if ((c & 31) == 0)
          for (int r = 0; r < RO; ++r) __builtin_prefetch(mr[r] + 2 * (c + pf));
      }
      typename Dec::Chunk w[RO];
#pragma GCC unroll 4
      for (int r = 0; r < RO; ++r) bad |= Dec::template decode<D>(sl, vr[r], mr[r], c, w[r].v);
#pragma GCC unroll 2
      for (int q = 0; q < NV; ++q)
#pragma GCC unroll 4
        for (int i = 0; i < MR; ++i) {
          const V xc = vload<Dec>(x + i * xs + c * CW + q * Dec::W);
#pragma GCC unroll 4
          for (int r = 0; r < RO; ++r) acc[r][i] += w[r].v[q] * xc;
        }
    }
    if (g.tw) {
      alignas(64) float t[RO][CW];
      for (int r = 0; r < RO; ++r) bad |= !decode_tail(D, g, a.values, a.mask, rows[r], t[r]);
      for (int q = 0; q < NV; ++q)
        for (int i = 0; i < MR; ++i) {
          const V xc = vload<Dec>(x + i * xs + g.nfull * CW + q * Dec::W);
          for (int r = 0; r < RO; ++r) acc[r][i] += vload<Dec>(t[r] + q * Dec::W) * xc;
        }
    }
    if (bad) return first_bad(g, a.mask, o0, std::min<int64_t>(o0 + RO, o_end));
    for (int r = 0; r < RO && o0 + r < o_end; ++r) {
      const float b = a.bias ? elem_to_f32(D, a.bias, o0 + r) : 0.0f;
      for (int i = 0; i < MR; ++i) store_out(D, a.y, i * a.ldy + o0 + r, hsum<Dec>(acc[r][i]) + b);
    }
  }
  return -1;
}

// M == 1 (decode, memory bound): one output row at a time, so the values and the mask are each read
// as one sequential stream across rows (interleaving rows makes 2 streams per row, which the
// hardware prefetcher follows less well); 4 accumulators over consecutive chunks hide FMA latency.
template <class Dec, DType D>
static int64_t run_m1(const LinearArgs& a, const Geo& g, int64_t o_begin, int64_t o_end) {
  typedef Vec<Dec> V;
  constexpr int NV = CW / Dec::W;
  const AlignedF32 xv = convert_x<Dec>(a, g);
  const float* x = xv.p;
  const typename Dec::Slice sl(g);
  for (int64_t o = o_begin; o < o_end; ++o) {
    const uint8_t* mr = a.mask + o * g.rb;
    const char* vr = static_cast<const char*>(a.values) + o * g.kept * g.es;
    V acc[4] = {};
    int bad = 0;
    int64_t c = 0;
    for (; c + 4 <= g.nfull; c += 4) {
      typename Dec::Chunk w[4];
      __builtin_prefetch(vr + (c + 256) * g.cnt * g.es);
      __builtin_prefetch(vr + (c + 256) * g.cnt * g.es + 64);
      if ((c & 31) == 0) __builtin_prefetch(mr + 2 * (c + 256));
#pragma GCC unroll 4
      for (int u = 0; u < 4; ++u) bad |= Dec::template decode<D>(sl, vr, mr, c + u, w[u].v);
#pragma GCC unroll 4
      for (int u = 0; u < 4; ++u)
#pragma GCC unroll 2
        for (int q = 0; q < NV; ++q) acc[u] += w[u].v[q] * vload<Dec>(x + (c + u) * CW + q * Dec::W);
    }
    for (; c < g.nfull; ++c) {
      typename Dec::Chunk w;
      bad |= Dec::template decode<D>(sl, vr, mr, c, w.v);
      for (int q = 0; q < NV; ++q) acc[0] += w.v[q] * vload<Dec>(x + c * CW + q * Dec::W);
    }
    if (g.tw) {
      alignas(64) float t[CW];
      bad |= !decode_tail(D, g, a.values, a.mask, o, t);
      for (int q = 0; q < NV; ++q) acc[1] += vload<Dec>(t + q * Dec::W) * vload<Dec>(x + g.nfull * CW + q * Dec::W);
    }
    if (bad) return o;
    float s = hsum<Dec>((acc[0] + acc[1]) + (acc[2] + acc[3]));
    if (a.bias) s += elem_to_f32(D, a.bias, o);
    store_out(D, a.y, o, s);
  }
  return -1;
}

// ---- M > 1 -------------------------------------------------------------------------------------
// acc[r][i] += w[r][k] * x[i][k] over k in [0, kb); w rows at stride wst, x rows at stride xst.
template <class Dec, int NM>
__attribute__((noinline)) static void micro(const float* w, int64_t wst, const float* x, int64_t xst, int kb,
                                            Vec<Dec>* accp) {
  typedef Vec<Dec> V;
  V acc[RO][NM];
  for (int r = 0; r < RO; ++r)
    for (int i = 0; i < NM; ++i) acc[r][i] = accp[r * NM + i];
  for (int k = 0; k < kb; k += Dec::W) {
    V wv[RO];
    for (int r = 0; r < RO; ++r) wv[r] = vload<Dec>(w + r * wst + k);
    for (int i = 0; i < NM; ++i) {
      const V xv = vload<Dec>(x + i * xst + k);
      for (int r = 0; r < RO; ++r) acc[r][i] += wv[r] * xv;
    }
  }
  for (int r = 0; r < RO; ++r)
    for (int i = 0; i < NM; ++i) accp[r * NM + i] = acc[r][i];
}

template <class Dec, int RM>
static inline void micro_n(int nm, const float* w, int64_t wst, const float* x, int64_t xst, int kb, Vec<Dec>* acc) {
  switch (nm) {
    case 1: micro<Dec, 1>(w, wst, x, xst, kb, acc); break;
    case 2: if constexpr (RM >= 2) micro<Dec, 2>(w, wst, x, xst, kb, acc); break;
    case 3: if constexpr (RM >= 3) micro<Dec, 3>(w, wst, x, xst, kb, acc); break;
    case 4: if constexpr (RM >= 4) micro<Dec, 4>(w, wst, x, xst, kb, acc); break;
    case 5: if constexpr (RM >= 5) micro<Dec, 5>(w, wst, x, xst, kb, acc); break;
    default: if constexpr (RM >= 6) micro<Dec, 6>(w, wst, x, xst, kb, acc); break;
  }
}

// Full chunks [c0, cf) of one row into dst (16 floats each); returns nonzero if a count is off.
// The row's next block (from c1) is read only after a whole compute pass over this one, and OB rows
// x 2 streams are more than the hardware prefetcher follows, so it is prefetched here.
template <class Dec, DType D>
__attribute__((noinline)) static int decode_span(const typename Dec::Slice& sl, const Geo& g, const char* vr,
                                                 const uint8_t* mr, int64_t c0, int64_t cf, int64_t c1, float* dst) {
  const int64_t vbytes = (c1 - c0) * g.cnt * static_cast<int64_t>(g.es);
  const char* nv = vr + c1 * g.cnt * g.es;
  for (int64_t pb = 0; pb < vbytes; pb += 64) __builtin_prefetch(nv + pb);
  __builtin_prefetch(mr + 2 * c1);
  int bad = 0;
  for (int64_t c = c0; c < cf; ++c) {
    typename Dec::Chunk w;
    bad |= Dec::template decode<D>(sl, vr, mr, c, w.v);
    std::memcpy(dst + (c - c0) * CW, w.v, sizeof w.v);
  }
  return bad;
}

template <class Dec, DType D>
static int64_t run_blocked(const LinearArgs& a, const Geo& g, int64_t o_begin, int64_t o_end) {
  typedef Vec<Dec> V;
  constexpr int RM = Dec::RM;          // x rows per register tile
  constexpr int OB = 16;               // output rows per decoded block (4 register tiles)
  constexpr int KB = 512;              // columns per decoded block (32 chunks)
  constexpr int MB = RM * 16;          // x rows per pass over a decoded block
  const AlignedF32 xv = convert_x<Dec>(a, g);
  const float* x = xv.p;
  const typename Dec::Slice sl(g);
  AlignedF32 wbuf_a(static_cast<size_t>(OB) * KB);
  float* wbuf = wbuf_a.p;
  const int64_t M = a.M;
  std::vector<V> acc(static_cast<size_t>(OB / RO) * (MB / RM) * RO * RM);
  for (int64_t o0 = o_begin; o0 < o_end; o0 += OB) {
    const int orows = static_cast<int>(std::min<int64_t>(OB, o_end - o0));
    const int ntile = (orows + RO - 1) / RO;
    for (int64_t i0 = 0; i0 < M; i0 += MB) {
      const int mb = static_cast<int>(std::min<int64_t>(MB, M - i0));
      const int nmt = (mb + RM - 1) / RM;
      for (int t = 0; t < ntile; ++t)  // only the slots in use (the whole array is ~100 KB)
        std::fill(acc.begin() + t * (MB / RM) * RO * RM, acc.begin() + (t * (MB / RM) + nmt) * RO * RM, V{});
      for (int64_t k0 = 0; k0 < g.Kp; k0 += KB) {
        const int kb = static_cast<int>(std::min<int64_t>(KB, g.Kp - k0));
        const int64_t c0 = k0 / CW, c1 = c0 + kb / CW;
        int bad = 0;
        for (int r = 0; r < ntile * RO; ++r) {
          const int64_t o = std::min<int64_t>(o0 + r, o_end - 1);
          const uint8_t* mr = a.mask + o * g.rb;
          const char* vr = static_cast<const char*>(a.values) + o * g.kept * g.es;
          float* dst = wbuf + r * KB;
          const int64_t cf = std::min<int64_t>(c1, g.nfull);
          bad |= decode_span<Dec, D>(sl, g, vr, mr, c0, cf, c1, dst);
          if (c1 > g.nfull) bad |= !decode_tail(D, g, a.values, a.mask, o, dst + (g.nfull - c0) * CW);
        }
        if (bad) return first_bad(g, a.mask, o0, o0 + orows);
        for (int mt = 0; mt < nmt; ++mt) {
          const int nm = std::min(RM, mb - mt * RM);
          const float* xp = x + (i0 + mt * RM) * g.Kp + k0;
          for (int t = 0; t < ntile; ++t)
            micro_n<Dec, RM>(nm, wbuf + t * RO * KB, KB, xp, g.Kp, kb, acc.data() + (t * (MB / RM) + mt) * RO * RM);
        }
      }
      for (int t = 0; t < ntile; ++t)
        for (int mt = 0; mt < nmt; ++mt) {
          const int nm = std::min(RM, mb - mt * RM);
          const V* ap = acc.data() + (t * (MB / RM) + mt) * RO * RM;  // micro<nm>'s acc[RO][nm]
          for (int r = 0; r < RO; ++r) {
            const int64_t o = o0 + t * RO + r;
            if (o >= o0 + orows) break;
            const float b = a.bias ? elem_to_f32(D, a.bias, o) : 0.0f;
            for (int i = 0; i < nm; ++i)
              store_out(D, a.y, (i0 + mt * RM + i) * a.ldy + o, hsum<Dec>(ap[r * nm + i]) + b);
          }
        }
    }
  }
  return -1;
}

// ---- large M, n/m <= 1/2: multiply only the kept weights ----------------------------------------
// XNNPACK-style: x is transposed into panels of MP = 4 vectors of x rows ([k][lane]), and each kept
// weight w at column k does acc[o][0..MP) += w * xT[k][0..MP) (a broadcast FMA per vector). Dense
// math does twice the multiplies at 2:4, so this wins once M fills the vectors. It skips pruned
// positions, so it is only used when every x is finite (0 * Inf = NaN must still come out); masks are
// checked for the whole range first, so each chunk's set-bit loop runs exactly cnt times.
static inline bool all_finite(const LinearArgs& a) {
  const size_t es = a.dtype == DType::f32 ? 4 : 2;
  for (int64_t i = 0; i < a.M; ++i) {
    const char* row = static_cast<const char*>(a.x) + i * a.ldx * es;
    if (a.dtype == DType::f32) {
      const uint32_t* u = reinterpret_cast<const uint32_t*>(row);
      uint32_t worst = 0;
      for (int64_t k = 0; k < a.K; ++k) worst = std::max(worst, u[k] & 0x7fffffffu);
      if (worst >= 0x7f800000u) return false;
    } else {
      const uint16_t* u = reinterpret_cast<const uint16_t*>(row);
      const uint16_t lim = a.dtype == DType::bf16 ? 0x7f80 : 0x7c00;
      uint16_t worst = 0;
      for (int64_t k = 0; k < a.K; ++k) worst = std::max<uint16_t>(worst, u[k] & 0x7fff);
      if (worst >= lim) return false;
    }
  }
  return true;
}

// A kept-only panel's sums to y, plus bias: lanes[(o - o_begin) * lw + i] is y[p0 + i, o] for i < mp. y is [M, O]:
// an output row's sums belong to mp rows of y, ldy apart (one L1 set when ldy * 4 is a multiple of 4 KiB), so they
// are written in runs of OR along O instead, reading lanes across rows.
static inline void store_panel(const LinearArgs& a, DType d, const float* lanes, int lw, int64_t o_begin,
                               int64_t o_end, int64_t p0, int mp) {
  constexpr int OR = 64;
  for (int64_t o0 = o_begin; o0 < o_end; o0 += OR) {
    const int n = static_cast<int>(std::min<int64_t>(OR, o_end - o0));
    float b[OR];
    for (int j = 0; j < n; ++j) b[j] = a.bias ? elem_to_f32(d, a.bias, o0 + j) : 0.0f;
    const float* l0 = lanes + (o0 - o_begin) * lw;
    for (int i = 0; i < mp; ++i)
      for (int j = 0; j < n; ++j) store_out(d, a.y, (p0 + i) * a.ldy + o0 + j, l0[j * lw + i] + b[j]);
  }
}

// One panel: x rows [p0, p0 + mp), mp <= NV * W. RS output rows at a time give RS * NV independent FMA
// chains (NV alone would wait on FMA latency; two FMA pipes x 4 cycles want about 8).
template <class Dec, DType D, int NV, int RS>
static void sparse_panel(const LinearArgs& a, const Geo& g, int64_t o_begin, int64_t o_end, int64_t p0, int mp) {
  typedef Vec<Dec> V;
  constexpr int W = Dec::W, MP = NV * W;
  constexpr int KBS = 128;  // columns per block: the xT block (KBS x MP floats) stays in L1
  const int64_t O = o_end - o_begin;
  AlignedF32 xTa(static_cast<size_t>(g.Kp) * MP);
  float* xT = xTa.p;
  for (int i = 0; i < mp; ++i)
    for (int64_t k = 0; k < a.K; ++k) xT[k * MP + i] = elem_to_f32(D, a.x, (p0 + i) * a.ldx + k);
  std::vector<V> acc(static_cast<size_t>(O) * NV, V{});
  typedef std::conditional_t<D == DType::f32, float, uint16_t> T;
  const T* vals = static_cast<const T*>(a.values);
  const int cnt = g.cnt;
  auto wval = [](T v) __attribute__((always_inline)) {
    if constexpr (D == DType::f32) return Dec::bcast(v);
    else if constexpr (D == DType::bf16) return Dec::bcast(bf16_to_f32(v));
    else return Dec::bcast(f16_to_f32(v));
  };
  auto bits16 = [](const uint8_t* p) { return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8); };
  for (int64_t k0 = 0; k0 < g.K; k0 += KBS) {
    const int64_t c0 = k0 / CW, c1 = std::min<int64_t>(c0 + KBS / CW, g.nfull);
    const bool tail = g.tw && c0 + KBS / CW > g.nfull;
    for (int64_t o = o_begin; o < o_end; o += RS) {
      int64_t rows[RS];
      for (int r = 0; r < RS; ++r) rows[r] = std::min<int64_t>(o + r, o_end - 1);  // clamp: repeat the last row
      V va[RS][NV];
      const uint8_t* mr[RS];
      const T* vr[RS];
#pragma GCC unroll 4
      for (int r = 0; r < RS; ++r) {
#pragma GCC unroll 4
        for (int q = 0; q < NV; ++q) va[r][q] = acc[(rows[r] - o_begin) * NV + q];
        mr[r] = a.mask + rows[r] * g.rb;
        vr[r] = vals + rows[r] * g.kept;
      }
      if (o + 3 * RS <= o_end) {  // rows are visited KBS columns at a time: fetch a few rows ahead
        for (int r = 2 * RS; r < 3 * RS; ++r) {
          const char* nv = reinterpret_cast<const char*>(vals + (o + r) * g.kept + c0 * cnt);
          for (int b = 0; b < (KBS / CW) * cnt * static_cast<int>(sizeof(T)); b += 64) __builtin_prefetch(nv + b);
          __builtin_prefetch(a.mask + (o + r) * g.rb + 2 * c0);
        }
      }
      auto body = [&](uint32_t* bits, const T* const* vp, const float* xb, int count) __attribute__((always_inline)) {
        const char* xc = reinterpret_cast<const char*>(xb);
        for (int t = 0; t < count; ++t) {
#pragma GCC unroll 4
          for (int r = 0; r < RS; ++r) {
            // Unsigned column: its byte offset is one shift, and the NV loads use base + index addressing with
            // constant displacements (an int index cost a sign extension and an address add per weight).
            const uint32_t j = static_cast<uint32_t>(__builtin_ctz(bits[r]));
            bits[r] &= bits[r] - 1;
            const V w = wval(vp[r][t]);
            const float* xr = reinterpret_cast<const float*>(xc + static_cast<size_t>(j) * (MP * sizeof(float)));
#pragma GCC unroll 4
            for (int q = 0; q < NV; ++q) va[r][q] += w * vload<Dec>(xr + q * W);
          }
        }
      };
      for (int64_t c = c0; c < c1; ++c) {
        uint32_t bits[RS];
        const T* vp[RS];
        for (int r = 0; r < RS; ++r) {
          bits[r] = bits16(mr[r] + 2 * c);
          vp[r] = vr[r] + c * cnt;
        }
        body(bits, vp, xT + c * CW * MP, cnt);
      }
      if (tail) {
        uint32_t bits[RS];
        const T* vp[RS];
        for (int r = 0; r < RS; ++r) {
          bits[r] = 0;
          for (int b = 0; b < (g.tw + 7) / 8; ++b) bits[r] |= static_cast<uint32_t>(mr[r][2 * g.nfull + b]) << (8 * b);
          vp[r] = vr[r] + g.nfull * cnt;
        }
        body(bits, vp, xT + g.nfull * CW * MP, g.tcnt);
      }
      // A clamped repeat of the last row computes the same sums from the same start, so the stores agree.
      for (int r = 0; r < RS; ++r)
        for (int q = 0; q < NV; ++q) acc[(rows[r] - o_begin) * NV + q] = va[r][q];
    }
  }
  store_panel(a, D, reinterpret_cast<const float*>(acc.data()), MP, o_begin, o_end, p0, mp);
}

template <class Dec, DType D>
static int64_t run_dense_math(const LinearArgs& a, const Geo& g, int64_t o_begin, int64_t o_end);

// Panels of 4 vectors of x rows. A remainder of one vector's worth goes through the expanding path
// instead (with one vector per weight the index work is not amortised), and so does one of 2 vectors
// unless the ISA opts in (Dec::sparse_nv2: 4 output rows x 2 vectors, measured faster on AVX2 at M=16).
template <class Dec, DType D>
static int64_t run_sparse(const LinearArgs& a, const Geo& g, int64_t o_begin, int64_t o_end) {
  for (int64_t o = o_begin; o < o_end; ++o)
    if (!row_ok(g, a.mask, o)) return o;
  constexpr int W = Dec::W;
  for (int64_t p0 = 0; p0 < a.M; p0 += 4 * W) {
    const int mp = static_cast<int>(std::min<int64_t>(4 * W, a.M - p0));
    const int nv = (mp + W - 1) / W;
    if (nv == 2 && Dec::sparse_nv2) {
      sparse_panel<Dec, D, 2, 4>(a, g, o_begin, o_end, p0, mp);
      continue;
    }
    switch (nv) {
      case 1:
      case 2: {
        LinearArgs r = a;
        r.M = mp;
        r.x = static_cast<const char*>(a.x) + p0 * a.ldx * g.es;
        r.y = static_cast<char*>(a.y) + p0 * a.ldy * g.es;
        return run_dense_math<Dec, D>(r, g, o_begin, o_end);
      }
      case 3: sparse_panel<Dec, D, 3, 2>(a, g, o_begin, o_end, p0, mp); break;
      default: sparse_panel<Dec, D, 4, 2>(a, g, o_begin, o_end, p0, mp); break;
    }
  }
  return -1;
}

// Expanded weights, dense FMAs: registers only for M <= Dec::small_max, else the decoded-block GEMM.
template <class Dec, DType D>
static int64_t run_dense_math(const LinearArgs& a, const Geo& g, int64_t o_begin, int64_t o_end) {
  switch (a.M) {
    case 1: return run_m1<Dec, D>(a, g, o_begin, o_end);
    case 2: return run_small<Dec, D, 2>(a, g, o_begin, o_end);
    case 3: if constexpr (Dec::small_max >= 3) return run_small<Dec, D, 3>(a, g, o_begin, o_end); break;
    case 4: if constexpr (Dec::small_max >= 4) return run_small<Dec, D, 4>(a, g, o_begin, o_end); break;
    default: break;
  }
  return run_blocked<Dec, D>(a, g, o_begin, o_end);
}

// Rows [o_begin, o_end) of the dense weight in its own dtype (the glue's dense-math path at large M).
// Widening bf16/fp16 to fp32 and back is exact, so the decoded tile holds the stored bits.
template <class Dec, DType D>
static int64_t decode_rows_t(const LinearArgs& a, void* dense, int64_t ld, int64_t o_begin, int64_t o_end) {
  const Geo g(a);
  const typename Dec::Slice sl(g);
  for (int64_t o = o_begin; o < o_end; ++o) {
    const char* vr = static_cast<const char*>(a.values) + o * g.kept * g.es;
    const uint8_t* mr = a.mask + o * g.rb;
    char* dr = static_cast<char*>(dense) + (o - o_begin) * ld * g.es;
    int bad = 0;
    alignas(64) float t[CW];
    auto put = [&](int64_t k0, int cols) {
      if constexpr (D == DType::f32) {
        std::memcpy(dr + k0 * 4, t, cols * 4);
      } else {
        uint16_t* d16 = reinterpret_cast<uint16_t*>(dr) + k0;
        for (int j = 0; j < cols; ++j)
          d16[j] = D == DType::bf16 ? static_cast<uint16_t>(f32_to_bits(t[j]) >> 16) : f32_to_f16(t[j]);
      }
    };
    for (int64_t c = 0; c < g.nfull; ++c) {
      typename Dec::Chunk w;
      bad |= Dec::template decode<D>(sl, vr, mr, c, w.v);
      std::memcpy(t, w.v, sizeof(t));
      put(c * CW, CW);
    }
    if (g.tw) {
      bad |= !decode_tail(D, g, a.values, a.mask, o, t);
      put(g.nfull * CW, g.tw);
    }
    if (bad) return o;
  }
  return -1;
}

template <class Dec>
static inline int64_t decode_rows(const LinearArgs& a, void* dense, int64_t ld, int64_t o_begin, int64_t o_end) {
  switch (a.dtype) {
    case DType::f32: return decode_rows_t<Dec, DType::f32>(a, dense, ld, o_begin, o_end);
    case DType::bf16: return decode_rows_t<Dec, DType::bf16>(a, dense, ld, o_begin, o_end);
    case DType::f16: return decode_rows_t<Dec, DType::f16>(a, dense, ld, o_begin, o_end);
  }
  return -1;
}

template <class Dec>
static inline int64_t run(const LinearArgs& a, int64_t o_begin, int64_t o_end) {
  if (o_begin >= o_end) return -1;
  const Geo g(a);
  if (a.M >= Dec::sparse_min_m && 2 * g.n <= g.m && all_finite(a)) {
    switch (a.dtype) {
      case DType::f32: return run_sparse<Dec, DType::f32>(a, g, o_begin, o_end);
      case DType::bf16: return run_sparse<Dec, DType::bf16>(a, g, o_begin, o_end);
      case DType::f16: return run_sparse<Dec, DType::f16>(a, g, o_begin, o_end);
    }
  }
  switch (a.dtype) {
    case DType::f32: return run_dense_math<Dec, DType::f32>(a, g, o_begin, o_end);
    case DType::bf16: return run_dense_math<Dec, DType::bf16>(a, g, o_begin, o_end);
    case DType::f16: return run_dense_math<Dec, DType::f16>(a, g, o_begin, o_end);
  }
  return -1;
}

}  // namespace
}  // namespace sparseops::nm::x86
