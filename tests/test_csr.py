"""CSR weights: kernels vs a float64 reference for every dtype and ISA, torch CSR interop, bad input."""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import sparseops
from sparseops import csr

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
warnings.filterwarnings("ignore", message="Sparse invariant checks")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def sparse_weight(O, K, s, dtype, g):
    return csr.prune(torch.randn(O, K, generator=g).to(dtype), s)


def tol(ref: torch.Tensor, dtype, K: int) -> torch.Tensor:
    """One rounding of the output plus fp32 accumulation error over K terms (elementwise)."""
    eps_out = {torch.float32: 2.0 ** -23, torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -10}[dtype]
    return ref.abs() * eps_out + 1e-5 * math.sqrt(max(K, 1)) * (1 + ref.abs()) + 1e-6


def check_close(y, ref, dtype, K):
    assert y.dtype == dtype
    diff = (y.double() - ref).abs()
    bound = tol(ref, dtype, K)
    assert bool((diff <= bound).all()), f"max err {diff.max().item():.3g}, at bound {bound.flatten()[diff.argmax()]:.3g}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("O,K,M,s", [(37, 53, 1, 0.7), (37, 53, 5, 0.5), (64, 100, 33, 0.9), (1, 7, 3, 0.5),
                                     (130, 300, 17, 0.95), (50, 64, 70, 0.8), (33, 40, 2, 0.3)])
def test_linear_matches_float64(isa, dtype, O, K, M, s):
    g = gen(O * 1000 + K + M)
    w = sparse_weight(O, K, s, dtype, g)
    cw = csr.compress(w)
    x = torch.randn(M, K, generator=g).to(dtype)
    b = torch.randn(O, generator=g).to(dtype)
    ref = F.linear(x.double(), w.double(), b.double())
    check_close(csr.linear(x, cw, b), ref, dtype, K)
    check_close(csr.linear(x, cw), F.linear(x.double(), w.double()), dtype, K)


def test_linear_wide_in_features_uses_int32_cols(isa):
    g = gen(3)
    w = sparse_weight(9, 70001, 0.99, torch.float32, g)
    cw = csr.compress(w)
    assert cw.cols.dtype == torch.int32
    x = torch.randn(2, 70001, generator=g)
    check_close(csr.linear(x, cw), F.linear(x.double(), w.double()), torch.float32, 70001)


def test_uint16_columns_above_32767(isa):
    g = gen(4)
    w = torch.zeros(5, 65536)
    w[:, 65535] = torch.randn(5, generator=g)
    w[:, 40000] = torch.randn(5, generator=g)
    w[:, 3] = 1.0
    cw = csr.compress(w)
    assert cw.cols.dtype == torch.int16 and torch.equal(cw.to_dense(), w)
    x = torch.randn(3, 65536, generator=g)
    check_close(csr.linear(x, cw), F.linear(x.double(), w.double()), torch.float32, 65536)


def test_output_of_32_mib_and_more():
    # Outputs this large come from a fresh mapping that the op asks to back with huge pages before writing.
    g = gen(5)
    w = sparse_weight(4099, 48, 0.5, torch.float32, g)
    x = torch.randn(2048, 48, generator=g)
    y = csr.linear(x, csr.compress(w))
    assert y.nbytes >= 32 << 20
    check_close(y, F.linear(x.double(), w.double()), torch.float32, 48)


def test_3d_and_noncontiguous_x_and_empty_rows(isa):
    g = gen(5)
    w = sparse_weight(20, 48, 0.8, torch.float32, g)
    w[3] = 0  # empty rows
    w[19] = 0
    cw = csr.compress(w)
    x = torch.randn(2, 48, 7, generator=g).transpose(1, 2)  # [2, 7, 48], non-contiguous
    assert not x.is_contiguous()
    check_close(csr.linear(x, cw), F.linear(x.double(), w.double()), torch.float32, 48)
    x1 = torch.randn(48, 3, generator=g)[:, 1]  # 1-D strided
    check_close(csr.linear(x1, cw), F.linear(x1.double(), w.double()), torch.float32, 48)
    assert csr.linear(torch.randn(0, 48), cw).shape == (0, 20)


def test_all_empty_and_single_column(isa):
    cw = csr.compress(torch.zeros(6, 10))
    assert cw.nnz == 0
    b = torch.randn(6)
    assert torch.equal(csr.linear(torch.randn(3, 10), cw, b), b.expand(3, 6))
    g = gen(6)
    w = torch.randn(11, 1, generator=g)
    x = torch.randn(4, 1, generator=g)
    check_close(csr.linear(x, csr.compress(w)), F.linear(x.double(), w.double()), torch.float32, 1)


@pytest.mark.parametrize("M", [1, 4])
def test_nan_inf_propagate_like_dense(isa, M):
    g = gen(7)
    w = sparse_weight(16, 32, 0.7, torch.float32, g)
    cw = csr.compress(w)
    x = torch.randn(M, 32, generator=g)
    x[0, 5] = float("inf")
    if M > 1:
        x[2, 9] = float("nan")
    y, ref = csr.linear(x, cw), F.linear(x, w)
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    assert torch.equal(torch.isinf(y), torch.isinf(ref))
    fin = torch.isfinite(ref)
    assert torch.allclose(y[fin], ref[fin], atol=1e-5)
    # an empty weight still turns a non-finite input row into NaN, as dense math does
    y0 = csr.linear(x, csr.compress(torch.zeros(3, 32)))
    assert torch.isnan(y0[0]).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_round_trips(dtype):
    g = gen(8)
    w = sparse_weight(23, 45, 0.6, dtype, g)
    w[0, 0] = float("nan")
    cw = csr.compress(w)
    assert torch.equal(cw.to_dense().view(torch.int16 if dtype != torch.float32 else torch.int32),
                       w.view(torch.int16 if dtype != torch.float32 else torch.int32))
    t = cw.to_torch_csr()
    assert t.layout == torch.sparse_csr
    back = csr.compress(t)
    assert torch.equal(back.row_ptr, cw.row_ptr) and torch.equal(back.cols, cw.cols)
    assert torch.equal(back.values.view(torch.uint8), cw.values.view(torch.uint8))
    assert cw.nbytes < w.nbytes or dtype == torch.float16  # 40% density, 2-byte values + 2-byte index: equal-ish


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("idx", [torch.int32, torch.int64])
def test_spmm_matches_dense(isa, dtype, idx):
    g = gen(9)
    a = sparse_weight(31, 47, 0.75, dtype, g)
    a[4] = 0
    t = a.to_sparse_csr()
    t = torch.sparse_csr_tensor(t.crow_indices().to(idx), t.col_indices().to(idx), t.values(), size=t.shape)
    for N in (1, 5, 40):
        b = torch.randn(47, N, generator=g).to(dtype)
        check_close(csr.spmm(t, b), a.double() @ b.double(), dtype, 47)
    bt = torch.randn(9, 47, generator=g).to(dtype).t()  # non-contiguous b
    check_close(csr.spmm(t, bt), a.double() @ bt.double(), dtype, 47)


def test_spmm_nan_column():
    a = torch.tensor([[0.0, 2.0], [0.0, 0.0]]).to_sparse_csr()
    b = torch.tensor([[float("inf"), 1.0], [1.0, 1.0]])
    y, ref = csr.spmm(a, b), a.to_dense() @ b
    assert torch.equal(torch.isnan(y), torch.isnan(ref)) and torch.equal(y[:, 1], ref[:, 1])


def csr_parts(crow, col, vals, shape):
    return torch.sparse_csr_tensor(torch.tensor(crow), torch.tensor(col), torch.tensor(vals), size=shape)


@pytest.mark.parametrize("crow,col,msg", [
    ([0, 2, 1], [0, 1], "decrease at row 1"),
    ([1, 1, 2], [0, 1], "start at 0"),
    ([0, 1, 3], [0, 1], "must equal nnz"),
    ([0, 1, 2], [0, 5], "entry 1 is outside"),
    ([0, 1, 2], [-1, 0], "entry 0 is outside"),
])
def test_spmm_rejects_malformed(crow, col, msg):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = csr_parts(crow, col, [1.0] * len(col), (2, 3))
    with pytest.raises(RuntimeError, match=msg):
        csr.spmm(a, torch.randn(3, 2))


def test_bad_input_errors():
    g = gen(10)
    cw = csr.compress(sparse_weight(8, 16, 0.5, torch.float32, g))
    with pytest.raises(RuntimeError, match="in_features=16"):
        csr.linear(torch.randn(2, 15), cw)
    with pytest.raises(RuntimeError, match="cast one of them"):
        csr.linear(torch.randn(2, 16, dtype=torch.bfloat16), cw)
    with pytest.raises(RuntimeError, match="bias has shape"):
        csr.linear(torch.randn(2, 16), cw, torch.randn(7))
    with pytest.raises(TypeError, match="CSRWeight"):
        csr.linear(torch.randn(2, 16), torch.randn(8, 16))
    with pytest.raises(RuntimeError, match="nnz mismatch"):
        torch.ops.sparseops.csr_spmm(torch.tensor([0, 1]), torch.tensor([0]), torch.randn(2), 3, torch.randn(3, 2))
    with pytest.raises(RuntimeError, match="b has shape"):
        csr.spmm(torch.eye(3).to_sparse_csr(), torch.randn(4, 2))
    with pytest.raises(RuntimeError, match="b is"):
        csr.spmm(torch.eye(3).to_sparse_csr(), torch.randn(3, 2, dtype=torch.float64).to(torch.bfloat16))
    with pytest.raises(TypeError, match="sparse_csr"):
        csr.spmm(torch.eye(3), torch.randn(3, 2))
    with pytest.raises(TypeError, match="not supported"):
        csr.compress(torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="sparsity must be a float"):
        csr.prune(torch.randn(3, 3), 1.0)


def test_untrusted_tensors_are_validated():
    g = gen(11)
    cw = csr.compress(sparse_weight(8, 16, 0.5, torch.float32, g))
    bad_cols = cw.cols.clone()
    bad_cols[5] = 16
    with pytest.raises(RuntimeError, match="entry 5 is outside"):
        csr.CSRWeight(cw.row_ptr, bad_cols, cw.values, (8, 16))
    bad_rp = cw.row_ptr.clone()
    bad_rp[3] = bad_rp[4] + 1
    with pytest.raises(RuntimeError, match="decrease at row 3"):
        csr.CSRWeight(bad_rp, cw.cols, cw.values, (8, 16))
    with pytest.raises(RuntimeError, match="values has shape"):
        csr.CSRWeight(cw.row_ptr, cw.cols, cw.values[:-1], (8, 16))
    # The op itself range-checks columns inside the kernel (no separate pass): never reads out of bounds.
    for isa in sparseops.cpu_isas():
        with sparseops.use_isa(isa):
            for M in (1, 3, 40):
                with pytest.raises(RuntimeError, match="column index outside"):
                    torch.ops.sparseops.csr_linear(torch.randn(M, 16), cw.row_ptr, bad_cols, cw.values, 16)
            with pytest.raises(RuntimeError, match="decrease at row 3"):
                torch.ops.sparseops.csr_linear(torch.randn(1, 16), bad_rp, cw.cols, cw.values, 16)
    neg = cw.cols.to(torch.int32).clone()
    neg[0] = -3
    with pytest.raises(RuntimeError, match="column index outside"):
        torch.ops.sparseops.csr_linear(torch.randn(1, 16), cw.row_ptr, neg, cw.values, 16)


def test_prune_per_row_and_wanda_score():
    w = torch.tensor([[1.0, -4.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0]])
    p = csr.prune(w, 0.5)
    assert torch.equal(p, torch.tensor([[0.0, -4.0, 0.0, 3.0], [1.0, 1.0, 0.0, 0.0]]))  # ties: lower column
    score = torch.tensor([[4.0, 3.0, 2.0, 1.0]] * 2)
    assert torch.equal(csr.prune(w, 0.5, score=score)[0], torch.tensor([1.0, -4.0, 0.0, 0.0]))


def test_opcheck():
    g = gen(12)
    cw = csr.compress(sparse_weight(8, 16, 0.5, torch.float32, g))
    x, b = torch.randn(3, 16, generator=g), torch.randn(8, generator=g)
    torch.library.opcheck(torch.ops.sparseops.csr_linear.default, (x, cw.row_ptr, cw.cols, cw.values, 16, b))
    t = cw.to_torch_csr()
    torch.library.opcheck(torch.ops.sparseops.csr_spmm.default,
                          (t.crow_indices().clone(), t.col_indices().clone(), t.values().clone(), 16,
                           torch.randn(16, 4, generator=g)))


def test_torch_compile_and_grad():
    g = gen(13)
    w = sparse_weight(8, 16, 0.5, torch.float32, g)
    cw = csr.compress(w)
    f = torch.compile(lambda x: csr.linear(x, cw).relu(), fullgraph=True)
    x = torch.randn(3, 16, generator=g, requires_grad=True)
    y = f(x)
    check_close(y, F.linear(x.detach().double(), w.double()).relu(), torch.float32, 16)
    y.sum().backward()
    xr = x.detach().clone().requires_grad_()
    F.linear(xr, w).relu().sum().backward()
    assert torch.allclose(x.grad, xr.grad, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dense_tiles_path(monkeypatch, dtype):
    """The dense-tile GEMM (chosen at large M and density on AVX512-BF16 CPUs; forced here) equals the reference,
    propagates NaN/Inf like dense math, adds repeated columns of a torch CSR input, and rejects bad columns."""
    monkeypatch.setenv("SPARSEOPS_CSR_LARGE_M", "tiles")
    g = gen(21)
    w = sparse_weight(70, 90, 0.5, dtype, g)
    cw = csr.compress(w)
    x = torch.randn(33, 90, generator=g).to(dtype)
    b = torch.randn(70, generator=g).to(dtype)
    check_close(csr.linear(x, cw, b), F.linear(x.double(), w.double(), b.double()), dtype, 90)
    x[3, 7] = float("inf")
    x[5, 0] = float("nan")
    y = csr.linear(x, cw, b)
    ref = F.linear(x.double(), w.double(), b.double())
    assert torch.equal(y.isnan(), ref.isnan()) and torch.equal(y.isinf(), ref.isinf())
    # repeated (unsorted) columns in one row add up, as torch's to_dense does
    rp = torch.tensor([0, 3, 3], dtype=torch.int64)
    cols = torch.tensor([4, 1, 4], dtype=torch.int16)
    vals = torch.tensor([1.0, 2.0, 0.5]).to(dtype)
    y = torch.ops.sparseops.csr_linear(torch.ones(2, 6, dtype=dtype), rp, cols, vals, 6)
    assert y.float().tolist() == [[3.5, 0.0], [3.5, 0.0]]
    bad = cw.cols.clone()
    bad[9] = 90
    with pytest.raises(RuntimeError, match="column index outside"):
        torch.ops.sparseops.csr_linear(x, cw.row_ptr, bad, cw.values, 90)


def test_dense_tiles_default_choice(monkeypatch):
    monkeypatch.delenv("SPARSEOPS_CSR_LARGE_M", raising=False)
    # Only timing differs between paths: check the result at a size where bf16 takes the tiles on AVX512-BF16.
    g = gen(22)
    w = sparse_weight(64, 128, 0.5, torch.bfloat16, g)
    x = torch.randn(64, 128, generator=g).to(torch.bfloat16)
    check_close(csr.linear(x, csr.compress(w)), F.linear(x.double(), w.double()), torch.bfloat16, 128)
