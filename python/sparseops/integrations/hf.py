"""transformers integration: ``attn_implementation="sparseops"`` runs SparseAttention for prefill.

    import sparseops.integrations.hf as sparseops_hf
    sparseops_hf.register(pattern="a_shape", sink=128, window=2048)
    model = AutoModelForCausalLM.from_pretrained(..., attn_implementation="sparseops")
    # or: model.set_attn_implementation("sparseops")

register() adds an attention function (AttentionInterface) and, under the same name, transformers' SDPA mask
function (AttentionMaskInterface), so causality and padding hold exactly as with "sdpa": transformers then
passes attention_mask=None when the plain causal mask is enough (prefill without padding, one-token decode)
and a materialized bool mask otherwise. The attention function uses SparseAttention only for the first case
with q_len > 1 (prefill); everything else runs transformers' own SDPA path unchanged:
  - decode steps (q_len == 1) and chunked prefill / any call with a mask (padding: correct rather than fast),
  - dropout during training, extra inputs SDPA handles specially (softcap, position_bias, sinks, paged cache),
  - calls the pattern does not describe (a_shape on a non-causal layer).
Top-left aligned causality (the kernel's and SDPA's is_causal) equals transformers' bottom-right one here
because the sparse path only runs with q_len == kv_len (a static cache's empty slots past q_len are cut).
"""
from __future__ import annotations

from collections import Counter

from ..attention.module import DENSE_THRESHOLD, SparseAttention

__all__ = ["register", "install", "make_attention_function", "NAME", "COMBINED_NAME", "DEFAULT_PATTERN_ARGS"]

NAME = "sparseops"
COMBINED_NAME = "sparseops_full"  # install(): sparse prefill + bitmap-KV decode
# register() with no pattern arguments: StreamingLLM-style A-shape, exact for prompts up to the window.
DEFAULT_PATTERN_ARGS = {"a_shape": {"sink": 128, "window": 2048}}
_SDPA_ONLY_KWARGS = ("softcap", "position_bias", "s_aux", "sinks", "cache")


def make_attention_function(attn: SparseAttention):
    """A transformers attention function running `attn` where it applies and transformers' SDPA elsewhere.
    Its ``calls`` Counter counts the paths taken: "sparse" / "dense" (SparseAttention's own choice) and
    "sdpa" (not handled: decode, masks, ...)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    calls: Counter = Counter()

    def sparseops_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                            is_causal=None, **kwargs):
        q_len, kv_len = query.shape[2], key.shape[2]
        causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True)) and q_len > 1
        handled = (attention_mask is None and q_len > 1 and not dropout and kv_len >= q_len
                   and (causal or kv_len == q_len)
                   and all(kwargs.get(k) is None for k in _SDPA_ONLY_KWARGS) and attn.applies(causal))
        if not handled:
            calls["sdpa"] += 1
            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                          scaling=scaling, is_causal=is_causal, **kwargs)
        if kv_len > q_len:  # causal prefill into a static cache: the slots past q_len are empty (as SDPA does)
            key, value = key[:, :, :q_len], value[:, :, :q_len]
        out = attn(query, key, value, is_causal=causal, scale=scaling)
        calls[attn.last_path] += 1
        return out.transpose(1, 2).contiguous(), None

    sparseops_attention.calls = calls
    sparseops_attention.sparse_attention = attn
    return sparseops_attention


def register(pattern="a_shape", *, name: str = NAME, dense_threshold: float = DENSE_THRESHOLD, **pattern_args):
    """Registers attn_implementation=`name` with transformers (attention and mask functions); returns the
    attention function (``.calls`` counts the paths taken, ``.sparse_attention`` is the SparseAttention).
    pattern / pattern_args / dense_threshold: as SparseAttention; a named pattern with no arguments gets
    DEFAULT_PATTERN_ARGS. Registering again under the same name replaces the previous configuration
    (models pick it up on their next forward)."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError as e:
        raise ImportError("sparseops.integrations.hf needs transformers >= 5 (pip install 'transformers>=5')") from e
    if not isinstance(name, str) or not name:
        raise ValueError(f"sparseops.integrations.hf.register: name must be a non-empty string, got {name!r}")
    if isinstance(pattern, str) and not pattern_args:
        pattern_args = dict(DEFAULT_PATTERN_ARGS.get(pattern, {}))
    attn = SparseAttention(pattern, dense_threshold=dense_threshold, **pattern_args)
    fn = make_attention_function(attn)
    AttentionInterface.register(name, fn)
    AttentionMaskInterface.register(name, sdpa_mask)
    return fn


def install(model, *, kv_cache: bool = True, pattern=None, name: str = COMBINED_NAME,
            dense_threshold: float = DENSE_THRESHOLD, **pattern_args):
    """Switches `model` to one attention function doing both jobs: decode steps over a BitmapKVCache run the
    compressed-cache kernel (sparseops.kv), prefill runs SparseAttention(pattern) where it applies, and everything
    else (a dense cache, masks, no pattern) runs transformers' SDPA. Returns the prefill function (``.calls``
    counts its paths) or None when pattern is None. Pass a BitmapKVCache as past_key_values to use the cache."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    from .. import kv_cache as kvc

    prefill = None
    if pattern is not None:
        prefill = register(pattern, name=name + "_prefill", dense_threshold=dense_threshold, **pattern_args)
    dense = prefill or sdpa_attention_forward

    def attention(module, query, key, value, attention_mask, **kwargs):
        step = getattr(key, kvc._STEP_ATTR, None)
        if kv_cache and step is not None and step.past > 0:
            return kvc.attention(module, query, key, value, attention_mask, **kwargs)
        return dense(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, sdpa_mask)
    model.set_attn_implementation(name)
    return prefill
