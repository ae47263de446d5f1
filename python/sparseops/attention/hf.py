"""transformers integration: an attention function (``AttentionInterface``) running block_sparse_attention.

    import sparseops.attention.hf as hf
    hf.register("sparseops_bsa", mask_builder=lambda q, k, causal: sliding_window_block_mask(...))
    model = AutoModelForCausalLM.from_pretrained(..., attn_implementation="sparseops_bsa")

mask_builder(query, key, causal) -> BlockMask (or a bool block tensor with block_size given to register);
None means every block (dense; causal blocks for causal layers). Limits, reported as errors rather than
silently computed differently: no padding / custom attention masks (transformers passes attention_mask=None
when no mask function is registered under the same name, which is the intended use), no dropout, and no
chunked prefill (1 < q_len < kv_len with causal: the kernel's causal mask is top-left aligned). Prefill
(q_len == kv_len) and one-token decode (all cached keys visible) are supported.
"""
from __future__ import annotations

from typing import Callable

import torch

from . import block_sparse_attention
from .block_mask import BlockMask
from .masks import causal_block_mask

__all__ = ["make_attention_function", "register"]


def make_attention_function(mask_builder: Callable | None = None, *, block_size=(64, 64)):
    def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None,
                  **kwargs):
        if attention_mask is not None:
            raise ValueError("sparseops block-sparse attention: attention_mask is not supported (register no mask "
                             "function under this attn_implementation name; padding is not handled)")
        if dropout:
            raise ValueError("sparseops block-sparse attention: dropout is not supported")
        q_len, kv_len = query.shape[2], key.shape[2]
        causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True)) and q_len > 1
        if causal and q_len != kv_len:
            raise NotImplementedError(f"sparseops block-sparse attention: causal q_len={q_len} < kv_len={kv_len} "
                                      "(chunked prefill) is not supported: the kernel's causal mask is top-left aligned")
        if mask_builder is not None:
            bm = mask_builder(query, key, causal)
        elif causal:
            bm = causal_block_mask(q_len, kv_len, block_size, device=query.device)
        else:
            bq, bk = block_size
            n = ((q_len + bq - 1) // bq, (kv_len + bk - 1) // bk)
            bm = BlockMask.from_dense(torch.ones(1, 1, *n, dtype=torch.bool, device=query.device), block_size,
                                      seq_lengths=(q_len, kv_len))
        out = block_sparse_attention(query, key, value, bm, is_causal=causal, scale=scaling,
                                     block_size=block_size if isinstance(bm, torch.Tensor) else None)
        return out.transpose(1, 2).contiguous(), None

    return attention


def register(name: str = "sparseops_block_sparse", mask_builder: Callable | None = None, *, block_size=(64, 64)):
    """Registers the attention function with transformers under `name` (use attn_implementation=name)."""
    from transformers import AttentionInterface

    fn = make_attention_function(mask_builder, block_size=block_size)
    AttentionInterface.register(name, fn)
    return fn
