"""sparseops.sparsify on a small language-model-shaped module."""
import logging

import pytest
import torch
from torch import nn

import sparseops
from sparseops import nm
from sparseops.nn import SparseLinear


class TinyLM(nn.Module):
    def __init__(self, vocab=50, d=32, tie=True):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(vocab, d)
        self.up = nn.Linear(d, 64)
        self.down = nn.Linear(64, d, bias=False)
        self.odd = nn.Linear(d, 30)  # out 30 is fine, in 32 too
        self.skew = nn.Linear(30, d)  # in_features 30: not a multiple of 4
        self.lm_head = nn.Linear(d, vocab, bias=False)
        if tie:
            self.lm_head.weight = self.embed.weight

    def forward(self, input_ids=None, scale=1.0):
        h = self.embed(input_ids) * scale
        h = h + self.down(torch.relu(self.up(h)))
        h = h + self.skew(torch.tanh(self.odd(h)))
        return self.lm_head(h)


def test_magnitude_swaps_and_summary(caplog):
    model = TinyLM()
    dense_w = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 50, (2, 9))
    with caplog.at_level(logging.INFO, logger="sparseops"):
        out = sparseops.sparsify(model, "2:4")
    assert out is model
    s = model.sparseops_summary
    assert s["swapped"] == ["up", "down", "odd"]
    assert s["skipped"] == {"skew": "in_features=30 is not a multiple of m=4", "lm_head": "LM head"}
    assert isinstance(model.up, SparseLinear) and type(model.skew) is nn.Linear
    before = sum(dense_w[f"{k}.weight"].nbytes for k in ("up", "down", "odd"))
    assert s["bytes_before"] == before
    after = sum(getattr(model, k).values.nbytes + getattr(model, k).mask.nbytes + 48 for k in ("up", "down", "odd"))
    assert s["bytes_after"] == after and after < 0.6 * before
    assert "swapped 3 Linear layers, skipped 2" in caplog.text
    # the swapped layers hold exactly the magnitude-pruned weights
    for k in ("up", "down", "odd"):
        assert torch.equal(getattr(model, k).to_dense().weight, nm.prune(dense_w[f"{k}.weight"], 2, 4))
    assert model.lm_head.weight is model.embed.weight  # the tied head/embedding are untouched
    # outputs equal a dense model holding the pruned weights
    ref = TinyLM()
    for k in ("up", "down", "odd"):
        setattr(ref, k, getattr(model, k).to_dense())
    ref.skew.load_state_dict(model.skew.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(ids), ref(ids), rtol=1e-5, atol=1e-5)


def test_untied_head_is_still_skipped_by_name_and_filter_fn():
    model = TinyLM(tie=False)
    sparseops.sparsify(model, "1:4", filter_fn=lambda mod, fqn: fqn != "down")
    s = model.sparseops_summary
    assert s["swapped"] == ["up", "odd", "lm_head"]  # filter_fn decides: it allowed lm_head
    assert s["skipped"]["down"] == "filter_fn" and "skew" in s["skipped"]
    assert s["sparsity"] == "1:4"


def test_wanda_uses_calibration_norms():
    model = TinyLM()
    up_w = model.up.weight.detach().clone()
    down_w = model.down.weight.detach().clone()
    batches = [torch.randint(0, 50, (2, 7)) for _ in range(3)] + [{"input_ids": torch.randint(0, 50, (1, 5)),
                                                                      "scale": 2.0}]
    # reference norms from the dense model, by hand
    with torch.no_grad():
        xs_up, xs_down = [], []
        for b in batches:
            kw = b if isinstance(b, dict) else {"input_ids": b}
            h = model.embed(kw["input_ids"]) * kw.get("scale", 1.0)
            xs_up.append(h.reshape(-1, 32))
            xs_down.append(torch.relu(model.up(h)).reshape(-1, 64))
    n_up = torch.cat(xs_up).double().pow(2).sum(0).sqrt().float()
    n_down = torch.cat(xs_down).double().pow(2).sum(0).sqrt().float()
    sparseops.sparsify(model, "2:4", method="wanda", calibration_data=batches)
    assert model.sparseops_summary["method"] == "wanda"
    assert torch.equal(model.up.to_dense().weight, nm.prune(up_w, 2, 4, score=nm.wanda_score(up_w, n_up)))
    assert torch.equal(model.down.to_dense().weight,
                       nm.prune(down_w, 2, 4, score=nm.wanda_score(down_w, n_down)))
    # and it differs from magnitude somewhere (the norms matter)
    assert not torch.equal(model.down.to_dense().weight, nm.prune(down_w, 2, 4))


def test_sparsify_errors():
    with pytest.raises(ValueError, match="needs calibration_data"):
        sparseops.sparsify(TinyLM(), "2:4", method="wanda")
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        sparseops.sparsify(TinyLM(), 1.5)
    with pytest.raises(ValueError, match="unknown method"):
        sparseops.sparsify(TinyLM(), "2:4", method="obs")
    with pytest.raises(ValueError, match="yielded no batches"):
        sparseops.sparsify(TinyLM(), "2:4", method="wanda", calibration_data=[])
    model = TinyLM()
    sparseops.sparsify(model, "2:4")
    sparseops.sparsify(model, "2:4")  # already sparse layers are left alone
    assert model.sparseops_summary["swapped"] == []


def test_sparsified_model_checkpoint_round_trip():
    model = sparseops.sparsify(TinyLM(tie=False), "2:4")
    sd = model.state_dict()
    fresh = sparseops.sparsify(TinyLM(tie=False), "2:4")  # same structure, different (re-seeded) weights
    fresh.load_state_dict(sd)
    ids = torch.randint(0, 50, (3, 4))
    with torch.no_grad():
        assert torch.equal(fresh(ids), model(ids))


def test_perplexity_helper_on_known_models():
    from types import SimpleNamespace

    from sparseops.models import perplexity

    class Uniform(nn.Module):  # every token equally likely: perplexity == vocabulary size
        def forward(self, input_ids):
            return SimpleNamespace(logits=torch.zeros(*input_ids.shape, 37))

    class Oracle(nn.Module):  # knows the next token of an arithmetic sequence: perplexity ~ 1
        def forward(self, input_ids):
            return SimpleNamespace(logits=torch.nn.functional.one_hot((input_ids + 1) % 37, 37).float() * 50)

    ids = torch.arange(1000) % 37
    assert perplexity(Uniform(), ids, window=128) == pytest.approx(37.0, rel=1e-6)
    assert perplexity(Oracle(), ids, window=100) == pytest.approx(1.0, abs=1e-6)
