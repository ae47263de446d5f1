// NEON dense variant (baseline armv8-a): 4-lane fp32 tiles, 4 outputs x 4 x-rows of accumulators.
#include "dense_run.h"
#include "neon_cvt.h"

namespace sparseops::dense {

void linear_neon(const LinearArgs& a, int64_t o_begin, int64_t o_end) {
  run_dense<4, 4, tile::NeonCvt>(a, o_begin, o_end);
}

}  // namespace sparseops::dense
