"""Bitmap-compressed KV cache: format exactness, append, decode attention vs a float64 SDPA reference on every
ISA, dtype, head_dim and GQA ratio, and clear errors for bad input."""
import itertools

import pytest
import torch
import torch.nn.functional as F

import sparseops
import sparseops.kv as kv

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
TOL = {torch.float32: 2e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}


def _reference_topk_mask(x, k):
    """k largest |x| per row, ties to the lower channel (stable sort on the magnitude)."""
    mag = x.abs().float().nan_to_num(nan=float("inf"))
    order = torch.sort(mag, dim=-1, descending=True, stable=True).indices[..., :k]
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask.scatter_(-1, order, True)
    return mask


def _reference_attention(q, kc, vc, kt, vt, scale):
    K, V = kc.to_dense().double(), vc.to_dense().double()
    if kt is not None:
        K, V = torch.cat([K, kt.double()], 2), torch.cat([V, vt.double()], 2)
    G = q.shape[1] // K.shape[1]
    K, V = K.repeat_interleave(G, 1), V.repeat_interleave(G, 1)
    s = (q.double() @ K.transpose(-1, -2)) * scale
    out = F.scaled_dot_product_attention(q.double(), K, V, scale=scale)
    return out, torch.logsumexp(s, -1)


# ---- format ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D,sparsity", [(64, 0.5), (80, 0.7), (96, 0.3), (128, 0.7), (256, 0.9), (16, 0.0)])
def test_compress_exact_and_tie_rule(dtype, D, sparsity):
    torch.manual_seed(D)
    # few distinct magnitudes with both signs: many ties, plus -0.0
    x = (torch.randint(-3, 4, (2, 3, 9, D)).to(dtype) * 0.5)
    x[0, 0, 0, :3] = -0.0
    c = kv.compress(x, sparsity)
    k = kv.kept_per_token(D, sparsity)
    assert c.k == k and c.shape == x.shape and c.dtype == dtype
    mask = _reference_topk_mask(x, k)
    bits_ref = torch.from_numpy(__import__("numpy").packbits(mask.numpy(), axis=-1, bitorder="little"))
    assert torch.equal(c.bits, bits_ref)
    assert torch.equal(c.vals.view(-1, k), x[mask].view(-1, k))
    dense = c.to_dense()
    ref = torch.where(mask, x, torch.zeros_like(x))
    assert torch.equal(dense.view(torch.int16 if dtype != torch.float32 else torch.int32),
                       ref.view(torch.int16 if dtype != torch.float32 else torch.int32))  # -0.0 survives


def test_compress_random_matches_reference():
    x = torch.randn(1, 2, 33, 128)
    c = kv.compress(x, 0.7)
    assert c.k == 128 - 89
    assert torch.equal(c.to_dense(), torch.where(_reference_topk_mask(x, c.k), x, 0.0))


def test_nbytes_target():
    x = torch.randn(1, 8, 64, 128, dtype=torch.bfloat16)
    c = kv.compress(x, 0.7)
    assert c.nbytes == 8 * 64 * (16 + 39 * 2)
    assert c.nbytes <= 0.40 * x.nbytes


def test_append_equals_compressing_concatenation():
    torch.manual_seed(1)
    parts = [torch.randn(2, 3, n, 96, dtype=torch.float16) for n in (5, 1, 1, 30, 0, 1, 70)]
    c = kv.compress(parts[0], 0.6)
    storages = set()
    for p in parts[1:]:
        c.append(p)
        storages.add(c._bits.data_ptr())
    whole = kv.compress(torch.cat(parts, 2), 0.6)
    assert len(c) == whole.shape[2] == 108 and c.capacity >= 108
    assert torch.equal(c.bits, whole.bits) and torch.equal(c.vals, whole.vals)
    assert torch.equal(c.to_dense(), whole.to_dense())
    assert len(storages) <= 4  # geometric growth, not one copy per step


def test_append_one_token_at_a_time_is_amortised():
    c = kv.compress(torch.randn(1, 1, 1, 64), 0.5)
    grows = 0
    for _ in range(200):
        cap = c.capacity
        c.append(torch.randn(1, 1, 1, 64))
        grows += c.capacity != cap
    assert len(c) == 201 and grows <= 6


def test_state_dict_round_trip():
    c = kv.compress(torch.randn(1, 2, 9, 64, dtype=torch.bfloat16), 0.5)
    c.append(torch.randn(1, 2, 3, 64, dtype=torch.bfloat16))
    d = kv.BitmapKV.from_state_dict(c.state_dict())
    assert torch.equal(d.to_dense(), c.to_dense()) and d.sparsity == c.sparsity


# ---- decode attention -----------------------------------------------------------------------------
def _cases():
    # every head_dim x GQA ratio once, dtypes / T / tails / Lq rotated through them
    Ts, Lqs = (1, 7, 1000), (1, 3, 16, 2)
    for i, (D, G) in enumerate(itertools.product((64, 80, 96, 128, 256), (1, 2, 4, 8))):
        yield DTYPES[i % 3], D, G, Ts[i % 3], i % 2 == 0, Lqs[i % 4]


@pytest.mark.parametrize("dtype,D,G,T,tail,Lq", list(_cases()))
def test_decode_attention_matches_sdpa(isa, dtype, D, G, T, tail, Lq):
    torch.manual_seed(D * 31 + G * 7 + T)
    B, Hkv = 2 if T < 1000 else 1, 2
    k = torch.randn(B, Hkv, T, D, dtype=dtype)
    v = torch.randn(B, Hkv, T, D, dtype=dtype)
    q = torch.randn(B, Hkv * G, Lq, D, dtype=dtype)
    kc, vc = kv.compress(k, 0.7), kv.compress(v, 0.5)  # different sparsities for K and V
    kt = vt = None
    if tail:
        kt, vt = torch.randn(B, Hkv, 5, D, dtype=dtype), torch.randn(B, Hkv, 5, D, dtype=dtype)
    scale = D ** -0.5 * (1.5 if D == 64 else 1.0)
    out, lse = kv.decode_attention(q, kc, vc, k_tail=kt, v_tail=vt, scale=scale if D == 64 else None,
                                   return_lse=True)
    ref, ref_lse = _reference_attention(q, kc, vc, kt, vt, scale)
    assert out.dtype == dtype and out.shape == q.shape and lse.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, atol=TOL[dtype], rtol=TOL[dtype])
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_attention_long_split_and_sparsity_zero(isa, dtype):
    """T spanning several split-K chunks, peaked scores (large scale), and a dense (k = D) cache."""
    torch.manual_seed(7)
    k = torch.randn(1, 1, 3000, 128, dtype=dtype)
    v = torch.randn(1, 1, 3000, 128, dtype=dtype)
    q = torch.randn(1, 4, 1, 128, dtype=dtype)
    kc, vc = kv.compress(k, 0.0), kv.compress(v, 0.7)
    assert torch.equal(kc.to_dense(), k)
    out = kv.decode_attention(q, kc, vc, scale=0.5)
    ref, _ = _reference_attention(q, kc, vc, None, None, 0.5)
    torch.testing.assert_close(out.double(), ref, atol=TOL[dtype], rtol=TOL[dtype])


def test_decode_attention_after_append_and_tail_only(isa):
    torch.manual_seed(3)
    kc = kv.compress(torch.randn(1, 2, 3, 64), 0.5)
    vc = kv.compress(torch.randn(1, 2, 3, 64), 0.5)
    for _ in range(20):
        kc.append(torch.randn(1, 2, 1, 64))
        vc.append(torch.randn(1, 2, 1, 64))
    q = torch.randn(1, 4, 1, 64)
    kt, vt = torch.randn(1, 2, 4, 64), torch.randn(1, 2, 4, 64)
    out = kv.decode_attention(q, kc, vc, k_tail=kt, v_tail=vt)
    ref, _ = _reference_attention(q, kc, vc, kt, vt, 64 ** -0.5)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    # an empty compressed part: only the tail is attended
    ek = kv.compress(torch.randn(1, 2, 0, 64), 0.5)
    ev = kv.compress(torch.randn(1, 2, 0, 64), 0.5)
    out = kv.decode_attention(q, ek, ev, k_tail=kt, v_tail=vt)
    ref = F.scaled_dot_product_attention(q.double(), kt.double(), vt.double(), enable_gqa=True)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_opcheck():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 5, 32, dtype=torch.bfloat16)
    torch.library.opcheck(torch.ops.sparseops.kv_compress.default, (x, 10))
    bits, vals = torch.ops.sparseops.kv_compress(x, 10)
    torch.library.opcheck(torch.ops.sparseops.kv_decompress.default, (bits, vals, 4))
    torch.library.opcheck(torch.ops.sparseops.kv_validate.default, (bits, vals, 5))
    q = torch.randn(1, 4, 2, 32, dtype=torch.bfloat16)
    tail = torch.randn(1, 2, 3, 32, dtype=torch.bfloat16)
    torch.library.opcheck(torch.ops.sparseops.kv_decode_attention.default,
                          (q, bits, vals, bits, vals, 5, 0.3, tail, tail))
    torch.library.opcheck(torch.ops.sparseops.kv_decode_attention.default, (q, bits, vals, bits, vals, 5))


# ---- bad input ------------------------------------------------------------------------------------
def _pair(B=1, H=2, T=4, D=64, dtype=torch.float32, s=0.5):
    return kv.compress(torch.randn(B, H, T, D, dtype=dtype), s)


def test_bad_input_errors():
    kc, vc = _pair(), _pair()
    q = torch.randn(1, 4, 1, 64)
    with pytest.raises(RuntimeError, match="multiple of kv heads"):
        kv.decode_attention(torch.randn(1, 3, 1, 64), kc, vc)
    with pytest.raises(RuntimeError, match="head_dim differs"):
        kv.decode_attention(torch.randn(1, 4, 1, 32), kc, vc)
    with pytest.raises(RuntimeError, match="head_dim differs"):
        kv.decode_attention(q, kc, _pair(D=32))
    with pytest.raises(RuntimeError, match="must match"):
        kv.decode_attention(q.bfloat16(), kc, vc)
    with pytest.raises(RuntimeError, match="must match"):
        kv.decode_attention(q, kc, _pair(dtype=torch.float16))
    with pytest.raises(RuntimeError, match="heads"):
        kv.decode_attention(q, kc, _pair(H=4))
    with pytest.raises(RuntimeError, match="batch differs"):
        kv.decode_attention(torch.randn(2, 4, 1, 64), kc, vc)
    with pytest.raises(ValueError, match="tokens"):
        kv.decode_attention(q, kc, _pair(T=5))
    with pytest.raises(RuntimeError, match="both k_tail and v_tail"):
        kv.decode_attention(q, kc, vc, k_tail=torch.randn(1, 2, 3, 64))
    with pytest.raises(RuntimeError, match="tails must be"):
        kv.decode_attention(q, kc, vc, k_tail=torch.randn(1, 2, 3, 32), v_tail=torch.randn(1, 2, 3, 32))
    with pytest.raises(RuntimeError, match="k_tail has 3 tokens"):
        kv.decode_attention(q, kc, vc, k_tail=torch.randn(1, 2, 3, 64), v_tail=torch.randn(1, 2, 4, 64))
    with pytest.raises(RuntimeError, match="tail is"):
        kv.decode_attention(q, kc, vc, k_tail=torch.randn(1, 2, 3, 64).half(), v_tail=torch.randn(1, 2, 3, 64))
    with pytest.raises(RuntimeError, match="must be 4-D"):
        kv.decode_attention(torch.randn(4, 1, 64), kc, vc)
    with pytest.raises(RuntimeError, match="q on meta but k on cpu"):
        torch.ops.sparseops.kv_decode_attention(q.to("meta"), kc._bits, kc._vals, vc._bits, vc._vals, 4)
    with pytest.raises(TypeError, match="BitmapKV"):
        kv.decode_attention(q, torch.randn(1, 2, 4, 64), vc)
    with pytest.raises(ValueError, match="multiple of 16"):
        kv.compress(torch.randn(1, 1, 2, 40), 0.5)
    with pytest.raises(ValueError, match="sparsity"):
        kv.compress(torch.randn(1, 1, 2, 64), 1.0)
    with pytest.raises(RuntimeError, match="float32, bfloat16 or float16"):
        kv.compress(torch.randn(1, 1, 2, 64).double(), 0.5)
    with pytest.raises(ValueError, match="append expects"):
        kc.append(torch.randn(1, 2, 1, 32))
    with pytest.raises(ValueError, match="append got"):
        kc.append(torch.randn(1, 2, 1, 64).half())


def test_malformed_tensors_rejected_and_kernels_stay_inside_records(isa):
    kc = _pair(T=6)
    bits, vals = kc.bits.clone(), kc.vals.clone()
    kv.BitmapKV(bits, vals)  # well-formed: accepted
    bad = bits.clone()
    bad[0, 1, 4, 0] ^= 1  # one bit flipped: popcount k +- 1
    with pytest.raises(RuntimeError, match=r"malformed bitmap.*batch 0, head 1, token 4"):
        kv.BitmapKV(bad, vals)
    with pytest.raises(RuntimeError, match="disagree"):
        kv.BitmapKV(bits, vals[:, :, :5])
    with pytest.raises(RuntimeError, match="values per token"):
        kv.BitmapKV(bits, torch.randn(1, 2, 6, 65))
    with pytest.raises(RuntimeError, match="bits must be uint8"):
        kv.BitmapKV(bits.to(torch.int16), vals)
    with pytest.raises(RuntimeError, match="4-D"):
        kv.BitmapKV(bits[0], vals[0])
    with pytest.raises(RuntimeError, match="capacity"):
        kv.BitmapKV(bits, vals, length=7)
    with pytest.raises(RuntimeError, match="multiple of 16"):
        kv.BitmapKV(bits[..., :7], vals)
    # The raw op with every bit set (popcount D > k) must not read past a record: run it on a tiny
    # k and make sure the answer is finite (values beyond k are treated as zero).
    full = torch.full_like(bits, 0xFF)
    small = vals[..., :1].contiguous()
    q = torch.randn(1, 2, 1, 64)
    out, _ = torch.ops.sparseops.kv_decode_attention(q, full, small, full, small, 6)
    assert torch.isfinite(out).all()
    empty = torch.zeros_like(bits)
    out, _ = torch.ops.sparseops.kv_decode_attention(q, empty, vals, empty, vals, 6)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("isa", sparseops.cpu_isas())
def test_compress_every_isa_matches_reference(isa, dtype):
    """Each ISA's compressor (SIMD threshold search + LUT placement) gives the reference bitmap and values."""
    torch.manual_seed(3)
    x = torch.randn(3, 5, 41, 128).to(dtype)
    x[0, 0, :20] = (torch.randint(-3, 4, (20, 128)) * 0.5).to(dtype)  # many ties
    x[0, 1, 0, :4] = torch.tensor([-0.0, float("inf"), float("nan"), -float("inf")]).to(dtype)
    for s in (0.0, 0.3, 0.5, 0.7, 0.95):
        with sparseops.use_isa(isa):
            c = kv.compress(x, s)
        mask = _reference_topk_mask(x, c.k)
        bits_ref = torch.from_numpy(__import__("numpy").packbits(mask.numpy(), axis=-1, bitorder="little"))
        assert torch.equal(c.bits, bits_ref)
        iv = torch.int32 if dtype == torch.float32 else torch.int16
        assert torch.equal(c.vals.reshape(-1, c.k).view(iv), x[mask].reshape(-1, c.k).view(iv))
