// AVX-512 N:M variant (F/BW/VL/DQ): the chunk decoder is in nm_avx512_dec.h; everything else
// (blocking, tails, threading contract) is in nm_x86_tile.h. bf16 at M == 1 goes to nm_avx512x.cpp
// when the CPU has AVX512-BF16 + VBMI2.
// GCC 12 warns about the deliberately undefined source operand inside its own AVX-512 intrinsics.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "nm_avx512_dec.h"

namespace sparseops::nm {

int64_t linear_avx512(const LinearArgs& a, int64_t o_begin, int64_t o_end) {
  if (a.dtype == DType::bf16 && a.M == 1 && o_begin < o_end) {
    if (avx512_ext()) return linear_m1_bf16_avx512x(a, o_begin, o_end);
  }
  return x86::run<Avx512Dec>(a, o_begin, o_end);
}

int64_t decode_rows_avx512(const LinearArgs& a, void* dense, int64_t ld, int64_t o_begin, int64_t o_end) {
  return x86::decode_rows<Avx512Dec>(a, dense, ld, o_begin, o_end);
}

}  // namespace sparseops::nm
