// ISA dispatch and the ISA-independent pieces of the CSR family: packing B, validation, row splits.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "csr_impl.h"

namespace sparseops::csr {

SpmmFn spmm_kernel(Isa isa) {
  switch (isa) {
    case Isa::scalar: return spmm_scalar;
#if defined(SPARSEOPS_X86)
    case Isa::avx2: return spmm_avx2;
    case Isa::avx512: return spmm_avx512;
#endif
#if defined(SPARSEOPS_AARCH64)
    case Isa::neon: return spmm_neon;
#endif
    default: return nullptr;
  }
}

PackFn pack_b_kernel(Isa isa) {
#if defined(SPARSEOPS_X86)
  if (isa == Isa::avx512) return pack_b_avx512;
#endif
  (void)isa;
  return pack_b;
}

// Scatters one row's value bits; false if a column is out of range or not strictly increasing (then the caller
// checks the range and, for repeated columns, adds them up).
template <class C, class V>
static bool scatter_row(const C* cols, const V* vals, int64_t e0, int64_t e1, int64_t K, V* d) {
  int64_t prev = -1;
  for (int64_t e = e0; e < e1; ++e) {
    const int64_t c = static_cast<int64_t>(cols[e]);
    if (c <= prev || c >= K) return false;
    prev = c;
    d[c] = vals[e];
  }
  return true;
}

int64_t decompress_rows(const SpmmArgs& a, void* dense, int64_t ld, int64_t o_begin, int64_t o_end) {
  const size_t es = a.dtype == DType::f32 ? 4 : 2;
  std::vector<float> acc;  // only for rows with repeated or unsorted columns
  for (int64_t o = o_begin; o < o_end; ++o) {
    char* d = static_cast<char*>(dense) + (o - o_begin) * ld * static_cast<int64_t>(es);
    std::memset(d, 0, static_cast<size_t>(a.K) * es);
    // Fast path: strictly increasing columns (what compress() writes) are a plain scatter of the value bits.
    const int64_t e0 = a.row_ptr[o], e1 = a.row_ptr[o + 1];
    bool ok = true;
    if (a.index == Index::u16)
      ok = es == 4 ? scatter_row(static_cast<const uint16_t*>(a.cols), static_cast<const uint32_t*>(a.values), e0,
                                 e1, a.K, reinterpret_cast<uint32_t*>(d))
                   : scatter_row(static_cast<const uint16_t*>(a.cols), static_cast<const uint16_t*>(a.values), e0,
                                 e1, a.K, reinterpret_cast<uint16_t*>(d));
    else
      ok = es == 4 ? scatter_row(static_cast<const int32_t*>(a.cols), static_cast<const uint32_t*>(a.values), e0,
                                 e1, a.K, reinterpret_cast<uint32_t*>(d))
                   : scatter_row(static_cast<const int32_t*>(a.cols), static_cast<const uint16_t*>(a.values), e0,
                                 e1, a.K, reinterpret_cast<uint16_t*>(d));
    if (ok) continue;
    for (int64_t e = e0; e < e1; ++e) {
      const int64_t c = a.index == Index::u16 ? static_cast<const uint16_t*>(a.cols)[e]
                                              : static_cast<const int32_t*>(a.cols)[e];
      if (c < 0 || c >= a.K) return o;
    }
    acc.assign(static_cast<size_t>(a.K), 0.0f);  // repeated columns add up, in fp32
    const uint16_t* v16 = static_cast<const uint16_t*>(a.values);
    for (int64_t e = a.row_ptr[o]; e < a.row_ptr[o + 1]; ++e) {
      const int64_t c = a.index == Index::u16 ? static_cast<const uint16_t*>(a.cols)[e]
                                              : static_cast<const int32_t*>(a.cols)[e];
      acc[c] += a.dtype == DType::f32 ? static_cast<const float*>(a.values)[e]
              : a.dtype == DType::bf16 ? bf16_to_f32(v16[e]) : f16_to_f32(v16[e]);
    }
    for (int64_t k = 0; k < a.K; ++k) {
      if (a.dtype == DType::f32) reinterpret_cast<float*>(d)[k] = acc[k];
      else reinterpret_cast<uint16_t*>(d)[k] = a.dtype == DType::bf16 ? f32_to_bf16(acc[k]) : f32_to_f16(acc[k]);
    }
  }
  return -1;
}

int64_t packed_ld(int64_t N, Isa isa) {
  if (N == 1) return 1;
  const int64_t ld = (N + kPackAlign - 1) / kPackAlign * kPackAlign;
  return N > tile_columns(isa) && ld % 64 == 0 ? ld + kPackAlign : ld;
}

namespace {

template <class V>
void pack_typed(const V* src, int64_t sk, int64_t sj, int64_t K, int64_t N, float* b, int64_t ldb,
                uint8_t* nonfinite, int64_t j0, int64_t j1) {
  // Column blocks of 16: the writes of one k then share a cache line even when src is row-major x.
  for (int64_t jb = j0; jb < j1; jb += 16) {
    const int64_t je = std::min(j1, jb + 16);
    for (int64_t j = jb; j < je; ++j) {
      bool bad = false;
      if (j < N) {
        const V* s = src + j * sj;
        float* d = b + j;
        for (int64_t k = 0; k < K; ++k) {
          const float f = to_f32(s[k * sk]);
          bad |= !std::isfinite(f);
          d[k * ldb] = f;
        }
      } else {
        for (int64_t k = 0; k < K; ++k) b[k * ldb + j] = 0.0f;
      }
      if (nonfinite && j < N) nonfinite[j] = bad ? 1 : 0;
    }
  }
}

template <class I>
Problem validate_cols(const I* c, int64_t nnz, int64_t K, int64_t* where) {
  for (int64_t i = 0; i < nnz; ++i) {
    const int64_t v = static_cast<int64_t>(c[i]);
    if (v < 0 || v >= K) {
      *where = i;
      return kColOutOfRange;
    }
  }
  return kOk;
}

}  // namespace

void pack_b(DType dtype, const void* src, int64_t sk, int64_t sj, int64_t K, int64_t N, float* b, int64_t ldb,
            uint8_t* nonfinite, int64_t j_begin, int64_t j_end) {
  switch (dtype) {
    case DType::f32:
      pack_typed(static_cast<const float*>(src), sk, sj, K, N, b, ldb, nonfinite, j_begin, j_end); break;
    case DType::bf16:
      pack_typed(static_cast<const Bf16*>(src), sk, sj, K, N, b, ldb, nonfinite, j_begin, j_end); break;
    case DType::f16:
      pack_typed(static_cast<const F16*>(src), sk, sj, K, N, b, ldb, nonfinite, j_begin, j_end); break;
  }
}

Problem validate_row_ptr(const int64_t* row_ptr, int64_t O, int64_t nnz, int64_t* where) {
  *where = 0;
  if (row_ptr[0] != 0) return kFirstNotZero;
  for (int64_t o = 0; o < O; ++o) {
    if (row_ptr[o + 1] < row_ptr[o]) {
      *where = o;
      return kDecreasing;
    }
  }
  if (row_ptr[O] != nnz) {
    *where = O;
    return kLastNotNnz;
  }
  return kOk;
}

Problem validate(const int64_t* row_ptr, int64_t O, const void* cols, bool i64, int64_t nnz, int64_t K,
                 int64_t* where) {
  const Problem p = validate_row_ptr(row_ptr, O, nnz, where);
  if (p != kOk) return p;
  return i64 ? validate_cols(static_cast<const int64_t*>(cols), nnz, K, where)
             : validate_cols(static_cast<const int32_t*>(cols), nnz, K, where);
}

void balanced_splits(const int64_t* row_ptr, int64_t O, int64_t parts, int64_t* bounds) {
  // cost(r) = row_ptr[r] + kRowCost * r is non-decreasing: part p starts at the first row whose cost
  // reaches p / parts of the total.
  const double total = static_cast<double>(row_ptr[O] + kRowCost * O);
  bounds[0] = 0;
  int64_t r = 0;
  for (int64_t p = 1; p < parts; ++p) {
    const double goal = total * static_cast<double>(p) / static_cast<double>(parts);
    int64_t lo = r, hi = O;  // first r in [lo, O] with cost(r) >= goal
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (static_cast<double>(row_ptr[mid] + kRowCost * mid) >= goal) hi = mid; else lo = mid + 1;
    }
    bounds[p] = r = lo;
  }
  bounds[parts] = O;
}

}  // namespace sparseops::csr
