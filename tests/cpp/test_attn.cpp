// Block-sparse attention kernels of every available ISA vs a float64 reference; list validation;
// defensive handling of malformed lists (run under ASan by .ci/cpp.sh).
#include <cmath>
#include <limits>
#include <vector>

#include "data.h"
#include "harness.h"
#include "kernels/attn/attn.h"

namespace sparseops::test {

void test_attn(Harness& h);

namespace {

struct Problem {
  int64_t B, Hq, Hkv, Lq, Lk, D;
  int bq, bk;
  bool causal;
  DType dt;
  Buf q, k, v, out;
  std::vector<float> lse;
  std::vector<int32_t> num, idx;  // [B, Hq, nQB], [B, Hq, nQB, nKB] (capacity nKB)
  std::vector<uint8_t> blocks;    // [B, Hq, nQB, nKB] the listed pairs
  int64_t nqb, nkb;
  Problem(DType d, int64_t B_, int64_t Hq_, int64_t Hkv_, int64_t Lq_, int64_t Lk_, int64_t D_, int bq_, int bk_,
          bool c, double density, std::mt19937& rng, bool ascending = false)
      : B(B_), Hq(Hq_), Hkv(Hkv_), Lq(Lq_), Lk(Lk_), D(D_), bq(bq_), bk(bk_), causal(c), dt(d),
        q(d, B_ * Hq_ * Lq_ * D_), k(d, B_ * Hkv_ * Lk_ * D_), v(d, B_ * Hkv_ * Lk_ * D_), out(d, B_ * Hq_ * Lq_ * D_),
        lse(B_ * Hq_ * Lq_), nqb((Lq_ + bq_ - 1) / bq_), nkb((Lk_ + bk_ - 1) / bk_) {
    fill_uniform(q, rng, -2.0f, 2.0f);
    fill_uniform(k, rng, -2.0f, 2.0f);
    fill_uniform(v, rng);
    std::uniform_real_distribution<double> u(0, 1);
    num.assign(B * Hq * nqb, 0);
    idx.assign(B * Hq * nqb * nkb, 0);
    blocks.assign(B * Hq * nqb * nkb, 0);
    for (int64_t r = 0; r < B * Hq * nqb; ++r) {
      std::vector<int32_t> sel;
      for (int64_t j = 0; j < nkb; ++j)
        if (u(rng) < density) sel.push_back(static_cast<int32_t>(j));
      if (!ascending) std::shuffle(sel.begin(), sel.end(), rng);  // any order is allowed
      num[r] = static_cast<int32_t>(sel.size());
      for (size_t t = 0; t < sel.size(); ++t) {
        idx[r * nkb + t] = sel[t];
        blocks[r * nkb + sel[t]] = 1;
      }
      for (int64_t t = static_cast<int64_t>(sel.size()); t < nkb; ++t) idx[r * nkb + t] = 1 << 30;  // garbage past count
    }
  }
  attn::Args args() {
    attn::Args a{};
    a.dtype = dt; a.B = B; a.Hq = Hq; a.Hkv = Hkv; a.Lq = Lq; a.Lk = Lk; a.D = D;
    a.q = q.data(); a.q_sb = Hq * Lq * D; a.q_sh = Lq * D; a.q_sl = D;
    a.k = k.data(); a.k_sb = Hkv * Lk * D; a.k_sh = Lk * D; a.k_sl = D;
    a.v = v.data(); a.v_sb = Hkv * Lk * D; a.v_sh = Lk * D; a.v_sl = D;
    a.out = out.data(); a.o_sb = Hq * Lq * D; a.o_sh = Lq * D; a.o_sl = D;
    a.lse = lse.data();
    a.kv_num = num.data(); a.n_sb = Hq * nqb; a.n_sh = nqb;
    a.kv_idx = idx.data(); a.i_sb = Hq * nqb * nkb; a.i_sh = nqb * nkb; a.i_sq = nkb;
    a.cap = nkb;
    a.block_q = bq; a.block_k = bk; a.causal = causal;
    a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
    return a;
  }
};

// Checks out / lse of (b, h, i) against float64; returns the number of bad values.
int check_row(Problem& p, int64_t b, int64_t h, int64_t i, double scale) {
  const int64_t hk = h / (p.Hq / p.Hkv);
  std::vector<double> s(p.Lk);
  double mx = -INFINITY;
  std::vector<char> vis(p.Lk, 0);
  for (int64_t j = 0; j < p.Lk; ++j) {
    vis[j] = p.blocks[((b * p.Hq + h) * p.nqb + i / p.bq) * p.nkb + j / p.bk] && (!p.causal || j <= i);
    if (!vis[j]) continue;
    double d = 0;
    for (int64_t c = 0; c < p.D; ++c)
      d += double(p.q.get(((b * p.Hq + h) * p.Lq + i) * p.D + c)) * p.k.get(((b * p.Hkv + hk) * p.Lk + j) * p.D + c);
    s[j] = d * scale;
    mx = std::max(mx, s[j]);
  }
  double l = 0;
  std::vector<double> o(p.D, 0.0);
  for (int64_t j = 0; j < p.Lk; ++j) {
    if (!vis[j]) continue;
    const double e = std::exp(s[j] - mx);
    l += e;
    for (int64_t c = 0; c < p.D; ++c) o[c] += e * p.v.get(((b * p.Hkv + hk) * p.Lk + j) * p.D + c);
  }
  int bad = 0;
  const double tol = p.dt == DType::f32 ? 2e-5 : p.dt == DType::bf16 ? 1.6e-2 : 2e-3;
  for (int64_t c = 0; c < p.D; ++c) {
    const double ref = l > 0 ? o[c] / l : 0.0, got = p.out.get(((b * p.Hq + h) * p.Lq + i) * p.D + c);
    if (!(std::fabs(got - ref) <= tol * (1 + std::fabs(ref)))) ++bad;
  }
  const float gl = p.lse[(b * p.Hq + h) * p.Lq + i];
  if (l == 0) bad += !(std::isinf(gl) && gl < 0);
  else bad += !(std::fabs(gl - (mx + std::log(l))) <= 1e-4 * (1 + std::fabs(mx)));
  return bad;
}

}  // namespace

void test_attn(Harness& h) {
  std::mt19937 rng(99);
  const DType dts[] = {DType::f32, DType::bf16, DType::f16};
  struct Cfg { int64_t Hq, Hkv, Lq, Lk, D; int bq, bk; bool causal; double density; };
  const Cfg cfgs[] = {
      {2, 2, 50, 50, 64, 16, 16, false, 0.5},  {4, 2, 70, 130, 72, 32, 64, true, 0.6},
      {4, 1, 130, 40, 128, 64, 16, true, 1.0}, {8, 1, 33, 97, 256, 48, 32, false, 0.4},
      {2, 1, 20, 300, 40, 16, 256, false, 1.0}, {1, 1, 256, 256, 64, 256, 128, true, 0.7},
      // Causal diagonal blocks (the GEMMs skip the invisible triangle): square, unequal and short blocks.
      {2, 2, 200, 200, 128, 64, 64, true, 1.0}, {2, 1, 150, 190, 40, 48, 112, true, 0.8},
      {1, 1, 90, 90, 96, 96, 32, true, 1.0},
  };
  for (Isa isa : available_isas()) {
    const attn::BlockFn fn = attn::block_kernel(isa);
    if (!h.check(fn != nullptr, "attn: no kernel for %s", isa_name(isa))) continue;
    int variant = 0;
    for (DType d : dts)
      for (const Cfg& c : cfgs) {
        // Lists ascending (paired items walk the union of their lists) or shuffled (each walks its own);
        // items alone, in pairs of neighbouring query blocks, or in pairs of query heads at one query block.
        const bool ascending = variant % 2 == 0;
        const int pairing = (variant / 2) % 3;
        ++variant;
        Problem p(d, 2, c.Hq, c.Hkv, c.Lq, c.Lk, c.D, c.bq, c.bk, c.causal, c.density, rng, ascending);
        attn::Args a = p.args();
        std::vector<float> scratch(attn::scratch_floats(a));
        int64_t where[4];
        h.check(attn::validate(a, p.B, p.Hq, where) == 0, "attn: validate rejected a good list");
        for (int64_t b = 0; b < p.B; ++b) {
          std::vector<attn::Item> all;
          if (pairing == 2)
            for (int64_t qb = 0; qb < p.nqb; ++qb)
              for (int64_t hh = 0; hh < p.Hq; ++hh) all.push_back({hh, qb});
          else
            for (int64_t hh = 0; hh < p.Hq; ++hh)
              for (int64_t qb = 0; qb < p.nqb; ++qb) all.push_back({hh, qb});
          const size_t step = pairing == 0 ? 1 : 2;
          for (size_t s = 0; s < all.size(); s += step) {
            const int n = static_cast<int>(std::min(step, all.size() - s));
            fn(a, b, all.data() + s, n, ((s / step + b) & 1) != 0, scratch.data());  // both orders
          }
        }
        int bad = 0;
        for (int64_t b = 0; b < p.B; ++b)
          for (int64_t hh = 0; hh < p.Hq; ++hh)
            for (int64_t i = 0; i < p.Lq; ++i) bad += check_row(p, b, hh, i, a.scale);
        h.check(bad == 0,
                "attn %s %s Hq=%lld Hkv=%lld L=%lldx%lld D=%lld blocks %dx%d causal=%d ascending=%d pairing=%d: %d bad "
                "values",
                isa_name(isa), dtype_name(d), (long long)c.Hq, (long long)c.Hkv, (long long)c.Lq, (long long)c.Lk,
                (long long)c.D, c.bq, c.bk, int(c.causal), int(ascending), pairing, bad);
      }
  }

  // validate(): each kind of malformed list is named; the kernels skip bad entries without reading out of range.
  {
    Problem p(DType::f32, 1, 1, 1, 64, 64, 64, 32, 16, false, 1.0, rng);
    attn::Args a = p.args();
    int64_t w[4];
    p.num[1] = 5;  // > capacity 4
    h.check(attn::validate(a, 1, 1, w) == 1 && w[2] == 1, "attn validate: count > capacity not caught");
    p.num[1] = -1;
    h.check(attn::validate(a, 1, 1, w) == 1, "attn validate: negative count not caught");
    p.num[1] = 4;
    p.idx[4 + 2] = 4;  // == nKB
    h.check(attn::validate(a, 1, 1, w) == 2 && w[2] == 1 && w[3] == 2, "attn validate: index == nKB not caught");
    p.idx[4 + 2] = p.idx[4 + 0];
    h.check(attn::validate(a, 1, 1, w) == 3, "attn validate: repeated block not caught");
    // A full list repeating a partial block.
    std::vector<int32_t> fnum = {1, 0}, fidx = {p.idx[0], 0, 0, 0, 0, 0, 0, 0};
    p.idx[4 + 2] = 4;
    p.num[1] = 1;
    p.idx[4] = 0;
    a.full_num = fnum.data(); a.fn_sb = 2; a.fn_sh = 2;
    a.full_idx = fidx.data(); a.fi_sb = 8; a.fi_sh = 8; a.fi_sq = 4; a.full_cap = 4;
    h.check(attn::validate(a, 1, 1, w) == 13, "attn validate: block in both lists not caught");
    // Malformed lists straight into every kernel: no crash, no out-of-range read (ASan).
    p.num[0] = 1000; p.idx[0] = -7; p.idx[1] = 1 << 30; p.num[1] = -3;
    for (Isa isa : available_isas()) {
      std::vector<float> scratch(attn::scratch_floats(a));
      const attn::Item both[2] = {{0, 0}, {0, 1}};
      for (bool rev : {false, true}) {
        attn::block_kernel(isa)(a, 0, both, 1, rev, scratch.data());
        attn::block_kernel(isa)(a, 0, both + 1, 1, rev, scratch.data());
        attn::block_kernel(isa)(a, 0, both, 2, rev, scratch.data());  // a pair walking malformed lists together
      }
      bool finite = true;
      for (size_t i = 0; i < p.out.size(); ++i) finite &= std::isfinite(p.out.get(i));
      h.check(finite, "attn %s: malformed lists gave non-finite output", isa_name(isa));
    }
  }
}

}  // namespace sparseops::test
