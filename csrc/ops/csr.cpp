// ATen glue for CSR weights (format "csr" v1, csrc/kernels/csr/csr.h): checks, B packing, threading
// balanced by entries, ISA dispatch, the dense-tile GEMM at large M and density, and the dense recomputation of
// non-finite inputs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/csr/csr.h"
#include "ops/common.h"

namespace sparseops::ops {
namespace {

csr::DType csr_dtype(const at::Tensor& t, const char* what) {
  return static_cast<csr::DType>(static_cast<int>(kernel_dtype(t, what)));
}

void fail_problem(csr::Problem p, int64_t where, int64_t O, int64_t nnz, int64_t K, const char* who) {
  switch (p) {
    case csr::kFirstNotZero: TORCH_CHECK(false, who, ": malformed CSR: row pointers must start at 0");
    case csr::kDecreasing:
      TORCH_CHECK(false, who, ": malformed CSR: row pointers decrease at row ", where, " (must be non-decreasing)");
    case csr::kLastNotNnz:
      TORCH_CHECK(false, who, ": malformed CSR: the last row pointer (row ", O, ") must equal nnz=", nnz);
    case csr::kColOutOfRange:
      TORCH_CHECK(false, who, ": malformed CSR: column index of entry ", where, " is outside [0, ", K, ")");
    default: return;
  }
}

// Shapes, dtypes and devices of a sparseops CSRWeight (row_ptr int64 [O+1], cols int16/int32 [nnz]).
void check_weight(const at::Tensor& row_ptr, const at::Tensor& cols, const at::Tensor& values, int64_t K,
                  const char* who) {
  TORCH_CHECK(K >= 0, who, ": in_features must be >= 0, got ", K);
  TORCH_CHECK(row_ptr.dim() == 1 && row_ptr.numel() >= 1 && row_ptr.scalar_type() == at::kLong, who,
              ": row_ptr must be a 1-D int64 tensor [out_features + 1], got ", row_ptr.scalar_type(), " ",
              row_ptr.sizes());
  TORCH_CHECK(cols.dim() == 1 && (cols.scalar_type() == at::kShort || cols.scalar_type() == at::kInt), who,
              ": cols must be 1-D int16 (uint16 bits, in_features <= 65536) or int32, got ", cols.scalar_type(),
              " ", cols.sizes());
  TORCH_CHECK(cols.scalar_type() == at::kInt || K <= 65536, who, ": int16 column indices need in_features <= 65536, got ",
              K);
  TORCH_CHECK(values.dim() == 1 && values.numel() == cols.numel(), who, ": values has shape ", values.sizes(),
              " but cols has ", cols.numel(), " entries");
  kernel_dtype(values, who);
  TORCH_CHECK(row_ptr.device().is_cpu() && cols.device().is_cpu() && values.device().is_cpu(), who,
              ": the CPU kernel got row_ptr on ", row_ptr.device(), ", cols on ", cols.device(), ", values on ",
              values.device());
}

void check_row_ptr(const at::Tensor& row_ptr, int64_t nnz, const char* who) {
  int64_t where = 0;
  const int64_t O = row_ptr.numel() - 1;
  const csr::Problem p = csr::validate_row_ptr(row_ptr.data_ptr<int64_t>(), O, nnz, &where);
  fail_problem(p, where, O, nnz, -1, who);
}

// The decoder's view of a CSR weight (cols int16 holding uint16, or int32).
csr::SpmmArgs weight_args(const at::Tensor& row_ptr, const at::Tensor& cols, const at::Tensor& values, int64_t K,
                          const char* who) {
  csr::SpmmArgs a{};
  a.dtype = csr_dtype(values, who);
  a.index = cols.scalar_type() == at::kShort ? csr::Index::u16 : csr::Index::i32;
  a.O = row_ptr.numel() - 1; a.K = K;
  a.row_ptr = row_ptr.data_ptr<int64_t>();
  a.cols = cols.data_ptr(); a.values = values.data_ptr();
  return a;
}

void check_columns(int64_t bad, int64_t K, const char* who) {
  TORCH_CHECK(bad < 0, who, ": malformed CSR: row ", bad, " has a column index outside [0, ", K, ")");
}

// Dense [O, K] in values' dtype (entries with the same column add up, as torch's to_dense does).
at::Tensor dense_weight(const at::Tensor& row_ptr, const at::Tensor& cols, const at::Tensor& values, int64_t K,
                        const char* who) {
  const csr::SpmmArgs a = weight_args(row_ptr, cols, values, K, who);
  at::Tensor dense = empty_output({a.O, K}, values.options());
  std::atomic<int64_t> bad{-1};
  at::parallel_for(0, a.O, 64, [&](int64_t b, int64_t e) {
    const int64_t r = csr::decompress_rows(a, static_cast<char*>(dense.data_ptr()) + b * K * values.element_size(),
                                           K, b, e);
    if (r >= 0) {
      int64_t expected = -1;
      bad.compare_exchange_strong(expected, r);
    }
  });
  check_columns(bad.load(), K, who);
  return dense;
}

// out = A @ B (+ bias) for B given as (k, j) -> src + k*sk + j*sj; y element (o, j) at y + o*so + j*sj_out.
// Returns the columns of B that hold NaN/Inf (the caller recomputes them densely).
std::vector<int64_t> run_spmm(const at::Tensor& row_ptr, const at::Tensor& cols, const at::Tensor& values,
                              const at::Tensor& bias, int64_t K, const void* src, int64_t sk, int64_t sj, int64_t N,
                              void* y, int64_t so, int64_t sj_out, const char* who) {
  const int64_t O = row_ptr.numel() - 1;
  const csr::DType dt = csr_dtype(values, who);
  const Isa isa = current_isa();
  const int64_t ldb = csr::packed_ld(N, isa);
  at::Tensor packed = at::empty({K * ldb}, values.options().dtype(at::kFloat));
  std::vector<uint8_t> nonfinite(N, 0);
  float* b = packed.data_ptr<float>();
  const int64_t jblocks = (ldb + 15) / 16;
  const csr::PackFn pack = csr::pack_b_kernel(isa);
  at::parallel_for(0, jblocks, std::max<int64_t>(1, 2048 / std::max<int64_t>(1, K)), [&](int64_t jb, int64_t je) {
    pack(dt, src, sk, sj, K, N, b, ldb, nonfinite.data(), jb * 16, std::min(ldb, je * 16));
  });

  csr::SpmmArgs a{};
  a.dtype = dt;
  a.index = cols.scalar_type() == at::kShort ? csr::Index::u16 : csr::Index::i32;
  a.O = O; a.K = K; a.N = N;
  a.row_ptr = row_ptr.data_ptr<int64_t>();
  a.cols = cols.data_ptr(); a.values = values.data_ptr();
  a.b = b; a.ldb = ldb;
  a.bias = bias.defined() ? bias.data_ptr() : nullptr;
  a.y = y; a.so = so; a.sj = sj_out;
  const csr::SpmmFn fn = csr::spmm_kernel(isa);
  // Parts of about equal entries (rows differ in length); a few per thread so late ones even out.
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(O, int64_t(at::get_num_threads()) * 8));
  std::vector<int64_t> bounds(parts + 1);
  csr::balanced_splits(a.row_ptr, O, parts, bounds.data());
  std::atomic<int64_t> bad{-1};
  at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t r = fn(a, bounds[p], bounds[p + 1]);
      if (r >= 0) {
        int64_t expected = -1;
        bad.compare_exchange_strong(expected, r);
        return;
      }
    }
  });
  check_columns(bad.load(), K, who);
  std::vector<int64_t> cols_bad;
  for (int64_t j = 0; j < N; ++j)
    if (nonfinite[j]) cols_bad.push_back(j);
  return cols_bad;
}

// Where a dense GEMM on the decoded weight beats the sparse kernel (bench/results/csr-bf16-paths-zen4-2c-be4a605,
// both paths forced in one sitting on Zen 4): bf16 above density 0.4 from M = 32 (tiles 0.55-0.65x dense at M=32
// where the kernel ran 0.48-0.51x) and above 0.25 from M = 128; below those the kernel won (density 0.3 at M=64:
// 0.77-0.87x against 0.57-0.76x; M=16: 0.50-1.64x against 0.36-0.84x, decoding the weight costing as much as the
// small GEMM). Only where torch's bf16 GEMM has dot products (AVX512-BF16: 2.2x the fp32 rate; elsewhere its bf16
// GEMM is far slower than the kernel). fp32 never: MKL is only ~1.1x our kernel at density 0.5, M=128, less
// than the decode costs. With AMX (oneDNN's bf16 GEMM at ~2.5 TFLOP/s on two Xeon cores) the tiles win at
// M = 128 down to density 0.1 (3.6 / 10.3 ms against the kernel's 6.7 / 16.2 ms; at 0.05 a tie or a loss) while
// M = 16 stays with the kernel (bench/results/csr-bf16-paths-xeon2c-f3b4f8d, both forced in one sitting).
// SPARSEOPS_CSR_LARGE_M=kernel|tiles forces a path (tests, benchmarks).
bool use_dense_tiles(int64_t M, int64_t O, int64_t K, int64_t nnz, csr::DType dt) {
  const char* force = std::getenv("SPARSEOPS_CSR_LARGE_M");
  if (force && std::strcmp(force, "kernel") == 0) return false;
  if (force && std::strcmp(force, "tiles") == 0) return M > 1;
  const double density = static_cast<double>(nnz) / (static_cast<double>(O) * static_cast<double>(K));
  const double sparse_floor = cpu_features().amx_bf16 ? 0.07 : 0.25;
  return dt == csr::DType::bf16 && cpu_features().avx512_bf16 &&
         ((M >= 32 && density > 0.4) || (M >= 128 && density > sparse_floor));
}

at::Tensor check_bias(const std::optional<at::Tensor>& bias_in, int64_t O, const at::Tensor& x, const char* who) {
  if (!bias_in.has_value() || !bias_in->defined()) return {};
  at::Tensor bias = bias_in->contiguous();
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == O, who, ": bias has shape ", bias.sizes(), ", expected [", O, "]");
  TORCH_CHECK(bias.scalar_type() == x.scalar_type() && bias.device().is_cpu(), who, ": bias is ", bias.scalar_type(),
              " on ", bias.device(), ", expected ", x.scalar_type(), " on cpu");
  return bias;
}

at::Tensor csr_linear_cpu(const at::Tensor& x, const at::Tensor& row_ptr_in, const at::Tensor& cols_in,
                          const at::Tensor& values_in, int64_t K, const std::optional<at::Tensor>& bias_in) {
  const char* who = "sparseops.csr.linear";
  check_weight(row_ptr_in, cols_in, values_in, K, who);
  TORCH_CHECK(x.device().is_cpu(), who, ": the CPU kernel got x on ", x.device());
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == K, who, ": x has shape ", x.sizes(), " but the weight has in_features=", K);
  TORCH_CHECK(x.scalar_type() == values_in.scalar_type(), who, ": x is ", x.scalar_type(), " but the weight is ",
              values_in.scalar_type(), " (cast one of them)");
  at::Tensor row_ptr = row_ptr_in.contiguous(), cols = cols_in.contiguous(), values = values_in.contiguous();
  const int64_t O = row_ptr.numel() - 1, nnz = cols.numel();
  check_row_ptr(row_ptr, nnz, who);
  at::Tensor bias = check_bias(bias_in, O, x, who);
  at::Tensor x2 = x.reshape({-1, K});
  const int64_t M = x2.size(0);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end() - 1);
  out_shape.push_back(O);
  at::Tensor y = empty_output({M, O}, x.options());
  if (M == 0 || O == 0) return y.view(out_shape);
  if (K == 0 || nnz == 0) {  // no entries: the bias alone (a zero-width x has nothing to propagate)
    if (bias.defined()) y.copy_(bias.expand({M, O})); else y.zero_();
    if (K > 0) {  // dense math still turns a NaN/Inf input row into NaN outputs
      at::Tensor rows_bad = at::logical_not(at::isfinite(x2)).any(1);
      y.masked_fill_(rows_bad.unsqueeze(1), std::numeric_limits<float>::quiet_NaN());
    }
    return y.view(out_shape);
  }
  if (use_dense_tiles(M, O, K, nnz, csr_dtype(values, who))) {
    const csr::SpmmArgs a = weight_args(row_ptr, cols, values, K, who);
    check_columns(dense_tile_gemm(x2, bias, values, O, K, y,
                                  [&](void* dst, int64_t b, int64_t e) { return csr::decompress_rows(a, dst, K, b, e); }),
                  K, who);
    return y.view(out_shape);
  }
  // B = x^T: element (k, i) at x2 + k * stride(1) + i * stride(0); y element (o, i) at y + o + i * O.
  std::vector<int64_t> bad = run_spmm(row_ptr, cols, values, bias, K, x2.data_ptr(), x2.stride(1), x2.stride(0), M,
                                      y.data_ptr(), 1, O, who);
  if (!bad.empty()) {
    at::Tensor idx = at::tensor(bad, at::kLong);
    at::Tensor w = dense_weight(row_ptr, cols, values, K, who);
    at::Tensor yb = at::matmul(x2.index_select(0, idx).to(at::kFloat), w.to(at::kFloat).t());
    if (bias.defined()) yb = yb + bias.to(at::kFloat);
    y.index_copy_(0, idx, yb.to(x.scalar_type()));
  }
  return y.view(out_shape);
}

at::Tensor csr_spmm_cpu(const at::Tensor& crow_in, const at::Tensor& col_in, const at::Tensor& values_in, int64_t K,
                        const at::Tensor& b) {
  const char* who = "sparseops.csr.spmm";
  TORCH_CHECK(crow_in.dim() == 1 && crow_in.numel() >= 1 &&
                  (crow_in.scalar_type() == at::kInt || crow_in.scalar_type() == at::kLong),
              who, ": crow_indices must be a 1-D int32 or int64 tensor, got ", crow_in.scalar_type(), " ",
              crow_in.sizes());
  TORCH_CHECK(col_in.dim() == 1 && (col_in.scalar_type() == at::kInt || col_in.scalar_type() == at::kLong), who,
              ": col_indices must be a 1-D int32 or int64 tensor, got ", col_in.scalar_type(), " ", col_in.sizes());
  TORCH_CHECK(values_in.dim() == 1 && values_in.numel() == col_in.numel(), who, ": values has ", values_in.numel(),
              " entries but col_indices has ", col_in.numel(), " (nnz mismatch)");
  kernel_dtype(values_in, who);
  TORCH_CHECK(b.dim() == 2 && b.size(0) == K, who, ": b has shape ", b.sizes(), " but a has ", K, " columns");
  TORCH_CHECK(b.scalar_type() == values_in.scalar_type(), who, ": b is ", b.scalar_type(), " but a is ",
              values_in.scalar_type());
  TORCH_CHECK(b.device().is_cpu() && crow_in.device().is_cpu() && col_in.device().is_cpu() &&
                  values_in.device().is_cpu(),
              who, ": the CPU kernel got a on ", values_in.device(), " and b on ", b.device());
  at::Tensor row_ptr = crow_in.to(at::kLong).contiguous(), col = col_in.contiguous();
  at::Tensor values = values_in.contiguous();
  const int64_t O = row_ptr.numel() - 1, nnz = col.numel(), N = b.size(1);
  int64_t where = 0;
  // Torch does not check its CSR invariants: every index is checked here before a kernel reads it.
  const csr::Problem p =
      csr::validate(row_ptr.data_ptr<int64_t>(), O, col.data_ptr(), col.scalar_type() == at::kLong, nnz, K, &where);
  fail_problem(p, where, O, nnz, K, who);
  at::Tensor out = empty_output({O, N}, b.options());
  if (O == 0 || N == 0) return out;
  if (K == 0 || nnz == 0) {
    out.zero_();
    if (K > 0) out.masked_fill_(at::logical_not(at::isfinite(b)).any(0).unsqueeze(0), std::numeric_limits<float>::quiet_NaN());
    return out;
  }
  TORCH_CHECK(K <= std::numeric_limits<int32_t>::max(), who, ": more than 2^31 columns is not supported");
  if (col.scalar_type() == at::kLong) col = col.to(at::kInt);  // validated < K <= INT32_MAX: narrowing is exact
  std::vector<int64_t> bad = run_spmm(row_ptr, col, values, at::Tensor(), K, b.data_ptr(), b.stride(0), b.stride(1),
                                      N, out.data_ptr(), N, 1, who);
  if (!bad.empty()) {
    at::Tensor idx = at::tensor(bad, at::kLong);
    at::Tensor w = dense_weight(row_ptr, col, values, K, who).to(at::kFloat);
    out.index_copy_(1, idx, at::matmul(w, b.index_select(1, idx).to(at::kFloat)).to(b.scalar_type()));
  }
  return out;
}

void csr_validate_cpu(const at::Tensor& row_ptr_in, const at::Tensor& cols_in, const at::Tensor& values,
                      int64_t K) {
  const char* who = "sparseops.csr";
  check_weight(row_ptr_in, cols_in, values, K, who);
  at::Tensor row_ptr = row_ptr_in.contiguous();
  at::Tensor cols = cols_in.scalar_type() == at::kShort ? at::bitwise_and(cols_in.to(at::kInt), 0xffff)
                                                        : cols_in.contiguous();
  const int64_t O = row_ptr.numel() - 1, nnz = cols.numel();
  int64_t where = 0;
  const csr::Problem p = csr::validate(row_ptr.data_ptr<int64_t>(), O, cols.data_ptr(), false, nnz, K, &where);
  fail_problem(p, where, O, nnz, K, who);
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseops, CPU, m) {
  m.impl("csr_linear", &csr_linear_cpu);
  m.impl("csr_spmm", &csr_spmm_cpu);
  m.impl("csr_validate", &csr_validate_cpu);
}

}  // namespace sparseops::ops
