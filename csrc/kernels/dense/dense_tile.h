// Register-tiled fp32 micro-kernel shared by the dense reference kernels and the NEON N:M kernel.
//
// Every ISA file includes this header and instantiates it with its own vector width W (GCC/Clang
// vector extensions: 4 lanes -> SSE/NEON, 8 -> AVX2, 16 -> AVX-512), so each copy is compiled with
// that file's flags. Everything here has internal linkage on purpose (see half.h).
//
// Scheme: x is converted once to fp32. For a tile of RO output rows and a block of KB columns, a
// "weight source" hands over the rows' weights (straight from memory for fp32/bf16, or decoded into
// an fp32 buffer); acc[r][i] (one W-lane vector per pair) sums w[r] * x[i]. Lanes are added up once
// per output at the end, plus bias, then rounded once to the output dtype.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__aarch64__)
#include <arm_neon.h>  // baseline on aarch64
#elif defined(__AVX2__)
#include <immintrin.h>  // only in files compiled with AVX2 / AVX-512 flags
#endif

#include "../common/half.h"
#include "../nm/nm.h"

namespace sparseops::tile {
namespace {

using nm::DType;
constexpr int RO = 4;     // output rows per tile
constexpr int KB = 256;   // columns per block (a multiple of 16, so N:M chunks never straddle blocks)

template <int W> struct VecOf;
// type: W fp32 lanes; h16 / u32: W lanes of uint16 / uint32 (bf16 widening).
#define SPARSEOPS_VEC(W)                                                     \
  template <> struct VecOf<W> {                                              \
    typedef float type __attribute__((vector_size(W * 4)));                  \
    typedef uint16_t h16 __attribute__((vector_size(W * 2)));                \
    typedef uint32_t u32 __attribute__((vector_size(W * 4)));                \
  };
SPARSEOPS_VEC(4)
SPARSEOPS_VEC(8)
SPARSEOPS_VEC(16)
#undef SPARSEOPS_VEC

struct Problem {
  DType dtype;
  int64_t M, K;
  const void* x; int64_t ldx;
  const void* bias;
  void* y; int64_t ldy;
};

static inline size_t elem_size(DType d) { return d == DType::f32 ? 4 : 2; }

// Converts n elements at src (dtype d) to fp32 with the ISA's converter Cvt.
template <class Cvt>
static inline void to_f32(DType d, const void* src, int64_t n, float* dst) {
  if (d == DType::f32) std::memcpy(dst, src, n * 4);
  else if (d == DType::bf16) Cvt::bf16(static_cast<const uint16_t*>(src), dst, n);
  else Cvt::f16(static_cast<const uint16_t*>(src), dst, n);
}

// Weight rows of one tile and block, as the weight source hands them over: fp32, or raw bf16 bits
// (widened inside the FMA loop). Row r's columns [k0, k0 + kb) start at p[r].
struct WRows {
  const void* p[RO];
  bool bf16;
};

template <int W, class T>
static inline typename VecOf<W>::type load_w(const T* p) {
  typedef typename VecOf<W>::type V;
  V v;
  if constexpr (sizeof(T) == 4) {
    std::memcpy(&v, p, sizeof v);
  } else {  // bf16: the fp32 value is the 16 bits shifted up
#if defined(__aarch64__)
    if constexpr (W == 4) {  // GCC turns the generic form below into lane moves for 4 lanes
      uint16x4_t h;
      std::memcpy(&h, p, sizeof h);
      return (V)vshll_n_u16(h, 16);  // same-size vector cast = bit cast
    }
#elif defined(__AVX512F__) || defined(__AVX2__)
    if constexpr (W == 16) {  // GCC widens the generic form in two halves
#if defined(__AVX512F__)
      __m256i h;  // memcpy, not a load through the may_alias __m256i*, which would pin the accumulators in memory
      std::memcpy(&h, p, sizeof h);
      return (V)_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
#endif
    } else if constexpr (W == 8) {
      __m128i h;
      std::memcpy(&h, p, sizeof h);
      return (V)_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
    }
#endif
    typedef typename VecOf<W>::h16 H;
    typedef typename VecOf<W>::u32 U;
    H h;
    std::memcpy(&h, p, sizeof h);
    v = (V)(__builtin_convertvector(h, U) << 16);
  }
  return v;
}

// acc[r][i] += w[r][k] * x[i][k] over k in [0, n), n a multiple of W. acc layout: a[RO][NM] of W lanes.
template <int W, int NM, class T>
// noinline: inlined into run(), GCC 12 keeps the bf16 accumulators in memory (a store per FMA).
__attribute__((noinline)) static void micro(const void* const* wp, const float* const* xp, int n, float* accp) {
  typedef typename VecOf<W>::type V;
  V a[RO][NM];
  std::memcpy(a, accp, sizeof a);
  const T* w[RO];
  for (int r = 0; r < RO; ++r) w[r] = static_cast<const T*>(wp[r]);
  for (int k = 0; k < n; k += W) {
    V xv[NM];
    for (int i = 0; i < NM; ++i) std::memcpy(&xv[i], xp[i] + k, sizeof(V));
    for (int r = 0; r < RO; ++r) {
      const V wv = load_w<W, T>(w[r] + k);
      for (int i = 0; i < NM; ++i) a[r][i] += wv * xv[i];
    }
  }
  std::memcpy(accp, a, sizeof a);
}

template <int W, int NM>
static inline void micro_any(const WRows& rows, const float* const* xp, int n, float* accp) {
  if (rows.bf16) micro<W, NM, uint16_t>(rows.p, xp, n, accp);
  else micro<W, NM, float>(rows.p, xp, n, accp);
}

template <int W, int RM>
static inline void micro_rows(int nm, const WRows& rows, const float* const* xp, int n, float* accp) {
  switch (nm) {  // a partial x tile uses a narrower kernel; its accumulators sit at the slot's front
    case 1: micro_any<W, 1>(rows, xp, n, accp); break;
    case 2: if constexpr (RM >= 2) micro_any<W, 2>(rows, xp, n, accp); break;
    case 3: if constexpr (RM >= 3) micro_any<W, 3>(rows, xp, n, accp); break;
    default: if constexpr (RM >= 4) micro_any<W, 4>(rows, xp, n, accp); break;
  }
}

// Runs output rows [o_begin, o_end). WeightSrc: int64_t(int64_t o0, int ro, int64_t k0, int kb,
// float (*wb)[KB], WRows& rows) sets rows.p[0..ro-1] (into wb, or straight into the weight) and
// returns -1, or the first bad output row (then this returns it at once). RM: x rows per register
// tile (<= 4). x is converted once to zero-padded fp32 rows; the last K % W weight columns go
// through a small zero-padded buffer, so no weight is read past its row.
template <int W, int RM, class Cvt, class WeightSrc>
static inline int64_t run(const Problem& p, int64_t o_begin, int64_t o_end, WeightSrc&& src) {
  static_assert(KB % W == 0 && RM >= 1 && RM <= 4, "tile shape");
  alignas(64) float wb[RO][KB];
  alignas(64) float wt[RO][W];
  alignas(64) static const float zeros[KB] = {};
  const size_t es = elem_size(p.dtype);
  const int64_t M = p.M, K = p.K, Kp = (K + W - 1) / W * W;
  std::vector<float> xf(static_cast<size_t>(M * Kp), 0.0f);
  for (int64_t i = 0; i < M; ++i)
    to_f32<Cvt>(p.dtype, static_cast<const char*>(p.x) + i * p.ldx * es, K, xf.data() + i * Kp);
  const int64_t mt = (M + RM - 1) / RM;  // x-row tiles; each keeps RO*RM vectors of W lanes
  std::vector<float> acc(static_cast<size_t>(mt) * RO * RM * W);
  for (int64_t o0 = o_begin; o0 < o_end; o0 += RO) {
    const int ro = static_cast<int>(std::min<int64_t>(RO, o_end - o0));
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (int64_t k0 = 0; k0 < K; k0 += KB) {
      const int kb = static_cast<int>(std::min<int64_t>(KB, K - k0));
      const int kfull = kb / W * W;
      WRows rows{};
      const int64_t bad = src(o0, ro, k0, kb, wb, rows);
      if (bad >= 0) return bad;
      for (int r = ro; r < RO; ++r) rows.p[r] = zeros;
      WRows tail{};
      if (kfull < kb) {
        for (int r = 0; r < RO; ++r) {
          for (int j = 0; j < W; ++j) {
            float v = 0.0f;
            if (r < ro && kfull + j < kb) {
              if (rows.bf16) v = bf16_to_f32(static_cast<const uint16_t*>(rows.p[r])[kfull + j]);
              else v = static_cast<const float*>(rows.p[r])[kfull + j];
            }
            wt[r][j] = v;
          }
          tail.p[r] = wt[r];
        }
      }
      for (int64_t t = 0; t < mt; ++t) {
        const int nm = static_cast<int>(std::min<int64_t>(RM, M - t * RM));
        const float* xp[RM] = {};
        for (int i = 0; i < nm; ++i) xp[i] = xf.data() + (t * RM + i) * Kp + k0;
        float* ap = acc.data() + t * RO * RM * W;
        if (kfull > 0) micro_rows<W, RM>(nm, rows, xp, kfull, ap);
        if (kfull < kb) {
          for (int i = 0; i < nm; ++i) xp[i] += kfull;
          micro_rows<W, RM>(nm, tail, xp, W, ap);
        }
      }
    }
    for (int64_t t = 0; t < mt; ++t) {
      const int nm = static_cast<int>(std::min<int64_t>(RM, M - t * RM));
      const float* ap = acc.data() + t * RO * RM * W;
      for (int r = 0; r < ro; ++r) {
        const int64_t o = o0 + r;
        float b = 0.0f;
        if (p.bias) to_f32<Cvt>(p.dtype, static_cast<const char*>(p.bias) + o * es, 1, &b);
        for (int i = 0; i < nm; ++i) {
          const float* lanes = ap + (r * nm + i) * W;  // layout of micro<W, nm>'s a[RO][nm]
          float s = 0.0f;
          for (int l = 0; l < W; ++l) s += lanes[l];
          s += b;
          const int64_t row = t * RM + i;
          char* yp = static_cast<char*>(p.y) + (row * p.ldy + o) * es;
          if (p.dtype == DType::f32) std::memcpy(yp, &s, 4);
          else {
            const uint16_t h = p.dtype == DType::bf16 ? f32_to_bf16(s) : f32_to_f16(s);
            std::memcpy(yp, &h, 2);
          }
        }
      }
    }
  }
  return -1;
}

// Portable converters (the scalar variants use these; ISA files may supply faster ones).
struct PortableCvt {
  static void bf16(const uint16_t* s, float* d, int64_t n) {
    for (int64_t i = 0; i < n; ++i) d[i] = bf16_to_f32(s[i]);
  }
  static void f16(const uint16_t* s, float* d, int64_t n) {
    for (int64_t i = 0; i < n; ++i) d[i] = f16_to_f32(s[i]);
  }
};

}  // namespace
}  // namespace sparseops::tile
