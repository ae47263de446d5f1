// Dense reference linear kernels (torch-free): the baseline the native bench compares N:M against,
// and a second opinion for the C++ tests. Same shape of API as nm.h.
#pragma once
#include <cstdint>

#include "../common/cpu_features.h"
#include "../nm/nm.h"

namespace sparseops::dense {

using nm::DType;

struct LinearArgs {
  DType dtype;             // x, w, bias and y share one dtype
  int64_t M, K, O;
  const void* x;           // x[i, k] at x + i * ldx + k (elements)
  int64_t ldx;
  const void* w;           // w[o, k] at w + o * ldw + k (elements), row-major [O, K]
  int64_t ldw;
  const void* bias;        // [O] or nullptr
  void* y;                 // y[i, o] at y + i * ldy + o (elements)
  int64_t ldy;
};

// y[:, o_begin:o_end] = x @ w[o_begin:o_end]^T + bias, fp32 accumulation, one rounding at the end.
using LinearFn = void (*)(const LinearArgs&, int64_t o_begin, int64_t o_end);
void linear_scalar(const LinearArgs&, int64_t o_begin, int64_t o_end);
void linear_avx2(const LinearArgs&, int64_t o_begin, int64_t o_end);
void linear_avx512(const LinearArgs&, int64_t o_begin, int64_t o_end);
void linear_neon(const LinearArgs&, int64_t o_begin, int64_t o_end);
// The variant for an ISA (nullptr if not compiled for this architecture).
LinearFn linear_kernel(Isa isa);

}  // namespace sparseops::dense
