// Bitmap-KV kernels of every available ISA vs a float64 reference: compress/decompress round trip,
// split-K partials + merge (with tails, GQA, Lq > 1), and malformed records (no read past a record:
// run under ASan to see it).
#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "data.h"
#include "harness.h"
#include "kernels/kv/kv.h"

namespace sparseops::test {

void test_kv(Harness& h);

namespace {

kv::DType kvd(DType d) { return static_cast<kv::DType>(static_cast<int>(d)); }

struct Case {
  DType d;
  int64_t B, Hkv, G, Lq, D, T, Tw;
  int kk, kv;
};

// Runs one case on one ISA; returns the max error relative to the tolerance (<= 1 passes).
double run_case(kv::PartialFn fn, const Case& c, std::mt19937& rng, bool* roundtrip_ok) {
  const int64_t Hq = c.Hkv * c.G, D = c.D, rows = c.B * c.Hkv * c.T;
  Buf q(c.d, c.B * Hq * c.Lq * D), k(c.d, rows * D), v(c.d, rows * D);
  Buf kt(c.d, c.B * c.Hkv * c.Tw * D + 1), vt(c.d, c.B * c.Hkv * c.Tw * D + 1);
  for (Buf* b : {&q, &k, &v, &kt, &vt}) fill_uniform(*b, rng);
  std::vector<uint8_t> kb(rows * D / 8 + 1), vb(rows * D / 8 + 1);
  Buf kvals(c.d, rows * c.kk + 1), vvals(c.d, rows * c.kv + 1), kd(c.d, rows * D + 1), vd(c.d, rows * D + 1);
  kv::compress(kvd(c.d), int(D), c.kk, k.data(), kb.data(), kvals.data(), 0, rows);
  kv::compress(kvd(c.d), int(D), c.kv, v.data(), vb.data(), vvals.data(), 0, rows);
  kv::decompress(kvd(c.d), int(D), c.kk, kb.data(), kvals.data(), kd.data(), 0, rows);
  kv::decompress(kvd(c.d), int(D), c.kv, vb.data(), vvals.data(), vd.data(), 0, rows);
  *roundtrip_ok = kv::find_bad_record(int(D), c.kk, kb.data(), 0, rows) < 0 &&
                  kv::find_bad_record(int(D), c.kv, vb.data(), 0, rows) < 0;
  for (int64_t r = 0; r < rows && *roundtrip_ok; ++r) {  // kept = the kk largest |k|, exactly
    int nz = 0;
    for (int64_t i = 0; i < D; ++i) {
      const float x = kd.get(r * D + i);
      if (x != 0.0f) { ++nz; if (x != k.get(r * D + i)) *roundtrip_ok = false; }
    }
    if (nz > c.kk) *roundtrip_ok = false;
  }

  kv::AttnArgs a{};
  a.dtype = kvd(c.d); a.B = c.B; a.Hq = Hq; a.Hkv = c.Hkv; a.Lq = c.Lq; a.D = D; a.T = c.T;
  a.Tcap_k = a.Tcap_v = c.T; a.kk = c.kk; a.kv = c.kv;
  a.q = q.data(); a.k_bits = kb.data(); a.k_vals = kvals.data(); a.v_bits = vb.data(); a.v_vals = vvals.data();
  a.Tw = c.Tw; a.k_tail = kt.data(); a.v_tail = vt.data();
  a.scale = 1.0f / std::sqrt(float(D));
  const int64_t R = c.G * c.Lq, P = R * (D + 2), N = c.T + c.Tw, nch = 3;
  std::vector<float> parts(c.B * c.Hkv * nch * P);
  Buf out(c.d, c.B * Hq * c.Lq * D);
  std::vector<float> lse(c.B * Hq * c.Lq);
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t hh = 0; hh < c.Hkv; ++hh) {
      float* p = parts.data() + (b * c.Hkv + hh) * nch * P;
      // uneven chunks, one of them possibly empty
      const int64_t cut1 = N / 3, cut2 = N - N / 5;
      fn(a, b, hh, 0, cut1, p);
      fn(a, b, hh, cut1, cut2, p + P);
      fn(a, b, hh, cut2, N, p + 2 * P);
      kv::merge(a, b, hh, p, nch, out.data(), lse.data());
    }
  const double tol = c.d == DType::f32 ? 2e-5 : c.d == DType::bf16 ? 1.6e-2 : 2e-3;
  double worst = 0;
  std::vector<double> s(N);
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t hq = 0; hq < Hq; ++hq)
      for (int64_t l = 0; l < c.Lq; ++l) {
        const int64_t hk = hq / c.G, row = (b * Hq + hq) * c.Lq + l;
        auto kat = [&](int64_t t, int64_t i) {
          return t < c.T ? double(kd.get(((b * c.Hkv + hk) * c.T + t) * D + i))
                         : double(kt.get(((b * c.Hkv + hk) * c.Tw + t - c.T) * D + i));
        };
        auto vat = [&](int64_t t, int64_t i) {
          return t < c.T ? double(vd.get(((b * c.Hkv + hk) * c.T + t) * D + i))
                         : double(vt.get(((b * c.Hkv + hk) * c.Tw + t - c.T) * D + i));
        };
        double m = -1e300, sum = 0;
        for (int64_t t = 0; t < N; ++t) {
          double dot = 0;
          for (int64_t i = 0; i < D; ++i) dot += double(q.get(row * D + i)) * kat(t, i);
          s[t] = dot * a.scale;
          m = std::max(m, s[t]);
        }
        for (int64_t t = 0; t < N; ++t) sum += std::exp(s[t] - m);
        worst = std::max(worst, std::fabs(lse[row] - (m + std::log(sum))) / 1e-4);
        for (int64_t i = 0; i < D; ++i) {
          double ref = 0;
          for (int64_t t = 0; t < N; ++t) ref += std::exp(s[t] - m) / sum * vat(t, i);
          const double err = std::fabs(out.get(row * D + i) - ref) / (tol * (1 + std::fabs(ref)));
          worst = std::max(worst, err);
        }
      }
  return worst;
}

// The decode kernels of an ISA: its dispatched one, and on avx512 with the extensions both placements
// (permutes and expand-loads: the CPU vendor picks one, so each is tested on any machine).
std::vector<std::pair<std::string, kv::PartialFn>> partials(Isa isa) {
  std::vector<std::pair<std::string, kv::PartialFn>> fns = {{isa_name(isa), kv::partial_kernel(isa)}};
#if defined(__x86_64__) || defined(_M_X64)
  if (isa == Isa::avx512 && avx512_ext()) {
    fns.emplace_back("avx512x-permute", kv::partial_avx512x);
    fns.emplace_back("avx512x-expand", kv::partial_expand_avx512x);
  }
#endif
  return fns;
}

}  // namespace

void test_kv(Harness& h) {
  std::mt19937 rng(77);
  const DType dts[] = {DType::f32, DType::bf16, DType::f16};
  const int64_t Ds[] = {64, 80, 128, 256};
  int variant = 0;
  for (Isa isa : available_isas()) {
    for (const auto& [name, fn] : partials(isa))
      for (DType d : dts)
        for (int64_t D : Ds) {
          const int64_t G = (variant % 2) ? 4 : 1, Lq = (variant % 3) ? 1 : 3, T = (variant % 4) * 60 + 1;
          const int64_t Tw = (variant % 2) ? 0 : 5;
          ++variant;
          // V keeps half the channels, or all of them (full chunks) in every third case
          Case c{d, 2, 2, G, Lq, D, T, Tw, int(D - D * 7 / 10), int(variant % 3 ? D / 2 : D)};
          bool rt = false;
          const double w = run_case(fn, c, rng, &rt);
          h.check(rt, "kv %s %s D=%lld: compress/decompress round trip", name.c_str(), dtype_name(d), (long long)D);
          h.check(w <= 1.0, "kv %s %s D=%lld G=%lld Lq=%lld T=%lld Tw=%lld: error %.3g x tolerance", name.c_str(),
                  dtype_name(d), (long long)D, (long long)G, (long long)Lq, (long long)T, (long long)Tw, w);
        }
    // This ISA's compressor == the reference compressor, byte for byte: random rows, rows of a few repeated
    // magnitudes of both signs (ties broken by channel), -0.0, Inf and NaN, every k.
    const kv::CompressFn cf = kv::compress_kernel(isa);
    for (DType d : dts)
      for (int64_t D : {16, 48, 128, 256}) {
        const int64_t rows = 37;
        Buf x(d, rows * D);
        fill_uniform(x, rng);
        std::uniform_int_distribution<int> small(-3, 3);
        for (int64_t i = rows * D / 2; i < rows * D; ++i) x.set(i, 0.5f * small(rng));
        x.set(1, -0.0f);
        x.set(2, std::numeric_limits<float>::infinity());
        x.set(3, std::numeric_limits<float>::quiet_NaN());
        x.set(D + 5, -std::numeric_limits<float>::infinity());
        bool same = true;
        for (int k : {1, int(D / 3), int(D - D * 7 / 10), int(D - 1), int(D)}) {
          std::vector<uint8_t> b0(rows * D / 8), b1(rows * D / 8);
          Buf v0(d, rows * k), v1(d, rows * k);
          kv::compress(kvd(d), int(D), k, x.data(), b0.data(), v0.data(), 0, rows);
          cf(kvd(d), int(D), k, x.data(), b1.data(), v1.data(), 3, rows);  // a sub-range, as the glue splits
          cf(kvd(d), int(D), k, x.data(), b1.data(), v1.data(), 0, 3);
          same = same && b0 == b1 && v0.bytes == v1.bytes;
        }
        h.check(same, "kv %s %s D=%lld: compressor equals the reference", isa_name(isa), dtype_name(d),
                (long long)D);
      }
    // Malformed records (every bit set, 3 values stored): reads stay inside the 3 values (ASan).
    for (const auto& [name, fn] : partials(isa)) {
      for (DType d : dts) {
        const int64_t D = 64, T = 9;
        std::vector<uint8_t> bits(T * D / 8, 0xff);
        Buf vals(d, T * 3), q(d, D), out(d, D);
        fill_uniform(vals, rng);
        fill_uniform(q, rng);
        kv::AttnArgs a{};
        a.dtype = kvd(d); a.B = 1; a.Hq = 1; a.Hkv = 1; a.Lq = 1; a.D = D; a.T = T; a.Tcap_k = a.Tcap_v = T;
        a.kk = a.kv = 3; a.q = q.data(); a.k_bits = a.v_bits = bits.data(); a.k_vals = a.v_vals = vals.data();
        a.scale = 0.1f;
        std::vector<float> part(D + 2);
        float lse = 0;
        fn(a, 0, 0, 0, T, part.data());
        kv::merge(a, 0, 0, part.data(), 1, out.data(), &lse);
        bool finite = std::isfinite(lse);
        for (int64_t i = 0; i < D; ++i) finite = finite && std::isfinite(out.get(i));
        h.check(finite, "kv %s %s malformed records give finite output", name.c_str(), dtype_name(d));
        h.check(kv::find_bad_record(int(D), 3, bits.data(), 0, T) == 0, "kv find_bad_record flags record 0");
      }
    }
  }
}

}  // namespace sparseops::test
