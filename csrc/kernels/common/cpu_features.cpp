#include "cpu_features.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif
#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDHP
#define HWCAP_ASIMDHP (1 << 10)
#endif
#ifndef HWCAP2_BF16
#define HWCAP2_BF16 (1 << 14)
#endif
#endif

namespace sparseops {
namespace {

CpuFeatures detect() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  // __builtin_cpu_supports checks both CPUID and that the OS saves the register state (XGETBV).
  f.avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  f.avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  f.avx512_bf16 = f.avx512 && __builtin_cpu_supports("avx512bf16");
  f.avx512_vbmi2 = f.avx512 && __builtin_cpu_supports("avx512vbmi2");
  f.avx512_vpopcntdq = f.avx512 && __builtin_cpu_supports("avx512vpopcntdq");
  f.avx512_bitalg = f.avx512 && __builtin_cpu_supports("avx512bitalg");
  f.bmi2 = __builtin_cpu_supports("bmi2");
  f.avx512_fp16 = f.avx512 && __builtin_cpu_supports("avx512fp16");
  f.amx_bf16 = __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16");
  f.intel = __builtin_cpu_is("intel");
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__builtin_cpu_is("amd") && __get_cpuid(1, &eax, &ebx, &ecx, &edx)) {
    const unsigned base = (eax >> 8) & 0xf, family = base == 0xf ? base + ((eax >> 20) & 0xff) : base;
    f.amd_zen5 = family >= 0x1a;
  }
#elif defined(__aarch64__)
  f.neon = true;
#if defined(__linux__)
  unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
  f.neon_fp16 = (hw & HWCAP_ASIMDHP) != 0;
  f.neon_bf16 = (hw2 & HWCAP2_BF16) != 0;
#endif
#endif
  return f;
}

std::atomic<int> g_ext{-1};  // -1: from the CPU and SPARSEOPS_AVX512_EXT; 0/1: set_avx512_ext()

// -1: no override; otherwise an Isa value.
std::atomic<int> g_override{-1};
std::atomic<int> g_env_isa{-1};

Isa best_isa() {
  auto v = available_isas();
  return v.back();
}

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

static bool ext_supported() {
  const CpuFeatures& f = cpu_features();
  return f.avx512 && f.avx512_bf16 && f.avx512_vbmi2 && f.avx512_vpopcntdq && f.avx512_bitalg && f.bmi2;
}

bool avx512_ext() {
  int v = g_ext.load(std::memory_order_relaxed);
  if (v < 0) {
    const char* env = std::getenv("SPARSEOPS_AVX512_EXT");
    v = ext_supported() && !(env && env[0] == '0' && env[1] == 0);
    g_ext.store(v, std::memory_order_relaxed);
  }
  return v != 0;
}

void set_avx512_ext(bool enabled) { g_ext.store(enabled && ext_supported()); }

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::scalar: return "scalar";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
    case Isa::neon: return "neon";
  }
  return "unknown";
}

bool parse_isa(const std::string& name, Isa* out) {
  for (Isa i : {Isa::scalar, Isa::avx2, Isa::avx512, Isa::neon}) {
    if (name == isa_name(i)) { *out = i; return true; }
  }
  return false;
}

std::vector<Isa> available_isas() {
  const auto& f = cpu_features();
  std::vector<Isa> v{Isa::scalar};
#if defined(__x86_64__) || defined(_M_X64)
  if (f.avx2_fma) v.push_back(Isa::avx2);
  if (f.avx2_fma && f.avx512) v.push_back(Isa::avx512);
#elif defined(__aarch64__)
  if (f.neon) v.push_back(Isa::neon);
#endif
  (void)f;
  return v;
}

bool isa_available(Isa isa) {
  for (Isa i : available_isas()) if (i == isa) return true;
  return false;
}

static Isa checked(Isa isa, const char* origin) {
  if (!isa_available(isa)) {
    std::string have;
    for (Isa i : available_isas()) { if (!have.empty()) have += ", "; have += isa_name(i); }
    throw std::runtime_error(std::string("sparseops: ") + origin + " asks for ISA '" + isa_name(isa) +
                             "', which this CPU does not support (available: " + have + ")");
  }
  return isa;
}

static Isa env_isa() {
  int cached = g_env_isa.load();
  if (cached >= 0) return static_cast<Isa>(cached);
  Isa isa = best_isa();
  const char* env = std::getenv("SPARSEOPS_ISA");
  if (env && *env) {
    if (!parse_isa(env, &isa))
      throw std::runtime_error(std::string("sparseops: SPARSEOPS_ISA='") + env +
                               "' is not one of scalar, avx2, avx512, neon");
    checked(isa, "SPARSEOPS_ISA");
  }
  g_env_isa.store(static_cast<int>(isa));
  return isa;
}

Isa active_isa() {
  int o = g_override.load();
  if (o >= 0) return static_cast<Isa>(o);
  return env_isa();
}

void set_active_isa(Isa isa) { g_override.store(static_cast<int>(checked(isa, "set_isa()"))); }

void reset_active_isa() {
  g_override.store(-1);
  g_env_isa.store(-1);
}

}  // namespace sparseops
