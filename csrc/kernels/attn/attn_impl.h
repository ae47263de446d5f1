// The block-sparse attention algorithm, shared by every ISA file. Each *_<isa>.cpp instantiates
// run_items<Ops> with its own Ops (a small fp32 GEMM, conversions, exp2); everything here has internal
// linkage (see DEVELOPERS.md: a shared out-of-line copy could carry AVX-512 code into the scalar path).
//
// Per query block: Q is converted to fp32 once, pre-multiplied by scale * log2(e) (softmax in base 2) and
// stored transposed (QT [Dp][bq]). For each listed key block, K and V rows are converted to fp32 (Ks, Vs
// [bk][Dp]), then ST = Ks QT (scores transposed: [key][query]) is one GEMM, the online-softmax step runs
// along keys with queries across vector lanes (no horizontal reductions), and acc += P V is a second GEMM
// reading P from ST with swapped strides. That is FlashAttention-2 with the loops swapped (key block
// outer), so K/V are converted once per group of query tiles (run_group). Dp = D rounded up to 16, zero padded. Key blocks on
// the causal diagonal skip the invisible triangle in both GEMMs (gemm_rows' kdiag / ndiag).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "../common/aligned.h"
#include "../common/half.h"
#include "attn.h"

namespace sparseops::attn {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

constexpr int kMaxGroup = 2;  // query tiles per run_group (they share each K / V piece)

static inline int64_t round16(int64_t x) { return (x + 15) & ~int64_t(15); }

static inline size_t scratch_floats_impl(const Args& a) {
  const int64_t Dp = round16(a.D), bq = a.block_q, bk = a.block_k;
  // Per tile of a group (kMaxGroup): QT, acc: Dp*bq; m, l, alpha: bq. Shared: Ks, Vs: bk*Dp; ST: bk*bq.
  // + alignment slack (16 floats per aligned array).
  return static_cast<size_t>(kMaxGroup * (2 * bq * Dp + 3 * bq) + 2 * Dp * bk + bq * bk + 16 * 16);
}

// "No causal limit" for the kdiag / ndiag arguments of the GEMMs.
constexpr int64_t kNoDiag = int64_t(1) << 40;

// Row blocking shared by the ISA GEMMs (C[M, N] (+)= A B): blocks of 6 rows, then the remainder, each
// through the ISA's register-tiled `Micro::template rows<R>`. Causal triangles (the diagonal key blocks):
//   kdiag: row i only needs k < i + 1 + kdiag (A[i][k] is 0 beyond: P of keys a query does not see), so a row
//          block stops its K loop there (acc only: C rows with nothing to add are left as they are);
//   ndiag: row i only needs columns j >= i - ndiag (a key's scores for the queries before it), so a row block
//          starts at that column rounded down to 16; the columns before are left unwritten (garbage the
//          softmax masks). kNoDiag: no limit.
template <class Micro>
static inline void gemm_rows(int64_t M, int64_t N, int64_t K, const float* A, int64_t ars, int64_t aks,
                             const float* B, int64_t ldb, float* C, int64_t ldc, bool acc, int64_t kdiag,
                             int64_t ndiag) {
  auto block = [&](auto rows_tag, int64_t i) {
    constexpr int R = decltype(rows_tag)::value;
    const int64_t k = std::min<int64_t>(K, std::max<int64_t>(0, i + R + kdiag));
    const int64_t j = std::min<int64_t>(N, std::max<int64_t>(0, i - ndiag) & ~int64_t(15));
    if ((acc && k == 0) || j >= N) return;
    Micro::template rows<R>(N - j, k, A + i * ars, ars, aks, B + j, ldb, C + i * ldc + j, ldc, acc);
  };
  int64_t i = 0;
  if (kdiag == kNoDiag && ndiag == kNoDiag) {  // the common full block: plain loop
    for (; i + 6 <= M; i += 6) Micro::template rows<6>(N, K, A + i * ars, ars, aks, B, ldb, C + i * ldc, ldc, acc);
  }
  for (; i + 6 <= M; i += 6) block(std::integral_constant<int, 6>{}, i);
  switch (M - i) {
    case 5: block(std::integral_constant<int, 5>{}, i); break;
    case 4: block(std::integral_constant<int, 4>{}, i); break;
    case 3: block(std::integral_constant<int, 3>{}, i); break;
    case 2: block(std::integral_constant<int, 2>{}, i); break;
    case 1: block(std::integral_constant<int, 1>{}, i); break;
    default: break;
  }
}

// Scalar conversions (the generic Ops use them; ISA files may vectorise).
static inline void load_generic(DType dt, const void* src, int64_t n, float* dst) {
  if (dt == DType::f32) {
    std::memcpy(dst, src, n * sizeof(float));
  } else if (dt == DType::bf16) {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
  } else {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
  }
}
static inline void store_generic(DType dt, const float* src, int64_t n, void* dst) {
  if (dt == DType::f32) {
    std::memcpy(dst, src, n * sizeof(float));
  } else if (dt == DType::bf16) {
    uint16_t* d = static_cast<uint16_t*>(dst);
    for (int64_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
  } else {
    uint16_t* d = static_cast<uint16_t*>(dst);
    for (int64_t i = 0; i < n; ++i) d[i] = f32_to_f16(src[i]);
  }
}

static inline void transpose_generic(const float* S, int64_t lds, int64_t rows, int64_t cols, float mul, float* DT,
                                     int64_t ldd) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) DT[c * ldd + r] = S[r * lds + c] * mul;
}

// 2^x for x <= 0 (softmax arguments), ~2 ulp; 0 below -126 (so -inf gives exactly 0). Written so that
// compilers vectorise it.
static inline float exp2_generic(float x) {
  const float xc = std::max(x, -126.0f);
  const float n = (xc + 12582912.0f) - 12582912.0f;  // round to nearest
  const float f = xc - n;                             // [-0.5, 0.5]
  float p = 1.5353362e-4f;
  p = p * f + 1.3398874e-3f;
  p = p * f + 9.6181291e-3f;
  p = p * f + 5.5504109e-2f;
  p = p * f + 2.4022652e-1f;
  p = p * f + 6.9314718e-1f;
  p = p * f + 1.0f;
  const int32_t e = (static_cast<int32_t>(n) + 127) << 23;
  float s;
  std::memcpy(&s, &e, 4);
  return x < -126.0f ? 0.0f : p * s;
}

// Generic pieces; ISA files derive and override what they vectorise.
struct GenericOps {
  static constexpr int kTile = kMaxBlock;  // query rows / keys per tile (run_group): whole blocks
  // C[M x N] (+)= A[M x K] B[K x N]; A[i][k] at A[i * ars + k * aks]; B, C row-major; N % 16 == 0.
  // kdiag / ndiag: the causal limits gemm_rows may exploit (this reference computes everything).
  static void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t ars, int64_t aks, const float* B,
                   int64_t ldb, float* C, int64_t ldc, bool accumulate, int64_t /*kdiag*/, int64_t /*ndiag*/) {
    for (int64_t i = 0; i < M; ++i) {
      float* c = C + i * ldc;
      if (!accumulate) for (int64_t j = 0; j < N; ++j) c[j] = 0.0f;
      for (int64_t k = 0; k < K; ++k) {
        const float a = A[i * ars + k * aks];
        const float* b = B + k * ldb;
        for (int64_t j = 0; j < N; ++j) c[j] += a * b[j];
      }
    }
  }
  static void load(DType dt, const void* src, int64_t n, float* dst) { load_generic(dt, src, n, dst); }
  static void store(DType dt, const float* src, int64_t n, void* dst) { store_generic(dt, src, n, dst); }
  // DT[c][r] = mul * S[r][c] for r < rows, c < cols (S row stride lds, DT row stride ldd).
  static void transpose(const float* S, int64_t lds, int64_t rows, int64_t cols, float mul, float* DT, int64_t ldd) {
    transpose_generic(S, lds, rows, cols, mul, DT, ldd);
  }
  // One online-softmax step for n query columns (n % 16 == 0) of ST [cols][ld]: query column i sees keys
  // j < lim(i) = min(cols, diag + i + 1) (causal) or cols, and none when i >= nvalid. Overwrites ST with
  // P = 2^(s - m_new) (0 where not visible), updates m and l, writes the acc rescale factor to alpha.
  static void softmax(float* ST, int64_t ld, int64_t cols, int64_t n, int64_t diag, bool causal, int64_t nvalid,
                      float* m, float* l, float* alpha) {
    const float ninf = -std::numeric_limits<float>::infinity();
    for (int64_t i = 0; i < n; ++i) {
      const int64_t lim = i >= nvalid ? 0 : causal ? std::min<int64_t>(cols, diag + i + 1) : cols;
      float mx = ninf;
      for (int64_t j = 0; j < lim; ++j) mx = std::max(mx, ST[j * ld + i]);
      const float mnew = std::max(m[i], mx), msafe = mnew == ninf ? 0.0f : mnew;
      float sum = 0.0f;
      for (int64_t j = 0; j < cols; ++j) {
        const float p = j < lim ? exp2_generic(ST[j * ld + i] - msafe) : 0.0f;
        ST[j * ld + i] = p;
        sum += p;
      }
      alpha[i] = exp2_generic(m[i] - msafe);
      l[i] = l[i] * alpha[i] + sum;
      m[i] = mnew;
    }
  }
};

static inline const char* elem_ptr(DType dt, const void* base, int64_t off) {
  return static_cast<const char*>(base) + off * (dt == DType::f32 ? 4 : 2);
}

// One query tile: rows [q0, q0 + rows) of query block qb of query head h (at most Ops::kTile rows), and its
// running state in the scratch.
struct Tile {
  int64_t h, qb, q0, rows;
  const int32_t* idx = nullptr;  // the list being visited, and its clamped count
  int64_t cnt = 0, pos = 0;       // pos: entries visited so far (in the visiting order)
  float *QT = nullptr, *acc = nullptr, *m = nullptr, *l = nullptr, *alpha = nullptr;
};

// A group of query tiles of one batch and key/value head that share each K / V piece they list: a piece is
// read (and, for 16-bit inputs, widened) once for the whole group, so a group of two halves the K / V traffic
// (fp32 at 16k: a head's K / V outgrow the cache and every tile streams them again). The tiles walk the
// union of their lists in order: each list must be strictly ascending for that (masks built here are);
// otherwise every tile walks its own list alone. Each tile is its own online softmax, so grouping changes
// nothing but the order in which pieces arrive.
template <class Ops>
static void run_group(const Args& a, int64_t b, Tile* tl, int nt, bool rev, float* scratch_raw) {
  const int64_t D = a.D, Dp = round16(a.D), bq = std::min<int64_t>(a.block_q, Ops::kTile), bk = a.block_k;
  const int64_t tk = std::min<int64_t>(bk, Ops::kTile);
  const int64_t nKB = num_k_blocks(a);
  const float ninf = -std::numeric_limits<float>::infinity();
  float* Ks = align64(scratch_raw);
  float* Vs = align64(Ks + tk * Dp);
  float* ST = align64(Vs + tk * Dp);
  float* p = align64(ST + tk * bq);
  for (int j = 0; j < nt; ++j) {
    Tile& t = tl[j];
    t.QT = p;
    t.acc = align64(t.QT + Dp * bq);
    t.m = align64(t.acc + bq * Dp);
    t.l = align64(t.m + bq);
    t.alpha = align64(t.l + bq);
    p = align64(t.alpha + bq);
  }

  const int64_t hk = tl[0].h / (a.Hq / a.Hkv);
  const size_t es = a.dtype == DType::f32 ? 4 : 2;
  const float qmul = a.scale * kLog2e;
  for (int j = 0; j < nt; ++j) {
    Tile& t = tl[j];
    std::memset(t.QT, 0, Dp * bq * sizeof(float));
    for (int64_t i = 0; i < bq; ++i) { t.m[i] = ninf; t.l[i] = 0.0f; }
    // Q rows are transposed and scaled into QT: fp32 in place, bf16 / fp16 widened into acc first (free until
    // the first P V).
    const char* qrow0 = elem_ptr(a.dtype, a.q, b * a.q_sb + t.h * a.q_sh + t.q0 * a.q_sl);
    if (a.dtype == DType::f32) {
      Ops::transpose(reinterpret_cast<const float*>(qrow0), a.q_sl, t.rows, D, qmul, t.QT, bq);
    } else {
      for (int64_t i = 0; i < t.rows; ++i) Ops::load(a.dtype, qrow0 + i * a.q_sl * es, D, t.acc + i * Dp);
      Ops::transpose(t.acc, Dp, t.rows, D, qmul, t.QT, bq);
    }
    std::memset(t.acc, 0, bq * Dp * sizeof(float));
  }
  // Columns D..Dp of Ks / Vs stay zero (rows are rewritten only over [0, D)).
  const bool direct = a.dtype == DType::f32 && D == Dp;
  if (!direct) {
    std::memset(Ks, 0, tk * Dp * sizeof(float));
    std::memset(Vs, 0, tk * Dp * sizeof(float));
  }

  const char* kbase = elem_ptr(a.dtype, a.k, b * a.k_sb + hk * a.k_sh);
  const char* vbase = elem_ptr(a.dtype, a.v, b * a.v_sb + hk * a.v_sh);

  // Key columns [k0, k0 + cols) (K / V rows at Kp / Vp) into tile t's online softmax.
  auto piece = [&](Tile& t, int64_t k0, int64_t cols, const float* Kp, int64_t kld, const float* Vp, int64_t vld) {
    // First query row that sees a key of this piece (causal: key k0 needs query >= k0), rounded down to 16 so
    // the GEMM's N stays a multiple of 16 inside the block; rows before i0 get no keys.
    const int64_t i0 = a.causal ? std::max<int64_t>(0, k0 - t.q0) : 0;
    const int64_t i0a = i0 & ~int64_t(15), n = round16(t.rows - i0a), nvalid = t.rows - i0a;
    // diag: query column i (from i0a) sees keys j <= i + diag. Blocks on the causal diagonal skip the
    // invisible triangle in both GEMMs.
    const int64_t diag = t.q0 + i0a - k0;
    const bool tri = a.causal && diag < cols - 1;
    Ops::gemm(cols, n, Dp, Kp, kld, 1, t.QT + i0a, bq, ST + i0a, bq, false, kNoDiag, tri ? diag : kNoDiag);
    Ops::softmax(ST + i0a, bq, cols, n, diag, a.causal, nvalid, t.m + i0a, t.l + i0a, t.alpha + i0a);
    for (int64_t i = i0a; i < t.rows; ++i) {
      const float al = t.alpha[i];
      if (al == 1.0f) continue;
      float* o = t.acc + i * Dp;
      for (int64_t d = 0; d < Dp; ++d) o[d] *= al;
    }
    Ops::gemm(nvalid, Dp, cols, ST + i0a, 1, bq, Vp, vld, t.acc + i0a * Dp, Dp, true, tri ? diag : kNoDiag, kNoDiag);
  };

  // The tiles' next unvisited in-range block in the visiting order (-1: none left); bad entries are skipped
  // (defensive; validate() reports them).
  auto current = [&](Tile& t) -> int64_t {
    for (; t.pos < t.cnt; ++t.pos) {
      const int64_t kb = t.idx[rev ? t.cnt - 1 - t.pos : t.pos];
      if (kb >= 0 && kb < nKB) return kb;
    }
    return -1;
  };
  // Visits the union of the lists of tiles [j0, j1) in order (ascending, or descending when rev).
  auto walk = [&](int j0, int j1) {
    auto next_block = [&]() {
      int64_t best = -1;
      for (int j = j0; j < j1; ++j) {
        const int64_t kb = current(tl[j]);
        if (kb >= 0 && (best < 0 || (rev ? kb > best : kb < best))) best = kb;
      }
      return best;
    };
    for (int64_t kb = next_block(); kb >= 0;) {
      bool in[kMaxGroup] = {};
      for (int j = j0; j < j1; ++j)
        if (current(tl[j]) == kb) { in[j] = true; ++tl[j].pos; }
      const int64_t nkb = next_block();
      const int64_t kend = std::min<int64_t>((kb + 1) * bk, a.Lk);
      for (int64_t k0 = kb * bk; k0 < kend; k0 += tk) {
        const int64_t cols = std::min<int64_t>(tk, kend - k0);
        bool any = false;  // a tile with a query row that sees a key of this piece
        for (int j = j0; j < j1; ++j) any |= in[j] && (!a.causal || k0 - tl[j].q0 < tl[j].rows);
        if (!any) continue;
        const float *Kp = Ks, *Vp = Vs;
        int64_t kld = Dp, vld = Dp;
        if (direct) {  // fp32 with D % 16 == 0: the GEMMs read K and V in place
          Kp = reinterpret_cast<const float*>(kbase) + k0 * a.k_sl; kld = a.k_sl;
          Vp = reinterpret_cast<const float*>(vbase) + k0 * a.v_sl; vld = a.v_sl;
        } else {
          for (int64_t j = 0; j < cols; ++j) {
            Ops::load(a.dtype, kbase + (k0 + j) * a.k_sl * es, D, Ks + j * Dp);
            Ops::load(a.dtype, vbase + (k0 + j) * a.v_sl * es, D, Vs + j * Dp);
          }
        }
        for (int j = j0; j < j1; ++j)
          if (in[j] && (!a.causal || k0 - tl[j].q0 < tl[j].rows)) piece(tl[j], k0, cols, Kp, kld, Vp, vld);
      }
      kb = nkb;
    }
  };

  for (int li = 0; li < 2; ++li) {
    const int list = rev ? 1 - li : li;
    const int32_t* nump = list == 0 ? a.kv_num : a.full_num;
    if (!nump) continue;
    const int64_t cap = list == 0 ? a.cap : a.full_cap;
    bool ascending = true;
    for (int j = 0; j < nt; ++j) {
      Tile& t = tl[j];
      t.idx = list == 0 ? a.kv_idx + b * a.i_sb + t.h * a.i_sh + t.qb * a.i_sq
                        : a.full_idx + b * a.fi_sb + t.h * a.fi_sh + t.qb * a.fi_sq;
      const int64_t listed = list == 0 ? nump[b * a.n_sb + t.h * a.n_sh + t.qb] : nump[b * a.fn_sb + t.h * a.fn_sh + t.qb];
      t.cnt = std::min<int64_t>(cap, std::max<int64_t>(0, listed));
      t.pos = 0;
      for (int64_t s = 1; s < t.cnt && ascending; ++s) ascending = t.idx[s] > t.idx[s - 1];
    }
    if (ascending || nt == 1) {
      walk(0, nt);
    } else {
      for (int j = 0; j < nt; ++j) walk(j, j + 1);
    }
  }

  for (int j = 0; j < nt; ++j) {
    const Tile& t = tl[j];
    for (int64_t i = 0; i < t.rows; ++i) {
      float* o = t.acc + i * Dp;
      const float l = t.l[i];
      const float inv = l > 0.0f ? 1.0f / l : 0.0f;
      char* dst = static_cast<char*>(a.out) + (b * a.o_sb + t.h * a.o_sh + (t.q0 + i) * a.o_sl) * es;
      if (a.dtype == DType::f32) {
        float* of = reinterpret_cast<float*>(dst);
        for (int64_t d = 0; d < D; ++d) of[d] = o[d] * inv;
      } else {
        for (int64_t d = 0; d < D; ++d) o[d] *= inv;
        Ops::store(a.dtype, o, D, dst);
      }
      if (a.lse) a.lse[(b * a.Hq + t.h) * a.Lq + t.q0 + i] = l > 0.0f ? t.m[i] * kLn2 + std::log(l) : ninf;
    }
  }
}

// Query blocks items[0, n) of batch b, cut into tiles of at most Ops::kTile rows. Consecutive tiles of one
// key/value head go through run_group in pairs of at most kGroupRows rows in all (two 64-row tiles: the pair's
// GEMM operands still fit where one tile's did, as each GEMM touches one tile at a time).
template <class Ops>
static void run_items(const Args& a, int64_t b, const Item* items, int n, bool reverse, float* scratch) {
  constexpr int64_t kGroupRows = 128;
  Tile tiles[kMaxItems * kMaxBlock / kBlockMultiple];
  int nt = 0;
  for (int it = 0; it < n && it < kMaxItems; ++it) {
    const int64_t first = items[it].qb * a.block_q, last = std::min<int64_t>(first + a.block_q, a.Lq);
    for (int64_t q0 = first; q0 < last; q0 += Ops::kTile)
      tiles[nt++] = Tile{items[it].h, items[it].qb, q0, std::min<int64_t>(Ops::kTile, last - q0)};
  }
  const int64_t group = a.Hq / a.Hkv;
  for (int j = 0; j < nt;) {
    int e = j + 1;
    if (e < nt && tiles[e].h / group == tiles[j].h / group && tiles[j].rows + tiles[e].rows <= kGroupRows) ++e;
    run_group<Ops>(a, b, tiles + j, e - j, reverse, scratch);
    j = e;
  }
}

}  // namespace
}  // namespace sparseops::attn
