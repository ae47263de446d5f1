// AVX-512 N:M variant (F/BW/VL/DQ): the chunk decoder is in nm_avx512_dec.h; everything else
// (blocking, tails, threading contract) is in nm_x86_tile.h. bf16 goes to nm_avx512x.cpp when the CPU
// has AVX512-BF16 + VBMI2 (bf16 dot products).
// GCC 12 warns about the deliberately undefined source operand inside its own AVX-512 intrinsics.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "nm_avx512_dec.h"

namespace sparseops::nm {

int64_t linear_avx512(const LinearArgs& a, int64_t o_begin, int64_t o_end) {
  // bf16 dot products: the M == 1 GEMV, and dense math up to the sizes where multiplying only the kept
  // weights (x86::run's sparse path) wins (measured on Zen 4: 1:4 at M >= 64; denser patterns go to
  // the glue's dense tiles there).
  // fp32 at M == 1: the AVX2 placing GEMV (one vpshufb per mask byte, two rows sharing each x load, a far
  // prefetch) beat the expand-based one here by 1.2-1.3x on a Xeon (bench/results/nm-m1-isa-xeon2c-2af7299).
  // On AMD CPUs with the avx512x extensions the vpermps-placing GEMV instead (measured on Zen 5 only:
  // bench/results/nm-m1-f32-ab-zen5-2c-4af5caa; Intel keeps the AVX2 one until it is measured there).
  // 1:4 at M == 1 selects x per group with the extensions (bf16; fp32 on AMD as below), x all finite.
  // 2:8 and 1:4 (K % 8 == 0) on AMD fetch x at the kept columns instead, where x is small (measured on Zen 5 only:
  // 2:8 1.5-1.8x placement, 1:4 1.1-1.4x select, bench/results/nm-m1-gather-ab-zen5-2c-aebfb44.txt).
  const bool amd_ext = avx512_ext() && !cpu_features().intel;  // the fp32 avx512x GEMVs: measured on AMD only
  if (a.M == 1 && o_begin < o_end && amd_ext && gather_m1_fits_avx512x(a))
    return linear_gather_m1_avx512x(a, o_begin, o_end);
  // bf16 2:8 / 1:4 at M = 2..8 with little x: the same, per token (AMD only, measured on Zen 5).
  if (o_begin < o_end && amd_ext && gather_tokens_fits_avx512x(a)) return linear_gather_tokens_avx512x(a, o_begin, o_end);
  if (a.M == 1 && o_begin < o_end && (a.dtype == DType::bf16 ? avx512_ext() : amd_ext) && select14_fits_avx512x(a))
    return linear_select14_avx512x(a, o_begin, o_end);
  if (a.dtype == DType::f32 && a.M == 1 && a.m <= 8 && 2 * a.n <= a.m && a.K >= 16)
    return amd_ext ? linear_m1_f32_avx512x(a, o_begin, o_end) : linear_avx2(a, o_begin, o_end);
  // bf16 2:4 / 2:8 from M = 32, 4:8 at M = 32..191, 1:4 from M = 64 (pairs_kernel): kept-only dot products on x
  // packed as column pairs; otherwise (x with NaN/Inf, since the pair path never multiplies pruned positions, or 1:4
  // with K % 8 != 0) the dense dot products.
  if (pairs_kernel(Isa::avx512, a.n, a.m, a.dtype, a.M))
    return pairs_fits_avx512x(a) ? linear_pairs_avx512x(a, o_begin, o_end) : linear_bf16_dp_avx512x(a, o_begin, o_end);
  if (a.dtype == DType::bf16 && o_begin < o_end && a.M < Avx512Dec::sparse_min_m && avx512_ext())
    return a.M == 1 ? linear_m1_bf16_avx512x(a, o_begin, o_end) : linear_bf16_dp_avx512x(a, o_begin, o_end);
  return x86::run<Avx512Dec>(a, o_begin, o_end);
}

int64_t decode_rows_avx512(const LinearArgs& a, void* dense, int64_t ld, int64_t o_begin, int64_t o_end) {
  if (a.dtype != DType::f32 && avx512_ext()) return decode_rows16_avx512x(a, dense, ld, o_begin, o_end);
  return x86::decode_rows<Avx512Dec>(a, dense, ld, o_begin, o_end);
}

}  // namespace sparseops::nm
