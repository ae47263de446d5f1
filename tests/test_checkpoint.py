"""sparseops.save / load (safetensors) and load_compressed_tensors (compressed-tensors sparse-24-bitmask)."""
import copy
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import sparseops
from sparseops.nn import SparseLinear

transformers = pytest.importorskip("transformers")

CFG = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, tie_word_embeddings=True)
IDS = torch.randint(0, 128, (2, 11), generator=torch.Generator().manual_seed(3))


def llama(dtype=torch.float32, seed=0, device=None):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(**CFG)
    if device == "meta":
        with torch.device("meta"):
            return transformers.LlamaForCausalLM(cfg).to(dtype).eval()
    return transformers.LlamaForCausalLM(cfg).to(dtype).eval()


def sparsified(kind, dtype=torch.float32):
    model = llama(dtype)
    if kind == "mix":  # 2:4 MLPs, CSR attention
        sparseops.sparsify(model, "2:4", filter_fn=lambda mod, name: ".mlp." in name)
        sparseops.sparsify(model, 0.7)
    else:
        sparseops.sparsify(model, kind)
    return model


def assert_same_state(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def logits(model):
    with torch.no_grad():
        return model(IDS).logits


# ---- save / load ----

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind", ["2:4", 0.7, "mix"], ids=str)
def test_round_trip_into_a_fresh_dense_model(tmp_path, kind, dtype):
    model = sparsified(kind, dtype)
    path = tmp_path / "m.safetensors"
    sparseops.save(model, path)
    with safe_open(str(path), "pt") as f:
        md = f.metadata()
    assert md["sparseops.version"] == sparseops.__version__
    assert md["sparseops.sparsity"] == model.sparseops_summary["sparsity"] and md["sparseops.method"] == "magnitude"

    fresh = llama(dtype, seed=1)  # other random weights
    assert sparseops.load(fresh, path) is fresh
    assert_same_state(model, fresh)
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight  # still tied
    mlp = fresh.model.layers[0].mlp.up_proj
    attn = fresh.model.layers[1].self_attn.o_proj
    assert isinstance(mlp, SparseLinear) and isinstance(attn, SparseLinear)
    assert mlp.sparsity == ("2:4" if kind != 0.7 else "0.703125") and attn.values.dtype == dtype
    assert torch.equal(logits(fresh), logits(model))

    # loading again into the already sparsified model changes nothing
    sparseops.load(fresh, path)
    assert torch.equal(logits(fresh), logits(model))


def test_load_into_a_meta_device_model(tmp_path):
    model = sparsified("mix", torch.bfloat16)
    sparseops.save(model, tmp_path / "m.safetensors")
    fresh = llama(torch.bfloat16, device="meta")
    sparseops.load(fresh, tmp_path / "m.safetensors")
    assert_same_state(model, fresh)  # every tensor real (no meta left in the state dict), bit-exact
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight


def test_strict_mismatch_and_non_strict(tmp_path):
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    sparseops.sparsify(model, "2:4")
    sparseops.save(model, tmp_path / "m.safetensors")
    bigger = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8), nn.Linear(8, 8))
    with pytest.raises(ValueError, match=r"missing '3.weight', '3.bias', unexpected none"):
        sparseops.load(bigger, tmp_path / "m.safetensors")
    bigger = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8), nn.Linear(8, 8))
    sparseops.load(bigger, tmp_path / "m.safetensors", strict=False)
    assert torch.equal(bigger[2].values, model[2].values) and type(bigger[3]) is nn.Linear


# ---- bad files: a clear ValueError, never a crash ----

def _small(tmp_path, sparsity):
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    sparseops.sparsify(model, sparsity)
    path = str(tmp_path / "m.safetensors")
    sparseops.save(model, path)
    return load_file(path), path


def _fresh():
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


def _corrupt(tmp_path, sparsity, change):
    sd, path = _small(tmp_path, sparsity)
    change(sd)
    save_file(sd, path)
    return path


def _set(key, index, value):
    def change(sd):
        sd[key] = sd[key].clone()
        sd[key][index] = value
    return change


@pytest.mark.parametrize("sparsity,change,match", [
    ("2:4", _set("0.sparse_meta", 0, 9), r"layer '0': unknown sparse format id 9"),
    ("2:4", _set("0.sparse_meta", 1, 2), r"nm-bitmask format version 2, but this sparseops reads version 1"),
    (0.5, _set("2.sparse_meta", 1, 7), r"csr format version 7"),
    ("2:4", _set("0.sparse_meta", slice(2, 4), torch.tensor([5, 4])), r"unsupported pattern 5:4"),
    ("2:4", _set("0.sparse_meta", 4, 33), r"'0' is \[33, 16\] \(out, in\) in the file but \[32, 16\]"),
    ("2:4", lambda sd: sd.update({"0.sparse_meta": sd["0.sparse_meta"][:4].clone()}), r"int64 \[6\]"),
    ("2:4", lambda sd: sd.update({"0.sparse_meta": sd["0.sparse_meta"].int()}), r"int64 \[6\], got torch.int32"),
    ("2:4", _set("0.mask", (3, 0), 0x07), r"malformed nm-bitmask tensors: .*row 3, group 0"),
    ("2:4", lambda sd: sd.pop("2.mask"), r"checkpoint is missing '2.mask'"),
    (0.5, lambda sd: sd.update({"0.cols": sd["0.cols"][:-5].clone()}), r"module '0': .*malformed csr"),
    (0.5, _set("2.cols", 0, 999), r"module '2': .*malformed csr"),
    ("2:4", lambda sd: sd.update({"5.sparse_meta": sd["0.sparse_meta"].clone()}), r"the model has no module '5'"),
    ("2:4", lambda sd: sd.update({"1.sparse_meta": sd["0.sparse_meta"].clone()}), r"'1' .* is ReLU, not an nn.Linear"),
], ids=["format-id", "nm-version", "csr-version", "pattern", "shape", "meta-length", "meta-dtype",
        "mask-count", "missing-mask", "csr-truncated-cols", "csr-col-range", "missing-module", "not-linear"])
def test_bad_checkpoints_raise_clear_errors(tmp_path, sparsity, change, match):
    path = _corrupt(tmp_path, sparsity, change)
    with pytest.raises(ValueError, match=match):
        sparseops.load(_fresh(), path)


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        sparseops.load(_fresh(), tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        sparseops.load(_fresh(), tmp_path / "junk.safetensors")


# ---- compressed-tensors sparse-24-bitmask ----

def _write_ct_dir(model, directory):
    """A checkpoint as llm-compressor writes one: per 2:4 layer `.compressed`/`.bitmask`/`.shape`, other tensors
    dense, the tied head once, config.json with quantization_config.sparsity_config."""
    sd = {}
    for name, mod in model.named_modules():
        if isinstance(mod, SparseLinear):
            sd.update({f"{name}.{k}": v for k, v in mod.nm_weight.to_compressed_tensors().items()})
            if mod.bias is not None:
                sd[f"{name}.bias"] = mod.bias.detach()
    for k, v in model.state_dict().items():
        mod_name = k.rpartition(".")[0]
        if not isinstance(model.get_submodule(mod_name), SparseLinear) and k != "lm_head.weight":
            sd[k] = v
    save_file({k: v.contiguous() for k, v in sd.items()}, str(directory / "model.safetensors"))
    config = model.config.to_dict()
    config["quantization_config"] = {"quant_method": "compressed-tensors", "sparsity_config": {
        "format": "sparse-24-bitmask", "sparsity_structure": "2:4", "targets": ["Linear"], "ignore": ["lm_head"]}}
    (directory / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_compressed_tensors_round_trip(tmp_path, dtype):
    model = sparsified("2:4", dtype)
    _write_ct_dir(model, tmp_path)
    fresh = llama(dtype, seed=1)
    assert sparseops.load_compressed_tensors(fresh, tmp_path) is fresh
    assert_same_state(model, fresh)
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight
    out = logits(fresh)
    assert torch.equal(out, logits(model))
    pruned_dense = sparseops.densify(copy.deepcopy(model))  # the pruned weights in plain nn.Linear
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out, logits(pruned_dense), rtol=tol, atol=tol)


def test_compressed_tensors_library_checkpoint(tmp_path):
    """A checkpoint written by compressed-tensors' own Sparse24BitMaskCompressor (the last release with it,
    installed by scripts/setup.sh) loads bit-exact; and that library decompresses our tensors correctly."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.compressors.sparse_compressors.sparse_24_bitmask import Sparse24BitMaskTensor
    from compressed_tensors.config import Sparse24BitMaskConfig

    model = sparsified("2:4")
    pruned_dense = sparseops.densify(copy.deepcopy(model))
    mc = ModelCompressor(sparsity_config=Sparse24BitMaskConfig(targets=["Linear"], ignore=["lm_head"]))
    sd = mc.compress(pruned_dense)
    assert sd["model.layers.0.mlp.down_proj.shape"].shape == (2, 1)
    sd.pop("lm_head.weight")  # tied: stored once, as save_pretrained does
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "model.safetensors"))
    model.config.save_pretrained(tmp_path)
    mc.update_config(str(tmp_path))
    fresh = llama(seed=1)
    sparseops.load_compressed_tensors(fresh, tmp_path)
    assert_same_state(model, fresh)
    assert torch.equal(logits(fresh), logits(model))

    lin = model.model.layers[0].mlp.gate_proj
    ours = Sparse24BitMaskTensor.from_compressed_data(**lin.nm_weight.to_compressed_tensors())
    assert torch.equal(ours.decompress(), pruned_dense.model.layers[0].mlp.gate_proj.weight)


def test_compressed_tensors_bad_inputs(tmp_path):
    model = sparsified("2:4")
    _write_ct_dir(model, tmp_path)
    sd = load_file(str(tmp_path / "model.safetensors"))
    config = json.loads((tmp_path / "config.json").read_text())

    def write(sd=sd, config=config):
        save_file(sd, str(tmp_path / "model.safetensors"))
        (tmp_path / "config.json").write_text(json.dumps(config))

    def expect(match):
        with pytest.raises(ValueError, match=match):
            sparseops.load_compressed_tensors(llama(seed=1), tmp_path)

    with pytest.raises(ValueError, match="no such file or directory"):
        sparseops.load_compressed_tensors(llama(), tmp_path / "nope")
    bad = dict(sd)
    bad["model.layers.0.mlp.up_proj.bitmask"] = sd["model.layers.0.mlp.up_proj.bitmask"].clone()
    bad["model.layers.0.mlp.up_proj.bitmask"][5, 1] = 0xFF
    write(bad)
    expect(r"'model.layers.0.mlp.up_proj': malformed sparse-24-bitmask tensors: .*row 5, group 2")
    bad = {k: v for k, v in sd.items() if k != "model.layers.1.mlp.down_proj.shape"}
    write(bad)
    expect(r"'model.layers.1.mlp.down_proj' has .* but no 'model.layers.1.mlp.down_proj.shape'")
    bad = dict(sd, **{"model.layers.0.mlp.up_proj.shape": torch.tensor([[128], [32]])})
    write(bad)
    expect(r"is \[128, 32\] \(out, in\) in the file but \[128, 64\]")
    write(sd, dict(config, quantization_config={"sparsity_config": {"format": "sparse-bitmask"}}))
    expect("sparsity format 'sparse-bitmask' is not supported")
    write(sd, dict(config, quantization_config={"config_groups": {"group_0": {"targets": ["Linear"]}}}))
    expect("quantized compressed-tensors checkpoints")
    write(sd, config)
    sparseops.load_compressed_tensors(llama(seed=1), tmp_path / "model.safetensors")  # a lone file works too
