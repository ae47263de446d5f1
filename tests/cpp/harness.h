// A tiny test harness: each case reports pass/fail once; failures print why.
#pragma once
#include <cstdarg>
#include <cstdio>

namespace sparseops::test {

struct Harness {
  int passed = 0, failed = 0;
  // Records one case; on failure prints the message (printf-style).
  bool check(bool ok, const char* fmt, ...) __attribute__((format(printf, 3, 4))) {
    if (ok) { ++passed; return true; }
    ++failed;
    std::va_list ap;
    va_start(ap, fmt);
    std::fprintf(stderr, "FAIL: ");
    std::vfprintf(stderr, fmt, ap);
    std::fprintf(stderr, "\n");
    va_end(ap);
    return false;
  }
};

void test_isa(Harness& h);
void test_nm_linear(Harness& h);
void test_nm_malformed(Harness& h);
void test_nm_select14(Harness& h);
void test_nm_m1_long(Harness& h);
void test_nm_gather_tokens(Harness& h);
void test_nm_pairs(Harness& h);
void test_nm_format(Harness& h);
void test_dense(Harness& h);
void test_kv(Harness& h);
void test_attn(Harness& h);
void test_csr(Harness& h);

}  // namespace sparseops::test
