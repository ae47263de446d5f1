"""SparseLinear with a float sparsity (the CSR format): build, forward, checkpoints, sparsify."""
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparseops
from sparseops import csr
from sparseops.nn import SparseLinear


def dense(O=13, K=48, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(K, O, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_from_dense_forward(isa, dtype, sparsity):
    lin = dense(dtype=dtype)
    sl = SparseLinear.from_dense(lin, sparsity)
    assert sl.format.name == "csr" and sl.sparsity == f"{sparsity:g}"
    w = sl.to_dense().weight.detach()
    assert torch.equal(w, csr.prune(lin.weight.detach(), sparsity))
    assert (w != 0).sum(1).eq(round((1 - sparsity) * 48)).all()  # per-row pruning
    x = torch.randn(5, 48).to(dtype)
    ref = F.linear(x.double(), w.double(), lin.bias.detach().double())
    torch.testing.assert_close(sl(x).double(), ref, rtol=2e-2 if dtype != torch.float32 else 1e-5, atol=1e-2)


def test_wanda_uses_activation_norms():
    lin = dense()
    norms = torch.rand(48) * 10
    sl = SparseLinear.from_dense(lin, 0.75, method="wanda", activation_norms=norms)
    score = sparseops.nm.wanda_score(lin.weight.detach(), norms)
    assert torch.equal(sl.to_dense().weight.detach(), csr.prune(lin.weight.detach(), 0.75, score=score))


def test_state_dict_round_trip_any_nnz():
    sl = SparseLinear.from_dense(dense(), 0.8)
    buf = io.BytesIO()
    torch.save(sl.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf)
    assert sd["sparse_meta"].tolist() == [2, 1, 0, 0, 13, 48]
    fresh = SparseLinear(48, 13, sparsity=0.8)  # empty: no entries yet
    assert fresh.values.numel() == 0
    fresh.load_state_dict(sd)
    x = torch.randn(3, 48)
    assert torch.equal(fresh(x), sl(x))
    for k in ("row_ptr", "cols", "values"):
        assert torch.equal(getattr(fresh, k), getattr(sl, k))
    # a checkpoint at another sparsity loads too (nnz is the checkpoint's)
    SparseLinear(48, 13, sparsity=0.5).load_state_dict(sd)


def test_load_rejects_malformed_and_other_format():
    sd = SparseLinear.from_dense(dense(), 0.8).state_dict()
    bad = dict(sd)
    bad["cols"] = sd["cols"].clone()
    bad["cols"][2] = 48
    with pytest.raises(RuntimeError, match="malformed csr tensors.*outside"):
        SparseLinear(48, 13, sparsity=0.8).load_state_dict(bad)
    with pytest.raises(RuntimeError, match="format id"):
        SparseLinear(48, 13, sparsity="2:4").load_state_dict(sd)
    with pytest.raises(RuntimeError, match="row_ptr has shape"):
        SparseLinear(48, 14, sparsity=0.8).load_state_dict({**sd, "sparse_meta": torch.tensor([2, 1, 0, 0, 14, 48])})


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(32, 64)
        self.down = nn.Linear(64, 32)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


def test_sparsify_unstructured_matches_densified():
    torch.manual_seed(1)
    model = Tiny()
    calib = [torch.randn(4, 32) for _ in range(3)]
    sparseops.sparsify(model, 0.7, method="wanda", calibration_data=calib)
    s = model.sparseops_summary
    assert s["sparsity"] == "0.7" and sorted(s["swapped"]) == ["down", "up"]
    assert s["bytes_after"] < s["bytes_before"]
    x = torch.randn(6, 32)
    y = model(x)
    sparseops.densify(model)
    torch.testing.assert_close(y, model(x), rtol=1e-5, atol=1e-5)
