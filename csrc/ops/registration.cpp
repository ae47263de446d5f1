// Every schema of torch.ops.sparseops lives here; implementations register per family
// (csrc/ops/<family>.cpp) with TORCH_LIBRARY_IMPL.
#include <torch/library.h>

TORCH_LIBRARY(sparseops, m) {
  // N:M weights, format "nm-bitmask" v1 (csrc/kernels/nm/nm.h).
  m.def("nm_linear(Tensor x, Tensor values, Tensor mask, int n, int m, int in_features, Tensor? bias=None) -> Tensor");
  m.def("nm_decompress(Tensor values, Tensor mask, int n, int m, int in_features) -> Tensor");
  m.def("nm_validate(Tensor values, Tensor mask, int n, int m, int in_features) -> ()");
  // Unstructured CSR weights, format "csr" v1 (csrc/kernels/csr/csr.h). csr_linear: y = x @ W^T + bias with
  // W given by row_ptr int64 [O+1], cols int16 (uint16 bits) or int32, values; csr_spmm: torch CSR a @ b.
  m.def("csr_linear(Tensor x, Tensor row_ptr, Tensor cols, Tensor values, int in_features, Tensor? bias=None) -> Tensor");
  m.def("csr_spmm(Tensor crow_indices, Tensor col_indices, Tensor values, int ncols, Tensor b) -> Tensor");
  m.def("csr_validate(Tensor row_ptr, Tensor cols, Tensor values, int in_features) -> ()");
  // Bitmap KV cache, format "kv-bitmap" v1 (csrc/kernels/kv/kv.h).
  m.def("kv_compress(Tensor x, int k) -> (Tensor bits, Tensor vals)");
  m.def("kv_validate(Tensor bits, Tensor vals, int length) -> ()");
  m.def("kv_decompress(Tensor bits, Tensor vals, int length) -> Tensor");
  m.def("kv_decode_attention(Tensor q, Tensor k_bits, Tensor k_vals, Tensor v_bits, Tensor v_vals, int length, "
        "float? scale=None, Tensor? k_tail=None, Tensor? v_tail=None) -> (Tensor out, Tensor lse)");
  // Block-sparse attention (csrc/kernels/attn/attn.h): returns (out, lse fp32 [B, Hq, Lq]).
  m.def("block_sparse_attention(Tensor q, Tensor k, Tensor v, Tensor kv_num_blocks, Tensor kv_indices, "
        "Tensor? full_kv_num_blocks, Tensor? full_kv_indices, int block_q, int block_k, bool is_causal=False, "
        "float? scale=None) -> (Tensor, Tensor)");
}
