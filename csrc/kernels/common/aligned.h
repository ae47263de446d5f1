// Zeroed fp32 scratch that starts on a 64-byte boundary. A std::vector<float> is only 16-byte aligned, and a
// large one comes from mmap at 16 bytes past a page, so every 64-byte vector load of its rows straddled two
// cache lines (measured on Zen 5: the N:M kept-only GEMM ran 1.4-1.6x slower in the runs where it did).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace sparseops {

// The first 64-byte boundary at or after p.
static inline float* align64(float* p) {
  return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(p) + 63) & ~uintptr_t(63));
}

struct AlignedF32 {
  std::vector<float> v;
  float* p;
  explicit AlignedF32(size_t n) : v(n + 16, 0.0f), p(align64(v.data())) {}
  AlignedF32(const AlignedF32&) = delete;
  AlignedF32(AlignedF32&&) = default;  // the buffer moves with v, so p stays valid
};

}  // namespace sparseops
