"""Block-sparse attention vs a float64 SDPA reference with the expanded element mask, every dtype and ISA."""
import math
import random

import pytest
import torch
import torch.nn.functional as F

import sparseops
import sparseops.attention as A
from sparseops.attention import BlockMask

TOL = {torch.float32: (2e-5, 1e-4), torch.bfloat16: (3e-2, 3e-2), torch.float16: (4e-3, 4e-3)}


def element_mask(blocks, bq, bk, Lq, Lk, causal):
    """[B|1, H|1, Lq, Lk] bool: inside a selected block and (causal) key <= query."""
    qi = torch.arange(Lq) // bq
    kj = torch.arange(Lk) // bk
    m = blocks[:, :, qi][:, :, :, kj]
    if causal:
        m = m & (torch.arange(Lk)[None, :] <= torch.arange(Lq)[:, None])
    return m


def reference(q, k, v, blocks, bq, bk, causal, scale=None):
    """float64 SDPA with a bool attn_mask; rows with no visible key -> 0, lse -inf."""
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    q64, k64, v64 = (t.double() for t in (q, k, v))
    k64 = k64.repeat_interleave(Hq // Hkv, dim=1)
    v64 = v64.repeat_interleave(Hq // Hkv, dim=1)
    m = element_mask(blocks, bq, bk, Lq, Lk, causal).expand(B, Hq, Lq, Lk)
    out = F.scaled_dot_product_attention(q64, k64, v64, attn_mask=m, scale=scale)
    empty = ~m.any(-1)
    out = out.masked_fill(empty[..., None], 0.0)
    s = (q64 @ k64.transpose(-1, -2)) * (scale if scale is not None else 1 / math.sqrt(D))
    lse = s.masked_fill(~m, float("-inf")).logsumexp(-1)
    return out, lse, empty


def random_blocks(Bm, Hm, nqb, nkb, density, gen, empty_rows=True):
    blocks = torch.rand(Bm, Hm, nqb, nkb, generator=gen) < density
    if empty_rows and nqb > 1:
        blocks[0, 0, nqb // 2] = False  # a query block that sees nothing
    return blocks


def check(out, lse, ref, ref_lse, empty, dtype):
    atol, rtol = TOL[dtype]
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, atol=atol, rtol=rtol)
    assert torch.isneginf(lse[empty]).all()
    torch.testing.assert_close(lse[~empty].double(), ref_lse[~empty], atol=atol * 10, rtol=rtol)


def _cases():
    rng = random.Random(5)
    blocks = [(16, 16), (32, 64), (64, 32), (128, 128), (16, 128), (48, 80)]
    lens = [(100, 100), (77, 190), (200, 64), (128, 256), (33, 33)]
    heads = [(2, 2), (4, 2), (4, 1), (8, 1)]
    dims = [64, 72, 128, 256]
    out = []
    for i in range(14):
        out.append((blocks[i % len(blocks)], lens[i % len(lens)], heads[i % len(heads)], dims[i % len(dims)],
                    bool(i % 2), rng.choice([0.3, 0.6, 1.0])))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", _cases(), ids=lambda c: f"b{c[0][0]}x{c[0][1]}-L{c[1][0]}x{c[1][1]}-H{c[2][0]}/{c[2][1]}-D{c[3]}-c{int(c[4])}-d{c[5]}")
def test_vs_sdpa(isa, dtype, case):
    (bq, bk), (Lq, Lk), (Hq, Hkv), D, causal, density = case
    gen = torch.Generator().manual_seed(hash(case) % 1000 + 17)
    B = 2
    q = torch.randn(B, Hq, Lq, D, generator=gen).to(dtype)
    k = torch.randn(B, Hkv, Lk, D, generator=gen).to(dtype)
    v = torch.randn(B, Hkv, Lk, D, generator=gen).to(dtype)
    nqb, nkb = math.ceil(Lq / bq), math.ceil(Lk / bk)
    Bm, Hm = (B, Hq) if density < 1 else (1, 1)
    blocks = random_blocks(Bm, Hm, nqb, nkb, density, gen)
    out, lse = A.block_sparse_attention(q, k, v, blocks, block_size=(bq, bk), is_causal=causal, return_lse=True)
    ref, ref_lse, empty = reference(q, k, v, blocks, bq, bk, causal)
    check(out, lse, ref, ref_lse, empty, dtype)


def test_full_lists_scale_and_strides(isa):
    """Blocks split between the partial and the full list; a custom scale; non-contiguous q/k/v."""
    gen = torch.Generator().manual_seed(3)
    B, Hq, Hkv, Lq, Lk, D, bq, bk = 2, 4, 2, 90, 150, 64, 32, 16
    q = torch.randn(B, Lq, Hq, D, generator=gen).transpose(1, 2)  # [B, H, L, D] view with odd strides
    k = torch.randn(B, Lk, Hkv, D, generator=gen).transpose(1, 2)
    v = torch.randn(B, Lk, Hkv, D, generator=gen).transpose(1, 2)
    nqb, nkb = math.ceil(Lq / bq), math.ceil(Lk / bk)
    blocks = random_blocks(B, Hq, nqb, nkb, 0.5, gen)
    which = torch.rand(blocks.shape, generator=gen) < 0.5
    part, full = BlockMask.from_dense(blocks & which, (bq, bk)), BlockMask.from_dense(blocks & ~which, (bq, bk))
    bm = BlockMask(part.kv_num_blocks, part.kv_indices, full.kv_num_blocks, full.kv_indices, block_size=(bq, bk),
                   seq_lengths=(Lq, Lk))
    assert torch.equal(bm.to_dense(), blocks)
    for causal in (False, True):
        out, lse = A.block_sparse_attention(q, k, v, bm, is_causal=causal, scale=0.3, return_lse=True)
        ref, ref_lse, empty = reference(q, k, v, blocks, bq, bk, causal, scale=0.3)
        check(out, lse, ref, ref_lse, empty, torch.float32)


def test_causal_dense_matches_sdpa(isa):
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 2, 130, 64, generator=gen) for _ in range(3))
    blocks = torch.ones(1, 1, 3, 3, dtype=torch.bool)
    out = A.block_sparse_attention(q, k, v, blocks, block_size=64, is_causal=True)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=2e-5, rtol=1e-4)


def test_lse_merges_partial_results(isa):
    """Two disjoint halves of the key blocks, merged with their lse, equal the whole."""
    gen = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(1, 2, 96, 64, generator=gen) for _ in range(3))
    blocks = torch.ones(1, 1, 3, 6, dtype=torch.bool)
    left, right = blocks.clone(), blocks.clone()
    left[..., 3:] = False
    right[..., :3] = False
    o1, l1 = A.block_sparse_attention(q, k, v, left, block_size=(32, 16), return_lse=True)
    o2, l2 = A.block_sparse_attention(q, k, v, right, block_size=(32, 16), return_lse=True)
    o, l = A.block_sparse_attention(q, k, v, blocks, block_size=(32, 16), return_lse=True)
    lm = torch.logaddexp(l1, l2)
    merged = o1 * (l1 - lm).exp()[..., None] + o2 * (l2 - lm).exp()[..., None]
    torch.testing.assert_close(merged, o, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(lm, l, atol=2e-5, rtol=1e-5)


def test_all_empty_gives_zero(isa):
    q, k, v = (torch.randn(1, 1, 40, 64) for _ in range(3))
    out, lse = A.block_sparse_attention(q, k, v, torch.zeros(1, 1, 3, 3, dtype=torch.bool), block_size=16,
                                        return_lse=True)
    assert torch.equal(out, torch.zeros_like(out)) and torch.isneginf(lse).all()
    # Causal, Lq > Lk, first query block only lists a later key block: those rows see nothing.
    blocks = torch.zeros(1, 1, 3, 3, dtype=torch.bool)
    blocks[0, 0, 0, 2] = True
    out, lse = A.block_sparse_attention(q, k, v, blocks, block_size=16, is_causal=True, return_lse=True)
    assert torch.equal(out, torch.zeros_like(out)) and torch.isneginf(lse).all()


def test_block_mask_round_trip_and_sparsity():
    gen = torch.Generator().manual_seed(7)
    blocks = torch.rand(2, 3, 5, 7, generator=gen) < 0.4
    bm = BlockMask.from_dense(blocks, (32, 64))
    assert bm.kv_num_blocks.dtype == torch.int32 and bm.kv_indices.dtype == torch.int32
    assert bm.kv_indices.shape == (2, 3, 5, 7)
    assert torch.equal(bm.to_dense(), blocks)
    assert bm.sparsity() == pytest.approx(1 - blocks.float().mean().item())
    assert bm.shape == (2, 3, 160, 448)
    # Listed entries come first, ascending.
    row = bm.kv_indices[1, 2, 3, : int(bm.kv_num_blocks[1, 2, 3])]
    assert torch.equal(row, blocks[1, 2, 3].nonzero().flatten().int())


def test_flex_block_mask_interop(isa):
    fa = pytest.importorskip("torch.nn.attention.flex_attention")
    Lq = Lk = 256

    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    try:
        fbm = fa.create_block_mask(causal, B=None, H=None, Q_LEN=Lq, KV_LEN=Lk, device="cpu", BLOCK_SIZE=64,
                                   _compile=False)
    except Exception as e:  # pragma: no cover - depends on the torch build
        pytest.skip(f"create_block_mask unavailable on CPU: {e}")
    gen = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(1, 2, Lq, 64, generator=gen) for _ in range(3))
    out = A.block_sparse_attention(q, k, v, fbm, is_causal=True)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=2e-5, rtol=1e-4)
    bm = BlockMask.from_flex(fbm)
    assert bm.block_size == (64, 64)
    assert torch.equal(bm.to_dense()[0, 0], torch.ones(4, 4, dtype=torch.bool).tril())


def _lists(nqb=2, nkb=2, cap=2):
    num = torch.full((1, 1, nqb), 1, dtype=torch.int32)
    idx = torch.zeros(1, 1, nqb, cap, dtype=torch.int32)
    return num, idx


@pytest.mark.parametrize("mutate,match", [
    (lambda a: a.update(num=torch.full((1, 1, 2), 3, dtype=torch.int32)), r"kv_num_blocks\[0, 0, 0\] = 3 is outside"),
    (lambda a: a.update(num=torch.full((1, 1, 2), -1, dtype=torch.int32)), r"is outside \[0, capacity=2\]"),
    (lambda a: a["idx"].fill_(2), r"kv_indices\[0, 0, 0, 0\] is outside \[0, num_kv_blocks=2\)"),
    (lambda a: a["idx"].fill_(-5), r"is outside \[0, num_kv_blocks"),
    (lambda a: a.update(num=torch.full((1, 1, 2), 2, dtype=torch.int32)), r"repeats a key block"),
    (lambda a: a.update(num=torch.ones(1, 1, 3, dtype=torch.int32)), r"has 3 query blocks but Lq and block_q give 2"),
    (lambda a: a.update(num=a["num"].long()), r"must be int32"),
    (lambda a: a.update(bq=24), r"multiples of 16 in \[16, 256\]"),
    (lambda a: a.update(bk=512), r"multiples of 16 in \[16, 256\]"),
    (lambda a: a.update(k=a["k"][..., :32], v=a["v"][..., :32]), r"head_dim of q \(64\) and k/v \(32\) differ"),
    (lambda a: a.update(q=torch.randn(1, 3, 64, 64), k=torch.randn(1, 2, 64, 64), v=torch.randn(1, 2, 64, 64)),
     r"multiple of the key/value heads"),
    (lambda a: a.update(q=a["q"].double()), r"must share a dtype"),
    (lambda a: a.update(idx=torch.zeros(1, 2, 2, 2, dtype=torch.int32)), r"has 2 heads but q has 1"),
])
def test_bad_input(mutate, match):
    num, idx = _lists()
    args = dict(q=torch.randn(1, 1, 64, 64), k=torch.randn(1, 1, 64, 64), v=torch.randn(1, 1, 64, 64),
                num=num, idx=idx, bq=32, bk=32)
    mutate(args)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.sparseops.block_sparse_attention(args["q"], args["k"], args["v"], args["num"], args["idx"], None,
                                                   None, args["bq"], args["bk"], False, None)


def test_bad_python_input():
    q = torch.randn(1, 1, 64, 64)
    with pytest.raises(ValueError, match="needs block_size"):
        A.block_sparse_attention(q, q, q, torch.ones(1, 1, 2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="multiples of 16"):
        BlockMask.from_dense(torch.ones(1, 1, 2, 2, dtype=torch.bool), (8, 16))
    with pytest.raises(ValueError, match="bool tensor"):
        BlockMask.from_dense(torch.ones(1, 1, 2, 2), 16)
    with pytest.raises(TypeError, match="block_mask must be"):
        A.block_sparse_attention(q, q, q, [[1]])
    num, idx = _lists()
    with pytest.raises(RuntimeError, match="full_kv_num_blocks and full_kv_indices must be given together"):
        torch.ops.sparseops.block_sparse_attention(q, q, q, num, idx, num, None, 32, 32, False, None)


def test_opcheck():
    gen = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(1, 2, 48, 64, generator=gen) for _ in range(3))
    bm = BlockMask.from_dense(torch.rand(1, 2, 3, 3, generator=gen) < 0.7, 16)
    torch.library.opcheck(torch.ops.sparseops.block_sparse_attention,
                          (q, k, v, bm.kv_num_blocks, bm.kv_indices, None, None, 16, 16, True, None),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


# ---- mask builders ---------------------------------------------------------------------------------------
def _blocks_of(elem, bq, bk):
    """Block-level any() of an element mask [Lq, Lk]."""
    Lq, Lk = elem.shape
    nq, nk = math.ceil(Lq / bq), math.ceil(Lk / bk)
    e = torch.zeros(nq * bq, nk * bk, dtype=torch.bool)
    e[:Lq, :Lk] = elem
    return e.view(nq, bq, nk, bk).any(3).any(1)


@pytest.mark.parametrize("Lq,Lk,bq,bk", [(100, 100, 32, 16), (70, 130, 16, 64), (128, 64, 64, 32)])
def test_causal_and_window_builders(Lq, Lk, bq, bk):
    i, j = torch.arange(Lq)[:, None], torch.arange(Lk)[None, :]
    bm = A.causal_block_mask(Lq, Lk, (bq, bk))
    assert torch.equal(bm.to_dense()[0, 0], _blocks_of(j <= i, bq, bk))
    bm = A.a_shape(Lq, Lk, sink=5, window=20, block_size=(bq, bk))
    want = (j <= i) & ((j > i - 20) | (j < 5))
    assert torch.equal(bm.to_dense()[0, 0], _blocks_of(want, bq, bk))
    gen = torch.Generator().manual_seed(10)
    q = torch.randn(1, 2, Lq, 64, generator=gen)
    k, v = (torch.randn(1, 2, Lk, 64, generator=gen) for _ in range(2))
    out = A.block_sparse_attention(q, k, v, A.causal_block_mask(Lq, Lk, (bq, bk)), is_causal=True)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=(j <= i)).masked_fill(~(j <= i).any(-1)[:, None], 0)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


# topk_blocks / vertical_slash / a_shape in depth: tests/test_attention_masks.py


def test_torch_compile_fullgraph():
    """The fake kernel lets torch.compile trace the op (aot_eager: no C++ codegen, fast)."""
    gen = torch.Generator().manual_seed(12)
    q, k, v = (torch.randn(1, 2, 100, 64, generator=gen) for _ in range(3))
    bm = A.causal_block_mask(100, 100, 32)

    def f(q, k, v, num, idx):
        return A.block_sparse_attention(q, k, v, BlockMask(num, idx, block_size=32, seq_lengths=(100, 100)),
                                        is_causal=True)

    out = torch.compile(f, backend="aot_eager", fullgraph=True)(q, k, v, bm.kv_num_blocks, bm.kv_indices)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=2e-5, rtol=1e-4)


# transformers integration (sparseops.integrations.hf): tests/test_attention_module.py
