"""Block-mask builders (all tensor ops: no host syncs, no dense Lq x Lk tensor).

Block granularity: a block is listed when any of its elements is wanted; inside listed blocks the kernel
applies only the causal / length predicate (pass is_causal=True to block_sparse_attention for causal
patterns), so window edges are rounded out to whole blocks.
"""
from __future__ import annotations

import math

import torch

from .block_mask import BlockMask, _check_block_size

__all__ = ["causal_block_mask", "sliding_window_block_mask", "topk_block_mask"]


def _block_ranges(L: int, b: int, device):
    start = torch.arange(0, math.ceil(L / b), device=device) * b
    return start, torch.clamp(start + b - 1, max=L - 1)


def causal_block_mask(Lq: int, Lk: int, block_size, *, device="cpu") -> BlockMask:
    """Every block holding a pair key <= query (top-left aligned, as SDPA's is_causal)."""
    bq, bk = _check_block_size(block_size)
    _, q1 = _block_ranges(Lq, bq, device)
    k0, _ = _block_ranges(Lk, bk, device)
    dense = (k0[None, :] <= q1[:, None])[None, None]
    return BlockMask.from_dense(dense, (bq, bk), seq_lengths=(Lq, Lk))


def sliding_window_block_mask(Lq: int, Lk: int, block_size, window: int, *, sink: int = 0,
                              device="cpu") -> BlockMask:
    """A-shape: keys in (query - window, query] plus the first `sink` keys, rounded out to blocks.
    Use with is_causal=True (the kernel then drops keys after the query inside the diagonal blocks)."""
    bq, bk = _check_block_size(block_size)
    if window < 1 or sink < 0:
        raise ValueError(f"sparseops.attention: need window >= 1 and sink >= 0, got window={window}, sink={sink}")
    q0, q1 = _block_ranges(Lq, bq, device)
    k0, k1 = _block_ranges(Lk, bk, device)
    near = (k0[None, :] <= q1[:, None]) & (k1[None, :] > q0[:, None] - window)
    sinks = (k0 < sink)[None, :] & (k0[None, :] <= q1[:, None])
    return BlockMask.from_dense((near | sinks)[None, None], (bq, bk), seq_lengths=(Lq, Lk))


def _pool(x: torch.Tensor, b: int) -> torch.Tensor:
    """Mean over blocks of b rows along dim -2 (the last block may be short)."""
    B, H, L, D = x.shape
    n = math.ceil(L / b)
    pad = n * b - L
    xs = torch.nn.functional.pad(x.float(), (0, 0, 0, pad)).view(B, H, n, b, D).sum(3)
    counts = torch.full((n,), float(b), device=x.device)
    counts[-1] = b - pad
    return xs / counts[:, None]


def topk_block_mask(q: torch.Tensor, k: torch.Tensor, block_size, topk: int, *, is_causal: bool = False,
                    sink_blocks: int = 1, keep_diagonal: bool = True) -> BlockMask:
    """Pooled top-k: mean-pool q and k per block, score block pairs with pooled_q . pooled_k, and keep the
    `topk` best key blocks per query block and head, plus the first `sink_blocks` key blocks and (causal) the
    diagonal block. With is_causal, key blocks entirely after the query block are never chosen.
    q [B, Hq, Lq, D], k [B, Hkv, Lk, D]; the result has one mask per batch and query head."""
    bq, bk = _check_block_size(block_size)
    B, Hq, Lq, _ = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    if Hq % Hkv:
        raise ValueError(f"sparseops.attention: query heads ({Hq}) must be a multiple of key/value heads ({Hkv})")
    pq = _pool(q, bq)
    pk = _pool(k, bk).repeat_interleave(Hq // Hkv, dim=1)
    scores = pq @ pk.transpose(-1, -2)  # [B, Hq, nQB, nKB]
    nqb, nkb = scores.shape[-2:]
    q0, q1 = _block_ranges(Lq, bq, q.device)
    k0, _ = _block_ranges(Lk, bk, q.device)
    allowed = (k0[None, :] <= q1[:, None]) if is_causal else torch.ones(nqb, nkb, dtype=torch.bool, device=q.device)
    scores = scores.masked_fill(~allowed, float("-inf"))
    kth = min(topk, nkb)
    top = scores.topk(kth, dim=-1).indices
    dense = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, top, True)
    dense &= allowed  # topk may pick -inf entries when a row allows fewer than topk blocks
    forced = (torch.arange(nkb, device=q.device) < sink_blocks)[None, :] & allowed
    if keep_diagonal:
        diag = (k0[None, :] <= q1[:, None]) & (k0[None, :] + bk > q0[:, None]) & allowed
        forced = forced | diag
    return BlockMask.from_dense(dense | forced, (bq, bk), seq_lengths=(Lq, Lk))
