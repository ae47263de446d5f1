// Small-M N:M linear on CUDA. Each warp owns one output row; lane l walks chunks l, l+32, ... of 32
// columns. A chunk's kept values start at a fixed offset (every group keeps exactly n), so lanes need
// no prefix sums: they read their 32-bit slice of the bitmask and walk its set bits.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>

#include "cuda/nm_cuda.h"

namespace sparseops::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int kMaxRows = 8;  // x rows handled per launch pass (register accumulators)

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }

template <typename T, int R>
__global__ void nm_linear_kernel(int n, int m, int64_t rows, int64_t K, int64_t O, const T* __restrict__ x,
                                 int64_t ldx, const T* __restrict__ values, const uint8_t* __restrict__ mask,
                                 const T* __restrict__ bias, T* __restrict__ y, int64_t ldy, int* bad_row,
                                 const uint32_t* __restrict__ nonfinite) {
  const int lane = threadIdx.x & 31;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (o >= O) return;
  const int64_t kept_row = K / m * n, mask_row = (K + 7) / 8;
  const T* vrow = values + o * kept_row;
  const uint8_t* mrow = mask + o * mask_row;
  float acc[R];
#pragma unroll
  for (int r = 0; r < R; ++r) acc[r] = 0.f;
  bool bad = false;
  bool nan_row[R];
#pragma unroll
  for (int r = 0; r < R; ++r) nan_row[r] = false;
  const int64_t chunks = (K + 31) / 32;
  for (int64_t c = lane; c < chunks; c += 32) {
    const int64_t k0 = c * 32;
    const int width = static_cast<int>(K - k0 < 32 ? K - k0 : 32);  // a multiple of m
    uint32_t bits = 0;
    for (int b = 0; b < (width + 7) / 8; ++b) bits |= static_cast<uint32_t>(mrow[(k0 >> 3) + b]) << (8 * b);
    if (width < 32) {
      // Padding bits past K belong to no group; they must be zero.
      if (bits >> width) bad = true;
      bits &= (1u << width) - 1u;
    }
    const int expected = width / m * n;
    if (__popc(bits) != expected) bad = true;
    // Non-finite inputs at pruned positions: dense math multiplies them by 0 and gets NaN.
#pragma unroll
    for (int r = 0; r < R; ++r) nan_row[r] |= (nonfinite[r * chunks + c] & ~bits) != 0;
    const T* v = vrow + k0 / m * n;
    for (int j = 0; j < expected && bits; ++j) {
      const int col = __ffs(bits) - 1;
      bits &= bits - 1;
      const float w = to_f32(v[j]);
#pragma unroll
      for (int r = 0; r < R; ++r) acc[r] += w * to_f32(x[r * ldx + k0 + col]);
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r)
    if (nan_row[r]) acc[r] = __int_as_float(0x7fc00000);
#pragma unroll
  for (int r = 0; r < R; ++r)
    for (int off = 16; off > 0; off >>= 1) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], off);
  if (__any_sync(0xffffffffu, bad)) {
    if (lane == 0 && bad_row) atomicMin(bad_row, static_cast<int>(o < INT_MAX ? o : INT_MAX));
  }
  if (lane == 0) {
    const float b = bias ? to_f32(bias[o]) : 0.f;
#pragma unroll
    for (int r = 0; r < R; ++r) y[r * ldy + o] = from_f32<T>(acc[r] + b);
  }
}

// Bit (k % 32) of word [r, k / 32] is set iff x[r, k] is NaN or Inf.
template <typename T>
__global__ void nonfinite_bits_kernel(int64_t M, int64_t K, const T* __restrict__ x, int64_t ldx,
                                      uint32_t* __restrict__ out) {
  const int64_t chunks = (K + 31) / 32;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= M * chunks) return;
  const int64_t r = idx / chunks, c = idx % chunks;
  uint32_t word = 0;
  for (int j = 0; j < 32 && c * 32 + j < K; ++j)
    if (!isfinite(to_f32(x[r * ldx + c * 32 + j]))) word |= 1u << j;
  out[idx] = word;
}

template <typename T>
cudaError_t launch(int n, int m, int64_t M, int64_t K, int64_t O, const T* x, int64_t ldx, const T* values,
                   const uint8_t* mask, const T* bias, T* y, int64_t ldy, int* bad_row, void* workspace, cudaStream_t stream) {
  const int64_t chunks = (K + 31) / 32;
  uint32_t* nonfinite = static_cast<uint32_t*>(workspace);
  {
    const int64_t total = M * chunks;
    nonfinite_bits_kernel<T><<<static_cast<unsigned>((total + 255) / 256), 256, 0, stream>>>(M, K, x, ldx, nonfinite);
  }
  const dim3 block(32 * kWarpsPerBlock);
  const dim3 grid(static_cast<unsigned>((O + kWarpsPerBlock - 1) / kWarpsPerBlock));
  for (int64_t i = 0; i < M; i += kMaxRows) {
    const int64_t rows = M - i < kMaxRows ? M - i : kMaxRows;
    const T* xi = x + i * ldx;
    T* yi = y + i * ldy;
    switch (rows) {
#define SPARSEOPS_CASE(R) \
  case R: nm_linear_kernel<T, R><<<grid, block, 0, stream>>>(n, m, rows, K, O, xi, ldx, values, mask, bias, yi, ldy, bad_row, nonfinite + i * chunks); break;
      SPARSEOPS_CASE(1) SPARSEOPS_CASE(2) SPARSEOPS_CASE(3) SPARSEOPS_CASE(4)
      SPARSEOPS_CASE(5) SPARSEOPS_CASE(6) SPARSEOPS_CASE(7) SPARSEOPS_CASE(8)
#undef SPARSEOPS_CASE
    }
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace

size_t nm_linear_workspace_bytes(int64_t M, int64_t K) {
  return static_cast<size_t>(M) * static_cast<size_t>((K + 31) / 32) * sizeof(uint32_t);
}

cudaError_t nm_linear(nm::DType dtype, int n, int m, int64_t M, int64_t K, int64_t O, const void* x, int64_t ldx,
                      const void* values, const uint8_t* mask, const void* bias, void* y, int64_t ldy,
                      int* bad_row, void* workspace, cudaStream_t stream) {
  if (M == 0 || O == 0) return cudaSuccess;
  switch (dtype) {
    case nm::DType::f32:
      return launch(n, m, M, K, O, static_cast<const float*>(x), ldx, static_cast<const float*>(values), mask,
                    static_cast<const float*>(bias), static_cast<float*>(y), ldy, bad_row, workspace, stream);
    case nm::DType::bf16:
      return launch(n, m, M, K, O, static_cast<const __nv_bfloat16*>(x), ldx,
                    static_cast<const __nv_bfloat16*>(values), mask, static_cast<const __nv_bfloat16*>(bias),
                    static_cast<__nv_bfloat16*>(y), ldy, bad_row, workspace, stream);
    case nm::DType::f16:
      return launch(n, m, M, K, O, static_cast<const __half*>(x), ldx, static_cast<const __half*>(values), mask,
                    static_cast<const __half*>(bias), static_cast<__half*>(y), ldy, bad_row, workspace, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace sparseops::cuda
