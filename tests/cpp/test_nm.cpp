// N:M kernels of every available ISA vs a float64 reference; malformed masks; format helpers.
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "data.h"
#include "harness.h"
#include "kernels/nm/nm.h"

namespace sparseops::test {
namespace {

const int kPatterns[][2] = {{1, 2}, {1, 4}, {2, 4}, {3, 4}, {1, 8}, {2, 8}, {4, 8},
                            {6, 8}, {1, 16}, {8, 16}, {15, 16}};
const DType kDtypes[] = {DType::f32, DType::bf16, DType::f16};
// The x86 kept-only GEMM takes M >= 16 (AVX2; 48 = a 32-row and a 16-row panel) and M >= 40 (AVX-512).
const int64_t kMs[] = {1, 2, 3, 7, 16, 17, 33, 48, 64, 130};

// K: a multiple of m, never of 32 (and K % 8 != 0 for m <= 4, so the mask has padding bits).
int64_t pick_k(int m, int variant) {
  const int64_t groups[] = {21, 37};  // 16*21 = 336 and 16*37 = 592 span several 256-column blocks
  return m * groups[variant % 2];
}

nm::LinearArgs make_args(DType d, const NmWeight& w, int64_t M, const Buf& x, int64_t ldx, const Buf* bias,
                         Buf& y, int64_t ldy) {
  nm::LinearArgs a{};
  a.dtype = d; a.n = w.n; a.m = w.m; a.M = M; a.K = w.K; a.O = w.O;
  a.x = x.data(); a.ldx = ldx;
  a.values = w.values.data(); a.mask = w.mask.data();
  a.bias = bias ? bias->data() : nullptr;
  a.y = y.data(); a.ldy = ldy;
  return a;
}

// The dense weight a mask describes, right or wrong: the row's values placed in order on its set bits.
Buf as_given(DType d, const NmWeight& w) {
  Buf dense(d, w.O * w.K);
  for (int64_t o = 0; o < w.O; ++o)
    for (int64_t k = 0, v = 0; k < w.K; ++k)
      if ((w.mask[o * w.row_bytes + k / 8] >> (k % 8)) & 1) dense.set(o * w.K + k, w.values.get(o * w.kept + v++));
      else dense.set(o * w.K + k, 0.0f);
  return dense;
}

}  // namespace

void test_nm_linear(Harness& h) {
  std::mt19937 rng(1234);
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  for (Isa isa : available_isas()) {
    const nm::LinearFn fn = nm::linear_kernel(isa);
    int variant = 0;
    for (auto& pat : kPatterns) {
      const int n = pat[0], m = pat[1];
      for (DType d : kDtypes) {
        // O = 77 in some cases: more than one run of 64 outputs in the large-M store (nm_x86_tile.h)
        const int64_t K = pick_k(m, variant), O = variant % 3 == 0 ? 77 : 13;
        ++variant;
        NmWeight w(d, n, m, O, K, rng);
        Buf bias(d, O);
        fill_uniform(bias, rng);
        for (int64_t M : kMs) {
          for (int bias_case = 0; bias_case < 3; ++bias_case) {  // none; bias; bias + non-finite x
            const int with_bias = bias_case > 0;
            const int64_t ldx = K + 3, ldy = O + 2;  // strided rows
            Buf x(d, M * ldx), y(d, M * ldy);
            fill_uniform(x, rng);
            // Non-finite inputs in some cases: row 0 gets +Inf at one column, the last row (M >= 2) a NaN.
            const bool nonfinite = bias_case == 2;
            if (nonfinite) {
              x.set(0 * ldx + K / 3, inf);
              if (M >= 2) x.set((M - 1) * ldx + K - 1, nan);
            }
            const Buf* b = with_bias ? &bias : nullptr;
            // Two disjoint output ranges, like two threads.
            const nm::LinearArgs a = make_args(d, w, M, x, ldx, b, y, ldy);
            const int64_t split = 5;
            const int64_t r1 = fn(a, 0, split), r2 = fn(a, split, O);
            std::vector<double> ref, scale;
            // The reference uses x with unit stride: repack.
            Buf xc(d, M * K);
            for (int64_t i = 0; i < M; ++i)
              for (int64_t k = 0; k < K; ++k) xc.set(i * K + k, x.get(i * ldx + k));
            reference(xc, K, w.dense, b, M, O, K, ref, scale);
            int bad = 0;
            double worst = 0;
            int64_t wi = 0, wo = 0;
            for (int64_t i = 0; i < M; ++i)
              for (int64_t o = 0; o < O; ++o) {
                const double got = y.get(i * ldy + o), r = ref[i * O + o];
                if (!close(got, r, scale[i * O + o], d, K)) {
                  if (!bad || std::fabs(got - r) > worst) { worst = std::fabs(got - r); wi = i; wo = o; }
                  ++bad;
                }
              }
            h.check(r1 == -1 && r2 == -1 && bad == 0,
                    "nm %s %d:%d %s M=%lld K=%lld bias=%d nonfinite=%d: ret %lld/%lld, %d bad, y[%lld,%lld]=%g ref %g",
                    isa_name(isa), n, m, dtype_name(d), (long long)M, (long long)K, with_bias, nonfinite,
                    (long long)r1, (long long)r2, bad, (long long)wi, (long long)wo, y.get(wi * ldy + wo),
                    ref.empty() ? 0.0 : ref[wi * O + wo]);
          }
        }
      }
    }
  }
}

// An avx512x-tier kernel called directly wherever it can run (x86 with the AVX-512 extensions), whichever path the
// dispatch takes on this CPU (the pair kernel is Zen 5's, the gather AMD's); nullptr elsewhere or if it does not fit.
enum class Direct { pairs, gather_m1 };
static nm::LinearFn ext_direct(Direct k, Isa isa, const nm::LinearArgs& a) {
#if defined(SPARSEOPS_X86)
  if (isa == Isa::avx512 && avx512_ext()) {
    if (k == Direct::pairs && nm::pairs_fits_avx512x(a)) return nm::linear_pairs_avx512x;
    if (k == Direct::gather_m1 && nm::gather_m1_fits_avx512x(a)) return nm::linear_gather_m1_avx512x;
  }
#endif
  (void)k; (void)isa; (void)a;
  return nullptr;
}

// bf16 2:8 / 1:4 at M = 2..8 through the gather directly (where the extensions run): against the reference, with
// strided x and y, bias, a tail of columns, and a malformed row named.
void test_nm_gather_tokens(Harness& h) {
#if defined(SPARSEOPS_X86)
  if (!avx512_ext()) return;
  std::mt19937 rng(828);
  const DType d = DType::bf16;
  for (auto pat : {std::pair<int, int>{2, 8}, {1, 4}})
    for (int64_t K : {int64_t(1192), int64_t(4096)})
      for (int64_t M : {int64_t(2), int64_t(3), int64_t(5), int64_t(8)}) {
        const int n = pat.first, m = pat.second;
        const int64_t O = 21, ldx = K + 9, ldy = O + 4;
        NmWeight w(d, n, m, O, K, rng);
        Buf x(d, M * ldx), y(d, M * ldy), xc(d, M * K), bias(d, O);
        fill_uniform(x, rng);
        fill_uniform(bias, rng);
        for (int64_t i = 0; i < M; ++i)
          for (int64_t k = 0; k < K; ++k) xc.set(i * K + k, x.get(i * ldx + k));
        const nm::LinearArgs a = make_args(d, w, M, x, ldx, &bias, y, ldy);
        if (!nm::gather_tokens_fits_avx512x(a)) continue;
        const int64_t r1 = nm::linear_gather_tokens_avx512x(a, 0, 10), r2 = nm::linear_gather_tokens_avx512x(a, 10, O);
        std::vector<double> ref, scale;
        reference(xc, K, w.dense, &bias, M, O, K, ref, scale);
        int bad = 0;
        for (int64_t i = 0; i < M; ++i)
          for (int64_t o = 0; o < O; ++o) bad += !close(y.get(i * ldy + o), ref[i * O + o], scale[i * O + o], d, K);
        h.check(r1 == -1 && r2 == -1 && bad == 0, "nm gather %d:%d bf16 K=%lld M=%lld: ret %lld/%lld, %d bad", n, m,
                (long long)K, (long long)M, (long long)r1, (long long)r2, bad);
        NmWeight b = w;  // row 13: a bit moved to the next byte (byte counts 1 and 3)
        uint8_t* mb = b.mask.data() + 13 * b.row_bytes + 20;
        const int top = 31 - __builtin_clz(mb[0]);
        mb[0] = static_cast<uint8_t>(mb[0] & ~(1u << top));
        mb[1] = static_cast<uint8_t>(mb[1] | (mb[1] + 1));
        const nm::LinearArgs ab = make_args(d, b, M, x, ldx, nullptr, y, ldy);
        h.check(nm::linear_gather_tokens_avx512x(ab, 0, O) == 13, "nm gather %d:%d K=%lld M=%lld: row 13 not named",
                n, m, (long long)K, (long long)M);
      }
#else
  (void)h;
#endif
}

// 1:4 and 2:8 at M = 1 with long rows (K >= 256): the AVX-512 select paths (1:4: whole blocks of 16 / 32 groups,
// a tail of 7 or 4 groups, an odd group count with padding bits; bf16 pairs: 512-column steps and a tail of 168
// columns, or none); x with an Inf takes placement there and must give NaN/Inf as dense math does. A byte with
// both bits in one nibble (1:4: byte count right, groups wrong) or a bit moved to the next byte (2:8) names its
// row or gives what the mask says. The gather GEMV (2:8; 1:4 with K % 8 == 0) is also called directly, and must
// name the row.
void test_nm_select14(Harness& h) {
  std::mt19937 rng(414);
  for (Isa isa : available_isas()) {
    const nm::LinearFn fn = nm::linear_kernel(isa);
    for (DType d : {DType::f32, DType::bf16})
    for (int m : {4, 8})
      for (int64_t G : m == 4 ? std::vector<int64_t>{295, 260} : std::vector<int64_t>{149, 64}) {
        const int n = m / 4;
        const int64_t K = m * G, O = 13;
        NmWeight w(d, n, m, O, K, rng);
        for (int inf = 0; inf < 2; ++inf) {
          Buf x(d, K), y(d, O);
          fill_uniform(x, rng);
          if (inf) x.set(K / 2 + 1, std::numeric_limits<float>::infinity());
          const nm::LinearArgs a = make_args(d, w, 1, x, K, nullptr, y, O);
          std::vector<double> ref, scale;
          reference(x, K, w.dense, nullptr, 1, O, K, ref, scale);
          for (const nm::LinearFn f : {fn, ext_direct(Direct::gather_m1, isa, a)}) {
            if (!f) continue;
            const int64_t r = f(a, 0, O);
            int bad = 0;
            for (int64_t o = 0; o < O; ++o) bad += !close(y.get(o), ref[o], scale[o], d, K);
            h.check(r == -1 && bad == 0, "nm %s %d:%d %s M=1 K=%lld inf=%d%s: ret %lld, %d bad", isa_name(isa), n,
                    m, dtype_name(d), (long long)K, inf, f == fn ? "" : " (gather)", (long long)r, bad);
          }
        }
        // Either the row is named or the result is exactly what the mask says (the placing paths check counts
        // per chunk or byte and compute that); never anything else.
        NmWeight b = w;
        const int64_t row = 6, byte = 6 * b.row_bytes + 9;
        if (m == 4) {
          b.mask[byte] = (b.mask[byte] & 0x0f) == 0x01 ? 0x03 : 0x30;  // two bits in one nibble, none in the other
        } else {  // the top bit of byte 9 moves to the lowest clear bit of byte 10: 1 and 3 bits
          const int top = 31 - __builtin_clz(b.mask[byte]);
          b.mask[byte] = static_cast<uint8_t>(b.mask[byte] & ~(1u << top));
          b.mask[byte + 1] = static_cast<uint8_t>(b.mask[byte + 1] | (b.mask[byte + 1] + 1));
        }
        Buf x(d, K), y(d, O);
        fill_uniform(x, rng);
        const int64_t r = fn(make_args(d, b, 1, x, K, nullptr, y, O), 0, O);
        std::vector<double> ref, scale;
        reference(x, K, as_given(d, b), nullptr, 1, O, K, ref, scale);
        bool exact = r == -1;
        for (int64_t o = 0; o < O && exact; ++o) exact = close(y.get(o), ref[o], scale[o], d, K);
        h.check(r == row || exact, "nm %s %d:%d %s M=1 K=%lld: a malformed byte gave %lld and %s", isa_name(isa), n,
                m, dtype_name(d), (long long)K, (long long)r, r == -1 ? "a result off the mask as given" : "the wrong row");
        const nm::LinearArgs ab = make_args(d, b, 1, x, K, nullptr, y, O);
        if (const nm::LinearFn g = ext_direct(Direct::gather_m1, isa, ab))
          h.check(g(ab, 0, O) == row, "nm %d:%d %s M=1 K=%lld: the gather GEMV did not name row %lld", n, m,
                  dtype_name(d), (long long)K, (long long)row);
      }
  }
}

// bf16 at M >= 32 (AVX-512 with the extensions: pair dot products for 2:4, 2:8 and 4:8 from M = 32 and 1:4 from
// M = 64): rows past several superblocks and row chunks, a tail block, token panels of 64
// and a remainder, bias, two output ranges; x with an Inf goes to the dense dot products and must spread NaN/Inf as
// dense math does. 1:4 with K % 8 != 0 goes there too.
void test_nm_pairs(Harness& h) {
  std::mt19937 rng(24);
  const DType bf = DType::bf16;
  for (Isa isa : available_isas()) {
    const nm::LinearFn fn = nm::linear_kernel(isa);
    for (auto pat : {std::pair<int, int>{2, 4}, {1, 4}, {2, 8}, {4, 8}}) {
      const int n = pat.first, m = pat.second;
      for (int64_t K : {int64_t(1204), int64_t(1208)}) {  // 1204: a 4-column tail, which 1:4 pairs do not take
        if (K % m) continue;
        const int64_t O = 101;
        NmWeight w(bf, n, m, O, K, rng);
        Buf bias(bf, O);
        fill_uniform(bias, rng);
        for (int64_t M : {int64_t(32), int64_t(47), int64_t(64), int64_t(65), int64_t(130)})
          for (int inf = 0; inf < 2; ++inf) {
            const int64_t ldx = K + 5, ldy = O + 3;
            Buf x(bf, M * ldx), y(bf, M * ldy), xc(bf, M * K);
            fill_uniform(x, rng);
            if (inf) x.set((M / 2) * ldx + K / 3, std::numeric_limits<float>::infinity());
            for (int64_t i = 0; i < M; ++i)
              for (int64_t k = 0; k < K; ++k) xc.set(i * K + k, x.get(i * ldx + k));
            const nm::LinearArgs a = make_args(bf, w, M, x, ldx, &bias, y, ldy);
            const nm::LinearFn pd = inf ? nullptr : ext_direct(Direct::pairs, isa, a);
            const nm::LinearFn f = pd ? pd : fn;
            const int64_t r1 = f(a, 0, 50), r2 = f(a, 50, O);
            std::vector<double> ref, scale;
            reference(xc, K, w.dense, &bias, M, O, K, ref, scale);
            int bad = 0;
            for (int64_t i = 0; i < M; ++i)
              for (int64_t o = 0; o < O; ++o) bad += !close(y.get(i * ldy + o), ref[i * O + o], scale[i * O + o], bf, K);
            h.check(r1 == -1 && r2 == -1 && bad == 0, "nm pairs %s bf16 %d:%d K=%lld M=%lld inf=%d: ret %lld/%lld, %d bad",
                    isa_name(isa), n, m, (long long)K, (long long)M, inf, (long long)r1, (long long)r2, bad);
          }
        // Row 77, columns 560..575 (second superblock): groups wrong, every 16-column chunk's count right (2:4: a
        // nibble of four bits beside an empty one; 1:4: two bits in one nibble; 2:8: 3 + 1 bits; 4:8: 7 + 1).
        NmWeight b = w;
        uint8_t* mb = b.mask.data() + 77 * b.row_bytes + 70;
        if (m == 4) mb[0] = n == 2 ? 0x0f : 0x03;
        else { mb[0] = n == 2 ? 0x07 : 0x7f; mb[1] = 0x01; }
        Buf x(bf, 64 * K), y(bf, 64 * O);
        fill_uniform(x, rng);
        const int64_t r = fn(make_args(bf, b, 64, x, K, nullptr, y, O), 3, O);
        std::vector<double> ref, scale;  // the paths that count whole chunks may compute what the mask says instead
        reference(x, K, as_given(bf, b), nullptr, 64, O, K, ref, scale);
        bool exact = r == -1;
        for (int64_t i = 0; i < 64 && exact; ++i)
          for (int64_t o = 3; o < O; ++o) exact = exact && close(y.get(i * O + o), ref[i * O + o], scale[i * O + o], bf, K);
        h.check(r == 77 || exact, "nm pairs %s %d:%d K=%lld: a malformed row 77 gave %lld", isa_name(isa), n, m,
                (long long)K, (long long)r);
        const nm::LinearArgs ab = make_args(bf, b, 64, x, K, nullptr, y, O);
        if (const nm::LinearFn pd = ext_direct(Direct::pairs, isa, ab))
          h.check(pd(ab, 3, O) == 77, "nm pairs %d:%d K=%lld: the pair path did not name row 77", n,
                  m, (long long)K);
      }
    }
  }
}

// M = 1 with x past 32 KiB (where the GEMVs pick other paths than for short rows; K = 8200 leaves an 8-column tail),
// every dtype, the patterns with fast GEMVs and 1:2; a malformed byte past column 4096 names its row or gives what
// the mask says.
void test_nm_m1_long(Harness& h) {
  std::mt19937 rng(4242);
  for (Isa isa : available_isas()) {
    const nm::LinearFn fn = nm::linear_kernel(isa);
    for (auto pat : {std::pair<int, int>{2, 4}, {1, 4}, {2, 8}, {4, 8}, {1, 2}})
      for (DType d : kDtypes)
        for (int64_t K : {int64_t(8200), int64_t(12352)}) {
          const int n = pat.first, m = pat.second;
          const int64_t O = 19;
          NmWeight w(d, n, m, O, K, rng);
          Buf x(d, K), y(d, O), bias(d, O);
          fill_uniform(x, rng);
          fill_uniform(bias, rng);
          const int64_t r = fn(make_args(d, w, 1, x, K, &bias, y, O), 0, O);
          std::vector<double> ref, scale;
          reference(x, K, w.dense, &bias, 1, O, K, ref, scale);
          int bad = 0;
          for (int64_t o = 0; o < O; ++o) bad += !close(y.get(o), ref[o], scale[o], d, K);
          h.check(r == -1 && bad == 0, "nm %s %d:%d %s M=1 K=%lld: ret %lld, %d bad", isa_name(isa), n, m,
                  dtype_name(d), (long long)K, (long long)r, bad);
          NmWeight b = w;  // row 11, a byte of columns 4136..4143: one bit moved to the byte after it
          uint8_t* mb = b.mask.data() + 11 * b.row_bytes + 517;
          const int top = 31 - __builtin_clz(mb[0]);
          mb[0] = static_cast<uint8_t>(mb[0] & ~(1u << top));
          mb[1] = static_cast<uint8_t>(mb[1] | (mb[1] + 1));
          const int64_t rb = fn(make_args(d, b, 1, x, K, nullptr, y, O), 0, O);
          reference(x, K, as_given(d, b), nullptr, 1, O, K, ref, scale);
          bool exact = rb == -1;
          for (int64_t o = 0; o < O && exact; ++o) exact = close(y.get(o), ref[o], scale[o], d, K);
          h.check(rb == 11 || exact, "nm %s %d:%d %s M=1 K=%lld: a malformed byte gave %lld", isa_name(isa), n, m,
                  dtype_name(d), (long long)K, (long long)rb);
        }
  }
}

// Malformed masks must give a bad row (the first one) and never read out of bounds; the values
// buffer is exactly as large as the format says, so the ASan build catches a stray read.
void test_nm_malformed(Harness& h) {
  std::mt19937 rng(99);
  for (Isa isa : available_isas()) {
    const nm::LinearFn fn = nm::linear_kernel(isa);
    for (auto& pat : kPatterns) {
      const int n = pat[0], m = pat[1];
      for (DType d : {DType::f32, DType::bf16}) {
        const int64_t O = 9, K = m <= 4 ? m * 75 : m * 21;  // K % 8 != 0 for m <= 4 (padding bits)
        const int64_t M = 3, row_bytes = (K + 7) / 8;
        Buf x(d, 40 * K), y(d, 40 * O);
        fill_uniform(x, rng);
        struct Case { const char* what; int64_t row; int64_t k; bool set; };
        std::vector<Case> cases;
        const NmWeight base(d, n, m, O, K, rng);
        auto kept_bit = [&](int64_t row, int64_t g, bool want) {  // a column of group g with bit == want
          for (int j = 0; j < m; ++j) {
            const int64_t k = g * m + j;
            if (((base.mask[row * row_bytes + k / 8] >> (k % 8)) & 1) == want) return k;
          }
          return int64_t(-1);
        };
        for (int64_t row : {int64_t(0), int64_t(4), O - 1})
          for (int64_t g : {int64_t(0), K / m / 2, K / m - 1}) {
            cases.push_back({"extra bit", row, kept_bit(row, g, false), true});
            cases.push_back({"missing bit", row, kept_bit(row, g, true), false});
          }
        if (K % 8) {
          cases.push_back({"bit past K", O - 1, K, true});
          cases.push_back({"bit past K", 2, row_bytes * 8 - 1, true});
        }
        for (const Case& c : cases) {
          NmWeight w = base;
          uint8_t& byte = w.mask[c.row * row_bytes + c.k / 8];
          if (c.set) byte |= static_cast<uint8_t>(1u << (c.k % 8));
          else byte &= static_cast<uint8_t>(~(1u << (c.k % 8)));
          for (int64_t mm : {int64_t(1), M, int64_t(40)}) {  // M = 1 and M >= 32 have their own paths in some
            const nm::LinearArgs a = make_args(d, w, mm, x, K, nullptr, y, O);
            const int64_t r = fn(a, 0, O);
            h.check(r == c.row, "nm %s %d:%d %s M=%lld: %s at row %lld col %lld: returned %lld", isa_name(isa), n,
                    m, dtype_name(d), (long long)mm, c.what, (long long)c.row, (long long)c.k, (long long)r);
          }
          const int64_t g = nm::find_bad_group(w.mask.data(), O, K, n, m);
          const int64_t want_g = c.row * (K / m + 1) + (c.k >= K ? K / m : c.k / m);
          if (isa == Isa::scalar)
            h.check(g == want_g, "find_bad_group %d:%d %s at row %lld col %lld: %lld, want %lld", n, m, c.what,
                    (long long)c.row, (long long)c.k, (long long)g, (long long)want_g);
        }
        // A kept bit moved to another byte of the same 16-column chunk: every chunk's count holds but two groups'
        // do not. A kernel may name the row (the byte-count check of Place64) or compute exactly what the mask
        // says (the chunk-count check of the expanding paths); nothing else.
        if (m <= 8) {
          const int64_t row = 4, k_from = kept_bit(row, 0, true), k_to = kept_bit(row, 8 / m, false);
          NmWeight w = base;
          w.mask[row * row_bytes + k_from / 8] &= static_cast<uint8_t>(~(1u << (k_from % 8)));
          w.mask[row * row_bytes + k_to / 8] |= static_cast<uint8_t>(1u << (k_to % 8));
          std::vector<double> ref, scale;
          reference(x, K, as_given(d, w), nullptr, M, O, K, ref, scale);
          for (int64_t mm : {int64_t(1), M}) {
            const int64_t r = fn(make_args(d, w, mm, x, K, nullptr, y, O), 0, O);
            bool exact = r == -1;
            for (int64_t i = 0; i < mm && exact; ++i)
              for (int64_t o = 0; o < O; ++o)
                exact = exact && close(y.get(i * O + o), ref[i * O + o], scale[i * O + o], d, K);
            h.check(r == row || exact, "nm %s %d:%d %s M=%lld moved bit: returned %lld and %s", isa_name(isa), n, m,
                    dtype_name(d), (long long)mm, (long long)r,
                    r == -1 ? "a result off the mask as given" : "the wrong row");
          }
        }
        // A whole row of set bits (reads as far as a kernel could be tempted to) and a range that
        // starts past an earlier bad row.
        NmWeight w = base;
        for (int64_t b = 0; b < row_bytes; ++b) w.mask[(O - 1) * row_bytes + b] = 0xFF;
        for (int64_t b = 0; b < row_bytes; ++b) w.mask[2 * row_bytes + b] = 0;
        for (int64_t mm : {int64_t(1), M}) {
          const nm::LinearArgs a = make_args(d, w, mm, x, K, nullptr, y, O);
          const int64_t r_all = fn(a, 0, O), r_tail = fn(a, 3, O), r_ok = fn(a, 3, O - 1);
          h.check(r_all == 2 && r_tail == O - 1 && r_ok == -1,
                  "nm %s %d:%d %s M=%lld all-ones/all-zero rows: %lld %lld %lld", isa_name(isa), n, m,
                  dtype_name(d), (long long)mm, (long long)r_all, (long long)r_tail, (long long)r_ok);
        }
      }
    }
  }
}

void test_nm_format(Harness& h) {
  std::mt19937 rng(7);
  for (auto& pat : kPatterns) {
    const int n = pat[0], m = pat[1];
    for (DType d : kDtypes) {
      const int64_t O = 7, K = m * 11;
      NmWeight w(d, n, m, O, K, rng);
      Buf dense(d, O * K);
      // Poison first: decompress must write every element of its rows (zeros where pruned).
      for (size_t i = 0; i < dense.size(); ++i) dense.set(i, 7.0f);
      nm::decompress(d, n, m, O, K, w.values.data(), w.mask.data(), dense.data(), 0, 3);
      nm::decompress(d, n, m, O, K, w.values.data(), w.mask.data(), dense.data(), 3, O);
      h.check(dense.bytes == w.dense.bytes, "decompress %d:%d %s differs from the reference", n, m, dtype_name(d));
      h.check(nm::find_bad_group(w.mask.data(), O, K, n, m) == -1, "find_bad_group %d:%d flags a valid mask", n, m);
      // -0.0 kept values survive the round trip bit-exactly.
      NmWeight z = w;
      z.values.set(0, -0.0f);
      nm::decompress(d, n, m, O, K, z.values.data(), z.mask.data(), dense.data(), 0, 1);
      int64_t first = 0;
      while (!((z.mask[first / 8] >> (first % 8)) & 1)) ++first;
      const float v = dense.get(first);
      h.check(v == 0.0f && std::signbit(v), "decompress %d:%d %s loses -0.0", n, m, dtype_name(d));
      // decode_rows of every ISA: bit-exact tiles at a row offset and stride; malformed rows named.
      for (Isa isa : available_isas()) {
        const int64_t K2 = m * 37, ld = K2 + 5;  // 37 groups: full 16-column chunks plus a tail
        NmWeight w2(d, n, m, O, K2, rng);
        Buf x(d, K2), y(d, O);
        const nm::LinearArgs a = make_args(d, w2, 1, x, K2, nullptr, y, O);
        const nm::DecodeRowsFn dec = nm::decode_rows_kernel(isa);
        Buf tile(d, (O - 2) * ld);
        const int64_t r = dec(a, tile.data(), ld, 2, O);
        bool same = r == -1;
        for (int64_t o = 2; o < O && same; ++o)
          for (int64_t k = 0; k < K2; ++k)
            same = same && std::memcmp(static_cast<const char*>(tile.data()) + ((o - 2) * ld + k) * esize(d),
                                       static_cast<const char*>(w2.dense.data()) + (o * K2 + k) * esize(d), esize(d)) == 0;
        h.check(same, "decode_rows %s %d:%d %s differs from the dense weight", isa_name(isa), n, m, dtype_name(d));
        NmWeight bad = w2;
        bad.mask[4 * bad.row_bytes + 1] ^= 0x10;  // row 4 loses or gains one kept column
        const nm::LinearArgs ab = make_args(d, bad, 1, x, K2, nullptr, y, O);
        h.check(dec(ab, tile.data(), ld, 2, O) == 4, "decode_rows %s %d:%d %s misses a malformed row",
                isa_name(isa), n, m, dtype_name(d));
      }
    }
  }
}

}  // namespace sparseops::test
