// Shared by the AVX2 and AVX-512 CSR GEMVs: x[c[0..4)] by scalar loads into one 128-bit vector (on Zen 3 and Zen 4
// scalar loads and inserts beat vgatherdps, and Intel CPUs with the Gather Data Sampling microcode fix run gathers
// far slower still; the caller checks the indices first), and a prefetch of the row streams. Internal linkage:
// included by files built with different ISA flags.
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

// Prefetches the kEntries entries of a row's index and value streams that sit 512 entries past v / c. The GEMV's
// scattered scalar loads of x left the hardware prefetcher behind on these two sequential streams: with this,
// the bench GEMV (2 threads, Xeon) ran 1.3-3.1x faster at every sparsity and dtype
// (bench/results/csr-prefetch-ab-xeon2c-f68e391.txt).
template <int kEntries, class V, class I>
static inline void prefetch_entries(const V* v, const I* c) {
  for (int o = 0; o < kEntries * static_cast<int>(sizeof(I)); o += 64)
    _mm_prefetch(reinterpret_cast<const char*>(c + 512) + o, _MM_HINT_T0);
  for (int o = 0; o < kEntries * static_cast<int>(sizeof(V)); o += 64)
    _mm_prefetch(reinterpret_cast<const char*>(v + 512) + o, _MM_HINT_T0);
}

}  // namespace
}  // namespace sparseops::csr
