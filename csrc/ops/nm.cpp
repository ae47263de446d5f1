// ATen glue for N:M weights (format "nm-bitmask" v1, csrc/kernels/nm/nm.h): checks, allocation,
// threading and ISA dispatch.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "kernels/nm/nm.h"
#include "ops/common.h"

namespace sparseops::ops {
namespace {

using nm::DType;

// Large M is compute bound. For bf16/fp16 the kernels (a kept-only GEMM from 40 rows on) beat
// torch's dense GEMM at every measured M. For fp32 at density 1/2 (2:4, 4:8), from kDenseTilesMinM rows on,
// the x86 kept-only GEMM on weights in huge pages (python/sparseops/_memory.py) measured 1.05-1.4x dense with
// AVX2 (Zen 3) and 1.4-1.8x with AVX-512 (Zen 4, where the dense-tile path below ran 0.69-1.09x); other ISAs
// (NEON, scalar) use the dense GEMM on decoded weight tiles until measured otherwise. Below that M the
// expanded kernels are used.
constexpr int64_t kDenseTilesMinM = 128;
constexpr int64_t kDenseTilesMinMBf16 = 40;  // where the kernel leaves bf16 dot products (sparse_min_m)
// SPARSEOPS_NM_LARGE_M=kernel|tiles forces one path for M >= kDenseTilesMinM (benchmarks, experiments).
// bf16 tiles only where torch's bf16 GEMM has hardware dot products (AVX512-BF16: oneDNN reaches ~2.4x our
// fp32-FMA sparse path at 2:4 there, measured on Zen 4); elsewhere torch's bf16 GEMM is far slower. With AMX
// tiles oneDNN's bf16 GEMM is faster again (2.5 TFLOP/s on two Xeon cores), so there every pattern decodes to
// dense tiles: at M = 64 / 256 they ran 0.58-0.91x dense against 0.12-0.51x for the kept-only kernel, both
// forced in one sitting (bench/results/nm-bf16-paths-xeon2c-2af7299). Nothing we run beats AMX there.
inline bool use_dense_tiles(int64_t M, int64_t n, int64_t m, DType dt) {
  const bool bf16_dot = dt == DType::bf16 && cpu_features().avx512_bf16;
  if (M < (bf16_dot ? kDenseTilesMinMBf16 : kDenseTilesMinM)) return false;
  const char* force = std::getenv("SPARSEOPS_NM_LARGE_M");
  if (force && std::strcmp(force, "kernel") == 0) return false;
  if (force && std::strcmp(force, "tiles") == 0) return true;
  // On Intel CPUs MKL's sgemm outruns the kept-only GEMM at density 1/2: dense tiles ran 0.89-0.95x dense there
  // against 0.67-1.07x (bench/results/nm-fp32-paths-xeon2c-e37d7f5); on AMD the kernel wins (see above).
  const bool x86_kernel = (current_isa() == Isa::avx2 || current_isa() == Isa::avx512) && !cpu_features().intel;
  if (bf16_dot && cpu_features().amx_bf16) return true;
  // bf16 2:4 with AVX512-BF16 + VBMI2: the kernel's pair dot products beat oneDNN's dense bf16 GEMM, which the tiles
  // below would run (1.07-1.52x dense at M = 64 / 256 on Zen 5 against 0.80-0.95x: nm-pairs-ab-zen5-2c-6d9acc0).
  if (nm::pairs_kernel(current_isa(), static_cast<int>(n), static_cast<int>(m), dt, M)) return false;
  return ((dt == DType::f32 && !x86_kernel) || bf16_dot) && 4 * n > m;
}

// Which path the last nm_linear call took (read by benchmarks through sparseops.last_path()).
constexpr int kPathNone = 0, kPathKernel = 1, kPathDenseTiles = 2;
std::atomic<int> g_last_path{kPathNone};

void check_pattern(int64_t n, int64_t m, int64_t in_features) {
  TORCH_CHECK(nm::pattern_supported(static_cast<int>(n), static_cast<int>(m)),
              "sparseops.nm: unsupported pattern ", n, ":", m, " (need m in {2, 4, 8, 16} and 1 <= n < m)");
  TORCH_CHECK(in_features > 0 && in_features % m == 0, "sparseops.nm: in_features=", in_features,
              " is not a positive multiple of m=", m);
}

// Shapes and dtypes of a compressed weight (not its mask bits: see validate / the kernels' checks).
void check_weight(const at::Tensor& values, const at::Tensor& mask, int64_t n, int64_t m, int64_t K) {
  check_pattern(n, m, K);
  TORCH_CHECK(values.dim() == 2, "sparseops.nm: values must be 2-D [out_features, in_features/m*n], got shape ",
              values.sizes());
  const int64_t O = values.size(0);
  TORCH_CHECK(values.size(1) == K / m * n, "sparseops.nm: values has shape ", values.sizes(), " but ", n, ":", m,
              " with in_features=", K, " needs [", O, ", ", K / m * n, "]");
  TORCH_CHECK(mask.scalar_type() == at::kByte, "sparseops.nm: mask must be uint8, got ", mask.scalar_type());
  TORCH_CHECK(mask.dim() == 2 && mask.size(0) == O && mask.size(1) == (K + 7) / 8, "sparseops.nm: mask has shape ",
              mask.sizes(), ", expected [", O, ", ", (K + 7) / 8, "] for in_features=", K);
  TORCH_CHECK(mask.device() == values.device(), "sparseops.nm: values on ", values.device(), " but mask on ",
              mask.device());
  kernel_dtype(values, "sparseops.nm: values");
}

at::Tensor nm_linear_cpu(const at::Tensor& x, const at::Tensor& values_in, const at::Tensor& mask_in, int64_t n,
                         int64_t m, int64_t K, const std::optional<at::Tensor>& bias_in) {
  check_weight(values_in, mask_in, n, m, K);
  TORCH_CHECK(x.device().is_cpu() && values_in.device().is_cpu(), "sparseops.nm_linear: the CPU kernel got x on ",
              x.device(), " and the weight on ", values_in.device());
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == K, "sparseops.nm_linear: x has shape ", x.sizes(),
              " but the weight has in_features=", K);
  TORCH_CHECK(x.scalar_type() == values_in.scalar_type(), "sparseops.nm_linear: x is ", x.scalar_type(),
              " but the weight is ", values_in.scalar_type(), " (cast one of them)");
  const int64_t O = values_in.size(0);
  at::Tensor bias;
  if (bias_in.has_value() && bias_in->defined()) {
    bias = bias_in->contiguous();
    TORCH_CHECK(bias.dim() == 1 && bias.size(0) == O, "sparseops.nm_linear: bias has shape ", bias.sizes(),
                ", expected [", O, "]");
    TORCH_CHECK(bias.scalar_type() == x.scalar_type() && bias.device().is_cpu(), "sparseops.nm_linear: bias is ",
                bias.scalar_type(), " on ", bias.device(), ", expected ", x.scalar_type(), " on cpu");
  }
  const DType dt = kernel_dtype(x, "sparseops.nm_linear: x");
  at::Tensor values = values_in.contiguous(), mask = mask_in.contiguous();
  at::Tensor x2 = x.reshape({-1, K});
  if (x2.size(0) > 1 && x2.stride(1) != 1) x2 = x2.contiguous();
  if (x2.size(0) <= 1 && !x2.is_contiguous()) x2 = x2.contiguous();
  const int64_t M = x2.size(0);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end() - 1);
  out_shape.push_back(O);
  at::Tensor y = empty_output({M, O}, x.options());
  if (M == 0 || O == 0) return y.view(out_shape);

  nm::LinearArgs a{};
  a.dtype = dt; a.n = static_cast<int>(n); a.m = static_cast<int>(m);
  a.M = M; a.K = K; a.O = O;
  a.x = x2.data_ptr(); a.ldx = M > 1 ? x2.stride(0) : K;
  a.values = values.data_ptr(); a.mask = mask.data_ptr<uint8_t>();
  a.bias = bias.defined() ? bias.data_ptr() : nullptr;
  a.y = y.data_ptr(); a.ldy = O;
  const Isa isa = current_isa();
  std::atomic<int64_t> bad{-1};
  if (use_dense_tiles(M, n, m, dt)) {
    g_last_path.store(kPathDenseTiles);
    const nm::DecodeRowsFn dec = nm::decode_rows_kernel(isa);
    bad = dense_tile_gemm(x2, bias, values, O, K, y,
                          [&](void* dst, int64_t b, int64_t e) { return dec(a, dst, K, b, e); });
    TORCH_CHECK(bad.load() < 0, "sparseops.nm_linear: malformed N:M mask in row ", bad.load(),
                ": it does not keep exactly ", n, " of every ", m, " entries (sparseops.nm.validate names the group)");
    return y.view(out_shape);
  }
  g_last_path.store(kPathKernel);
  const nm::LinearFn fn = nm::linear_kernel(isa);
  // Grain: enough rows that each task streams a few hundred KiB of weight.
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(1, values.size(1) * values.element_size()));
  at::parallel_for(0, O, grain, [&](int64_t b, int64_t e) {
    int64_t r = fn(a, b, e);
    if (r >= 0) {
      int64_t expected = -1;
      bad.compare_exchange_strong(expected, r);
    }
  });
  TORCH_CHECK(bad.load() < 0, "sparseops.nm_linear: malformed N:M mask in row ", bad.load(),
              ": it does not keep exactly ", n, " of every ", m, " entries (sparseops.nm.validate names the group)");
  return y.view(out_shape);
}

void nm_validate_cpu(const at::Tensor& values, const at::Tensor& mask_in, int64_t n, int64_t m, int64_t K) {
  check_weight(values, mask_in, n, m, K);
  at::Tensor mask = mask_in.contiguous();
  const int64_t O = values.size(0);
  int64_t bad = nm::find_bad_group(mask.data_ptr<uint8_t>(), O, K, static_cast<int>(n), static_cast<int>(m));
  if (bad >= 0) {
    const int64_t G = K / m, row = bad / (G + 1), g = bad % (G + 1);
    TORCH_CHECK(g < G, "sparseops.nm: malformed mask: row ", row, " has bits set past in_features=", K);
    TORCH_CHECK(false, "sparseops.nm: malformed mask: row ", row, ", group ", g, " (columns ", g * m, "..",
                g * m + m - 1, ") does not keep exactly ", n, " of ", m, " entries");
  }
}

at::Tensor nm_decompress_cpu(const at::Tensor& values_in, const at::Tensor& mask_in, int64_t n, int64_t m, int64_t K) {
  nm_validate_cpu(values_in, mask_in, n, m, K);
  at::Tensor values = values_in.contiguous(), mask = mask_in.contiguous();
  const int64_t O = values.size(0);
  at::Tensor dense = empty_output({O, K}, values.options());
  const DType dt = kernel_dtype(values, "sparseops.nm: values");
  at::parallel_for(0, O, 64, [&](int64_t b, int64_t e) {
    nm::decompress(dt, static_cast<int>(n), static_cast<int>(m), O, K, values.data_ptr(), mask.data_ptr<uint8_t>(),
                   dense.data_ptr(), b, e);
  });
  return dense;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseops, CPU, m) {
  m.impl("nm_linear", &nm_linear_cpu);
  m.impl("nm_validate", &nm_validate_cpu);
  m.impl("nm_decompress", &nm_decompress_cpu);
}

}  // namespace sparseops::ops

extern "C" const char* sparseops_nm_last_path() {
  switch (sparseops::ops::g_last_path.load()) {
    case sparseops::ops::kPathKernel: return "sparse-kernel";
    case sparseops::ops::kPathDenseTiles: return "dense-gemm-tiles";
    default: return "-";
  }
}
