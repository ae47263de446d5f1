// CUDA N:M linear (format "nm-bitmask" v1, csrc/kernels/nm/nm.h), torch-free: raw pointers + stream.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/nm/nm.h"

namespace sparseops::cuda {

// y[i, o] = sum_k x[i, k] * W[o, k] + bias[o] for all M rows, fp32 accumulation.
// A bandwidth-oriented kernel for small M (decode): one warp per output row, each lane a 32-column
// chunk of that row. Never reads a value outside a chunk's fixed slice; if a chunk of the mask does not
// hold the expected number of bits, the row's output is unspecified and *bad_row (device memory,
// initialised by the caller to INT32_MAX; may be null) receives the smallest such row.
// `workspace` is device memory of nm_linear_workspace_bytes(M, K) bytes (a bitmap of x's non-finite
// entries, so pruned zeros meeting Inf/NaN give NaN as dense math does).
size_t nm_linear_workspace_bytes(int64_t M, int64_t K);
cudaError_t nm_linear(nm::DType dtype, int n, int m, int64_t M, int64_t K, int64_t O, const void* x, int64_t ldx,
                      const void* values, const uint8_t* mask, const void* bias, void* y, int64_t ldy,
                      int* bad_row, void* workspace, cudaStream_t stream);

}  // namespace sparseops::cuda
