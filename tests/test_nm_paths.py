"""Large-M paths of nm_linear: the kernels' kept-only GEMM and the dense GEMM on decoded tiles (chosen
per dtype and density; SPARSEOPS_NM_LARGE_M forces one), against float64, with the path reported."""
import pytest
import torch
import torch.nn.functional as F

import sparseops
from sparseops import nm

TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}


@pytest.fixture(params=["kernel", "tiles"])
def large_m_path(request, monkeypatch):
    monkeypatch.setenv("SPARSEOPS_NM_LARGE_M", request.param)
    return request.param


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (3, 4), (4, 8)])
def test_large_m_matches_reference(isa, large_m_path, n, m, dtype):
    g = torch.Generator().manual_seed(n * 100 + m)
    O, K, M = 333, 8 * m + m * 3, 131  # odd out_features, K not a multiple of 16, M past the tile threshold
    w = torch.randn(O, K, generator=g).to(dtype)
    b = torch.randn(O, generator=g).to(dtype)
    c = nm.compress(nm.prune(w, n, m), n, m)
    x = torch.randn(M, K, generator=g).to(dtype)
    x[5, 3] = float("nan")
    x[9, 2] = float("inf")
    y = nm.linear(x, c, b)
    assert sparseops.last_path() == ("dense-gemm-tiles" if large_m_path == "tiles" else "sparse-kernel")
    ref = F.linear(x.double(), c.to_dense().double(), b.double())
    # The tiles run torch's own GEMM, so non-finite inputs spread exactly as F.linear spreads them on this
    # machine (oneDNN's bf16 GEMM on AMX turns the row paired with a NaN/Inf row of x into NaN as well).
    nonfinite_ref = F.linear(x, c.to_dense(), b) if large_m_path == "tiles" else ref
    assert torch.equal(y.isnan(), nonfinite_ref.isnan())
    assert torch.equal(y.isinf(), nonfinite_ref.isinf())
    finite = ref.isfinite() & nonfinite_ref.isfinite()
    scale = F.linear(x.double().abs().nan_to_num(posinf=0), c.to_dense().double().abs()) + b.double().abs()
    err = ((y.double() - ref).abs() / (scale + 1e-6))[finite].max().item()
    assert err < TOL[dtype], err


def test_tiles_reject_malformed_mask(large_m_path):
    c = nm.compress(nm.prune(torch.randn(300, 64), 2, 4), 2, 4)
    mask = c.mask.clone()
    mask[200, 3] ^= 0x01
    with pytest.raises(RuntimeError, match="malformed N:M mask in row 200"):
        torch.ops.sparseops.nm_linear(torch.randn(200, 64), c.values, mask, 2, 4, 64, None)


def test_default_path_choice(monkeypatch):
    monkeypatch.delenv("SPARSEOPS_NM_LARGE_M", raising=False)
    feats = sparseops.info()["cpu_features"]
    pairs = sparseops.cpu_isa() == "avx512" and {"avx512x-paths", "amd_zen5"} <= set(feats)
    for dtype, (n, m), M, want in [
        # fp32 at density 1/2: the kept-only GEMM with AVX2 / AVX-512 on AMD; elsewhere MKL's sgemm on decoded tiles
        (torch.float32, (2, 4), 256,
         "sparse-kernel" if sparseops.cpu_isa() in ("avx2", "avx512") and "intel" not in feats
         else "dense-gemm-tiles"),
        (torch.float32, (1, 4), 256, "sparse-kernel"),
        # bf16: torch's GEMM wins only with hardware bf16 dot products (AVX512-BF16), at every density with AMX;
        # 2:4 stays in the kernel (pair dot products) on Zen 5 with our AVX-512 extension paths
        (torch.bfloat16, (2, 4), 256,
         "dense-gemm-tiles" if "avx512_bf16" in feats and ("amx_bf16" in feats or not pairs) else "sparse-kernel"),
        (torch.bfloat16, (1, 4), 256,
         "dense-gemm-tiles" if {"avx512_bf16", "amx_bf16"} <= set(feats) else "sparse-kernel"),
        # 4:8: pair dot products on Zen 5 up to M = 191, oneDNN's GEMM on tiles from 192 (and wherever it has AVX512-BF16)
        (torch.bfloat16, (4, 8), 64,
         "dense-gemm-tiles" if "avx512_bf16" in feats and ("amx_bf16" in feats or not pairs) else "sparse-kernel"),
        (torch.bfloat16, (4, 8), 192, "dense-gemm-tiles" if "avx512_bf16" in feats else "sparse-kernel"),
        (torch.bfloat16, (2, 8), 256, "dense-gemm-tiles" if {"avx512_bf16", "amx_bf16"} <= set(feats) else "sparse-kernel"),
        (torch.float32, (2, 4), 16, "sparse-kernel"),
    ]:
        c = nm.compress(nm.prune(torch.randn(32, 64, dtype=dtype), n, m), n, m)
        nm.linear(torch.randn(M, 64, dtype=dtype), c)
        assert sparseops.last_path() == want, (dtype, n, m, M)
