// vpshufb controls that place a bitmap byte's kept values in 8 fp32 lanes with one shuffle: fp32 values are
// moved whole, bf16 values go to the top 16 bits of their lane, which also widens them (bf16 -> fp32 is "the
// 16 bits go to the top"). Shared by the AVX2 N:M and KV kernels; plain data, so it carries no ISA flags
// (half.h explains why that matters).
//
// Source: 16 bytes of consecutive values broadcast to both 128-bit halves. For mask byte b, column j (half
// j / 4, 32-bit slot j % 4) takes value number off + (set bits of b below j); the rest of its lane and every
// pruned column get 0x80 (zero).
#pragma once
#include <cstdint>

namespace sparseops {
namespace {

template <int kEs, int kMaxOffset>  // value bytes (2: bf16, 4: fp32); largest value offset
struct ShufflePlace {
  static constexpr int kMaxOff = kMaxOffset;
  alignas(32) uint8_t t[kMaxOff + 1][256][32];  // [value offset][mask byte] -> vpshufb control
  ShufflePlace() {
    for (int off = 0; off <= kMaxOff; ++off)
      for (int b = 0; b < 256; ++b)
        for (int j = 0, r = 0; j < 8; ++j) {
          uint8_t* lane = &t[off][b][4 * j];
          const bool kept = (b >> j) & 1;
          // Indices wrap past 15 only for bytes holding more values than the 16-byte source has room
          // for; callers reject or never build those, and a wrapped index still reads inside the source.
          const int src = kEs * (r + off) & 15;
          for (int i = 0; i < 4; ++i)
            lane[i] = kept && i >= 4 - kEs ? static_cast<uint8_t>(src + i - (4 - kEs)) : 0x80;
          r += kept;
        }
  }
};
using Bf16Place = ShufflePlace<2, 4>;
using F32Place = ShufflePlace<4, 2>;

static inline const Bf16Place& bf16_place() {
  static const Bf16Place p;
  return p;
}
static inline const F32Place& f32_place() {
  static const F32Place p;
  return p;
}

}  // namespace
}  // namespace sparseops
