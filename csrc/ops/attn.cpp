// ATen glue for block-sparse attention (csrc/kernels/attn/attn.h): checks, mask validation,
// allocation, load-balanced threading and ISA dispatch.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <numeric>
#include <vector>

#include "kernels/attn/attn.h"
#include "ops/common.h"

namespace sparseops::ops {
namespace {

constexpr const char* kWhat = "sparseops.block_sparse_attention";

// Checks one (num, idx) pair of block lists and returns them with a unit-stride last dim.
void check_lists(const at::Tensor& num, const at::Tensor& idx, const char* nname, const char* iname, int64_t B,
                 int64_t Hq, int64_t nQB) {
  TORCH_CHECK(num.device().is_cpu() && idx.device().is_cpu(), kWhat, ": ", nname, " and ", iname,
              " must be on the CPU like q, got ", num.device(), " and ", idx.device());
  TORCH_CHECK(num.scalar_type() == at::kInt && idx.scalar_type() == at::kInt, kWhat, ": ", nname, " and ", iname,
              " must be int32, got ", num.scalar_type(), " and ", idx.scalar_type());
  TORCH_CHECK(num.dim() == 3, kWhat, ": ", nname, " must be 3-D [B|1, H|1, num_q_blocks], got shape ", num.sizes());
  TORCH_CHECK(idx.dim() == 4, kWhat, ": ", iname, " must be 4-D [B|1, H|1, num_q_blocks, capacity], got shape ",
              idx.sizes());
  for (const at::Tensor* t : {&num, &idx}) {
    const char* name = t == &num ? nname : iname;
    TORCH_CHECK(t->size(0) == 1 || t->size(0) == B, kWhat, ": ", name, " has batch size ", t->size(0),
                " but q has ", B, " (use ", B, " or 1)");
    TORCH_CHECK(t->size(1) == 1 || t->size(1) == Hq, kWhat, ": ", name, " has ", t->size(1),
                " heads but q has ", Hq, " query heads (use ", Hq, " or 1; the mask's head is the query head)");
    TORCH_CHECK(t->size(2) == nQB, kWhat, ": ", name, " has ", t->size(2), " query blocks but Lq and block_q give ",
                nQB);
  }
}

std::tuple<at::Tensor, at::Tensor> block_sparse_attention_cpu(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, const at::Tensor& num_in,
    const at::Tensor& idx_in, const std::optional<at::Tensor>& fnum_in, const std::optional<at::Tensor>& fidx_in,
    int64_t block_q, int64_t block_k, bool is_causal, std::optional<double> scale) {
  TORCH_CHECK(q_in.dim() == 4 && k_in.dim() == 4 && v_in.dim() == 4, kWhat,
              ": q, k, v must be 4-D [B, H, L, D], got shapes ", q_in.sizes(), ", ", k_in.sizes(), ", ", v_in.sizes());
  TORCH_CHECK(q_in.device().is_cpu() && k_in.device().is_cpu() && v_in.device().is_cpu(), kWhat,
              ": the CPU kernel got q on ", q_in.device(), ", k on ", k_in.device(), ", v on ", v_in.device());
  TORCH_CHECK(q_in.scalar_type() == k_in.scalar_type() && q_in.scalar_type() == v_in.scalar_type(), kWhat,
              ": q, k, v must share a dtype, got ", q_in.scalar_type(), ", ", k_in.scalar_type(), ", ",
              v_in.scalar_type());
  const attn::DType dt = kernel_dtype(q_in, "sparseops.block_sparse_attention: q");
  const int64_t B = q_in.size(0), Hq = q_in.size(1), Lq = q_in.size(2), D = q_in.size(3);
  const int64_t Hkv = k_in.size(1), Lk = k_in.size(2);
  TORCH_CHECK(k_in.size(0) == B && v_in.size(0) == B, kWhat, ": batch sizes differ: q ", q_in.sizes(), ", k ",
              k_in.sizes(), ", v ", v_in.sizes());
  TORCH_CHECK(k_in.sizes() == v_in.sizes(), kWhat, ": k and v must have the same shape, got ", k_in.sizes(), " and ",
              v_in.sizes());
  TORCH_CHECK(k_in.size(3) == D, kWhat, ": head_dim of q (", D, ") and k/v (", k_in.size(3), ") differ");
  TORCH_CHECK(Hkv > 0 && Hq % Hkv == 0, kWhat, ": the query heads (", Hq, ") must be a multiple of the key/value heads (",
              Hkv, ")");
  TORCH_CHECK(D >= attn::kMinHeadDim && D <= attn::kMaxHeadDim, kWhat, ": head_dim ", D, " is not supported (1..",
              attn::kMaxHeadDim, ")");
  TORCH_CHECK(attn::block_size_ok(block_q) && attn::block_size_ok(block_k), kWhat, ": block sizes must be multiples of ",
              attn::kBlockMultiple, " in [", attn::kMinBlock, ", ", attn::kMaxBlock, "], got (", block_q, ", ",
              block_k, ")");
  const int64_t nQB = (Lq + block_q - 1) / block_q;
  check_lists(num_in, idx_in, "kv_num_blocks", "kv_indices", B, Hq, nQB);
  const bool has_full = fnum_in.has_value() && fnum_in->defined();
  TORCH_CHECK(has_full == (fidx_in.has_value() && fidx_in->defined()), kWhat,
              ": full_kv_num_blocks and full_kv_indices must be given together");
  if (has_full) check_lists(*fnum_in, *fidx_in, "full_kv_num_blocks", "full_kv_indices", B, Hq, nQB);

  auto unit_last = [](const at::Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); };
  at::Tensor q = unit_last(q_in), k = unit_last(k_in), v = unit_last(v_in);
  at::Tensor num = num_in.contiguous(), idx = idx_in.contiguous(), fnum, fidx;
  if (has_full) { fnum = fnum_in->contiguous(); fidx = fidx_in->contiguous(); }

  at::Tensor out = empty_output({B, Hq, Lq, D}, q.options());
  at::Tensor lse = at::empty({B, Hq, Lq}, q.options().dtype(at::kFloat));

  attn::Args a{};
  a.dtype = dt;
  a.B = B; a.Hq = Hq; a.Hkv = Hkv; a.Lq = Lq; a.Lk = Lk; a.D = D;
  a.q = q.data_ptr(); a.q_sb = q.stride(0); a.q_sh = q.stride(1); a.q_sl = q.stride(2);
  a.k = k.data_ptr(); a.k_sb = k.stride(0); a.k_sh = k.stride(1); a.k_sl = k.stride(2);
  a.v = v.data_ptr(); a.v_sb = v.stride(0); a.v_sh = v.stride(1); a.v_sl = v.stride(2);
  a.out = out.data_ptr(); a.o_sb = out.stride(0); a.o_sh = out.stride(1); a.o_sl = out.stride(2);
  a.lse = lse.data_ptr<float>();
  auto bstride = [](const at::Tensor& t, int d) { return t.size(d) == 1 ? int64_t(0) : t.stride(d); };
  a.kv_num = num.data_ptr<int32_t>(); a.n_sb = bstride(num, 0); a.n_sh = bstride(num, 1);
  a.kv_idx = idx.data_ptr<int32_t>(); a.i_sb = bstride(idx, 0); a.i_sh = bstride(idx, 1); a.i_sq = idx.stride(2);
  a.cap = idx.size(3);
  if (has_full) {
    a.full_num = fnum.data_ptr<int32_t>(); a.fn_sb = bstride(fnum, 0); a.fn_sh = bstride(fnum, 1);
    a.full_idx = fidx.data_ptr<int32_t>(); a.fi_sb = bstride(fidx, 0); a.fi_sh = bstride(fidx, 1);
    a.fi_sq = fidx.stride(2); a.full_cap = fidx.size(3);
  }
  a.block_q = static_cast<int>(block_q); a.block_k = static_cast<int>(block_k);
  a.causal = is_causal;
  a.scale = static_cast<float>(scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(D)));

  // Untrusted lists: validate before any kernel reads them.
  const int64_t Bm = std::max({num.size(0), idx.size(0), has_full ? fnum.size(0) : int64_t(1), has_full ? fidx.size(0) : int64_t(1)});
  const int64_t Hm = std::max({num.size(1), idx.size(1), has_full ? fnum.size(1) : int64_t(1), has_full ? fidx.size(1) : int64_t(1)});
  int64_t w[4];
  const int err = attn::validate(a, Bm, Hm, w);
  if (err) {
    const char* list = err > 10 ? "full_kv" : "kv";
    const int e = err % 10;
    TORCH_CHECK(e != 1, kWhat, ": ", list, "_num_blocks[", w[0], ", ", w[1], ", ", w[2], "] = ", w[3],
                " is outside [0, capacity=", err > 10 ? a.full_cap : a.cap, "]");
    TORCH_CHECK(e != 2, kWhat, ": ", list, "_indices[", w[0], ", ", w[1], ", ", w[2], ", ", w[3],
                "] is outside [0, num_kv_blocks=", attn::num_k_blocks(a), ")");
    TORCH_CHECK(false, kWhat, ": ", list, "_indices[", w[0], ", ", w[1], ", ", w[2], ", ", w[3],
                "] repeats a key block already listed for that query block");
  }
  if (B == 0 || Hq == 0 || Lq == 0) return {out, lse};

  const attn::BlockFn fn = attn::block_kernel(current_isa());
  TORCH_CHECK(fn != nullptr, kWhat, ": no kernel for the active ISA");
  // Work items (b, h, qb); threads pull them from a shared counter. Order: by (batch, key/value head), so the
  // K / V of one head stay in the last-level cache while every query block (of every query head in the GQA
  // group) reads them; inside a group heaviest first, the query heads of a query block next to each other
  // (they read the same key blocks when the mask is shared). Each group ends with its lightest items, so
  // the threads also finish together (longest-first greedy within the group).
  const int64_t n_items = B * Hq * nQB, group = Hq / Hkv;
  std::vector<int64_t> work(n_items), order(n_items);
  for (int64_t it = 0; it < n_items; ++it) work[it] = attn::work_of(a, it / (Hq * nQB), (it / nQB) % Hq, it % nQB);
  std::iota(order.begin(), order.end(), 0);
  auto kv_group = [&](int64_t it) { return (it / (Hq * nQB)) * Hkv + ((it / nQB) % Hq) / group; };
  std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) {
    const int64_t gx = kv_group(x), gy = kv_group(y);
    if (gx != gy) return gx < gy;
    if (work[x] != work[y]) return work[x] > work[y];
    return x % nQB > y % nQB;  // same work: later query blocks first, then the query heads in order
  });
  // Units of work: two items next to each other in that order when they share batch and key/value head and
  // the query blocks are small (<= 64 rows, so a pair is <= 128 rows): the kernel reads each K / V piece they
  // both list once for both (the query heads of a GQA group at one query block; else neighbouring query blocks).
  std::vector<std::pair<int64_t, int>> units;  // (first index into order, items)
  units.reserve(n_items);
  for (int64_t s = 0; s < n_items;) {
    const bool pair = block_q <= 64 && s + 1 < n_items && kv_group(order[s]) == kv_group(order[s + 1]);
    units.emplace_back(s, pair ? 2 : 1);
    s += pair ? 2 : 1;
  }
  const int64_t n_units = static_cast<int64_t>(units.size());
  std::atomic<int64_t> next{0};
  const size_t scratch_n = attn::scratch_floats(a);
  const int64_t nthreads = std::min<int64_t>(at::get_num_threads(), n_units);
  at::parallel_for(0, nthreads, 1, [&](int64_t, int64_t) {
    std::vector<float> scratch(scratch_n);
    for (int64_t u = next.fetch_add(1); u < n_units; u = next.fetch_add(1)) {
      attn::Item items[attn::kMaxItems];
      const int64_t it0 = order[units[u].first], b = it0 / (Hq * nQB);
      for (int j = 0; j < units[u].second; ++j) {
        const int64_t it = order[units[u].first + j];
        items[j] = attn::Item{(it / nQB) % Hq, it % nQB};
      }
      // Alternate the key order by round of nthreads units: a thread's next unit then starts on the K / V
      // rows its last one read (helped at 16k tokens, where a head's K / V outgrow the cache, in paired runs).
      const bool reverse = (u / nthreads) & 1;
      fn(a, b, items, units[u].second, reverse, scratch.data());
    }
  });
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseops, CPU, m) {
  m.impl("block_sparse_attention", &block_sparse_attention_cpu);
}

}  // namespace sparseops::ops
