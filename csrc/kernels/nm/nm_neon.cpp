// NEON N:M variant (baseline armv8-a, no +fp16/+bf16 needed).
//
// M == 1 (decode): each 16-column chunk is expanded in registers and FMA'd straight away. M > 1:
// each tile of 4 output rows is decoded block by block (256 columns) into dense fp32 rows: per mask
// byte (16-bit dtypes) or nibble (fp32) one unaligned 16-byte load of the next kept values and one
// TBL with a per-mask shuffle pattern places them in their dense lanes (index 0xFF gives zero), then
// bf16 widens by a 16-bit shift and fp16 by FCVTL. The decoded block is reused by every x row, and
// each converted x block by the 4 output rows (dense_tile.h). Dense FMAs over the expanded rows give
// exactly what dense math on the pruned weight gives, NaN/Inf included.
//
// Untrusted masks: values are taken from a running position that must land on c*16*n/m at the end of
// every 16-column chunk (i.e. each chunk holds exactly 16*n/m set bits) and on K/m*n at the row's
// end with zero padding bits; a mismatch stops the kernel, which returns the first bad row. Loads
// never leave the row's values: near the row's end a 16-byte load that would cross it is replaced by
// a copy of the values that remain into a zeroed buffer. (A load may see the next chunk's values of the
// same row; the shuffle never places them in a chunk that passes the count.) For m <= 8 the check is
// stricter and done first: every whole mask byte must hold 8n/m bits, which makes value positions
// static (no per-byte popcount on the way).
#include <arm_neon.h>

#include <cstring>
#include <vector>

#include "../dense/dense_tile.h"
#include "../dense/neon_cvt.h"
#include "nm.h"

namespace sparseops::nm {
namespace {

struct Luts {
  uint8_t pc[256];        // popcount of a byte
  uint8_t b16[256][16];   // 8 columns of 16-bit values: lane j takes bytes 2r, 2r+1 of the packed run
  uint8_t b32[16][16];    // 4 columns of fp32 values: lane j takes bytes 4r .. 4r+3
  Luts() {
    for (int b = 0; b < 256; ++b) {
      int r = 0;
      for (int j = 0; j < 8; ++j) {
        const bool on = (b >> j) & 1;
        b16[b][2 * j] = on ? static_cast<uint8_t>(2 * r) : 0xFF;
        b16[b][2 * j + 1] = on ? static_cast<uint8_t>(2 * r + 1) : 0xFF;
        r += on;
      }
      pc[b] = static_cast<uint8_t>(r);
    }
    for (int b = 0; b < 16; ++b) {
      int r = 0;
      for (int j = 0; j < 4; ++j) {
        const bool on = (b >> j) & 1;
        for (int t = 0; t < 4; ++t) b32[b][4 * j + t] = on ? static_cast<uint8_t>(4 * r + t) : 0xFF;
        r += on;
      }
    }
  }
};

const Luts& luts() {
  static const Luts l;
  return l;
}

// 16 bytes of packed values starting at element pos of a row holding `kept` elements of size es;
// Checked: never reads past the row (callers use the unchecked form when pos + 16 <= kept, which
// covers every load of a 16-column chunk).
template <int es, bool Checked>
static inline uint8x16_t load_run(const uint8_t* row, int64_t pos, int64_t kept) {
  if (!Checked || pos + 16 / es <= kept) return vld1q_u8(row + pos * es);
  uint8_t tmp[16] = {0};
  const int64_t left = kept - pos;
  if (left > 0) std::memcpy(tmp, row + pos * es, static_cast<size_t>(left) * es);
  return vld1q_u8(tmp);
}

// Expands the kept values of one 16-column chunk (mask bytes b0, b1) into 4 fp32 vectors w[0..3]
// (zeros where pruned), taking them from element pos of the row; returns the new pos. c > 0: every
// mask byte is known to hold c bits (checked beforehand), so byte 1 starts at pos + c without a lookup.
template <DType D, bool Checked>
static inline int64_t expand16(const Luts& L, const uint8_t* vals, int64_t pos, int64_t kept, uint8_t b0,
                               uint8_t b1, float32x4_t w[4], int c = 0) {
  const int64_t pos1 = c ? pos + c : pos + L.pc[b0];  // where byte 1's values start
  if constexpr (D == DType::f32) {
    const uint8_t nib[4] = {static_cast<uint8_t>(b0 & 15), static_cast<uint8_t>(b0 >> 4),
                            static_cast<uint8_t>(b1 & 15), static_cast<uint8_t>(b1 >> 4)};
    const int64_t at[4] = {pos, pos + L.pc[nib[0]], pos1, pos1 + L.pc[nib[2]]};
    for (int q = 0; q < 4; ++q)
      w[q] = vreinterpretq_f32_u8(vqtbl1q_u8(load_run<4, Checked>(vals, at[q], kept), vld1q_u8(L.b32[nib[q]])));
    return c ? pos1 + c : pos1 + L.pc[b1];
  } else {
    const uint8_t bytes[2] = {b0, b1};
    const int64_t at[2] = {pos, pos1};
    for (int q = 0; q < 2; ++q) {
      const uint16x8_t h =
          vreinterpretq_u16_u8(vqtbl1q_u8(load_run<2, Checked>(vals, at[q], kept), vld1q_u8(L.b16[bytes[q]])));
      if constexpr (D == DType::bf16) {
        w[2 * q] = vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(h), 16));
        w[2 * q + 1] = vreinterpretq_f32_u32(vshll_high_n_u16(h, 16));
      } else {
        const float16x8_t f = vreinterpretq_f16_u16(h);
        w[2 * q] = vcvt_f32_f16(vget_low_f16(f));
        w[2 * q + 1] = vcvt_high_f32_f16(f);
      }
    }
    return c ? pos1 + c : pos1 + L.pc[b1];
  }
}

// For m <= 8 each whole mask byte covers whole groups, so a valid row has exactly c = 8n/m bits in
// every byte: checking that up front (16 bytes per step) makes every value position static.
static inline bool bytes_hold(const Luts& L, const uint8_t* mrow, int64_t nbytes, int c) {
  const uint8x16_t cv = vdupq_n_u8(static_cast<uint8_t>(c));
  uint8x16_t diff = vdupq_n_u8(0);
  int64_t i = 0;
  for (; i + 16 <= nbytes; i += 16) diff = vorrq_u8(diff, veorq_u8(vcntq_u8(vld1q_u8(mrow + i)), cv));
  if (vmaxvq_u8(diff)) return false;
  for (; i < nbytes; ++i)
    if (L.pc[mrow[i]] != c) return false;
  return true;
}

template <DType D>
static inline float value_at(const uint8_t* vals, int64_t pos) {
  if constexpr (D == DType::f32) {
    float v;
    std::memcpy(&v, vals + pos * 4, 4);
    return v;
  } else {
    uint16_t h;
    std::memcpy(&h, vals + pos * 2, 2);
    return D == DType::bf16 ? bf16_to_f32(h) : f16_to_f32(h);
  }
}

// The row's last K % 16 columns, one at a time, starting at column k with value position pos:
// calls put(k, w) for each column. Returns false if the mask asks for a value past the row, the row's
// total is off, or a padding bit past K is set.
template <DType D, class Put>
static inline bool row_tail(const LinearArgs& a, const uint8_t* vals, const uint8_t* mrow, int64_t k, int64_t pos,
                            Put&& put) {
  const int64_t kept = a.K / a.m * a.n, row_bytes = (a.K + 7) / 8;
  for (; k < a.K; ++k) {
    float v = 0.0f;
    if ((mrow[k >> 3] >> (k & 7)) & 1) {
      if (pos >= kept) return false;
      v = value_at<D>(vals, pos++);
    }
    put(k, v);
  }
  if (pos != kept) return false;
  return !((a.K & 7) && (mrow[row_bytes - 1] >> (a.K & 7)));  // bits past K
}

// Decodes columns [k0, k0 + kb) of one row into dst (fp32). Returns false on a bad count.
template <DType D>
static bool decode_block(const LinearArgs& a, int64_t o, int64_t k0, int kb, float* dst) {
  const Luts& L = luts();
  constexpr int es = D == DType::f32 ? 4 : 2;
  const int64_t kept = a.K / a.m * a.n, row_bytes = (a.K + 7) / 8;
  const uint8_t* vals = static_cast<const uint8_t*>(a.values) + o * kept * es;
  const uint8_t* mrow = a.mask + o * row_bytes;
  const int64_t per_chunk = 16 / a.m * a.n, end = k0 + kb;
  int64_t pos = k0 / a.m * a.n;  // k0 is a multiple of 16, hence of m
  int64_t expect = pos, k = k0;
  if (a.m <= 8) {  // every whole mask byte must hold c bits; then value positions are static
    const int c = 8 / a.m * a.n;
    if (!bytes_hold(L, mrow + (k0 >> 3), kb >> 3, c)) return false;
    for (; k + 16 <= end && pos + 16 <= kept; k += 16, pos += 2 * c) {
      float32x4_t w[4];
      expand16<D, false>(L, vals, pos, kept, mrow[k >> 3], mrow[(k >> 3) + 1], w, c);
      for (int q = 0; q < 4; ++q) vst1q_f32(dst + (k - k0) + 4 * q, w[q]);
    }
    expect = pos;
  }
  for (; k + 16 <= end; k += 16) {  // m == 16, and the chunks near the row's end
    float32x4_t w[4];
    const uint8_t b0 = mrow[k >> 3], b1 = mrow[(k >> 3) + 1];
    pos = pos + 16 <= kept ? expand16<D, false>(L, vals, pos, kept, b0, b1, w)
                           : expand16<D, true>(L, vals, pos, kept, b0, b1, w);
    for (int q = 0; q < 4; ++q) vst1q_f32(dst + (k - k0) + 4 * q, w[q]);
    expect += per_chunk;
    if (pos != expect) return false;
  }
  // Blocks are multiples of 16 wide, so a partial chunk only comes at the row's end.
  if (end == a.K) return row_tail<D>(a, vals, mrow, k, pos, [&](int64_t kk, float v) { dst[kk - k0] = v; });
  return true;
}

// M == 1 (decode): expand each chunk straight into FMAs, one output row at a time, no block buffer.
template <DType D>
int64_t run_m1(const LinearArgs& a, int64_t o_begin, int64_t o_end) {
  const Luts& L = luts();
  constexpr int es = D == DType::f32 ? 4 : 2;
  const int64_t K = a.K, K16 = K / 16 * 16, kept = K / a.m * a.n, row_bytes = (K + 7) / 8;
  const int64_t per_chunk = 16 / a.m * a.n;
  const int c = a.m <= 8 ? 8 / a.m * a.n : 0;  // bits per mask byte of a valid row
  std::vector<float> xf(static_cast<size_t>(K));
  tile::to_f32<tile::NeonCvt>(a.dtype, a.x, K, xf.data());
  for (int64_t o = o_begin; o < o_end; ++o) {
    const uint8_t* vals = static_cast<const uint8_t*>(a.values) + o * kept * es;
    const uint8_t* mrow = a.mask + o * row_bytes;
    float32x4_t acc[4] = {vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0)};
    int64_t pos = 0, k = 0;
    if (c) {  // m <= 8: counts checked per byte first, then no per-chunk bookkeeping
      if (!bytes_hold(L, mrow, K / 8, c)) return o;
      for (; k < K16 && pos + 16 <= kept; k += 16, pos += 2 * c) {
        float32x4_t w[4];
        expand16<D, false>(L, vals, pos, kept, mrow[k >> 3], mrow[(k >> 3) + 1], w, c);
        for (int q = 0; q < 4; ++q) acc[q] = vfmaq_f32(acc[q], w[q], vld1q_f32(xf.data() + k + 4 * q));
      }
    }
    for (; k < K16; k += 16) {  // m == 16, and the chunks near the row's end
      float32x4_t w[4];
      const uint8_t b0 = mrow[k >> 3], b1 = mrow[(k >> 3) + 1];
      pos = pos + 16 <= kept ? expand16<D, false>(L, vals, pos, kept, b0, b1, w)
                             : expand16<D, true>(L, vals, pos, kept, b0, b1, w);
      for (int q = 0; q < 4; ++q) acc[q] = vfmaq_f32(acc[q], w[q], vld1q_f32(xf.data() + k + 4 * q));
      if (pos != (k / 16 + 1) * per_chunk) return o;
    }
    float tail = 0.0f;
    if (!row_tail<D>(a, vals, mrow, K16, pos, [&](int64_t k, float v) { tail += v * xf[k]; })) return o;
    float s = vaddvq_f32(vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3]))) + tail;
    if (a.bias) s += value_at<D>(static_cast<const uint8_t*>(a.bias), o);
    uint8_t* yp = static_cast<uint8_t*>(a.y) + o * es;
    if constexpr (D == DType::f32) {
      std::memcpy(yp, &s, 4);
    } else {
      const uint16_t h = D == DType::bf16 ? f32_to_bf16(s) : f32_to_f16(s);
      std::memcpy(yp, &h, 2);
    }
  }
  return -1;
}

template <DType D>
int64_t run(const LinearArgs& a, int64_t o_begin, int64_t o_end) {
  if (a.M == 1) return run_m1<D>(a, o_begin, o_end);
  const tile::Problem p{a.dtype, a.M, a.K, a.x, a.ldx, a.bias, a.y, a.ldy};
  return tile::run<4, 4, tile::NeonCvt>(
      p, o_begin, o_end, [&](int64_t o0, int ro, int64_t k0, int kb, float (*wb)[tile::KB], tile::WRows& rows) -> int64_t {
        for (int r = 0; r < ro; ++r) {
          rows.p[r] = wb[r];
          if (!decode_block<D>(a, o0 + r, k0, kb, wb[r])) {
            // Earlier tiles passed; earlier rows of this tile passed this block but may fail a later
            // one, so finish checking them in order to report the first bad row.
            for (int q = 0; q < r; ++q)
              for (int64_t kk = k0 + tile::KB; kk < a.K; kk += tile::KB)
                if (!decode_block<D>(a, o0 + q, kk, static_cast<int>(std::min<int64_t>(tile::KB, a.K - kk)), wb[q]))
                  return o0 + q;
            return o0 + r;
          }
        }
        return -1;
      });
}

}  // namespace

int64_t linear_neon(const LinearArgs& a, int64_t o_begin, int64_t o_end) {
  switch (a.dtype) {
    case DType::f32: return run<DType::f32>(a, o_begin, o_end);
    case DType::bf16: return run<DType::bf16>(a, o_begin, o_end);
    case DType::f16: return run<DType::f16>(a, o_begin, o_end);
  }
  return -1;
}

}  // namespace sparseops::nm
