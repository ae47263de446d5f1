// Dispatch for the dense reference kernels.
#include "dense.h"

namespace sparseops::dense {

LinearFn linear_kernel(Isa isa) {
  switch (isa) {
    case Isa::scalar: return linear_scalar;
#if defined(SPARSEOPS_X86)
    case Isa::avx2: return linear_avx2;
    case Isa::avx512: return linear_avx512;
#endif
#if defined(SPARSEOPS_AARCH64)
    case Isa::neon: return linear_neon;
#endif
    default: return nullptr;
  }
}

}  // namespace sparseops::dense
