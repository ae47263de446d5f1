// Run-time CPU feature detection and ISA selection (torch-free).
// The build machine's flags never decide what runs: every ISA variant is compiled
// with its own flags and picked here from what the executing CPU reports.
#pragma once
#include <string>
#include <vector>

namespace sparseops {

enum class Isa { scalar = 0, avx2 = 1, avx512 = 2, neon = 3 };

struct CpuFeatures {
  bool avx2_fma = false;      // AVX2 + FMA + F16C
  bool avx512 = false;        // AVX-512 F/BW/VL/DQ (our "avx512" variant baseline)
  bool avx512_bf16 = false;   // vdpbf16ps
  bool avx512_vbmi2 = false;  // 16-bit expand/compress
  bool avx512_vpopcntdq = false;
  bool avx512_bitalg = false;  // vpopcntb
  bool bmi2 = false;           // pext (every AVX-512 CPU has it; checked with the avx512x extensions)
  bool avx512_fp16 = false;
  bool amx_bf16 = false;      // AMX-TILE + AMX-BF16 (torch's oneDNN bf16 GEMM uses them; our kernels do not)
  bool intel = false;         // GenuineIntel (MKL's sgemm, which torch's fp32 GEMM uses, is fastest there)
  bool amd_zen5 = false;      // AMD family 0x1A on: full-width 512-bit FP pipes (Zen 4 splits zmm ops in two)
  bool neon = false;          // always true on aarch64
  bool neon_fp16 = false;     // FEAT_FP16 arithmetic
  bool neon_bf16 = false;     // FEAT_BF16
};

const CpuFeatures& cpu_features();
// True when the *_avx512x paths may run: the CPU has AVX512-BF16, VBMI2, VPOPCNTDQ, BITALG and BMI2 (Zen 4,
// Zen 5, Sapphire Rapids) and SPARSEOPS_AVX512_EXT is not "0" (which tests use to cover the plain AVX-512 fallbacks).
bool avx512_ext();
// Override for tests (false forces the fallbacks; true is ignored where the CPU lacks the extensions).
void set_avx512_ext(bool enabled);
const char* isa_name(Isa isa);
// Parses "scalar|avx2|avx512|neon"; returns false for unknown names.
bool parse_isa(const std::string& name, Isa* out);
// ISAs this CPU can run, best last.
std::vector<Isa> available_isas();
bool isa_available(Isa isa);
// The ISA kernels use now: SPARSEOPS_ISA if set (validated on first use), else the best available.
// Throws std::runtime_error with a clear message for a bad SPARSEOPS_ISA.
Isa active_isa();
// Override for tests/benchmarks; throws std::runtime_error if the CPU lacks it.
void set_active_isa(Isa isa);
// Drops the override and re-reads SPARSEOPS_ISA.
void reset_active_isa();

}  // namespace sparseops
