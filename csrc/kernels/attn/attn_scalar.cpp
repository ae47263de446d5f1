// Block-sparse attention, portable variant (no ISA flags; the reference for the others).
#include "attn_impl.h"

namespace sparseops::attn {

void block_scalar(const Args& a, int64_t b, const Item* items, int n, bool reverse, float* scratch) {
  run_items<GenericOps>(a, b, items, n, reverse, scratch);
}

}  // namespace sparseops::attn
