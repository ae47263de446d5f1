// Block-sparse attention, torch-free kernel tier.
//
// Block list layout (the FlexAttention BlockMask layout):
//   Lq queries split into nQB = ceil(Lq / block_q) query blocks, Lk keys into nKB = ceil(Lk / block_k)
//   key blocks (block sizes: multiples of 16 in [16, 256], independent; the last block may be short).
//   kv_num [Bm, Hm, nQB] int32 and kv_idx [Bm, Hm, nQB, cap] int32: query block qb of (batch b, query
//   head h) reads the key blocks kv_idx[b, h, qb, 0 .. kv_num[b, h, qb]). Bm / Hm are B / Hq or 1
//   (broadcast: stride 0). The optional full_num / full_idx pair is a second list of the same shape
//   (FlexAttention's "full" blocks). Both lists are treated alike here: no mask_mod is evaluated, every
//   listed block only gets the element predicate
//       key < Lk  and  query < Lq  and  (!causal or key <= query)     (top-left aligned, like SDPA)
//   The union of the two lists must not repeat a block (validate() checks; the kernels would count a
//   repeated block twice). Entries past the count are never read.
//
// Output: out[b, h, i, :] = softmax(scale * q k^T over the visible keys) v, accumulated in fp32 and
// rounded once; a query row that sees no key gets 0 and lse = -inf. lse[b, h, i] (natural log, fp32)
// = log(sum_j exp(scale * q_i . k_j)) over the visible keys, so two partial results can be merged.
// GQA: query head h reads key/value head h / (Hq / Hkv); K and V are never copied.
#pragma once
#include <cstddef>
#include <cstdint>

#include "../common/cpu_features.h"
#include "../nm/nm.h"

namespace sparseops::attn {

using DType = nm::DType;  // f32 / bf16 / f16: q, k, v and out share one dtype

constexpr int kMinBlock = 16, kMaxBlock = 256, kBlockMultiple = 16;
constexpr int kMinHeadDim = 1, kMaxHeadDim = 256;  // the kernels take any D <= 256 (tested 64..256)

inline bool block_size_ok(int64_t b) { return b >= kMinBlock && b <= kMaxBlock && b % kBlockMultiple == 0; }

struct Args {
  DType dtype;
  int64_t B, Hq, Hkv, Lq, Lk, D;
  // Element strides (unit stride along D). q/out: [B, Hq, L, D]; k/v: [B, Hkv, Lk, D].
  const void* q; int64_t q_sb, q_sh, q_sl;
  const void* k; int64_t k_sb, k_sh, k_sl;
  const void* v; int64_t v_sb, v_sh, v_sl;
  void* out;     int64_t o_sb, o_sh, o_sl;
  float* lse;    // [B, Hq, Lq] contiguous, or nullptr
  // Block lists (strides in int32 elements; 0 for a broadcast dim). full_num == nullptr: no full list.
  const int32_t* kv_num;   int64_t n_sb, n_sh;            // [.., nQB], unit stride along qb
  const int32_t* kv_idx;   int64_t i_sb, i_sh, i_sq;      // [.., nQB, cap], unit stride along cap
  const int32_t* full_num; int64_t fn_sb, fn_sh;
  const int32_t* full_idx; int64_t fi_sb, fi_sh, fi_sq;
  int64_t cap, full_cap;
  int block_q, block_k;
  bool causal;
  float scale;
};

inline int64_t num_q_blocks(const Args& a) { return (a.Lq + a.block_q - 1) / a.block_q; }
inline int64_t num_k_blocks(const Args& a) { return (a.Lk + a.block_k - 1) / a.block_k; }

// Floats of scratch one call of a block kernel needs (per thread; reuse it across calls).
size_t scratch_floats(const Args& a);

// A query block of one query head: the unit the caller schedules.
struct Item { int64_t h, qb; };
constexpr int kMaxItems = 2;

// Computes query blocks items[0, n) (n <= kMaxItems) of batch b: out rows and lse. Items of the same key/value
// head whose key-block lists are ascending share each K / V piece they both list (read once for both: pair
// query blocks that list mostly the same blocks, e.g. the query heads of a GQA group under one mask, or
// neighbouring query blocks under a causal mask). `scratch` holds scratch_floats(a) floats, 64-byte aligned.
// Block indices out of [0, nKB) and counts out of [0, cap] are clamped / skipped defensively (validate() first
// to turn them into errors). reverse: visit the listed key blocks last to first (the full list, then the
// other), so a thread's next item can start on the K / V its previous one read last, still in cache; the
// result differs only by summation order.
using BlockFn = void (*)(const Args&, int64_t b, const Item* items, int n, bool reverse, float* scratch);
void block_scalar(const Args&, int64_t b, const Item* items, int n, bool reverse, float* scratch);
void block_avx2(const Args&, int64_t b, const Item* items, int n, bool reverse, float* scratch);
void block_avx512(const Args&, int64_t b, const Item* items, int n, bool reverse, float* scratch);
void block_neon(const Args&, int64_t b, const Item* items, int n, bool reverse, float* scratch);
// The variant for an ISA (nullptr if not compiled for this architecture).
BlockFn block_kernel(Isa isa);

// Number of key blocks query block qb of (b, h) visits (after clamping counts), for load balancing.
int64_t work_of(const Args& a, int64_t b, int64_t h, int64_t qb);

// Validates untrusted block lists over Bm x Hm x nQB rows (Bm, Hm: the lists' own sizes).
// Returns 0 if fine, else an error code and the offending (b, h, qb, slot) in `where`:
//   1: a count < 0 or > cap   2: an index outside [0, nKB)   3: a block listed twice (either list)
// For the full list, the error codes are 11 / 12 (13 for a block repeated across the lists).
int validate(const Args& a, int64_t Bm, int64_t Hm, int64_t where[4]);

}  // namespace sparseops::attn
