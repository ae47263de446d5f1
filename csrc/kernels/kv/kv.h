// Bitmap-compressed KV cache, torch-free kernel tier.
//
// Format "kv-bitmap", version 1. One fixed-size record per (batch, kv-head, token):
//   dense x [B, H, T, D], D a positive multiple of 16; every token row is pruned on its own to its
//   k = D - floor(sparsity * D) largest |x| entries (1 <= k <= D).
//   bits [B, H, Tcap, D/8] uint8: bit (c % 8) of byte c / 8 of a record is set iff channel c is kept
//                       (numpy.packbits(..., bitorder="little")); exactly k bits set per record.
//   vals [B, H, Tcap, k] same dtype as x: the kept entries in ascending channel order, stored bit
//                       exactly (-0.0 and NaN survive the round trip).
//   Tcap >= T is storage capacity (records past the logical length T are unused and never read), so
//   appending a token writes one record in place: O(1) amortised when Tcap grows geometrically.
// Ranking: by |x| compared on the magnitude bits of the element's own dtype (NaN ranks above Inf);
// equal magnitudes keep the lower channel first. So compression is deterministic and exact.
// Size per record: D/8 + k * sizeof(dtype) bytes; D=128, sparsity 0.7, bf16: 16 + 39*2 = 94 bytes,
// 0.367 of the dense 256 bytes.
//
// Decode attention reads K and V records once per KV head for all the query heads sharing it (GQA),
// optionally followed by dense "tail" tokens (recent window), with one softmax over both.
#pragma once
#include <cstddef>
#include <cstdint>

#include "../common/cpu_features.h"

namespace sparseops::kv {

enum class DType : int { f32 = 0, bf16 = 1, f16 = 2 };  // same numbering as nm::DType

inline size_t dtype_size(DType d) { return d == DType::f32 ? 4 : 2; }

// Compresses `rows` dense token rows x[r * D + c] into records r of bits / vals (both contiguous,
// record r at bits + r * D/8 and vals + r * k elements). Rows [r_begin, r_end).
void compress(DType dtype, int D, int k, const void* x, uint8_t* bits, void* vals, int64_t r_begin,
              int64_t r_end);

// The same contract and bit-identical output, per ISA (branch-free threshold search + LUT/compress placement).
// compress() above is the portable variant (nth_element) and the reference.
using CompressFn = void (*)(DType, int D, int k, const void* x, uint8_t* bits, void* vals, int64_t r_begin,
                            int64_t r_end);
void compress_avx2(DType, int, int, const void*, uint8_t*, void*, int64_t, int64_t);
void compress_neon(DType, int, int, const void*, uint8_t*, void*, int64_t, int64_t);
CompressFn compress_kernel(Isa isa);  // avx512 uses the AVX2 variant; never nullptr

// Writes dense rows [r_begin, r_end) (zeros at pruned channels). Reads at most k values per record
// even if its bitmap is malformed.
void decompress(DType dtype, int D, int k, const uint8_t* bits, const void* vals, void* x, int64_t r_begin,
                int64_t r_end);

// Returns -1 if records [r_begin, r_end) each have exactly k set bits, else the first bad record.
int64_t find_bad_record(int D, int k, const uint8_t* bits, int64_t r_begin, int64_t r_end);

struct AttnArgs {
  DType dtype;          // q, cache values, tails and out share one dtype
  int64_t B, Hq, Hkv, Lq, D;
  int64_t T;            // compressed tokens used (logical length)
  int64_t Tcap_k, Tcap_v;  // record capacity of the K and V storage (row stride in records)
  int kk, kv;           // kept values per K record / per V record
  const void* q;        // [B, Hq, Lq, D] contiguous
  const uint8_t* k_bits; const void* k_vals;  // [B, Hkv, Tcap_k, D/8], [B, Hkv, Tcap_k, kk]
  const uint8_t* v_bits; const void* v_vals;  // [B, Hkv, Tcap_v, D/8], [B, Hkv, Tcap_v, kv]
  int64_t Tw;           // dense tail tokens (0: none)
  const void* k_tail; const void* v_tail;     // [B, Hkv, Tw, D] contiguous
  float scale;
};

// Split-K partial: for KV head (b, h) and tokens [t_begin, t_end) of the concatenation
// (compressed tokens 0..T-1, then tail tokens T..T+Tw-1), writes for each of the R = (Hq/Hkv) * Lq
// query rows sharing that head (row r = g * Lq + l for query head h * G + g): part[r * (D + 2)]
// = running max m of the scaled scores, [+1] = sum of exp(s - m), [+2 ..] = unnormalised
// sum of exp(s - m) * v (fp32). An empty range gives m = -inf, sum 0, acc 0.
// Records are read at most k values deep whatever their bitmap says.
using PartialFn = void (*)(const AttnArgs&, int64_t b, int64_t h, int64_t t_begin, int64_t t_end, float* part);
void partial_scalar(const AttnArgs&, int64_t, int64_t, int64_t, int64_t, float*);
void partial_avx2(const AttnArgs&, int64_t, int64_t, int64_t, int64_t, float*);
void partial_avx512(const AttnArgs&, int64_t, int64_t, int64_t, int64_t, float*);
void partial_avx512x(const AttnArgs&, int64_t, int64_t, int64_t, int64_t, float*);  // needs avx512_ext()
void partial_expand_avx512x(const AttnArgs&, int64_t, int64_t, int64_t, int64_t, float*);  // the same; Intel's
void partial_neon(const AttnArgs&, int64_t, int64_t, int64_t, int64_t, float*);
PartialFn partial_kernel(Isa isa);  // nullptr if not compiled for this architecture

// Merges nparts partials of one KV head (laid out one after another, each R * (D + 2) floats) into
// out rows of query heads h*G .. h*G+G-1 of batch b (rounded once to the dtype) and lse [B, Hq, Lq]
// (fp32). Rows that saw no token give out 0 and lse -inf.
void merge(const AttnArgs&, int64_t b, int64_t h, const float* parts, int64_t nparts, void* out, float* lse);

}  // namespace sparseops::kv
