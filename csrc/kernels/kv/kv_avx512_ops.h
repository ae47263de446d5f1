// AVX-512 bitmap-KV decode attention ops, shared by kv_avx512.cpp (Avx512Ops<false>: F/BW/VL/DQ) and
// kv_avx512x.cpp (Avx512Ops<true>: + VBMI2, built with it). A record's 16-bit bitmap words are directly k-masks:
// each 16-channel chunk reads exactly popcount(word) values with an expand-load (fp32: vexpandps;
// bf16/fp16 with VBMI2: vpexpandw, then widened) or, without VBMI2, a masked load + register vexpandps;
// all of them fault-suppressing, touching only the kept elements. A record whose total popcount is
// not k takes the scalar, clamped path, so no read ever leaves the record. Scores: per-token partial
// vectors reduced 16 at a time by a permute-add tree; exp is a vector polynomial.
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "../common/exp2_avx512.h"
#include "kv_attend.h"

namespace sparseops::kv {
namespace {

static inline __m512 widen16(DType d, const void* p, __mmask16 ld) {
  if (d == DType::f32) return _mm512_maskz_loadu_ps(ld, p);
  const __m256i h = _mm256_maskz_loadu_epi16(ld, p);
  return d == DType::bf16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
                          : _mm512_cvtph_ps(h);
}

// exp(x) for the softmax: 2^(x log2 e), so that attention and KV share one polynomial.
static inline __m512 exp512(__m512 x) { return exp2_v(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f))); }

// Permute indices of tree16, level by level (g = 8, 4, 2, 1 lanes per token after the level): output
// lane o takes, from vector a (o < 8) or b, group (o % 8) / g of width 2g, first half ("lo") or second.
struct TreeIndex {
  alignas(64) int32_t lo[4][16], hi[4][16];
  TreeIndex() {
    for (int l = 0, g = 8; l < 4; ++l, g /= 2)
      for (int o = 0; o < 16; ++o) {
        lo[l][o] = ((o % 8) / g) * 2 * g + o % g + (o >= 8 ? 16 : 0);
        hi[l][o] = lo[l][o] + g;
      }
  }
};
const TreeIndex kTree;

// 16 vectors of per-token partial sums -> one vector of the 16 token sums: a 4-level permute-add
// tree (45 ops instead of 16 horizontal reductions). Destroys x.
static inline __m512 tree16(__m512* x) {
#pragma GCC unroll 4
  for (int l = 0, m = 16; l < 4; ++l, m /= 2) {
    const __m512i lo = _mm512_load_si512(kTree.lo[l]), hi = _mm512_load_si512(kTree.hi[l]);
#pragma GCC unroll 8
    for (int i = 0; i < m / 2; ++i)
      x[i] = _mm512_add_ps(_mm512_permutex2var_ps(x[2 * i], lo, x[2 * i + 1]),
                           _mm512_permutex2var_ps(x[2 * i], hi, x[2 * i + 1]));
  }
  return x[0];
}

template <bool kVbmi2>
struct Avx512Ops : FP32Keys<Avx512Ops<kVbmi2>> {
  // bf16 with VBMI2 keeps rows in "pair order": in each full 32-channel block the 16 even channels come
  // first, then the 16 odd ones. One vpexpandw places 32 channels at 16 bits, and the two fp32 halves
  // are a shift and an and (no shuffle): the expand was bound by the shuffle port before (measured).
  // Trailing 16 channels (D % 32 == 16) stay in natural order.
  static constexpr bool pair_order(DType d) { return kVbmi2 && d == DType::bf16; }
  static inline void to_pair_order(float* x, int D) {
    float t[32];
    for (int c = 0; c + 32 <= D; c += 32) {
      for (int i = 0; i < 16; ++i) { t[i] = x[c + 2 * i]; t[16 + i] = x[c + 2 * i + 1]; }
      std::memcpy(x + c, t, sizeof t);
    }
  }
  static inline void finish(DType d, float* x, int D) {
    if (!pair_order(d)) return;
    float t[32];
    for (int c = 0; c + 32 <= D; c += 32) {
      for (int i = 0; i < 16; ++i) { t[2 * i] = x[c + i]; t[2 * i + 1] = x[c + 16 + i]; }
      std::memcpy(x + c, t, sizeof t);
    }
  }
  static inline void store_pairs(__m512i e, float* out) {  // 32 bf16 lanes -> even, odd fp32 halves
    _mm512_storeu_ps(out, _mm512_castsi512_ps(_mm512_slli_epi32(e, 16)));
    _mm512_storeu_ps(out + 16, _mm512_castsi512_ps(_mm512_and_si512(e, _mm512_set1_epi32(int(0xffff0000u)))));
  }
  // A record whose total popcount is not k (malformed) takes the scalar path, clamped at k values;
  // otherwise each chunk reads exactly its popcount, so no read leaves the record either way.
  static inline void expand(DType d, const uint8_t* bits, const void* vals, int D, int k, float* out) {
    if (record_popcount(bits, D / 8) != k) {
      ScalarOps::expand(d, bits, vals, D, k, out);
      if (pair_order(d)) to_pair_order(out, D);
      return;
    }
    const char* v = static_cast<const char*>(vals);
    const int es = static_cast<int>(dtype_size(d));
    int c = 0;
    if constexpr (kVbmi2) {  // vpexpandw exists only in the avx512x build of this header
      if (pair_order(d)) {
        for (; c + 32 <= D; c += 32) {
          uint32_t w;
          std::memcpy(&w, bits + c / 8, 4);
          store_pairs(_mm512_maskz_expandloadu_epi16(w, v), out + c);
          v += __builtin_popcount(w) * 2;
        }
      }
    }
    for (; c < D; c += 16) {
      uint16_t w;
      std::memcpy(&w, bits + c / 8, 2);
      const unsigned cnt = __builtin_popcount(w | 0x10000u) - 1;
      __m512 x;
      // expand-loads touch exactly popcount(w) elements (fault-suppressing like masked loads)
      if (d == DType::f32) {
        x = _mm512_maskz_expandloadu_ps(w, v);
      } else {
        if constexpr (kVbmi2) {
          const __m256i h = _mm256_maskz_expandloadu_epi16(w, v);
          x = d == DType::bf16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
                               : _mm512_cvtph_ps(h);
        } else {
          x = _mm512_maskz_expand_ps(w, widen16(d, v, static_cast<__mmask16>((1u << cnt) - 1)));
        }
      }
      _mm512_storeu_ps(out + c, x);
      v += cnt * es;
    }
  }
  static inline void load(DType d, const void* row, int D, float* out) {
    const char* p = static_cast<const char*>(row);
    const int es = static_cast<int>(dtype_size(d));
    int c = 0;
    if (pair_order(d))
      for (; c + 32 <= D; c += 32) store_pairs(_mm512_loadu_si512(p + c * es), out + c);
    for (; c < D; c += 16) _mm512_storeu_ps(out + c, widen16(d, p + c * es, 0xffff));
  }
  // Per row: 16 accumulators, one per token of the block, each chunk of q loaded once and FMA'd with
  // that chunk of all 16 K rows; then tree16 folds them into 16 scores. Rows j >= n of blk hold finite
  // leftovers (the buffer starts zeroed) and only ever reach lane j, which the caller ignores.
  static inline void scores(const float* qf, int64_t R, const float* blk, int, int D, float, float* s) {
    for (int64_t r = 0; r < R; ++r) {
      const float* q = qf + r * D;
      __m512 x[16];
#pragma GCC unroll 16
      for (int j = 0; j < 16; ++j) x[j] = _mm512_setzero_ps();
      for (int c = 0; c < D; c += 16) {
        const __m512 qc = _mm512_loadu_ps(q + c);
#pragma GCC unroll 16
        for (int j = 0; j < 16; ++j) x[j] = _mm512_fmadd_ps(qc, _mm512_loadu_ps(blk + j * D + c), x[j]);
      }
      _mm512_storeu_ps(s + r * kBlock, tree16(x));
    }
  }
  static inline void accum(float* acc, const float* p, const float* blk, int n, int D) {
    int c = 0;
    for (; c + 64 <= D; c += 64) {
      __m512 a0 = _mm512_loadu_ps(acc + c), a1 = _mm512_loadu_ps(acc + c + 16);
      __m512 a2 = _mm512_loadu_ps(acc + c + 32), a3 = _mm512_loadu_ps(acc + c + 48);
      for (int j = 0; j < n; ++j) {
        const __m512 pj = _mm512_set1_ps(p[j]);
        const float* b = blk + j * D + c;
        a0 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(b), a0);
        a1 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(b + 16), a1);
        a2 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(b + 32), a2);
        a3 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(b + 48), a3);
      }
      _mm512_storeu_ps(acc + c, a0); _mm512_storeu_ps(acc + c + 16, a1);
      _mm512_storeu_ps(acc + c + 32, a2); _mm512_storeu_ps(acc + c + 48, a3);
    }
    for (; c < D; c += 16) {
      __m512 a0 = _mm512_loadu_ps(acc + c);
      for (int j = 0; j < n; ++j) a0 = _mm512_fmadd_ps(_mm512_set1_ps(p[j]), _mm512_loadu_ps(blk + j * D + c), a0);
      _mm512_storeu_ps(acc + c, a0);
    }
  }
  static inline void scal(float* acc, float alpha, int D) {
    const __m512 a = _mm512_set1_ps(alpha);
    for (int c = 0; c < D; c += 16) _mm512_storeu_ps(acc + c, _mm512_mul_ps(a, _mm512_loadu_ps(acc + c)));
  }
  static inline float exp_sum(float* s, float m, int n) {
    static_assert(kBlock == 16, "one vector per block");
    const __mmask16 mk = static_cast<__mmask16>((1u << n) - 1);
    const __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, s), _mm512_set1_ps(m)));
    _mm512_mask_storeu_ps(s, mk, e);
    return _mm512_mask_reduce_add_ps(mk, e);
  }
};

}  // namespace
}  // namespace sparseops::kv
