// Shared helpers of the ATen glue.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <stdexcept>

#if defined(__linux__)
#include <sys/mman.h>
#endif

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

// at::empty for an op's output. glibc serves a block of 32 MiB or more (its largest mmap threshold) from a fresh
// mapping on every call, and first-touching it page by page cost ~1 us per 4 KiB page on the dev VM (32 MiB:
// ~9 ms, a third of a 2k-token, 32-head sparse attention call). Asking for transparent huge pages on the
// block's whole 2 MiB pages before the kernel writes it makes that ~16 faults (as glibc.malloc.hugetlb=1 or
// torch's THP_MEM_ALLOC_ENABLE would, process-wide). Smaller blocks come from the reused heap and are left
// alone (advising part of the heap would split its mapping).
inline at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t p = reinterpret_cast<uintptr_t>(t.data_ptr()), n = static_cast<uintptr_t>(t.nbytes());
  if (t.device().is_cpu() && n >= (uintptr_t(32) << 20)) {
    const uintptr_t b = (p + kHuge - 1) & ~(kHuge - 1), e = (p + n) & ~(kHuge - 1);
    if (e > b) madvise(reinterpret_cast<void*>(b), e - b, MADV_HUGEPAGE);  // advice only: failure changes nothing
  }
#endif
  return t;
}

// Decoded weight per GEMM call of the dense-tile paths (8 MiB measured best of 8/32 for N:M).
constexpr int64_t kDenseTileBytes = int64_t(8) << 20;

// Rows [b, e) of the decoded weight (all threads share the calls) into a buffer of `proto`'s dtype, row r at
// dst + (r - b) * K elements, filled by decode(dst, b, e) -> -1 or the first row it found malformed.
// y [M, O] = x2 @ W^T (+ bias) with W decoded kDenseTileBytes at a time and each tile multiplied by torch's
// GEMM while it is still in cache (the decode costs ~1/M of the GEMM). Dense math: NaN/Inf in x2 propagate as
// in F.linear. Returns -1, or the malformed row (y is then unspecified).
template <class Decode>
int64_t dense_tile_gemm(const at::Tensor& x2, const at::Tensor& bias, const at::Tensor& proto, int64_t O, int64_t K,
                        at::Tensor& y, Decode decode) {
  const int64_t es = proto.element_size();
  // Rows per tile: a multiple of 64, at least 128 (MKL's sgemm ran ~15% slower on 190 rows than on 192, and
  // ~45% slower on 64 rows, at K = 11008 on Zen 3).
  const int64_t TB = std::max<int64_t>(128, (kDenseTileBytes / (K * es) + 32) / 64 * 64);
  at::Tensor tile = at::empty({std::min(TB, O), K}, proto.options());
  std::atomic<int64_t> bad{-1};
  for (int64_t o0 = 0; o0 < O; o0 += TB) {
    const int64_t rows = std::min(TB, O - o0);
    at::parallel_for(0, rows, 16, [&](int64_t b, int64_t e) {
      const int64_t r = decode(static_cast<char*>(tile.data_ptr()) + b * K * es, o0 + b, o0 + e);
      if (r >= 0) {
        int64_t expected = -1;
        bad.compare_exchange_strong(expected, r);
      }
    });
    if (bad.load() >= 0) return bad.load();
    at::Tensor w = tile.narrow(0, 0, rows);
    at::Tensor out = y.narrow(1, o0, rows);  // written in place: the GEMM takes the row stride O
    if (bias.defined()) at::addmm_out(out, bias.narrow(0, o0, rows), x2, w.t());
    else at::mm_out(out, x2, w.t());
  }
  return -1;
}

}  // namespace sparseops::ops
