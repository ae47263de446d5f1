"""sparseops.kv.BitmapKVCache without a model: what each layer stores across the dense-window boundary, the
attention function against SDPA on what the cache holds (decode, multi-token steps, padding fallback), the memory
report, batch selection and bad input."""
import importlib.util
import types

import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs transformers")

import sparseops.kv as kv  # noqa: E402
from sparseops import kv_cache  # noqa: E402


def _pruned(x, s):
    return kv.compress(x, s).to_dense()


def _module(G):
    return types.SimpleNamespace(layer_idx=0, num_key_value_groups=G, is_causal=True, training=False)


def _expected_store(history, s, W):
    """What a layer must hold: tokens older than the last W pruned, the last W dense (chronological)."""
    T = history.shape[2]
    old = max(0, T - W)
    return torch.cat([_pruned(history[:, :, :old], s), history[:, :, old:]], 2)


@pytest.mark.parametrize("W", [0, 1, 5])
def test_layer_store_across_window_boundary(W):
    torch.manual_seed(W)
    cache = kv.BitmapKVCache(0.6, dense_window=W)
    B, H, D = 2, 3, 32
    hist_k = torch.empty(B, H, 0, D)
    hist_v = torch.empty(B, H, 0, D)
    for n in (3, 1, 1, 1, 1, 7, 1, 1, 2, 1, 1, 1, 1, 1, 1):  # prefill, decode across the boundary, a chunk > W
        k, v = torch.randn(B, H, n, D), torch.randn(B, H, n, D)
        cache.update(k, v, 0)
        hist_k, hist_v = torch.cat([hist_k, k], 2), torch.cat([hist_v, v], 2)
        layer = cache.layers[0]
        K, V = layer.dense()
        assert cache.get_seq_length() == hist_k.shape[2] == K.shape[2]
        assert torch.equal(K, _expected_store(hist_k, 0.6, W)) and torch.equal(V, _expected_store(hist_v, 0.6, W))
        assert len(layer.kc) == max(0, hist_k.shape[2] - W) and layer.ring_len == min(W, hist_k.shape[2])
        assert layer.kc.capacity < 64  # grows geometrically, not per token


def test_k_and_v_sparsity_differ():
    cache = kv.BitmapKVCache(0.5, k_sparsity=0.75, dense_window=0)
    cache.update(torch.randn(1, 2, 4, 64), torch.randn(1, 2, 4, 64), 0)
    layer = cache.layers[0]
    assert layer.kc.k == 16 and layer.vc.k == 32


def _run_steps(cache, module, steps, B, Hq, Hkv, D, dtype, s, W, mask_fn=None):
    """Feeds steps (token counts) through cache + attention; checks each output against SDPA over what the cache
    held before the step (pruned beyond the window) plus the new tokens, causal (a step's own tokens are always
    attended dense; a one-token step with a window sees the window after it took the new token)."""
    torch.manual_seed(0)
    hist_k = torch.empty(B, Hkv, 0, D, dtype=dtype)
    hist_v = torch.empty(B, Hkv, 0, D, dtype=dtype)
    tol = 2e-5 if dtype == torch.float32 else 2e-2
    for n in steps:
        q = torch.randn(B, Hq, n, D, dtype=dtype)
        k, v = torch.randn(B, Hkv, n, D, dtype=dtype), torch.randn(B, Hkv, n, D, dtype=dtype)
        past = hist_k.shape[2]
        if n == 1 and W > 0:  # one-token decode: the new token is already in the window when attention runs
            Kref = _expected_store(torch.cat([hist_k, k], 2), s, W)
            Vref = _expected_store(torch.cat([hist_v, v], 2), s, W)
        else:
            Kref = torch.cat([_expected_store(hist_k, s, W), k], 2)
            Vref = torch.cat([_expected_store(hist_v, s, W), v], 2)
        mask = torch.ones(n, past + n, dtype=torch.bool).tril_(past).expand(B, 1, n, past + n).clone()
        if mask_fn is not None:
            mask = mask_fn(mask)
        ks, vs = cache.update(k, v, 0)
        give_mask = mask_fn is not None or past == 0 or n > 4  # transformers passes None when nothing is hidden
        out, w = kv_cache.attention(module, q, ks, vs, mask if give_mask else None, scaling=D ** -0.5)
        assert w is None and out.shape == (B, n, Hq, D) and out.dtype == dtype
        ref = F.scaled_dot_product_attention(q.double(), Kref.double(), Vref.double(), attn_mask=mask,
                                             enable_gqa=True).transpose(1, 2)
        torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
        hist_k, hist_v = torch.cat([hist_k, k], 2), torch.cat([hist_v, v], 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("s,W", [(0.0, 4), (0.7, 4), (0.5, 0), (0.7, 16)])
def test_attention_matches_sdpa_on_the_stored_cache(dtype, s, W):
    B, Hq, Hkv, D = 2, 8, 2, 64
    cache = kv.BitmapKVCache(s, dense_window=W)
    _run_steps(cache, _module(Hq // Hkv), (5, 1, 1, 1, 1, 1, 9, 1, 3, 1, 20, 1), B, Hq, Hkv, D, dtype, s, W)


def test_sparsity_zero_equals_dense_attention():
    """At sparsity 0 nothing is pruned: every step equals SDPA over the full history."""
    B, Hq, Hkv, D = 1, 6, 3, 32
    cache = kv.BitmapKVCache(0.0, dense_window=2)
    _run_steps(cache, _module(2), (4, 1, 1, 1, 6, 1, 1), B, Hq, Hkv, D, torch.float32, 0.0, 10 ** 9)


def test_padding_inside_the_cache_falls_back_to_dense():
    B, Hq, Hkv, D = 2, 4, 2, 32

    def hide(mask):  # batch row 1: the first cached token is padding
        mask[1, :, :, 0] = False
        return mask

    cache = kv.BitmapKVCache(0.7, dense_window=3)
    _run_steps(cache, _module(2), (4, 1, 1, 1, 1, 5, 1), B, Hq, Hkv, D, torch.float32, 0.7, 3, mask_fn=hide)


def test_attention_without_bitmap_cache_is_plain_sdpa():
    q, k, v = torch.randn(1, 4, 5, 32), torch.randn(1, 2, 5, 32), torch.randn(1, 2, 5, 32)
    out, _ = kv_cache.attention(_module(2), q, k, v, None, scaling=32 ** -0.5)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).transpose(1, 2)
    torch.testing.assert_close(out, ref)


def test_memory_report():
    B, H, D, W, T = 2, 4, 128, 16, 100
    cache = kv.BitmapKVCache(0.7, dense_window=W)
    assert cache.nbytes == 0 and cache.dense_nbytes == 0
    for layer in range(3):
        cache.update(torch.randn(B, H, T, D, dtype=torch.bfloat16), torch.randn(B, H, T, D, dtype=torch.bfloat16),
                     layer)
    k = 128 - 89
    assert cache.nbytes == 3 * 2 * B * H * ((T - W) * (D // 8 + 2 * k) + W * D * 2)
    assert cache.dense_nbytes == 3 * 2 * B * H * T * D * 2
    assert cache.ratio == pytest.approx(cache.nbytes / cache.dense_nbytes)
    r = cache.memory_report()
    assert r["tokens"] == T and r["layers"] == 3 and r["ratio"] == cache.ratio
    big = kv.BitmapKVCache(0.7, dense_window=0)
    big.update(torch.randn(1, 8, 64, 128, dtype=torch.bfloat16), torch.randn(1, 8, 64, 128, dtype=torch.bfloat16), 0)
    assert big.ratio <= 0.40


def test_batch_selection():
    cache = kv.BitmapKVCache(0.5, dense_window=2)
    k, v = torch.randn(3, 2, 6, 32), torch.randn(3, 2, 6, 32)
    cache.update(k, v, 0)
    K, V = cache.layers[0].dense()
    cache.batch_select_indices(torch.tensor([2, 0]))
    K2, _ = cache.layers[0].dense()
    assert torch.equal(K2, K[[2, 0]])
    cache.batch_repeat_interleave(2)
    assert torch.equal(cache.layers[0].dense()[0], K[[2, 0]].repeat_interleave(2, 0))
    cache.reorder_cache(torch.tensor([3, 2, 1, 0]))
    assert torch.equal(cache.layers[0].dense()[0], K[[2, 0]].repeat_interleave(2, 0).flip(0))
    with pytest.raises(NotImplementedError, match="crop"):
        cache.crop(-1)
    cache.reset()
    assert cache.get_seq_length() == 0


@pytest.mark.parametrize("kwargs,match", [
    ({"sparsity": 1.0}, "sparsity must be"), ({"sparsity": -0.1}, "sparsity must be"),
    ({"sparsity": "0.5"}, "sparsity must be"), ({"k_sparsity": 1.5}, "k_sparsity"),
    ({"dense_window": -1}, "dense_window"), ({"dense_window": 2.5}, "dense_window"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kv.BitmapKVCache(**kwargs)


def test_bad_states():
    cache = kv.BitmapKVCache(0.5)
    with pytest.raises(ValueError, match="multiple of 16"):
        cache.update(torch.randn(1, 2, 3, 24), torch.randn(1, 2, 3, 24), 0)
    cache = kv.BitmapKVCache(0.5)
    with pytest.raises(ValueError, match="float32/bfloat16/float16"):
        cache.update(torch.randn(1, 2, 3, 32, dtype=torch.float64), torch.randn(1, 2, 3, 32, dtype=torch.float64), 0)
    cache = kv.BitmapKVCache(0.5)
    cache.update(torch.randn(1, 2, 3, 32), torch.randn(1, 2, 3, 32), 0)
    with pytest.raises(ValueError, match="do not match"):
        cache.update(torch.randn(1, 2, 1, 32, dtype=torch.bfloat16), torch.randn(1, 2, 1, 32), 0)
    with pytest.raises(ValueError, match="do not match"):
        cache.update(torch.randn(1, 3, 1, 32), torch.randn(1, 3, 1, 32), 0)
