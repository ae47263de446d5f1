// The row driver every ISA file instantiates with its own vector code (Ops). Everything here has
// internal linkage: the header is compiled with different ISA flags per file (see DEVELOPERS.md).
//
// Ops provides, for value type V (float / Bf16 / F16) and index type I (uint16_t / int32_t):
//   static float dot(const V* v, const I* c, int64_t n, int64_t readable, const float* x, uint32_t K, bool* bad)
//       -- sum v[j] * x[c[j]]; sets *bad (and skips the entry) when c[j] >= K as unsigned; v[0, readable) and
//          c[0, readable) may be read (readable >= n: the entries of later rows), so a short tail can use whole vectors
//   template <int NV> static void tile(const V* v, const I* c, int64_t n, const float* b, int64_t ldb,
//                                      uint32_t K, float* out, bool* bad)
//       -- out[0, NV*W) = sum_j v[j] * b[c[j] * ldb + (0..NV*W)), same index check
//   static constexpr int W (fp32 lanes per vector), kMaxNV (vectors per tile)
#pragma once
#include <algorithm>

#include "../common/half.h"
#include "csr.h"

namespace sparseops::csr {
namespace {

struct Bf16 { uint16_t u; };
struct F16 { uint16_t u; };

static inline float to_f32(float v) { return v; }
static inline float to_f32(Bf16 v) { return bf16_to_f32(v.u); }
static inline float to_f32(F16 v) { return f16_to_f32(v.u); }
static inline void store(float* p, float v) { *p = v; }
static inline void store(Bf16* p, float v) { p->u = f32_to_bf16(v); }
static inline void store(F16* p, float v) { p->u = f32_to_f16(v); }

// Rows [o0, o1) times columns [j0, j0 + NV*W) of B, in groups of rows whose sums wait in a buffer so that y
// is written in runs: linear's y is [N, O], where one row's outputs are N far-apart floats (N lines that
// share one L1 set when O * 4 is a multiple of 4 KiB, so the stores kept missing L1).
template <class Ops, class V, class I, int NV>
static inline int64_t tile_rows(const SpmmArgs& a, int64_t o0, int64_t o1, int64_t j0) {
  constexpr int T = NV * Ops::W;
  constexpr int64_t kGroup = 64;
  const V* vals = static_cast<const V*>(a.values);
  const I* cols = static_cast<const I*>(a.cols);
  const V* bias = static_cast<const V*>(a.bias);
  V* y = static_cast<V*>(a.y);
  const int64_t width = std::min<int64_t>(T, a.N - j0);
  alignas(64) float acc[kGroup * T];
  for (int64_t g0 = o0; g0 < o1; g0 += kGroup) {
    const int64_t g1 = std::min(o1, g0 + kGroup);
    for (int64_t o = g0; o < g1; ++o) {
      const int64_t s = a.row_ptr[o], n = a.row_ptr[o + 1] - s;
      bool bad = false;
      Ops::template tile<NV>(vals + s, cols + s, n, a.b + j0, a.ldb, static_cast<uint32_t>(a.K), acc + (o - g0) * T,
                             &bad);
      if (bad) return o;
      if (bias) {
        const float bv = to_f32(bias[o]);
        for (int t = 0; t < T; ++t) acc[(o - g0) * T + t] += bv;
      }
    }
    if (a.sj == 1) {  // spmm: each row's outputs are contiguous
      for (int64_t o = g0; o < g1; ++o)
        for (int64_t t = 0; t < width; ++t) store(y + o * a.so + j0 + t, acc[(o - g0) * T + t]);
    } else {
      for (int64_t t = 0; t < width; ++t) {
        V* yt = y + (j0 + t) * a.sj;
        for (int64_t o = g0; o < g1; ++o) store(yt + o * a.so, acc[(o - g0) * T + t]);
      }
    }
  }
  return -1;
}

template <class Ops, class V, class I>
static inline int64_t run_typed(const SpmmArgs& a, int64_t o0, int64_t o1) {
  const V* vals = static_cast<const V*>(a.values);
  const I* cols = static_cast<const I*>(a.cols);
  const V* bias = static_cast<const V*>(a.bias);
  V* y = static_cast<V*>(a.y);
  if (a.N == 1) {
    const int64_t nnz = a.row_ptr[a.O];
    for (int64_t o = o0; o < o1; ++o) {
      const int64_t s = a.row_ptr[o];
      bool bad = false;
      float acc = Ops::dot(vals + s, cols + s, a.row_ptr[o + 1] - s, nnz - s, a.b, static_cast<uint32_t>(a.K), &bad);
      if (bad) return o;
      if (bias) acc += to_f32(bias[o]);
      store(y + o * a.so, acc);
    }
    return -1;
  }
  // Column tiles outermost, so one tile's slice of B (K x tile floats) stays in cache across the rows.
  constexpr int64_t kTile = Ops::kMaxNV * Ops::W;
  int64_t j0 = 0;
  for (; j0 + kTile <= a.N; j0 += kTile) {
    const int64_t bad = tile_rows<Ops, V, I, Ops::kMaxNV>(a, o0, o1, j0);
    if (bad >= 0) return bad;
  }
  const int64_t rest = a.N - j0;
  if (rest <= 0) return -1;
  switch ((rest + Ops::W - 1) / Ops::W) {  // ldb is padded, so a short tile still reads whole vectors
    case 1: return tile_rows<Ops, V, I, 1>(a, o0, o1, j0);
    case 2: return tile_rows<Ops, V, I, (Ops::kMaxNV >= 2 ? 2 : 1)>(a, o0, o1, j0);
    case 3: return tile_rows<Ops, V, I, (Ops::kMaxNV >= 3 ? 3 : 1)>(a, o0, o1, j0);
    default: return tile_rows<Ops, V, I, Ops::kMaxNV>(a, o0, o1, j0);
  }
}

template <class Ops, class V>
static inline int64_t run_index(const SpmmArgs& a, int64_t o0, int64_t o1) {
  return a.index == Index::u16 ? run_typed<Ops, V, uint16_t>(a, o0, o1) : run_typed<Ops, V, int32_t>(a, o0, o1);
}

template <class Ops>
static inline int64_t run(const SpmmArgs& a, int64_t o0, int64_t o1) {
  switch (a.dtype) {
    case DType::bf16: return run_index<Ops, Bf16>(a, o0, o1);
    case DType::f16: return run_index<Ops, F16>(a, o0, o1);
    default: return run_index<Ops, float>(a, o0, o1);
  }
}

}  // namespace
}  // namespace sparseops::csr
