// x[c[0..4)] by scalar loads into one 128-bit vector, shared by the AVX2 and AVX-512 CSR GEMVs: on Zen 3 and
// Zen 4 scalar loads and inserts beat vgatherdps (and Intel CPUs with the Gather Data Sampling microcode fix run
// gathers far slower still). The caller checks the indices first. Internal linkage: included by files built
// with different ISA flags.
#pragma once
#include <immintrin.h>

namespace sparseops::csr {
namespace {

template <class I>
static inline __m128 load4(const float* x, const I* c) {
  __m128 t = _mm_load_ss(x + c[0]);
  t = _mm_insert_ps(t, _mm_load_ss(x + c[1]), 0x10);
  t = _mm_insert_ps(t, _mm_load_ss(x + c[2]), 0x20);
  return _mm_insert_ps(t, _mm_load_ss(x + c[3]), 0x30);
}

}  // namespace
}  // namespace sparseops::csr
