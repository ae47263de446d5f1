// vpermps controls that place a bitmap byte's kept fp32 values in their 8 lanes: lane j of mask byte b takes
// value number (set bits of b below j). Shared by the AVX2 N:M and KV kernels; plain data, so it carries no ISA
// flags (half.h explains why that matters).
#pragma once
#include <cstdint>

namespace sparseops {
namespace {

struct PermPlace {
  // Value number for a kept lane; INT32_MIN for a pruned one: vpermps reads only the low 3 bits (lane 0), and
  // the sign bit lets one blendv zero the lane.
  alignas(32) int32_t perm[256][8];
  PermPlace() {
    for (int b = 0; b < 256; ++b)
      for (int j = 0, r = 0; j < 8; ++j) perm[b][j] = ((b >> j) & 1) ? r++ : INT32_MIN;
  }
};

static inline const PermPlace& perm_place() {
  static const PermPlace p;
  return p;
}

}  // namespace
}  // namespace sparseops
