// Shared helpers of the ATen glue.
#pragma once
#include <ATen/ATen.h>

#include <stdexcept>

#include "kernels/common/cpu_features.h"
#include "kernels/nm/nm.h"

namespace sparseops::ops {

// Kernel dtype of a floating tensor; a clear error for anything else.
inline nm::DType kernel_dtype(const at::Tensor& t, const char* what) {
  switch (t.scalar_type()) {
    case at::kFloat: return nm::DType::f32;
    case at::kBFloat16: return nm::DType::bf16;
    case at::kHalf: return nm::DType::f16;
    default: TORCH_CHECK(false, what, " must be float32, bfloat16 or float16, got ", t.scalar_type());
  }
}

// The ISA in use; turns a bad SPARSEOPS_ISA into a Python RuntimeError instead of a crash.
inline Isa current_isa() {
  try {
    return active_isa();
  } catch (const std::exception& e) {
    TORCH_CHECK(false, e.what());
  }
}

}  // namespace sparseops::ops
