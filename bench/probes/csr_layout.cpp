// Probe (not part of the library): how the CSR entry order bounds the M > 1 SpMM on one core.
// Standalone AVX2 C++17, single thread, random uniform CSR (uint16 columns, fp32 values), y[O][N] =
// W x^T with x^T stored [K][N] (as csr_linear packs it). Variants, each over column tiles of NV*8:
//   rows     the library's order: per tile, rows in order, each row's entries in one run (row-major CSR)
//   chunkCH  entries stored chunk-major (columns [i*CH, (i+1)*CH) of every row, then the next chunk),
//            so each chunk's slice of x^T stays in cache while all rows pass over it
//   planCH   row-major storage with per-(chunk, row) start pointers built once (not timed): same order
//            of work as chunkCH, but the weight is read in short runs scattered over the whole array
//   cursorCH row groups of 64 rows; per chunk each row continues from its cursor while columns < limit
// Build: g++ -O3 -mavx2 -mfma -std=c++17 -o /tmp/csr_layout bench/probes/csr_layout.cpp
// Run:   /tmp/csr_layout O K density N     (e.g. 4096 4096 0.5 16; 4096 4096 0.1 128)
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

struct Csr {
  int O, K;
  std::vector<int64_t> ptr;  // row-major: O + 1; chunk-major: nch * (O + 1)
  std::vector<uint16_t> col;
  std::vector<float> val;
};

Csr random_csr(int O, int K, double density, unsigned seed) {
  Csr m{O, K, {0}, {}, {}};
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  for (int o = 0; o < O; ++o) {
    for (int k = 0; k < K; ++k)
      if (u(g) < density) { m.col.push_back(static_cast<uint16_t>(k)); m.val.push_back(u(g) - 0.5f); }
    m.ptr.push_back(static_cast<int64_t>(m.col.size()));
  }
  return m;
}

// Entries [0, n) of one run into acc (NV vectors), two at a time into separate chains.
template <int NV>
inline void run(const uint16_t* c, const float* v, int64_t n, const float* b, int ldb, __m256* acc) {
  __m256 e[NV];
  for (auto& x : e) x = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 2 <= n; j += 2) {
    const __m256 w0 = _mm256_set1_ps(v[j]), w1 = _mm256_set1_ps(v[j + 1]);
    const float *r0 = b + c[j] * ldb, *r1 = b + c[j + 1] * ldb;
    for (int t = 0; t < NV; ++t) {
      acc[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(r0 + 8 * t), acc[t]);
      e[t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(r1 + 8 * t), e[t]);
    }
  }
  if (j < n) {
    const __m256 w0 = _mm256_set1_ps(v[j]);
    for (int t = 0; t < NV; ++t) acc[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(b + c[j] * ldb + 8 * t), acc[t]);
  }
  for (int t = 0; t < NV; ++t) acc[t] = _mm256_add_ps(acc[t], e[t]);
}

template <int NV>
inline void add_run(const Csr& m, int64_t s, int64_t n, const float* b, int N, float* yo) {
  __m256 a[NV];
  for (int t = 0; t < NV; ++t) a[t] = _mm256_loadu_ps(yo + 8 * t);
  run<NV>(&m.col[s], &m.val[s], n, b, N, a);
  for (int t = 0; t < NV; ++t) _mm256_storeu_ps(yo + 8 * t, a[t]);
}

template <int NV>
void rows(const Csr& m, const float* b, int N, float* y) {
  std::memset(y, 0, sizeof(float) * m.O * N);
  for (int j0 = 0; j0 < N; j0 += NV * 8)
    for (int o = 0; o < m.O; ++o) add_run<NV>(m, m.ptr[o], m.ptr[o + 1] - m.ptr[o], b + j0, N, y + o * N + j0);
}

// Per-(chunk, row) starts into row-major storage: starts[i * O + o], i in [0, nch].
std::vector<int64_t> chunk_starts(const Csr& m, int CH, int nch) {
  std::vector<int64_t> st(static_cast<size_t>(nch + 1) * m.O);
  for (int o = 0; o < m.O; ++o) {
    int64_t p = m.ptr[o];
    for (int i = 0; i <= nch; ++i) {
      while (p < m.ptr[o + 1] && m.col[p] < std::min(m.K, i * CH)) ++p;
      st[static_cast<size_t>(i) * m.O + o] = i == nch ? m.ptr[o + 1] : p;
    }
  }
  return st;
}

Csr chunk_major(const Csr& m, int CH, int nch) {
  const auto st = chunk_starts(m, CH, nch);
  Csr r{m.O, m.K, {}, {}, {}};
  for (int i = 0; i < nch; ++i) {
    r.ptr.push_back(static_cast<int64_t>(r.col.size()));
    for (int o = 0; o < m.O; ++o) {
      for (int64_t p = st[static_cast<size_t>(i) * m.O + o]; p < st[static_cast<size_t>(i + 1) * m.O + o]; ++p) {
        r.col.push_back(m.col[p]);
        r.val.push_back(m.val[p]);
      }
      r.ptr.push_back(static_cast<int64_t>(r.col.size()));
    }
  }
  return r;
}

template <int NV>
void chunked(const Csr& r, int nch, const float* b, int N, float* y) {
  std::memset(y, 0, sizeof(float) * r.O * N);
  for (int j0 = 0; j0 < N; j0 += NV * 8)
    for (int i = 0; i < nch; ++i) {
      const int64_t* p = &r.ptr[static_cast<size_t>(i) * (r.O + 1)];
      for (int o = 0; o < r.O; ++o)
        if (p[o + 1] > p[o]) add_run<NV>(r, p[o], p[o + 1] - p[o], b + j0, N, y + o * N + j0);
    }
}

template <int NV>
void planned(const Csr& m, const std::vector<int64_t>& st, int nch, const float* b, int N, float* y) {
  std::memset(y, 0, sizeof(float) * m.O * N);
  for (int j0 = 0; j0 < N; j0 += NV * 8)
    for (int i = 0; i < nch; ++i) {
      const int64_t *s0 = &st[static_cast<size_t>(i) * m.O], *s1 = s0 + m.O;
      for (int o = 0; o < m.O; ++o)
        if (s1[o] > s0[o]) add_run<NV>(m, s0[o], s1[o] - s0[o], b + j0, N, y + o * N + j0);
    }
}

template <int NV>
void cursor(const Csr& m, int CH, const float* b, int N, float* y) {
  constexpr int G = 64;
  int64_t cur[G];
  std::memset(y, 0, sizeof(float) * m.O * N);
  for (int j0 = 0; j0 < N; j0 += NV * 8)
    for (int g0 = 0; g0 < m.O; g0 += G) {
      const int g1 = std::min(m.O, g0 + G);
      for (int o = g0; o < g1; ++o) cur[o - g0] = m.ptr[o];
      for (int lo = 0; lo < m.K; lo += CH) {
        const unsigned lim = static_cast<unsigned>(std::min(m.K, lo + CH));
        for (int o = g0; o < g1; ++o) {
          int64_t e = cur[o - g0];
          while (e < m.ptr[o + 1] && m.col[e] < lim) ++e;
          if (e > cur[o - g0]) add_run<NV>(m, cur[o - g0], e - cur[o - g0], b + j0, N, y + o * N + j0);
          cur[o - g0] = e;
        }
      }
    }
}

template <int NV>
void probe(const Csr& m, int N) {
  std::vector<float> bt(static_cast<size_t>(m.K) * N), y(static_cast<size_t>(m.O) * N), ref(y.size());
  for (size_t i = 0; i < bt.size(); ++i) bt[i] = static_cast<float>(i % 7) * 0.1f - 0.3f;
  const double nnz = static_cast<double>(m.ptr[m.O]);
  rows<NV>(m, bt.data(), N, ref.data());
  auto time = [&](const char* name, auto f) {
    double best = 1e30;
    for (int r = 0; r < 7; ++r) {
      const double t = now();
      f();
      best = std::min(best, now() - t);
    }
    double err = 0;
    for (size_t i = 0; i < y.size(); ++i) err = std::max(err, static_cast<double>(std::fabs(y[i] - ref[i])));
    std::printf("%-12s %7.3f ns/entry %6.1f GFLOP/s  max diff vs rows %.1e\n", name, best / nnz * 1e9,
                2.0 * nnz * N / best * 1e-9, err);
  };
  for (int CH : {256, 512, 1024, 2048}) {
    const int nch = (m.K + CH - 1) / CH;
    const Csr cm = chunk_major(m, CH, nch);
    const auto st = chunk_starts(m, CH, nch);
    char a[32], b[32], c[32];
    std::snprintf(a, sizeof a, "chunk%d", CH);
    std::snprintf(b, sizeof b, "plan%d", CH);
    std::snprintf(c, sizeof c, "cursor%d", CH);
    time("rows", [&] { rows<NV>(m, bt.data(), N, y.data()); });
    time(a, [&] { chunked<NV>(cm, nch, bt.data(), N, y.data()); });
    time(b, [&] { planned<NV>(m, st, nch, bt.data(), N, y.data()); });
    time(c, [&] { cursor<NV>(m, CH, bt.data(), N, y.data()); });
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s O K density N   (N = 16: one 16-column tile; N >= 32: 32-column tiles)\n", argv[0]);
    return 2;
  }
  const int O = std::atoi(argv[1]), K = std::atoi(argv[2]), N = std::atoi(argv[4]);
  const double d = std::atof(argv[3]);
  if (O < 1 || K < 1 || K > 65536 || N < 16 || N % 16 || !(d > 0 && d <= 1)) {
    std::fprintf(stderr, "need O >= 1, 1 <= K <= 65536, 0 < density <= 1, N a multiple of 16\n");
    return 2;
  }
  const Csr m = random_csr(O, K, d, 1);
  std::printf("O=%d K=%d density=%g N=%d nnz=%lld\n", O, K, d, N, static_cast<long long>(m.ptr[O]));
  if (N == 16) probe<2>(m, N);
  else if (N % 32 == 0) probe<4>(m, N);
  else { std::fprintf(stderr, "N must be 16 or a multiple of 32\n"); return 2; }
}
