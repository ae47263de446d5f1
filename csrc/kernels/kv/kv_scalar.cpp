// Portable reference variant of bitmap-KV decode attention.
#include "kv_attend.h"

namespace sparseops::kv {

void partial_scalar(const AttnArgs& a, int64_t b, int64_t h, int64_t t0, int64_t t1, float* part) {
  attend_partial<ScalarOps>(a, b, h, t0, t1, part);
}

}  // namespace sparseops::kv
