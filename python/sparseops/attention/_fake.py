"""Fake (meta) kernel of torch.ops.sparseops.block_sparse_attention for torch.compile / export; repeats the
shape checks of csrc/ops/attn.cpp that need no data."""
from __future__ import annotations

import torch

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@torch.library.register_fake("sparseops::block_sparse_attention")
def _block_sparse_attention_fake(q, k, v, kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices,
                                 block_q, block_k, is_causal=False, scale=None):
    what = "sparseops.block_sparse_attention"
    torch._check(q.dim() == 4 and k.dim() == 4 and v.dim() == 4, lambda: f"{what}: q, k, v must be 4-D [B, H, L, D]")
    torch._check(q.dtype in _DTYPES and k.dtype == q.dtype and v.dtype == q.dtype,
                 lambda: f"{what}: q, k, v must share a dtype in float32/bfloat16/float16")
    torch._check(k.shape == v.shape, lambda: f"{what}: k and v must have the same shape")
    torch._check(k.shape[0] == q.shape[0] and k.shape[3] == q.shape[3], lambda: f"{what}: q and k/v shapes differ")
    torch._check(q.shape[1] % k.shape[1] == 0, lambda: f"{what}: query heads must be a multiple of key/value heads")
    for b in (block_q, block_k):
        torch._check(16 <= b <= 256 and b % 16 == 0, lambda: f"{what}: block sizes must be multiples of 16 in [16, 256]")
    torch._check(kv_num_blocks.dtype == torch.int32 and kv_indices.dtype == torch.int32,
                 lambda: f"{what}: kv_num_blocks and kv_indices must be int32")
    torch._check(kv_num_blocks.dim() == 3 and kv_indices.dim() == 4, lambda: f"{what}: block lists must be 3-D / 4-D")
    B, H, L, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((B, H, L), dtype=torch.float32)
