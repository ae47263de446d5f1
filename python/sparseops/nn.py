"""SparseLinear: an nn.Linear whose weight is stored compressed.

The module holds a *format* object that knows how to build, check and run one storage layout:
"nm-bitmask" (N:M, sparseops.nm; sparsity "2:4") and "csr" (unstructured, sparseops.csr; a float sparsity
such as 0.9), keyed by parse_sparsity()'s ("nm", n, m) / ("unstructured", s).

state_dict: the format's tensors (N:M: `values`, `mask`; CSR: `row_ptr`, `cols`, `values`), `bias` if any,
and `sparse_meta`, an int64 tensor [format id, format version, p0, p1, out_features, in_features] (N:M:
p0, p1 = n, m; CSR: 0, 0) so checkpoints are versioned while staying plain tensors (safetensors-compatible).
Loading checks the meta and validates the tensors before any kernel can read them. A CSR checkpoint may
hold any number of entries: the module's buffers take the checkpoint's sizes.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from . import csr, nm

__all__ = ["SparseLinear", "parse_sparsity", "NMFormat", "CSRFormat", "SparseAttention"]


def parse_sparsity(sparsity) -> tuple:
    """'2:4' / (2, 4) -> ("nm", 2, 4); a float in (0, 1) such as 0.9 -> ("unstructured", 0.9)."""
    if isinstance(sparsity, str):
        mt = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", sparsity)
        if mt:
            n, m = int(mt.group(1)), int(mt.group(2))
            nm.check_pattern(n, m)
            return ("nm", n, m)
        try:
            sparsity = float(sparsity)
        except ValueError:
            raise ValueError(f"sparseops: cannot parse sparsity {sparsity!r}; expected 'n:m' such as '2:4' "
                             f"or a fraction such as 0.9") from None
    if isinstance(sparsity, tuple) and len(sparsity) == 2:
        n, m = sparsity
        nm.check_pattern(n, m)
        return ("nm", n, m)
    if isinstance(sparsity, float) and not isinstance(sparsity, bool):
        if not 0.0 < sparsity < 1.0:
            raise ValueError(f"sparseops: unstructured sparsity must be in (0, 1), got {sparsity}")
        return ("unstructured", sparsity)
    raise ValueError(f"sparseops: cannot parse sparsity {sparsity!r}; expected 'n:m' such as '2:4' "
                     f"or a fraction such as 0.9")


class NMFormat:
    """The "nm-bitmask" v1 layout (csrc/kernels/nm/nm.h) as seen by SparseLinear."""

    format_id = 1  # in sparse_meta[0]
    name = nm.FORMAT_NAME
    version = nm.FORMAT_VERSION
    buffers = ("values", "mask")
    variable_size = False
    param_names = ("n", "m")  # sparse_meta[2:4]

    def __init__(self, n: int, m: int):
        nm.check_pattern(n, m)
        self.n, self.m = n, m

    def __repr__(self) -> str:
        return f"{self.n}:{self.m}"

    def meta(self, out_features: int, in_features: int) -> torch.Tensor:
        return torch.tensor([self.format_id, self.version, self.n, self.m, out_features, in_features],
                            dtype=torch.int64)

    def empty(self, out_features: int, in_features: int, dtype, device) -> dict:
        """Buffers of an all-zero weight (a valid mask: the lowest n columns of every group)."""
        w = nm.compress(torch.zeros(out_features, in_features, dtype=dtype, device=device), self.n, self.m)
        return {"values": w.values, "mask": w.mask}

    def from_dense(self, weight: torch.Tensor, score: torch.Tensor | None) -> dict:
        w = nm.compress(nm.prune(weight, self.n, self.m, score=score), self.n, self.m)
        return {"values": w.values, "mask": w.mask}

    def buffer_specs(self, out_features: int, in_features: int, dtype) -> dict:
        """{name: (shape, dtype)} of the buffers, without computing them."""
        return {"values": ((out_features, in_features // self.m * self.n), dtype),
                "mask": ((out_features, (in_features + 7) // 8), torch.uint8)}

    def weight(self, bufs: dict, in_features: int) -> nm.NMWeight:
        return nm.NMWeight(bufs["values"], bufs["mask"], self.n, self.m, in_features, _trusted=True)

    def validate(self, bufs: dict, out_features: int, in_features: int) -> None:
        values, mask = bufs["values"], bufs["mask"]
        if values.dim() != 2 or values.shape[0] != out_features:
            raise ValueError(f"values has shape {tuple(values.shape)}, expected [{out_features}, "
                             f"{in_features // self.m * self.n}]")
        nm.validate(values, mask, self.n, self.m, in_features)

    def forward(self, x, bufs: dict, in_features: int, bias):
        return nm._linear(x, bufs["values"], bufs["mask"], self.n, self.m, in_features, bias)


class CSRFormat:
    """The "csr" v1 layout (csrc/kernels/csr/csr.h) as seen by SparseLinear: unstructured, pruned per row."""

    format_id = 2
    name = csr.FORMAT_NAME
    version = csr.FORMAT_VERSION
    buffers = ("row_ptr", "cols", "values")
    variable_size = True  # nnz is the checkpoint's
    param_names = ("unused0", "unused1")
    m = 1  # no grouping constraint on in_features

    def __init__(self, sparsity: float):
        self.sparsity = float(sparsity)

    def __repr__(self) -> str:
        return f"{self.sparsity:g}"

    def meta(self, out_features: int, in_features: int) -> torch.Tensor:
        return torch.tensor([self.format_id, self.version, 0, 0, out_features, in_features], dtype=torch.int64)

    @staticmethod
    def _bufs(w: csr.CSRWeight) -> dict:
        return {"row_ptr": w.row_ptr, "cols": w.cols, "values": w.values}

    def empty(self, out_features: int, in_features: int, dtype, device) -> dict:
        return self._bufs(csr.compress(torch.zeros(out_features, in_features, dtype=dtype, device=device)))

    def from_dense(self, weight: torch.Tensor, score: torch.Tensor | None) -> dict:
        return self._bufs(csr.compress(csr.prune(weight, self.sparsity, score=score)))

    def buffer_specs(self, out_features: int, in_features: int, dtype) -> dict:
        """{name: (shape, dtype)} of the buffers of an empty weight (a checkpoint brings its own nnz)."""
        cols = torch.int16 if in_features <= csr._U16_MAX_COLS else torch.int32
        return {"row_ptr": ((out_features + 1,), torch.int64), "cols": ((0,), cols), "values": ((0,), dtype)}

    def weight(self, bufs: dict, in_features: int) -> csr.CSRWeight:
        O = bufs["row_ptr"].numel() - 1
        return csr.CSRWeight(bufs["row_ptr"], bufs["cols"], bufs["values"], (O, in_features), _trusted=True)

    def validate(self, bufs: dict, out_features: int, in_features: int) -> None:
        rp = bufs["row_ptr"]
        if rp.dim() != 1 or rp.numel() != out_features + 1:
            raise ValueError(f"row_ptr has shape {tuple(rp.shape)}, expected [{out_features + 1}]")
        csr.CSRWeight(bufs["row_ptr"], bufs["cols"], bufs["values"], (out_features, in_features))

    def forward(self, x, bufs: dict, in_features: int, bias):
        return torch.ops.sparseops.csr_linear(x, bufs["row_ptr"], bufs["cols"], bufs["values"], in_features, bias)


_FORMATS = {NMFormat.format_id: NMFormat, CSRFormat.format_id: CSRFormat}


def _make_format(spec: tuple):
    if spec[0] == "nm":
        return NMFormat(spec[1], spec[2])
    return CSRFormat(spec[1])


class SparseLinear(nn.Module):
    """Drop-in for nn.Linear with a compressed, frozen weight. Build with from_dense(); forward is
    sparseops.nm.linear. The bias stays a dense parameter."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, sparsity="2:4", *,
                 device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.format = _make_format(parse_sparsity(sparsity))
        dtype = dtype or torch.get_default_dtype()
        if in_features % self.format.m:
            raise ValueError(f"sparseops.nn.SparseLinear: in_features={in_features} is not a multiple of "
                             f"m={self.format.m} for {self.format}")
        for k, v in self.format.empty(self.out_features, self.in_features, dtype, device).items():
            self.register_buffer(k, v)
        self.register_buffer("sparse_meta", self.format.meta(self.out_features, self.in_features))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device))
        else:
            self.register_parameter("bias", None)

    # -- construction / conversion --
    @classmethod
    def from_dense(cls, linear: nn.Linear, sparsity="2:4", *, method: str = "magnitude",
                   activation_norms: torch.Tensor | None = None) -> "SparseLinear":
        """Prune linear.weight to the pattern (magnitude: largest |w|; wanda: largest |w| * ||X_j||_2, which
        needs activation_norms [in_features]) and compress it. linear is left untouched."""
        spec = parse_sparsity(sparsity)
        fmt = _make_format(spec)
        w = linear.weight.detach()
        if method == "magnitude":
            score = None
        elif method == "wanda":
            if activation_norms is None:
                raise ValueError("sparseops.nn.SparseLinear.from_dense: method='wanda' needs activation_norms "
                                 "(per-input-channel L2 norms of the layer's inputs)")
            score = nm.wanda_score(w, activation_norms)  # the same |W| * ||X_j|| for both formats
        else:
            raise ValueError(f"sparseops.nn.SparseLinear.from_dense: unknown method {method!r} "
                             f"(expected 'magnitude' or 'wanda')")
        if w.shape[1] % fmt.m:
            raise ValueError(f"sparseops.nn.SparseLinear.from_dense: weight shape {tuple(w.shape)}: in_features "
                             f"is not a multiple of m={fmt.m}")
        mod = cls.__new__(cls)
        nn.Module.__init__(mod)
        mod.in_features, mod.out_features = linear.in_features, linear.out_features
        mod.format = fmt
        for k, v in fmt.from_dense(w, score).items():
            mod.register_buffer(k, v)
        mod.register_buffer("sparse_meta", fmt.meta(mod.out_features, mod.in_features))
        if linear.bias is not None:
            mod.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=linear.bias.requires_grad)
        else:
            mod.register_parameter("bias", None)
        return mod

    @classmethod
    def _uninitialized(cls, fmt, in_features: int, out_features: int, bias: bool, *, dtype,
                       device="meta") -> "SparseLinear":
        """A module of the format's structure whose tensors are uninitialised (on the meta device by default):
        only for load_state_dict(..., assign=True), which validates and installs a checkpoint's tensors
        (sparseops.checkpoint). Nothing is computed, so it costs no memory for large layers."""
        mod = cls.__new__(cls)
        nn.Module.__init__(mod)
        mod.in_features, mod.out_features = int(in_features), int(out_features)
        mod.format = fmt
        for k, (shape, dt) in fmt.buffer_specs(mod.out_features, mod.in_features, dtype).items():
            mod.register_buffer(k, torch.empty(shape, dtype=dt, device=device))
        mod.register_buffer("sparse_meta", fmt.meta(mod.out_features, mod.in_features).to(device))
        if bias:
            mod.bias = nn.Parameter(torch.empty(mod.out_features, dtype=dtype, device=device))
        else:
            mod.register_parameter("bias", None)
        return mod

    def _bufs(self) -> dict:
        return {k: getattr(self, k) for k in self.format.buffers}

    @property
    def compressed_weight(self):
        """The weight as its format's object: an nm.NMWeight or a csr.CSRWeight."""
        return self.format.weight(self._bufs(), self.in_features)

    @property
    def nm_weight(self) -> nm.NMWeight:
        if not isinstance(self.format, NMFormat):
            raise AttributeError(f"sparseops.nn.SparseLinear: this layer is {self.format.name}, not N:M; "
                                 "use compressed_weight")
        return self.compressed_weight

    @property
    def weight_nbytes(self) -> int:
        """Bytes of the compressed weight (its buffers and sparse_meta; not the bias)."""
        return sum(t.numel() * t.element_size() for t in (*self._bufs().values(), self.sparse_meta))

    @property
    def sparsity(self) -> str:
        return repr(self.format)

    def to_dense(self) -> nn.Linear:
        """An nn.Linear holding the decompressed (pruned) weight and the bias."""
        w = self.compressed_weight.to_dense()
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=w.device, dtype=w.dtype)
        with torch.no_grad():
            lin.weight.copy_(w)
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.format.forward(x, self._bufs(), self.in_features, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, sparsity={self.format}")

    # -- checkpoints --
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        where = f"SparseLinear {prefix[:-1] or '(root)'}"
        key = prefix + "sparse_meta"
        meta = state_dict.get(key)
        if meta is None and not any(prefix + k in state_dict for k in self.format.buffers):
            # nothing of this module in the checkpoint: the usual missing-keys handling (strict or not)
            super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                          unexpected_keys, error_msgs)
            return
        if meta is None:
            error_msgs.append(f"{where}: checkpoint has no '{key}' (not a sparseops sparse checkpoint, or saved "
                              f"by a dense nn.Linear)")
            return
        ok = self._check_meta(meta, where, error_msgs)
        if ok:
            bufs = {}
            for k in self.format.buffers:
                if prefix + k not in state_dict:
                    error_msgs.append(f"{where}: checkpoint is missing '{prefix + k}'")
                    return
                bufs[k] = state_dict[prefix + k]
            try:
                self.format.validate(bufs, self.out_features, self.in_features)
            except (ValueError, TypeError, RuntimeError) as e:
                error_msgs.append(f"{where}: malformed {self.format.name} tensors: {e}")
                return
            if self.format.variable_size:  # take the checkpoint's sizes (e.g. its number of CSR entries)
                for k, v in bufs.items():
                    if getattr(self, k).shape != v.shape or getattr(self, k).dtype != v.dtype:
                        setattr(self, k, torch.empty_like(v, device=getattr(self, k).device))
        else:
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _check_meta(self, meta, where, error_msgs) -> bool:
        if not isinstance(meta, torch.Tensor) or meta.dim() != 1 or meta.numel() < 2 or \
                meta.dtype != torch.int64:
            error_msgs.append(f"{where}: sparse_meta must be a 1-D int64 tensor, got {meta!r}")
            return False
        vals = meta.tolist()
        fid, version = vals[0], vals[1]
        fmt_cls = _FORMATS.get(fid)
        if fmt_cls is None:
            error_msgs.append(f"{where}: unknown sparse format id {fid} (this sparseops knows "
                              f"{ {k: v.name for k, v in _FORMATS.items()} })")
            return False
        if version != fmt_cls.version:
            error_msgs.append(f"{where}: checkpoint uses {fmt_cls.name} format version {version}, but this "
                              f"sparseops reads version {fmt_cls.version}")
            return False
        expected = self.format.meta(self.out_features, self.in_features).tolist()
        if vals != expected:
            def named(v, f):
                return dict(zip(["format id", "version", *f.param_names, "out_features", "in_features"], v))
            got, want = named(vals, fmt_cls), named(expected, self.format)
            error_msgs.append(f"{where}: checkpoint describes {got} but the module is {want}")
            return False
        return True


def __getattr__(name):
    # SparseAttention lives with the attention code; imported lazily to keep nn importable on its own.
    if name == "SparseAttention":
        from .attention.module import SparseAttention
        return SparseAttention
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
