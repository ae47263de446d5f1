"""Block-mask builders: causal, A-shape (sinks + sliding window), vertical-slash (MInference-style) and
pooled top-k. Each returns a sparseops.attention.BlockMask.

All of them work with tensor ops on block-level tensors ([.., nQB, nKB]) or on the last `last_q` query rows:
no host syncs and no dense Lq x Lk tensor, so building a mask costs a small fraction of the attention.

Block granularity: a block is listed when any of its elements is wanted; inside listed blocks the kernel
applies only the causal / length predicate (pass is_causal=True to block_sparse_attention for causal
patterns), so window edges are rounded out to whole blocks. "Causal" is top-left aligned, as SDPA's
is_causal: query i sees keys j <= i.
"""
from __future__ import annotations

import math
import numbers

import torch

from .block_mask import BlockMask, _check_block_size

__all__ = ["a_shape", "vertical_slash", "topk_blocks", "causal_block_mask"]

_WHAT = "sparseops.attention.masks"


# ---- argument checks -----------------------------------------------------------------------------------
def _int_arg(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{_WHAT}: {name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{_WHAT}: {name} must be >= {minimum}, got {value}")
    return int(value)


def _check_qk(q, k) -> tuple[int, int, int, int, int]:
    """(B, Hq, Hkv, Lq, Lk) of q [B, Hq, Lq, D], k [B, Hkv, Lk, D]."""
    for name, t in (("q", q), ("k", k)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{_WHAT}: {name} must be a 4-D tensor [B, H, L, D], got "
                             f"{type(t).__name__} {tuple(getattr(t, 'shape', ()))}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"{_WHAT}: q {tuple(q.shape)} and k {tuple(k.shape)} differ in batch or head_dim")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"{_WHAT}: query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})")
    if q.shape[2] < 1 or k.shape[2] < 1:
        raise ValueError(f"{_WHAT}: empty sequence (Lq={q.shape[2]}, Lk={k.shape[2]})")
    return q.shape[0], q.shape[1], k.shape[1], q.shape[2], k.shape[2]


# ---- block geometry --------------------------------------------------------------------------------------
def _block_ranges(L: int, b: int, device):
    """First and last element index of each block of b along a length-L axis (the last block may be short)."""
    start = torch.arange(0, math.ceil(L / b), device=device) * b
    return start, torch.clamp(start + b - 1, max=L - 1)


def _causal_blocks(Lq: int, Lk: int, bq: int, bk: int, device) -> torch.Tensor:
    """[nQB, nKB] bool: the block holds at least one pair key <= query."""
    _, q1 = _block_ranges(Lq, bq, device)
    k0, _ = _block_ranges(Lk, bk, device)
    return k0[None, :] <= q1[:, None]


def _diagonal_blocks(Lq: int, Lk: int, bq: int, bk: int, device) -> torch.Tensor:
    """[nQB, nKB] bool: key blocks holding key == query for some query of the block (each query sees itself).
    Rows whose queries are all >= Lk get the last key block (with causal masking they see every key)."""
    q0, q1 = _block_ranges(Lq, bq, device)
    k0, k1 = _block_ranges(Lk, bk, device)
    lo = torch.clamp(q0, max=Lk - 1)
    hi = torch.clamp(q1, max=Lk - 1)
    return (k1[None, :] >= lo[:, None]) & (k0[None, :] <= hi[:, None])


# ---- builders -------------------------------------------------------------------------------------------
def causal_block_mask(Lq: int, Lk: int, block_size, *, device="cpu") -> BlockMask:
    """Every block holding a pair key <= query (use with is_causal=True: plain causal attention)."""
    bq, bk = _check_block_size(block_size)
    Lq, Lk = _int_arg("Lq", Lq, 1), _int_arg("Lk", Lk, 1)
    return BlockMask.from_dense(_causal_blocks(Lq, Lk, bq, bk, device)[None, None], (bq, bk), seq_lengths=(Lq, Lk))


def a_shape(Lq: int, Lk: int, *, sink: int, window: int, block_size, device="cpu") -> BlockMask:
    """A-shape (StreamingLLM): each query sees the first `sink` keys and the `window` keys ending at itself
    ((query - window, query]), causal, rounded out to whole blocks. Use with is_causal=True.
    window >= Lq gives the plain causal mask. One mask shared by every batch and head: [1, 1, nQB, cap]."""
    bq, bk = _check_block_size(block_size)
    Lq, Lk = _int_arg("Lq", Lq, 1), _int_arg("Lk", Lk, 1)
    sink, window = _int_arg("sink", sink, 0), _int_arg("window", window, 1)
    q0, q1 = _block_ranges(Lq, bq, device)
    k0, k1 = _block_ranges(Lk, bk, device)
    causal = k0[None, :] <= q1[:, None]
    near = k1[None, :] > q0[:, None] - window  # some key of the block is within the window of some query
    sinks = (k0 < sink)[None, :]
    return BlockMask.from_dense((causal & (near | sinks))[None, None], (bq, bk), seq_lengths=(Lq, Lk))


def _scores_last_queries(q, k, last_q: int, is_causal: bool) -> torch.Tensor:
    """Softmax attention probabilities of the last `last_q` queries over all keys, float32
    [B, Hq, last_q, Lk]. GQA without copying K: the query heads of a group share one matmul. The big
    tensor is made once and then updated in place (fresh allocations of it cost more than the math)."""
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    g = Hq // Hkv
    # The matmul runs in the inputs' dtype (no float copy of K); the scale goes on the small q slice.
    ql = (q[:, :, Lq - last_q:] * (1.0 / math.sqrt(D))).to(k.dtype).reshape(B, Hkv, g * last_q, D)
    s = (ql @ k.transpose(-1, -2)).view(B, Hq, last_q, Lk).float()
    if is_causal:  # every row keeps key 0 (its query index is >= 0), so no row is all -inf
        qi = torch.arange(Lq - last_q, Lq, device=q.device)
        s.masked_fill_(torch.arange(Lk, device=q.device)[None, :] > qi[:, None], float("-inf"))
    # Clamp before exp: exp(-80) ~ 2e-35 is still a normal float. Denormal results (masked or tiny
    # probabilities) made every later pass over this tensor ~50x slower on x86 (no flush-to-zero).
    s.sub_(s.amax(-1, keepdim=True)).clamp_(min=-80.0).exp_()
    return s.div_(s.sum(-1, keepdim=True))


def vertical_slash(q: torch.Tensor, k: torch.Tensor, *, last_q: int = 64, n_vertical: int, n_slash: int,
                   block_size, is_causal: bool = True) -> BlockMask:
    """MInference-style vertical-slash mask, one per batch and query head.

    The last `last_q` queries' attention probabilities estimate which key columns ("vertical" lines: keys
    every query attends to, such as sinks) and which diagonals ("slash" lines: key = query - offset, such as
    the local window) carry the weight. The top `n_vertical` columns and top `n_slash` diagonals are kept,
    as the blocks covering them. The first key and the main diagonal are always kept (counted in n_vertical
    and n_slash): a query always sees itself, so no row is empty. With is_causal, no block entirely after its
    query block is listed, and the mask is meant for is_causal=True.
    q [B, Hq, Lq, D], k [B, Hkv, Lk, D] -> BlockMask [B, Hq, nQB, nKB]."""
    B, Hq, Hkv, Lq, Lk = _check_qk(q, k)
    bq, bk = _check_block_size(block_size)
    last_q = min(_int_arg("last_q", last_q, 1), Lq)
    n_vertical, n_slash = _int_arg("n_vertical", n_vertical, 0), _int_arg("n_slash", n_slash, 0)
    dev = q.device
    p = _scores_last_queries(q, k, last_q, is_causal)                        # [B, Hq, last_q, Lk]

    # Vertical: total probability per key column.
    vert = p.sum(2)                                                          # [B, Hq, Lk]
    vert[..., 0] = float("inf")
    cols = vert.topk(min(max(n_vertical, 1), Lk), dim=-1).indices
    k_hit = torch.zeros(B, Hq, math.ceil(Lk / bk), dtype=torch.bool, device=dev)
    k_hit.scatter_(-1, cols // bk, True)

    # Slash: total probability per diagonal offset d = query - key, stored at d + Lk - 1 (d >= 1 - Lk).
    # Row r (query Lq - last_q + r) adds key j at u = j + last_q - 1 - r = (Lq + Lk - 2) - (d + Lk - 1).
    # Skew trick: write p behind last_q - 1 zeros per row (width W), then view the buffer with row stride
    # W + 1, which shifts row r left by r: column u of the view holds row r's key u - (last_q - 1) + r.
    # One copy and one sum (a loop of per-row adds was 40x slower on a loaded machine: each small op
    # waits for every intra-op thread).
    n_diag = Lq + Lk - 1
    W = Lk + last_q - 1
    buf = torch.empty(B, Hq, last_q * W + last_q - 1, device=dev)
    rows = buf[..., : last_q * W].view(B, Hq, last_q, W)
    rows[..., : last_q - 1].zero_()
    rows[..., last_q - 1:].copy_(p)
    buf[..., last_q * W:].zero_()
    per_u = buf.as_strided((B, Hq, last_q, W), (buf.stride(0), buf.stride(1), W + 1, 1)).sum(2)
    slash = torch.nn.functional.pad(per_u, (0, n_diag - W)).flip(-1)        # [B, Hq, n_diag], by d + Lk - 1
    slash[..., Lk - 1] = float("inf")                                        # offset 0: the main diagonal
    if is_causal:
        slash[..., : Lk - 1] = float("-inf")                                 # offsets < 0 are never visible
    vals, d_sel = slash.topk(min(max(n_slash, 1), n_diag), dim=-1)
    chosen = torch.zeros(B, Hq, n_diag + 1, dtype=torch.int32, device=dev)
    chosen.scatter_(-1, d_sel + 1, (vals > float("-inf")).to(torch.int32))  # never an excluded offset
    csum = chosen.cumsum(-1, dtype=torch.int32)                              # csum[x+1] = #chosen in [0, x]
    # Block (qb, kb) meets diagonal d iff d in [q0 - k1, q1 - k0]: count chosen offsets in that range.
    q0, q1 = _block_ranges(Lq, bq, dev)
    k0, k1 = _block_ranges(Lk, bk, dev)
    lo = (q0[:, None] - k1[None, :] + (Lk - 1)).clamp(0, n_diag)
    hi = (q1[:, None] - k0[None, :] + (Lk - 1) + 1).clamp(0, n_diag)
    nqb, nkb = lo.shape
    hits = (csum.gather(-1, hi.reshape(1, 1, -1).expand(B, Hq, -1))
            - csum.gather(-1, lo.reshape(1, 1, -1).expand(B, Hq, -1))).view(B, Hq, nqb, nkb) > 0

    dense = hits | k_hit[:, :, None, :]
    if is_causal:
        dense &= _causal_blocks(Lq, Lk, bq, bk, dev)
    return BlockMask.from_dense(dense, (bq, bk), seq_lengths=(Lq, Lk))


def _pool(x: torch.Tensor, b: int) -> torch.Tensor:
    """Mean over blocks of b rows along dim -2 (the last block may be short), float32. Sums views of x
    (no padded or float copy of it: at long lengths that copy cost more than the sums)."""
    B, H, L, D = x.shape
    hc = max(1, (1 << 22) // max(1, B * L * D))
    if x.dtype != torch.float32 and hc < H:
        # A 16-bit x is widened into a float32 temporary as large as x before the sum; in slices of ~16 MiB of
        # float32 the allocator reuses that memory instead of faulting fresh pages in for every call (see
        # bench/results/attn-cpu-epyc2c-d18f026). Same sums, same result.
        return torch.cat([_pool(x[:, h:h + hc], b) for h in range(0, H, hc)], dim=1)
    n_full = L // b
    parts = []
    if n_full:
        parts.append(x[:, :, : n_full * b].reshape(B, H, n_full, b, D).sum(3, dtype=torch.float32) / b)
    if L % b:
        parts.append(x[:, :, n_full * b:].sum(2, keepdim=True, dtype=torch.float32) / (L % b))
    return torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]


def topk_blocks(q: torch.Tensor, k: torch.Tensor, *, keep, block_size, is_causal: bool = False) -> BlockMask:
    """Pooled top-k: mean-pool q and k per block, score block pairs with pooled_q . pooled_k, and keep the
    best key blocks of each query-block row, per batch and query head.

    keep: a float in (0, 1] keeps ceil(keep * n) of the row's n eligible blocks (with is_causal only the
    blocks holding a key <= query are eligible); an int >= 1 keeps min(keep, n). With is_causal the
    diagonal blocks (the key blocks holding key == query for a query of the block, so no row is empty) are
    always kept and count towards the number; if there are more of them than the number (bq > bk and a small
    keep) they are all kept anyway. q [B, Hq, Lq, D], k [B, Hkv, Lk, D] -> BlockMask [B, Hq, nQB, nKB]."""
    B, Hq, Hkv, Lq, Lk = _check_qk(q, k)
    bq, bk = _check_block_size(block_size)
    if isinstance(keep, bool) or not isinstance(keep, (numbers.Integral, numbers.Real)):
        raise TypeError(f"{_WHAT}: keep must be a float fraction in (0, 1] or an int count >= 1, got "
                        f"{type(keep).__name__}")
    if isinstance(keep, numbers.Integral):
        keep = _int_arg("keep", keep, 1)
    elif not 0.0 < float(keep) <= 1.0:
        raise ValueError(f"{_WHAT}: a fractional keep must be in (0, 1], got {keep}")
    dev = q.device
    pq = _pool(q, bq)                                                        # [B, Hq, nQB, D]
    pk = _pool(k, bk)                                                        # [B, Hkv, nKB, D]
    g = Hq // Hkv
    nqb, nkb = pq.shape[2], pk.shape[2]
    # GQA without repeating K: one matmul per key head for its group of query heads.
    scores = (pq.view(B, Hkv, g * nqb, -1) @ pk.transpose(-1, -2)).view(B, Hq, nqb, nkb)
    if is_causal:
        allowed = _causal_blocks(Lq, Lk, bq, bk, dev)
        forced = _diagonal_blocks(Lq, Lk, bq, bk, dev)
    else:
        allowed = torch.ones(nqb, nkb, dtype=torch.bool, device=dev)
        forced = torch.zeros(nqb, nkb, dtype=torch.bool, device=dev)
    scores = scores.masked_fill(forced, float("inf")).masked_fill(~allowed, float("-inf"))
    n_allowed = allowed.sum(-1)                                              # [nQB]
    if isinstance(keep, int):
        n_keep = n_allowed.clamp(max=keep)
    else:
        # (the epsilon keeps 0.3 * 10 = 3.0000000000000004 from rounding up to 4)
        n_keep = torch.ceil(n_allowed.double() * float(keep) - 1e-9).long().clamp(1)
    n_keep = torch.maximum(n_keep, forced.sum(-1))
    # Rank of each block in its row (0 = best); keep the first n_keep. Stable: ties go to the lower block.
    order = scores.argsort(dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(nkb, device=dev).expand_as(order))
    dense = (rank < n_keep[:, None]) & allowed
    return BlockMask.from_dense(dense, (bq, bk), seq_lengths=(Lq, Lk))
