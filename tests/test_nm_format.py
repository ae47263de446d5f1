"""prune / wanda_score / compress / NMWeight: the "nm-bitmask" v1 format, its round trips and its checks."""
import sys

import numpy as np
import pytest
import torch

from sparseops import nm

PATTERNS = [(1, 2), (1, 4), (2, 4), (3, 4), (2, 8), (4, 8), (1, 16), (8, 16)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def bits(t):
    """Exact bit patterns (so -0.0 != +0.0 and NaN == NaN)."""
    return t.view({torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}[t.dtype])


# ---- prune ----

@pytest.mark.parametrize("n,m", PATTERNS, ids=str)
def test_prune_keeps_largest_magnitudes(n, m):
    w = torch.randn(9, 4 * m, generator=torch.Generator().manual_seed(n * 100 + m))
    p = nm.prune(w, n, m)
    assert p.shape == w.shape and p.dtype == w.dtype
    g, pg = w.reshape(9, 4, m), p.reshape(9, 4, m)
    kept = pg != 0
    assert (kept.sum(-1) == n).all()
    assert torch.equal(pg[kept], g[kept])  # kept entries untouched
    # every kept |w| >= every dropped |w| within its group
    lo = torch.where(kept, g.abs(), torch.inf).amin(-1)
    hi = torch.where(~kept, g.abs(), -torch.inf).amax(-1)
    assert (lo >= hi).all()


def test_prune_ties_lower_index_wins_and_is_deterministic():
    w = torch.tensor([[1.0, -1.0, 1.0, 1.0, 2.0, 0.5, 0.5, 0.5]])
    assert torch.equal(nm.prune(w, 2, 4), torch.tensor([[1.0, -1.0, 0, 0, 2.0, 0.5, 0, 0]]))
    big = torch.randint(-2, 3, (64, 128)).float()  # many ties
    first = nm.prune(big, 2, 8)
    for _ in range(3):
        assert torch.equal(nm.prune(big, 2, 8), first)
    # the rule itself: among equal magnitudes the lower column is kept
    ref = np.zeros_like(big.numpy())
    for r in range(64):
        for gi in range(16):
            grp = big[r, gi * 8:(gi + 1) * 8].abs().numpy()
            order = sorted(range(8), key=lambda j: (-grp[j], j))[:2]
            for j in order:
                ref[r, gi * 8 + j] = big[r, gi * 8 + j]
    assert torch.equal(first, torch.from_numpy(ref))


def test_prune_with_score_and_nd_shape():
    w = torch.randn(2, 3, 16)
    score = torch.rand(2, 3, 16)
    p = nm.prune(w, 1, 4, score=score)
    keep = torch.zeros_like(score, dtype=torch.bool).reshape(-1, 4)
    keep[torch.arange(keep.shape[0]), score.reshape(-1, 4).argmax(-1)] = True
    assert torch.equal(p, torch.where(keep.reshape(w.shape), w, 0.0))


def test_prune_errors():
    with pytest.raises(ValueError, match=r"shape \(4, 10\).*multiple of m=4"):
        nm.prune(torch.randn(4, 10), 2, 4)
    with pytest.raises(ValueError, match="unsupported pattern 4:4"):
        nm.prune(torch.randn(4, 8), 4, 4)
    with pytest.raises(ValueError, match="unsupported pattern 1:3"):
        nm.prune(torch.randn(4, 9), 1, 3)
    with pytest.raises(ValueError, match="score has shape"):
        nm.prune(torch.randn(4, 8), 2, 4, score=torch.rand(4, 4))


def test_wanda_score_formula():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(5, 8, generator=g)
    x = torch.randn(40, 8, generator=g)  # calibration activations
    norms = x.double().pow(2).sum(0).sqrt()  # ||X_j||_2, with the square root
    s = nm.wanda_score(w, norms.float())
    torch.testing.assert_close(s.double(), w.double().abs() * norms.unsqueeze(0), rtol=1e-6, atol=0)
    # Wanda can keep a smaller weight on a louder channel
    w2 = torch.tensor([[1.0, 0.5, 0.1, 0.2]])
    assert torch.equal(nm.prune(w2, 1, 4, score=nm.wanda_score(w2, torch.tensor([1.0, 10.0, 1.0, 1.0]))),
                       torch.tensor([[0.0, 0.5, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="activation_norms has shape"):
        nm.wanda_score(w, torch.ones(7))


# ---- compress / to_dense ----

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,m", PATTERNS, ids=str)
def test_round_trip_bit_exact(n, m, dtype):
    g = torch.Generator().manual_seed(m * 10 + n)
    O, K = 7, 3 * m + (16 if m < 16 else 0)
    w = nm.prune(torch.randn(O, K, generator=g).to(dtype), n, m)
    # groups with fewer than n nonzeros; -0.0 stored as padding or kept; a NaN kept
    w[0, :m] = 0.0
    w[1, :m] = 0.0
    w[1, :n] = -0.0
    w[2, :m] = 0.0
    w[2, m - 1] = 1.5
    if n > 1:
        w[2, 0] = -0.0  # padding for a group with one nonzero
    w[3, m - 1] = 0.0
    w[4, m:2 * m] = 0.0
    w[4, m + 1] = -2.0
    w[5, 0], w[5, 1:m] = float("nan"), 0.0
    c = nm.compress(w, n, m)
    assert c.values.shape == (O, K // m * n) and c.mask.shape == (O, (K + 7) // 8)
    assert c.values.dtype == dtype and c.mask.dtype == torch.uint8
    assert torch.equal(bits(c.to_dense()), bits(w))
    # the torch fallback (used on devices without a native kernel) agrees bit for bit
    keep = nm._unpack_bits(c.mask)[:, :K]
    fb = torch.zeros_like(w)
    fb[keep] = c.values.reshape(-1)
    assert torch.equal(bits(fb), bits(w))
    # mask matches numpy.packbits(bitorder="little") of the kept positions
    assert np.array_equal(c.mask.numpy(), np.packbits(keep.numpy(), axis=-1, bitorder="little"))
    assert (keep.reshape(O, -1, m).sum(-1) == n).all()
    # a -0.0 where the format keeps nothing (a group already holding n values) comes back as +0.0
    w2 = w.clone()
    w2[6, :m] = 0.0
    w2[6, :n] = 1.0
    w2[6, m - 1] = -0.0
    d2 = nm.compress(w2, n, m).to_dense()
    assert torch.equal(d2[6], w2[6]) and bits(d2)[6, m - 1] == 0 and bits(w2)[6, m - 1] != 0


def test_compress_layout_documented_example():
    w = torch.tensor([[0.0, 3.0, 0.0, -0.0, 1.0, 0.0, 2.0, 0.0, 5.0, 6.0, 0.0, 0.0]])
    c = nm.compress(w, 2, 4)
    # group 0: one nonzero (col 1) + lowest-index zero (col 0); group 2 the two nonzeros
    assert bits(c.values).tolist() == bits(torch.tensor([[0.0, 3.0, 1.0, 2.0, 5.0, 6.0]])).tolist()
    assert c.mask.tolist() == [[0b01010011, 0b0011]]  # cols 0,1,4,6 | cols 8,9
    c2 = nm.compress(torch.tensor([[-0.0, 0.0, 0.0, 7.0]]), 2, 4)  # -0.0 is padding: stored as is
    assert bits(c2.values).tolist() == bits(torch.tensor([[-0.0, 7.0]])).tolist()


def test_compress_names_row_and_group():
    w = nm.prune(torch.randn(6, 32), 2, 4)
    w[4, 13] = 1.0 if w[4, 13] == 0 else w[4, 13]
    w[4, 12:16] = torch.tensor([1.0, 2.0, 3.0, 0.0])
    with pytest.raises(ValueError, match=r"row 4, group 3 \(columns 12\.\.15\) has 3 nonzeros"):
        nm.compress(w, 2, 4)
    w2 = torch.zeros(3, 16)
    w2[2, 8:16] = -0.0
    w2[2, 8] = 1.0
    w2[2, 9] = float("nan")  # NaN is a value: it counts
    w2[2, 10] = 1.0
    with pytest.raises(ValueError, match=r"row 2, group 2"):
        nm.compress(w2, 2, 4)
    with pytest.raises(ValueError, match="2-D"):
        nm.compress(torch.zeros(2, 3, 4), 2, 4)
    with pytest.raises(TypeError, match="float64"):
        nm.compress(torch.zeros(2, 4, dtype=torch.float64), 2, 4)


def test_nmweight_properties_and_to():
    w = nm.prune(torch.randn(10, 64), 2, 4)
    c = nm.compress(w, 2, 4)
    assert (c.n, c.m, c.shape, c.dtype, c.device) == (2, 4, torch.Size([10, 64]), torch.float32, torch.device("cpu"))
    assert c.nbytes == 10 * 32 * 4 + 10 * 8
    h = c.to(torch.bfloat16)
    assert h.dtype == torch.bfloat16 and torch.equal(h.mask, c.mask)
    assert torch.equal(h.to_dense(), w.to(torch.bfloat16))
    meta = c.to("meta")
    assert meta.device.type == "meta" and meta.shape == c.shape
    assert meta.to_dense().shape == (10, 64)
    assert "2:4" in repr(c)


# ---- validation of untrusted tensors ----

def _good(n=2, m=4, O=5, K=24, dtype=torch.float32):
    return nm.compress(nm.prune(torch.randn(O, K), n, m).to(dtype), n, m)


def test_validate_rejects_malformed_tensors():
    c = _good()
    v, mk = c.values, c.mask
    with pytest.raises(ValueError, match="values has shape"):
        nm.NMWeight(v[:, :-1], mk, 2, 4, 24)
    with pytest.raises(ValueError, match="mask has shape"):
        nm.NMWeight(v, mk[:, :-1], 2, 4, 24)
    with pytest.raises(ValueError, match="mask has shape"):
        nm.NMWeight(v, mk[:-1], 2, 4, 24)
    with pytest.raises(TypeError, match="mask must be uint8"):
        nm.NMWeight(v, mk.to(torch.int8), 2, 4, 24)
    with pytest.raises(TypeError, match="values dtype torch.float64"):
        nm.NMWeight(v.double(), mk, 2, 4, 24)
    with pytest.raises(ValueError, match="in_features=26 is not a positive multiple"):
        nm.NMWeight(v, mk, 2, 4, 26)
    with pytest.raises(ValueError, match="unsupported pattern 2:3"):
        nm.NMWeight(v, mk, 2, 3, 24)
    too_many = mk.clone()
    too_many[3, 1] |= 0xFF  # columns 8..15 all set: groups 2 and 3 of row 3 keep 4
    with pytest.raises(ValueError, match=r"row 3, group 2 \(columns 8\.\.11\) does not keep exactly 2 of 4"):
        nm.NMWeight(v, too_many, 2, 4, 24)
    too_few = mk.clone()
    too_few[1, 2] = 0  # columns 16..23 none kept
    with pytest.raises(ValueError, match=r"row 1, group 4"):
        nm.NMWeight(v, too_few, 2, 4, 24)
    # bits past in_features (K=20 -> 3 mask bytes, bits 20..23 are padding)
    c20 = _good(K=20)
    past = c20.mask.clone()
    past[2, 2] |= 0x80
    with pytest.raises(ValueError, match="row 2 has bits set past in_features=20"):
        nm.NMWeight(c20.values, past, 2, 4, 20)
    with pytest.raises(ValueError, match="values on cpu but mask on meta"):
        nm.NMWeight(v, mk.to("meta"), 2, 4, 24)


def test_validate_torch_fallback_matches_native():
    c = _good(K=20)
    mk = c.mask.clone()
    mk[2, 1] ^= 0x01  # row 2, column 8: group 2 now keeps 1 or 3
    with pytest.raises(ValueError, match="row 2, group 2"):
        nm.validate(c.values, mk, 2, 4, 20)
    with pytest.raises(ValueError, match="row 2, group 2"):
        nm._validate_torch(mk, 2, 4, 20)
    mk2 = c.mask.clone()
    mk2[0, 2] |= 0x40
    with pytest.raises(ValueError, match="row 0 has bits set past"):
        nm._validate_torch(mk2, 2, 4, 20)
    nm._validate_torch(c.mask, 2, 4, 20)  # a good mask passes


def test_linear_bad_inputs_raise_clear_errors():
    c = _good(K=24)
    x = torch.randn(3, 24)
    with pytest.raises(RuntimeError, match="x is BFloat16 but the weight is Float"):
        nm.linear(x.bfloat16(), c)
    with pytest.raises(RuntimeError, match=r"x has shape \[3, 20\] but the weight has in_features=24"):
        nm.linear(torch.randn(3, 20), c)
    with pytest.raises(RuntimeError, match="bias has shape"):
        nm.linear(x, c, torch.randn(4))
    with pytest.raises(RuntimeError, match="bias is"):
        nm.linear(x, c, torch.randn(5, dtype=torch.float16))
    with pytest.raises(TypeError, match="must be an NMWeight"):
        nm.linear(x, torch.randn(5, 24))
    with pytest.raises(RuntimeError, match="x on meta but the weight on cpu|CPU kernel got x on meta"):
        nm.linear(x.to("meta"), c)
    # a malformed mask that bypassed NMWeight still cannot make the kernel read out of bounds
    bad = c.mask.clone()
    bad[4, 0] = 0xFF
    with pytest.raises(RuntimeError, match="malformed N:M mask in row 4"):
        torch.ops.sparseops.nm_linear(x, c.values, bad, 2, 4, 24, None)
    with pytest.raises(RuntimeError, match="row 4, group 0"):
        torch.ops.sparseops.nm_decompress(c.values, bad, 2, 4, 24)


def test_meta_device_linear_shapes():
    c = _good(K=24).to("meta")
    y = nm.linear(torch.empty(2, 7, 24, device="meta"), c)
    assert y.shape == (2, 7, 5) and y.device.type == "meta"


# ---- compressed-tensors interop ----

@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (8, 16)], ids=str)
def test_compressed_tensors_round_trip(n, m):
    w = nm.prune(torch.randn(6, 48).bfloat16(), n, m)
    c = nm.compress(w, n, m)
    d = c.to_compressed_tensors()
    assert set(d) == {"compressed", "bitmask", "shape"} and d["shape"].tolist() == [[6], [48]]  # as stored
    # the sparse-24-bitmask bitmask is numpy.packbits(little) of the nonzero pattern for 2:4 weights
    back = nm.NMWeight.from_compressed_tensors(d["compressed"], d["bitmask"], d["shape"], n=n, m=m)
    assert torch.equal(bits(back.to_dense()), bits(w))
    inferred = nm.NMWeight.from_compressed_tensors(d["compressed"], d["bitmask"], (6, 48))
    assert torch.equal(bits(inferred.to_dense()), bits(w))
    assert inferred.n * m == n * inferred.m


def test_compressed_tensors_from_numpy_packbits():
    """A checkpoint written the compressed-tensors way (numpy) loads as 2:4."""
    dense = nm.prune(torch.randn(4, 16), 2, 4)
    keep = (dense != 0).numpy()
    bitmask = torch.from_numpy(np.packbits(keep, axis=-1, bitorder="little"))
    compressed = dense[dense != 0].reshape(4, 8)
    wt = nm.NMWeight.from_compressed_tensors(compressed, bitmask, torch.tensor([4, 16]))
    assert (wt.n, wt.m) == (2, 4)
    assert torch.equal(wt.to_dense(), dense)
    bad = bitmask.clone()
    bad[1, 0] = 0x07  # 3 + 0 kept in the first two groups of 4: no 1:2, 2:4, 4:8 or 8:16 reading fits
    with pytest.raises(ValueError, match="no supported N:M pattern fits"):
        nm.NMWeight.from_compressed_tensors(compressed, bad, (4, 16))
    with pytest.raises(ValueError, match="row 1, group 0"):
        nm.NMWeight.from_compressed_tensors(compressed, bad, (4, 16), n=2, m=4)
    with pytest.raises(ValueError, match="compressed has shape"):
        nm.NMWeight.from_compressed_tensors(compressed[:3], bitmask, (4, 16))


# ---- torch.library.opcheck ----

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,m,O,K", [(2, 4, 5, 24), (1, 16, 3, 48), (3, 4, 7, 20)], ids=str)
def test_opcheck(n, m, O, K, dtype):
    c = _good(n, m, O, K, dtype)
    x = torch.randn(3, K).to(dtype)
    b = torch.randn(O).to(dtype)
    opcheck = torch.library.opcheck
    opcheck(torch.ops.sparseops.nm_linear.default, (x, c.values, c.mask, n, m, K, b))
    opcheck(torch.ops.sparseops.nm_linear.default, (x.requires_grad_(), c.values, c.mask, n, m, K, None))
    opcheck(torch.ops.sparseops.nm_decompress.default, (c.values, c.mask, n, m, K))
    opcheck(torch.ops.sparseops.nm_validate.default, (c.values, c.mask, n, m, K))


def test_nm_linear_backward_matches_dense():
    c = _good(K=24)
    x = torch.randn(4, 24, requires_grad=True)
    b = torch.randn(5, requires_grad=True)
    torch.ops.sparseops.nm_linear(x, c.values, c.mask, 2, 4, 24, b).square().sum().backward()
    x2, b2 = x.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    torch.nn.functional.linear(x2, c.to_dense(), b2).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(b.grad, b2.grad)


def test_pure_torch_paths_match_native(monkeypatch):
    """Devices without a native kernel use torch code for validate / to_dense / linear: same results."""
    c = _good(3, 4, 9, 40, torch.bfloat16)
    x = torch.randn(6, 40).bfloat16()
    b = torch.randn(9).bfloat16()
    native_dense, native_y = c.to_dense(), nm.linear(x, c, b)
    monkeypatch.setattr(nm, "_has_kernel", lambda op, device: False)
    assert torch.equal(bits(c.to_dense()), bits(native_dense))
    torch.testing.assert_close(nm.linear(x, c, b), native_y, rtol=1e-2, atol=1e-2)
    nm.NMWeight(c.values, c.mask, 3, 4, 40)  # validates through _validate_torch
    bad = c.mask.clone()
    bad[7, 3] ^= 0x10  # row 7, column 28: group 7
    with pytest.raises(ValueError, match="row 7, group 7"):
        nm.NMWeight(c.values, bad, 3, 4, 40)


def test_large_weights_live_on_huge_page_aligned_memory():
    from sparseops import _memory
    w = nm.prune(torch.randn(1024, 2048), 2, 4)
    c = nm.compress(w, 2, 4)  # values: 4 MiB
    assert c.values.nbytes >= _memory.MIN_BYTES
    if sys.platform.startswith("linux"):
        assert c.values.data_ptr() % (2 << 20) == 0
    assert torch.equal(c.to_dense(), w)
    small = _memory.empty((3, 5), torch.float16, "cpu")
    assert small.shape == (3, 5) and small.dtype == torch.float16
    big = _memory.empty((1 << 20, 3), torch.float32, "cpu")
    assert big.shape == (1 << 20, 3) and big.is_contiguous()
    big.fill_(2.0)
    assert float(big.sum()) == 2.0 * 3 * (1 << 20)
