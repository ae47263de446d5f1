// NEON variant of bitmap-KV decode attention and compression. Records are expanded by walking their set bits
// (no NEON expand instruction; values widened on the way); dot products, accumulation, rescaling and exp run on
// float32x4 with fp32 accumulation. Compression: a bitwise threshold search counting keys >= candidate with
// vector compares, then values placed 4 (fp32) or 8 (16-bit) channels at a time by a table lookup (tbl).
#include <arm_neon.h>

#include "../common/exp2_neon.h"
#include "kv_attend.h"
#include "kv_select.h"

namespace sparseops::kv {
namespace {

// exp(x) for the softmax: 2^(x log2 e), so that attention and KV share one polynomial.
static inline float32x4_t exp4(float32x4_t x) { return exp2_v(vmulq_n_f32(x, 1.44269504088896341f)); }

struct NeonOps : FP32Keys<NeonOps> {
  static inline void expand(DType d, const uint8_t* bits, const void* vals, int D, int k, float* out) {
    for (int c = 0; c < D; c += 4) vst1q_f32(out + c, vdupq_n_f32(0.0f));
    const char* v = static_cast<const char*>(vals);
    int j = 0;
    for (int c8 = 0; c8 < D / 8 && j < k; ++c8)
      for (unsigned b = bits[c8]; b && j < k; b &= b - 1) out[c8 * 8 + __builtin_ctz(b)] = ScalarOps::cvt(d, v, j++);
  }
  static inline void load(DType d, const void* row, int D, float* out) {
    if (d == DType::f32) {
      for (int c = 0; c < D; c += 4) vst1q_f32(out + c, vld1q_f32(static_cast<const float*>(row) + c));
    } else if (d == DType::bf16) {
      const uint16_t* p = static_cast<const uint16_t*>(row);
      for (int c = 0; c < D; c += 4) vst1q_f32(out + c, vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p + c), 16)));
    } else {
      ScalarOps::load(d, row, D, out);
    }
  }
  static inline void scores(const float* qf, int64_t R, const float* blk, int n, int D, float, float* s) {
    for (int64_t r = 0; r < R; ++r)
      for (int j = 0; j < n; ++j) {
        const float* q = qf + r * D;
        const float* b = blk + j * D;
        float32x4_t a0 = vdupq_n_f32(0.0f), a1 = vdupq_n_f32(0.0f);
        for (int c = 0; c < D; c += 8) {
          a0 = vfmaq_f32(a0, vld1q_f32(q + c), vld1q_f32(b + c));
          a1 = vfmaq_f32(a1, vld1q_f32(q + c + 4), vld1q_f32(b + c + 4));
        }
        s[r * kBlock + j] = vaddvq_f32(vaddq_f32(a0, a1));
      }
  }
  static inline void accum(float* acc, const float* p, const float* blk, int n, int D) {
    for (int c = 0; c < D; c += 8) {
      float32x4_t a0 = vld1q_f32(acc + c), a1 = vld1q_f32(acc + c + 4);
      for (int j = 0; j < n; ++j) {
        a0 = vfmaq_n_f32(a0, vld1q_f32(blk + j * D + c), p[j]);
        a1 = vfmaq_n_f32(a1, vld1q_f32(blk + j * D + c + 4), p[j]);
      }
      vst1q_f32(acc + c, a0);
      vst1q_f32(acc + c + 4, a1);
    }
  }
  static inline void scal(float* acc, float alpha, int D) {
    for (int c = 0; c < D; c += 4) vst1q_f32(acc + c, vmulq_n_f32(vld1q_f32(acc + c), alpha));
  }
  static inline float exp_sum(float* s, float m, int n) {
    float32x4_t sum = vdupq_n_f32(0.0f);
    const float32x4_t mv = vdupq_n_f32(m);
    int j = 0;
    for (; j + 4 <= n; j += 4) {
      const float32x4_t e = exp4(vsubq_f32(vld1q_f32(s + j), mv));
      vst1q_f32(s + j, e);
      sum = vaddq_f32(sum, e);
    }
    float total = vaddvq_f32(sum);
    for (; j < n; ++j) { s[j] = std::exp(s[j] - m); total += s[j]; }
    return total;
  }
};

struct CompressTable {
  uint8_t shuf32[16][16];   // 4 fp32 lanes: bytes of the i-th set lane of the nibble first; 0xff -> 0
  uint8_t shuf16[256][16];  // 8 16-bit lanes, per byte of the bitmap
  CompressTable() {
    std::memset(this, 0xff, sizeof *this);
    for (int b = 0; b < 256; ++b)
      for (int i = 0, n = 0; i < 8; ++i)
        if ((b >> i) & 1) {
          shuf16[b][2 * n] = static_cast<uint8_t>(2 * i);
          shuf16[b][2 * n + 1] = static_cast<uint8_t>(2 * i + 1);
          if (b < 16)
            for (int y = 0; y < 4; ++y) shuf32[b][4 * n + y] = static_cast<uint8_t>(4 * i + y);
          ++n;
        }
  }
};
const CompressTable kCompress;

static inline uint32_t lane_bits(uint32x4_t m) {  // 4 compare lanes -> 4 bits
  const uint32x4_t w = {1, 2, 4, 8};
  return vaddvq_u32(vandq_u32(m, w));
}

}  // namespace

void compress_neon(DType dtype, int D, int k, const void* x, uint8_t* bits, void* vals, int64_t r_begin,
                   int64_t r_end) {
  if (D > 1024) return compress(dtype, D, k, x, bits, vals, r_begin, r_end);
  const int es = static_cast<int>(dtype_size(dtype)), nb = D / 8, nv = D / 4;
  const bool f32 = dtype == DType::f32;
  const uint32x4_t magmask = vdupq_n_u32(f32 ? 0x7fffffffu : 0x7fffu);
  uint32x4_t key[256];
  uint64_t gt[16], eq[16];
  alignas(16) uint8_t tmp[1024 * 4 + 16];
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
      const uint32x4_t raw = f32 ? vld1q_u32(reinterpret_cast<const uint32_t*>(xr) + 4 * i)
                                 : vmovl_u16(vld1_u16(reinterpret_cast<const uint16_t*>(xr) + 4 * i));
      key[i] = vandq_u32(raw, magmask);
    }
    const uint32_t t = kth_largest_key(f32 ? 31 : 15, k, [&](uint32_t c) {
      const uint32x4_t cv = vdupq_n_u32(c);
      uint32x4_t acc = vdupq_n_u32(0);
      for (int i = 0; i < nv; ++i) acc = vsubq_u32(acc, vcgeq_u32(key[i], cv));  // true lanes are all-ones (-1)
      return static_cast<int>(vaddvq_u32(acc));
    });
    const uint32x4_t tv = vdupq_n_u32(t);
    std::memset(gt, 0, sizeof(uint64_t) * ((nv + 15) / 16));
    std::memset(eq, 0, sizeof(uint64_t) * ((nv + 15) / 16));
    for (int i = 0; i < nv; ++i) {
      gt[i / 16] |= static_cast<uint64_t>(lane_bits(vcgtq_u32(key[i], tv))) << (4 * (i % 16));
      eq[i / 16] |= static_cast<uint64_t>(lane_bits(vceqq_u32(key[i], tv))) << (4 * (i % 16));
    }
    select_bits(gt, eq, (nv + 15) / 16, k, D, br);
    int off = 0;  // bytes placed; every step stores 16 bytes at `off` (tmp has slack)
    if (f32) {
      for (int i = 0; i < nv; ++i) {
        const uint8_t nib = (br[i / 2] >> (4 * (i % 2))) & 15;
        const uint8x16_t v = vld1q_u8(reinterpret_cast<const uint8_t*>(xr) + 16 * i);
        vst1q_u8(tmp + off, vqtbl1q_u8(v, vld1q_u8(kCompress.shuf32[nib])));
        off += 4 * __builtin_popcount(nib);
      }
    } else {
      for (int i = 0; i < nb; ++i) {
        const uint8x16_t v = vld1q_u8(reinterpret_cast<const uint8_t*>(xr) + 16 * i);
        vst1q_u8(tmp + off, vqtbl1q_u8(v, vld1q_u8(kCompress.shuf16[br[i]])));
        off += 2 * __builtin_popcount(br[i]);
      }
    }
    std::memcpy(vr, tmp, static_cast<size_t>(k) * es);
  }
}

void partial_neon(const AttnArgs& a, int64_t b, int64_t h, int64_t t0, int64_t t1, float* part) {
  attend_partial<NeonOps>(a, b, h, t0, t1, part);
}

}  // namespace sparseops::kv
