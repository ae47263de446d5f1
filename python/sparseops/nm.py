"""N:M sparse weights: pruning, the "nm-bitmask" v1 format (csrc/kernels/nm/nm.h) and the linear op.

Layout, in short: a dense weight W [O, K] with K % m == 0 is stored as
  values [O, K/m*n]   the kept entries of each row in ascending column order, exactly n per group of m
                      (a group with fewer than n nonzeros also keeps its lowest-index zeros, as they are,
                      so -0.0 survives and the round trip is bit-exact);
  mask   [O, ceil(K/8)] uint8, bit k%8 of byte k//8 set iff column k is kept
                      (numpy.packbits(..., bitorder="little")); bits past K are zero.
This is also the compressed-tensors "sparse-24-bitmask" layout, generalised to any supported N:M.
"""
from __future__ import annotations

import functools
from typing import Sequence

import torch
import torch.nn.functional as F

from . import _memory

__all__ = ["NMWeight", "prune", "wanda_score", "compress", "linear", "validate", "check_pattern",
           "FORMAT_NAME", "FORMAT_VERSION"]

FORMAT_NAME = "nm-bitmask"
FORMAT_VERSION = 1
SUPPORTED_M = (2, 4, 8, 16)
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_pattern(n: int, m: int) -> None:
    """Raise ValueError unless n:m is a pattern the kernels support (m in {2,4,8,16}, 1 <= n < m)."""
    if isinstance(n, bool) or isinstance(m, bool) or not isinstance(n, int) or not isinstance(m, int):
        raise TypeError(f"sparseops.nm: n and m must be ints, got n={n!r}, m={m!r}")
    if m not in SUPPORTED_M or not 1 <= n < m:
        raise ValueError(f"sparseops.nm: unsupported pattern {n}:{m} (need m in {{2, 4, 8, 16}} and 1 <= n < m)")


def _check_groups(shape: Sequence[int], m: int, what: str) -> None:
    if len(shape) == 0 or shape[-1] % m != 0 or shape[-1] == 0:
        raise ValueError(f"sparseops.nm.{what}: the last dimension of shape {tuple(shape)} "
                         f"(in_features) must be a positive multiple of m={m}")


# Rows per chunk so the temporaries of prune/compress stay a small multiple of the layer itself.
def _row_chunks(rows: int, cols: int, budget: int = 1 << 22):
    step = max(1, budget // max(1, cols))
    for r in range(0, rows, step):
        yield r, min(rows, r + step)


def prune(w: torch.Tensor, n: int, m: int, *, score: torch.Tensor | None = None) -> torch.Tensor:
    """Keep, in every group of m consecutive elements along the last dim, the n entries with the largest
    |w| (or the largest `score`, e.g. wanda_score). Ties go to the lower index. Pruned entries become +0.0;
    kept ones keep their exact bits. Returns a tensor of w's shape and dtype, without autograd history."""
    check_pattern(n, m)
    _check_groups(w.shape, m, "prune")
    if score is not None:
        if score.shape != w.shape:
            raise ValueError(f"sparseops.nm.prune: score has shape {tuple(score.shape)}, "
                             f"expected w's shape {tuple(w.shape)}")
        if score.device != w.device:
            raise ValueError(f"sparseops.nm.prune: score is on {score.device} but w on {w.device}")
    K = w.shape[-1]
    w2 = w.detach().reshape(-1, K)  # pruning is a selection: the result carries no autograd history
    s2 = (w2.abs() if score is None else score.detach().reshape(-1, K))
    out = torch.empty_like(w2)
    for a, b in _row_chunks(w2.shape[0], K):
        s = s2[a:b].reshape(b - a, K // m, m)
        # A stable descending sort keeps equal scores in index order, so the lower index wins ties.
        order = torch.sort(s, dim=-1, descending=True, stable=True).indices[..., :n]
        keep = torch.zeros(s.shape, dtype=torch.bool, device=w.device).scatter_(-1, order, True)
        out[a:b] = torch.where(keep.reshape(b - a, K), w2[a:b], torch.zeros((), dtype=w.dtype, device=w.device))
    return out.reshape(w.shape)


def wanda_score(w: torch.Tensor, activation_norms: torch.Tensor) -> torch.Tensor:
    """Wanda importance |W[o, j]| * ||X_j||_2, with ||X_j||_2 the L2 norm (square root included) of input
    channel j over the calibration tokens. Computed and returned in float32 (float64 if w is float64)."""
    K = w.shape[-1]
    if activation_norms.shape != (K,):
        raise ValueError(f"sparseops.nm.wanda_score: activation_norms has shape {tuple(activation_norms.shape)}, "
                         f"expected ({K},) for a weight of shape {tuple(w.shape)}")
    dt = torch.float64 if w.dtype == torch.float64 else torch.float32
    return w.abs().to(dt) * activation_norms.to(device=w.device, dtype=dt)


# ---- bit packing (numpy.packbits(bitorder="little") in torch, any device) ----

def _bit_weights(device) -> torch.Tensor:
    return torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=device)


def _pack_bits(keep: torch.Tensor) -> torch.Tensor:
    """bool [R, K] -> uint8 [R, ceil(K/8)], little bit order."""
    R, K = keep.shape
    pad = (-K) % 8
    if pad:
        keep = torch.cat([keep, keep.new_zeros(R, pad)], dim=1)
    bits = keep.reshape(R, -1, 8).to(torch.uint8) * _bit_weights(keep.device)
    return bits.sum(-1, dtype=torch.uint8)  # distinct powers of two: the sum is the byte, no overflow


def _unpack_bits(mask: torch.Tensor) -> torch.Tensor:
    """uint8 [R, B] -> bool [R, 8*B], little bit order."""
    return (mask.unsqueeze(-1) & _bit_weights(mask.device)).ne(0).reshape(mask.shape[0], -1)


def compress(w: torch.Tensor, n: int, m: int) -> "NMWeight":
    """Compress an already N:M-sparse 2-D weight [out, in]. -0.0 counts as zero (and is stored as it is when
    used as padding); a group with more than n nonzeros raises ValueError naming its row and group: values
    are never dropped. Vectorised torch code: runs on w's device."""
    check_pattern(n, m)
    if w.dim() != 2:
        raise ValueError(f"sparseops.nm.compress: expected a 2-D weight [out_features, in_features], "
                         f"got shape {tuple(w.shape)}")
    _check_groups(w.shape, m, "compress")
    if w.dtype not in _DTYPES:
        raise TypeError(f"sparseops.nm.compress: dtype {w.dtype} is not supported (float32, bfloat16, float16)")
    w = w.detach()
    O, K = w.shape
    G = K // m
    values = _memory.empty((O, G * n), w.dtype, w.device)
    mask = _memory.empty((O, (K + 7) // 8), torch.uint8, w.device)
    for a, b in _row_chunks(O, K):
        g = w[a:b].reshape(b - a, G, m)
        nz = g != 0  # -0.0 == 0 is True: counts as zero; NaN != 0: counts as kept
        cnt = nz.sum(-1, dtype=torch.int8)
        over = cnt > n
        if bool(over.any()):
            flat = int(torch.nonzero(over.reshape(-1))[0])
            row, grp = a + flat // G, flat % G
            raise ValueError(
                f"sparseops.nm.compress: row {row}, group {grp} (columns {grp * m}..{grp * m + m - 1}) has "
                f"{int(cnt.reshape(-1)[flat])} nonzeros, more than n={n} for {n}:{m}; prune the weight first "
                f"(sparseops.nm.prune)")
        zero = ~nz
        # Fill short groups with their lowest-index zeros so every group keeps exactly n entries.
        zrank = torch.cumsum(zero, dim=-1, dtype=torch.int8)
        keep = nz | (zero & (zrank <= (n - cnt).unsqueeze(-1)))
        values[a:b] = g[keep].reshape(b - a, G * n)  # boolean indexing is row-major: ascending columns
        mask[a:b] = _pack_bits(keep.reshape(b - a, K))
    return NMWeight(values, mask, n, m, K, _trusted=True)


# ---- validation ----

def _has_kernel(op: str, device: torch.device) -> bool:
    return _has_kernel_key(op, device.type)


@functools.lru_cache(maxsize=None)
def _has_kernel_key(op: str, device_type: str) -> bool:
    key = {"cpu": "CPU", "cuda": "CUDA", "meta": "Meta"}.get(device_type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(f"sparseops::{op}", key)


def _check_shapes(values: torch.Tensor, mask: torch.Tensor, n: int, m: int, in_features: int) -> None:
    check_pattern(n, m)
    if not isinstance(values, torch.Tensor) or not isinstance(mask, torch.Tensor):
        raise TypeError("sparseops.nm: values and mask must be tensors")
    if not isinstance(in_features, int) or in_features <= 0 or in_features % m:
        raise ValueError(f"sparseops.nm: in_features={in_features} is not a positive multiple of m={m}")
    K = in_features
    if values.dtype not in _DTYPES:
        raise TypeError(f"sparseops.nm: values dtype {values.dtype} is not supported (float32, bfloat16, float16)")
    if values.dim() != 2 or values.shape[1] != K // m * n:
        raise ValueError(f"sparseops.nm: values has shape {tuple(values.shape)} but {n}:{m} with in_features={K} "
                         f"needs [out_features, {K // m * n}]")
    if mask.dtype != torch.uint8:
        raise TypeError(f"sparseops.nm: mask must be uint8, got {mask.dtype}")
    O = values.shape[0]
    if tuple(mask.shape) != (O, (K + 7) // 8):
        raise ValueError(f"sparseops.nm: mask has shape {tuple(mask.shape)}, expected [{O}, {(K + 7) // 8}] "
                         f"for in_features={K}")
    if mask.device != values.device:
        raise ValueError(f"sparseops.nm: values on {values.device} but mask on {mask.device}")


def _validate_torch(mask: torch.Tensor, n: int, m: int, K: int) -> None:
    """The mask check of nm_validate in torch, for devices without a native validator."""
    bits = _unpack_bits(mask)
    O = mask.shape[0]
    past = bits[:, K:].any(dim=1)
    counts = bits[:, :K].reshape(O, K // m, m).sum(-1)
    bad_group = (counts != n)
    if not bool(past.any() | bad_group.any()):
        return
    rows_bad = bad_group.any(1) | past
    row = int(torch.nonzero(rows_bad)[0])
    if bool(bad_group[row].any()):
        g = int(torch.nonzero(bad_group[row])[0])
        raise ValueError(f"sparseops.nm: malformed mask: row {row}, group {g} (columns {g * m}..{g * m + m - 1}) "
                         f"does not keep exactly {n} of {m} entries")
    raise ValueError(f"sparseops.nm: malformed mask: row {row} has bits set past in_features={K}")


def validate(values: torch.Tensor, mask: torch.Tensor, n: int, m: int, in_features: int) -> None:
    """Check an untrusted compressed weight: shapes, dtypes, devices, and that every group of the mask keeps
    exactly n of m entries with no bits past in_features. Raises ValueError/TypeError naming the problem
    (the row and group for a bad mask). Meta tensors get the shape checks only."""
    _check_shapes(values, mask, n, m, in_features)
    if values.device.type == "meta":
        return
    if _has_kernel("nm_validate", values.device):
        try:
            torch.ops.sparseops.nm_validate(values, mask, n, m, in_features)
        except RuntimeError as e:
            raise ValueError(str(e).split("\n")[0]) from None
    else:
        _validate_torch(mask, n, m, in_features)


# ---- the weight object ----

class NMWeight:
    """A validated N:M sparse weight in the "nm-bitmask" v1 format. Build it with compress(), or from
    tensors with NMWeight(values, mask, n, m, in_features) (validated), or from_compressed_tensors()."""

    __slots__ = ("values", "mask", "n", "m", "in_features")

    def __init__(self, values: torch.Tensor, mask: torch.Tensor, n: int, m: int, in_features: int, *,
                 _trusted: bool = False):
        if not _trusted:
            validate(values, mask, n, m, in_features)
        self.values, self.mask = values, mask
        self.n, self.m, self.in_features = n, m, in_features

    # -- description --
    @property
    def out_features(self) -> int:
        return self.values.shape[0]

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.values.shape[0], self.in_features))

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def nbytes(self) -> int:
        """Bytes held by the values and the mask (the dense weight would take shape.numel() * itemsize)."""
        return self.values.nbytes + self.mask.nbytes

    @property
    def pattern(self) -> str:
        return f"{self.n}:{self.m}"

    def __repr__(self) -> str:
        return (f"NMWeight({self.n}:{self.m}, shape={tuple(self.shape)}, dtype={self.dtype}, "
                f"device={self.device}, nbytes={self.nbytes})")

    # -- conversion --
    def to_dense(self) -> torch.Tensor:
        """The dense [out, in] weight, bit-exact (kept entries as stored, +0.0 elsewhere)."""
        if _has_kernel("nm_decompress", self.device) and self.device.type != "meta":
            return torch.ops.sparseops.nm_decompress(self.values, self.mask, self.n, self.m, self.in_features)
        O, K = self.shape
        dense = torch.zeros(O, K, dtype=self.dtype, device=self.device)
        if self.device.type != "meta":
            keep = _unpack_bits(self.mask)[:, :K]
            dense[keep] = self.values.reshape(-1)
        return dense

    def to(self, *args, **kwargs) -> "NMWeight":
        """Move/cast like Tensor.to: a device moves both tensors, a dtype casts the values only."""
        values = self.values.to(*args, **kwargs)
        mask = self.mask.to(device=values.device)
        if values.dtype not in _DTYPES:
            raise TypeError(f"sparseops.nm: dtype {values.dtype} is not supported (float32, bfloat16, float16)")
        return NMWeight(values, mask, self.n, self.m, self.in_features, _trusted=True)

    # -- compressed-tensors "sparse-24-bitmask" interop --
    @classmethod
    def from_compressed_tensors(cls, compressed: torch.Tensor, bitmask: torch.Tensor, shape,
                                n: int | None = None, m: int | None = None) -> "NMWeight":
        """Wrap a compressed-tensors bitmask-sparse weight (values [R, C*n/m], bitmask uint8 [R, ceil(C/8)],
        shape (R, C), or an int tensor holding R, C such as their stored [2, 1]) after validating it. n:m is
        inferred when not given from the kept fraction: 2:4 if it fits and validates, else the smallest
        supported m whose mask validates."""
        if isinstance(shape, torch.Tensor):
            shape = shape.flatten().tolist()
        shape = tuple(int(s) for s in shape)
        if len(shape) != 2:
            raise ValueError(f"sparseops.nm.from_compressed_tensors: shape must be (rows, cols), got {shape}")
        R, C = shape
        if compressed.dim() != 2 or compressed.shape[0] != R:
            raise ValueError(f"sparseops.nm.from_compressed_tensors: compressed has shape "
                             f"{tuple(compressed.shape)}, expected [{R}, C*n/m] for shape {shape}")
        if n is not None or m is not None:
            if n is None or m is None:
                raise ValueError("sparseops.nm.from_compressed_tensors: give both n and m, or neither")
            return cls(compressed, bitmask, n, m, C)
        kept = compressed.shape[1]
        candidates = [(kept * mm // C, mm) for mm in SUPPORTED_M
                      if C % mm == 0 and (kept * mm) % C == 0 and 1 <= kept * mm // C < mm]
        candidates.sort(key=lambda p: (p != (2, 4), p[1]))  # 2:4 first: what sparse-24-bitmask means
        errors = []
        for nn_, mm in candidates:
            try:
                return cls(compressed, bitmask, nn_, mm, C)
            except (ValueError, TypeError) as e:
                errors.append(f"{nn_}:{mm}: {e}")
        raise ValueError(f"sparseops.nm.from_compressed_tensors: no supported N:M pattern fits compressed "
                         f"{tuple(compressed.shape)} with shape {shape}" + ("; " + "; ".join(errors) if errors else ""))

    def to_compressed_tensors(self) -> dict:
        """dict(compressed=values, bitmask=mask, shape=int64 [[rows], [cols]]): the tensors a sparse-24-bitmask
        checkpoint stores as `<layer>.compressed`, `.bitmask`, `.shape` (their writer stores shape as [2, 1]).
        values and mask are shared, not copied."""
        return {"compressed": self.values, "bitmask": self.mask,
                "shape": torch.tensor(list(self.shape), dtype=torch.int64).reshape(2, 1)}


def linear(x: torch.Tensor, w: NMWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x @ w.to_dense().T + bias for x of any leading shape (contiguous or not), via the N:M kernel."""
    if not isinstance(w, NMWeight):
        raise TypeError(f"sparseops.nm.linear: w must be an NMWeight, got {type(w).__name__}")
    return _linear(x, w.values, w.mask, w.n, w.m, w.in_features, bias)


def _linear(x, values, mask, n: int, m: int, in_features: int, bias):
    """linear() on trusted (already validated) tensors; what SparseLinear.forward runs."""
    if torch.compiler.is_compiling() or _has_kernel("nm_linear", values.device):
        return torch.ops.sparseops.nm_linear(x, values, mask, n, m, in_features, bias)
    # No native kernel on this device: dense math on the decompressed weight (same result).
    w = NMWeight(values, mask, n, m, in_features, _trusted=True)
    return F.linear(x, w.to_dense(), bias)
