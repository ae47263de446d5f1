"""Unstructured sparse weights in CSR (format "csr" v2; the byte-level spec is in csrc/kernels/csr/csr.h).

    w = sparseops.csr.compress(sparseops.csr.prune(dense_w, 0.9))  # or compress(a torch.sparse_csr tensor)
    y = sparseops.csr.linear(x, w, bias)                            # == F.linear(x, w.to_dense(), bias)
    out = sparseops.csr.spmm(a_torch_csr, b)                        # == a.to_dense() @ b

A CSRWeight holds three tensors: ``row_ptr`` int64 [segments * out + 1], ``cols`` [nnz] (int16 holding
uint16 column numbers when in_features <= 65536, else int32: 2 bytes of index per kept value for LLM layer
shapes) and ``values`` [nnz] (float32 / bfloat16 / float16). The columns are cut into ``segments`` chunks and
the entries stored chunk-major: every row's entries in chunk 0 (rows in order, columns ascending), then chunk
1, ...; ``row_ptr[s * out + o]`` starts row o's entries in chunk s. With segments=1 this is plain CSR (format
version 1, which still loads). Chunks let the M > 1 kernel keep one chunk's slice of the input in cache while
it walks every row; compress picks the chunk width from the density. Entries that are exactly zero (either
sign) are dropped by compress; everything else, NaN included, is kept bit-exact, so to_dense() reproduces the
pruned weight.
"""
from __future__ import annotations

import warnings

import torch

from . import _meta_csr  # noqa: F401  (fake kernels for torch.compile)

__all__ = ["CSRWeight", "compress", "linear", "spmm", "prune", "default_segments", "FORMAT_NAME", "FORMAT_VERSION"]

FORMAT_NAME = "csr"
FORMAT_VERSION = 2
READS_VERSIONS = (1, 2)  # version 1 is the segments=1 case
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
    them, because they may come from anywhere. The number of segments is row_ptr's length: [segments * out + 1].
    """

    def __init__(self, row_ptr: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape, *,
                 _trusted: bool = False):
        for name, t in (("row_ptr", row_ptr), ("cols", cols), ("values", values)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"sparseops.csr: {name} must be a tensor, got {type(t).__name__}")
        O, K = (int(s) for s in shape)
        n = row_ptr.numel() - 1 if row_ptr.dim() == 1 else -1
        if n < 0 or (O == 0 and n != 0) or (O > 0 and (n == 0 or n % O)):
            raise ValueError(f"sparseops.csr: row_ptr has shape {tuple(row_ptr.shape)}, expected [segments * {O} + 1] "
                             f"for {O} rows")
        if not _trusted:
            torch.ops.sparseops.csr_validate(row_ptr, cols, values, K)
        self.row_ptr, self.cols, self.values = row_ptr, cols, values
        self.shape = torch.Size((O, K))
        self.segments = n // O if O else 1

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

    def _rows(self) -> torch.Tensor:
        """The row of every entry."""
        O = self.shape[0]
        seg_rows = torch.arange(O, device=self.device).repeat(self.segments)
        return torch.repeat_interleave(seg_rows, self.row_ptr.diff())

    def to_dense(self) -> torch.Tensor:
        O, K = self.shape
        dense = torch.zeros(O, K, dtype=self.dtype, device=self.device)
        # accumulate: duplicate columns (never written by compress) add up, as in torch's CSR
        return dense.index_put_((self._rows(), _wide_cols(self.cols)), self.values, accumulate=True)

    def row_major(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(crow_indices int64 [out+1], col_indices int64, values) in plain CSR order, columns ascending."""
        O, K = self.shape
        rows, cols = self._rows(), _wide_cols(self.cols)
        order = torch.argsort(rows * max(K, 1) + cols, stable=True)
        crow = torch.zeros(O + 1, dtype=torch.int64, device=self.device)
        torch.cumsum(torch.bincount(rows, minlength=O), 0, out=crow[1:])
        return crow, cols[order], self.values[order]

    def rechunk(self, segments: int | None = None) -> "CSRWeight":
        """The same weight with `segments` column chunks per row (None: compress's choice for its density)."""
        crow, cols, vals = self.row_major()
        return _from_row_major(crow, cols, vals, self.shape, segments)

    def to_torch_csr(self) -> torch.Tensor:
        idx = torch.int32 if self.shape[1] < 2 ** 31 and self.nnz < 2 ** 31 else torch.int64
        crow, cols, vals = self.row_major()
        with warnings.catch_warnings():  # torch's "CSR support is in beta" notice, once per process otherwise
            warnings.simplefilter("ignore")
            return torch.sparse_csr_tensor(crow.to(idx), cols.to(idx), vals, size=self.shape, check_invariants=False)

    def to(self, device=None, dtype=None) -> "CSRWeight":
        v = self.values.to(device=device, dtype=dtype)
        return CSRWeight(self.row_ptr.to(device), self.cols.to(device), v, self.shape, _trusted=True)

    def __repr__(self) -> str:
        return (f"CSRWeight(shape={tuple(self.shape)}, nnz={self.nnz}, sparsity={self.sparsity:.3f}, "
                f"dtype={self.dtype}, cols={self.cols.dtype}, segments={self.segments})")


def _check_dense(w: torch.Tensor, who: str) -> None:
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"sparseops.csr.{who}: expected a tensor, got {type(w).__name__}")
    if w.dim() != 2:
        raise ValueError(f"sparseops.csr.{who}: expected a 2-D weight [out_features, in_features], got shape "
                         f"{tuple(w.shape)}")
    if w.dtype not in _DTYPES:
        raise TypeError(f"sparseops.csr.{who}: dtype {w.dtype} is not supported (float32, bfloat16, float16)")


def default_segments(O: int, K: int, nnz: int) -> int:
    """Column chunks per row for compress: chunks of at least 256 columns (the tile kernel's slice of B, 256 x
    up to 32 fp32 columns, then fits L1) and of about 64 entries per row, so the GEMV's per-segment tails stay a
    small cost (bench/probes/csr_layout.cpp measured 256-column chunks at 30-50% density, 1024 at 5-10%)."""
    if O == 0 or K == 0 or nnz == 0:
        return 1
    density = nnz / (O * K)
    width = 256
    while width < K and width * density < 64:
        width *= 2
    return max(1, -(-K // width))


def _from_row_major(crow: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, shape, segments) -> CSRWeight:
    """CSRWeight from plain CSR (int64 crow [O+1], any-int cols in range, values), re-ordered chunk-major."""
    O, K = shape
    nnz = vals.numel()
    S = default_segments(O, K, nnz) if segments is None else int(segments)
    if S < 1:
        raise ValueError(f"sparseops.csr: segments must be >= 1, got {segments}")
    cols = cols.to(torch.int64)
    if S > 1:
        width = -(-K // S)
        rows = torch.repeat_interleave(torch.arange(O, device=vals.device), crow.diff())
        key = torch.div(cols, width, rounding_mode="floor") * O + rows  # segment (s, o) at s * O + o
        order = torch.argsort(key, stable=True)  # stable: columns stay ascending inside a segment
        cols, vals = cols[order], vals[order]
        crow = torch.zeros(S * O + 1, dtype=torch.int64, device=vals.device)
        torch.cumsum(torch.bincount(key, minlength=S * O), 0, out=crow[1:])
    return CSRWeight(crow.contiguous(), _narrow_cols(cols, K).contiguous(), vals.contiguous(), (O, K), _trusted=True)


def compress(w: torch.Tensor, *, segments: int | None = None) -> CSRWeight:
    """CSRWeight from a dense 2-D tensor (its zeros are dropped) or a torch.sparse_csr tensor (validated,
    then stored with its entries re-ordered chunk-major). `segments`: column chunks per row (1: plain CSR;
    None: chosen from the density, see default_segments)."""
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
        return _from_row_major(row_ptr, col, vals, (O, K), segments)
    _check_dense(w, "compress")
    w = w.detach()
    O, K = w.shape
    keep = w != 0
    row_ptr = torch.zeros(O + 1, dtype=torch.int64, device=w.device)
    torch.cumsum(keep.sum(1), 0, out=row_ptr[1:])
    cols = keep.nonzero()[:, 1]  # row-major order: rows in order, columns ascending
    return _from_row_major(row_ptr, cols, w[keep], (O, K), segments)


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
    return torch.ops.sparseops.csr_linear(x, w.row_ptr, w.cols, w.values, w.shape[1], bias, w.segments)


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
