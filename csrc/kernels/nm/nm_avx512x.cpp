// AVX-512 N:M, the path that needs AVX512-BF16 + VBMI2 (built with them; called only when
// avx512_ext() says the CPU has them).
// GCC 12 warns about the deliberately undefined source operand inside its own AVX-512 intrinsics.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <cstdlib>

#include "nm_avx512_dec.h"
#include "nm_place_avx512x.h"

namespace sparseops::nm {

// fp32 at M == 1 (Place32f patterns) on CPUs with the avx512x extensions: 32 columns per step, one row at a time,
// four accumulator chains. The chunks past the last full 32 take the expanding 16-column decoder.
int64_t linear_m1_f32_avx512x(const LinearArgs& a, int64_t o_begin, int64_t o_end) {
  const x86::Geo g(a);
  const int c = 8 * g.n / g.m;
  const Place32f pl(c);
  const __mmask16 ld = static_cast<__mmask16>((1u << (4 * c)) - 1u);
  const int64_t n32 = a.K / 32, vstep = 4 * c;  // values per 32 columns
  const float* x = static_cast<const float*>(a.x);
  const Avx512Dec::Slice sl(g);
  for (int64_t o = o_begin; o < o_end; ++o) {
    const uint8_t* mr = a.mask + o * g.rb;
    const float* vr = static_cast<const float*>(a.values) + o * g.kept;
    int bad = bytes_off(mr, n32 * 4, pl.count) != 0;
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    int64_t s = 0;
    for (; s + 2 <= n32; s += 2) {
      __builtin_prefetch(vr + s * vstep + 2048);  // 8 KiB ahead
      __builtin_prefetch(vr + s * vstep + 2048 + 16);
      for (int u = 0; u < 2; ++u) {
        const __m512 v = _mm512_maskz_loadu_ps(ld, vr + (s + u) * vstep);
        const uint8_t* m4 = mr + 4 * (s + u);
        acc[2 * u] = _mm512_fmadd_ps(pl.place(m4, v, 0), _mm512_loadu_ps(x + (s + u) * 32), acc[2 * u]);
        acc[2 * u + 1] = _mm512_fmadd_ps(pl.place(m4, v, 1), _mm512_loadu_ps(x + (s + u) * 32 + 16), acc[2 * u + 1]);
      }
    }
    for (int64_t k = 2 * s; k < g.nfull; ++k) {  // 16-column chunks left
      Avx512Dec::Chunk w;
      bad |= Avx512Dec::decode<DType::f32>(sl, reinterpret_cast<const char*>(vr), mr, k, w.v);
      acc[0] = _mm512_fmadd_ps((__m512)w.v[0], _mm512_loadu_ps(x + k * 16), acc[0]);
    }
    if (g.tw) {
      alignas(64) float t[16], xt[16] = {};
      bad |= !x86::decode_tail(DType::f32, g, a.values, a.mask, o, t);
      std::memcpy(xt, x + g.nfull * 16, static_cast<size_t>(g.tw) * 4);
      acc[1] = _mm512_fmadd_ps(_mm512_load_ps(t), _mm512_load_ps(xt), acc[1]);
    }
    if (bad) return o;
    float y = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
    if (a.bias) y += static_cast<const float*>(a.bias)[o];
    static_cast<float*>(a.y)[o] = y;
  }
  return -1;
}

// bf16 at M == 1 with AVX512-BF16 + VBMI2: vdpbf16ps multiplies the placed bf16 weight with the bf16 x
// directly (exact products, fp32 sums): half the instructions of widening to fp32. Where Place64 fits, 64
// columns at a time; else 32-column chunks whose 32 mask bits are the k-mask of vpexpandw (register form, after
// a masked load of exactly 32n/m values). Columns past the last full 32-chunk take the 16-column path.
int64_t linear_m1_bf16_avx512x(const LinearArgs& a, int64_t o_begin, int64_t o_end) {
  const x86::Geo g(a);
  const int64_t n32 = a.K / 32, cnt32 = 2 * g.cnt;
  const __mmask32 ld = static_cast<__mmask32>((uint64_t(1) << cnt32) - 1);
  const int64_t k32 = n32 * 32;              // columns done by the dp loop
  const bool mid = (a.K - k32) >= 16;        // one 16-column chunk after them
  const bool placing = Place64::fits(g.n, g.m);
  const Place64 pl(placing ? 8 * g.n / g.m : 0);
  const uint16_t* x = static_cast<const uint16_t*>(a.x);
  alignas(64) float xt[32] = {};             // fp32 x of columns [k32, K)
  for (int64_t k = k32; k < a.K; ++k) xt[k - k32] = bf16_to_f32(x[k]);
  const Avx512Dec::Slice sl(g);
  // One row at a time: values and mask each stream sequentially across rows (see run_m1).
  for (int64_t o = o_begin; o < o_end; ++o) {
    const uint8_t* mr = a.mask + o * g.rb;
    const uint16_t* vr = static_cast<const uint16_t*>(a.values) + o * g.kept;
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    int bad = 0;
    auto step = [&](int64_t cc, int h) __attribute__((always_inline)) {
      uint32_t bits;
      std::memcpy(&bits, mr + 4 * cc, 4);
      const __m512i v = _mm512_maskz_loadu_epi16(ld, vr + cc * cnt32);
      const __m512i w = _mm512_maskz_expand_epi16(bits, v);
      acc[h] = _mm512_dpbf16_ps(acc[h], (__m512bh)w, (__m512bh)_mm512_loadu_si512(x + cc * 32));
      // Bit 32 forces a 64-bit popcnt on a fresh register (see Avx512Dec::decode).
      bad |= static_cast<int>(__builtin_popcountll(bits | (uint64_t(1) << 32)) ^ (cnt32 + 1));
    };
    auto step64 = [&](int64_t cc, int h) __attribute__((always_inline)) {  // chunks cc, cc + 1
      __m512i lo, hi;
      pl.place(mr + 4 * cc, _mm512_maskz_loadu_epi16(pl.ld, vr + cc * cnt32), lo, hi);
      acc[h] = _mm512_dpbf16_ps(acc[h], (__m512bh)lo, (__m512bh)_mm512_loadu_si512(x + cc * 32));
      acc[h + 1] = _mm512_dpbf16_ps(acc[h + 1], (__m512bh)hi, (__m512bh)_mm512_loadu_si512(x + cc * 32 + 32));
    };
    if (placing) bad |= bytes_off(mr, n32 / 4 * 16, pl.count) != 0;  // the bytes step64 reads
    int64_t c = 0;
    for (; c + 4 <= n32; c += 4) {
      __builtin_prefetch(vr + (c + 128) * cnt32);
      __builtin_prefetch(vr + (c + 128) * cnt32 + 32);
      if ((c & 15) == 0) __builtin_prefetch(mr + 4 * (c + 128));
      if (placing) {
        step64(c, 0);
        step64(c + 2, 2);
      } else {
        step(c, 0);
        step(c + 1, 1);
        step(c + 2, 2);
        step(c + 3, 3);
      }
    }
    for (; c < n32; ++c) step(c, 0);
    __m512 tail = _mm512_setzero_ps();
    if (mid) {
      Avx512Dec::Chunk w;
      bad |= Avx512Dec::decode<DType::bf16>(sl, reinterpret_cast<const char*>(vr), mr, 2 * n32, w.v);
      tail = _mm512_fmadd_ps((__m512)w.v[0], _mm512_load_ps(xt), tail);
    }
    if (g.tw) {
      alignas(64) float t[16];
      bad |= !x86::decode_tail(DType::bf16, g, a.values, a.mask, o, t);
      tail = _mm512_fmadd_ps(_mm512_load_ps(t), _mm512_load_ps(xt + (mid ? 16 : 0)), tail);
    }
    if (bad) return o;
    float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]),
                                                               _mm512_add_ps(acc[2], acc[3])), tail));
    if (a.bias) s += bf16_to_f32(static_cast<const uint16_t*>(a.bias)[o]);
    static_cast<uint16_t*>(a.y)[o] = f32_to_bf16(s);
  }
  return -1;
}

// bf16 at M >= 2 with AVX512-BF16 + VBMI2: dense math on the weight as it is decoded. Per 32-column chunk,
// R = 4 rows are expanded to bf16 in registers (masked load of exactly 32n/m values + vpexpandw) and
// multiplied with C = 6 token rows of x by vdpbf16ps into R x C fp32 accumulators (24 of the 32 zmm),
// which are reduced once at the end of the row. This does the dense FLOPs but at the bf16 dot-product
// rate (twice fp32 FMA), so it keeps up with oneDNN's bf16 GEMM while reading the compressed weight;
// zeros times NaN/Inf give NaN exactly as dense math does. Columns past the last full 32-chunk are
// decoded once per row block (16-column decoder + scalar tail) into one zero-padded bf16 vector.
namespace {

// The columns past the last full 32-chunk of row o (a 16-column chunk and/or a partial one) as 16-bit values in
// t[0, K - 32 * (K / 32)), zero padded to 32. The fp32 lanes were widened from 16-bit values, so narrowing them
// back is exact.
template <DType D>
static void tail16(const LinearArgs& a, const x86::Geo& g, const Avx512Dec::Slice& sl, int64_t o, uint16_t* t,
                   int& bad) {
  const int64_t n32 = a.K / 32;
  const bool mid = (a.K - n32 * 32) >= 16;
  std::memset(t, 0, 64);
  const uint8_t* mr = a.mask + o * g.rb;
  const char* vr = static_cast<const char*>(a.values) + o * g.kept * 2;
  int lane = 0;
  if (mid) {
    Avx512Dec::Chunk w;
    bad |= Avx512Dec::decode<D>(sl, vr, mr, 2 * n32, w.v);
    const __m512 f = (__m512)w.v[0];
    const __m256i h = D == DType::bf16 ? _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(f), 16))
                                       : _mm512_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm256_store_si256(reinterpret_cast<__m256i*>(t), h);
    lane = 16;
  }
  if (g.tw) {
    alignas(64) float f[16];
    bad |= !x86::decode_tail(D, g, a.values, a.mask, o, f);
    for (int j = 0; j < g.tw; ++j)
      t[lane + j] = D == DType::bf16 ? static_cast<uint16_t>(f32_to_bits(f[j]) >> 16) : f32_to_f16(f[j]);
  }
}

static inline float hsum(__m512 v) {  // register-only horizontal sum
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  q = _mm_add_ps(q, _mm_movehl_ps(q, q));
  return _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
}

// One block: rows o0 .. o0+R-1 (R <= 4) times tokens m0 .. m0+C-1 (C <= 6). Always computes a full 4 x 6
// block in 24 named accumulators (GCC kept an array of them in memory, storing it every iteration); the
// missing rows / tokens repeat the first one and are not stored.
int block_dp(const LinearArgs& a, const x86::Geo& g, const Avx512Dec::Slice& sl, int64_t o0, int R, int64_t m0,
             int C, const uint16_t* xp) {
  const int64_t n32 = a.K / 32, cnt32 = 2 * g.cnt, k32 = n32 * 32;
  const __mmask32 ld = static_cast<__mmask32>((uint64_t(1) << cnt32) - 1);
  const uint8_t* mr[4];
  const uint16_t* vr[4];
  for (int r = 0; r < 4; ++r) {
    const int64_t o = o0 + (r < R ? r : 0);
    mr[r] = a.mask + o * g.rb;
    vr[r] = static_cast<const uint16_t*>(a.values) + o * g.kept;
  }
  alignas(64) uint16_t wt[4][32];  // the tail chunk's weights, decoded before the accumulators are live
  int tbad = 0;
  if (k32 < a.K)
    for (int r = 0; r < 4; ++r) tail16<DType::bf16>(a, g, sl, o0 + (r < R ? r : 0), wt[r], tbad);
  uint64_t bad = static_cast<uint64_t>(tbad);
#define SPARSEOPS_Z(r) __m512 a##r##0 = _mm512_setzero_ps(), a##r##1 = a##r##0, a##r##2 = a##r##0, \
                              a##r##3 = a##r##0, a##r##4 = a##r##0, a##r##5 = a##r##0;
  SPARSEOPS_Z(0) SPARSEOPS_Z(1) SPARSEOPS_Z(2) SPARSEOPS_Z(3)
#undef SPARSEOPS_Z
  const int64_t steps = n32 + (k32 < a.K ? 1 : 0);
  for (int64_t cc = 0; cc < steps; ++cc) {
    __m512i w0, w1, w2, w3;
    if (cc < n32) {
      uint32_t b0, b1, b2, b3;
      std::memcpy(&b0, mr[0] + 4 * cc, 4);
      std::memcpy(&b1, mr[1] + 4 * cc, 4);
      std::memcpy(&b2, mr[2] + 4 * cc, 4);
      std::memcpy(&b3, mr[3] + 4 * cc, 4);
      w0 = _mm512_maskz_expand_epi16(b0, _mm512_maskz_loadu_epi16(ld, vr[0] + cc * cnt32));
      w1 = _mm512_maskz_expand_epi16(b1, _mm512_maskz_loadu_epi16(ld, vr[1] + cc * cnt32));
      w2 = _mm512_maskz_expand_epi16(b2, _mm512_maskz_loadu_epi16(ld, vr[2] + cc * cnt32));
      w3 = _mm512_maskz_expand_epi16(b3, _mm512_maskz_loadu_epi16(ld, vr[3] + cc * cnt32));
      // Bit 32 forces a 64-bit popcnt on a fresh register (see Avx512Dec::decode).
      const uint64_t one = uint64_t(1) << 32, want = static_cast<uint64_t>(cnt32 + 1);
      bad |= (__builtin_popcountll(b0 | one) ^ want) | (__builtin_popcountll(b1 | one) ^ want) |
             (__builtin_popcountll(b2 | one) ^ want) | (__builtin_popcountll(b3 | one) ^ want);
    } else {
      w0 = _mm512_load_si512(wt[0]);
      w1 = _mm512_load_si512(wt[1]);
      w2 = _mm512_load_si512(wt[2]);
      w3 = _mm512_load_si512(wt[3]);
    }
#define SPARSEOPS_COL(c)                                                           \
    {                                                                              \
      const __m512bh xv = (__m512bh)_mm512_load_si512(xp + (cc * 6 + c) * 32);      \
      a0##c = _mm512_dpbf16_ps(a0##c, (__m512bh)w0, xv);                           \
      a1##c = _mm512_dpbf16_ps(a1##c, (__m512bh)w1, xv);                           \
      a2##c = _mm512_dpbf16_ps(a2##c, (__m512bh)w2, xv);                           \
      a3##c = _mm512_dpbf16_ps(a3##c, (__m512bh)w3, xv);                           \
    }
    SPARSEOPS_COL(0) SPARSEOPS_COL(1) SPARSEOPS_COL(2) SPARSEOPS_COL(3) SPARSEOPS_COL(4) SPARSEOPS_COL(5)
#undef SPARSEOPS_COL
  }
  if (bad) return 1;
  const __m512 acc[4][6] = {{a00, a01, a02, a03, a04, a05}, {a10, a11, a12, a13, a14, a15},
                            {a20, a21, a22, a23, a24, a25}, {a30, a31, a32, a33, a34, a35}};
  uint16_t* y = static_cast<uint16_t*>(a.y);
  for (int r = 0; r < R; ++r) {
    const float b = a.bias ? bf16_to_f32(static_cast<const uint16_t*>(a.bias)[o0 + r]) : 0.0f;
    for (int c = 0; c < C; ++c) y[(m0 + c) * a.ldy + o0 + r] = f32_to_bf16(hsum(acc[r][c]) + b);
  }
  return 0;
}

}  // namespace

// x of tokens [m0, m0 + 6) packed chunk-major: chunk cc of token c at xp[(cc * 6 + c) * 32], zero padded past K
// and past M. Token rows of x are usually 8 KiB apart (K = 4096), so reading them in place makes six streams that
// share one L1 set; packed, the block's x is one sequential stream.
static void pack_x(const LinearArgs& a, int64_t m0, int C, int64_t steps, uint16_t* xp) {
  std::memset(xp, 0, static_cast<size_t>(steps * 6 * 32) * 2);
  for (int c = 0; c < C; ++c) {
    const uint16_t* src = static_cast<const uint16_t*>(a.x) + (m0 + c) * a.ldx;
    for (int64_t cc = 0; cc < steps; ++cc) {
      const int64_t k0 = cc * 32, n = std::min<int64_t>(32, a.K - k0);
      std::memcpy(xp + (cc * 6 + c) * 32, src + k0, static_cast<size_t>(n) * 2);
    }
  }
}

int64_t linear_bf16_dp_avx512x(const LinearArgs& a, int64_t o_begin, int64_t o_end) {
  const x86::Geo g(a);
  const Avx512Dec::Slice sl(g);
  const int64_t steps = (a.K + 31) / 32, mblocks = (a.M + 5) / 6;
  // All of x, packed once per call (M * K bf16: small next to the weight this call streams).
  uint16_t* xp = static_cast<uint16_t*>(std::aligned_alloc(64, static_cast<size_t>(mblocks * steps * 6 * 32) * 2));
  if (!xp) return x86::run<Avx512Dec>(a, o_begin, o_end);  // no memory for the copy: the fp32 path
  for (int64_t mb = 0; mb < mblocks; ++mb)
    pack_x(a, mb * 6, static_cast<int>(std::min<int64_t>(6, a.M - mb * 6)), steps, xp + mb * steps * 6 * 32);
  int64_t bad = -1;
  constexpr int64_t OB = 64;  // rows whose compressed weight (~300 KiB at K=4096, 2:4) stays in L2 across x blocks
  for (int64_t ob = o_begin; ob < o_end && bad < 0; ob += OB) {
    const int64_t oe = std::min(ob + OB, o_end);
    for (int64_t mb = 0; mb < mblocks && bad < 0; ++mb) {
      const int C = static_cast<int>(std::min<int64_t>(6, a.M - mb * 6));
      for (int64_t o = ob; o < oe; o += 4) {
        const int R = static_cast<int>(std::min<int64_t>(4, oe - o));
        if (block_dp(a, g, sl, o, R, mb * 6, C, xp + mb * steps * 6 * 32)) {
          bad = x86::first_bad(g, a.mask, o, o + R);
          break;
        }
      }
    }
  }
  std::free(xp);
  return bad;
}

// 16-bit rows to dense by vpexpandw, 32 columns per step, for the glue's dense-GEMM tiles: the generic decoder
// widens every value to fp32 and narrows it back one at a time. (Place64 instead ran no faster here: the
// tile's stores bound it.)
int64_t decode_rows16_avx512x(const LinearArgs& a, void* dense, int64_t ld, int64_t o_begin, int64_t o_end) {
  const x86::Geo g(a);
  const Avx512Dec::Slice sl(g);
  const int64_t n32 = a.K / 32, cnt32 = 2 * g.cnt, k32 = n32 * 32;
  const __mmask32 ldm = static_cast<__mmask32>((uint64_t(1) << cnt32) - 1);
  const uint64_t one = uint64_t(1) << 32, want = static_cast<uint64_t>(cnt32 + 1);
  for (int64_t o = o_begin; o < o_end; ++o) {
    const uint8_t* mr = a.mask + o * g.rb;
    const uint16_t* vr = static_cast<const uint16_t*>(a.values) + o * g.kept;
    uint16_t* dr = static_cast<uint16_t*>(dense) + (o - o_begin) * ld;
    uint64_t bad = 0;
    for (int64_t c = 0; c < n32; ++c) {
      uint32_t bits;
      std::memcpy(&bits, mr + 4 * c, 4);
      _mm512_storeu_si512(dr + c * 32, _mm512_maskz_expand_epi16(bits, _mm512_maskz_loadu_epi16(ldm, vr + c * cnt32)));
      bad |= __builtin_popcountll(bits | one) ^ want;  // bit 32: see Avx512Dec::decode
    }
    if (k32 < a.K) {
      alignas(64) uint16_t t[32];
      int tb = 0;
      if (a.dtype == DType::bf16) tail16<DType::bf16>(a, g, sl, o, t, tb);
      else tail16<DType::f16>(a, g, sl, o, t, tb);
      std::memcpy(dr + k32, t, static_cast<size_t>(a.K - k32) * 2);
      bad |= static_cast<uint64_t>(tb);
    }
    if (bad) return o;
  }
  return -1;
}

}  // namespace sparseops::nm
