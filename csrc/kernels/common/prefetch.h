// Software prefetch that the optimiser keeps. GCC 12 deleted whole loops of __builtin_prefetch / _mm_prefetch
// (its tree DCE) in the attention and KV decode kernels without a word, so those prefetches never ran; an asm
// volatile cannot be removed.
#pragma once
#include <cstdint>

namespace sparseops {

static inline void prefetch_l1(const void* p) {
#if defined(__x86_64__)
  asm volatile("prefetcht0 (%0)" : : "r"(p));
#elif defined(__aarch64__)
  asm volatile("prfm pldl1keep, [%0]" : : "r"(p));
#else
  __builtin_prefetch(p, 0, 3);
#endif
}

// Every cache line of [p, p + bytes) (byte offsets, never a pointer past the range).
static inline void prefetch_l1_range(const void* p, int64_t bytes) {
  for (int64_t o = 0; o < bytes; o += 64) prefetch_l1(static_cast<const char*>(p) + o);
}

}  // namespace sparseops
