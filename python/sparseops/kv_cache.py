"""transformers (5.x) cache holding K and V bitmap-compressed (sparseops.kv), for Llama-style models.

    import sparseops.kv as kv
    kv.BitmapKVCache.prepare(model)      # registers attn_implementation "sparseops_kv" and selects it
    out = model.generate(ids, past_key_values=kv.BitmapKVCache(0.7, dense_window=256), max_new_tokens=64)
    print(cache.nbytes, cache.dense_nbytes, cache.ratio)

Per layer the cache holds the compressed tokens (BitmapKV K and V, chronological) and the most recent
`dense_window` tokens dense in a ring buffer (order does not matter to attention without a mask). What each
forward attends to:
- prefill (empty cache): the new tokens, densely, through transformers' own SDPA path (the same numbers as
  attn_implementation="sdpa"); afterwards all but the last dense_window tokens are compressed.
- one-token decode: the new token enters the ring (the token it evicts is compressed with BitmapKV.append, one
  record, O(1) amortised); sparseops.kv.decode_attention attends compressed records + the ring in one softmax.
- several new tokens with a non-empty cache (chunked prefill, teacher forcing, speculative decoding): the kernel
  attends the old state (returning its log-sum-exp), the new tokens attend each other causally in plain torch,
  and the two partial softmaxes are merged exactly.
A padding mask that hides cached tokens (batched prompts of different lengths) falls back to dense SDPA on the
decompressed cache: correct, not fast.

The attention function finds the layer through the key tensor the cache's `update` returned (it carries the step
it belongs to), so it needs no global state; with any other cache it simply runs transformers' SDPA.
"""
from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from . import kv as _kv

__all__ = ["BitmapKVCache", "BitmapKVLayer", "register", "attention", "ATTN_NAME"]

ATTN_NAME = "sparseops_kv"
DEFAULT_DENSE_WINDOW = 256  # ANCHORS: 256 recent dense tokens keep SmolLM2 within ~3% perplexity at 70%
_STEP_ATTR = "_sparseops_kv_step"


class _Step:
    """What one update() call's attention must read: the layer, the cached tokens before the new ones (`past`),
    and for multi-token updates a snapshot of the old state (views that later appends never overwrite)."""
    __slots__ = ("layer", "past", "n", "kc", "vc", "k_ring", "v_ring", "ring_start")

    def __init__(self, layer, past, n, kc=None, vc=None, k_ring=None, v_ring=None, ring_start=0):
        self.layer, self.past, self.n = layer, past, n
        self.kc, self.vc, self.k_ring, self.v_ring, self.ring_start = kc, vc, k_ring, v_ring, ring_start


def _view(c: _kv.BitmapKV, length: int) -> _kv.BitmapKV:
    """The first `length` records of c's current storage (appends only write past them, or reallocate)."""
    return _kv.BitmapKV(c._bits, c._vals, length, c.sparsity, _trusted=True)


def _ordered(ring: torch.Tensor, n: int, start: int) -> torch.Tensor:
    """Ring slots [0, n) in chronological order (oldest at `start` once the ring is full)."""
    if start == 0:
        return ring[:, :, :n]
    return torch.cat([ring[:, :, start:n], ring[:, :, :start]], 2)


class BitmapKVLayer(CacheLayerMixin):
    """One decoder layer's cache: compressed K/V (BitmapKV) + a dense ring of the latest `dense_window` tokens."""

    is_sliding = False
    is_croppable = False
    is_compileable = False

    def __init__(self, k_sparsity: float = 0.7, v_sparsity: float = 0.7, dense_window: int = DEFAULT_DENSE_WINDOW,
                 **kwargs):
        super().__init__()
        self.k_sparsity, self.v_sparsity, self.window = k_sparsity, v_sparsity, int(dense_window)
        self.kc = self.vc = self.k_ring = self.v_ring = None
        self.ring_len = self.ring_start = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        B, H, _, D = key_states.shape
        if key_states.dtype not in _kv._DTYPES or key_states.device.type != "cpu":
            raise ValueError(f"sparseops BitmapKVCache: K/V must be float32/bfloat16/float16 on the CPU, got "
                             f"{key_states.dtype} on {key_states.device}")
        if D % 16 or tuple(value_states.shape[:2]) != (B, H) or value_states.shape[3] != D:
            raise ValueError(f"sparseops BitmapKVCache: needs K and V of one head_dim that is a multiple of 16, "
                             f"got K {tuple(key_states.shape)} and V {tuple(value_states.shape)}")
        self.dtype, self.device = key_states.dtype, key_states.device
        self.kc = _kv.compress(key_states[:, :, :0], self.k_sparsity)
        self.vc = _kv.compress(value_states[:, :, :0], self.v_sparsity)
        self.k_ring = key_states.new_zeros((B, H, self.window, D))
        self.v_ring = value_states.new_zeros((B, H, self.window, D))
        self.ring_len = self.ring_start = 0
        self.token_nbytes = B * H * D * key_states.element_size()  # one dense token of K (or V), all heads
        self.is_initialized = True

    # ---- update --------------------------------------------------------------------------------------------
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        B, H, _, D = self.k_ring.shape
        n = key_states.shape[2]
        for name, t in (("key", key_states), ("value", value_states)):
            if t.dim() != 4 or (t.shape[0], t.shape[1], t.shape[3]) != (B, H, D) or t.dtype != self.dtype:
                raise ValueError(f"sparseops BitmapKVCache: {name} states {tuple(t.shape)} {t.dtype} do not match "
                                 f"the cache [B={B}, H={H}, n, D={D}] {self.dtype}")
        past = self.get_seq_length()
        if n == 1 and self.window > 0:
            # Decode: O(1). The attention reads the state after this update (new token in the ring).
            step = _Step(self, past, 1)
            if self.ring_len < self.window:
                slot = self.ring_len
                self.ring_len += 1
            else:
                slot = self.ring_start  # the oldest token leaves the window: compress it, reuse its slot
                self.kc.append(self.k_ring[:, :, slot:slot + 1])
                self.vc.append(self.v_ring[:, :, slot:slot + 1])
                self.ring_start = (slot + 1) % self.window
            self.k_ring[:, :, slot] = key_states[:, :, 0]
            self.v_ring[:, :, slot] = value_states[:, :, 0]
        else:
            # Several tokens: snapshot the old state for this step's attention, then spill what leaves the window.
            step = _Step(self, past, n, _view(self.kc, len(self.kc)), _view(self.vc, len(self.vc)),
                         self.k_ring[:, :, :self.ring_len], self.v_ring[:, :, :self.ring_len], self.ring_start)
            ks = torch.cat([_ordered(self.k_ring, self.ring_len, self.ring_start), key_states], 2)
            vs = torch.cat([_ordered(self.v_ring, self.ring_len, self.ring_start), value_states], 2)
            spill = max(0, ks.shape[2] - self.window)
            if spill:
                self.kc.append(ks[:, :, :spill])
                self.vc.append(vs[:, :, :spill])
            keep = ks.shape[2] - spill
            # a fresh ring, so the snapshot above stays intact
            self.k_ring, self.v_ring = torch.zeros_like(self.k_ring), torch.zeros_like(self.v_ring)
            self.k_ring[:, :, :keep] = ks[:, :, spill:]
            self.v_ring[:, :, :keep] = vs[:, :, spill:]
            self.ring_len, self.ring_start = keep, 0
        k_out, v_out = key_states.view(key_states.shape), value_states.view(value_states.shape)
        setattr(k_out, _STEP_ATTR, step)
        return k_out, v_out

    # ---- transformers bookkeeping ----------------------------------------------------------------------------
    def get_seq_length(self) -> int:
        return len(self.kc) + self.ring_len if self.is_initialized else 0

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.kc = self.vc = self.k_ring = self.v_ring = None
        self.ring_len = self.ring_start = 0
        self.is_initialized = False

    def _select(self, fn) -> None:
        """Applies fn (a batch-dimension selection) to every stored tensor."""
        if not self.is_initialized:
            return
        for c in (self.kc, self.vc):
            c._bits, c._vals = fn(c._bits).contiguous(), fn(c._vals).contiguous()
        self.k_ring, self.v_ring = fn(self.k_ring).contiguous(), fn(self.v_ring).contiguous()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._select(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._select(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._select(lambda t: t[indices])

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("sparseops BitmapKVCache cannot crop: compressed tokens lost their pruned values")

    def offload(self):
        pass  # CPU only

    def prefetch(self):
        pass

    # ---- reading -------------------------------------------------------------------------------------------
    def dense(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, V) [B, H, T, D] as attention sees them: decompressed (pruned) tokens then the dense window."""
        return (torch.cat([self.kc.to_dense(), _ordered(self.k_ring, self.ring_len, self.ring_start)], 2),
                torch.cat([self.vc.to_dense(), _ordered(self.v_ring, self.ring_len, self.ring_start)], 2))

    @property
    def nbytes(self) -> int:
        if not self.is_initialized:
            return 0
        return self.kc.nbytes + self.vc.nbytes + 2 * self.ring_len * self.token_nbytes

    @property
    def dense_nbytes(self) -> int:
        """What a DynamicCache would hold for the same tokens (K and V, dense)."""
        if not self.is_initialized:
            return 0
        return 2 * self.get_seq_length() * self.token_nbytes


class BitmapKVCache(Cache):
    """A transformers Cache storing K and V bitmap-compressed (format "kv-bitmap", see sparseops.kv).

    sparsity: fraction of each token's head_dim channels pruned (by magnitude, per token and head) in K and V;
    k_sparsity / v_sparsity override it for K / V. dense_window: the most recent tokens kept dense (>= 0).
    Needs the model to run attn_implementation "sparseops_kv": call BitmapKVCache.prepare(model) once.
    """

    def __init__(self, sparsity: float = 0.7, *, k_sparsity: float | None = None, v_sparsity: float | None = None,
                 dense_window: int = DEFAULT_DENSE_WINDOW):
        ks = sparsity if k_sparsity is None else k_sparsity
        vs = sparsity if v_sparsity is None else v_sparsity
        for what, s in (("sparsity", sparsity), ("k_sparsity", ks), ("v_sparsity", vs)):
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= s < 1.0:
                raise ValueError(f"sparseops BitmapKVCache: {what} must be a number in [0, 1), got {s!r}")
        if isinstance(dense_window, bool) or not isinstance(dense_window, int) or dense_window < 0:
            raise ValueError(f"sparseops BitmapKVCache: dense_window must be an int >= 0, got {dense_window!r}")
        self.k_sparsity, self.v_sparsity, self.dense_window = float(ks), float(vs), dense_window

        def make_layer():
            return BitmapKVLayer(self.k_sparsity, self.v_sparsity, dense_window)

        super().__init__(layer_class_to_replicate=make_layer)

    @staticmethod
    def prepare(model, name: str = ATTN_NAME):
        """Registers the attention + mask functions and switches `model` to them; returns the model."""
        register(name)
        model.set_attn_implementation(name)
        return model

    @property
    def nbytes(self) -> int:
        """Bytes held for the cached tokens: compressed records (bitmaps + values) + the dense window."""
        return sum(layer.nbytes for layer in self.layers)

    @property
    def dense_nbytes(self) -> int:
        """Bytes a dense cache (DynamicCache) would hold for the same tokens."""
        return sum(layer.dense_nbytes for layer in self.layers)

    @property
    def ratio(self) -> float:
        """nbytes / dense_nbytes (nan before anything is cached)."""
        d = self.dense_nbytes
        return self.nbytes / d if d else float("nan")

    def memory_report(self) -> dict:
        return {"tokens": self.get_seq_length(), "layers": len(self.layers), "nbytes": self.nbytes,
                "dense_nbytes": self.dense_nbytes, "ratio": self.ratio, "k_sparsity": self.k_sparsity,
                "v_sparsity": self.v_sparsity, "dense_window": self.dense_window}

    def __repr__(self) -> str:
        return (f"BitmapKVCache(k_sparsity={self.k_sparsity:g}, v_sparsity={self.v_sparsity:g}, "
                f"dense_window={self.dense_window}, layers={len(self.layers)}, tokens={self.get_seq_length()})")


# ---- the attention function ------------------------------------------------------------------------------------
def _new_part(q, k, v, allowed, scale):
    """Attention of q [B, Hq, n, D] over the n new tokens k, v [B, Hkv, n, D] where allowed [B|1, 1, n, n] is
    True, in fp32, with its log-sum-exp: (out [B, Hq, n, D] fp32, lse [B, Hq, n])."""
    B, Hq, n, D = q.shape
    Hkv = k.shape[1]
    G = Hq // Hkv
    qf = q.float().reshape(B, Hkv, G, n, D)
    kf, vf = k.float().unsqueeze(2), v.float().unsqueeze(2)
    s = (qf @ kf.transpose(-1, -2)) * scale
    s = s.masked_fill(~allowed.unsqueeze(2), float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - lse.unsqueeze(-1)).nan_to_num(0.0)  # rows with nothing allowed: weight 0
    return (p @ vf).reshape(B, Hq, n, D), lse.reshape(B, Hq, n)


def _merge(o1, l1, o2, l2):
    """Merges two partial softmax results (out, log-sum-exp) over disjoint token sets."""
    m = torch.maximum(l1, l2)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    w1, w2 = torch.exp(l1 - m), torch.exp(l2 - m)
    tot = (w1 + w2).clamp_min(1e-30)
    return (o1.float() * (w1 / tot).unsqueeze(-1) + o2 * (w2 / tot).unsqueeze(-1))


def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None,
              **kwargs):
    """transformers attention function (AttentionInterface) for BitmapKVCache; returns (out [B, n, Hq, D], None)."""
    step = getattr(key, _STEP_ATTR, None)
    if step is None or step.past == 0:  # not our cache, or prefill of an empty cache: plain SDPA
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    if dropout:
        raise ValueError("sparseops BitmapKVCache attention: dropout is not supported (use model.eval())")
    layer, past, n = step.layer, step.past, step.n
    if attention_mask is not None and attention_mask.dtype != torch.bool:
        raise ValueError("sparseops BitmapKVCache attention: expects a boolean mask (the mask function registered "
                         f"under {ATTN_NAME!r}), got {attention_mask.dtype}")
    hides_cache = attention_mask is not None and not bool(attention_mask[..., :past].all())
    if hides_cache:  # padding inside the cached tokens: the kernel has no mask, use dense SDPA on the cache
        if n == 1 and step.kc is None:
            K, V = layer.dense()
        else:
            ko = torch.cat([step.kc.to_dense(), _ordered(step.k_ring, step.k_ring.shape[2], step.ring_start)], 2)
            vo = torch.cat([step.vc.to_dense(), _ordered(step.v_ring, step.v_ring.shape[2], step.ring_start)], 2)
            K, V = torch.cat([ko, key], 2), torch.cat([vo, value], 2)
        return sdpa_attention_forward(module, query, K, V, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    if step.kc is None:  # one-token decode: everything cached (new token included) is visible
        kr, vr = layer.k_ring[:, :, :layer.ring_len], layer.v_ring[:, :, :layer.ring_len]
        out = _kv.decode_attention(query, layer.kc, layer.vc, scale=scaling, k_tail=kr, v_tail=vr)
        return out.transpose(1, 2).contiguous(), None
    kt = step.k_ring if step.k_ring.shape[2] else None
    vt = step.v_ring if step.v_ring.shape[2] else None
    o1, l1 = _kv.decode_attention(query, step.kc, step.vc, scale=scaling, k_tail=kt, v_tail=vt, return_lse=True)
    if attention_mask is not None:
        allowed = attention_mask[..., past:past + n]
    else:
        allowed = torch.ones(n, n, dtype=torch.bool, device=query.device).tril_().view(1, 1, n, n)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    o2, l2 = _new_part(query, key, value, allowed, scale)
    out = _merge(o1, l1, o2, l2).to(query.dtype)
    return out.transpose(1, 2).contiguous(), None


def register(name: str = ATTN_NAME) -> str:
    """Registers `attention` with transformers' AttentionInterface under `name`, and SDPA's mask function under the
    same name (so prefill stays causal and padding reaches the attention). Idempotent; returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, sdpa_mask)
    return name
