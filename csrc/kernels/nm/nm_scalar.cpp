// Portable reference variant: walks each row's bitmask and multiplies only the kept entries.
#include <vector>

#include "../common/half.h"
#include "nm.h"

namespace sparseops::nm {
namespace {

template <typename T> inline float load(const T* p, int64_t i);
template <> inline float load<float>(const float* p, int64_t i) { return p[i]; }
struct bf16_t { uint16_t v; };
struct f16_t { uint16_t v; };
template <> inline float load<bf16_t>(const bf16_t* p, int64_t i) { return bf16_to_f32(p[i].v); }
template <> inline float load<f16_t>(const f16_t* p, int64_t i) { return f16_to_f32(p[i].v); }
inline void store(float* p, float v) { *p = v; }
inline void store(bf16_t* p, float v) { p->v = f32_to_bf16(v); }
inline void store(f16_t* p, float v) { p->v = f32_to_f16(v); }

template <typename T>
int64_t run(const LinearArgs& a, int64_t o_begin, int64_t o_end) {
  const T* x = static_cast<const T*>(a.x);
  const T* vals = static_cast<const T*>(a.values);
  const T* bias = static_cast<const T*>(a.bias);
  T* y = static_cast<T*>(a.y);
  const int64_t kept = a.K / a.m * a.n, row_bytes = (a.K + 7) / 8;
  std::vector<int32_t> idx(kept);
  std::vector<float> w(kept);
  // Dense math gives NaN where a pruned (zero) weight meets a NaN/Inf input; skipping pruned entries
  // would hide that, so rows of x holding a non-finite value take the dense loop below.
  std::vector<char> nonfinite(a.M, 0);
  for (int64_t i = 0; i < a.M; ++i)
    for (int64_t k = 0; k < a.K; ++k) {
      float v = load(x + i * a.ldx, k);
      if (v - v != 0.0f) { nonfinite[i] = 1; break; }
    }
  for (int64_t o = o_begin; o < o_end; ++o) {
    // Decode the row once, reuse it for every x row.
    const uint8_t* mrow = a.mask + o * row_bytes;
    int64_t c = 0;
    for (int64_t k = 0; k < a.K && c < kept; ++k)
      if ((mrow[k >> 3] >> (k & 7)) & 1) { idx[c] = static_cast<int32_t>(k); w[c] = load(vals + o * kept, c); ++c; }
    int64_t rest = 0;  // set bits past the kept count (malformed mask)
    for (int64_t k = 0; k < row_bytes * 8; ++k) rest += (mrow[k >> 3] >> (k & 7)) & 1;
    if (c != kept || rest != kept) return o;
    const float b = bias ? load(bias, o) : 0.0f;
    for (int64_t i = 0; i < a.M; ++i) {
      const T* xr = x + i * a.ldx;
      float acc = 0.0f;
      if (nonfinite[i]) {
        for (int64_t k = 0, j = 0; k < a.K; ++k) {
          const float wk = (j < c && idx[j] == k) ? w[j++] : 0.0f;
          acc += wk * load(xr, k);
        }
      } else {
        for (int64_t j = 0; j < c; ++j) acc += w[j] * load(xr, idx[j]);
      }
      store(y + i * a.ldy + o, acc + b);
    }
  }
  return -1;
}

}  // namespace

int64_t linear_scalar(const LinearArgs& a, int64_t o_begin, int64_t o_end) {
  switch (a.dtype) {
    case DType::f32: return run<float>(a, o_begin, o_end);
    case DType::bf16: return run<bf16_t>(a, o_begin, o_end);
    case DType::f16: return run<f16_t>(a, o_begin, o_end);
  }
  return -1;
}

}  // namespace sparseops::nm
