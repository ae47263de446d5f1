"""Suite `model`: a ~1B-parameter Llama-architecture model with random weights (built from a config, nothing is
downloaded), dense vs sparsified (2:4, 1:4 N:M; 70% and 90% unstructured CSR), with dense KV caches (transformers StaticCache and
DynamicCache, both with SDPA) and with the bitmap KV cache, at a long context; bf16 and fp32.

Per row: decode tokens/s at `--context` cached tokens (the cache is filled with random K/V, so no long prefill is
needed to reach it), prefill time of a `--prefill`-token prompt into an empty cache, weight and KV bytes, the
fraction of the machine's read bandwidth a decode step streams (weights + KV per token / step time), and the
extra peak memory while `sparsify` converted the model (it works layer by layer: this should be about one layer).
Speed-ups, all measured in the same run: "x dense" against dense weights with the same cache, "x best dense"
against the fastest dense-weight row of the dtype (whichever cache that was). DynamicCache is what transformers
uses by default, but it grows by torch.cat (copying every layer's cache each step), so StaticCache is the
stronger dense baseline.

Default model (TinyLlama-1.1B's shape): hidden 2048, intermediate 5632, 22 layers, 32 query / 4 KV heads,
vocab 32000. Issue 9's target: 2:4 bf16 decode >= 1.4x dense tokens/s.
"""
from __future__ import annotations

import copy
import gc

import torch

from .harness import DTYPES, Column, Harness, dtype_names, parse_list, plot_speedup

DESCRIPTION = "~1B random Llama: decode tok/s and prefill, dense vs N:M / CSR weights, dense vs bitmap KV cache"

CONFIG = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
              num_key_value_heads=4, vocab_size=32000)
QUICK_CONFIG = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=512)
WEIGHTS = ["dense", "2:4", "1:4", "0.7", "0.9"]
KV = ["static", "dynamic", "0.7"]
DENSE_KV = ("static", "dynamic")
DTYPE_NAMES = ["bf16", "fp32"]
TARGET = ("bf16", "2:4", 1.4)  # dtype, weights, decode speed-up vs dense (same cache)


def add_arguments(p) -> None:
    g = p.add_argument_group("model options")
    g.add_argument("--weights", help=f"comma list of dense, N:M patterns and unstructured fractions "
                                     f"(default {','.join(WEIGHTS)}; dense is always run: it is the baseline)")
    g.add_argument("--kv", help=f"comma list of KV caches: static (StaticCache), dynamic (DynamicCache) and/or "
                                f"bitmap sparsities in (0, 1) (default {','.join(KV)})")
    g.add_argument("--dense-window", type=int, help="recent tokens the bitmap cache keeps dense (default: the "
                                                     "cache's, 256; 16 with --quick)")
    g.add_argument("--steps", type=int, help="timed decode steps per row, after one warm-up step (default 16)")
    g.add_argument("--context", type=int, help="cached tokens before the timed decode steps (default 4096)")
    g.add_argument("--prefill", type=int, help="prompt length of the timed prefill (default 256; 0 skips it)")
    g.add_argument("--layers", type=int, help="decoder layers (default 22)")
    g.add_argument("--hidden", type=int, help="hidden size (default 2048; intermediate scales with it)")


def _dtypes(args) -> list[str]:
    return dtype_names(args, DTYPE_NAMES, "model")


def machine_dtypes(args) -> list[str]:
    return _dtypes(args)


def check_args(args) -> dict:
    from ..nn import parse_sparsity

    if args.device != "cpu":
        raise SystemExit("sparseops.bench model: CPU only for now (--device cpu)")
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise SystemExit("sparseops.bench model: needs transformers (pip install transformers)")
    weights = parse_list(args.weights, str, "model", "weights") if args.weights else WEIGHTS
    for w in weights:
        if w != "dense":
            try:
                parse_sparsity(w)
            except ValueError as e:
                raise SystemExit(f"sparseops.bench model: --weights {w!r}: {e}")
    weights = ["dense", *[w for w in dict.fromkeys(weights) if w != "dense"]]
    kvs = parse_list(args.kv, str, "model", "kv") if args.kv else KV
    for k in kvs:
        if k not in DENSE_KV:
            try:
                ok = 0.0 < float(k) < 1.0
            except ValueError:
                ok = False
            if not ok:
                raise SystemExit(f"sparseops.bench model: --kv {k!r}: expected static, dynamic or a sparsity "
                                 f"in (0, 1)")
    cfg = dict(QUICK_CONFIG if args.quick else CONFIG)
    if args.layers is not None:
        if args.layers < 1:
            raise SystemExit("sparseops.bench model: --layers must be >= 1")
        cfg["num_hidden_layers"] = args.layers
    if args.hidden is not None:
        if args.hidden < 64 or args.hidden % cfg["num_attention_heads"]:
            raise SystemExit(f"sparseops.bench model: --hidden must be >= 64 and a multiple of "
                             f"{cfg['num_attention_heads']} (the number of heads)")
        cfg["intermediate_size"] = cfg["intermediate_size"] * args.hidden // cfg["hidden_size"] // 16 * 16
        cfg["hidden_size"] = args.hidden
    context = args.context if args.context is not None else (64 if args.quick else 4096)
    prefill = args.prefill if args.prefill is not None else (16 if args.quick else 256)
    steps = args.steps if args.steps is not None else (4 if args.quick else 16)
    if context < 1 or prefill < 0 or steps < 1:
        raise SystemExit("sparseops.bench model: --context and --steps must be >= 1, --prefill >= 0")
    window = args.dense_window if args.dense_window is not None else (16 if args.quick else None)
    if window is not None and window < 0:
        raise SystemExit("sparseops.bench model: --dense-window must be >= 0")
    return {"weights": weights, "dense_window": window, "kv": list(dict.fromkeys(kvs)), "config": cfg, "context": context,
            "prefill": prefill, "steps": steps, "dtypes": _dtypes(args)}


# ---- memory (Linux: VmRSS / VmHWM of this process; writing 5 to clear_refs resets the peak) ----

def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _build(cfg: dict, dtype: torch.dtype, context: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**cfg, max_position_embeddings=max(2048, context + 512), tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM._from_config(config, dtype=dtype).eval()
    return model


def _make_cache(kv: str, model, max_len: int, window: int | None = None):
    from transformers import DynamicCache, StaticCache

    from ..kv_cache import BitmapKVCache

    if kv == "static":
        return StaticCache(config=model.config, max_cache_len=max_len)
    if kv == "dynamic":
        return DynamicCache()
    return BitmapKVCache(float(kv)) if window is None else BitmapKVCache(float(kv), dense_window=window)


@torch.no_grad()
def _filled_cache(model, kv: str, context: int, max_len: int, dtype: torch.dtype, window: int | None,
                  seed: int = 1):
    """A cache holding `context` tokens of standard-normal K/V per layer: the shape a long prefill would leave,
    without its cost (the values do not change any kernel's speed)."""
    cfg = model.config
    hkv = cfg.num_key_value_heads
    d = cfg.hidden_size // cfg.num_attention_heads
    g = torch.Generator().manual_seed(seed)
    cache = _make_cache(kv, model, max_len, window)
    pos = {"cache_position": torch.arange(context)}  # StaticCache writes at these positions; others ignore it
    for layer in range(cfg.num_hidden_layers):
        k = torch.randn(1, hkv, context, d, generator=g).to(dtype)
        v = torch.randn(1, hkv, context, d, generator=g).to(dtype)
        cache.update(k, v, layer, pos)
    return cache


def _largest_layer_bytes(model) -> int:
    return max(m.weight.nbytes for m in model.modules() if isinstance(m, torch.nn.Linear))


def _time_decode(step, steps: int):
    """Median of `steps` decode steps after one warm-up step: a fixed count, so a StaticCache sized
    context + steps + 1 never overflows."""
    from .harness import time_fn

    return time_fn(step, min_time=0.0, min_reps=steps, max_time=float("inf"), max_reps=steps, warmup_time=0.0)


def _sparsified(dense, wname: str):
    """A sparsified deep copy of `dense` and the peak memory sparsify() added over the copy (MiB, or None)."""
    from ..sparsify import sparsify

    model = copy.deepcopy(dense)
    gc.collect()
    rss0 = _status_kib("VmRSS")
    reset = _reset_peak()
    sparsify(model, wname)
    peak = _status_kib("VmHWM")
    extra = (peak - rss0) / 1024 if reset and rss0 is not None and peak is not None else None
    return model, extra


def run(args, h: Harness) -> list[dict]:
    from ..demo import cache_bytes, weight_bytes
    from ..kv_cache import BitmapKVCache

    plan = check_args(args)
    cfg, context, prefill, steps = plan["config"], plan["context"], plan["prefill"], plan["steps"]
    max_len = context + steps + 2
    rows: list[dict] = []
    prog = h.progress(len(plan["dtypes"]) * len(plan["weights"]) * len(plan["kv"]))
    tok = torch.tensor([[7]])
    ids = torch.randint(0, cfg["vocab_size"], (1, max(1, prefill)), generator=torch.Generator().manual_seed(2))
    for dname in plan["dtypes"]:
        dt = DTYPES[dname]
        dense = _build(cfg, dt, context)
        BitmapKVCache.prepare(dense)  # SDPA for the dense caches, the bitmap kernel for BitmapKVCache
        n_params = sum(p.numel() for p in dense.parameters())
        layer_mib = _largest_layer_bytes(dense) / 2**20
        base: dict = {}  # kv -> (decode tok/s, prefill s) of dense weights
        for wname in plan["weights"]:
            model, extra_mib = (dense, None) if wname == "dense" else _sparsified(dense, wname)
            wbytes = weight_bytes(model)
            for kv in plan["kv"]:
                prog.step(f"{dname} weights={wname} kv={kv}")
                cache = _filled_cache(model, kv, context, max_len, dt, plan["dense_window"])
                kvb = cache_bytes(cache, context)
                with torch.no_grad():
                    t = _time_decode(lambda: model(input_ids=tok, past_key_values=cache, use_cache=True), steps)
                    pre = None
                    if prefill:
                        pre = h.time(lambda: model(input_ids=ids, past_key_values=_make_cache(kv, model, max_len, plan["dense_window"]),
                                                   use_cache=True)).median_s
                del cache
                tok_s = 1.0 / t.median_s
                if wname == "dense":
                    base[kv] = (tok_s, pre)
                bt, bp = base.get(kv, (None, None))
                rows.append({
                    "dtype": dname, "weights": wname, "kv": kv, "params_m": n_params / 1e6,
                    "weight_mib": wbytes / 2**20, "kv_mib": kvb / 2**20, "context": context,
                    "decode_tok_s": tok_s, "decode_ms": t.median_ms, "decode_steps": t.reps,
                    "speedup": tok_s / bt if bt else None,
                    "speedup_vs_best_dense": None,  # once every dense row of the dtype is in
                    "prefill_ms": pre * 1e3 if pre is not None else None, "prefill_tokens": prefill,
                    "prefill_speedup": bp / pre if (bp and pre) else None,
                    "gbs": (wbytes + kvb) * tok_s / 1e9,
                    "sparsify_extra_mib": extra_mib, "largest_layer_mib": layer_mib,
                })
            del model
            gc.collect()
        # against the fastest dense-weight row of the dtype, known once they have all run
        best = max(v[0] for v in base.values())
        for r in rows:
            if r["dtype"] == dname:
                r["speedup_vs_best_dense"] = r["decode_tok_s"] / best
        del dense
        gc.collect()
    prog.done()
    return rows


COLUMNS = [
    Column("dtype", "dtype"), Column("weights", "weights"), Column("kv", "kv"),
    Column("weight_mib", "weights MiB", ".0f"), Column("kv_mib", "KV MiB", ".1f"),
    Column("decode_tok_s", "decode tok/s", ".2f"), Column("speedup", "x dense", ".2f"),
    Column("speedup_vs_best_dense", "x best dense", ".2f"),
    Column("prefill_ms", "prefill ms", ".0f"), Column("prefill_speedup", "prefill x", ".2f"),
    Column("gbs", "GB/s", ".1f"), Column("bw_pct", "%bw", ".0f"),
    Column("sparsify_extra_mib", "sparsify +MiB", ".0f"), Column("largest_layer_mib", "layer MiB", ".0f"),
]
FRACTIONS = [("gbs", "bw_pct", "bw")]


def summary(rows: list[dict]) -> str:
    dname, wname, target = TARGET
    lines = []
    for r in rows:
        if r["dtype"] == dname and r["weights"] == wname and r["speedup"] is not None:
            ok = "met" if r["speedup"] >= target else "MISSED"
            lines.append(f"# target: {wname} {dname} decode >= {target}x dense weights, kv={r['kv']}: "
                         f"{r['speedup']:.2f}x, {ok} ({r['speedup_vs_best_dense']:.2f}x the fastest dense row)")
    mem = [r for r in rows if r["sparsify_extra_mib"] is not None]
    if mem:
        worst = max(mem, key=lambda r: r["sparsify_extra_mib"])
        lines.append(f"# sparsify peak memory over the model it converts: at most {worst['sparsify_extra_mib']:.0f} "
                     f"MiB ({worst['dtype']} {worst['weights']}); largest layer {worst['largest_layer_mib']:.0f} MiB")
    return "\n".join(lines)


def plot(rows: list[dict], path: str):
    return plot_speedup(rows, path, panel=("dtype",), series=("kv",), x="weights",
                        title="decode tok/s vs dense weights (same cache), ~1B random Llama")
