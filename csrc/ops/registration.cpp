// Every schema of torch.ops.sparseops lives here; implementations register per family
// (csrc/ops/<family>.cpp) with TORCH_LIBRARY_IMPL.
#include <torch/library.h>

TORCH_LIBRARY(sparseops, m) {
  // N:M weights, format "nm-bitmask" v1 (csrc/kernels/nm/nm.h).
  m.def("nm_linear(Tensor x, Tensor values, Tensor mask, int n, int m, int in_features, Tensor? bias=None) -> Tensor");
  m.def("nm_decompress(Tensor values, Tensor mask, int n, int m, int in_features) -> Tensor");
  m.def("nm_validate(Tensor values, Tensor mask, int n, int m, int in_features) -> ()");
}
