"""Bitmap-compressed KV cache (format "kv-bitmap" v1, see csrc/kernels/kv/kv.h).

Every (batch, kv-head, token) row of K or V keeps its k = head_dim - floor(sparsity * head_dim) largest-magnitude
channels (ties: lower channel first) as one fixed-size record: a head_dim-bit bitmap plus exactly k values in
ascending channel order. Records live in preallocated storage with a capacity that doubles when full, so
``append`` is O(1) amortised.

    kc = sparseops.kv.compress(k, 0.7)           # k: [B, Hkv, T, D]
    vc = sparseops.kv.compress(v, 0.5)
    out = sparseops.kv.decode_attention(q, kc, vc, k_tail=k_recent, v_tail=v_recent)

transformers: ``sparseops.kv.BitmapKVCache`` (in sparseops/kv_cache.py; ``BitmapKVCache.prepare(model)`` once, then
``model.generate(..., past_key_values=BitmapKVCache(0.7))``).
"""
from __future__ import annotations

import math

import torch

__all__ = ["BitmapKV", "compress", "decode_attention", "kept_per_token", "FORMAT", "VERSION", "BitmapKVCache",
           "register"]

FORMAT = "kv-bitmap"
VERSION = 1
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def kept_per_token(head_dim: int, sparsity: float) -> int:
    """k = head_dim - floor(sparsity * head_dim) (a tiny epsilon absorbs binary rounding of sparsity)."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparseops.kv: sparsity must be in [0, 1), got {sparsity}")
    return head_dim - int(math.floor(sparsity * head_dim + 1e-9))


class BitmapKV:
    """A bitmap-compressed [B, H, T, head_dim] K or V cache.

    Build it with :func:`compress`, or from stored tensors with ``BitmapKV(bits, vals, length)``, which validates
    them (sizes and exactly k set bits per record) because they may come from anywhere.
    ``bits`` is uint8 [B, H, capacity, head_dim/8], ``vals`` [B, H, capacity, k]; records past ``length`` are unused.
    """

    def __init__(self, bits: torch.Tensor, vals: torch.Tensor, length: int | None = None,
                 sparsity: float | None = None, *, _trusted: bool = False):
        if not isinstance(bits, torch.Tensor) or not isinstance(vals, torch.Tensor):
            raise TypeError("sparseops.kv: bits and vals must be tensors")
        if length is None:
            length = bits.shape[2] if bits.dim() == 4 else 0
        if not _trusted:
            torch.ops.sparseops.kv_validate(bits, vals, int(length))
            bits, vals = bits.contiguous(), vals.contiguous()
        self._bits, self._vals, self._len = bits, vals, int(length)
        D = bits.shape[3] * 8
        k = vals.shape[3]
        self.sparsity = float(sparsity) if sparsity is not None else (D - k) / D

    # ---- shape facts ------------------------------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        B, H = self._bits.shape[:2]
        return torch.Size((B, H, self._len, self.head_dim))

    @property
    def head_dim(self) -> int:
        return self._bits.shape[3] * 8

    @property
    def k(self) -> int:
        """Values kept per token."""
        return self._vals.shape[3]

    @property
    def dtype(self) -> torch.dtype:
        return self._vals.dtype

    @property
    def device(self) -> torch.device:
        return self._vals.device

    @property
    def capacity(self) -> int:
        return self._bits.shape[2]

    def __len__(self) -> int:
        return self._len

    @property
    def nbytes(self) -> int:
        """Bytes of the T logical records (bitmaps + values); see ``storage_nbytes`` for the capacity."""
        B, H = self._bits.shape[:2]
        return B * H * self._len * (self.head_dim // 8 + self.k * self._vals.element_size())

    @property
    def storage_nbytes(self) -> int:
        return self._bits.nbytes + self._vals.nbytes

    @property
    def bits(self) -> torch.Tensor:
        """uint8 [B, H, T, head_dim/8] (a view of the storage)."""
        return self._bits[:, :, : self._len]

    @property
    def vals(self) -> torch.Tensor:
        """[B, H, T, k] (a view of the storage)."""
        return self._vals[:, :, : self._len]

    def __repr__(self) -> str:
        return (f"BitmapKV(shape={tuple(self.shape)}, dtype={self.dtype}, sparsity={self.sparsity:g}, "
                f"k={self.k}, capacity={self.capacity})")

    # ---- data -------------------------------------------------------------------------------------
    def to_dense(self) -> torch.Tensor:
        """The pruned dense [B, H, T, head_dim] tensor (exact: kept values bit for bit, zeros elsewhere)."""
        return torch.ops.sparseops.kv_decompress(self._bits, self._vals, self._len)

    def append(self, x_new: torch.Tensor) -> "BitmapKV":
        """Compresses x_new [B, H, n, head_dim] and appends it in place (O(n) amortised); returns self."""
        B, H, _, D = self.shape
        if x_new.dim() != 4 or x_new.shape[0] != B or x_new.shape[1] != H or x_new.shape[3] != D:
            raise ValueError(f"sparseops.kv: append expects [B, H, n, head_dim] = [{B}, {H}, n, {D}], "
                             f"got {tuple(x_new.shape)}")
        if x_new.dtype != self.dtype or x_new.device != self.device:
            raise ValueError(f"sparseops.kv: append got {x_new.dtype} on {x_new.device}, the cache is "
                             f"{self.dtype} on {self.device}")
        n = x_new.shape[2]
        if n == 0:
            return self
        bits, vals = torch.ops.sparseops.kv_compress(x_new, self.k)
        need = self._len + n
        if need > self.capacity:
            cap = max(need, 2 * self.capacity, 16)
            nb = self._bits.new_zeros((B, H, cap, D // 8))
            nv = self._vals.new_zeros((B, H, cap, self.k))
            nb[:, :, : self._len] = self._bits[:, :, : self._len]
            nv[:, :, : self._len] = self._vals[:, :, : self._len]
            self._bits, self._vals = nb, nv
        self._bits[:, :, self._len: need] = bits
        self._vals[:, :, self._len: need] = vals
        self._len = need
        return self

    def state_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "bits": self.bits.clone(), "vals": self.vals.clone(),
                "sparsity": self.sparsity}

    @classmethod
    def from_state_dict(cls, sd: dict) -> "BitmapKV":
        if sd.get("format") != FORMAT or sd.get("version") != VERSION:
            raise ValueError(f"sparseops.kv: expected format {FORMAT!r} version {VERSION}, got "
                             f"{sd.get('format')!r} version {sd.get('version')}")
        return cls(sd["bits"], sd["vals"], sd["bits"].shape[2], sd.get("sparsity"))


def compress(x: torch.Tensor, sparsity: float) -> BitmapKV:
    """Prunes each token row of x [B, H, T, head_dim] to its k largest |x| and stores it as a BitmapKV."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"sparseops.kv.compress: x must be a 4-D [B, H, T, head_dim] tensor, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    D = x.shape[3]
    if D <= 0 or D % 16:
        raise ValueError(f"sparseops.kv.compress: head_dim={D} is not a positive multiple of 16")
    k = kept_per_token(D, sparsity)
    bits, vals = torch.ops.sparseops.kv_compress(x, k)
    return BitmapKV(bits, vals, x.shape[2], sparsity, _trusted=True)


def decode_attention(q: torch.Tensor, k: BitmapKV, v: BitmapKV, *, scale: float | None = None,
                     k_tail: torch.Tensor | None = None, v_tail: torch.Tensor | None = None,
                     return_lse: bool = False):
    """softmax(q K^T * scale) V over K, V = cat(cache.to_dense(), tail) along tokens, no mask.

    q [B, Hq, Lq, D]; k, v BitmapKV [B, Hkv, T, D] with Hq % Hkv == 0 (GQA); tails [B, Hkv, Tw, D] dense.
    Returns out [B, Hq, Lq, D] in q's dtype, and with return_lse also the log-sum-exp [B, Hq, Lq] (fp32).
    """
    if not isinstance(k, BitmapKV) or not isinstance(v, BitmapKV):
        raise TypeError("sparseops.kv.decode_attention: k and v must be BitmapKV (use sparseops.kv.compress)")
    if len(k) != len(v):
        raise ValueError(f"sparseops.kv.decode_attention: k has {len(k)} tokens but v has {len(v)}")
    out, lse = torch.ops.sparseops.kv_decode_attention(q, k._bits, k._vals, v._bits, v._vals, len(k), scale,
                                                        k_tail, v_tail)
    return (out, lse) if return_lse else out


_CACHE_NAMES = ("BitmapKVCache", "BitmapKVLayer", "register")


def __getattr__(name):
    # The transformers cache lives in sparseops.kv_cache, imported on first use: importing transformers costs
    # seconds, and `import sparseops` must not pay that.
    if name in _CACHE_NAMES:
        from . import kv_cache

        return getattr(kv_cache, name)
    raise AttributeError(f"module 'sparseops.kv' has no attribute {name!r}")


# ---- fake kernels (torch.compile / export); they repeat the shape checks of csrc/ops/kv.cpp ------------
def _check_store(bits, vals, length, what):
    torch._check(bits.dim() == 4 and bits.dtype == torch.uint8,
                 lambda: f"{what}: bits must be 4-D uint8, got {bits.dtype} {tuple(bits.shape)}")
    torch._check(vals.dim() == 4 and vals.dtype in _DTYPES,
                 lambda: f"{what}: vals must be 4-D float32/bfloat16/float16, got {vals.dtype} {tuple(vals.shape)}")
    D = bits.shape[3] * 8
    torch._check(D > 0 and D % 16 == 0, lambda: f"{what}: head_dim {D} is not a positive multiple of 16")
    torch._check(tuple(vals.shape[:3]) == tuple(bits.shape[:3]),
                 lambda: f"{what}: bits {tuple(bits.shape)} and vals {tuple(vals.shape)} disagree")
    torch._check(1 <= vals.shape[3] <= D, lambda: f"{what}: vals keeps {vals.shape[3]} values per token")
    torch._check(0 <= length <= bits.shape[2], lambda: f"{what}: length {length} is outside the capacity")
    return D


@torch.library.register_fake("sparseops::kv_compress")
def _kv_compress_fake(x, k):
    torch._check(x.dim() == 4, lambda: f"sparseops.kv_compress: x must be 4-D, got {tuple(x.shape)}")
    B, H, T, D = x.shape
    torch._check(D % 16 == 0 and 1 <= k <= D, lambda: f"sparseops.kv_compress: bad head_dim {D} or k {k}")
    return x.new_empty((B, H, T, D // 8), dtype=torch.uint8), x.new_empty((B, H, T, k))


@torch.library.register_fake("sparseops::kv_validate")
def _kv_validate_fake(bits, vals, length):
    _check_store(bits, vals, length, "sparseops.kv")


@torch.library.register_fake("sparseops::kv_decompress")
def _kv_decompress_fake(bits, vals, length):
    D = _check_store(bits, vals, length, "sparseops.kv")
    return vals.new_empty((bits.shape[0], bits.shape[1], length, D))


@torch.library.register_fake("sparseops::kv_decode_attention")
def _kv_decode_attention_fake(q, k_bits, k_vals, v_bits, v_vals, length, scale=None, k_tail=None, v_tail=None):
    D = _check_store(k_bits, k_vals, length, "sparseops.kv_decode_attention: k")
    _check_store(v_bits, v_vals, length, "sparseops.kv_decode_attention: v")
    torch._check(q.dim() == 4 and q.shape[3] == D, lambda: f"sparseops.kv_decode_attention: q {tuple(q.shape)}")
    torch._check(q.shape[1] % k_bits.shape[1] == 0,
                 lambda: "sparseops.kv_decode_attention: query heads are not a multiple of kv heads")
    torch._check(q.dtype == k_vals.dtype == v_vals.dtype, lambda: "sparseops.kv_decode_attention: dtypes differ")
    torch._check(q.device == k_vals.device == v_vals.device,
                 lambda: f"sparseops.kv_decode_attention: q on {q.device} but k on {k_vals.device}, "
                         f"v on {v_vals.device}")
    B, Hq, Lq, _ = q.shape
    return q.new_empty((B, Hq, Lq, D)), q.new_empty((B, Hq, Lq), dtype=torch.float32)
