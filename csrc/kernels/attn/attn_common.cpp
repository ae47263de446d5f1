// ISA-independent block-sparse attention pieces: dispatch, scratch size, work estimate, validation.
#include <algorithm>
#include <vector>

#include "attn.h"
#include "attn_impl.h"

namespace sparseops::attn {

BlockFn block_kernel(Isa isa) {
  switch (isa) {
    case Isa::scalar: return block_scalar;
#if defined(SPARSEOPS_X86)
    case Isa::avx2: return block_avx2;
    case Isa::avx512: return block_avx512;
#endif
#if defined(SPARSEOPS_AARCH64)
    case Isa::neon: return block_neon;
#endif
    default: return nullptr;
  }
}

size_t scratch_floats(const Args& a) { return scratch_floats_impl(a); }

int64_t work_of(const Args& a, int64_t b, int64_t h, int64_t qb) {
  int64_t w = std::min<int64_t>(a.cap, std::max<int64_t>(0, a.kv_num[b * a.n_sb + h * a.n_sh + qb]));
  if (a.full_num)
    w += std::min<int64_t>(a.full_cap, std::max<int64_t>(0, a.full_num[b * a.fn_sb + h * a.fn_sh + qb]));
  return w;
}

int validate(const Args& a, int64_t Bm, int64_t Hm, int64_t where[4]) {
  const int64_t nQB = num_q_blocks(a), nKB = num_k_blocks(a);
  std::vector<uint32_t> seen(static_cast<size_t>(nKB), 0);  // stamp per row: no clearing between rows
  uint32_t stamp = 0;
  for (int64_t b = 0; b < Bm; ++b)
    for (int64_t h = 0; h < Hm; ++h)
      for (int64_t qb = 0; qb < nQB; ++qb) {
        ++stamp;
        for (int list = 0; list < 2; ++list) {
          const int32_t* nump = list == 0 ? a.kv_num : a.full_num;
          if (!nump) continue;
          const int64_t cap = list == 0 ? a.cap : a.full_cap;
          const int64_t cnt = list == 0 ? nump[b * a.n_sb + h * a.n_sh + qb] : nump[b * a.fn_sb + h * a.fn_sh + qb];
          const int32_t* idx = list == 0 ? a.kv_idx + b * a.i_sb + h * a.i_sh + qb * a.i_sq
                                         : a.full_idx + b * a.fi_sb + h * a.fi_sh + qb * a.fi_sq;
          where[0] = b; where[1] = h; where[2] = qb; where[3] = cnt;
          if (cnt < 0 || cnt > cap) return 1 + 10 * list;
          for (int64_t t = 0; t < cnt; ++t) {
            where[3] = t;
            const int64_t kb = idx[t];
            if (kb < 0 || kb >= nKB) return 2 + 10 * list;
            if (seen[kb] == stamp) return 3 + 10 * list;
            seen[kb] = stamp;
          }
        }
      }
  return 0;
}

}  // namespace sparseops::attn
