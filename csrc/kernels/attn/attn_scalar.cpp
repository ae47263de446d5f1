// Block-sparse attention, portable variant (no ISA flags; the reference for the others).
#include "attn_impl.h"

namespace sparseops::attn {

void block_scalar(const Args& a, int64_t b, int64_t h, int64_t qb, bool reverse, float* scratch) {
  run_block<GenericOps>(a, b, h, qb, reverse, scratch);
}

}  // namespace sparseops::attn
