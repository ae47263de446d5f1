"""sparseops.nn.SparseLinear: construction, forward, checkpoints (state_dict, safetensors) and torch.compile."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseops import nm
from sparseops.nn import SparseLinear, parse_sparsity

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-4), torch.bfloat16: dict(rtol=1e-2, atol=1e-2),
       torch.float16: dict(rtol=2e-3, atol=2e-3)}


def dense(in_f=48, out_f=13, bias=True, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(in_f, out_f, bias=bias).to(dtype)


def test_parse_sparsity():
    assert parse_sparsity("2:4") == ("nm", 2, 4)
    assert parse_sparsity(" 8 : 16 ") == ("nm", 8, 16)
    assert parse_sparsity((1, 4)) == ("nm", 1, 4)
    assert parse_sparsity(0.9) == ("unstructured", 0.9)
    assert parse_sparsity("0.75") == ("unstructured", 0.75)
    with pytest.raises(ValueError, match="unsupported pattern 2:3"):
        parse_sparsity("2:3")
    with pytest.raises(ValueError, match="cannot parse sparsity"):
        parse_sparsity("half")
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        parse_sparsity(1.5)


def test_float_sparsity_selects_csr():
    assert SparseLinear.from_dense(dense(), 0.9).format.name == "csr"
    assert SparseLinear(48, 13, sparsity=0.5).format.name == "csr"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("sparsity", ["2:4", "1:4", "4:8", "8:16"])
def test_from_dense_forward_and_to_dense(isa, sparsity, dtype):
    lin = dense(dtype=dtype)
    _, n, m = parse_sparsity(sparsity)
    sl = SparseLinear.from_dense(lin, sparsity)
    pruned = nm.prune(lin.weight.detach(), n, m)
    back = sl.to_dense()
    assert isinstance(back, nn.Linear) and back.weight.dtype == dtype
    assert torch.equal(back.weight, pruned) and torch.equal(back.bias, lin.bias)
    x = torch.randn(2, 3, 48).to(dtype)
    ref = F.linear(x.double(), pruned.double(), lin.bias.double())
    with torch.no_grad():
        torch.testing.assert_close(sl(x).double(), ref, **TOL[dtype])
        torch.testing.assert_close(back(x).double(), ref, **TOL[dtype])
    assert sl.sparsity == sparsity and sparsity in repr(sl)


def test_from_dense_wanda_and_errors():
    lin = dense(bias=False)
    norms = torch.rand(48) * 10
    sl = SparseLinear.from_dense(lin, "2:4", method="wanda", activation_norms=norms)
    w = lin.weight.detach()
    assert torch.equal(sl.to_dense().weight, nm.prune(w, 2, 4, score=nm.wanda_score(w, norms)))
    assert sl.bias is None
    with pytest.raises(ValueError, match="needs activation_norms"):
        SparseLinear.from_dense(lin, "2:4", method="wanda")
    with pytest.raises(ValueError, match="unknown method 'sparsegpt'"):
        SparseLinear.from_dense(lin, "2:4", method="sparsegpt")
    with pytest.raises(ValueError, match="multiple of m=16"):
        SparseLinear.from_dense(dense(in_f=40), "2:16")


def test_backward_through_sparse_linear():
    lin = dense()
    sl = SparseLinear.from_dense(lin, "2:4")
    x = torch.randn(4, 48, requires_grad=True)
    sl(x).sum().backward()
    ref_x = x.detach().clone().requires_grad_()
    d = sl.to_dense()
    d(ref_x).sum().backward()
    torch.testing.assert_close(x.grad, ref_x.grad)
    torch.testing.assert_close(sl.bias.grad, d.bias.grad)


# ---- checkpoints ----

def test_state_dict_round_trip_and_keys():
    sl = SparseLinear.from_dense(dense(), "2:4")
    sd = sl.state_dict()
    assert set(sd) == {"values", "mask", "sparse_meta", "bias"}
    assert sd["sparse_meta"].dtype == torch.int64 and sd["sparse_meta"].tolist() == [1, 1, 2, 4, 13, 48]
    fresh = SparseLinear(48, 13, sparsity="2:4")
    fresh.load_state_dict(sd)
    for k in sd:
        assert torch.equal(fresh.state_dict()[k], sd[k])
    x = torch.randn(5, 48)
    with torch.no_grad():
        assert torch.equal(fresh(x), sl(x))


def test_safetensors_round_trip(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    model = nn.Sequential(SparseLinear.from_dense(dense(dtype=torch.bfloat16), "4:8"), nn.ReLU(),
                          SparseLinear.from_dense(dense(16, 7, dtype=torch.bfloat16, seed=1), "1:4"))
    path = tmp_path / "m.safetensors"
    st.save_file(model.state_dict(), str(path))
    loaded = st.load_file(str(path))
    fresh = nn.Sequential(SparseLinear(48, 13, sparsity="4:8", dtype=torch.bfloat16), nn.ReLU(),
                          SparseLinear(16, 7, sparsity="1:4", dtype=torch.bfloat16))
    fresh.load_state_dict(loaded)
    assert torch.equal(fresh[0].to_dense().weight, model[0].to_dense().weight)
    assert torch.equal(fresh[2].values, model[2].values)


def _sd():
    return SparseLinear.from_dense(dense(), "2:4").state_dict()


def test_load_rejects_version_and_shape_mismatch():
    fresh = SparseLinear(48, 13, sparsity="2:4")
    sd = _sd()
    sd["sparse_meta"] = sd["sparse_meta"].clone()
    sd["sparse_meta"][1] = 2
    with pytest.raises(RuntimeError, match="format version 2, but this sparseops reads version 1"):
        fresh.load_state_dict(sd)
    sd = _sd()
    sd["sparse_meta"][0] = 7
    with pytest.raises(RuntimeError, match="unknown sparse format id 7"):
        fresh.load_state_dict(sd)
    with pytest.raises(RuntimeError, match=r"'n': 2, 'm': 4.*'n': 4, 'm': 8"):
        SparseLinear(48, 13, sparsity="4:8").load_state_dict(_sd())
    with pytest.raises(RuntimeError, match="'in_features': 48.*'in_features': 64"):
        SparseLinear(64, 13, sparsity="2:4").load_state_dict(_sd())
    sd = _sd()
    del sd["sparse_meta"]
    with pytest.raises(RuntimeError, match="has no 'sparse_meta'"):
        fresh.load_state_dict(sd)
    sd = _sd()
    sd["sparse_meta"] = sd["sparse_meta"].float()
    with pytest.raises(RuntimeError, match="1-D int64"):
        fresh.load_state_dict(sd)
    dense_sd = dense().state_dict()
    with pytest.raises(RuntimeError, match="Missing key.*values"):
        fresh.load_state_dict(dense_sd)  # a dense nn.Linear checkpoint: values/mask/sparse_meta missing
    res = fresh.load_state_dict({}, strict=False)  # nothing of the module: reported, not an error
    assert set(res.missing_keys) == {"values", "mask", "sparse_meta", "bias"}


def test_load_rejects_malformed_tensors():
    fresh = SparseLinear(48, 13, sparsity="2:4")
    before = fresh.mask.clone()
    sd = _sd()
    sd["mask"] = sd["mask"].clone()
    sd["mask"][6, 2] = 0xFF
    with pytest.raises(RuntimeError, match=r"malformed nm-bitmask tensors: .*row 6, group 4"):
        fresh.load_state_dict(sd)
    assert torch.equal(fresh.mask, before)  # nothing was copied
    sd = _sd()
    sd["values"] = sd["values"][:, :-2]
    with pytest.raises(RuntimeError, match="values has shape"):
        fresh.load_state_dict(sd)
    sd = _sd()
    sd["mask"] = sd["mask"].to(torch.int16)
    with pytest.raises(RuntimeError, match="mask must be uint8"):
        fresh.load_state_dict(sd)
    sd = _sd()
    del sd["mask"]
    with pytest.raises(RuntimeError, match="missing 'mask'"):
        fresh.load_state_dict(sd)


def test_nested_prefixes_in_error():
    model = nn.Sequential(nn.Linear(4, 48), SparseLinear.from_dense(dense(), "2:4"))
    sd = model.state_dict()
    sd["1.sparse_meta"][1] = 9
    fresh = nn.Sequential(nn.Linear(4, 48), SparseLinear(48, 13))
    with pytest.raises(RuntimeError, match="SparseLinear 1: checkpoint uses nm-bitmask format version 9"):
        fresh.load_state_dict(sd)


# ---- torch.compile ----

class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = SparseLinear.from_dense(dense(32, 64, seed=3), "2:4")
        self.b = SparseLinear.from_dense(dense(64, 16, bias=False, seed=4), "1:4")

    def forward(self, x):
        return self.b(F.gelu(self.a(x)))


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compile_fullgraph_no_graph_breaks(backend):
    torch._dynamo.reset()
    model = Small()
    x = torch.randn(3, 5, 32)
    with torch.no_grad():
        expected = model(x)
        compiled = torch.compile(model, backend=backend, fullgraph=True)
        torch.testing.assert_close(compiled(x), expected)
        torch.testing.assert_close(compiled(torch.randn(7, 32)).shape, torch.Size([7, 16]))
    explain = torch._dynamo.explain(model)(x)
    assert explain.graph_break_count == 0 and explain.graph_count == 1


def test_compile_inductor():
    torch._dynamo.reset()
    model = Small()
    x = torch.randn(4, 32)
    with torch.no_grad():
        compiled = torch.compile(model, fullgraph=True)
        torch.testing.assert_close(compiled(x), model(x))


def test_compile_dynamic_shapes_and_backward():
    torch._dynamo.reset()
    model = Small()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=True)
    with torch.no_grad():
        for rows in (3, 5, 9):
            x = torch.randn(rows, 32)
            torch.testing.assert_close(compiled(x), model(x))
    x = torch.randn(4, 32, requires_grad=True)
    compiled(x).square().sum().backward()
    ref = x.detach().clone().requires_grad_()
    model(ref).square().sum().backward()
    torch.testing.assert_close(x.grad, ref.grad)
