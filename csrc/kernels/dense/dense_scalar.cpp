// Portable dense variant (compiled with no ISA flags: SSE2 on x86-64, base NEON on aarch64).
#include "dense_run.h"

namespace sparseops::dense {

void linear_scalar(const LinearArgs& a, int64_t o_begin, int64_t o_end) {
  // 4 lanes x (4 outputs x 2 x-rows) accumulators fit the 16 registers of SSE2.
  run_dense<4, 2, tile::PortableCvt>(a, o_begin, o_end);
}

}  // namespace sparseops::dense
