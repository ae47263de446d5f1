// CSR kernels of every available ISA vs a float64 reference: GEMV and tile paths, both index widths,
// empty rows, odd shapes, strided outputs, and out-of-range column indices (flagged, never read).
#include <cmath>
#include <utility>
#include <limits>

#include "data.h"
#include "harness.h"
#include "kernels/csr/csr.h"

namespace sparseops::test {
namespace {

struct Csr {
  int64_t O, K;
  std::vector<int64_t> row_ptr;
  std::vector<uint16_t> c16;
  std::vector<int32_t> c32;
  Buf values, dense;
  Csr(DType d, int64_t O_, int64_t K_, double density, std::mt19937& rng)
      : O(O_), K(K_), row_ptr(1, 0), values(d, 0), dense(d, static_cast<size_t>(O_ * K_)) {
    std::uniform_real_distribution<double> u(0, 1);
    std::uniform_real_distribution<float> w(-1, 1);
    std::vector<float> vals;
    for (int64_t o = 0; o < O; ++o) {
      const bool empty = o % 5 == 3;  // every fifth row empty
      for (int64_t k = 0; k < K; ++k) {
        if (empty || u(rng) >= density) continue;
        c16.push_back(static_cast<uint16_t>(k));
        c32.push_back(static_cast<int32_t>(k));
        vals.push_back(w(rng));
      }
      row_ptr.push_back(static_cast<int64_t>(vals.size()));
    }
    values = Buf(d, vals.size());
    for (size_t i = 0; i < vals.size(); ++i) values.set(i, vals[i]);
    for (int64_t o = 0; o < O; ++o)
      for (int64_t j = row_ptr[o]; j < row_ptr[o + 1]; ++j) dense.set(o * K + c32[j], values.get(j));
  }
};

void run_case(Harness& h, Isa isa, DType d, int64_t O, int64_t K, int64_t M, double density, csr::Index index,
              std::mt19937& rng) {
  Csr w(d, O, K, density, rng);
  Buf x(d, static_cast<size_t>(M * K)), bias(d, O);
  fill_uniform(x, rng);
  fill_uniform(bias, rng);
  // pack x^T as the glue does: element (k, i) of B = x[i, k]
  const int64_t ldb = csr::packed_ld(M, isa);
  std::vector<float> b(static_cast<size_t>(K * ldb) + 1);
  std::vector<uint8_t> nonfinite(M, 9);
  csr::pack_b(static_cast<csr::DType>(d), x.data(), 1, K, K, M, b.data(), ldb, nonfinite.data(), 0, ldb);
  const int64_t ldy = O + 3;  // y[i, o] at i * ldy + o
  Buf y(d, static_cast<size_t>(M * ldy));
  csr::SpmmArgs a{};
  a.dtype = static_cast<csr::DType>(d);
  a.index = index;
  a.O = O; a.K = K; a.N = M;
  a.row_ptr = w.row_ptr.data();
  a.cols = index == csr::Index::u16 ? static_cast<const void*>(w.c16.data()) : w.c32.data();
  a.values = w.values.data();
  a.b = b.data(); a.ldb = ldb;
  a.bias = bias.data();
  a.y = y.data(); a.so = 1; a.sj = ldy;
  const csr::SpmmFn fn = csr::spmm_kernel(isa);
  const int64_t r0 = fn(a, 0, O / 3), r1 = fn(a, O / 3, O);
  std::vector<double> ref, scale;
  reference(x, K, w.dense, &bias, M, O, K, ref, scale);
  int bad = 0;
  for (int64_t i = 0; i < M; ++i)
    for (int64_t o = 0; o < O; ++o) bad += !close(y.get(i * ldy + o), ref[i * O + o], scale[i * O + o], d, K);
  int nf = 0;
  for (uint8_t f : nonfinite) nf += f;
  h.check(r0 < 0 && r1 < 0 && bad == 0 && nf == 0, "csr %s %s idx=%d O=%lld K=%lld M=%lld density=%.2f: %d bad, ret %lld/%lld",
          isa_name(isa), dtype_name(d), int(index), (long long)O, (long long)K, (long long)M, density, bad,
          (long long)r0, (long long)r1);

  // decompress_rows: bit-exact dense rows (a middle range, strided), before the index is corrupted below.
  if (M == 1) {
    const int64_t o0 = O / 4, o1 = O - O / 5, ld = K + 5;
    Buf out(d, static_cast<size_t>((o1 - o0) * ld));
    const int64_t r = csr::decompress_rows(a, out.data(), ld, o0, o1);
    int diff = 0;
    for (int64_t o = o0; o < o1; ++o)
      for (int64_t k = 0; k < K; ++k) diff += out.get((o - o0) * ld + k) != w.dense.get(o * K + k);
    h.check(r < 0 && diff == 0, "csr decompress_rows %s idx=%d O=%lld K=%lld: ret %lld, %d differ", dtype_name(d),
            int(index), (long long)O, (long long)K, (long long)r, diff);
  }

  // A column index >= K in one row: that row is reported, and nothing is read out of bounds (ASan).
  if (w.row_ptr[O] > 0) {
    int64_t victim = 0;
    while (w.row_ptr[victim + 1] == w.row_ptr[victim]) ++victim;
    const int64_t e = w.row_ptr[victim + 1] - 1;
    w.c16[e] = static_cast<uint16_t>(K <= 65535 ? K : 65535);
    w.c32[e] = index == csr::Index::i32 && (e & 1) ? -7 : static_cast<int32_t>(K + 100000);
    const int64_t r = fn(a, 0, O);
    const bool expect = index == csr::Index::i32 || K <= 65535;
    h.check(!expect || r == victim, "csr %s %s idx=%d M=%lld: bad column in row %lld reported as %lld",
            isa_name(isa), dtype_name(d), int(index), (long long)M, (long long)victim, (long long)r);
    if (M == 1) {
      Buf out(d, static_cast<size_t>(O * K));
      const int64_t rd = csr::decompress_rows(a, out.data(), K, 0, O);
      h.check(!expect || rd == victim, "csr decompress_rows %s idx=%d: bad column in row %lld reported as %lld",
              dtype_name(d), int(index), (long long)victim, (long long)rd);
    }
    // The same at the row's first entry, which long rows read in whole blocks of 16 (not the tail path).
    const int64_t f = w.row_ptr[victim];
    if (f != e) {
      std::swap(w.c16[f], w.c16[e]);
      std::swap(w.c32[f], w.c32[e]);
      const int64_t rf = fn(a, 0, O);
      h.check(!expect || rf == victim, "csr %s %s idx=%d M=%lld: bad first column in row %lld reported as %lld",
              isa_name(isa), dtype_name(d), int(index), (long long)M, (long long)victim, (long long)rf);
    }
  }
}

}  // namespace

void test_csr(Harness& h) {
  std::mt19937 rng(777);
  for (Isa isa : available_isas()) {
    for (DType d : {DType::f32, DType::bf16, DType::f16}) {
      for (csr::Index index : {csr::Index::u16, csr::Index::i32}) {
        for (int64_t M : {1, 2, 5, 16, 17, 40, 70, 120}) {  // 120: ldb padded past 128 (packed_ld)
          run_case(h, isa, d, 23, 57, M, 0.3, index, rng);
          run_case(h, isa, d, 9, 301, M, 0.1, index, rng);
        }
        run_case(h, isa, d, 40, 1000, 1, 0.5, index, rng);
        // long rows at M <= 16: the tiles' vector-checked blocks of 16 / 32 entries, a bad index inside one
        for (int64_t M : {5, 16}) run_case(h, isa, d, 12, 700, M, 0.4, index, rng);
        run_case(h, isa, d, 7, 1, 3, 0.9, index, rng);
      }
    }
  }
  // Non-finite inputs are flagged per column of B (the glue recomputes those densely).
  {
    Buf x(DType::f32, 2 * 5);
    for (int i = 0; i < 10; ++i) x.set(i, 1.0f);
    x.set(1 * 5 + 2, std::numeric_limits<float>::infinity());
    std::vector<float> b(5 * 16);
    std::vector<uint8_t> nf(2, 9);
    csr::pack_b(csr::DType::f32, x.data(), 1, 5, 5, 2, b.data(), 16, nf.data(), 0, 16);
    h.check(nf[0] == 0 && nf[1] == 1 && b[3 * 16 + 5] == 0.0f, "csr pack_b: non-finite flags %d %d", nf[0], nf[1]);
  }
  // Each ISA's pack equals the portable one byte for byte, flags included: row-major x (its fast path), strided x,
  // ragged N and K, an Inf and a NaN.
  for (Isa isa : available_isas())
    for (DType d : {DType::f32, DType::bf16, DType::f16})
      for (int64_t N : {2, 16, 17, 40})
        for (int64_t K : {1, 15, 16, 37})
          for (int64_t sk : {1, 2}) {
            Buf x(d, static_cast<size_t>(N * K * sk));
            fill_uniform(x, rng);
            if (N > 5) x.set((5 * K + K / 2) * sk, std::numeric_limits<float>::infinity());
            x.set(((N - 1) * K) * sk, std::numeric_limits<float>::quiet_NaN());
            const int64_t ldb = csr::packed_ld(N, isa);
            std::vector<float> b0(K * ldb, -1.0f), b1(K * ldb, -2.0f);
            std::vector<uint8_t> f0(N, 7), f1(N, 9);
            csr::pack_b(static_cast<csr::DType>(d), x.data(), sk, K * sk, K, N, b0.data(), ldb, f0.data(), 0, ldb);
            csr::pack_b_kernel(isa)(static_cast<csr::DType>(d), x.data(), sk, K * sk, K, N, b1.data(), ldb, f1.data(),
                                    0, ldb);
            h.check(std::memcmp(b0.data(), b1.data(), b0.size() * 4) == 0 && f0 == f1,
                    "csr %s pack_b %s N=%lld K=%lld sk=%lld differs from the portable pack", isa_name(isa),
                    dtype_name(d), (long long)N, (long long)K, (long long)sk);
          }
  // Validation names the first problem.
  {
    const int64_t rp_bad[] = {0, 2, 1, 3};
    const int32_t cols[] = {0, 1, 9};
    int64_t where = -1;
    h.check(csr::validate(rp_bad, 3, cols, false, 3, 4, &where) == csr::kDecreasing && where == 1,
            "csr validate: decreasing row pointer at %lld", (long long)where);
    const int64_t rp[] = {0, 1, 2, 3};
    h.check(csr::validate(rp, 3, cols, false, 3, 4, &where) == csr::kColOutOfRange && where == 2,
            "csr validate: column out of range at %lld", (long long)where);
    h.check(csr::validate(rp, 3, cols, false, 4, 10, &where) == csr::kLastNotNnz, "csr validate: nnz mismatch");
    h.check(csr::validate(rp, 3, cols, false, 3, 10, &where) == csr::kOk, "csr validate: valid input rejected");
  }
  // Balanced splits: monotone, cover all rows, and a heavy row gets a part of its own.
  {
    const int64_t rp[] = {0, 1, 2, 1000, 1001, 1002};
    int64_t bounds[5];
    csr::balanced_splits(rp, 5, 4, bounds);
    bool ok = bounds[0] == 0 && bounds[4] == 5;
    for (int p = 0; p < 4; ++p) ok &= bounds[p] <= bounds[p + 1];
    h.check(ok, "csr balanced_splits: %lld %lld %lld %lld %lld", (long long)bounds[0], (long long)bounds[1],
            (long long)bounds[2], (long long)bounds[3], (long long)bounds[4]);
  }
}

}  // namespace sparseops::test
