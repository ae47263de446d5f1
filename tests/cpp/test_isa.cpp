// ISA naming, detection and dispatch sanity.
#include <stdexcept>
#include <string>

#include "harness.h"
#include "kernels/common/cpu_features.h"
#include "kernels/dense/dense.h"
#include "kernels/nm/nm.h"

namespace sparseops::test {

void test_isa(Harness& h) {
  const auto isas = available_isas();
  h.check(!isas.empty() && isas.front() == Isa::scalar, "available_isas() must start with scalar");
  for (Isa i : isas) {
    Isa back = Isa::scalar;
    h.check(parse_isa(isa_name(i), &back) && back == i, "parse_isa(isa_name(%s)) round trip", isa_name(i));
    h.check(isa_available(i), "isa_available(%s)", isa_name(i));
    h.check(nm::linear_kernel(i) != nullptr, "nm::linear_kernel(%s) is null", isa_name(i));
    h.check(dense::linear_kernel(i) != nullptr, "dense::linear_kernel(%s) is null", isa_name(i));
  }
  Isa dummy = Isa::scalar;
  h.check(!parse_isa("bogus", &dummy) && !parse_isa("", &dummy) && !parse_isa("AVX2", &dummy),
          "parse_isa accepts an unknown name");
#if defined(SPARSEOPS_X86)
  h.check(nm::linear_kernel(Isa::neon) == nullptr && !isa_available(Isa::neon), "neon on x86");
#elif defined(SPARSEOPS_AARCH64)
  h.check(isa_available(Isa::neon) && !isa_available(Isa::avx2) && nm::linear_kernel(Isa::avx512) == nullptr,
          "x86 ISA on aarch64");
#endif
  // The AVX-512 extension paths: only with BF16 + VBMI2 + VPOPCNTDQ, and switchable off for tests.
  {
    const CpuFeatures& f = cpu_features();
    const bool can = f.avx512 && f.avx512_bf16 && f.avx512_vbmi2 && f.avx512_vpopcntdq;
    const bool was = avx512_ext();
    h.check(!was || can, "avx512_ext() on a CPU without BF16/VBMI2/VPOPCNTDQ");
    set_avx512_ext(false);
    h.check(!avx512_ext(), "set_avx512_ext(false) leaves the extension paths on");
    set_avx512_ext(true);
    h.check(avx512_ext() == can, "set_avx512_ext(true) must follow the CPU (%d vs %d)", avx512_ext(), can);
    set_avx512_ext(was);
  }
  // set_active_isa validates; reset returns to the default (best, unless SPARSEOPS_ISA says otherwise).
  bool threw = false;
  try {
#if defined(SPARSEOPS_X86)
    set_active_isa(Isa::neon);
#else
    set_active_isa(Isa::avx512);
#endif
  } catch (const std::exception&) { threw = true; }
  h.check(threw, "set_active_isa accepts an ISA the CPU lacks");
  set_active_isa(Isa::scalar);
  h.check(active_isa() == Isa::scalar, "set_active_isa(scalar) not active");
  reset_active_isa();
  h.check(isa_available(active_isa()), "active_isa() after reset is not available");
}

}  // namespace sparseops::test
