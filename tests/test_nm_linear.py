"""sparseops.nm.linear against a float64 reference of F.linear(x, prune(w), b): every pattern, dtype and ISA."""
import pytest
import torch
import torch.nn.functional as F

from sparseops import nm

PATTERNS = [(1, 2), (1, 4), (2, 4), (3, 4), (2, 8), (4, 8), (1, 16), (8, 16)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Kernels accumulate in fp32 and round once: the error is the output rounding plus fp32 summation.
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-4), torch.bfloat16: dict(rtol=1e-2, atol=1e-2),
       torch.float16: dict(rtol=2e-3, atol=2e-3)}
# (rows of x, out_features, in_features): odd counts, one group up to many vector chunks.
SHAPES = [(1, 13, 48), (5, 37, 528), (33, 7, 112), (130, 19, 256)]


def make(n, m, dtype, O, K, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = nm.prune(torch.randn(O, K, generator=g).to(dtype), n, m)
    b = torch.randn(O, generator=g).to(dtype) if bias else None
    return w, nm.compress(w, n, m), b


def ref(x, w, b):
    return F.linear(x.double(), w.double(), None if b is None else b.double())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,m", PATTERNS, ids=lambda v: str(v))
def test_linear_matches_reference(isa, n, m, dtype):
    for i, (M, O, K) in enumerate(SHAPES):
        w, cw, b = make(n, m, dtype, O, K, bias=i % 2 == 0, seed=i)
        x = torch.randn(M, K, generator=torch.Generator().manual_seed(100 + i)).to(dtype)
        y = nm.linear(x, cw, b)
        assert y.dtype == dtype and y.shape == (M, O)
        torch.testing.assert_close(y.double(), ref(x, w, b), **TOL[dtype], msg=lambda s: f"{M}x{O}x{K}: {s}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_leading_dims_and_noncontiguous(isa, dtype):
    n, m = 2, 4
    w, cw, b = make(n, m, dtype, 21, 64)
    g = torch.Generator().manual_seed(7)
    x3 = torch.randn(3, 5, 64, generator=g).to(dtype)
    torch.testing.assert_close(nm.linear(x3, cw, b).double(), ref(x3, w, b), **TOL[dtype])
    xt = torch.randn(64, 9, generator=g).to(dtype).t()  # transposed: unit stride along rows, not along k
    assert not xt.is_contiguous()
    torch.testing.assert_close(nm.linear(xt, cw, b).double(), ref(xt, w, b), **TOL[dtype])
    xs = torch.randn(11, 3 * 64, generator=g).to(dtype)[::2, 64:128]  # sliced rows and columns
    assert not xs.is_contiguous()
    torch.testing.assert_close(nm.linear(xs, cw, b).double(), ref(xs, w, b), **TOL[dtype])
    x4 = torch.randn(2, 64, 3, 4, generator=g).to(dtype).permute(0, 2, 3, 1)  # 4-D, permuted
    torch.testing.assert_close(nm.linear(x4, cw, b).double(), ref(x4, w, b), **TOL[dtype])
    x1 = torch.randn(64, generator=g).to(dtype)  # 1-D input: no batch dim
    torch.testing.assert_close(nm.linear(x1, cw, b).double(), ref(x1, w, b), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_empty_batch(isa, dtype):
    w, cw, b = make(2, 4, dtype, 9, 32)
    for shape in [(0, 32), (2, 0, 32)]:
        y = nm.linear(torch.randn(shape).to(dtype), cw, b)
        assert y.shape == (*shape[:-1], 9) and y.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,m", [(2, 4), (1, 16), (4, 8)], ids=str)
def test_nan_inf_propagate_like_dense(isa, n, m, dtype):
    O, K = 23, 96
    w, cw, b = make(n, m, dtype, O, K)
    x = torch.randn(6, K, generator=torch.Generator().manual_seed(3)).to(dtype)
    x[0, 5] = float("nan")
    x[1, 17] = float("inf")
    x[2, 40] = float("-inf")
    x[3, 0], x[3, K - 1] = float("inf"), float("-inf")
    y, r = nm.linear(x, cw, b).double(), ref(x, w, b)
    assert torch.equal(torch.isnan(y), torch.isnan(r))
    assert torch.equal(torch.isinf(y), torch.isinf(r))
    inf = torch.isinf(r)
    assert torch.equal(torch.sign(y[inf]), torch.sign(r[inf]))
    fin = torch.isfinite(r)
    torch.testing.assert_close(y[fin], r[fin], **TOL[dtype])
    assert torch.isnan(r[0]).all() and torch.isnan(r[1]).any() and torch.isinf(r[1]).any()  # the test bites


def test_result_independent_of_isa():
    """Every ISA variant gives results within rounding of each other (they all round once from fp32)."""
    import sparseops

    w, cw, b = make(2, 4, torch.float32, 45, 320)
    x = torch.randn(17, 320)
    outs = []
    for name in sparseops.cpu_isas():
        with sparseops.use_isa(name):
            outs.append(nm.linear(x, cw, b))
    for y in outs[1:]:
        torch.testing.assert_close(y, outs[0], rtol=1e-5, atol=1e-5)
