// AVX2 variant of bitmap-KV decode attention and compression. AVX2 has no expand instruction: a record's values
// are first widened to fp32 vectors, then each bitmap byte picks a lane permutation from a 256-entry table
// (vpermps) that moves the next popcount(byte) values to their channels; an and zeroes the pruned lanes.
// Records whose popcount is not k take the scalar, clamped path.
#include <immintrin.h>

#include <cstring>

#include "kv_attend.h"
#include "kv_select.h"

namespace sparseops::kv {
namespace {

struct ExpandTable {
  alignas(32) int32_t perm[256][8];  // lane i takes value number (set bits of the byte below i)
  alignas(32) int32_t keep[256][8];  // -1 where bit i is set
  alignas(16) uint8_t shuf16[256][16];  // 16-bit lanes: bytes of value number (set bits below i), 0x80 = zero
  ExpandTable() {
    for (int b = 0; b < 256; ++b)
      for (int i = 0, n = 0; i < 8; ++i) {
        const bool set = (b >> i) & 1;
        perm[b][i] = set ? n : 0;
        keep[b][i] = set ? -1 : 0;
        shuf16[b][2 * i] = set ? static_cast<uint8_t>(2 * n) : 0x80;
        shuf16[b][2 * i + 1] = set ? static_cast<uint8_t>(2 * n + 1) : 0x80;
        n += set;
      }
  }
};
const ExpandTable kTable;

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

// exp(x) for x <= 0 (and -inf): 2^n * 2^f with |f| <= 1/2, degree-6 polynomial (rel. error ~2e-7); below
// -87.3 (where 2^n leaves the normal range) the result is 0.
static inline __m256 exp256(__m256 x) {
  const __m256 live = _mm256_cmp_ps(x, _mm256_set1_ps(-87.3f), _CMP_GE_OQ);
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
  const __m256 t = _mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f));
  const __m256 n = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_mul_ps(_mm256_sub_ps(t, n), _mm256_set1_ps(0.693147180559945309f));
  __m256 p = _mm256_set1_ps(1.0f / 720);
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), live);
}

struct Avx2Ops : FP32Keys<Avx2Ops> {
  // Each bitmap byte takes the next popcount(byte) values straight from the record: 8 values loaded at the
  // running offset, moved to their channels by a table shuffle (fp32: vpermps + and; 16-bit: pshufb, whose 0x80
  // entries zero the pruned lanes) and widened. Near the end of the record the load is anchored at the last 8
  // values instead and the shuffle indices shifted, so nothing outside the record's k values is read. (Widening
  // all values into a buffer first and reloading it at unaligned offsets stalled on store forwarding, and a
  // per-record memcpy of the tail cost ~20% of the kernel: measured.)
  static inline void expand(DType d, const uint8_t* bits, const void* vals, int D, int k, float* out) {
    if (record_popcount(bits, D / 8) != k || k < 8) return ScalarOps::expand(d, bits, vals, D, k, out);
    const char* v = static_cast<const char*>(vals);
    const int es = static_cast<int>(dtype_size(d));
    int off = 0;
    for (int c = 0; c < D / 8; ++c) {
      const uint8_t b = bits[c];
      const int base = off + 8 <= k ? off : k - 8, shift = off - base;
      const char* src = v + base * es;
      __m256 x;
      if (d == DType::f32) {
        const __m256i idx = _mm256_add_epi32(_mm256_load_si256(reinterpret_cast<const __m256i*>(kTable.perm[b])),
                                             _mm256_set1_epi32(shift));
        x = _mm256_permutevar8x32_ps(_mm256_loadu_ps(reinterpret_cast<const float*>(src)), idx);
        x = _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(kTable.keep[b]))));
      } else {  // 0x80 + 2 * shift keeps bit 7 set: pruned lanes stay zero
        const __m128i sh = _mm_add_epi8(_mm_load_si128(reinterpret_cast<const __m128i*>(kTable.shuf16[b])),
                                        _mm_set1_epi8(static_cast<char>(2 * shift)));
        const __m128i h = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)), sh);
        x = d == DType::bf16 ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
                             : _mm256_cvtph_ps(h);
      }
      _mm256_storeu_ps(out + 8 * c, x);
      off += __builtin_popcount(b);
    }
  }
  static inline void load(DType d, const void* row, int D, float* out) {
    const char* p = static_cast<const char*>(row);
    const int es = static_cast<int>(dtype_size(d));
    for (int c = 0; c < D; c += 8) _mm256_storeu_ps(out + c, widen8(d, p + c * es));
  }
  // Per row, 8 tokens at a time: 8 accumulators share each loaded q chunk, then a hadd tree folds them into 8
  // scores in one vector (instead of 8 horizontal sums). Rows j >= n of blk hold finite leftovers (zeroed buffer),
  // whose lanes the caller ignores.
  static inline void scores(const float* qf, int64_t R, const float* blk, int n, int D, float, float* s) {
    for (int64_t r = 0; r < R; ++r) {
      const float* q = qf + r * D;
      for (int j0 = 0; j0 < n; j0 += 8) {
        const float* b = blk + j0 * D;
        __m256 a[8];
#pragma GCC unroll 8
        for (int j = 0; j < 8; ++j) a[j] = _mm256_setzero_ps();
        for (int c = 0; c < D; c += 8) {
          const __m256 qc = _mm256_loadu_ps(q + c);
#pragma GCC unroll 8
          for (int j = 0; j < 8; ++j) a[j] = _mm256_fmadd_ps(qc, _mm256_loadu_ps(b + j * D + c), a[j]);
        }
        const __m256 h0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
        const __m256 h1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
        // h0 = [t0..t3 low halves | t0..t3 high halves], h1 likewise for t4..t7
        _mm256_storeu_ps(s + r * kBlock + j0, _mm256_add_ps(_mm256_permute2f128_ps(h0, h1, 0x20),
                                                            _mm256_permute2f128_ps(h0, h1, 0x31)));
      }
    }
  }
  static inline void accum(float* acc, const float* p, const float* blk, int n, int D) {
    int c = 0;
    for (; c + 32 <= D; c += 32) {
      __m256 a0 = _mm256_loadu_ps(acc + c), a1 = _mm256_loadu_ps(acc + c + 8);
      __m256 a2 = _mm256_loadu_ps(acc + c + 16), a3 = _mm256_loadu_ps(acc + c + 24);
      for (int j = 0; j < n; ++j) {
        const __m256 pj = _mm256_broadcast_ss(p + j);
        const float* b = blk + j * D + c;
        a0 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(b), a0);
        a1 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(b + 8), a1);
        a2 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(b + 16), a2);
        a3 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(b + 24), a3);
      }
      _mm256_storeu_ps(acc + c, a0); _mm256_storeu_ps(acc + c + 8, a1);
      _mm256_storeu_ps(acc + c + 16, a2); _mm256_storeu_ps(acc + c + 24, a3);
    }
    for (; c < D; c += 16) {
      __m256 a0 = _mm256_loadu_ps(acc + c), a1 = _mm256_loadu_ps(acc + c + 8);
      for (int j = 0; j < n; ++j) {
        const __m256 pj = _mm256_broadcast_ss(p + j);
        a0 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(blk + j * D + c), a0);
        a1 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(blk + j * D + c + 8), a1);
      }
      _mm256_storeu_ps(acc + c, a0);
      _mm256_storeu_ps(acc + c + 8, a1);
    }
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
