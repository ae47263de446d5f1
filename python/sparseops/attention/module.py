"""SparseAttention: an SDPA-like module that builds a block mask with a pattern and runs block_sparse_attention,
or dense SDPA when the mask is dense enough that the sparse kernel would not win.

    attn = SparseAttention("a_shape", sink=64, window=1024, block_size=64)
    out = attn(q, k, v, is_causal=True)        # q [B, Hq, L, D], k, v [B, Hkv, L, D] (GQA: Hq % Hkv == 0)

Dense fallback: density = listed blocks / the blocks a dense call visits (the causal blocks with is_causal,
all blocks without). Above DENSE_THRESHOLD, SDPA runs instead (exactly SDPA's result: the dense answer, which
the sparse pattern only approximates). Measured on the 2-core AVX2 Xeon (torch 2.13, block 64, D 128,
L 1k-4k, fp32 and bf16, causal and not, GQA 1 and 4; a shared, noisy machine): at density 1.0 the kernel
ran at 0.8-2.0x SDPA, at 0.8 at 1.0-2.1x (one 0.65x outlier that did not reproduce), at 0.6 at 1.3-2.9x.
So the kernel wins below ~0.9 and it is a toss-up above; 0.8 leaves a margin for machines where SDPA is
relatively faster. `python -m sparseops.bench attn` measures the same on any machine.
"""
from __future__ import annotations

import inspect
import math
from typing import Callable

import torch
import torch.nn.functional as F

from . import _as_block_mask, block_sparse_attention, masks
from .block_mask import BlockMask

__all__ = ["SparseAttention", "DENSE_THRESHOLD", "PATTERNS"]

DENSE_THRESHOLD = 0.8

# name -> (builder, arguments it needs from the user)
PATTERNS: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "a_shape": (masks.a_shape, ("sink", "window")),
    "vertical_slash": (masks.vertical_slash, ("n_vertical", "n_slash")),
    "topk": (masks.topk_blocks, ("keep",)),
}
DEFAULT_BLOCK_SIZE = 64  # named patterns only; 64 beats 128 for masks with a fine structure at equal speed


def mask_density(bm: BlockMask, is_causal: bool) -> float:
    """Listed blocks / the blocks a dense (causal if is_causal) call visits, over every batch and head.
    One host sync (returns a float)."""
    Lq, Lk = bm.seq_lengths
    bq, bk = bm.block_size
    nkb = math.ceil(Lk / bk)
    if is_causal:  # blocks with at least one key <= query, per query block
        q_last = torch.clamp(torch.arange(math.ceil(Lq / bq)) * bq + bq - 1, max=Lq - 1)
        ref = int(torch.clamp(q_last // bk + 1, max=nkb).sum())
    else:
        ref = math.ceil(Lq / bq) * nkb
    nums = [t for t in (bm.kv_num_blocks, bm.full_kv_num_blocks) if t is not None]
    shape = torch.broadcast_shapes(*(t.shape for t in nums))
    used = sum(t.to(torch.int64).broadcast_to(shape).sum() for t in nums)
    return float(used) / max(1, ref * shape[0] * shape[1])


class SparseAttention(torch.nn.Module):
    """Block-sparse attention with a mask pattern, called like SDPA.

    pattern: "a_shape" (masks.a_shape: sink=, window=), "vertical_slash" (masks.vertical_slash:
    n_vertical=, n_slash=, last_q=), "topk" (masks.topk_blocks: keep=), or a callable
    ``pattern(q, k, *, is_causal, **pattern_args)`` returning a sparseops BlockMask, a FlexAttention BlockMask,
    or None (no pattern: dense SDPA). Named patterns take block_size= (default 64).
    dense_threshold: run SDPA when the mask's density (see mask_density) exceeds it; 1.0 never falls back
    except for a full mask, >1 never.
    After a call, ``last_path`` is "sparse" or "dense" and ``last_density`` the density (None without a mask).
    """

    def __init__(self, pattern="a_shape", *, dense_threshold: float = DENSE_THRESHOLD, **pattern_args):
        super().__init__()
        if isinstance(pattern, str):
            if pattern not in PATTERNS:
                raise ValueError(f"SparseAttention: unknown pattern {pattern!r}; expected one of "
                                 f"{', '.join(map(repr, PATTERNS))} or a callable")
            fn, needed = PATTERNS[pattern]
            missing = [a for a in needed if a not in pattern_args]
            if missing:
                raise TypeError(f"SparseAttention: pattern {pattern!r} needs {', '.join(n + '=' for n in missing)}")
            pattern_args.setdefault("block_size", DEFAULT_BLOCK_SIZE)
            params = inspect.signature(fn).parameters
            taken = set(params) - {"q", "k", "Lq", "Lk", "device", "is_causal"}
            unknown = sorted(set(pattern_args) - taken)
            if unknown:
                raise TypeError(f"SparseAttention: pattern {pattern!r} takes no argument {', '.join(unknown)} "
                                f"(it takes {', '.join(sorted(taken))})")
        elif not callable(pattern):
            raise TypeError(f"SparseAttention: pattern must be a name or a callable, got {type(pattern).__name__}")
        if not isinstance(dense_threshold, (int, float)) or isinstance(dense_threshold, bool) or dense_threshold < 0:
            raise ValueError(f"SparseAttention: dense_threshold must be a number >= 0, got {dense_threshold!r}")
        self.pattern = pattern
        self.pattern_args = dict(pattern_args)
        self.dense_threshold = float(dense_threshold)
        self.last_path: str | None = None
        self.last_density: float | None = None
        self._cache: tuple | None = None  # a_shape depends only on the lengths: reuse across layers / calls

    def extra_repr(self) -> str:
        name = self.pattern if isinstance(self.pattern, str) else getattr(self.pattern, "__name__", "callable")
        args = ", ".join(f"{k}={v!r}" for k, v in self.pattern_args.items())
        return f"pattern={name!r}, {args}, dense_threshold={self.dense_threshold}"

    def applies(self, is_causal: bool) -> bool:
        """Whether the pattern describes this kind of call (a_shape is causal-only)."""
        return not (self.pattern == "a_shape" and not is_causal)

    def build_mask(self, q: torch.Tensor, k: torch.Tensor, is_causal: bool):
        """(BlockMask or None, density or None) for this call."""
        Lq, Lk = q.shape[-2], k.shape[-2]
        if self.pattern == "a_shape":
            if not is_causal:
                raise ValueError("SparseAttention: pattern 'a_shape' (sinks + causal sliding window) needs "
                                 "is_causal=True")
            key = (Lq, Lk, q.device)
            if self._cache is None or self._cache[0] != key:
                bm = masks.a_shape(Lq, Lk, device=q.device, **self.pattern_args)
                self._cache = (key, bm, mask_density(bm, True))
            return self._cache[1], self._cache[2]
        if isinstance(self.pattern, str):
            bm = PATTERNS[self.pattern][0](q, k, is_causal=is_causal, **self.pattern_args)
        else:
            bm = self.pattern(q, k, is_causal=is_causal, **self.pattern_args)
            if bm is None:
                return None, None
            bm = _as_block_mask(bm, self.pattern_args.get("block_size"), Lq, Lk)
            if bm.seq_lengths != (Lq, Lk):
                raise ValueError(f"SparseAttention: the pattern's mask is for lengths {bm.seq_lengths}, "
                                 f"the call has (Lq, Lk) = {(Lq, Lk)}")
        return bm, mask_density(bm, is_causal)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, is_causal: bool = False,
                scale: float | None = None) -> torch.Tensor:
        for name, t in (("q", q), ("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor) or t.dim() != 4:
                raise ValueError(f"SparseAttention: {name} must be a 4-D tensor [B, H, L, D], got "
                                 f"{type(t).__name__} {tuple(getattr(t, 'shape', ()))}")
        if q.shape[1] % k.shape[1]:
            raise ValueError(f"SparseAttention: query heads ({q.shape[1]}) must be a multiple of key/value heads "
                             f"({k.shape[1]})")
        bm, density = self.build_mask(q, k, is_causal)
        self.last_density = density
        if bm is None or density > self.dense_threshold:
            self.last_path = "dense"
            g = q.shape[1] // k.shape[1]
            if g > 1:  # on CPU, SDPA's enable_gqa path measured ~1.5x slower than repeating K/V first
                k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
            return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=scale)
        self.last_path = "sparse"
        return block_sparse_attention(q, k, v, bm, is_causal=is_causal, scale=scale)
