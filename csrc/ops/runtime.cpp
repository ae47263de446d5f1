// Plain C entry points for sparseops.info() and ISA selection (read with ctypes; they take no tensors,
// so they are not torch ops).
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/common/cpu_features.h"

namespace {
thread_local std::string g_error;
void copy_out(const std::string& s, char* buf, int len) {
  if (len <= 0) return;
  std::strncpy(buf, s.c_str(), static_cast<size_t>(len - 1));
  buf[len - 1] = '\0';
}
}  // namespace

extern "C" {

// Writes the active ISA name; returns 0, or -1 with the error text in sparseops_last_error().
int sparseops_active_isa(char* buf, int len) {
  try {
    copy_out(sparseops::isa_name(sparseops::active_isa()), buf, len);
    return 0;
  } catch (const std::exception& e) {
    g_error = e.what();
    return -1;
  }
}

void sparseops_available_isas(char* buf, int len) {
  std::string s;
  for (auto i : sparseops::available_isas()) { if (!s.empty()) s += ","; s += sparseops::isa_name(i); }
  copy_out(s, buf, len);
}

void sparseops_cpu_features(char* buf, int len) {
  const auto& f = sparseops::cpu_features();
  std::string s;
  auto add = [&](bool on, const char* name) { if (on) { if (!s.empty()) s += ","; s += name; } };
  add(f.avx2_fma, "avx2+fma"); add(f.avx512, "avx512"); add(f.avx512_bf16, "avx512_bf16");
  add(f.avx512_vbmi2, "avx512_vbmi2"); add(f.avx512_vpopcntdq, "avx512_vpopcntdq");
  add(f.avx512_bitalg, "avx512_bitalg");
  add(f.avx512_fp16, "avx512_fp16"); add(f.amx_bf16, "amx_bf16"); add(f.intel, "intel"); add(f.amd_zen5, "amd_zen5"); add(f.neon, "neon"); add(f.neon_fp16, "neon_fp16");
  add(f.neon_bf16, "neon_bf16");
  add(sparseops::avx512_ext(), "avx512x-paths");  // the *_avx512x kernels are in use (SPARSEOPS_AVX512_EXT)
  copy_out(s, buf, len);
}

// name == nullptr or "" resets to SPARSEOPS_ISA / the best available.
int sparseops_set_isa(const char* name) {
  try {
    if (!name || !*name) { sparseops::reset_active_isa(); return 0; }
    sparseops::Isa isa;
    if (!sparseops::parse_isa(name, &isa))
      throw std::runtime_error(std::string("sparseops: unknown ISA '") + name +
                               "' (expected scalar, avx2, avx512 or neon)");
    sparseops::set_active_isa(isa);
    return 0;
  } catch (const std::exception& e) {
    g_error = e.what();
    return -1;
  }
}

const char* sparseops_last_error() { return g_error.c_str(); }

const char* sparseops_version() { return SPARSEOPS_VERSION; }

const char* sparseops_cuda_archs() {
#ifdef SPARSEOPS_CUDA_ARCHS
  return SPARSEOPS_CUDA_ARCHS;
#else
  return "";
#endif
}

int sparseops_built_with_cuda() {
#ifdef SPARSEOPS_WITH_CUDA
  return 1;
#else
  return 0;
#endif
}
}
