// Native A/B of the bitmap-KV decode kernel (one thread, torch-free): partial_A and partial_B are the same
// entry point built from two source trees (kv_decode_ab.sh renames them), timed in alternating rounds on the
// same compressed cache; best of 15 rounds each. Hq=32, Hkv=8, D=128, Lq=1, no tail.
// usage: kv_decode_ab T sparsity dtype   (dtype: 0 fp32, 1 bf16, 2 fp16)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/common/half.h"
#include "kernels/kv/kv.h"

namespace sparseops::kv {
void partial_A(const AttnArgs&, int64_t, int64_t, int64_t, int64_t, float*);
void partial_B(const AttnArgs&, int64_t, int64_t, int64_t, int64_t, float*);
}  // namespace sparseops::kv

using namespace sparseops;
using namespace sparseops::kv;

int main(int argc, char** argv) {
  const int T = argc > 1 ? std::atoi(argv[1]) : 2048;
  const double sp = argc > 2 ? std::atof(argv[2]) : 0.7;
  const int dt = argc > 3 ? std::atoi(argv[3]) : 1;
  const int H = 8, G = 4, D = 128, k = D - int(sp * D);
  const DType dty = DType(dt);
  const size_t es = dt == 0 ? 4 : 2;
  std::vector<char> K(size_t(H) * T * D * es), V(K.size()), q(size_t(H) * G * D * es);
  uint64_t st = 88172645463325252ull;  // xorshift: fast, fresh values in [-1, 1)
  auto fill = [&](std::vector<char>& v) {
    for (size_t i = 0; i < v.size() / es; ++i) {
      st ^= st << 13; st ^= st >> 7; st ^= st << 17;
      const float f = float(int64_t(st >> 40) - (1ll << 23)) / float(1 << 23);
      if (dt == 0) std::memcpy(&v[i * 4], &f, 4);
      else { const uint16_t u = dt == 1 ? f32_to_bf16(f) : f32_to_f16(f); std::memcpy(&v[i * 2], &u, 2); }
    }
  };
  fill(K); fill(V); fill(q);
  std::vector<uint8_t> kb(size_t(H) * T * D / 8), vb(kb.size());
  std::vector<char> kvals((size_t(H) * T * k + 64) * es), vvals(kvals.size());
  const CompressFn cf = compress_kernel(Isa::avx2);
  cf(dty, D, k, K.data(), kb.data(), kvals.data(), 0, int64_t(H) * T);
  cf(dty, D, k, V.data(), vb.data(), vvals.data(), 0, int64_t(H) * T);
  AttnArgs a{};
  a.dtype = dty; a.B = 1; a.Hq = H * G; a.Hkv = H; a.Lq = 1; a.D = D; a.T = T; a.Tcap_k = T; a.Tcap_v = T;
  a.kk = k; a.kv = k; a.q = q.data(); a.k_bits = kb.data(); a.k_vals = kvals.data(); a.v_bits = vb.data();
  a.v_vals = vvals.data(); a.Tw = 0; a.scale = 0.088f;
  const PartialFn fns[2] = {partial_A, partial_B};
  double best[2] = {1e9, 1e9};
  std::vector<float> outs[2] = {std::vector<float>(G * (D + 2)), std::vector<float>(G * (D + 2))};
  const int inner = std::max(1, 32768 / T);
  for (int rep = 0; rep < 15; ++rep)
    for (int v = 0; v < 2; ++v) {
      const auto t0 = std::chrono::steady_clock::now();
      for (int it = 0; it < inner; ++it)
        for (int h = 0; h < H; ++h) fns[v](a, 0, h, 0, T, outs[v].data());
      best[v] = std::min(best[v], std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / inner);
    }
  double diff = 0;  // the last head's partials from both builds should agree
  for (size_t i = 0; i < outs[0].size(); ++i)
    diff = std::max(diff, double(std::fabs(outs[0][i] - outs[1][i]) / (1 + std::fabs(outs[0][i]))));
  std::printf("dtype=%s T=%d s=%.2f: A %.2f ns, B %.2f ns per token and KV head, B/A %.3f (max rel diff %.1e)\n",
              dt == 0 ? "fp32" : dt == 1 ? "bf16" : "fp16", T, sp, best[0] * 1e9 / (double(H) * T),
              best[1] * 1e9 / (double(H) * T), best[1] / best[0], diff);
  return 0;
}
