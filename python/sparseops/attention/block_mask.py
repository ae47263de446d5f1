"""BlockMask: which key blocks each query block attends to (the FlexAttention block-list layout).

Layout (csrc/kernels/attn/attn.h has the kernel's view):
  kv_num_blocks      int32 [B|1, H|1, nQB]            how many entries of each row of kv_indices are used
  kv_indices         int32 [B|1, H|1, nQB, capacity]  key block numbers (unique per row; entries past the
                                                      count are ignored)
  full_kv_num_blocks, full_kv_indices (optional)      a second list of the same form ("fully visible"
                                                      blocks in FlexAttention)
  block_size = (bq, bk)  multiples of 16 in [16, 256]; seq_lengths = (Lq, Lk)
The head dim is the query head (1 broadcasts). sparseops evaluates no mask_mod: every listed block, of
either list, is visible except for the length bound and, with is_causal, key <= query. Everything here is
built with tensor ops (no host syncs, no dense Lq x Lk tensor).
"""
from __future__ import annotations

import math

import torch

__all__ = ["BlockMask"]


def _check_block_size(block_size) -> tuple[int, int]:
    if isinstance(block_size, int):
        block_size = (block_size, block_size)
    bq, bk = (int(b) for b in block_size)
    for b in (bq, bk):
        if not (16 <= b <= 256 and b % 16 == 0):
            raise ValueError(f"sparseops.attention: block sizes must be multiples of 16 in [16, 256], got {(bq, bk)}")
    return bq, bk


def _lists_from_dense(mask: torch.Tensor):
    counts = mask.sum(-1, dtype=torch.int32)
    # Selected blocks first, in ascending order (stable sort of 1/0 keys, descending).
    idx = torch.argsort(mask.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
    return counts, idx


def _dense_from_lists(num, idx, nkb: int) -> torch.Tensor:
    cap = idx.shape[-1]
    valid = torch.arange(cap, device=idx.device) < num.unsqueeze(-1).to(torch.int64)
    out = torch.zeros((*idx.shape[:-1], nkb), dtype=torch.uint8, device=idx.device)
    safe = idx.to(torch.int64).clamp(0, max(nkb - 1, 0))
    out.scatter_reduce_(-1, safe, valid.to(torch.uint8), reduce="amax")
    return out.bool()


class BlockMask:
    """Block lists for sparseops.attention.block_sparse_attention (see the module docstring)."""

    def __init__(self, kv_num_blocks: torch.Tensor, kv_indices: torch.Tensor,
                 full_kv_num_blocks: torch.Tensor | None = None, full_kv_indices: torch.Tensor | None = None,
                 *, block_size=(128, 128), seq_lengths: tuple[int, int] | None = None):
        self.block_size = _check_block_size(block_size)
        if (full_kv_num_blocks is None) != (full_kv_indices is None):
            raise ValueError("sparseops.attention: full_kv_num_blocks and full_kv_indices must be given together")
        for name, t, nd in (("kv_num_blocks", kv_num_blocks, 3), ("kv_indices", kv_indices, 4),
                            ("full_kv_num_blocks", full_kv_num_blocks, 3), ("full_kv_indices", full_kv_indices, 4)):
            if t is None:
                continue
            if not isinstance(t, torch.Tensor) or t.dtype != torch.int32 or t.dim() != nd:
                raise ValueError(f"sparseops.attention: {name} must be an int32 tensor with {nd} dims, got "
                                 f"{getattr(t, 'dtype', type(t))} {tuple(getattr(t, 'shape', ()))}")
        self.kv_num_blocks = kv_num_blocks
        self.kv_indices = kv_indices
        self.full_kv_num_blocks = full_kv_num_blocks
        self.full_kv_indices = full_kv_indices
        nqb = kv_num_blocks.shape[-1]
        if kv_indices.shape[-2] != nqb:
            raise ValueError(f"sparseops.attention: kv_indices has {kv_indices.shape[-2]} query blocks, "
                             f"kv_num_blocks {nqb}")
        if seq_lengths is None:
            seq_lengths = (nqb * self.block_size[0], kv_indices.shape[-1] * self.block_size[1])
        self.seq_lengths = (int(seq_lengths[0]), int(seq_lengths[1]))

    # ---- construction / conversion ------------------------------------------------------------------
    @classmethod
    def from_dense(cls, mask: torch.Tensor, block_size, seq_lengths: tuple[int, int] | None = None) -> "BlockMask":
        """From a bool block mask [B|1, H|1, nQB, nKB] (True: the query block attends to the key block)."""
        bq, bk = _check_block_size(block_size)
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() != 4:
            raise ValueError("sparseops.attention: a dense block mask must be a bool tensor [B|1, H|1, nQB, nKB], "
                             f"got {getattr(mask, 'dtype', type(mask))} {tuple(getattr(mask, 'shape', ()))}")
        num, idx = _lists_from_dense(mask)
        if seq_lengths is None:
            seq_lengths = (mask.shape[2] * bq, mask.shape[3] * bk)
        return cls(num, idx, block_size=(bq, bk), seq_lengths=seq_lengths)

    @classmethod
    def from_flex(cls, flex_block_mask) -> "BlockMask":
        """From torch.nn.attention.flex_attention.BlockMask. Its mask_mod is NOT evaluated: partial blocks
        become plain visible blocks (only the length bound and is_causal apply inside them)."""
        bs = flex_block_mask.BLOCK_SIZE
        seq = getattr(flex_block_mask, "seq_lengths", None)
        full_num = flex_block_mask.full_kv_num_blocks
        full_idx = flex_block_mask.full_kv_indices
        i32 = lambda t: None if t is None else t.to(torch.int32)  # noqa: E731
        return cls(i32(flex_block_mask.kv_num_blocks), i32(flex_block_mask.kv_indices), i32(full_num),
                   i32(full_idx), block_size=(int(bs[0]), int(bs[1])),
                   seq_lengths=None if seq is None else (int(seq[0]), int(seq[1])))

    def to_flex(self, *, is_causal: bool = False):
        """The same mask as a torch FlexAttention BlockMask, for flex_attention with the semantics of
        block_sparse_attention(..., is_causal=is_causal). Its mask_mod is the block mask itself (and key <=
        query with is_causal), so FlexAttention's unfused eager path, which evaluates mask_mod on every pair
        and ignores the block lists, agrees too. Blocks the mask_mod keeps whole are listed as "full" (no
        mask_mod evaluated when compiled): every listed block without is_causal, those entirely at or below
        the diagonal with it. Needs torch.nn.attention.flex_attention."""
        from torch.nn.attention.flex_attention import BlockMask as FlexBlockMask

        Lq, Lk = self.seq_lengths
        bq, bk = self.block_size
        dense = self.to_dense()
        dev = dense.device
        full = dense
        if is_causal:
            q0 = torch.arange(dense.shape[-2], device=dev) * bq
            k1 = torch.clamp(torch.arange(dense.shape[-1], device=dev) * bk + bk - 1, max=Lk - 1)
            full = dense & (k1[None, :] <= q0[:, None])  # every key of the block <= every query
        per_b, per_h = dense.shape[0] > 1, dense.shape[1] > 1

        def mask_mod(b, h, q_idx, kv_idx):
            keep = dense[b if per_b else 0, h if per_h else 0, q_idx // bq, kv_idx // bk]
            return keep & (kv_idx <= q_idx) if is_causal else keep

        part_num, part_idx = _lists_from_dense(dense & ~full)
        full_num, full_idx = _lists_from_dense(full)
        return FlexBlockMask.from_kv_blocks(part_num, part_idx, full_num, full_idx, BLOCK_SIZE=(bq, bk),
                                            mask_mod=mask_mod, seq_lengths=(Lq, Lk))

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(B|1, H|1, Lq, Lk)."""
        return (*self.kv_num_blocks.shape[:2], *self.seq_lengths)

    def num_blocks(self) -> tuple[int, int]:
        return (math.ceil(self.seq_lengths[0] / self.block_size[0]), math.ceil(self.seq_lengths[1] / self.block_size[1]))

    def to_dense(self) -> torch.Tensor:
        """Bool block mask [B|1, H|1, nQB, nKB] (the union of both lists)."""
        nkb = self.num_blocks()[1]
        dense = _dense_from_lists(self.kv_num_blocks, self.kv_indices, nkb)
        if self.full_kv_num_blocks is not None:
            full = _dense_from_lists(self.full_kv_num_blocks, self.full_kv_indices, nkb)
            dense = dense | full
        return dense

    def sparsity(self) -> float:
        """Fraction of (query block, key block) pairs not visited, in [0, 1] (syncs: returns a float)."""
        nqb, nkb = self.num_blocks()
        nums = [t for t in (self.kv_num_blocks, self.full_kv_num_blocks) if t is not None]
        shape = torch.broadcast_shapes(*(t.shape for t in nums))
        used = sum(t.to(torch.int64).broadcast_to(shape).sum() for t in nums)
        total = math.prod(shape) * nkb
        return 1.0 - float(used) / max(total, 1)

    def to(self, device) -> "BlockMask":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return BlockMask(mv(self.kv_num_blocks), mv(self.kv_indices), mv(self.full_kv_num_blocks),
                         mv(self.full_kv_indices), block_size=self.block_size, seq_lengths=self.seq_lengths)

    def __repr__(self) -> str:
        return (f"sparseops.attention.BlockMask(shape={self.shape}, block_size={self.block_size}, "
                f"capacity={self.kv_indices.shape[-1]}, full={'yes' if self.full_kv_num_blocks is not None else 'no'})")
