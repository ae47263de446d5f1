// The split-K decode-attention loop shared by every ISA variant; each variant supplies the vector
// pieces as an `Ops` struct. Header-only with internal linkage on purpose (included by files built
// with different ISA flags).
//
// Ops needs (fp32 buffers of D floats per row, D a multiple of 16):
//   prep_q(dtype, row, D, scale, qf)      query row -> the form `scores` wants (FP32Keys: scaled fp32)
//   expand_k / load_k                     like expand / load, for K rows in the form `scores` wants
//   expand(dtype, bits, vals, D, k, out)  record -> dense D floats; reads at most k values
//   load(dtype, row, D, out)              dense row -> D floats
//   scores(qf, R, blk, n, D, scale, s)    s[r * kBlock + j] = scale * q_r . k_j, j < n (rows n..kBlock-1
//                                         of blk hold finite leftovers, lanes j >= n of s are ignored)
//   accum(acc, p, blk, n, D)              acc[d] += sum_j<n p[j] * blk[j * D + d]
//   accum_rows(part, P, R, s, blk, n, D)  accum for R rows at once (row r: acc part + r * P + 2, p s + r *
//                                         kBlock); FP32Keys's default calls accum row by row (an Ops that
//                                         overrides accum_rows needs no accum)
//   scal(acc, alpha, D)                   acc[d] *= alpha
//   exp_sum(s, m, n)                      s[j] = exp(s[j] - m); returns the sum
//   finish(dtype, acc, D)                 acc rows -> natural channel order (Ops may keep rows in any
//                                         fixed channel order, as long as q, K and V rows agree)
#pragma once
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "../common/aligned.h"
#include "../common/half.h"
#include "kv.h"

namespace sparseops::kv {
namespace {

constexpr int kBlock = 16;  // tokens per online-softmax step
constexpr int kPadD = 4096;  // SIMD expanders may over-read (see attend_partial) only up to this head_dim

// Set bits of a record's bitmap (D / 8 bytes, an even count): 64 bits at a time.
static inline int record_popcount(const uint8_t* bits, int nb) {
  int total = 0, i = 0;
  for (; i + 8 <= nb; i += 8) {
    uint64_t w;
    std::memcpy(&w, bits + i, 8);
    total += __builtin_popcountll(w);
  }
  for (; i < nb; i += 2) {
    uint16_t w;
    std::memcpy(&w, bits + i, 2);
    total += __builtin_popcount(w | 0x10000u) - 1;  // 32-bit popcnt: no false dependency on the 16-bit form
  }
  return total;
}

// One online-softmax step of a query row for a block whose largest score is bm: false if the block carries no
// weight (bm = -inf; the caller zeroes its weights), else raises the running max m to bm where bm is larger,
// rescaling the running sum l and the row's accumulators (through rescale(alpha)) to the new max.
template <class Rescale>
static inline bool raise_max(float& m, float& l, float bm, Rescale&& rescale) {
  if (bm == -std::numeric_limits<float>::infinity()) return false;
  if (bm > m) {
    if (m != -std::numeric_limits<float>::infinity()) {
      const float alpha = std::exp(m - bm);
      l *= alpha;
      rescale(alpha);
    }
    m = bm;
  }
  return true;
}

template <class Ops>
void attend_partial(const AttnArgs& a, int64_t b, int64_t h, int64_t t0, int64_t t1, float* part) {
  const int D = static_cast<int>(a.D);
  const int64_t G = a.Hq / a.Hkv, R = G * a.Lq, P = D + 2;
  const size_t es = dtype_size(a.dtype);
  const int nb = D / 8;
  const float ninf = -std::numeric_limits<float>::infinity();
  AlignedF32 buf(R * D + 2 * kBlock * D + R * kBlock + 16);
  float* qf = buf.p;
  float* kblk = qf + R * D;
  float* vblk = kblk + kBlock * D;
  float* s = vblk + kBlock * D;
  // Query rows of this KV head are contiguous: R rows starting at query head h * G.
  const char* q = static_cast<const char*>(a.q) + (b * a.Hq + h * G) * a.Lq * D * es;
  for (int64_t r = 0; r < R; ++r) Ops::prep_q(a.dtype, q + r * D * es, D, a.scale, qf + r * D);
  for (int64_t r = 0; r < R; ++r) {
    part[r * P] = ninf;
    part[r * P + 1] = 0.0f;
    std::fill(part + r * P + 2, part + r * P + 2 + D, 0.0f);
  }
  const int64_t bh = b * a.Hkv + h;
  const uint8_t* kb = a.k_bits + bh * a.Tcap_k * nb;
  const char* kvv = static_cast<const char*>(a.k_vals) + bh * a.Tcap_k * a.kk * es;
  const uint8_t* vb = a.v_bits + bh * a.Tcap_v * nb;
  const char* vvv = static_cast<const char*>(a.v_vals) + bh * a.Tcap_v * a.kv * es;
  const char* kt = a.Tw ? static_cast<const char*>(a.k_tail) + bh * a.Tw * D * es : nullptr;
  const char* vt = a.Tw ? static_cast<const char*>(a.v_tail) + bh * a.Tw * D * es : nullptr;

  // SIMD expanders may load (and ignore) up to 7 values past a record, which is inside the buffer for every
  // record but the storage's very last one: that one is read from a padded copy.
  const bool last_head = bh == a.B * a.Hkv - 1;
  alignas(64) char pad[(kPadD + 16) * 4];
  auto record = [&](const char* vals, int64_t tok, int64_t tcap, int k) {
    if (!last_head || tok != tcap - 1 || D > kPadD) return vals;
    std::memcpy(pad, vals, k * es);
    std::memset(pad + k * es, 0, 16 * es);
    return static_cast<const char*>(pad);
  };
  for (int64_t t = t0; t < t1; t += kBlock) {
    const int n = static_cast<int>(std::min<int64_t>(kBlock, t1 - t));
    for (int j = 0; j < n; ++j) {
      const int64_t tok = t + j;
      if (tok < a.T)
        Ops::expand_k(a.dtype, kb + tok * nb, record(kvv + tok * a.kk * es, tok, a.Tcap_k, a.kk), D, a.kk,
                      kblk + j * D);
      else Ops::load_k(a.dtype, kt + (tok - a.T) * D * es, D, kblk + j * D);
    }
    Ops::scores(qf, R, kblk, n, D, a.scale, s);
    for (int64_t r = 0; r < R; ++r) {
      float* sr = s + r * kBlock;
      float bm = ninf;
      for (int j = 0; j < n; ++j) bm = std::max(bm, sr[j]);
      float& m = part[r * P];
      float& l = part[r * P + 1];
      if (!raise_max(m, l, bm, [&](float alpha) { Ops::scal(part + r * P + 2, alpha, D); })) {
        std::fill(sr, sr + n, 0.0f);  // every score -inf: these tokens carry no weight
        continue;
      }
      l += Ops::exp_sum(sr, m, n);
    }
    for (int j = 0; j < n; ++j) {
      const int64_t tok = t + j;
      if (tok < a.T)
        Ops::expand(a.dtype, vb + tok * nb, record(vvv + tok * a.kv * es, tok, a.Tcap_v, a.kv), D, a.kv, vblk + j * D);
      else Ops::load(a.dtype, vt + (tok - a.T) * D * es, D, vblk + j * D);
    }
    Ops::accum_rows(part, P, R, s, vblk, n, D);
  }
  for (int64_t r = 0; r < R; ++r) Ops::finish(a.dtype, part + r * P + 2, D);
}

// K handled as scaled fp32 (q pre-multiplied by the scale), for Ops whose expand/load give fp32.
template <class Ops>
struct FP32Keys {
  static inline void prep_q(DType d, const void* row, int D, float scale, float* qf) {
    Ops::load(d, row, D, qf);
    for (int i = 0; i < D; ++i) qf[i] *= scale;
  }
  static inline void expand_k(DType d, const uint8_t* bits, const void* vals, int D, int k, float* out) {
    Ops::expand(d, bits, vals, D, k, out);
  }
  static inline void load_k(DType d, const void* row, int D, float* out) { Ops::load(d, row, D, out); }
  static inline void accum_rows(float* part, int64_t P, int64_t R, const float* s, const float* blk, int n, int D) {
    for (int64_t r = 0; r < R; ++r) Ops::accum(part + r * P + 2, s + r * kBlock, blk, n, D);
  }
  static inline void finish(DType, float*, int) {}
};

// Portable pieces, used by the scalar variant and by others for what they do not vectorise.
struct ScalarOps : FP32Keys<ScalarOps> {
  static inline float cvt(DType d, const char* p, int i) {
    if (d == DType::f32) { float f; std::memcpy(&f, p + 4 * i, 4); return f; }
    uint16_t u;
    std::memcpy(&u, p + 2 * i, 2);
    return d == DType::bf16 ? bf16_to_f32(u) : f16_to_f32(u);
  }
  static inline void expand(DType d, const uint8_t* bits, const void* vals, int D, int k, float* out) {
    const char* v = static_cast<const char*>(vals);
    int j = 0;
    for (int c = 0; c < D; ++c)
      out[c] = (((bits[c >> 3] >> (c & 7)) & 1) && j < k) ? cvt(d, v, j++) : 0.0f;
  }
  static inline void load(DType d, const void* row, int D, float* out) {
    for (int c = 0; c < D; ++c) out[c] = cvt(d, static_cast<const char*>(row), c);
  }
  static inline void scores(const float* qf, int64_t R, const float* blk, int n, int D, float, float* s) {
    for (int64_t r = 0; r < R; ++r)
      for (int j = 0; j < n; ++j) {
        float acc = 0.0f;
        for (int i = 0; i < D; ++i) acc += qf[r * D + i] * blk[j * D + i];
        s[r * kBlock + j] = acc;
      }
  }
  static inline void accum(float* acc, const float* p, const float* blk, int n, int D) {
    for (int j = 0; j < n; ++j)
      for (int d = 0; d < D; ++d) acc[d] += p[j] * blk[j * D + d];
  }
  static inline void scal(float* acc, float alpha, int D) {
    for (int d = 0; d < D; ++d) acc[d] *= alpha;
  }
  static inline float exp_sum(float* s, float m, int n) {
    float sum = 0.0f;
    for (int j = 0; j < n; ++j) { s[j] = std::exp(s[j] - m); sum += s[j]; }
    return sum;
  }
};

}  // namespace
}  // namespace sparseops::kv
