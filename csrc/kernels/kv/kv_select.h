// Per-token top-k selection pieces shared by the SIMD compressors (static inline only: included by files built
// with different ISA flags). Each ISA computes magnitude keys and counts; these helpers turn the counts into the
// exact bitmap of compress() (kv.h): keep every key above the k-th largest, then the lowest channels among the
// keys equal to it until k are kept.
#pragma once
#include <cstdint>
#include <cstring>

namespace sparseops::kv {
namespace {

// Largest t with count_ge(t) >= k, built one bit at a time from the top (nbits = magnitude bits of the dtype).
// count_ge(c) is only called with c >= 1.
template <class CountGe>
static inline uint32_t kth_largest_key(int nbits, int k, CountGe count_ge) {
  uint32_t t = 0;
  for (int b = nbits - 1; b >= 0; --b) {
    const uint32_t c = t | (1u << b);
    if (count_ge(c) >= k) t = c;
  }
  return t;
}

// gt / eq: bit c set iff key c > / == the threshold (nw 64-bit words). Writes the kept bitmap (D / 8 bytes,
// little endian: bit c % 8 of byte c / 8) and returns nothing: exactly k bits end up set.
static inline void select_bits(const uint64_t* gt, const uint64_t* eq, int nw, int k, int D, uint8_t* bits) {
  int need = k;
  for (int i = 0; i < nw; ++i) need -= __builtin_popcountll(gt[i]);
  uint64_t out[64];  // D <= 4096
  for (int i = 0; i < nw; ++i) {
    uint64_t e = eq[i], take = 0;
    if (__builtin_popcountll(e) <= need) {
      take = e;
    } else {
      for (int j = 0; j < need; ++j) { take |= e & (~e + 1); e &= e - 1; }
    }
    need -= __builtin_popcountll(take);
    out[i] = gt[i] | take;
  }
  std::memcpy(bits, out, D / 8);  // little-endian hosts (x86-64, aarch64)
}

}  // namespace
}  // namespace sparseops::kv
