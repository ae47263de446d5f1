// ATen glue for the CUDA N:M kernels (compiled only when the installed torch has CUDA). Uses c10/cuda
// only: ATen/cuda/CUDAContext.h pulls cuSPARSE/cuBLAS headers that our CPU machines lack.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <climits>

#include "cuda/nm_cuda.h"
#include "ops/common.h"

namespace sparseops::ops {
namespace {

void check_cuda(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, ": ", cudaGetErrorString(err));
}

// Set bits of each row's mask as a bool [O, ceil(K/8)*8] tensor (device-generic ATen ops).
at::Tensor mask_bits(const at::Tensor& mask) {
  auto shifts = at::arange(8, mask.options());
  return mask.unsqueeze(-1).bitwise_right_shift(shifts).bitwise_and(1).to(at::kBool).flatten(1);
}

void nm_validate_cuda(const at::Tensor& values, const at::Tensor& mask, int64_t n, int64_t m, int64_t K) {
  TORCH_CHECK(values.is_cuda() && mask.is_cuda(), "sparseops.nm_validate: expected CUDA tensors");
  TORCH_CHECK(values.dim() == 2 && values.size(1) == K / m * n && K % m == 0 && mask.dim() == 2 &&
                  mask.scalar_type() == at::kByte && mask.size(0) == values.size(0) && mask.size(1) == (K + 7) / 8,
              "sparseops.nm_validate: values ", values.sizes(), " / mask ", mask.sizes(), " do not fit ", n, ":", m,
              " with in_features=", K);
  auto bits = mask_bits(mask);
  auto counts = bits.narrow(1, 0, K).view({values.size(0), K / m, m}).sum(-1);
  auto bad = (counts != n).nonzero();
  if (bad.size(0) > 0) {
    auto first = bad[0].cpu();
    const int64_t row = first[0].item<int64_t>(), g = first[1].item<int64_t>();
    TORCH_CHECK(false, "sparseops.nm: malformed mask: row ", row, ", group ", g, " (columns ", g * m, "..",
                g * m + m - 1, ") does not keep exactly ", n, " of ", m, " entries");
  }
  if (bits.size(1) > K) {
    auto pad = bits.narrow(1, K, bits.size(1) - K).any(1).nonzero();
    TORCH_CHECK(pad.size(0) == 0, "sparseops.nm: malformed mask: row ", pad.size(0) ? pad[0][0].item<int64_t>() : 0,
                " has bits set past in_features=", K);
  }
}

at::Tensor nm_decompress_cuda(const at::Tensor& values, const at::Tensor& mask, int64_t n, int64_t m, int64_t K) {
  nm_validate_cuda(values, mask, n, m, K);
  auto keep = mask_bits(mask.contiguous()).narrow(1, 0, K);
  auto dense = at::zeros({values.size(0), K}, values.options());
  // Boolean indexing walks rows in order and columns ascending: the order values are stored in.
  dense.index_put_({keep}, values.contiguous().flatten());
  return dense;
}

at::Tensor nm_linear_cuda(const at::Tensor& x, const at::Tensor& values_in, const at::Tensor& mask_in, int64_t n,
                          int64_t m, int64_t K, const std::optional<at::Tensor>& bias_in) {
  TORCH_CHECK(nm::pattern_supported(static_cast<int>(n), static_cast<int>(m)) && K > 0 && K % m == 0,
              "sparseops.nm_linear: unsupported pattern ", n, ":", m, " with in_features=", K);
  TORCH_CHECK(x.is_cuda() && values_in.is_cuda() && mask_in.is_cuda() && x.device() == values_in.device() &&
                  mask_in.device() == values_in.device(),
              "sparseops.nm_linear: x (", x.device(), "), values (", values_in.device(), ") and mask (",
              mask_in.device(), ") must be on one CUDA device");
  TORCH_CHECK(x.size(-1) == K, "sparseops.nm_linear: x has shape ", x.sizes(), " but in_features=", K);
  TORCH_CHECK(x.scalar_type() == values_in.scalar_type(), "sparseops.nm_linear: x is ", x.scalar_type(),
              " but the weight is ", values_in.scalar_type());
  TORCH_CHECK(values_in.dim() == 2 && values_in.size(1) == K / m * n, "sparseops.nm_linear: values has shape ",
              values_in.sizes(), ", expected [out_features, ", K / m * n, "]");
  TORCH_CHECK(mask_in.scalar_type() == at::kByte && mask_in.dim() == 2 && mask_in.size(0) == values_in.size(0) &&
                  mask_in.size(1) == (K + 7) / 8,
              "sparseops.nm_linear: mask has shape ", mask_in.sizes(), " and dtype ", mask_in.scalar_type(),
              ", expected uint8 [", values_in.size(0), ", ", (K + 7) / 8, "]");
  const int64_t O = values_in.size(0);
  TORCH_CHECK(O < INT_MAX, "sparseops.nm_linear: out_features too large for the CUDA kernel");
  c10::cuda::CUDAGuard guard(x.device());
  const nm::DType dt = kernel_dtype(x, "sparseops.nm_linear: x");
  at::Tensor bias;
  if (bias_in.has_value() && bias_in->defined()) {
    bias = bias_in->contiguous();
    TORCH_CHECK(bias.dim() == 1 && bias.size(0) == O && bias.scalar_type() == x.scalar_type() &&
                    bias.device() == x.device(),
                "sparseops.nm_linear: bias must be [", O, "] ", x.scalar_type(), " on ", x.device());
  }
  at::Tensor values = values_in.contiguous(), mask = mask_in.contiguous();
  at::Tensor x2 = x.reshape({-1, K}).contiguous();
  const int64_t M = x2.size(0);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end() - 1);
  out_shape.push_back(O);
  at::Tensor y = at::empty({M, O}, x.options());
  if (M == 0 || O == 0) return y.view(out_shape);
  at::Tensor workspace = at::empty({static_cast<int64_t>(cuda::nm_linear_workspace_bytes(M, K))},
                                   x.options().dtype(at::kByte));
  at::Tensor bad = at::full({1}, INT_MAX, x.options().dtype(at::kInt));
  check_cuda(cuda::nm_linear(dt, static_cast<int>(n), static_cast<int>(m), M, K, O, x2.data_ptr(), K,
                             values.data_ptr(), mask.data_ptr<uint8_t>(), bias.defined() ? bias.data_ptr() : nullptr,
                             y.data_ptr(), O, bad.data_ptr<int>(), workspace.data_ptr(),
                             c10::cuda::getCurrentCUDAStream()),
             "sparseops.nm_linear (CUDA)");
  // The mask check costs one tiny device-to-host copy; malformed weights must not pass silently.
  const int bad_row = bad.item<int>();
  TORCH_CHECK(bad_row == INT_MAX, "sparseops.nm_linear: malformed N:M mask in row ", bad_row,
              ": it does not keep exactly ", n, " of every ", m, " entries");
  return y.view(out_shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseops, CUDA, m) {
  m.impl("nm_linear", &nm_linear_cuda);
  m.impl("nm_validate", &nm_validate_cuda);
  m.impl("nm_decompress", &nm_decompress_cuda);
}

}  // namespace sparseops::ops
