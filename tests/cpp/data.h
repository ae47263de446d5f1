// Random N:M / dense test data and float64 references (internal linkage; shared by test files).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/common/half.h"
#include "kernels/nm/nm.h"

namespace sparseops::test {
namespace {

using nm::DType;

static inline const char* dtype_name(DType d) {
  return d == DType::f32 ? "f32" : d == DType::bf16 ? "bf16" : "f16";
}
static inline size_t esize(DType d) { return d == DType::f32 ? 4 : 2; }

// A buffer of elements of one dtype, read and written as float.
struct Buf {
  DType dt;
  std::vector<uint8_t> bytes;
  Buf(DType d, size_t n) : dt(d), bytes(n * esize(d)) {}
  size_t size() const { return bytes.size() / esize(dt); }
  void* data() { return bytes.data(); }
  const void* data() const { return bytes.data(); }
  float get(size_t i) const {
    if (dt == DType::f32) { float f; std::memcpy(&f, &bytes[i * 4], 4); return f; }
    uint16_t h; std::memcpy(&h, &bytes[i * 2], 2);
    return dt == DType::bf16 ? bf16_to_f32(h) : f16_to_f32(h);
  }
  void set(size_t i, float v) {  // rounds to the dtype
    if (dt == DType::f32) { std::memcpy(&bytes[i * 4], &v, 4); return; }
    uint16_t h = dt == DType::bf16 ? f32_to_bf16(v) : f32_to_f16(v);
    std::memcpy(&bytes[i * 2], &h, 2);
  }
};

static inline void fill_uniform(Buf& b, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> u(lo, hi);
  for (size_t i = 0; i < b.size(); ++i) b.set(i, u(rng));
}

// A random N:M weight in nm-bitmask form (values nonzero; zero pruned entries in `dense`).
struct NmWeight {
  int n, m;
  int64_t O, K, kept, row_bytes;
  Buf values, dense;
  std::vector<uint8_t> mask;
  NmWeight(DType d, int n_, int m_, int64_t O_, int64_t K_, std::mt19937& rng)
      : n(n_), m(m_), O(O_), K(K_), kept(K_ / m_ * n_), row_bytes((K_ + 7) / 8),
        values(d, static_cast<size_t>(O_ * (K_ / m_ * n_))), dense(d, static_cast<size_t>(O_ * K_)),
        mask(static_cast<size_t>(O_ * ((K_ + 7) / 8)), 0) {
    std::uniform_real_distribution<float> u(0.05f, 1.0f);
    std::vector<int> idx(m);
    for (int64_t o = 0; o < O; ++o) {
      int64_t v = 0;
      for (int64_t g = 0; g < K / m; ++g) {
        for (int j = 0; j < m; ++j) idx[j] = j;
        std::shuffle(idx.begin(), idx.end(), rng);
        std::sort(idx.begin(), idx.begin() + n);
        for (int j = 0; j < n; ++j) {
          const int64_t k = g * m + idx[j];
          mask[o * row_bytes + k / 8] |= static_cast<uint8_t>(1u << (k % 8));
          const float w = (rng() & 1 ? 1.0f : -1.0f) * u(rng);
          values.set(o * kept + v, w);
          dense.set(o * K + k, values.get(o * kept + v));
          ++v;
        }
      }
    }
  }
};

// y_ref[i, o] = sum_k w[o, k] x[i, k] + b[o] in float64, and the scale sum |w||x| + |b|.
static inline void reference(const Buf& x, int64_t ldx, const Buf& w, const Buf* bias, int64_t M,
                             int64_t O, int64_t K, std::vector<double>& ref, std::vector<double>& scale) {
  ref.assign(M * O, 0.0);
  scale.assign(M * O, 0.0);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t o = 0; o < O; ++o) {
      double s = 0, a = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double wv = w.get(o * K + k), xv = x.get(i * ldx + k);
        s += wv * xv;
        if (std::isfinite(xv)) a += std::fabs(wv * xv);
      }
      if (bias) { s += bias->get(o); a += std::fabs(bias->get(o)); }
      ref[i * O + o] = s;
      scale[i * O + o] = a;
    }
}

// Output tolerance: fp32 accumulation error relative to sum |w||x| plus one rounding to the dtype.
static inline bool close(double got, double ref, double scale, DType d, int64_t K) {
  if (std::isnan(ref)) return std::isnan(got);
  if (std::isinf(ref)) return got == ref;
  const double rel = d == DType::f32 ? 0.0 : d == DType::bf16 ? 1.0 / 256 : 1.0 / 2048;
  const double acc = 2 * 5.96e-8 * static_cast<double>(K + 1) * scale;  // 2 * K * 2^-24 * sum|w||x|
  return std::fabs(got - ref) <= acc * (1 + rel) + rel * std::fabs(ref) + 1e-7;
}

}  // namespace
}  // namespace sparseops::test
