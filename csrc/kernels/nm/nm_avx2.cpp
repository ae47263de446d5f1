// AVX2 N:M variant. Each 16-column chunk is handled as two mask bytes of 8 columns. A 256-entry table
// per mask byte gives the vpermps indices that move the byte's kept values into their dense lanes,
// with the sign bit set on pruned lanes so one blendv zeroes them. For m <= 8 every byte of a valid
// row holds exactly c = 8n/m bits, so byte j's values are the fixed slice [j*c, j*c + c), read with
// a masked load of exactly c elements (the count is checked per byte, a chunk of 8 columns). For
// m == 16 the chunk's 16n/m values are copied into a zeroed buffer first and byte 1 starts at
// byte 0's popcount. Blocking, tails and the threading contract are in nm_x86_tile.h.
#include <immintrin.h>

#include <cmath>

#include "../common/avx2_popcnt.h"
#include "../common/perm_place.h"
#include "../common/shuffle_place.h"
#include "nm.h"
#include "nm_x86_tile.h"

namespace sparseops::nm {
namespace {

struct Tables {
  alignas(32) int32_t first[9][8];   // -1 on the first k lanes (maskload of k dwords)
  alignas(16) int16_t last16[8][8];  // -1 on lane k only
  Tables() {
    for (int k = 0; k <= 8; ++k)
      for (int j = 0; j < 8; ++j) first[k][j] = j < k ? -1 : 0;
    for (int k = 0; k < 8; ++k)
      for (int j = 0; j < 8; ++j) last16[k][j] = j == k ? -1 : 0;
  }
};

const Tables& tables() {
  static const Tables t;
  return t;
}

static inline __m256 widen(DType d, __m128i h) {
  if (d == DType::bf16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  return _mm256_cvtph_ps(h);
}

static inline __m256 place(const PermPlace& t, __m256 v, unsigned byte) {
  const __m256i idx = _mm256_load_si256(reinterpret_cast<const __m256i*>(t.perm[byte]));
  return _mm256_blendv_ps(_mm256_permutevar8x32_ps(v, idx), _mm256_setzero_ps(), _mm256_castsi256_ps(idx));
}

struct Avx2Dec {
  static constexpr int W = 8;
  static constexpr int small_max = 2;  // x rows the register-only path takes
  static int constexpr sparse_min_m = 16;  // from here on, kept-only multiplies (n/m <= 1/2)
  static constexpr bool sparse_nv2 = true;  // 16-row panels kept-only too (nm_x86_tile.h run_sparse)
  static constexpr int RM = 2;  // 4 x 2 accumulators + 4 weights + 1 x of the 16 ymm registers
  typedef float V __attribute__((vector_size(32)));
  struct Chunk { V v[2]; };
  static inline V bcast(float w) { return (V)_mm256_set1_ps(w); }

  struct Slice {
    const PermPlace* t;
    int cnt, c8;      // values per chunk, per mask byte (m <= 8; 0 for m == 16)
    __m256i ld32;     // first c8 dwords (fp32 values)
    __m128i ld16;     // first c8/2 dwords (16-bit values)
    __m128i odd16;    // lane c8-1 when c8 is odd
    explicit Slice(const x86::Geo& g) : t(&perm_place()), cnt(g.cnt), c8(g.m <= 8 ? 8 / g.m * g.n : 0) {
      const Tables& m = tables();
      ld32 = _mm256_load_si256(reinterpret_cast<const __m256i*>(m.first[c8]));
      ld16 = _mm_load_si128(reinterpret_cast<const __m128i*>(m.first[c8 / 2]));
      odd16 = (c8 & 1) ? _mm_load_si128(reinterpret_cast<const __m128i*>(m.last16[c8 - 1])) : _mm_setzero_si128();
    }
  };

  template <DType D>
  static inline __m256 load_run(const Slice& s, const char* vrow, int64_t pos) {
    if constexpr (D == DType::f32) {
      return _mm256_maskload_ps(reinterpret_cast<const float*>(vrow) + pos, s.ld32);
    } else {
      const uint16_t* p = reinterpret_cast<const uint16_t*>(vrow) + pos;
      __m128i h = _mm_maskload_epi32(reinterpret_cast<const int*>(p), s.ld16);
      if (s.c8 & 1) h = _mm_or_si128(h, _mm_and_si128(_mm_set1_epi16(static_cast<int16_t>(p[s.c8 - 1])), s.odd16));
      return widen(D, h);
    }
  }

  template <DType D>
  static inline int decode(const Slice& s, const char* vrow, const uint8_t* mrow, int64_t c, V* w) {
    const unsigned b0 = mrow[2 * c], b1 = mrow[2 * c + 1];
    if (s.c8) {
      const int64_t pos = c * s.cnt;
      w[0] = (V)place(*s.t, load_run<D>(s, vrow, pos), b0);
      w[1] = (V)place(*s.t, load_run<D>(s, vrow, pos + s.c8), b1);
      return (__builtin_popcount(b0) ^ s.c8) | (__builtin_popcount(b1) ^ s.c8);
    }
    // m == 16: the chunk's slice into a zero-padded buffer; byte 1 starts where byte 0's run ends.
    alignas(32) float buf[24] = {};
    const int64_t pos = c * s.cnt;
    if constexpr (D == DType::f32) {
      std::memcpy(buf, reinterpret_cast<const float*>(vrow) + pos, s.cnt * 4);
    } else {
      const uint16_t* p = reinterpret_cast<const uint16_t*>(vrow) + pos;
      for (int i = 0; i < s.cnt; ++i) buf[i] = D == DType::bf16 ? bf16_to_f32(p[i]) : f16_to_f32(p[i]);
    }
    const int p0 = __builtin_popcount(b0);
    w[0] = (V)place(*s.t, _mm256_load_ps(buf), b0);
    w[1] = (V)place(*s.t, _mm256_loadu_ps(buf + p0), b1);
    return (p0 + __builtin_popcount(b1)) ^ s.cnt;
  }

  static void cvt_row(DType d, const uint16_t* s, float* dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(dst + i, widen(d, _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i))));
    for (; i < n; ++i) dst[i] = d == DType::bf16 ? bf16_to_f32(s[i]) : f16_to_f32(s[i]);
  }
};

// ---- fp32 / bf16 GEMV (M == 1) for patterns with at most 4 kept values per mask byte -------------------
// One vpshufb per 8 columns places a mask byte's kept values (bf16: and widens them; common/shuffle_place.h)
// instead of load-(widen)-permute-blend, which made the generic decoder compute bound at ~0.3 cycles per
// column (bf16 2:4 ran at dense speed; fp32 1:4 streamed at 42-48% of the read bandwidth). A mask byte's
// values are read with a 16-byte load broadcast to both halves: bf16 (2*c8 <= 8 values) and fp32 with
// c8 <= 2 need one load per 16-column chunk, the second byte's control starting c8 values in; fp32 with
// c8 = 3 or 4 loads each byte's values on its own.

const F32Place& kF32Place = f32_place();  // bound at load time: no init guard in the GEMV
const Bf16Place& kPlace = bf16_place();

// Every byte of p[0, nb) has exactly c bits set (nibble-table popcount, 32 bytes at a time).
static inline bool bytes_have(const uint8_t* p, int64_t nb, int c) {
  const __m256i want = _mm256_set1_epi8(static_cast<char>(c));
  __m256i diff = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 32 <= nb; i += 32) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i));
    const __m256i cnt = popcnt_epi8(v);
    diff = _mm256_or_si256(diff, _mm256_xor_si256(cnt, want));
  }
  bool ok = _mm256_testz_si256(diff, diff);
  for (; i < nb; ++i) ok &= __builtin_popcount(p[i]) == c;
  return ok;
}

// True when no byte of p[0, nb) has an empty nibble. With two bits per byte (bytes_have) that is one bit per
// group of 4: what selecting needs (placement computes what any mask says; selection would not).
static inline bool nibbles_full(const uint8_t* p, int64_t nb) {
  const __m256i lo = _mm256_set1_epi8(0x0f), hi = _mm256_set1_epi8(static_cast<char>(0xf0)), z = _mm256_setzero_si256();
  __m256i empty = z;
  int64_t i = 0;
  for (; i + 32 <= nb; i += 32) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i));
    empty = _mm256_or_si256(empty, _mm256_or_si256(_mm256_cmpeq_epi8(_mm256_and_si256(v, lo), z),
                                                   _mm256_cmpeq_epi8(_mm256_and_si256(v, hi), z)));
  }
  bool ok = _mm256_testz_si256(empty, empty);
  for (; i < nb; ++i) ok &= (p[i] & 0x0f) && (p[i] & 0xf0);
  return ok;
}

// Where a row's chunk c reads its values: loads at c * vstep and c * vstep + v1off (v1off = 0: one load),
// placed by controls t0[b0] and t1[b1]. nfast: the chunks whose loads stay inside the row's values.
struct M1Plan {
  const uint8_t (*t0)[32];
  const uint8_t (*t1)[32];
  int64_t vstep, v1off, nfast;
  M1Plan(DType d, const x86::Geo& g) {
    const int c8 = 8 / g.m * g.n;
    const int64_t es = d == DType::f32 ? 4 : 2;
    vstep = g.cnt * es;
    if (d == DType::f32) {
      t0 = kF32Place.t[0];
      t1 = c8 <= 2 ? kF32Place.t[c8] : kF32Place.t[0];
      v1off = c8 <= 2 ? 0 : c8 * 4;
    } else {
      t0 = kPlace.t[0];
      t1 = kPlace.t[c8];
      v1off = 0;
    }
    const int64_t last = g.kept * es - v1off - 16;  // the last chunk start whose loads fit
    nfast = last >= 0 ? std::min<int64_t>(g.nfull, last / vstep + 1) : 0;
  }
};

// Rows o and o + R - 1 (R = 1 or 2: a pair shares each load of x, a quarter of the 256-bit loads). TWO: two
// value loads per chunk (pl.v1off != 0), a template argument so the one-load loop carries no test. Not
// inlined: inlined into its caller, GCC spilled the accumulators (bf16 1:4 ran ~15% slower).
template <DType D, int R, bool TWO>
__attribute__((noinline)) static int64_t m1_rows(const LinearArgs& a, const x86::Geo& g, const Avx2Dec::Slice& sl,
                                                 const M1Plan& pl, const float* x, int64_t o) {
  const int c8 = 8 / g.m * g.n;
  const int64_t es = D == DType::f32 ? 4 : 2;
  const uint8_t* mr[R];
  const char* vr[R];
  for (int r = 0; r < R; ++r) {
    mr[r] = a.mask + (o + r) * g.rb;
    vr[r] = static_cast<const char*>(a.values) + (o + r) * g.kept * es;
    if (!bytes_have(mr[r], 2 * pl.nfast, c8)) return o + r;
  }
  const uint8_t(*t0)[32] = pl.t0;
  const uint8_t(*t1)[32] = pl.t1;
  const int64_t vstep = pl.vstep, v1off = pl.v1off, nfast = pl.nfast;
  __m256 acc[R][4];  // two chains per row and half chunk: FMA latency
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = acc[r][2] = acc[r][3] = _mm256_setzero_ps();
  auto chunk = [&](int64_t c, const uint64_t* bits, int sh8, int e) __attribute__((always_inline)) {
    __m256 x0 = _mm256_load_ps(x + c * 16), x1 = _mm256_load_ps(x + c * 16 + 8);
    if (R > 1) __asm__("" : "+x"(x0), "+x"(x1));  // one load for both rows, not one folded into each FMA
#pragma GCC unroll 2
    for (int r = 0; r < R; ++r) {
      const char* vp = vr[r] + c * vstep;
      const __m256i v0 = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(vp)));
      const __m256i v1 =
          TWO ? _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(vp + v1off))) : v0;
      const unsigned b0 = (bits[r] >> sh8) & 0xff, b1 = (bits[r] >> (sh8 + 8)) & 0xff;
      const __m256 w0 = _mm256_castsi256_ps(
          _mm256_shuffle_epi8(v0, _mm256_load_si256(reinterpret_cast<const __m256i*>(t0[b0]))));
      const __m256 w1 = _mm256_castsi256_ps(
          _mm256_shuffle_epi8(v1, _mm256_load_si256(reinterpret_cast<const __m256i*>(t1[b1]))));
      acc[r][e] = _mm256_fmadd_ps(w0, x0, acc[r][e]);
      acc[r][e + 1] = _mm256_fmadd_ps(w1, x1, acc[r][e + 1]);
    }
  };
  int64_t c = 0;
  for (; c + 4 <= nfast; c += 4) {
    uint64_t bits[R];
    for (int r = 0; r < R; ++r) {
      __builtin_prefetch(vr[r] + c * vstep + 16384);  // far ahead: one core's DRAM latency x bandwidth
      if (D == DType::f32) __builtin_prefetch(vr[r] + c * vstep + 16384 + 64);  // 128 bytes per 4 chunks
      std::memcpy(&bits[r], mr[r] + 2 * c, 8);
    }
    chunk(c, bits, 0, 0);
    chunk(c + 1, bits, 16, 2);
    chunk(c + 2, bits, 32, 0);
    chunk(c + 3, bits, 48, 2);
  }
  for (; c < nfast; ++c) {
    uint64_t bits[R];
    for (int r = 0; r < R; ++r) bits[r] = mr[r][2 * c] | (mr[r][2 * c + 1] << 8);
    chunk(c, bits, 0, 0);
  }
  int bad = 0;
  for (int r = 0; r < R; ++r) {
    for (int64_t k = c; k < g.nfull; ++k) {
      Avx2Dec::Chunk w;
      bad |= Avx2Dec::decode<D>(sl, vr[r], mr[r], k, w.v);
      acc[r][0] = _mm256_fmadd_ps((__m256)w.v[0], _mm256_load_ps(x + k * 16), acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps((__m256)w.v[1], _mm256_load_ps(x + k * 16 + 8), acc[r][1]);
    }
    if (g.tw) {
      alignas(32) float t[16];
      bad |= !x86::decode_tail(D, g, a.values, a.mask, o + r, t);
      acc[r][0] = _mm256_fmadd_ps(_mm256_load_ps(t), _mm256_load_ps(x + g.nfull * 16), acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(_mm256_load_ps(t + 8), _mm256_load_ps(x + g.nfull * 16 + 8), acc[r][1]);
    }
    if (bad) return o + r;
  }
  for (int r = 0; r < R; ++r) {
    const __m256 t = _mm256_add_ps(_mm256_add_ps(acc[r][0], acc[r][1]), _mm256_add_ps(acc[r][2], acc[r][3]));
    float s = x86::hsum<Avx2Dec>((Avx2Dec::V)t);
    if (a.bias) s += x86::elem_to_f32(D, a.bias, o + r);
    x86::store_out(D, a.y, o + r, s);
  }
  return -1;
}

template <DType D>
static int64_t m1_place(const LinearArgs& a, int64_t o_begin, int64_t o_end) {
  const x86::Geo g(a);
  // x as fp32 on a 64-byte boundary: 32-byte loads that straddle cache lines cost two loads, and loads are
  // this loop's bottleneck (Zen 3 does two 256-bit loads per cycle).
  AlignedF32 xv(static_cast<size_t>(g.Kp));
  float* x = xv.p;
  if (D == DType::f32) std::memcpy(x, a.x, a.K * sizeof(float));
  else Avx2Dec::cvt_row(D, static_cast<const uint16_t*>(a.x), x, a.K);
  const Avx2Dec::Slice sl(g);
  const M1Plan pl(D, g);
  auto rows = [&](auto two) {
    constexpr bool TWO = decltype(two)::value;
    int64_t o = o_begin;
    for (; o + 2 <= o_end; o += 2)
      if (const int64_t bad = m1_rows<D, 2, TWO>(a, g, sl, pl, x, o); bad >= 0) return bad;
    if (o < o_end) return m1_rows<D, 1, TWO>(a, g, sl, pl, x, o);
    return int64_t(-1);
  };
  if (D == DType::f32 && pl.v1off) return rows(std::true_type{});
  return rows(std::false_type{});
}


// bf16 1:4 at M = 1 selects instead of placing. With x re-laid as xt[k * Gp + g] = x[4g + k] (G = K/4 groups,
// Gp = G rounded up to 8), the four candidates of 8 consecutive groups are four aligned vectors that every row
// shares; a row takes its kept one per lane with three blends keyed by its mask bits (moved to the sign bit by a
// per-lane shift), then one FMA with its 8 values. Per 32 columns and row: one value load, one 4-byte mask load
// and, two rows sharing them, two x loads; placement needs eight loads there (values, two tables, x, twice).
// Native A/B: bench/results/nm-native-ab-zen4-2c-0deda33.txt. fp32 was slower this way (a whole 32-byte value
// load per 8 groups), so it keeps placement. Pruned positions are never multiplied, so x with NaN/Inf takes
// placement (dense math makes those NaN at every pruned position). The mask is checked as placement checks it
// (two bits per byte) and for empty nibbles (a byte with both bits in one group passed before and was selected
// wrongly), plus the tail groups and padding bits one by one.
template <int R>
__attribute__((noinline)) static int64_t select14_rows(const LinearArgs& a, const float* xt, int64_t G, int64_t o) {
  constexpr DType D = DType::bf16;
  constexpr int64_t es = 2;
  const int64_t nb = G / 8, rb = (a.K + 7) / 8, Gp = (G + 7) / 8 * 8;
  const uint8_t* mr[R];
  const char* vr[R];
  for (int r = 0; r < R; ++r) {
    mr[r] = a.mask + (o + r) * rb;
    vr[r] = static_cast<const char*>(a.values) + (o + r) * G * es;
    if (!bytes_have(mr[r], 4 * nb, 2) || !nibbles_full(mr[r], 4 * nb)) return o + r;
  }
  // lane i's sign bit after the shift = mask bit 4i + k (candidate k of its group)
  const __m256i s1 = _mm256_setr_epi32(30, 26, 22, 18, 14, 10, 6, 2);
  const __m256i s2 = _mm256_add_epi32(s1, _mm256_set1_epi32(-1)), s3 = _mm256_add_epi32(s1, _mm256_set1_epi32(-2));
  __m256 acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  auto block = [&](int64_t b, int e) __attribute__((always_inline)) {
    const __m256 x0 = _mm256_load_ps(xt + 8 * b), x1 = _mm256_load_ps(xt + Gp + 8 * b);
    const __m256 x2 = _mm256_load_ps(xt + 2 * Gp + 8 * b), x3 = _mm256_load_ps(xt + 3 * Gp + 8 * b);
    for (int r = 0; r < R; ++r) {
      uint32_t m32;
      std::memcpy(&m32, mr[r] + 4 * b, 4);
      const __m256i mb = _mm256_set1_epi32(static_cast<int>(m32));
      __m256 xs = _mm256_blendv_ps(x0, x1, _mm256_castsi256_ps(_mm256_sllv_epi32(mb, s1)));
      xs = _mm256_blendv_ps(xs, x2, _mm256_castsi256_ps(_mm256_sllv_epi32(mb, s2)));
      xs = _mm256_blendv_ps(xs, x3, _mm256_castsi256_ps(_mm256_sllv_epi32(mb, s3)));
      const __m128i v8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(vr[r] + 8 * b * es));
      acc[r][e] = _mm256_fmadd_ps(widen(D, v8), xs, acc[r][e]);
    }
  };
  int64_t b = 0;
  for (; b + 2 <= nb; b += 2) {
    for (int r = 0; r < R; ++r) __builtin_prefetch(vr[r] + 8 * b * es + 8192);
    block(b, 0);
    block(b + 1, 1);
  }
  if (b < nb) block(b, 0);
  for (int r = 0; r < R; ++r) {
    float s = x86::hsum<Avx2Dec>((Avx2Dec::V)_mm256_add_ps(acc[r][0], acc[r][1]));
    for (int64_t g = 8 * nb; g < G; ++g) {  // fewer than 8 groups left
      const unsigned nib = (mr[r][g / 2] >> (4 * (g % 2))) & 0xF;
      if (__builtin_popcount(nib) != 1) return o + r;
      s += x86::elem_to_f32(D, vr[r], g) * xt[__builtin_ctz(nib) * Gp + g];
    }
    if ((G % 2) && (mr[r][G / 2] >> 4)) return o + r;  // padding bits past K must be clear
    if (a.bias) s += x86::elem_to_f32(D, a.bias, o + r);
    x86::store_out(D, a.y, o + r, s);
  }
  return -1;
}

static int64_t m1_select14(const LinearArgs& a, int64_t o_begin, int64_t o_end) {
  constexpr DType D = DType::bf16;
  const int64_t G = a.K / 4, Gp = (G + 7) / 8 * 8;
  AlignedF32 xv(static_cast<size_t>(4 * Gp));
  float* xt = xv.p;
  bool finite = true;
  for (int64_t k = 0; k < a.K; ++k) {
    const float f = x86::elem_to_f32(D, a.x, k);
    finite &= std::isfinite(f);
    xt[(k % 4) * Gp + k / 4] = f;
  }
  if (!finite) return m1_place<D>(a, o_begin, o_end);
  int64_t o = o_begin;
  for (; o + 2 <= o_end; o += 2)
    if (const int64_t bad = select14_rows<2>(a, xt, G, o); bad >= 0) return bad;
  if (o < o_end) return select14_rows<1>(a, xt, G, o);
  return -1;
}

}  // namespace

int64_t linear_avx2(const LinearArgs& a, int64_t o_begin, int64_t o_end) {
  if (a.M == 1 && a.n == 1 && a.m == 4 && a.dtype == DType::bf16 && o_begin < o_end && a.K >= 32)
    return m1_select14(a, o_begin, o_end);
  if (a.M == 1 && a.dtype != DType::f16 && a.m <= 8 && 2 * a.n <= a.m && o_begin < o_end && a.K >= 16)
    return a.dtype == DType::f32 ? m1_place<DType::f32>(a, o_begin, o_end) : m1_place<DType::bf16>(a, o_begin, o_end);
  return x86::run<Avx2Dec>(a, o_begin, o_end);
}

int64_t decode_rows_avx2(const LinearArgs& a, void* dense, int64_t ld, int64_t o_begin, int64_t o_end) {
  return x86::decode_rows<Avx2Dec>(a, dense, ld, o_begin, o_end);
}

}  // namespace sparseops::nm
