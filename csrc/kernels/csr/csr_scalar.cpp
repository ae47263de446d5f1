// Scalar CSR variant: the reference the vector variants are tested against, and the fallback.
#include "csr_impl.h"

namespace sparseops::csr {
namespace {

struct ScalarOps {
  static constexpr int W = 16;
  static constexpr int kMaxNV = 2;

  template <class V, class I>
  static float dot(const V* v, const I* c, int64_t n, int64_t, const float* x, uint32_t K, bool* bad) {
    float s[4] = {0.f, 0.f, 0.f, 0.f};  // four chains hide the add latency
    uint32_t over = 0;                  // any index >= K (as unsigned, so negative int32 counts too)
    for (int64_t j = 0; j < n; ++j) {
      const uint32_t k = static_cast<uint32_t>(c[j]);
      const bool ok = k < K;
      over |= !ok;
      s[j & 3] += to_f32(v[j]) * x[ok ? k : 0];
    }
    *bad = over != 0;
    return (s[0] + s[1]) + (s[2] + s[3]);
  }

  template <int NV, class V, class I>
  static void tile(const V* v, const I* c, int64_t n, const float* b, int64_t ldb, uint32_t K, float* out,
                   bool* bad) {
    float acc[NV * W] = {};
    for (int64_t j = 0; j < n; ++j) {
      if (static_cast<uint32_t>(c[j]) >= K) {
        *bad = true;
        return;
      }
      const float w = to_f32(v[j]);
      const float* row = b + static_cast<int64_t>(c[j]) * ldb;
      for (int t = 0; t < NV * W; ++t) acc[t] += w * row[t];
    }
    for (int t = 0; t < NV * W; ++t) out[t] = acc[t];
  }
};

static_assert(ScalarOps::kMaxNV * ScalarOps::W == tile_columns(Isa::scalar), "packed_ld pads by this tile width");

}  // namespace

int64_t spmm_scalar(const SpmmArgs& a, int64_t o_begin, int64_t o_end) { return run<ScalarOps>(a, o_begin, o_end); }

}  // namespace sparseops::csr
