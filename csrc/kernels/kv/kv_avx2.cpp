// AVX2 variant of bitmap-KV decode attention and compression. AVX2 has no expand instruction: each bitmap byte
// picks a table shuffle that moves its popcount(byte) values to their channels (fp32: vpermps + blendv; bf16: one
// vpshufb that also widens; fp16: vpshufb + vcvtph2ps). Records whose popcount is not k take the scalar, clamped
// path.
#include <immintrin.h>

#include <cstring>

#include "../common/avx2_popcnt.h"
#include "../common/exp2_avx2.h"
#include "../common/perm_place.h"
#include "../common/shuffle_place.h"
#include "kv_attend.h"
#include "kv_select.h"

namespace sparseops::kv {
namespace {

struct ExpandTable {
  alignas(16) uint8_t shuf16[256][16];  // 16-bit lanes: bytes of value number (set bits below i), 0x80 = zero
  ExpandTable() {
    for (int b = 0; b < 256; ++b)
      for (int i = 0, n = 0; i < 8; ++i) {
        const bool set = (b >> i) & 1;
        shuf16[b][2 * i] = set ? static_cast<uint8_t>(2 * n) : 0x80;
        shuf16[b][2 * i + 1] = set ? static_cast<uint8_t>(2 * n + 1) : 0x80;
        n += set;
      }
  }
};
const ExpandTable kTable;
const PermPlace& kPerm = perm_place();  // bound at load time: no init guard in the hot loop
const Bf16Place& kPlace = bf16_place();

static inline __m256 widen8(DType d, const char* p) {
  if (d == DType::f32) return _mm256_loadu_ps(reinterpret_cast<const float*>(p));
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return d == DType::bf16 ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)) : _mm256_cvtph_ps(h);
}

static inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// exp(x) for the softmax: 2^(x log2 e), so that attention and KV share one polynomial.
static inline __m256 exp256(__m256 x) { return exp2_v(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f))); }

// One 8-channel group: mask byte b (given as b * 32, a table row offset) whose values start at value `off`.
template <DType Dt>
static inline __m256 place8(const char* v, unsigned b32, int off) {
  if constexpr (Dt == DType::f32) {
    const char* row = reinterpret_cast<const char*>(kPerm.perm[0]) + b32;
    const __m256i idx = _mm256_load_si256(reinterpret_cast<const __m256i*>(row));
    const __m256 x = _mm256_permutevar8x32_ps(_mm256_loadu_ps(reinterpret_cast<const float*>(v) + off), idx);
    return _mm256_blendv_ps(x, _mm256_setzero_ps(), _mm256_castsi256_ps(idx));  // pruned lanes: sign bit set
  } else if constexpr (Dt == DType::bf16) {
    const char* row = reinterpret_cast<const char*>(kPlace.t[0][0]) + b32;
    const __m256i src = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v + 2 * off)));
    return _mm256_castsi256_ps(_mm256_shuffle_epi8(src, _mm256_load_si256(reinterpret_cast<const __m256i*>(row))));
  } else {
    const char* sh = reinterpret_cast<const char*>(kTable.shuf16[0]) + b32 / 2;
    const __m128i h = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v + 2 * off)),
                                       _mm_load_si128(reinterpret_cast<const __m128i*>(sh)));
    return _mm256_cvtph_ps(h);
  }
}

// Records with exactly k >= 8 set bits. Per 16 bitmap bytes, SIMD computes every byte's table row offset and the
// offset of its first value in the record (prefix popcounts), so placing a byte's 8 channels is two small loads,
// one value load and one table shuffle, with no serial dependence between bytes. The value load takes 8 values,
// so it can reach up to 7 values past the record: attend_partial gives the storage's last record a padded copy
// (kv_attend.h).
template <DType Dt>
static inline void expand_t(const uint8_t* bits, const char* v, int D, float* out) {
  const int nb = D / 8;
  alignas(32) uint16_t row[16];
  alignas(16) uint8_t off[16];
  int base = 0;
  for (int i = 0; i < nb; i += 16) {
    const int nw = std::min(16, nb - i);
    __m128i b;
    if (nw == 16) {
      b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(bits + i));
    } else {
      alignas(16) uint8_t tmp[16] = {};
      std::memcpy(tmp, bits + i, nw);
      b = _mm_load_si128(reinterpret_cast<const __m128i*>(tmp));
    }
    const __m128i cnt = popcnt_epi8(b);
    __m128i incl = _mm_add_epi8(cnt, _mm_slli_si128(cnt, 1));
    incl = _mm_add_epi8(incl, _mm_slli_si128(incl, 2));
    incl = _mm_add_epi8(incl, _mm_slli_si128(incl, 4));
    incl = _mm_add_epi8(incl, _mm_slli_si128(incl, 8));  // <= 128: fits a byte
    _mm_store_si128(reinterpret_cast<__m128i*>(off), _mm_sub_epi8(incl, cnt));
    _mm256_store_si256(reinterpret_cast<__m256i*>(row), _mm256_slli_epi16(_mm256_cvtepu8_epi16(b), 5));
    float* o = out + 8 * i;
    if (nw == 16) {
#pragma GCC unroll 16
      for (int j = 0; j < 16; ++j) _mm256_storeu_ps(o + 8 * j, place8<Dt>(v, row[j], base + off[j]));
    } else {
      for (int j = 0; j < nw; ++j) _mm256_storeu_ps(o + 8 * j, place8<Dt>(v, row[j], base + off[j]));
    }
    base += _mm_extract_epi8(incl, 15);
  }
}

struct Avx2Ops : FP32Keys<Avx2Ops> {
  static inline void expand(DType d, const uint8_t* bits, const void* vals, int D, int k, float* out) {
    if (k < 8 || D > kPadD || record_popcount(bits, D / 8) != k) return ScalarOps::expand(d, bits, vals, D, k, out);
    const char* v = static_cast<const char*>(vals);
    switch (d) {
      case DType::f32: return expand_t<DType::f32>(bits, v, D, out);
      case DType::bf16: return expand_t<DType::bf16>(bits, v, D, out);
      case DType::f16: return expand_t<DType::f16>(bits, v, D, out);
    }
  }
  static inline void load(DType d, const void* row, int D, float* out) {
    const char* p = static_cast<const char*>(row);
    const int es = static_cast<int>(dtype_size(d));
    for (int c = 0; c < D; c += 8) _mm256_storeu_ps(out + c, widen8(d, p + c * es));
  }
  // Register tiles of RB query rows x 2 tokens: per 8 channels, 2 K loads and RB q loads feed 2 * RB FMAs (one
  // load per FMA was the bound before). Token pairs run to 16 (rows n..15 of blk hold finite leftovers whose
  // scores the caller ignores).
  template <int RB>
  static inline void scores_tile(const float* q, int D, const float* blk, float* s) {
    for (int j = 0; j < kBlock; j += 2) {
      const float* k0 = blk + j * D;
      const float* k1 = k0 + D;
      __m256 a0[RB], a1[RB];
#pragma GCC unroll 4
      for (int r = 0; r < RB; ++r) a0[r] = a1[r] = _mm256_setzero_ps();
      for (int c = 0; c < D; c += 8) {
        const __m256 x0 = _mm256_loadu_ps(k0 + c), x1 = _mm256_loadu_ps(k1 + c);
#pragma GCC unroll 4
        for (int r = 0; r < RB; ++r) {
          __m256 qc = _mm256_loadu_ps(q + r * D + c);
          __asm__("" : "+x"(qc));  // one load for both tokens, not one folded into each FMA
          a0[r] = _mm256_fmadd_ps(qc, x0, a0[r]);
          a1[r] = _mm256_fmadd_ps(qc, x1, a1[r]);
        }
      }
#pragma GCC unroll 4
      for (int r = 0; r < RB; ++r) {
        s[r * kBlock + j] = hsum8(a0[r]);
        s[r * kBlock + j + 1] = hsum8(a1[r]);
      }
    }
  }
  static inline void scores(const float* qf, int64_t R, const float* blk, int, int D, float, float* s) {
    int64_t r = 0;
    for (; r + 4 <= R; r += 4) scores_tile<4>(qf + r * D, D, blk, s + r * kBlock);
    for (; r < R; ++r) scores_tile<1>(qf + r * D, D, blk, s + r * kBlock);
  }
  // RB rows x 16 channels: per token, 2 V loads and RB broadcasts of p feed 2 * RB FMAs.
  template <int RB>
  static inline void accum_tile(float* part, int64_t P, const float* s, const float* blk, int n, int D) {
    for (int c = 0; c < D; c += 16) {
      __m256 a0[RB], a1[RB];
#pragma GCC unroll 4
      for (int r = 0; r < RB; ++r) {
        a0[r] = _mm256_loadu_ps(part + r * P + 2 + c);
        a1[r] = _mm256_loadu_ps(part + r * P + 2 + c + 8);
      }
      for (int j = 0; j < n; ++j) {
        const __m256 v0 = _mm256_loadu_ps(blk + j * D + c), v1 = _mm256_loadu_ps(blk + j * D + c + 8);
#pragma GCC unroll 4
        for (int r = 0; r < RB; ++r) {
          const __m256 p = _mm256_broadcast_ss(s + r * kBlock + j);
          a0[r] = _mm256_fmadd_ps(p, v0, a0[r]);
          a1[r] = _mm256_fmadd_ps(p, v1, a1[r]);
        }
      }
#pragma GCC unroll 4
      for (int r = 0; r < RB; ++r) {
        _mm256_storeu_ps(part + r * P + 2 + c, a0[r]);
        _mm256_storeu_ps(part + r * P + 2 + c + 8, a1[r]);
      }
    }
  }
  static inline void accum_rows(float* part, int64_t P, int64_t R, const float* s, const float* blk, int n, int D) {
    int64_t r = 0;
    for (; r + 4 <= R; r += 4) accum_tile<4>(part + r * P, P, s + r * kBlock, blk, n, D);
    for (; r < R; ++r) accum_tile<1>(part + r * P, P, s + r * kBlock, blk, n, D);
  }
  static inline void scal(float* acc, float alpha, int D) {
    const __m256 a = _mm256_set1_ps(alpha);
    for (int c = 0; c < D; c += 8) _mm256_storeu_ps(acc + c, _mm256_mul_ps(a, _mm256_loadu_ps(acc + c)));
  }
  static inline float exp_sum(float* s, float m, int n) {
    static_assert(kBlock == 16, "two vectors per block");
    const __m256 mv = _mm256_set1_ps(m);
    __m256 sum = _mm256_setzero_ps();
    for (int j = 0; j < n; j += 8) {
      const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
      const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32(n - j), lane);  // lanes j + i < n
      const __m256 e = _mm256_and_ps(exp256(_mm256_sub_ps(_mm256_maskload_ps(s + j, live), mv)),
                                     _mm256_castsi256_ps(live));
      _mm256_maskstore_ps(s + j, live, e);
      sum = _mm256_add_ps(sum, e);
    }
    return hsum8(sum);
  }
};

}  // namespace

void partial_avx2(const AttnArgs& a, int64_t b, int64_t h, int64_t t0, int64_t t1, float* part) {
  attend_partial<Avx2Ops>(a, b, h, t0, t1, part);
}

namespace {

// ---- compression -----------------------------------------------------------------------------------------------
// Keys (magnitude bits, 8 channels per 32-bit vector) stay in registers' worth of stack; the k-th largest key is
// found by a 15/31-step bitwise search counting keys >= candidate with compares (no sort, no branches on data);
// values are placed 8 channels at a time by a LUT lane permutation (fp32: vpermps, 16-bit: pshufb).
struct CompressTable {
  alignas(32) int32_t perm[256][8];    // output lane i <- lane of the i-th set bit of the byte
  alignas(16) uint8_t shuf16[256][16];  // the same for 8 16-bit lanes, as a byte shuffle
  CompressTable() {
    for (int b = 0; b < 256; ++b) {
      int n = 0;
      for (int i = 0; i < 8; ++i)
        if ((b >> i) & 1) {
          perm[b][n] = i;
          shuf16[b][2 * n] = static_cast<uint8_t>(2 * i);
          shuf16[b][2 * n + 1] = static_cast<uint8_t>(2 * i + 1);
          ++n;
        }
      for (int i = n; i < 8; ++i) { perm[b][i] = 0; shuf16[b][2 * i] = shuf16[b][2 * i + 1] = 0x80; }
    }
  }
};
const CompressTable kCompress;

static inline int hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

}  // namespace

void compress_avx2(DType dtype, int D, int k, const void* x, uint8_t* bits, void* vals, int64_t r_begin,
                   int64_t r_end) {
  if (D > 1024) return compress(dtype, D, k, x, bits, vals, r_begin, r_end);
  const int es = static_cast<int>(dtype_size(dtype)), nb = D / 8, nv = D / 8;
  const bool f32 = dtype == DType::f32;
  const __m256i magmask = _mm256_set1_epi32(f32 ? 0x7fffffff : 0x7fff);
  __m256i key[128];
  uint64_t gt[16], eq[16];
  alignas(32) char tmp[1024 * 4 + 32];
  for (int64_t r = r_begin; r < r_end; ++r) {
    const char* xr = static_cast<const char*>(x) + r * D * es;
    uint8_t* br = bits + r * nb;
    char* vr = static_cast<char*>(vals) + r * k * es;
    if (k == D) {
      std::memset(br, 0xff, nb);
      std::memcpy(vr, xr, static_cast<size_t>(D) * es);
      continue;
    }
    for (int i = 0; i < nv; ++i) {
      const __m256i raw = f32 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr + 32 * i))
                              : _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xr + 16 * i)));
      key[i] = _mm256_and_si256(raw, magmask);
    }
    // keys and candidates are < 2^31, so the signed compare key > c - 1 is key >= c
    const uint32_t t = kth_largest_key(f32 ? 31 : 15, k, [&](uint32_t c) {
      const __m256i cm1 = _mm256_set1_epi32(static_cast<int>(c - 1));
      __m256i acc = _mm256_setzero_si256();
      for (int i = 0; i < nv; ++i) acc = _mm256_sub_epi32(acc, _mm256_cmpgt_epi32(key[i], cm1));
      return hsum_epi32(acc);
    });
    const __m256i tv = _mm256_set1_epi32(static_cast<int>(t));
    std::memset(gt, 0, sizeof(uint64_t) * ((nv + 7) / 8));
    std::memset(eq, 0, sizeof(uint64_t) * ((nv + 7) / 8));
    for (int i = 0; i < nv; ++i) {
      const uint64_t g = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(key[i], tv))));
      const uint64_t e = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(key[i], tv))));
      gt[i / 8] |= g << (8 * (i % 8));
      eq[i / 8] |= e << (8 * (i % 8));
    }
    select_bits(gt, eq, (nv + 7) / 8, k, D, br);
    int off = 0;  // values placed so far; each 8-channel group stores a full vector at `off` (tmp has slack)
    for (int i = 0; i < nv; ++i) {
      const uint8_t b = br[i];
      if (f32) {
        const __m256 v = _mm256_loadu_ps(reinterpret_cast<const float*>(xr) + 8 * i);
        const __m256i p = _mm256_load_si256(reinterpret_cast<const __m256i*>(kCompress.perm[b]));
        _mm256_storeu_ps(reinterpret_cast<float*>(tmp) + off, _mm256_permutevar8x32_ps(v, p));
      } else {
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(xr + 16 * i));
        const __m128i p = _mm_load_si128(reinterpret_cast<const __m128i*>(kCompress.shuf16[b]));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(tmp + 2 * off), _mm_shuffle_epi8(v, p));
      }
      off += __builtin_popcount(b);
    }
    std::memcpy(vr, tmp, static_cast<size_t>(k) * es);
  }
}

}  // namespace sparseops::kv
