// C++ tests of the torch-free kernel tier. Prints "N passed, M failed"; exits nonzero on failure.
#include <chrono>
#include <cstdio>

#include "harness.h"

int main() {
  using namespace sparseops::test;
  Harness h;
  const auto t0 = std::chrono::steady_clock::now();
  struct { const char* name; void (*fn)(Harness&); } suites[] = {
      {"isa", test_isa},           {"nm_format", test_nm_format}, {"nm_linear", test_nm_linear},
      {"nm_malformed", test_nm_malformed}, {"nm_select14", test_nm_select14}, {"nm_m1_long", test_nm_m1_long}, {"nm_gather_tokens", test_nm_gather_tokens}, {"nm_pairs", test_nm_pairs}, {"dense", test_dense}, {"kv", test_kv}, {"attn", test_attn},
      {"csr", test_csr},
  };
  for (auto& s : suites) {
    const int p0 = h.passed, f0 = h.failed;
    s.fn(h);
    std::printf("%-14s %5d passed, %d failed\n", s.name, h.passed - p0, h.failed - f0);
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("(%.2f s)\n", secs);
  std::printf("%d passed, %d failed\n", h.passed, h.failed);
  return h.failed == 0 && h.passed > 0 ? 0 : 1;
}
