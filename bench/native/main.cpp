// sparseops-bench: N:M sparse linear vs the dense reference kernel, torch-free.
//
//   sparseops-bench [--shape OxK[,OxK..]] [--m 1,16] [--pattern 2:4,1:4] [--dtype f32,bf16,f16]
//                   [--isa best|all|scalar,avx2,avx512,neon] [--threads N] [--iters 50] [--warmup 5]
//                   [--rotate-mib N] [--quick]
//
// Each thread runs a contiguous range of output rows. Weights are rotated over enough copies that
// every timed iteration streams them from memory (at least twice the largest cache), so M=1 numbers
// are bandwidth numbers. Each configuration is checked once: the N:M output must match the dense
// kernel on the decompressed weight.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "kernels/common/cpu_features.h"
#include "kernels/common/half.h"
#include "kernels/dense/dense.h"
#include "kernels/nm/nm.h"
#include "sysinfo.h"
#include "thread_pool.h"

namespace sparseops::bench {
namespace {

using nm::DType;

struct Options {
  std::vector<std::pair<int64_t, int64_t>> shapes{{4096, 4096}};
  std::vector<int64_t> ms{1, 16};
  std::vector<std::pair<int, int>> patterns{{2, 4}, {1, 4}};
  std::vector<DType> dtypes{DType::f32, DType::bf16};
  std::vector<Isa> isas;  // empty: the best available
  int threads = 0;        // 0: all hardware threads
  int iters = 50, warmup = 5;
  int64_t rotate_bytes = -1;  // -1: twice the largest cache
};

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "sparseops-bench: %s\n"
               "usage: sparseops-bench [--shape OxK,..] [--m 1,16] [--pattern 2:4,1:4] [--dtype f32,bf16,f16]\n"
               "                       [--isa best|all|scalar,avx2,avx512,neon] [--threads N] [--iters N]\n"
               "                       [--warmup N] [--rotate-mib N] [--quick]\n",
               why);
  std::exit(2);
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t b = 0;
  for (;;) {
    const size_t e = s.find(sep, b);
    out.push_back(s.substr(b, e == std::string::npos ? std::string::npos : e - b));
    if (e == std::string::npos) return out;
    b = e + 1;
  }
}

int64_t to_int(const std::string& s, const char* what) {
  char* end = nullptr;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (s.empty() || *end || v < 0) usage((std::string("bad ") + what + " '" + s + "'").c_str());
  return v;
}

const char* dtype_name(DType d) { return d == DType::f32 ? "f32" : d == DType::bf16 ? "bf16" : "f16"; }
size_t esize(DType d) { return d == DType::f32 ? 4 : 2; }

Options parse(int argc, char** argv) {
  Options o;
  bool quick = false;
  std::vector<std::string> given;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") { quick = true; continue; }
    if (a == "-h" || a == "--help") usage("help");
    if (i + 1 >= argc) usage(("missing value for " + a).c_str());
    const std::string v = argv[++i];
    given.push_back(a);
    if (a == "--shape") {
      o.shapes.clear();
      for (const auto& s : split(v, ',')) {
        const auto p = split(s, 'x');
        if (p.size() != 2) usage(("bad shape '" + s + "' (want OxK)").c_str());
        o.shapes.push_back({to_int(p[0], "shape"), to_int(p[1], "shape")});
        if (o.shapes.back().first < 1 || o.shapes.back().second < 1) usage("empty shape");
      }
    } else if (a == "--m") {
      o.ms.clear();
      for (const auto& s : split(v, ',')) o.ms.push_back(std::max<int64_t>(1, to_int(s, "M")));
    } else if (a == "--pattern") {
      o.patterns.clear();
      for (const auto& s : split(v, ',')) {
        const auto p = split(s, ':');
        if (p.size() != 2) usage(("bad pattern '" + s + "' (want n:m)").c_str());
        const int n = static_cast<int>(to_int(p[0], "n")), m = static_cast<int>(to_int(p[1], "m"));
        if (!nm::pattern_supported(n, m)) usage(("unsupported pattern " + s + " (n < m, m in 2,4,8,16)").c_str());
        o.patterns.push_back({n, m});
      }
    } else if (a == "--dtype") {
      o.dtypes.clear();
      for (const auto& s : split(v, ',')) {
        if (s == "f32" || s == "float32") o.dtypes.push_back(DType::f32);
        else if (s == "bf16" || s == "bfloat16") o.dtypes.push_back(DType::bf16);
        else if (s == "f16" || s == "float16") o.dtypes.push_back(DType::f16);
        else usage(("bad dtype '" + s + "'").c_str());
      }
    } else if (a == "--isa") {
      o.isas.clear();
      if (v == "all") o.isas = available_isas();
      else if (v != "best")
        for (const auto& s : split(v, ',')) {
          Isa isa;
          if (!parse_isa(s, &isa)) usage(("unknown ISA '" + s + "'").c_str());
          if (!isa_available(isa)) usage(("this CPU cannot run ISA '" + s + "'").c_str());
          o.isas.push_back(isa);
        }
    } else if (a == "--threads") {
      o.threads = static_cast<int>(to_int(v, "threads"));
    } else if (a == "--iters") {
      o.iters = static_cast<int>(std::max<int64_t>(1, to_int(v, "iters")));
    } else if (a == "--warmup") {
      o.warmup = static_cast<int>(to_int(v, "warmup"));
    } else if (a == "--rotate-mib") {
      o.rotate_bytes = to_int(v, "rotate-mib") << 20;
    } else {
      usage(("unknown option " + a).c_str());
    }
  }
  if (quick) {  // a smoke test: small shape, few iterations, no rotation, unless given explicitly
    auto has = [&](const char* f) { return std::find(given.begin(), given.end(), f) != given.end(); };
    if (!has("--shape")) o.shapes = {{200, 528}};
    if (!has("--m")) o.ms = {1, 3};
    if (!has("--iters")) o.iters = 3;
    if (!has("--warmup")) o.warmup = 1;
    if (!has("--rotate-mib")) o.rotate_bytes = 0;
  }
  if (o.isas.empty()) o.isas = {available_isas().back()};
  if (o.threads <= 0) o.threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return o;
}

// Fast deterministic fill (xorshift), values in [-1, 1) rounded to the dtype.
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t next() { s ^= s << 13; s ^= s >> 7; s ^= s << 17; return s; }
  float uniform() { return static_cast<float>(next() >> 40) * (2.0f / 16777216.0f) - 1.0f; }
};

void fill(std::vector<uint8_t>& buf, DType d, Rng& rng) {
  const size_t n = buf.size() / esize(d);
  for (size_t i = 0; i < n; ++i) {
    const float v = rng.uniform();
    if (d == DType::f32) std::memcpy(&buf[i * 4], &v, 4);
    else {
      const uint16_t h = d == DType::bf16 ? f32_to_bf16(v) : f32_to_f16(v);
      std::memcpy(&buf[i * 2], &h, 2);
    }
  }
}

float get(const std::vector<uint8_t>& buf, DType d, size_t i) {
  if (d == DType::f32) { float f; std::memcpy(&f, &buf[i * 4], 4); return f; }
  uint16_t h;
  std::memcpy(&h, &buf[i * 2], 2);
  return d == DType::bf16 ? bf16_to_f32(h) : f16_to_f32(h);
}

// A random valid N:M mask (n bits per group of m, chosen by a partial shuffle).
std::vector<uint8_t> random_mask(int64_t O, int64_t K, int n, int m, Rng& rng) {
  const int64_t row_bytes = (K + 7) / 8;
  std::vector<uint8_t> mask(O * row_bytes, 0);
  int idx[16];
  for (int64_t o = 0; o < O; ++o)
    for (int64_t g = 0; g < K / m; ++g) {
      for (int j = 0; j < m; ++j) idx[j] = j;
      for (int j = 0; j < n; ++j) std::swap(idx[j], idx[j + static_cast<int>(rng.next() % (m - j))]);
      for (int j = 0; j < n; ++j) {
        const int64_t k = g * m + idx[j];
        mask[o * row_bytes + k / 8] |= static_cast<uint8_t>(1u << (k % 8));
      }
    }
  return mask;
}

struct Timing { double min_ms, med_ms, max_ms; };

// Times fn(copy, t) over the pool: warmup untimed runs, then iters timed ones; copy rotates.
template <class Fn>
Timing time_it(ThreadPool& pool, int copies, int warmup, int iters, Fn&& fn) {
  std::vector<double> ms;
  int c = 0;
  for (int it = 0; it < warmup + iters; ++it) {
    const int copy = c;
    c = (c + 1) % copies;
    const auto t0 = std::chrono::steady_clock::now();
    pool.run([&](int t) { fn(copy, t); });
    const double dt = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (it >= warmup) ms.push_back(dt);
  }
  std::sort(ms.begin(), ms.end());
  const size_t n = ms.size();
  return {ms.front(), n % 2 ? ms[n / 2] : 0.5 * (ms[n / 2 - 1] + ms[n / 2]), ms.back()};
}

// Contiguous output rows of thread t, in multiples of 4 (the kernels' output tile).
std::pair<int64_t, int64_t> rows_of(int t, int threads, int64_t O) {
  const int64_t per = ((O + threads - 1) / threads + 3) / 4 * 4;
  const int64_t b = std::min<int64_t>(O, per * t), e = std::min<int64_t>(O, b + per);
  return {b, e};
}

int copies_for(int64_t bytes, int64_t rotate_bytes) {
  if (rotate_bytes <= 0) return 1;
  return static_cast<int>(std::min<int64_t>(64, (rotate_bytes + bytes - 1) / bytes));
}

void print_row(const char* kernel, Isa isa, DType d, const std::string& pattern, int64_t O, int64_t K, int64_t M,
               int threads, const Timing& t, double bytes, double dense_med) {
  const double flops = 2.0 * M * O * K;
  char shape[48], ratio[16] = "-";
  std::snprintf(shape, sizeof shape, "%lldx%lld", (long long)O, (long long)K);
  if (dense_med > 0) std::snprintf(ratio, sizeof ratio, "%.2fx", dense_med / t.med_ms);
  std::printf("%-6s %-7s %-5s %-7s %-11s %5lld %4d %10.4f %10.4f %10.4f %9.2f %8.2f %10.4f %8s\n", kernel,
              isa_name(isa), dtype_name(d), pattern.c_str(), shape, (long long)M, threads, t.min_ms, t.med_ms, t.max_ms,
              flops / (t.med_ms * 1e6), bytes / (t.med_ms * 1e6), dense_med, ratio);
  std::fflush(stdout);
}

int run(const Options& opt) {
  const int64_t cache = largest_cache_bytes();
  const int64_t rotate = opt.rotate_bytes >= 0 ? opt.rotate_bytes : 2 * (cache > 0 ? cache : (32ll << 20));
  std::string isas;
  for (Isa i : available_isas()) isas += std::string(isas.empty() ? "" : ",") + isa_name(i);
  const std::string freqs = core_frequencies();
  std::printf("cpu: %s\n", cpu_model().c_str());
  std::printf("hardware threads: %u, bench threads: %d%s%s\n", std::thread::hardware_concurrency(), opt.threads,
              freqs.empty() ? "" : ", max freq per core: ", freqs.c_str());
  std::printf("isas available: %s; largest cache %.1f MiB; weights rotated over >= %.1f MiB; warmup %d, iters %d\n",
              isas.c_str(), cache / 1048576.0, rotate / 1048576.0, opt.warmup, opt.iters);
  std::printf("%-6s %-7s %-5s %-7s %-11s %5s %4s %10s %10s %10s %9s %8s %10s %8s\n", "kernel", "isa", "dtype",
              "pattern", "shape(OxK)", "M", "thr", "min_ms", "med_ms", "max_ms", "GFLOP/s", "GB/s", "dense_ms", "vs_dense");
  ThreadPool pool(opt.threads);
  const int T = pool.size();
  int failures = 0;
  Rng rng(42);
  for (const auto& [O, K] : opt.shapes) {
    for (DType d : opt.dtypes) {
      const size_t es = esize(d);
      // Dense weights (random) for the reference timing.
      const int64_t dense_bytes = O * K * static_cast<int64_t>(es);
      const int dcopies = copies_for(dense_bytes, rotate);
      std::vector<std::vector<uint8_t>> dw(dcopies, std::vector<uint8_t>(dense_bytes));
      for (auto& w : dw) fill(w, d, rng);
      // N:M weights per pattern (skipped where K is not a multiple of m).
      struct NmW { int n, m; int copies; std::vector<std::vector<uint8_t>> vals, masks; };
      std::vector<NmW> nws;
      for (const auto& [n, m] : opt.patterns) {
        if (K % m) {
          std::printf("# skipping %d:%d: K=%lld is not a multiple of %d\n", n, m, (long long)K, m);
          continue;
        }
        NmW w{n, m, 0, {}, {}};
        const int64_t vbytes = O * (K / m * n) * static_cast<int64_t>(es), mbytes = O * ((K + 7) / 8);
        w.copies = copies_for(vbytes + mbytes, rotate);
        for (int c = 0; c < w.copies; ++c) {
          w.vals.emplace_back(vbytes);
          fill(w.vals.back(), d, rng);
          w.masks.push_back(random_mask(O, K, n, m, rng));
        }
        nws.push_back(std::move(w));
      }
      for (int64_t M : opt.ms) {
        std::vector<uint8_t> x(M * K * es), y(M * O * es), yref(M * O * es);
        fill(x, d, rng);
        for (Isa isa : opt.isas) {
          const dense::LinearFn dfn = dense::linear_kernel(isa);
          const nm::LinearFn nfn = nm::linear_kernel(isa);
          auto dense_call = [&](const void* w, void* out, int t) {
            const auto [b, e] = rows_of(t, T, O);
            if (b < e) dfn({d, M, K, O, x.data(), K, w, K, nullptr, out, O}, b, e);
          };
          const Timing td = time_it(pool, dcopies, opt.warmup, opt.iters,
                                    [&](int c, int t) { dense_call(dw[c].data(), y.data(), t); });
          const double io_bytes = static_cast<double>((M * K + M * O) * es);
          print_row("dense", isa, d, "dense", O, K, M, T, td, dense_bytes + io_bytes, td.med_ms);
          for (const NmW& w : nws) {
            nm::LinearArgs a{};
            a.dtype = d; a.n = w.n; a.m = w.m; a.M = M; a.K = K; a.O = O;
            a.x = x.data(); a.ldx = K; a.bias = nullptr; a.ldy = O;
            std::vector<int64_t> bad(T, -1);
            auto nm_call = [&](int c, void* out, int t) {
              const auto [b, e] = rows_of(t, T, O);
              if (b >= e) return;
              nm::LinearArgs ac = a;
              ac.values = w.vals[c].data();
              ac.mask = w.masks[c].data();
              ac.y = out;
              const int64_t r = nfn(ac, b, e);
              if (r >= 0) bad[t] = r;
            };
            const Timing tn = time_it(pool, w.copies, opt.warmup, opt.iters,
                                      [&](int c, int t) { nm_call(c, y.data(), t); });
            const double wbytes = static_cast<double>(O * (K / w.m * w.n) * es + O * ((K + 7) / 8));
            char pat[16];
            std::snprintf(pat, sizeof pat, "%d:%d", w.n, w.m);
            print_row("nm", isa, d, pat, O, K, M, T, tn, wbytes + io_bytes, td.med_ms);
            // Check copy 0 against the dense kernel on its decompressed weight.
            std::vector<uint8_t> wd(dense_bytes);
            nm::decompress(d, w.n, w.m, O, K, w.vals[0].data(), w.masks[0].data(), wd.data(), 0, O);
            pool.run([&](int t) { nm_call(0, y.data(), t); dense_call(wd.data(), yref.data(), t); });
            double err = 0, scale = 1e-30;
            for (int64_t i = 0; i < M * O; ++i) {
              err = std::max<double>(err, std::fabs(get(y, d, i) - get(yref, d, i)));
              scale = std::max<double>(scale, std::fabs(get(yref, d, i)));
            }
            const double tol = d == DType::f32 ? 1e-4 : d == DType::bf16 ? 1.0 / 64 : 1.0 / 256;
            const bool mask_ok = std::all_of(bad.begin(), bad.end(), [](int64_t r) { return r < 0; });
            if (!mask_ok || !(err <= tol * scale)) {
              std::printf("# CHECK FAILED: nm %s %s %s M=%lld: mask %s, max |nm - dense| = %g (max |y| %g)\n",
                          isa_name(isa), dtype_name(d), pat, (long long)M, mask_ok ? "ok" : "rejected", err, scale);
              ++failures;
            }
          }
        }
      }
    }
  }
  std::printf("# GFLOP/s counts dense-equivalent work (2*M*O*K); GB/s counts bytes read and written once\n"
              "# (compressed values + mask, or dense weight, + x + y); vs_dense = dense median / this median.\n");
  std::printf("# check vs dense on the decompressed weight: %s\n", failures ? "FAILED" : "ok");
  return failures ? 1 : 0;
}

}  // namespace
}  // namespace sparseops::bench

int main(int argc, char** argv) {
  return sparseops::bench::run(sparseops::bench::parse(argc, argv));
}
