// Probe (not part of the library): a bf16 2:4 kept-only GEMM on AVX512-BF16 with vdpbf16ps over pre-paired x.
// x is re-laid once per call as, per block of TB tokens and group of 4 columns, the 6 possible (k1, k2) column
// pairs of a 2:4 group as bf16 pairs; a weight row then takes, per group, its two kept values as one broadcast
// bf16 pair and one vdpbf16ps per 16 tokens against its pattern's pairs: half the dense dot products.
// One thread; prints ms and dense-equivalent GFLOP/s (compare torch.set_num_threads(1) F.linear, bf16).
// Build: g++ -O3 -std=c++17 -mavx512f -mavx512bw -mavx512bf16 -mavx512vl -o /tmp/pairdp bench/probes/nm_bf16_pairdp.cpp
// Run:   /tmp/pairdp O K M   (M a multiple of 32)
#include <immintrin.h>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>
#include <cmath>
static double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
static inline uint16_t f2b(float f) { uint32_t u; memcpy(&u, &f, 4); return (u + 0x7fff + ((u >> 16) & 1)) >> 16; }
static inline float b2f(uint16_t b) { uint32_t u = uint32_t(b) << 16; float f; memcpy(&f, &u, 4); return f; }
int main(int argc, char** argv) {
  const int O = atoi(argv[1]), K = atoi(argv[2]), M = atoi(argv[3]);
  const int G = K / 4, TB = 32, KC = 256, GC = KC / 4;  // KC: columns per pass (tried 32-4096)
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1, 1);
  std::vector<uint16_t> x(M * K), vals(O * K / 2);
  std::vector<uint8_t> mask(O * K / 8);
  std::vector<float> dense(O * K, 0.f);
  for (auto& v : x) v = f2b(u(rng));
  const int combos[6][2] = {{0,1},{0,2},{0,3},{1,2},{1,3},{2,3}};
  for (int o = 0; o < O; ++o)
    for (int g = 0; g < G; ++g) {
      int c = rng() % 6;
      int a = combos[c][0], b = combos[c][1];
      mask[o * (K / 8) + g / 2] |= ((1 << a) | (1 << b)) << (4 * (g % 2));
      uint16_t va = f2b(u(rng)), vb = f2b(u(rng));
      vals[o * (K / 2) + 2 * g] = va; vals[o * (K / 2) + 2 * g + 1] = vb;
      dense[o * K + 4 * g + a] = b2f(va); dense[o * K + 4 * g + b] = b2f(vb);
    }
  // nibble -> combo index
  int nib2c[16]; for (int i = 0; i < 16; ++i) nib2c[i] = 0;
  for (int c = 0; c < 6; ++c) nib2c[(1 << combos[c][0]) | (1 << combos[c][1])] = c;
  // byte -> two offsets (in units of TB*4 bytes = one combo's 32 pairs)
  uint32_t t256[256];
  for (int b = 0; b < 256; ++b) t256[b] = nib2c[b & 15] | (nib2c[b >> 4] << 16);
  const int NTB = M / TB;
  // Xp[tb][g][c][TB] uint32 pairs
  std::vector<uint32_t> xp;
  std::vector<float> yp(O * TB);
  std::vector<uint16_t> y(M * O);
  auto run = [&]() {
    xp.resize(size_t(NTB) * G * 6 * TB);
    for (int tb = 0; tb < NTB; ++tb)
      for (int g = 0; g < G; ++g)
        for (int c = 0; c < 6; ++c) {
          uint32_t* d = &xp[((size_t(tb) * G + g) * 6 + c) * TB];
          for (int i = 0; i < TB; ++i) {
            const uint16_t* xr = &x[(tb * TB + i) * K + 4 * g];
            d[i] = xr[combos[c][0]] | (uint32_t(xr[combos[c][1]]) << 16);
          }
        }
    for (int tb = 0; tb < NTB; ++tb) {
      for (int kc = 0; kc < G; kc += GC) {
        const uint32_t* xc = &xp[(size_t(tb) * G + kc) * 6 * TB];
        for (int o = 0; o < O; o += 4) {
          __m512 acc[4][2];
          for (int r = 0; r < 4; ++r)
            for (int h = 0; h < 2; ++h)
              acc[r][h] = kc == 0 ? _mm512_setzero_ps() : _mm512_loadu_ps(&yp[(o + r) * TB + 16 * h]);
          const uint8_t* mr[4]; const uint32_t* vr[4];
          for (int r = 0; r < 4; ++r) { mr[r] = &mask[(o + r) * (K / 8) + kc / 2]; vr[r] = reinterpret_cast<const uint32_t*>(&vals[(o + r) * (K / 2) + 2 * kc]); }
          for (int g = 0; g < GC; g += 2) {
            for (int r = 0; r < 4; ++r) {
              const uint32_t t = t256[mr[r][g / 2]];
              const uint32_t* x0 = xc + (size_t(g) * 6 + (t & 0xffff)) * TB;
              const uint32_t* x1 = xc + (size_t(g + 1) * 6 + (t >> 16)) * TB;
              const __m512i w0 = _mm512_set1_epi32(vr[r][g]), w1 = _mm512_set1_epi32(vr[r][g + 1]);
              acc[r][0] = _mm512_dpbf16_ps(acc[r][0], (__m512bh)w0, (__m512bh)_mm512_loadu_si512(x0));
              acc[r][1] = _mm512_dpbf16_ps(acc[r][1], (__m512bh)w0, (__m512bh)_mm512_loadu_si512(x0 + 16));
              acc[r][0] = _mm512_dpbf16_ps(acc[r][0], (__m512bh)w1, (__m512bh)_mm512_loadu_si512(x1));
              acc[r][1] = _mm512_dpbf16_ps(acc[r][1], (__m512bh)w1, (__m512bh)_mm512_loadu_si512(x1 + 16));
            }
          }
          for (int r = 0; r < 4; ++r)
            for (int h = 0; h < 2; ++h) _mm512_storeu_ps(&yp[(o + r) * TB + 16 * h], acc[r][h]);
        }
      }
      for (int o = 0; o < O; ++o)
        for (int i = 0; i < TB; ++i) y[(tb * TB + i) * O + o] = f2b(yp[o * TB + i]);
    }
  };
  run();
  // check a few outputs
  double maxerr = 0;
  for (int t = 0; t < 200; ++t) {
    int i = rng() % M, o = rng() % O;
    double ref = 0; for (int k = 0; k < K; ++k) ref += double(dense[o * K + k]) * b2f(x[i * K + k]);
    maxerr = std::max(maxerr, std::fabs(ref - b2f(y[i * O + o])) / (1 + std::fabs(ref)));
  }
  double best = 1e9;
  for (int rep = 0; rep < 5; ++rep) { double t0 = now(); run(); best = std::min(best, now() - t0); }
  printf("O=%d K=%d M=%d: %.3f ms, dense-equiv %.1f GFLOP/s, max rel err %.3g\n", O, K, M, best * 1e3,
         2.0 * O * K * M / best / 1e9, maxerr);
}
