#include <cstdint>
// ISA-independent N:M pieces: dispatch, mask validation, decompression.
#include <cstring>

#include "../common/half.h"
#include "nm.h"

namespace sparseops::nm {

LinearFn linear_kernel(Isa isa) {
  switch (isa) {
    case Isa::scalar: return linear_scalar;
#if defined(SPARSEOPS_X86)
    case Isa::avx2: return linear_avx2;
    case Isa::avx512: return linear_avx512;
#endif
#if defined(SPARSEOPS_AARCH64)
    case Isa::neon: return linear_neon;
#endif
    default: return nullptr;
  }
}

DecodeRowsFn decode_rows_kernel(Isa isa) {
  switch (isa) {
#if defined(SPARSEOPS_X86)
    case Isa::avx2: return decode_rows_avx2;
    case Isa::avx512: return decode_rows_avx512;
#endif
    default: return decode_rows_scalar;
  }
}

static inline bool mask_bit(const uint8_t* row, int64_t k) { return (row[k >> 3] >> (k & 7)) & 1; }

int64_t find_bad_group(const uint8_t* mask, int64_t O, int64_t K, int n, int m) {
  const int64_t G = K / m, row_bytes = (K + 7) / 8;
  for (int64_t o = 0; o < O; ++o) {
    const uint8_t* row = mask + o * row_bytes;
    for (int64_t g = 0; g < G; ++g) {
      int cnt = 0;
      for (int j = 0; j < m; ++j) cnt += mask_bit(row, g * m + j);
      if (cnt != n) return o * (G + 1) + g;
    }
    for (int64_t k = K; k < row_bytes * 8; ++k)
      if (mask_bit(row, k)) return o * (G + 1) + G;
  }
  return -1;
}

void decompress(DType dtype, int n, int m, int64_t O, int64_t K, const void* values,
                const uint8_t* mask, void* dense, int64_t o_begin, int64_t o_end) {
  const size_t es = dtype == DType::f32 ? 4 : 2;
  const int64_t kept = K / m * n, row_bytes = (K + 7) / 8;
  (void)O;
  for (int64_t o = o_begin; o < o_end; ++o) {
    const uint8_t* row = mask + o * row_bytes;
    const char* v = static_cast<const char*>(values) + o * kept * es;
    char* d = static_cast<char*>(dense) + o * K * es;
    std::memset(d, 0, K * es);
    for (int64_t k = 0; k < K; ++k) {
      if (mask_bit(row, k)) { std::memcpy(d + k * es, v, es); v += es; }
    }
  }
}

int64_t decode_rows_scalar(const LinearArgs& a, void* dense, int64_t ld, int64_t o_begin, int64_t o_end) {
  const size_t es = a.dtype == DType::f32 ? 4 : 2;
  const int64_t kept = a.K / a.m * a.n, row_bytes = (a.K + 7) / 8;
  for (int64_t o = o_begin; o < o_end; ++o) {
    const uint8_t* row = a.mask + o * row_bytes;
    const char* v = static_cast<const char*>(a.values) + o * kept * es;
    char* d = static_cast<char*>(dense) + (o - o_begin) * ld * es;
    std::memset(d, 0, a.K * es);
    int64_t c = 0;
    for (int64_t k = 0; k < row_bytes * 8; ++k) {
      if (!mask_bit(row, k)) continue;
      if (k >= a.K || c == kept) return o;  // bits past K, or more than the row's values
      std::memcpy(d + k * es, v + c * es, es);
      ++c;
    }
    if (c != kept) return o;
  }
  return -1;
}

// 1:4 pairs measured 1.2-1.4x faster than the fp32 kept-only GEMM from M = 64 and no faster at M = 32
// (bench/results/nm-pairs-ab-zen5-2c-e6eb77a). In one A/B sitting (bench/results/nm-pairs8-ab-zen5-2c-dff6611)
// 2:8 pairs ran 1.01-1.16x dense at M = 32..128 (that GEMM 0.86-1.15x) and 0.92-1.14x at M = 256 (0.95-0.98x);
// 4:8 pairs at M = 32 / 64 1.05-1.30x against 0.78-1.03x for the dense tiles or dot products. At M = 256 4:8 pairs
// ran 0.82-0.87x (nm-pairs8-tries-zen5-2c-dff6611), under the tiles' 0.92-0.95x; alternating at M = 128 pairs ran
// 0.96-1.02x against the tiles' 0.87-0.92x, at M = 192 0.89-0.95x against 0.90-0.93x
// (nm-pairs48-cutoff-zen5-2c-5969e37), so 4:8 takes the tiles from M = 192.
bool pairs_kernel(Isa isa, int n, int m, DType d, int64_t M) {
  // Pairs for min_m <= M < max_m; 4:8 at large M: oneDNN's dense GEMM on decoded tiles (near the bf16 peak there).
  int64_t min_m = INT64_MAX, max_m = INT64_MAX;
  if (m == 4 && (n == 1 || n == 2)) min_m = n == 2 ? 32 : 64;
  if (m == 8 && (n == 2 || n == 4)) min_m = 32, max_m = n == 4 ? 192 : INT64_MAX;
  // Zen 5 only: on Zen 4 (zmm dot products at half rate) a probe of the same idea ran at ~0.55x oneDNN's dense bf16
  // GEMM (bench/results/probe-nm-bf16-pairdp-zen4-2c-5851ba0.txt), so the dense tiles stay there until measured.
  return isa == Isa::avx512 && d == DType::bf16 && M >= min_m && M < max_m && avx512_ext() && cpu_features().amd_zen5;
}

}  // namespace sparseops::nm
