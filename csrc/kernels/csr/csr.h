// Unstructured sparse weights in CSR, torch-free kernel tier.
//
// Format "csr" version 1 (in-memory and state_dict layout of sparseops.csr.CSRWeight):
//   dense W [O, K] (O rows = out_features, K columns = in_features).
//   row_ptr [O + 1] int64: row o's entries are [row_ptr[o], row_ptr[o + 1]); row_ptr[0] == 0,
//                          non-decreasing, row_ptr[O] == nnz.
//   cols    [nnz] column of each entry, in [0, K). uint16 (stored as int16 bits) when K <= 65536,
//                 else int32: 2 bytes of index per kept value for every layer shape in today's LLMs.
//                 sparseops.csr.compress writes ascending columns; kernels only need them in range
//                 (duplicates add up, as in torch).
//   values  [nnz] float32, bfloat16 or float16, the kept entries (explicit zeros allowed).
// Rows keep their natural order (no reordering): the caller balances threads by entries, not rows.
// spmm reads torch's own CSR after validate() (int64 column indices are narrowed to int32 first).
#pragma once
#include <cstddef>
#include <cstdint>

#include "../common/cpu_features.h"

namespace sparseops::csr {

enum class DType : int { f32 = 0, bf16 = 1, f16 = 2 };
enum class Index : int { u16 = 0, i32 = 1 };

// The dense right-hand side, packed to fp32 by pack_b: element (k, j) at b[k * ldb + j]. For N == 1, b is
// just the vector (ldb unused); for N > 1, ldb is a multiple of kPackAlign and columns [N, ldb) are
// readable (their results are discarded), so tile kernels never need a masked tail.
constexpr int64_t kPackAlign = 16;

struct SpmmArgs {
  DType dtype;              // values, bias and y
  Index index;              // cols
  int64_t O, K, N;          // A [O, K] sparse times B [K, N]
  const int64_t* row_ptr;   // [O + 1], validated (monotone, row_ptr[O] == nnz)
  const void* cols;         // [nnz], may be untrusted: every variant checks each index against K
  const void* values;       // [nnz]
  const float* b;           // packed (see above)
  int64_t ldb;
  const void* bias;         // [O] or nullptr: added to every output column
  void* y;                  // y[o * so + j * sj]
  int64_t so, sj;
};

// Rows [o_begin, o_end) of y = A @ B (+ bias), fp32 accumulation, one rounding. N == 1 takes the
// gather (GEMV) path; N > 1 the tile path that vectorises over B's columns (XNNPACK style: one
// broadcast weight times a contiguous run of B's row). Callers parallelise over disjoint row ranges.
// Column indices are range-checked as they are used (a vector compare per block of indices before their
// loads, a masked gather, or a compare beside the FMA, so no separate pass over the indices): returns -1, or the first row holding an index >= K, whose
// outputs are then unspecified; an out-of-range index is never dereferenced.
using SpmmFn = int64_t (*)(const SpmmArgs&, int64_t o_begin, int64_t o_end);
int64_t spmm_scalar(const SpmmArgs&, int64_t o_begin, int64_t o_end);
int64_t spmm_avx2(const SpmmArgs&, int64_t o_begin, int64_t o_end);
int64_t spmm_avx512(const SpmmArgs&, int64_t o_begin, int64_t o_end);
int64_t spmm_neon(const SpmmArgs&, int64_t o_begin, int64_t o_end);
SpmmFn spmm_kernel(Isa isa);  // nullptr if not compiled for this architecture

// Packs B (element (k, j) at src + k * sk + j * sj, `dtype`) for spmm: fp32, ldb = packed_ld(N, isa),
// padding columns zeroed. Sets nonfinite[j] = 1 when column j holds a NaN or Inf (else 0): the caller
// recomputes those columns densely, because dense math turns 0 * Inf into NaN at every pruned position and
// a sparse product cannot see that. Columns [j_begin, j_end) only.
// ldb: 1 for N == 1, else round_up(N, kPackAlign), plus one cache line where the isa's column tiles split
// rows whose stride is a multiple of 256 bytes: a tile then reads lines of only a fraction of the cache sets,
// and its slice of B fell out of L2 (M=128 ran 1.18-1.42x faster padded, bench/results/csr-ldb-pad-ab-zen5-2c-516a1a7).
int64_t packed_ld(int64_t N, Isa isa);
// Columns of B one tile covers for an ISA (kMaxNV * W of its Ops; each csr_<isa>.cpp asserts it).
constexpr int64_t tile_columns(Isa isa) { return isa == Isa::avx512 ? 64 : isa == Isa::neon ? 16 : 32; }
void pack_b(DType dtype, const void* src, int64_t sk, int64_t sj, int64_t K, int64_t N, float* b, int64_t ldb,
            uint8_t* nonfinite, int64_t j_begin, int64_t j_end);
// The same contract and bytes; the AVX-512 one transposes 16 x 16 blocks where x is row-major (sk == 1) and the
// column range is whole 16-column blocks, else it is pack_b. pack_b_kernel: the one for an ISA (never nullptr).
using PackFn = void (*)(DType, const void*, int64_t, int64_t, int64_t, int64_t, float*, int64_t, uint8_t*, int64_t,
                        int64_t);
void pack_b_avx512(DType dtype, const void* src, int64_t sk, int64_t sj, int64_t K, int64_t N, float* b, int64_t ldb,
                   uint8_t* nonfinite, int64_t j_begin, int64_t j_end);
PackFn pack_b_kernel(Isa isa);

// Full check of untrusted CSR indices (row_ptr and every column). Returns kOk or the problem, with
// *where set to the row (row_ptr problems) or entry (column problems). index: i32, or 64-bit (i64=true).
enum Problem : int { kOk = 0, kFirstNotZero = 1, kDecreasing = 2, kLastNotNnz = 3, kColOutOfRange = 4 };
Problem validate_row_ptr(const int64_t* row_ptr, int64_t O, int64_t nnz, int64_t* where);
Problem validate(const int64_t* row_ptr, int64_t O, const void* cols, bool i64, int64_t nnz, int64_t K,
                 int64_t* where);

// Splits rows [0, O) into `parts` ranges of about equal cost (entries + kRowCost per row):
// bounds[0] = 0, bounds[parts] = O, non-decreasing.
// Rows [o_begin, o_end) of the dense [O, K] weight in the values' dtype, row o at dense + (o - o_begin) * ld
// elements (repeated columns add up in fp32, as torch's to_dense does). Reads a.dtype, index, K, row_ptr, cols,
// values only. cols may be untrusted: returns -1, or the first row holding a column outside [0, K) (its
// dense row is then unspecified). Used by to_dense and by the glue's dense-math path at large M.
int64_t decompress_rows(const SpmmArgs& a, void* dense, int64_t ld, int64_t o_begin, int64_t o_end);

constexpr int64_t kRowCost = 8;
void balanced_splits(const int64_t* row_ptr, int64_t O, int64_t parts, int64_t* bounds);

}  // namespace sparseops::csr
