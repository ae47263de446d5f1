"""Mask builders (sparseops.attention.masks): properties against brute-force element masks, the kernel with
their masks against SDPA, FlexAttention BlockMask round trips, bad input, and cost vs the attention."""
import math
import time

import pytest
import torch
import torch.nn.functional as F

import sparseops.attention as A
from sparseops.attention import BlockMask


def blocks_of(elem, bq, bk):
    """Block-level any() of an element mask [..., Lq, Lk]."""
    *lead, Lq, Lk = elem.shape
    nq, nk = math.ceil(Lq / bq), math.ceil(Lk / bk)
    e = torch.zeros(*lead, nq * bq, nk * bk, dtype=torch.bool)
    e[..., :Lq, :Lk] = elem
    return e.view(*lead, nq, bq, nk, bk).any(-1).any(-2)


def expand(blocks, bq, bk, Lq, Lk, causal):
    """Element mask of a block mask: inside a listed block and (causal) key <= query."""
    m = blocks[..., torch.arange(Lq) // bq, :][..., torch.arange(Lk) // bk]
    if causal:
        m = m & (torch.arange(Lk)[None, :] <= torch.arange(Lq)[:, None])
    return m


def sdpa_masked(q, k, v, elem):
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    out = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=elem)
    return out.masked_fill(~elem.any(-1, keepdim=True), 0.0)


def rand_qkv(B, Hq, Hkv, Lq, Lk, D, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, Hq, Lq, D, generator=g), torch.randn(B, Hkv, Lk, D, generator=g),
            torch.randn(B, Hkv, Lk, D, generator=g))


# ---- a_shape ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("Lq,Lk,bq,bk,sink,window", [(300, 300, 32, 16, 20, 50), (200, 200, 64, 64, 0, 64),
                                                     (130, 260, 16, 64, 70, 33), (256, 128, 64, 32, 1, 1)])
def test_a_shape_is_sinks_plus_window_rounded_to_blocks(Lq, Lk, bq, bk, sink, window):
    i, j = torch.arange(Lq)[:, None], torch.arange(Lk)[None, :]
    want = (j <= i) & ((j > i - window) | (j < sink))
    bm = A.a_shape(Lq, Lk, sink=sink, window=window, block_size=(bq, bk))
    dense = bm.to_dense()
    assert dense.shape == (1, 1, math.ceil(Lq / bq), math.ceil(Lk / bk)) and bm.seq_lengths == (Lq, Lk)
    assert torch.equal(dense[0, 0], blocks_of(want, bq, bk))
    # every wanted element is inside a listed block, and the kernel's causal predicate keeps it
    assert not (want & ~expand(dense[0, 0], bq, bk, Lq, Lk, True)).any()
    if sink:
        assert dense[0, 0, :, 0].all()                   # the sink block in every row


def test_a_shape_dense_window_is_the_causal_mask():
    assert torch.equal(A.a_shape(500, 500, sink=0, window=500, block_size=64).to_dense(),
                       A.causal_block_mask(500, 500, 64).to_dense())


def test_a_shape_attention_matches_sdpa():
    q, k, v = rand_qkv(2, 4, 2, 200, 200, 64, 1)
    bm = A.a_shape(200, 200, sink=16, window=40, block_size=32)
    out = A.block_sparse_attention(q, k, v, bm, is_causal=True)
    ref = sdpa_masked(q, k, v, expand(bm.to_dense(), 32, 32, 200, 200, True))
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-4)


# ---- topk_blocks ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_pool_of_16bit_input_in_head_slices_is_exact(dtype):
    from sparseops.attention.masks import _pool
    x = torch.randn(1, 5, 16384 + 40, 128, generator=torch.Generator().manual_seed(3)).to(dtype)  # > 1 slice
    want = torch.cat([x[:, :, :16384].reshape(1, 5, 256, 64, 128).sum(3, dtype=torch.float32) / 64,
                      x[:, :, 16384:].sum(2, keepdim=True, dtype=torch.float32) / 40], dim=2)
    assert torch.equal(_pool(x, 64), want)


def _pooled_scores(q, k, bq, bk):
    def pool(x, b):
        n = math.ceil(x.shape[2] / b)
        return torch.stack([x[:, :, i * b:(i + 1) * b].double().mean(2) for i in range(n)], 2)
    g = q.shape[1] // k.shape[1]
    return pool(q, bq) @ pool(k, bk).repeat_interleave(g, 1).transpose(-1, -2)


@pytest.mark.parametrize("keep", [0.3, 0.05, 1.0, 2, 100])
@pytest.mark.parametrize("causal", [True, False])
def test_topk_keep_is_honoured(keep, causal):
    Lq, Lk, bq, bk = 300, 280, 32, 16
    q, k, _ = rand_qkv(2, 4, 2, Lq, Lk, 32, 2)
    dense = A.topk_blocks(q, k, keep=keep, block_size=(bq, bk), is_causal=causal).to_dense()
    nq, nk = math.ceil(Lq / bq), math.ceil(Lk / bk)
    assert dense.shape == (2, 4, nq, nk)
    i, j = torch.arange(Lq)[:, None], torch.arange(Lk)[None, :]
    allowed = blocks_of(j <= i, bq, bk) if causal else torch.ones(nq, nk, dtype=torch.bool)
    # diagonal: key == query (queries past the last key: the last key, which they see)
    diag = blocks_of(j == i.clamp(max=Lk - 1), bq, bk) if causal else torch.zeros(nq, nk, dtype=torch.bool)
    assert not (dense & ~allowed).any()
    assert (dense | ~diag).all()                                         # the diagonal blocks are kept
    n = allowed.sum(-1)
    want = n.clamp(max=keep) if isinstance(keep, int) else torch.ceil(n * keep - 1e-9).clamp(min=1).long()
    want = torch.maximum(want, diag.sum(-1))
    assert torch.equal(dense.sum(-1), want.expand(2, 4, nq))             # the count, exactly
    # the kept non-forced blocks score at least as high as every dropped eligible block
    s = _pooled_scores(q, k, bq, bk)
    free = allowed & ~diag
    kept_min = s.masked_fill(~(dense & free), math.inf).amin(-1)
    dropped_max = s.masked_fill(~(free & ~dense), -math.inf).amax(-1)
    assert (kept_min >= dropped_max - 1e-5).all()


def test_topk_attention_matches_sdpa():
    q, k, v = rand_qkv(1, 8, 2, 256, 256, 64, 3)
    bm = A.topk_blocks(q, k, keep=0.25, block_size=(32, 64), is_causal=True)
    out = A.block_sparse_attention(q, k, v, bm, is_causal=True)
    ref = sdpa_masked(q, k, v, expand(bm.to_dense(), 32, 64, 256, 256, True))
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-4)


# ---- vertical_slash ---------------------------------------------------------------------------------------
def _vs_reference(q, k, last_q, n_vertical, n_slash, bq, bk, causal):
    """The definition, with dense element tensors and loops (small shapes only)."""
    B, Hq, Lq, D = q.shape
    Lk = k.shape[2]
    kk = k.repeat_interleave(Hq // k.shape[1], 1).double()
    qi = torch.arange(Lq - last_q, Lq)
    s = (q[:, :, Lq - last_q:].double() @ kk.transpose(-1, -2)) / math.sqrt(D)
    if causal:
        s = s.masked_fill(torch.arange(Lk)[None, :] > qi[:, None], -math.inf)
    p = s.softmax(-1)
    out = torch.zeros(B, Hq, math.ceil(Lq / bq), math.ceil(Lk / bk), dtype=torch.bool)
    i, j = torch.arange(Lq)[:, None], torch.arange(Lk)[None, :]
    for b in range(B):
        for h in range(Hq):
            vert = p[b, h].sum(0)
            vert[0] = math.inf
            cols = vert.topk(min(max(n_vertical, 1), Lk)).indices
            offs = {}
            for r, qq in enumerate(qi.tolist()):
                for jj in range(Lk):
                    offs[qq - jj] = offs.get(qq - jj, 0.0) + float(p[b, h, r, jj])
            offs[0] = math.inf
            cand = [d for d in range(-(Lk - 1), Lq) if not causal or d >= 0]
            top = sorted(cand, key=lambda d: -offs.get(d, 0.0))[:max(n_slash, 1)]
            elem = torch.zeros(Lq, Lk, dtype=torch.bool)
            elem[:, cols] = True
            for d in top:
                elem |= (i - j) == d
            if causal:
                elem &= j <= i
            out[b, h] = blocks_of(elem, bq, bk)
    return out


@pytest.mark.parametrize("Lq,Lk,bq,bk,causal", [(160, 160, 32, 32, True), (100, 150, 16, 32, False),
                                                (192, 192, 64, 16, True)])
def test_vertical_slash_matches_the_definition(Lq, Lk, bq, bk, causal):
    q, k, _ = rand_qkv(1, 4, 2, Lq, Lk, 32, 4)
    q, k = q * 3, k * 3  # peaky attention: clear winners (random ties would make the top sets arbitrary)
    bm = A.vertical_slash(q, k, last_q=24, n_vertical=5, n_slash=6, block_size=(bq, bk), is_causal=causal)
    assert torch.equal(bm.to_dense(), _vs_reference(q, k, 24, 5, 6, bq, bk, causal))


def test_vertical_slash_finds_planted_column_and_diagonal():
    L, D, bs, col, off = 512, 64, 32, 200, 96
    g = torch.Generator().manual_seed(5)
    q = torch.randn(1, 2, L, D, generator=g) * 0.1
    k = torch.randn(1, 2, L, D, generator=g) * 0.1
    u = torch.randn(D, generator=g)
    q[:, 0] += u                             # head 0: every query likes the direction u ...
    k[:, 0, col] = 4 * u                     # ... which key `col` holds: a heavy column
    q[:, 1] = torch.randn(L, D, generator=g)
    k[:, 1, : L - off] = q[:, 1, off:]       # head 1: key j echoes query j + off: a heavy diagonal
    bm = A.vertical_slash(q, k, last_q=64, n_vertical=2, n_slash=2, block_size=bs)
    dense = bm.to_dense()[0]
    nb = L // bs
    rows = torch.arange(nb)
    assert dense[0, col // bs:, col // bs].all()                       # the column, in every later row
    assert dense[1, rows[off // bs + 1:], rows[off // bs + 1:] - off // bs].all()   # the diagonal
    assert dense[:, rows, rows].all() and dense[:, :, 0].all()         # always: main diagonal, first key
    assert not (dense & ~torch.ones(nb, nb, dtype=torch.bool).tril()).any()   # causal
    assert 1 - bm.sparsity() < 0.25                                    # and little else
    q2, v = q.clone(), torch.randn(1, 2, L, D, generator=g)
    out = A.block_sparse_attention(q2, k, v, bm, is_causal=True)
    ref = sdpa_masked(q2, k, v, expand(bm.to_dense(), bs, bs, L, L, True))
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-4)


# ---- FlexAttention interop -------------------------------------------------------------------------------
flex = pytest.importorskip("torch.nn.attention.flex_attention")


@pytest.mark.parametrize("causal", [True, False])
def test_flex_round_trip_and_same_output(causal):
    Lq = Lk = 200  # not a multiple of the block
    q, k, v = rand_qkv(1, 4, 2, Lq, Lk, 64, 6)
    bm = A.topk_blocks(q, k, keep=0.5, block_size=(32, 64), is_causal=causal)
    fbm = bm.to_flex(is_causal=causal)
    assert isinstance(fbm, flex.BlockMask) and tuple(fbm.BLOCK_SIZE) == (32, 64)
    back = BlockMask.from_flex(fbm)
    assert torch.equal(back.to_dense(), bm.to_dense()) and back.seq_lengths == (Lq, Lk)
    ours = A.block_sparse_attention(q, k, v, bm, is_causal=causal)
    torch.testing.assert_close(A.block_sparse_attention(q, k, v, fbm, is_causal=causal), ours)
    ref = flex.flex_attention(q, k, v, block_mask=fbm, enable_gqa=True)  # eager flex: its reference path
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-4)


def test_flex_create_block_mask_gives_a_shape():
    L, sink, window, bs = 256, 16, 48, 32

    def a_shape_mod(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & ((q_idx - kv_idx < window) | (kv_idx < sink))

    fbm = flex.create_block_mask(a_shape_mod, None, None, L, L, device="cpu", BLOCK_SIZE=bs)
    ours = A.a_shape(L, L, sink=sink, window=window, block_size=bs)
    assert torch.equal(BlockMask.from_flex(fbm).to_dense(), ours.to_dense())
    # and from_kv_blocks of our lists is the same mask again
    fbm2 = flex.BlockMask.from_kv_blocks(ours.kv_num_blocks, ours.kv_indices, BLOCK_SIZE=bs, seq_lengths=(L, L))
    assert torch.equal(BlockMask.from_flex(fbm2).to_dense(), ours.to_dense())


# ---- bad input -------------------------------------------------------------------------------------------
def test_bad_input_names_the_problem():
    q = torch.randn(1, 4, 64, 32)
    with pytest.raises(TypeError, match="sink must be an int"):
        A.a_shape(64, 64, sink=1.5, window=8, block_size=16)
    with pytest.raises(ValueError, match="window must be >= 1"):
        A.a_shape(64, 64, sink=0, window=0, block_size=16)
    with pytest.raises(ValueError, match="multiples of 16"):
        A.a_shape(64, 64, sink=0, window=8, block_size=24)
    with pytest.raises(ValueError, match=r"fractional keep must be in \(0, 1\]"):
        A.topk_blocks(q, q, keep=1.5, block_size=16)
    with pytest.raises(ValueError, match="keep must be >= 1"):
        A.topk_blocks(q, q, keep=0, block_size=16)
    with pytest.raises(TypeError, match="keep must be a float fraction"):
        A.topk_blocks(q, q, keep=True, block_size=16)
    with pytest.raises(ValueError, match=r"query heads \(4\) must be a multiple of key/value heads \(3\)"):
        A.topk_blocks(q, torch.randn(1, 3, 64, 32), keep=0.5, block_size=16)
    with pytest.raises(ValueError, match="4-D tensor"):
        A.vertical_slash(q[0], q, n_vertical=1, n_slash=1, block_size=16)
    with pytest.raises(ValueError, match="n_slash must be >= 0"):
        A.vertical_slash(q, q, n_vertical=1, n_slash=-1, block_size=16)
    with pytest.raises(ValueError, match="differ in batch or head_dim"):
        A.vertical_slash(q, torch.randn(1, 4, 64, 16), n_vertical=1, n_slash=1, block_size=16)


def test_builders_cost_a_small_fraction_of_the_attention():
    """Building a mask costs well under the dense causal attention it replaces (best of 3 each). Loose: on a
    quiet 2-core machine vertical_slash took ~0.15x of it here, topk ~0.02x; a busy machine slows its many
    small ops more than the one big SDPA call (0.46x seen at load 6 on 2 cores)."""
    L = 2048
    q, k, v = rand_qkv(1, 8, 2, L, L, 128, 7)

    def best(f):
        f()
        return min(_timed(f) for _ in range(3))

    t_attn = best(lambda: F.scaled_dot_product_attention(q, k.repeat_interleave(4, 1), v.repeat_interleave(4, 1),
                                                          is_causal=True))
    times = {
        "a_shape": best(lambda: A.a_shape(L, L, sink=64, window=512, block_size=64).kv_num_blocks.sum().item()),
        "vertical_slash": best(lambda: A.vertical_slash(q, k, n_vertical=256, n_slash=256,
                                                        block_size=64).kv_num_blocks.sum().item()),
        "topk": best(lambda: A.topk_blocks(q, k, keep=0.1, block_size=64, is_causal=True).kv_num_blocks.sum().item()),
    }
    print(f"\nmask builders at L={L}, H=8/2, D=128: " + ", ".join(f"{n} {t * 1e3:.1f} ms" for n, t in times.items())
          + f"; dense causal SDPA {t_attn * 1e3:.0f} ms")
    for name, t in times.items():
        assert t < 0.75 * t_attn, f"{name} took {t * 1e3:.1f} ms vs attention {t_attn * 1e3:.1f} ms"


def _timed(f):
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0
