// N:M sparse weights, torch-free kernel tier.
//
// Format "nm-bitmask", version 1 (the in-memory and state_dict layout; it generalises the
// compressed-tensors `sparse-24-bitmask` checkpoint format to any N:M):
//   dense W [O, K], K % m == 0, groups of m consecutive columns along K.
//   values [O, K/m*n]  same dtype as W: the kept entries of each row in ascending column order.
//                      Every group contributes exactly n values. A group with fewer than n nonzeros
//                      also keeps its lowest-index zero entries (stored as they are, so -0.0 survives),
//                      which makes every row the same length and the round trip bit-exact.
//   mask   [O, ceil(K/8)] uint8, row-major: bit (k % 8) of byte k / 8 is set iff column k is kept
//                      (numpy.packbits(..., bitorder="little")). Each group has exactly n set bits;
//                      bits past K are zero. That is 1 bit of metadata per dense element.
// Because each group keeps exactly n values, the value offset of any column chunk is known without a
// prefix sum: chunk c of width w (a multiple of m) starts at value c*w*n/m.
#pragma once
#include <cstddef>
#include <cstdint>

#include "../common/cpu_features.h"

namespace sparseops::nm {

enum class DType : int { f32 = 0, bf16 = 1, f16 = 2 };

inline bool pattern_supported(int n, int m) {
  return (m == 2 || m == 4 || m == 8 || m == 16) && n >= 1 && n < m;
}

struct LinearArgs {
  DType dtype;             // x, values, bias and y share one dtype
  int n, m;
  int64_t M;               // rows of x and y
  int64_t K;               // in_features
  int64_t O;               // out_features
  const void* x;           // x[i, k] at x + i * ldx + k (elements), unit stride along k
  int64_t ldx;
  const void* values;      // [O, K / m * n], contiguous
  const uint8_t* mask;     // [O, ceil(K / 8)], contiguous
  const void* bias;        // [O] or nullptr
  void* y;                 // y[i, o] at y + i * ldy + o (elements)
  int64_t ldy;
};

// y[:, o_begin:o_end] = x @ W[o_begin:o_end]^T + bias, accumulated in fp32 and rounded once.
// Callers parallelise over disjoint output ranges; shapes, dtypes and n:m must be checked by the caller.
// The mask itself may be untrusted: every variant counts the set bits of each chunk of columns it
// processes (a free scalar popcount beside the vector math; 8-column chunks, one per mask byte, where
// the AVX-512 GEMVs place values by permutation; single groups where 1:4 selects) and never reads a value
// outside the chunk's fixed slice. Returns -1 when every row's chunks hold the expected count, else the
// first bad output row (its outputs are then unspecified). With -1 the result is what the mask says
// (a variant that cannot compute that for some mask must name its row). Inputs with NaN/Inf must give
// what dense math gives (0 * Inf = NaN at pruned positions).
using LinearFn = int64_t (*)(const LinearArgs&, int64_t o_begin, int64_t o_end);
int64_t linear_scalar(const LinearArgs&, int64_t o_begin, int64_t o_end);
int64_t linear_avx2(const LinearArgs&, int64_t o_begin, int64_t o_end);
int64_t linear_avx512(const LinearArgs&, int64_t o_begin, int64_t o_end);
// bf16, M == 1, needs AVX512-BF16 + VBMI2 (avx512_ext()); called by linear_avx512.
int64_t linear_m1_bf16_avx512x(const LinearArgs&, int64_t o_begin, int64_t o_end);
// fp32, M == 1, m <= 8 and n/m <= 1/2, same requirement (vpermps placement); called by linear_avx512 on AMD CPUs.
int64_t linear_m1_f32_avx512x(const LinearArgs&, int64_t o_begin, int64_t o_end);
// 1:4 fp32 / bf16 at M == 1, same requirement: selects x per group (nm_select_avx512x.cpp). fits: the shape, and x
// all finite (pruned positions are never multiplied).
bool select14_fits_avx512x(const LinearArgs&);
int64_t linear_select14_avx512x(const LinearArgs&, int64_t o_begin, int64_t o_end);
// 2:8 and 1:4 fp32 / bf16 at M == 1, same requirement: fetches x at the kept columns (nm_gather_avx512x.cpp).
// fits: the shape and dtype (K % 8 == 0 for 1:4; x up to 32 KiB, 1:4 16 KiB), and x all finite.
bool gather_m1_fits_avx512x(const LinearArgs&);
int64_t linear_gather_m1_avx512x(const LinearArgs&, int64_t o_begin, int64_t o_end);
// The same for bf16 at M = 2..8 (each token's x fetched at the row's kept columns).
bool gather_tokens_fits_avx512x(const LinearArgs&);
int64_t linear_gather_tokens_avx512x(const LinearArgs&, int64_t o_begin, int64_t o_end);
// bf16, M >= 2, same requirement: dense math at the bf16 dot-product rate on the weight as it is decoded.
int64_t linear_bf16_dp_avx512x(const LinearArgs&, int64_t o_begin, int64_t o_end);
// bf16 2:4, 1:4, 2:8 and 4:8, same requirement: kept-only dot products on x packed as column pairs
// (nm_pairs_avx512x.cpp).
// fits: the pattern and dtype (K % 8 == 0 for 1:4), and x all finite (pruned positions are never multiplied).
// pairs_kernel: whether the ISA's kernel takes that path for this pattern at M rows (the glue then keeps large M in
// the kernel).
bool pairs_kernel(Isa isa, int n, int m, DType d, int64_t M);
bool pairs_fits_avx512x(const LinearArgs&);
int64_t linear_pairs_avx512x(const LinearArgs&, int64_t o_begin, int64_t o_end);
int64_t linear_neon(const LinearArgs&, int64_t o_begin, int64_t o_end);
// The variant for an ISA (nullptr if not compiled for this architecture).
LinearFn linear_kernel(Isa isa);

// Rows [o_begin, o_end) of the dense weight, in the weight's dtype, to dense + (o - o_begin) * ld.
// Same untrusted-mask contract as LinearFn (-1 or the first bad row). The glue's dense-math path at
// large M decodes tiles with it and multiplies them with a dense GEMM.
using DecodeRowsFn = int64_t (*)(const LinearArgs& a, void* dense, int64_t ld, int64_t o_begin, int64_t o_end);
int64_t decode_rows_scalar(const LinearArgs& a, void* dense, int64_t ld, int64_t o_begin, int64_t o_end);
int64_t decode_rows_avx2(const LinearArgs& a, void* dense, int64_t ld, int64_t o_begin, int64_t o_end);
int64_t decode_rows_avx512(const LinearArgs& a, void* dense, int64_t ld, int64_t o_begin, int64_t o_end);
// bf16 / f16 with AVX512-BF16 + VBMI2 (avx512_ext()): vpexpandw straight to 16-bit; called by decode_rows_avx512.
int64_t decode_rows16_avx512x(const LinearArgs& a, void* dense, int64_t ld, int64_t o_begin, int64_t o_end);
// The best decoder for an ISA (NEON uses the scalar one).
DecodeRowsFn decode_rows_kernel(Isa isa);

// Writes rows [o_begin, o_end) of the dense [O, K] row-major weight (zeros where not kept).
// Used for to_dense and for the dense-math fallback at large M.
void decompress(DType dtype, int n, int m, int64_t O, int64_t K, const void* values,
                const uint8_t* mask, void* dense, int64_t o_begin, int64_t o_end);

// Validates an untrusted mask: returns -1 if every group of m bits has exactly n set bits and the
// padding bits past K are zero; otherwise row * (K / m + 1) + group for the first bad group, where
// group == K / m means bits set past K in that row.
int64_t find_bad_group(const uint8_t* mask, int64_t O, int64_t K, int n, int m);

}  // namespace sparseops::nm
