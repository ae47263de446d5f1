// Probe (not part of the library): issue rate of the AVX-512 placement instructions, one thread. Four
// independent chains of `op + vpaddw/d` over masks read from memory, so latency never binds; ns per op.
// Build: g++ -O2 -march=native -o /tmp/shuffle_rates bench/probes/x86_shuffle_rates.cpp
// Run:   /tmp/shuffle_rates
#include <immintrin.h>

#include <chrono>
#include <cstdint>
#include <cstdio>

static uint32_t ms[4096];

int main() {
  for (int i = 0; i < 4096; ++i) ms[i] = 0x5a5a5a5au * (i + 1) ^ (i * 7919);
  const int R = 1 << 14;
  const __m512i a0 = _mm512_set1_epi16(1), a1 = _mm512_set1_epi16(2), a2 = _mm512_set1_epi16(3),
                a3 = _mm512_set1_epi16(4);
  __m512i s0 = a0, s1 = a1, s2 = a2, s3 = a3;
  auto bench = [&](const char* name, auto body) {
    const auto t = std::chrono::steady_clock::now();
    for (int r = 0; r < R; ++r)
      for (int i = 0; i < 4096; i += 4) body(i);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
    std::printf("%-28s %.3f ns per op\n", name, dt / R / 4096 * 1e9);
  };
  auto ps = [](__m512i v) { return _mm512_castsi512_ps(v); };
  auto si = [](__m512 v) { return _mm512_castps_si512(v); };
  bench("vpaddw (loop floor)", [&](int i) {
    s0 = _mm512_add_epi16(s0, _mm512_set1_epi32(ms[i])); s1 = _mm512_add_epi16(s1, _mm512_set1_epi32(ms[i + 1]));
    s2 = _mm512_add_epi16(s2, _mm512_set1_epi32(ms[i + 2])); s3 = _mm512_add_epi16(s3, _mm512_set1_epi32(ms[i + 3]));
  });
  bench("vfmadd231ps (4 chains)", [&](int) {
    s0 = si(_mm512_fmadd_ps(ps(s0), ps(a0), ps(a0))); s1 = si(_mm512_fmadd_ps(ps(s1), ps(a0), ps(a0)));
    s2 = si(_mm512_fmadd_ps(ps(s2), ps(a0), ps(a0))); s3 = si(_mm512_fmadd_ps(ps(s3), ps(a0), ps(a0)));
  });
  bench("vpexpandw zmm{k}{z}", [&](int i) {
    s0 = _mm512_add_epi16(s0, _mm512_maskz_expand_epi16(ms[i], a0));
    s1 = _mm512_add_epi16(s1, _mm512_maskz_expand_epi16(ms[i + 1], a1));
    s2 = _mm512_add_epi16(s2, _mm512_maskz_expand_epi16(ms[i + 2], a2));
    s3 = _mm512_add_epi16(s3, _mm512_maskz_expand_epi16(ms[i + 3], a3));
  });
  bench("vexpandps zmm{k}{z}", [&](int i) {
    s0 = _mm512_add_epi32(s0, si(_mm512_maskz_expand_ps(ms[i], ps(a0))));
    s1 = _mm512_add_epi32(s1, si(_mm512_maskz_expand_ps(ms[i + 1], ps(a1))));
    s2 = _mm512_add_epi32(s2, si(_mm512_maskz_expand_ps(ms[i + 2], ps(a2))));
    s3 = _mm512_add_epi32(s3, si(_mm512_maskz_expand_ps(ms[i + 3], ps(a3))));
  });
  bench("vpcompressb zmm{k}{z}", [&](int i) {
    const uint64_t m = (uint64_t(ms[i]) << 32) | ms[i + 1];
    s0 = _mm512_add_epi8(s0, _mm512_maskz_compress_epi8(m, a0));
    s1 = _mm512_add_epi8(s1, _mm512_maskz_compress_epi8(m >> 1, a1));
    s2 = _mm512_add_epi8(s2, _mm512_maskz_compress_epi8(m >> 2, a2));
    s3 = _mm512_add_epi8(s3, _mm512_maskz_compress_epi8(m >> 3, a3));
  });
  bench("vpblendmw", [&](int i) {
    s0 = _mm512_add_epi16(s0, _mm512_mask_blend_epi16(ms[i], a0, a1));
    s1 = _mm512_add_epi16(s1, _mm512_mask_blend_epi16(ms[i + 1], a1, a2));
    s2 = _mm512_add_epi16(s2, _mm512_mask_blend_epi16(ms[i + 2], a2, a3));
    s3 = _mm512_add_epi16(s3, _mm512_mask_blend_epi16(ms[i + 3], a3, a0));
  });
  bench("vpermw", [&](int i) {
    const __m512i ix = _mm512_set1_epi32(ms[i]);
    s0 = _mm512_add_epi16(s0, _mm512_permutexvar_epi16(ix, a0)); s1 = _mm512_add_epi16(s1, _mm512_permutexvar_epi16(ix, a1));
    s2 = _mm512_add_epi16(s2, _mm512_permutexvar_epi16(ix, a2)); s3 = _mm512_add_epi16(s3, _mm512_permutexvar_epi16(ix, a3));
  });
  bench("vpermt2w", [&](int i) {
    const __m512i ix = _mm512_set1_epi32(ms[i]);
    s0 = _mm512_add_epi16(s0, _mm512_permutex2var_epi16(a0, ix, a1)); s1 = _mm512_add_epi16(s1, _mm512_permutex2var_epi16(a1, ix, a2));
    s2 = _mm512_add_epi16(s2, _mm512_permutex2var_epi16(a2, ix, a3)); s3 = _mm512_add_epi16(s3, _mm512_permutex2var_epi16(a3, ix, a0));
  });
  bench("vpermt2ps", [&](int i) {
    const __m512i ix = _mm512_set1_epi32(ms[i]);
    s0 = _mm512_add_epi32(s0, si(_mm512_permutex2var_ps(ps(a0), ix, ps(a1))));
    s1 = _mm512_add_epi32(s1, si(_mm512_permutex2var_ps(ps(a1), ix, ps(a2))));
    s2 = _mm512_add_epi32(s2, si(_mm512_permutex2var_ps(ps(a2), ix, ps(a3))));
    s3 = _mm512_add_epi32(s3, si(_mm512_permutex2var_ps(ps(a3), ix, ps(a0))));
  });
  bench("vpopcntw", [&](int i) {
    s0 = _mm512_add_epi16(s0, _mm512_popcnt_epi16(_mm512_set1_epi32(ms[i])));
    s1 = _mm512_add_epi16(s1, _mm512_popcnt_epi16(_mm512_set1_epi32(ms[i + 1])));
    s2 = _mm512_add_epi16(s2, _mm512_popcnt_epi16(_mm512_set1_epi32(ms[i + 2])));
    s3 = _mm512_add_epi16(s3, _mm512_popcnt_epi16(_mm512_set1_epi32(ms[i + 3])));
  });
  bench("vpopcntd", [&](int i) {
    s0 = _mm512_add_epi16(s0, _mm512_popcnt_epi32(_mm512_set1_epi32(ms[i])));
    s1 = _mm512_add_epi16(s1, _mm512_popcnt_epi32(_mm512_set1_epi32(ms[i + 1])));
    s2 = _mm512_add_epi16(s2, _mm512_popcnt_epi32(_mm512_set1_epi32(ms[i + 2])));
    s3 = _mm512_add_epi16(s3, _mm512_popcnt_epi32(_mm512_set1_epi32(ms[i + 3])));
  });
  bench("vpackusdw", [&](int i) {
    const __m512i ix = _mm512_set1_epi32(ms[i]);
    s0 = _mm512_add_epi16(s0, _mm512_packus_epi32(ix, a0)); s1 = _mm512_add_epi16(s1, _mm512_packus_epi32(ix, a1));
    s2 = _mm512_add_epi16(s2, _mm512_packus_epi32(ix, a2)); s3 = _mm512_add_epi16(s3, _mm512_packus_epi32(ix, a3));
  });
  bench("vpshufb", [&](int i) {
    const __m512i ix = _mm512_set1_epi32(ms[i]);
    s0 = _mm512_add_epi16(s0, _mm512_shuffle_epi8(a0, ix)); s1 = _mm512_add_epi16(s1, _mm512_shuffle_epi8(a1, ix));
    s2 = _mm512_add_epi16(s2, _mm512_shuffle_epi8(a2, ix)); s3 = _mm512_add_epi16(s3, _mm512_shuffle_epi8(a3, ix));
  });
  bench("vdpbf16ps (4 chains)", [&](int) {
    s0 = si(_mm512_dpbf16_ps(ps(s0), (__m512bh)a0, (__m512bh)a1)); s1 = si(_mm512_dpbf16_ps(ps(s1), (__m512bh)a0, (__m512bh)a1));
    s2 = si(_mm512_dpbf16_ps(ps(s2), (__m512bh)a0, (__m512bh)a1)); s3 = si(_mm512_dpbf16_ps(ps(s3), (__m512bh)a0, (__m512bh)a1));
  });
  bench("pext r64", [&](int i) {
    const uint64_t m = (uint64_t(ms[i]) << 32) | ms[i + 1];
    s0 = _mm512_add_epi16(s0, _mm512_set1_epi64(_pext_u64(m, 0x2222222222222222ull)));
    s1 = _mm512_add_epi16(s1, _mm512_set1_epi64(_pext_u64(m, 0x4444444444444444ull)));
    s2 = _mm512_add_epi16(s2, _mm512_set1_epi64(_pext_u64(m, 0x8888888888888888ull)));
    s3 = _mm512_add_epi16(s3, _mm512_set1_epi64(_pext_u64(m, 0x1111111111111111ull)));
  });
  int r[16];
  _mm512_storeu_si512(r, _mm512_add_epi16(_mm512_add_epi16(s0, s1), _mm512_add_epi16(s2, s3)));
  std::printf("# checksum %d\n", r[0]);
}
