// Probe: the parts of one CSR call at M = 16 (fp32, 4096x4096, int32 indices), single thread: the AVX-512 x pack
// and the tile kernel over all rows. Build from the repo root after the C++ build (build-cpp):
//   g++ -O2 -std=c++17 -Icsrc bench/probes/csr_m16_parts.cpp build-cpp/libsparseops_kernels.a -o /tmp/csr_m16_parts
//   /tmp/csr_m16_parts 0.05   (argument: density)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>
#include "kernels/csr/csr.h"
#include "kernels/common/cpu_features.h"
using namespace sparseops;
int main(int argc, char** argv) {
  const int64_t O = 4096, K = 4096, N = 16;
  double density = argc > 1 ? atof(argv[1]) : 0.0001;
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(0, 1);
  std::vector<int64_t> rp(O + 1, 0);
  std::vector<int32_t> cols;
  std::vector<float> vals;
  for (int64_t o = 0; o < O; ++o) {
    for (int64_t k = 0; k < K; ++k) if (u(rng) < density) { cols.push_back(k); vals.push_back(u(rng)); }
    rp[o + 1] = cols.size();
  }
  std::vector<float> x(N * K), y(N * O);
  for (auto& v : x) v = u(rng);
  const Isa isa = Isa::avx512;
  const int64_t ldb = csr::packed_ld(N, isa);
  std::vector<float> b(K * ldb + 64);
  std::vector<uint8_t> nf(N);
  csr::SpmmArgs a{};
  a.dtype = csr::DType::f32; a.index = csr::Index::i32; a.O = O; a.K = K; a.N = N;
  a.row_ptr = rp.data(); a.cols = cols.data(); a.values = vals.data(); a.b = b.data(); a.ldb = ldb;
  a.y = y.data(); a.so = 1; a.sj = O;
  auto pack = csr::pack_b_kernel(isa);
  auto fn = csr::spmm_kernel(isa);
  auto T = [&](auto f) { for (int i = 0; i < 50; ++i) f(); std::vector<double> t; for (int i = 0; i < 400; ++i) { auto s = std::chrono::steady_clock::now(); f(); t.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - s).count()); } std::sort(t.begin(), t.end()); return t[t.size() / 2]; };
  printf("nnz %zu ldb %lld\n", cols.size(), (long long)ldb);
  printf("pack  %.2f us\n", T([&] { pack(csr::DType::f32, x.data(), 1, K, K, N, b.data(), ldb, nf.data(), 0, ldb); }));
  printf("spmm  %.2f us\n", T([&] { fn(a, 0, O); }));
  printf("alloc+pack %.2f us\n", T([&] { std::vector<float> bb(K * ldb); pack(csr::DType::f32, x.data(), 1, K, K, N, bb.data(), ldb, nf.data(), 0, ldb); }));
}
