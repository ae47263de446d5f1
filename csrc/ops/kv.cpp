// ATen glue for the bitmap-compressed KV cache (format "kv-bitmap" v1, csrc/kernels/kv/kv.h): checks,
// allocation, split-K threading and ISA dispatch.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "kernels/kv/kv.h"
#include "ops/common.h"

namespace sparseops::ops {
namespace {

kv::DType kv_dtype(const at::Tensor& t, const char* what) {
  return static_cast<kv::DType>(static_cast<int>(kernel_dtype(t, what)));
}

// Shapes, dtypes and devices of one compressed store (not its bits: see kv_validate).
// Returns head_dim.
int64_t check_store(const at::Tensor& bits, const at::Tensor& vals, int64_t length, const char* what) {
  TORCH_CHECK(bits.dim() == 4, what, ": bits must be 4-D [B, H, capacity, head_dim/8] uint8, got shape ",
              bits.sizes());
  TORCH_CHECK(bits.scalar_type() == at::kByte, what, ": bits must be uint8, got ", bits.scalar_type());
  TORCH_CHECK(vals.dim() == 4, what, ": vals must be 4-D [B, H, capacity, k], got shape ", vals.sizes());
  kv_dtype(vals, what);
  TORCH_CHECK(bits.device() == vals.device(), what, ": bits on ", bits.device(), " but vals on ", vals.device());
  const int64_t D = bits.size(3) * 8;
  TORCH_CHECK(D > 0 && D % 16 == 0, what, ": head_dim = 8 * bits.size(-1) = ", D,
              " is not a positive multiple of 16");
  TORCH_CHECK(vals.size(0) == bits.size(0) && vals.size(1) == bits.size(1) && vals.size(2) == bits.size(2), what,
              ": bits ", bits.sizes(), " and vals ", vals.sizes(), " disagree on [B, H, capacity]");
  TORCH_CHECK(vals.size(3) >= 1 && vals.size(3) <= D, what, ": vals keeps ", vals.size(3),
              " values per token, need 1..head_dim=", D);
  TORCH_CHECK(length >= 0 && length <= bits.size(2), what, ": length ", length, " is outside the capacity 0..",
              bits.size(2));
  return D;
}

std::tuple<at::Tensor, at::Tensor> kv_compress_cpu(const at::Tensor& x_in, int64_t k) {
  TORCH_CHECK(x_in.dim() == 4, "sparseops.kv_compress: x must be 4-D [B, H, T, head_dim], got shape ", x_in.sizes());
  TORCH_CHECK(x_in.device().is_cpu(), "sparseops.kv_compress: the CPU kernel got x on ", x_in.device());
  const kv::DType dt = kv_dtype(x_in, "sparseops.kv_compress: x");
  const int64_t D = x_in.size(3);
  TORCH_CHECK(D > 0 && D % 16 == 0, "sparseops.kv_compress: head_dim=", D, " is not a positive multiple of 16");
  TORCH_CHECK(k >= 1 && k <= D, "sparseops.kv_compress: k=", k, " values per token is outside 1..head_dim=", D);
  at::Tensor x = x_in.contiguous();
  const int64_t B = x.size(0), H = x.size(1), T = x.size(2), rows = B * H * T;
  at::Tensor bits = at::empty({B, H, T, D / 8}, x.options().dtype(at::kByte));
  at::Tensor vals = empty_output({B, H, T, k}, x.options());
  if (rows == 0) return {bits, vals};
  const kv::CompressFn fn = kv::compress_kernel(current_isa());
  at::parallel_for(0, rows, 256, [&](int64_t b, int64_t e) {
    fn(dt, static_cast<int>(D), static_cast<int>(k), x.data_ptr(), bits.data_ptr<uint8_t>(),
                 vals.data_ptr(), b, e);
  });
  return {bits, vals};
}

void kv_validate_cpu(const at::Tensor& bits_in, const at::Tensor& vals, int64_t length) {
  const int64_t D = check_store(bits_in, vals, length, "sparseops.kv");
  TORCH_CHECK(bits_in.device().is_cpu(), "sparseops.kv_validate: the CPU kernel got bits on ", bits_in.device());
  at::Tensor bits = bits_in.contiguous();
  const int64_t B = bits.size(0), H = bits.size(1), cap = bits.size(2), k = vals.size(3);
  for (int64_t bh = 0; bh < B * H; ++bh) {
    const int64_t bad = kv::find_bad_record(static_cast<int>(D), static_cast<int>(k), bits.data_ptr<uint8_t>(),
                                            bh * cap, bh * cap + length);
    TORCH_CHECK(bad < 0, "sparseops.kv: malformed bitmap: record [batch ", bh / H, ", head ", bh % H, ", token ",
                bad - bh * cap, "] does not have exactly k=", k, " bits set");
  }
}

at::Tensor kv_decompress_cpu(const at::Tensor& bits_in, const at::Tensor& vals_in, int64_t length) {
  kv_validate_cpu(bits_in, vals_in, length);
  const int64_t D = bits_in.size(3) * 8;
  at::Tensor bits = bits_in.contiguous(), vals = vals_in.contiguous();
  const int64_t B = bits.size(0), H = bits.size(1), cap = bits.size(2), k = vals.size(3);
  const kv::DType dt = kv_dtype(vals, "sparseops.kv: vals");
  at::Tensor x = empty_output({B, H, length, D}, vals.options());
  if (length == 0) return x;
  at::parallel_for(0, B * H, 1, [&](int64_t b, int64_t e) {
    for (int64_t bh = b; bh < e; ++bh)
      kv::decompress(dt, static_cast<int>(D), static_cast<int>(k), bits.data_ptr<uint8_t>() + bh * cap * (D / 8),
                     static_cast<const char*>(vals.data_ptr()) + bh * cap * k * vals.element_size(),
                     static_cast<char*>(x.data_ptr()) + bh * length * D * x.element_size(), 0, length);
  });
  return x;
}

std::tuple<at::Tensor, at::Tensor> kv_decode_attention_cpu(
    const at::Tensor& q_in, const at::Tensor& k_bits_in, const at::Tensor& k_vals_in, const at::Tensor& v_bits_in,
    const at::Tensor& v_vals_in, int64_t length, std::optional<double> scale,
    const std::optional<at::Tensor>& k_tail_in, const std::optional<at::Tensor>& v_tail_in) {
  constexpr const char* op = "sparseops.kv_decode_attention";
  const int64_t D = check_store(k_bits_in, k_vals_in, length, "sparseops.kv_decode_attention: k");
  const int64_t Dv = check_store(v_bits_in, v_vals_in, length, "sparseops.kv_decode_attention: v");
  TORCH_CHECK(q_in.dim() == 4, op, ": q must be 4-D [B, Hq, Lq, head_dim], got shape ", q_in.sizes());
  TORCH_CHECK(q_in.device().is_cpu() && k_vals_in.device().is_cpu() && v_vals_in.device().is_cpu(), op,
              ": the CPU kernel got q on ", q_in.device(), ", k on ", k_vals_in.device(), ", v on ",
              v_vals_in.device());
  const kv::DType dt = kv_dtype(q_in, "sparseops.kv_decode_attention: q");
  TORCH_CHECK(k_vals_in.scalar_type() == q_in.scalar_type() && v_vals_in.scalar_type() == q_in.scalar_type(), op,
              ": q is ", q_in.scalar_type(), " but k is ", k_vals_in.scalar_type(), " and v is ",
              v_vals_in.scalar_type(), " (they must match)");
  TORCH_CHECK(D == Dv && q_in.size(3) == D, op, ": head_dim differs: q ", q_in.size(3), ", k ", D, ", v ", Dv);
  const int64_t B = q_in.size(0), Hq = q_in.size(1), Lq = q_in.size(2), Hkv = k_bits_in.size(1);
  TORCH_CHECK(k_bits_in.size(0) == B && v_bits_in.size(0) == B, op, ": batch differs: q ", B, ", k ",
              k_bits_in.size(0), ", v ", v_bits_in.size(0));
  TORCH_CHECK(v_bits_in.size(1) == Hkv, op, ": k has ", Hkv, " heads but v has ", v_bits_in.size(1));
  TORCH_CHECK(Hkv > 0 && Hq % Hkv == 0, op, ": query heads ", Hq, " are not a multiple of kv heads ", Hkv);
  TORCH_CHECK(k_tail_in.has_value() == v_tail_in.has_value(), op, ": give both k_tail and v_tail or neither");
  at::Tensor k_tail, v_tail;
  int64_t Tw = 0;
  if (k_tail_in.has_value()) {
    k_tail = k_tail_in->contiguous();
    v_tail = v_tail_in->contiguous();
    for (const at::Tensor* t : {&k_tail, &v_tail}) {
      TORCH_CHECK(t->dim() == 4 && t->size(0) == B && t->size(1) == Hkv && t->size(3) == D, op,
                  ": tails must be [B, Hkv, Tw, head_dim] = [", B, ", ", Hkv, ", Tw, ", D, "], got ", t->sizes());
      TORCH_CHECK(t->scalar_type() == q_in.scalar_type() && t->device().is_cpu(), op, ": tail is ",
                  t->scalar_type(), " on ", t->device(), ", expected ", q_in.scalar_type(), " on cpu");
    }
    TORCH_CHECK(k_tail.size(2) == v_tail.size(2), op, ": k_tail has ", k_tail.size(2), " tokens but v_tail ",
                v_tail.size(2));
    Tw = k_tail.size(2);
  }
  at::Tensor q = q_in.contiguous();
  at::Tensor kb = k_bits_in.contiguous(), kv_ = k_vals_in.contiguous();
  at::Tensor vb = v_bits_in.contiguous(), vv = v_vals_in.contiguous();
  at::Tensor out = at::empty({B, Hq, Lq, D}, q.options());
  at::Tensor lse = at::empty({B, Hq, Lq}, q.options().dtype(at::kFloat));
  if (out.numel() == 0) return {out, lse};

  kv::AttnArgs a{};
  a.dtype = dt; a.B = B; a.Hq = Hq; a.Hkv = Hkv; a.Lq = Lq; a.D = D; a.T = length;
  a.Tcap_k = kb.size(2); a.Tcap_v = vb.size(2);
  a.kk = static_cast<int>(kv_.size(3)); a.kv = static_cast<int>(vv.size(3));
  a.q = q.data_ptr();
  a.k_bits = kb.data_ptr<uint8_t>(); a.k_vals = kv_.data_ptr();
  a.v_bits = vb.data_ptr<uint8_t>(); a.v_vals = vv.data_ptr();
  a.Tw = Tw;
  a.k_tail = Tw ? k_tail.data_ptr() : nullptr; a.v_tail = Tw ? v_tail.data_ptr() : nullptr;
  a.scale = static_cast<float>(scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(D)));

  // Split-K: enough token chunks per KV head that every thread has work even at batch 1, but chunks
  // of at least 256 tokens so the partial/merge overhead stays small.
  const int64_t N = length + Tw, heads = B * Hkv, R = (Hq / Hkv) * Lq, P = R * (D + 2);
  const int64_t want = (4 * at::get_num_threads() + heads - 1) / heads;
  const int64_t nch = std::max<int64_t>(1, std::min<int64_t>(want, (N + 255) / 256));
  const int64_t chunk = ((N + nch - 1) / nch + 15) / 16 * 16;
  at::Tensor parts = at::empty({heads * nch * P}, q.options().dtype(at::kFloat));
  float* pp = parts.data_ptr<float>();
  const kv::PartialFn fn = kv::partial_kernel(current_isa());
  TORCH_CHECK(fn != nullptr, op, ": no kernel for the active ISA");
  // Small problems (short caches, a model's first decode steps) run on the calling thread: waking the pool
  // costs more than they do, and on a busy machine a descheduled worker stalls the whole call (measured: ~16 ms
  // for a 10-token cache with 2 threads under load, 15 us on one).
  const int64_t items = heads * nch;
  const int64_t grain = N * heads * R < (1 << 13) ? items : 1;
  at::parallel_for(0, items, grain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t bh = i / nch, c = i % nch;
      const int64_t t0 = std::min(N, c * chunk), t1 = std::min(N, t0 + chunk);
      fn(a, bh / Hkv, bh % Hkv, t0, t1, pp + i * P);
    }
  });
  at::parallel_for(0, heads, std::max<int64_t>(1, 64 / nch), [&](int64_t b, int64_t e) {  // merges are cheap
    for (int64_t bh = b; bh < e; ++bh)
      kv::merge(a, bh / Hkv, bh % Hkv, pp + bh * nch * P, nch, out.data_ptr(), lse.data_ptr<float>());
  });
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseops, CPU, m) {
  m.impl("kv_compress", &kv_compress_cpu);
  m.impl("kv_validate", &kv_validate_cpu);
  m.impl("kv_decompress", &kv_decompress_cpu);
  m.impl("kv_decode_attention", &kv_decode_attention_cpu);
}

}  // namespace sparseops::ops
