// vpshufb controls that place a bitmap byte's kept bf16 values in 8 fp32 lanes and widen them in one
// shuffle (bf16 -> fp32 is "the 16 bits go to the top of the lane"). Shared by the AVX2 N:M and KV
// kernels; plain data, so it carries no ISA flags (half.h explains why that matters).
//
// Source: 16 bytes of consecutive bf16 values broadcast to both 128-bit halves. For mask byte b,
// column j (half j / 4, 32-bit slot j % 4) takes value number off + (set bits of b below j) into its
// top 16 bits; the bottom 16 bits and every pruned column get 0x80 (zero).
#pragma once
#include <cstdint>

namespace sparseops {
namespace {

struct Bf16Place {
  static constexpr int kMaxOff = 4;
  alignas(32) uint8_t t[kMaxOff + 1][256][32];  // [value offset][mask byte] -> vpshufb control
  Bf16Place() {
    for (int off = 0; off <= kMaxOff; ++off)
      for (int b = 0; b < 256; ++b)
        for (int j = 0, r = 0; j < 8; ++j) {
          uint8_t* lane = &t[off][b][4 * j];
          const bool kept = (b >> j) & 1;
          // Indices wrap past 15 only for bytes holding more values than the 16-byte source has room
          // for; callers reject or never build those, and a wrapped index still reads inside the source.
          const int src = 2 * (r + off) & 15;
          lane[0] = lane[1] = 0x80;
          lane[2] = kept ? static_cast<uint8_t>(src) : 0x80;
          lane[3] = kept ? static_cast<uint8_t>(src + 1) : 0x80;
          r += kept;
        }
  }
};

static inline const Bf16Place& bf16_place() {
  static const Bf16Place p;
  return p;
}

}  // namespace
}  // namespace sparseops
