// AVX-512 bitmap-KV decode attention, one loop for every dtype; Loader policies place records (one for the
// values, one for the keys and q). Included by kv_avx512.cpp (F/BW/VL/DQ loaders) and kv_avx512x.cpp (the
// extension loaders); internal linkage on purpose.
//
// The generic loop (kv_attend.h) was compute-bound at ~200 cycles per token and KV head with 4 query rows and
// D=128 (Sapphire Rapids; taking pieces out showed the time spread over expansion, scores and P.V). Here:
//  - channels go in 32-channel chunks; a chunk is two fp32 vectors ("halves") in the loader's lane order, or
//    with LoadBf16Words one vector of 32 bf16 words in channel order (keys: scores by vdpbf16ps; values:
//    widened to halves inside P.V, half a store and a load less per chunk); q is laid out as the keys, and
//    the output is put back in channel order at the end;
//  - block buffers are chunk-major ([chunk][token][32 floats]), so a chunk's 16 tokens sit at constant
//    offsets from one pointer (the token-major layout spilled 16 row pointers);
//  - the softmax runs once per 64 tokens instead of per 16 (its reductions are serial latency);
//  - P.V keeps 4 rows x 64 channels in registers across 16 tokens (one broadcast feeds four FMAs).
// kPrefetch: software prefetch of the records one softmax step ahead. On Zen 5 the hardware prefetchers
// left DRAM latency exposed (uncached bf16 s=0 ran 2.2-2.3x its cache-hot time, prefetched 1.1x:
// bench/results/kv-perm-ab-zen5-2c-96668e7); on an AMX Xeon it ran 5-20% slower
// (bench/results/kv-prefetch-ab-xeon2c-46873d2), so only AMD asks for it.
// The accumulators live in a kernel-local buffer of Dp = D rounded up to 32 channels (a 16-channel tail
// chunk is zero in its upper lanes everywhere), copied to `part` at the end.
//
// Loader (T: stored element type; O: placed element type, float or, for bf16 keys, the bf16 words):
//   chunk(bits, v, w, o)   places one chunk of a well-formed record (w: its 32 bitmap bits; v: its first
//                          value) at o (fp32 halves at o and o + 16, or 32 words); returns the number of
//                          values read (popcount w)
//   dense(row, o)          the same for 32 dense values (a tail token, q, or a malformed record's placement)
//   channel(half, lane)    channel offset within the chunk of (half, lane)
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "../common/prefetch.h"
#include "kv_avx512_ops.h"

namespace sparseops::kv {
namespace {

constexpr int kC = 32;                // channels per chunk
constexpr int kSuper = 64;            // tokens per softmax step (kBlock = 16 tokens per buffer fill)
constexpr int kCS = kBlock * kC;      // floats per chunk of a block buffer

// bf16 / fp16 with VBMI2: one vpexpandw per chunk; Halves widens the 32 lanes into the two fp32 halves.
template <class Halves>
struct LoadVbmi2 : Halves {
  using T = uint16_t;
  using O = float;
  static inline int chunk(const T* v, uint32_t w, float* o) {
    Halves::halves(_mm512_maskz_expandloadu_epi16(w, v), o);
    return __builtin_popcount(w);
  }
  static inline void dense(const T* row, float* o) { Halves::halves(_mm512_loadu_si512(row), o); }
};

// bf16 in "pair order" (16 even channels, then 16 odd: a shift and an and).
struct Bf16Pairs {
  static inline void halves(__m512i x, float* o) {
    _mm512_store_ps(o, _mm512_castsi512_ps(_mm512_slli_epi32(x, 16)));
    _mm512_store_ps(o + 16, _mm512_castsi512_ps(_mm512_and_si512(x, _mm512_set1_epi32(int(0xffff0000u)))));
  }
  static constexpr int channel(int half, int lane) { return 2 * lane + half; }
};

// fp16: each 256-bit half converted (channel order).
struct F16Halves {
  static inline void halves(__m512i x, float* o) {
    _mm512_store_ps(o, _mm512_cvtph_ps(_mm512_castsi512_si256(x)));
    _mm512_store_ps(o + 16, _mm512_cvtph_ps(_mm512_extracti64x4_epi64(x, 1)));
  }
  static constexpr int channel(int half, int lane) { return 16 * half + lane; }
};
using LoadBf16Vbmi2 = LoadVbmi2<Bf16Pairs>;
using LoadF16Vbmi2 = LoadVbmi2<F16Halves>;

// bf16 / fp16 without vpexpandw (a register expand issues once per ~5 cycles on Zen 5,
// bench/results/probe-shuffle-rates-zen5-2c-386561e.txt): channel j of a chunk takes value
// popcount(w & (2^j - 1)) of the record, counted by vpopcntd of w ANDed with per-lane "bits below" masks, and
// one vpermw places the values, read with a masked load of popcount(w) words. (For fp32 the same with vpermps
// measured no faster than vexpandps, bench/results/kv-perm-ab-zen5-2c-96668e7.) Needs VPOPCNTDQ and BW only.
struct PermIndex {
  // 16-bit: dword lane 4L+i of lo / hi counts the bits below channel 8L+i / 8L+4+i, the order in which
  // vpackusdw interleaves its two sources per 128-bit lane, so the packed words come out in channel order.
  alignas(64) uint32_t lo[16], hi[16];
  PermIndex() {
    for (int L = 0; L < 4; ++L)
      for (int i = 0; i < 4; ++i) {
        lo[4 * L + i] = (1u << (8 * L + i)) - 1u;
        hi[4 * L + i] = (1u << (8 * L + 4 + i)) - 1u;
      }
  }
};
const PermIndex kPerm;

// One chunk of 16-bit values placed in channel order; *cnt = popcount(w) values read.
static inline __m512i perm16(const uint16_t* v, uint32_t w, int* cnt) {
  *cnt = __builtin_popcount(w);
  const __m512i vw = _mm512_set1_epi32(static_cast<int>(w));
  const __m512i idx =
      _mm512_packus_epi32(_mm512_popcnt_epi32(_mm512_and_si512(vw, _mm512_load_si512(kPerm.lo))),
                          _mm512_popcnt_epi32(_mm512_and_si512(vw, _mm512_load_si512(kPerm.hi))));
  const __m512i x = _mm512_maskz_loadu_epi16(static_cast<__mmask32>((uint64_t(1) << *cnt) - 1), v);
  return _mm512_maskz_permutexvar_epi16(w, idx, x);
}

template <class Halves>
struct LoadPerm16 : Halves {
  using T = uint16_t;
  using O = float;
  static inline int chunk(const T* v, uint32_t w, float* o) {
    int cnt;
    Halves::halves(perm16(v, w, &cnt), o);
    return cnt;
  }
  static inline void dense(const T* row, float* o) { Halves::halves(_mm512_loadu_si512(row), o); }
};
using LoadF16Perm = LoadPerm16<F16Halves>;

// bf16 records kept as words in channel order (O = uint16_t). Keys: the scores take one vdpbf16ps per chunk
// and token instead of two FMAs and the widening (bf16 x bf16 products are exact in fp32; vdpbf16ps flushes
// denormal inputs and outputs, |x| < 1.2e-38, which moves no score by more than that). Values: P.V widens
// them (v_half), 2-4% faster than storing fp32 halves (bench/results/kv-bf16-words-ab-zen5-2c-a62c1ee).
struct LoadBf16Words {
  using T = uint16_t;
  using O = uint16_t;
  static inline int chunk(const T* v, uint32_t w, uint16_t* o) {
    int cnt;
    _mm512_store_si512(o, perm16(v, w, &cnt));
    return cnt;
  }
  static inline void dense(const T* row, uint16_t* o) { _mm512_store_si512(o, _mm512_loadu_si512(row)); }
  static constexpr int channel(int half, int lane) { return 2 * lane + half; }  // as P.V widens them (v_half)
};

// Any dtype without VBMI2 (fp32 with it too): per 16 channels, the values widened to fp32 then vexpandps
// (fp32: one expand-load). Channel order.
template <DType kD>
struct LoadWiden {
  using T = std::conditional_t<kD == DType::f32, float, uint16_t>;
  using O = float;
  static inline int half(const T* v, unsigned w, float* o) {
    const unsigned cnt = __builtin_popcount(w);
    if constexpr (kD == DType::f32) {
      _mm512_store_ps(o, _mm512_maskz_expandloadu_ps(static_cast<__mmask16>(w), v));
    } else {
      _mm512_store_ps(o, _mm512_maskz_expand_ps(static_cast<__mmask16>(w),
                                                widen16(kD, v, static_cast<__mmask16>((1u << cnt) - 1))));
    }
    return static_cast<int>(cnt);
  }
  static inline int chunk(const T* v, uint32_t w, float* o) {
    const int lo = half(v, w & 0xffffu, o);
    return lo + half(v + lo, w >> 16, o + 16);
  }
  static inline void dense(const T* row, float* o) {
    _mm512_store_ps(o, widen16(kD, row, 0xffff));
    _mm512_store_ps(o + 16, widen16(kD, row + 16, 0xffff));
  }
  static constexpr int channel(int half, int lane) { return 16 * half + lane; }
};

// Record -> fp32 chunks at o, o + kCS, ... A record whose popcount is not k (malformed) is placed by the
// scalar rule (at most k values read) via `tmp` (Dp values); otherwise each chunk reads exactly its popcount
// with fault-suppressing expand-loads or masked loads, never past the record.
template <class L>
static inline void place_record(const uint8_t* bits, const typename L::T* v, int D, int k, typename L::O* o,
                                typename L::T* tmp) {
  if (record_popcount(bits, D / 8) != k) {
    const int Dp = (D + kC - 1) / kC * kC;
    std::fill(tmp, tmp + Dp, typename L::T(0));
    int j = 0;
    for (int c = 0; c < D; ++c)
      if (((bits[c >> 3] >> (c & 7)) & 1) && j < k) tmp[c] = v[j++];
    for (int c = 0; c < D; c += kC, o += kCS) L::dense(tmp + c, o);
    return;
  }
  int c = 0;
  for (; c + kC <= D; c += kC, o += kCS) {
    uint32_t w;
    std::memcpy(&w, bits + c / 8, 4);
    v += L::chunk(v, w, o);
  }
  if (c < D) {  // D % 32 == 16: the upper 16 channels are absent, so their mask bits are 0
    uint16_t w;
    std::memcpy(&w, bits + c / 8, 2);
    L::chunk(v, w, o);
  }
}

// Prefetches the bits and values of records [t, min(t + n, T)) into L1, one touch per cache line (kPrefetch:
// one softmax step ahead; see the header comment).
template <class T>
static inline void prefetch_records(const uint8_t* bits, const T* vals, int nb, int k, int64_t t, int64_t T_,
                                    int n) {
  const int64_t e = std::min<int64_t>(t + n, T_);
  if (e <= t) return;
  prefetch_l1_range(bits + t * nb, (e - t) * nb);
  prefetch_l1_range(vals + t * k, (e - t) * k * int64_t(sizeof(T)));
}

// A dense row (a tail token, q) -> chunks at o, o + stride, ...; a 16-channel tail chunk via a zeroed copy.
template <class L>
static inline void place_row(const typename L::T* row, int D, typename L::O* o, int64_t stride) {
  int c = 0;
  for (; c + kC <= D; c += kC, o += stride) L::dense(row + c, o);
  if (c < D) {
    alignas(64) typename L::T t[kC] = {};
    std::memcpy(t, row + c, 16 * sizeof(typename L::T));
    L::dense(t, o);
  }
}

// 16 scores of one query row against the buffered block: per token one accumulator, folded by tree16. Keys as
// fp32 halves (two FMAs per chunk and token) or bf16 words (one vdpbf16ps, LoadBf16Words).
template <class O>
static inline __m512 row_scores(const O* q, const O* kbuf, int nc) {
  __m512 x[16];
#pragma GCC unroll 16
  for (int j = 0; j < 16; ++j) x[j] = _mm512_setzero_ps();
  for (int c = 0; c < nc; ++c, q += kC, kbuf += kCS) {
    if constexpr (std::is_same_v<O, float>) {
      const __m512 q0 = _mm512_load_ps(q), q1 = _mm512_load_ps(q + 16);
#pragma GCC unroll 16
      for (int j = 0; j < 16; ++j) {
        x[j] = _mm512_fmadd_ps(q0, _mm512_load_ps(kbuf + j * kC), x[j]);
        x[j] = _mm512_fmadd_ps(q1, _mm512_load_ps(kbuf + j * kC + 16), x[j]);
      }
    } else {
#ifdef __AVX512BF16__
      const __m512bh qc = (__m512bh)_mm512_load_si512(q);
#pragma GCC unroll 16
      for (int j = 0; j < 16; ++j) x[j] = _mm512_dpbf16_ps(x[j], qc, (__m512bh)_mm512_load_si512(kbuf + j * kC));
#endif
    }
  }
  return tree16(x);
}

// Half i % 2 of chunk i / 2 of token j: fp32 halves as stored, or bf16 words widened (even channels, odd).
static inline __m512 v_half(const float* vc, int i, int j) {
  return _mm512_load_ps(vc + (i / 2) * kCS + j * kC + (i % 2) * 16);
}
static inline __m512 v_half(const uint16_t* vc, int i, int j) {
  const __m512i w = _mm512_load_si512(vc + (i / 2) * kCS + j * kC);
  return _mm512_castsi512_ps(i % 2 ? _mm512_and_si512(w, _mm512_set1_epi32(int(0xffff0000u))) : _mm512_slli_epi32(w, 16));
}

template <int NR, int NCH, class VT>
static inline void pv(float* acc, int Dp, const float* p, const VT* vc, int n) {
  __m512 a[NR][2 * NCH];
#pragma GCC unroll 4
  for (int r = 0; r < NR; ++r)
#pragma GCC unroll 4
    for (int i = 0; i < 2 * NCH; ++i) a[r][i] = _mm512_load_ps(acc + r * Dp + 16 * i);
  for (int j = 0; j < n; ++j) {
    __m512 v[2 * NCH];
#pragma GCC unroll 4
    for (int i = 0; i < 2 * NCH; ++i) v[i] = v_half(vc, i, j);
#pragma GCC unroll 4
    for (int r = 0; r < NR; ++r) {
      const __m512 pr = _mm512_set1_ps(p[r * kSuper + j]);
#pragma GCC unroll 4
      for (int i = 0; i < 2 * NCH; ++i) a[r][i] = _mm512_fmadd_ps(pr, v[i], a[r][i]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < NR; ++r)
#pragma GCC unroll 4
    for (int i = 0; i < 2 * NCH; ++i) _mm512_store_ps(acc + r * Dp + 16 * i, a[r][i]);
}

template <int NR, class VT>
static inline void pv_rows(float* acc, int Dp, const float* p, const VT* vbuf, int n) {
  int c = 0;
  for (; c + 2 * kC <= Dp; c += 2 * kC) pv<NR, 2>(acc + c, Dp, p, vbuf + (c / kC) * kCS, n);
  if (c < Dp) pv<NR, 1>(acc + c, Dp, p, vbuf + (c / kC) * kCS, n);
}

template <class L, class LK, bool kPrefetch, int kD>
void decode_partial_d(const AttnArgs& a, int64_t b, int64_t h, int64_t t0, int64_t t1, float* part) {
  using T = typename L::T;
  const int D = kD ? kD : static_cast<int>(a.D);
  const int nc = (D + kC - 1) / kC, Dp = nc * kC, nb = D / 8;
  const int64_t G = a.Hq / a.Hkv, R = G * a.Lq, P = D + 2;
  const float ninf = -std::numeric_limits<float>::infinity();
  // One allocation, each part a multiple of 64 bytes but the last: q rows, accumulators, K and V blocks,
  // scores / weights [R][kSuper], scratch for a malformed record, running max and sum per row.
  AlignedF32 buf(2 * R * Dp + 2 * nc * kCS + R * kSuper + Dp + 2 * R);
  float* qf = buf.p;
  float* acc = qf + R * Dp;
  float* kbuf = acc + R * Dp;
  float* vbuf = kbuf + nc * kCS;
  using OK = typename LK::O;  // q and the key block in the key loader's element type (<= 4 bytes)
  OK* qk = reinterpret_cast<OK*>(qf);
  OK* kblk = reinterpret_cast<OK*>(kbuf);
  typename L::O* vblk = reinterpret_cast<typename L::O*>(vbuf);
  float* s = vbuf + nc * kCS;
  T* tmp = reinterpret_cast<T*>(s + R * kSuper);
  float* ml = s + R * kSuper + Dp;  // past tmp (Dp values of at most 4 bytes)

  const T* q = static_cast<const T*>(a.q) + (b * a.Hq + h * G) * a.Lq * D;
  for (int64_t r = 0; r < R; ++r) place_row<LK>(q + r * D, D, qk + r * Dp, kC);
  for (int64_t r = 0; r < R; ++r) ml[2 * r] = ninf;
  const int64_t bh = b * a.Hkv + h;
  const uint8_t* kb = a.k_bits + bh * a.Tcap_k * nb;
  const T* kvv = static_cast<const T*>(a.k_vals) + bh * a.Tcap_k * a.kk;
  const uint8_t* vb = a.v_bits + bh * a.Tcap_v * nb;
  const T* vvv = static_cast<const T*>(a.v_vals) + bh * a.Tcap_v * a.kv;
  const T* kt = a.Tw ? static_cast<const T*>(a.k_tail) + bh * a.Tw * D : nullptr;
  const T* vt = a.Tw ? static_cast<const T*>(a.v_tail) + bh * a.Tw * D : nullptr;
  const __m512 scale = _mm512_set1_ps(a.scale);

  for (int64_t T0 = t0; T0 < t1; T0 += kSuper) {
    const int N = static_cast<int>(std::min<int64_t>(kSuper, t1 - T0));
    for (int j0 = 0; j0 < N; j0 += kBlock) {  // scores: s[r][j] = scale * q_r . k_j
      const int n = std::min(kBlock, N - j0);
      if constexpr (kPrefetch) prefetch_records(kb, kvv, nb, a.kk, T0 + j0 + kSuper, a.T, n);
      for (int j = 0; j < n; ++j) {
        const int64_t tok = T0 + j0 + j;
        if (tok < a.T) place_record<LK>(kb + tok * nb, kvv + tok * a.kk, D, a.kk, kblk + j * kC, tmp);
        else place_row<LK>(kt + (tok - a.T) * D, D, kblk + j * kC, kCS);
      }
      for (int64_t r = 0; r < R; ++r)
        _mm512_store_ps(s + r * kSuper + j0, _mm512_mul_ps(scale, row_scores(qk + r * Dp, kblk, nc)));
    }
    // Online softmax over the N scores of each row; s becomes exp(s - m). Lanes past N hold leftovers.
    const int nv = (N + 15) / 16;
    const __mmask16 last = static_cast<__mmask16>(0xffffu >> (16 * nv - N));
    for (int64_t r = 0; r < R; ++r) {
      float* sr = s + r * kSuper;
      __m512 mx = _mm512_set1_ps(ninf);
      for (int i = 0; i < nv; ++i)
        mx = _mm512_mask_max_ps(mx, i + 1 < nv ? 0xffff : last, mx, _mm512_load_ps(sr + 16 * i));
      const float bm = _mm512_reduce_max_ps(mx);
      float& m = ml[2 * r];
      float& l = ml[2 * r + 1];
      if (!raise_max(m, l, bm, [&](float alpha) { scal(acc + r * Dp, alpha, Dp); })) {
        std::fill(sr, sr + N, 0.0f);  // every score -inf: these tokens carry no weight
        continue;
      }
      const __m512 mv = _mm512_set1_ps(m);
      __m512 sum = _mm512_setzero_ps();
      for (int i = 0; i < nv; ++i) {
        const __m512 e = _mm512_maskz_mov_ps(i + 1 < nv ? 0xffff : last,
                                             exp512(_mm512_sub_ps(_mm512_load_ps(sr + 16 * i), mv)));
        _mm512_store_ps(sr + 16 * i, e);
        sum = _mm512_add_ps(sum, e);
      }
      l += _mm512_reduce_add_ps(sum);
    }
    for (int j0 = 0; j0 < N; j0 += kBlock) {  // acc += p . V
      const int n = std::min(kBlock, N - j0);
      if constexpr (kPrefetch) prefetch_records(vb, vvv, nb, a.kv, T0 + j0 + kSuper, a.T, n);
      for (int j = 0; j < n; ++j) {
        const int64_t tok = T0 + j0 + j;
        if (tok < a.T) place_record<L>(vb + tok * nb, vvv + tok * a.kv, D, a.kv, vblk + j * kC, tmp);
        else place_row<L>(vt + (tok - a.T) * D, D, vblk + j * kC, kCS);
      }
      int64_t r = 0;
      for (; r + 4 <= R; r += 4) pv_rows<4>(acc + r * Dp, Dp, s + r * kSuper + j0, vblk, n);
      for (; r < R; ++r) pv_rows<1>(acc + r * Dp, Dp, s + r * kSuper + j0, vblk, n);
    }
  }
  for (int64_t r = 0; r < R; ++r) {  // loader lane order -> channel order
    float* out = part + r * P;
    out[0] = ml[2 * r];
    out[1] = ml[2 * r + 1];
    for (int c = 0; c < D; c += kC)
      for (int half = 0; half < 2; ++half)
        for (int lane = 0; lane < 16; ++lane) {
          const int ch = c + L::channel(half, lane);
          if (ch < D) out[2 + ch] = acc[r * Dp + c + 16 * half + lane];
        }
  }
}

// head_dim 128 (most LLMs) gets its own instance: fixed chunk counts let the compiler unroll the chunk loops.
// LK places the keys (and q), L the values.
template <class L, bool kPrefetch = false, class LK = L>
void decode_partial(const AttnArgs& a, int64_t b, int64_t h, int64_t t0, int64_t t1, float* part) {
  if (a.D == 128) return decode_partial_d<L, LK, kPrefetch, 128>(a, b, h, t0, t1, part);
  decode_partial_d<L, LK, kPrefetch, 0>(a, b, h, t0, t1, part);
}

}  // namespace
}  // namespace sparseops::kv
