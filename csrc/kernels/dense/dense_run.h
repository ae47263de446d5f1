// The dense weight source for tile::run: converts a block of each weight row to fp32.
// Internal linkage only: instantiated once per ISA file with that file's flags.
#pragma once
#include "dense.h"
#include "dense_tile.h"

namespace sparseops::dense {
namespace {

template <int W, int RM, class Cvt>
static inline void run_dense(const LinearArgs& a, int64_t o_begin, int64_t o_end) {
  const tile::Problem p{a.dtype, a.M, a.K, a.x, a.ldx, a.bias, a.y, a.ldy};
  const size_t es = tile::elem_size(a.dtype);
  tile::run<W, RM, Cvt>(p, o_begin, o_end,
                        [&](int64_t o0, int ro, int64_t k0, int kb, float (*wb)[tile::KB], tile::WRows& rows) {
                          // fp32 and bf16 rows are read in place; fp16 goes through the block buffer.
                          rows.bf16 = a.dtype == DType::bf16;
                          for (int r = 0; r < ro; ++r) {
                            const char* src = static_cast<const char*>(a.w) + ((o0 + r) * a.ldw + k0) * es;
                            if (a.dtype == DType::f16) {
                              Cvt::f16(reinterpret_cast<const uint16_t*>(src), wb[r], kb);
                              rows.p[r] = wb[r];
                            } else {
                              rows.p[r] = src;
                            }
                          }
                          return int64_t(-1);
                        });
}

}  // namespace
}  // namespace sparseops::dense
