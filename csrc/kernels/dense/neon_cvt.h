// bf16/fp16 -> fp32 block conversion with baseline armv8-a NEON (FCVTL needs no +fp16).
// Include only from *_neon.cpp files.
#pragma once
#include <arm_neon.h>

#include "dense_tile.h"

namespace sparseops::tile {
namespace {

struct NeonCvt {
  static void bf16(const uint16_t* s, float* d, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
      uint16x8_t h = vld1q_u16(s + i);
      vst1q_f32(d + i, vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(h), 16)));
      vst1q_f32(d + i + 4, vreinterpretq_f32_u32(vshll_high_n_u16(h, 16)));
    }
    for (; i < n; ++i) d[i] = bf16_to_f32(s[i]);
  }
  static void f16(const uint16_t* s, float* d, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
      float16x8_t h = vreinterpretq_f16_u16(vld1q_u16(s + i));
      vst1q_f32(d + i, vcvt_f32_f16(vget_low_f16(h)));
      vst1q_f32(d + i + 4, vcvt_high_f32_f16(h));
    }
    for (; i < n; ++i) d[i] = f16_to_f32(s[i]);
  }
};

}  // namespace
}  // namespace sparseops::tile
