"""Block-sparse attention on CPU: ``block_sparse_attention(q, k, v, block_mask)``.

Semantics: the output equals SDPA with the element mask "the (query block, key block) pair is listed in the
block mask, and (if is_causal) key index <= query index (top-left aligned, as SDPA)". Query rows that see no
key give 0 (never NaN); their log-sum-exp is -inf. K and V may have fewer heads than q (GQA: query head h
uses key/value head h // (Hq // Hkv), without copying).

Mask builders (sparseops.attention.masks): a_shape (sinks + sliding window), vertical_slash (MInference-style),
topk_blocks (pooled block scores), causal_block_mask. SparseAttention (module.py): an SDPA-like module that
builds a mask with one of them (or a callable) and falls back to SDPA when the mask is nearly dense.
transformers: sparseops.integrations.hf.register(). Benchmark: python -m sparseops.bench attn.
"""
from __future__ import annotations

import torch

from . import _fake  # noqa: F401  (fake kernel for torch.compile)
from .block_mask import BlockMask
from . import masks
from .masks import a_shape, causal_block_mask, topk_blocks, vertical_slash

__all__ = ["BlockMask", "SparseAttention", "block_sparse_attention", "masks", "a_shape", "vertical_slash",
           "topk_blocks", "causal_block_mask"]


def _as_block_mask(block_mask, block_size, Lq: int, Lk: int) -> BlockMask:
    if isinstance(block_mask, BlockMask):
        return block_mask
    if isinstance(block_mask, torch.Tensor):
        if block_size is None:
            raise ValueError("sparseops.attention: a dense bool block mask needs block_size=(bq, bk)")
        return BlockMask.from_dense(block_mask, block_size, seq_lengths=(Lq, Lk))
    try:
        from torch.nn.attention.flex_attention import BlockMask as FlexBlockMask
    except ImportError:  # pragma: no cover - old torch
        FlexBlockMask = ()
    if isinstance(block_mask, FlexBlockMask):
        return BlockMask.from_flex(block_mask)
    raise TypeError("sparseops.attention: block_mask must be a sparseops.attention.BlockMask, a FlexAttention "
                    f"BlockMask or a bool tensor [B|1, H|1, nQB, nKB], got {type(block_mask).__name__}")


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask, *,
                           is_causal: bool = False, scale: float | None = None, return_lse: bool = False,
                           block_size=None):
    """Attention of q [B, Hq, Lq, D] over k, v [B, Hkv, Lk, D] restricted to the blocks of ``block_mask``.

    block_mask: a sparseops.attention.BlockMask, a torch FlexAttention BlockMask (its kv_num_blocks /
    kv_indices / full_kv_* / BLOCK_SIZE are used; its mask_mod is NOT evaluated, so partial blocks only get
    the causal / length predicate), or a bool tensor [B|1, Hq|1, ceil(Lq/bq), ceil(Lk/bk)] with
    ``block_size=(bq, bk)``. Block sizes: multiples of 16 in [16, 256].
    Returns out [B, Hq, Lq, D] (q's dtype), and with return_lse=True also lse [B, Hq, Lq] float32.
    """
    bm = _as_block_mask(block_mask, block_size, q.shape[-2], k.shape[-2])
    bq, bk = bm.block_size
    out, lse = torch.ops.sparseops.block_sparse_attention(
        q, k, v, bm.kv_num_blocks, bm.kv_indices, bm.full_kv_num_blocks, bm.full_kv_indices, bq, bk,
        is_causal, scale)
    return (out, lse) if return_lse else out


from .module import SparseAttention  # noqa: E402  (it calls block_sparse_attention)
