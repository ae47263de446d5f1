"""Unstructured sparse weights in CSR (format "csr" v1; the byte-level spec is in csrc/kernels/csr/csr.h).

    w = sparseops.csr.compress(sparseops.csr.prune(dense_w, 0.9))  # or compress(a torch.sparse_csr tensor)
    y = sparseops.csr.linear(x, w, bias)                            # == F.linear(x, w.to_dense(), bias)
    out = sparseops.csr.spmm(a_torch_csr, b)                        # == a.to_dense() @ b

A CSRWeight holds three tensors: ``row_ptr`` int64 [out+1], ``cols`` [nnz] (int16 holding uint16 column
numbers when in_features <= 65536, else int32: 2 bytes of index per kept value for LLM layer shapes) and
``values`` [nnz] (float32 / bfloat16 / float16). Rows keep their natural order and columns ascend within a
row. Entries that are exactly zero (either sign) are dropped by compress; everything else, NaN included, is
kept bit-exact, so to_dense() reproduces the pruned weight.
"""
from __future__ import annotations

import warnings

import torch

from . import _meta_csr  # noqa: F401  (fake kernels for torch.compile)

__all__ = ["CSRWeight", "compress", "linear", "spmm", "prune", "FORMAT_NAME", "FORMAT_VERSION"]

FORMAT_NAME = "csr"
FORMAT_VERSION = 1
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_U16_MAX_COLS = 65536


def _narrow_cols(cols: torch.Tensor, K: int) -> torch.Tensor:
    """Column numbers (any int dtype) to the stored width: uint16 bits in int16 when K <= 65536, else int32."""
    if K <= _U16_MAX_COLS:
        c = cols.to(torch.int32)
        return torch.where(c >= 32768, c - 65536, c).to(torch.int16)
    return cols.to(torch.int32)


def _wide_cols(cols: torch.Tensor) -> torch.Tensor:
    """Stored column numbers as int64 (undoing the uint16-in-int16 storage)."""
    c = cols.to(torch.int64)
    return c & 0xFFFF if cols.dtype == torch.int16 else c


class CSRWeight:
    """A CSR-compressed [out_features, in_features] weight.

    Build it with :func:`compress`; ``CSRWeight(row_ptr, cols, values, shape)`` from stored tensors
    validates them (row pointers monotone from 0 to nnz, every column in range) before any kernel can read
    them, because they may come from anywhere.
    """

    def __init__(self, row_ptr: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape, *,
                 _trusted: bool = False):
        for name, t in (("row_ptr", row_ptr), ("cols", cols), ("values", values)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"sparseops.csr: {name} must be a tensor, got {type(t).__name__}")
        O, K = (int(s) for s in shape)
        if row_ptr.dim() != 1 or row_ptr.numel() != O + 1:
            raise ValueError(f"sparseops.csr: row_ptr has shape {tuple(row_ptr.shape)}, expected [{O + 1}] for "
                             f"{O} rows")
        if not _trusted:
            torch.ops.sparseops.csr_validate(row_ptr, cols, values, K)
        self.row_ptr, self.cols, self.values = row_ptr, cols, values
        self.shape = torch.Size((O, K))

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def nnz(self) -> int:
        return self.values.numel()

    @property
    def sparsity(self) -> float:
        n = self.shape[0] * self.shape[1]
        return 1.0 - self.nnz / n if n else 0.0

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.row_ptr, self.cols, self.values))

    def to_dense(self) -> torch.Tensor:
        O, K = self.shape
        rows = torch.repeat_interleave(torch.arange(O, device=self.device), self.row_ptr.diff())
        dense = torch.zeros(O, K, dtype=self.dtype, device=self.device)
        # accumulate: duplicate columns (never written by compress) add up, as in torch's CSR
        return dense.index_put_((rows, _wide_cols(self.cols)), self.values, accumulate=True)

    def to_torch_csr(self) -> torch.Tensor:
        idx = torch.int32 if self.shape[1] < 2 ** 31 and self.nnz < 2 ** 31 else torch.int64
        with warnings.catch_warnings():  # torch's "CSR support is in beta" notice, once per process otherwise
            warnings.simplefilter("ignore")
            return torch.sparse_csr_tensor(self.row_ptr.to(idx), _wide_cols(self.cols).to(idx), self.values,
                                           size=self.shape, check_invariants=False)

    def to(self, device=None, dtype=None) -> "CSRWeight":
        v = self.values.to(device=device, dtype=dtype)
        return CSRWeight(self.row_ptr.to(device), self.cols.to(device), v, self.shape, _trusted=True)

    def __repr__(self) -> str:
        return (f"CSRWeight(shape={tuple(self.shape)}, nnz={self.nnz}, sparsity={self.sparsity:.3f}, "
                f"dtype={self.dtype}, cols={self.cols.dtype})")


def _check_dense(w: torch.Tensor, who: str) -> None:
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"sparseops.csr.{who}: expected a tensor, got {type(w).__name__}")
    if w.dim() != 2:
        raise ValueError(f"sparseops.csr.{who}: expected a 2-D weight [out_features, in_features], got shape "
                         f"{tuple(w.shape)}")
    if w.dtype not in _DTYPES:
        raise TypeError(f"sparseops.csr.{who}: dtype {w.dtype} is not supported (float32, bfloat16, float16)")


def compress(w: torch.Tensor) -> CSRWeight:
    """CSRWeight from a dense 2-D tensor (its zeros are dropped) or a torch.sparse_csr tensor (validated,
    then stored with sorted-by-row entries as given)."""
    if isinstance(w, torch.Tensor) and w.layout == torch.sparse_csr:
        if w.dim() != 2:
            raise ValueError(f"sparseops.csr.compress: expected a 2-D CSR tensor, got shape {tuple(w.shape)}")
        O, K = w.shape
        crow, col, vals = w.crow_indices(), w.col_indices(), w.values()
        if vals.dtype not in _DTYPES:
            raise TypeError(f"sparseops.csr.compress: dtype {vals.dtype} is not supported (float32, bfloat16, "
                            f"float16)")
        row_ptr = crow.to(torch.int64).contiguous()
        torch.ops.sparseops.csr_validate(row_ptr, col.to(torch.int32) if K < 2 ** 31 else col, vals, K)
        return CSRWeight(row_ptr, _narrow_cols(col, K).contiguous(), vals.contiguous(), (O, K), _trusted=True)
    _check_dense(w, "compress")
    w = w.detach()
    O, K = w.shape
    keep = w != 0
    row_ptr = torch.zeros(O + 1, dtype=torch.int64, device=w.device)
    torch.cumsum(keep.sum(1), 0, out=row_ptr[1:])
    cols = keep.nonzero()[:, 1]  # row-major order: rows in order, columns ascending
    return CSRWeight(row_ptr, _narrow_cols(cols, K).contiguous(), w[keep].contiguous(), (O, K), _trusted=True)


def prune(w: torch.Tensor, sparsity: float, *, score: torch.Tensor | None = None) -> torch.Tensor:
    """Zero the `sparsity` fraction of each row with the smallest |w| (or smallest `score`, e.g.
    sparseops.nm.wanda_score); per-row, as Wanda compares within an output row, which also keeps rows equally
    long for the kernels. Keeps round((1 - sparsity) * in_features) entries per row; ties go to the lower
    column. Returns w's shape and dtype, without autograd history."""
    if not isinstance(sparsity, float) or not 0.0 < sparsity < 1.0:
        raise ValueError(f"sparseops.csr.prune: sparsity must be a float in (0, 1), got {sparsity!r}")
    if w.dim() != 2:
        raise ValueError(f"sparseops.csr.prune: expected a 2-D weight, got shape {tuple(w.shape)}")
    if score is not None and score.shape != w.shape:
        raise ValueError(f"sparseops.csr.prune: score has shape {tuple(score.shape)}, expected {tuple(w.shape)}")
    w = w.detach()
    K = w.shape[1]
    keep_n = int(round((1.0 - sparsity) * K))
    s = w.abs() if score is None else score.detach()
    order = torch.sort(s, dim=1, descending=True, stable=True).indices[:, :keep_n]
    keep = torch.zeros(w.shape, dtype=torch.bool, device=w.device).scatter_(1, order, True)
    return torch.where(keep, w, torch.zeros((), dtype=w.dtype, device=w.device))


def linear(x: torch.Tensor, w: CSRWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, w.to_dense(), bias) with the CSR kernel: x [..., in_features], same dtype as w."""
    if not isinstance(w, CSRWeight):
        raise TypeError(f"sparseops.csr.linear: w must be a CSRWeight (sparseops.csr.compress), got "
                        f"{type(w).__name__}")
    return torch.ops.sparseops.csr_linear(x, w.row_ptr, w.cols, w.values, w.shape[1], bias)


def spmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a.to_dense() @ b for a torch.sparse_csr tensor `a` [O, K] (float32/bfloat16/float16 values, int32 or
    int64 indices) and a dense 2-D `b` [K, N] of the same dtype. The indices are validated first."""
    if not isinstance(a, torch.Tensor) or a.layout != torch.sparse_csr:
        raise TypeError(f"sparseops.csr.spmm: a must be a torch.sparse_csr tensor, got "
                        f"{a.layout if isinstance(a, torch.Tensor) else type(a).__name__}")
    if a.dim() != 2:
        raise ValueError(f"sparseops.csr.spmm: a must be 2-D, got shape {tuple(a.shape)}")
    if not isinstance(b, torch.Tensor) or b.dim() != 2:
        raise ValueError(f"sparseops.csr.spmm: b must be a 2-D tensor, got "
                         f"{tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__}")
    return torch.ops.sparseops.csr_spmm(a.crow_indices(), a.col_indices(), a.values(), a.shape[1], b)
