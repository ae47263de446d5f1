// ISA-independent bitmap-KV pieces: dispatch, compression (per-token top-k), decompression,
// validation and the split-K merge.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "../common/half.h"
#include "kv.h"

namespace sparseops::kv {

PartialFn partial_kernel(Isa isa) {
  switch (isa) {
    case Isa::scalar: return partial_scalar;
#if defined(SPARSEOPS_X86)
    case Isa::avx2: return partial_avx2;
    case Isa::avx512: return partial_avx512;
#endif
#if defined(SPARSEOPS_AARCH64)
    case Isa::neon: return partial_neon;
#endif
    default: return nullptr;
  }
}

CompressFn compress_kernel(Isa isa) {
  switch (isa) {
#if defined(SPARSEOPS_X86)
    case Isa::avx2:
    case Isa::avx512: return compress_avx2;  // AVX-512 CPUs run the AVX2 compressor (appends are not the hot path)
#endif
#if defined(SPARSEOPS_AARCH64)
    case Isa::neon: return compress_neon;
#endif
    default: return compress;
  }
}

void compress(DType dtype, int D, int k, const void* x, uint8_t* bits, void* vals, int64_t r_begin,
              int64_t r_end) {
  const size_t es = dtype_size(dtype);
  const int nb = D / 8;
  // key = magnitude bits << 32 | (~channel): sorting keys descending ranks by |x|, then lower channel.
  std::vector<uint64_t> key(D);
  for (int64_t r = r_begin; r < r_end; ++r) {
    const char* xr = static_cast<const char*>(x) + r * D * es;
    uint8_t* br = bits + r * nb;
    char* vr = static_cast<char*>(vals) + r * k * es;
    std::memset(br, 0, nb);
    if (k == D) {
      std::memset(br, 0xff, nb);
      std::memcpy(vr, xr, D * es);
      continue;
    }
    for (int c = 0; c < D; ++c) {
      uint32_t mag;
      if (es == 4) { std::memcpy(&mag, xr + 4 * c, 4); mag &= 0x7fffffffu; }
      else { uint16_t h; std::memcpy(&h, xr + 2 * c, 2); mag = h & 0x7fffu; }
      key[c] = (static_cast<uint64_t>(mag) << 32) | (0xffffffffu - static_cast<uint32_t>(c));
    }
    std::nth_element(key.begin(), key.begin() + (k - 1), key.end(), std::greater<uint64_t>());
    for (int i = 0; i < k; ++i) {
      const uint32_t c = 0xffffffffu - static_cast<uint32_t>(key[i]);
      br[c >> 3] |= static_cast<uint8_t>(1u << (c & 7));
    }
    for (int c = 0, j = 0; c < D; ++c)
      if ((br[c >> 3] >> (c & 7)) & 1) std::memcpy(vr + (j++) * es, xr + c * es, es);
  }
}

void decompress(DType dtype, int D, int k, const uint8_t* bits, const void* vals, void* x, int64_t r_begin,
                int64_t r_end) {
  const size_t es = dtype_size(dtype);
  const int nb = D / 8;
  for (int64_t r = r_begin; r < r_end; ++r) {
    const uint8_t* br = bits + r * nb;
    const char* vr = static_cast<const char*>(vals) + r * k * es;
    char* xr = static_cast<char*>(x) + r * D * es;
    std::memset(xr, 0, D * es);
    for (int c = 0, j = 0; c < D && j < k; ++c)
      if ((br[c >> 3] >> (c & 7)) & 1) std::memcpy(xr + c * es, vr + (j++) * es, es);
  }
}

int64_t find_bad_record(int D, int k, const uint8_t* bits, int64_t r_begin, int64_t r_end) {
  const int nb = D / 8;
  for (int64_t r = r_begin; r < r_end; ++r) {
    int cnt = 0;
    for (int i = 0; i < nb; ++i) cnt += __builtin_popcount(bits[r * nb + i]);
    if (cnt != k) return r;
  }
  return -1;
}

void merge(const AttnArgs& a, int64_t b, int64_t h, const float* parts, int64_t nparts, void* out, float* lse) {
  const int64_t G = a.Hq / a.Hkv, R = G * a.Lq, D = a.D, stride = R * (D + 2);
  std::vector<float> acc(D);
  for (int64_t r = 0; r < R; ++r) {
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t p = 0; p < nparts; ++p) m = std::max(m, parts[p * stride + r * (D + 2)]);
    float l = 0.0f;
    std::fill(acc.begin(), acc.end(), 0.0f);
    if (m != -std::numeric_limits<float>::infinity()) {
      for (int64_t p = 0; p < nparts; ++p) {
        const float* pr = parts + p * stride + r * (D + 2);
        if (pr[0] == -std::numeric_limits<float>::infinity()) continue;
        const float w = std::exp(pr[0] - m);
        l += w * pr[1];
        for (int64_t d = 0; d < D; ++d) acc[d] += w * pr[2 + d];
      }
    }
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    // Row r = g * Lq + l of KV head h is query head h * G + g; out/lse rows are [B, Hq, Lq].
    const int64_t row = (b * a.Hq + h * G) * a.Lq + r;
    if (lse) lse[row] = l > 0.0f ? m + std::log(l) : -std::numeric_limits<float>::infinity();
    if (a.dtype == DType::f32) {
      float* o = static_cast<float*>(out) + row * D;
      for (int64_t d = 0; d < D; ++d) o[d] = acc[d] * inv;
    } else {
      uint16_t* o = static_cast<uint16_t*>(out) + row * D;
      for (int64_t d = 0; d < D; ++d)
        o[d] = a.dtype == DType::bf16 ? f32_to_bf16(acc[d] * inv) : f32_to_f16(acc[d] * inv);
    }
  }
}

}  // namespace sparseops::kv
