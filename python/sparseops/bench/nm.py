"""Suite `nm`: sparseops.nm_linear (N:M weights, "nm-bitmask") against dense F.linear of the same dtype.

Default sweep (issue): shapes (out x in) 4096x4096, 11008x4096, 4096x11008, 14336x4096; M = 1, 4, 16, 64, 256;
fp32 and bf16; patterns 2:4, 1:4, 2:8, 4:8. Weights are rotated through enough copies to exceed the last-level
cache several times, so M=1 rows measure memory streaming, not cache hits.
"""
from __future__ import annotations

import contextlib
import itertools

import torch
import torch.nn.functional as F

from .harness import DTYPES, Column, Harness, dtype_names, parse_list, parse_shape, plot_speedup

DESCRIPTION = "N:M sparse linear (nm_linear) vs dense F.linear, same dtype, same run"

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008), (14336, 4096)]
MS = [1, 4, 16, 64, 256]
PATTERNS = [(2, 4), (1, 4), (2, 8), (4, 8)]
DTYPE_NAMES = ["fp32", "bf16"]
QUICK_SHAPES = [(256, 512), (384, 256)]
QUICK_MS = [1, 16]


def add_arguments(p) -> None:
    g = p.add_argument_group("nm options")
    g.add_argument("--shapes", help="comma list of OUTxIN (default: " + ",".join(f"{o}x{k}" for o, k in SHAPES) + ")")
    g.add_argument("--m", help="comma list of batch sizes M (default: " + ",".join(map(str, MS)) + ")")
    g.add_argument("--patterns", help="comma list of n:m (default: " + ",".join(f"{n}:{m}" for n, m in PATTERNS) + ")")
    g.add_argument("--repeats", type=int, help="exactly this many timed calls per case (default: adaptive by time)")
    g.add_argument("--isa", help="run the sparse op under sparseops.use_isa(ISA) (scalar, avx2, avx512, neon)")


def _pattern(t):
    n, m = t.split(":")
    return int(n), int(m)


def _dtypes(args) -> list[str]:
    return dtype_names(args, DTYPE_NAMES, "nm")


def machine_dtypes(args) -> list[str]:
    return _dtypes(args)


def nm_weight(w: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """N:M weight in the nm-bitmask layout, from plain torch: keep the n largest |w| of each group of m along
    in_features. values [O, K/m*n] (kept entries in ascending column order), mask uint8 [O, ceil(K/8)]
    (bit k%8 of byte k//8). Kept in one place so sparseops.nm.compress(sparseops.nm.prune(w)) can replace it."""
    O, K = w.shape
    g = w.reshape(O, K // m, m)
    # Stable descending sort: equal |w| (common in bf16) go to the lower index, as sparseops.nm.prune does.
    idx = g.abs().sort(dim=-1, descending=True, stable=True).indices[..., :n].sort(dim=-1).values
    values = g.gather(-1, idx).reshape(O, -1).contiguous()
    keep = torch.zeros(O, K // m, m, dtype=torch.bool, device=w.device).scatter_(-1, idx, True).reshape(O, K)
    pad = (-K) % 8
    if pad:
        keep = torch.cat([keep, keep.new_zeros(O, pad)], dim=1)
    bits = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=w.device)
    mask = (keep.reshape(O, -1, 8).to(torch.uint8) * bits).sum(-1, dtype=torch.uint8)
    return values, mask


def _placed(t: torch.Tensor) -> torch.Tensor:
    """A copy of t in the memory sparseops.nm.compress gives its tensors."""
    from sparseops import _memory
    return _memory.empty(t.shape, t.dtype, t.device).copy_(t)


def _unpack(mask: torch.Tensor, K: int) -> torch.Tensor:
    bits = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=mask.device)
    return (mask.unsqueeze(-1) & bits).ne(0).reshape(mask.shape[0], -1)[:, :K]


def op_path() -> str:
    """Which kernel path the last nm_linear call took. Hook: the op does not report one yet."""
    import sparseops

    fn = getattr(sparseops, "last_path", None)
    return fn() if callable(fn) else "-"


def target(row: dict) -> float | None:
    """The issue's speed-up target for this row, if it has one."""
    p, dt, M = row["pattern"], row["dtype"], row["M"]
    if M == 1:
        if dt == "bf16" and p == "2:4":
            return 1.6
        if dt == "bf16" and p in ("1:4", "2:8"):
            return 2.4
        if dt == "fp32" and p == "2:4":
            return 1.7
    if M == 16 and dt == "fp32" and p == "2:4":
        return 1.3
    if M >= 64:
        return 1.0
    return None


BW_TARGET_PCT = 75.0  # at M=1 the sparse op should stream its compressed bytes at >= 75% of measured read bandwidth


def _check(y, x, values, mask, n, m, K, w_dtype) -> float:
    """Relative max error of the sparse op against float64 F.linear on the same (pruned) weight."""
    O = values.shape[0]
    keep = _unpack(mask, K)
    dense = torch.zeros(O, K, dtype=torch.float64, device=values.device)
    dense[keep] = values.double().reshape(-1)
    ref = F.linear(x.double(), dense)
    return float((y.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def check_args(args) -> dict:
    """Parse and validate the suite's options before anything is measured; returns the sweep."""
    import sparseops

    quick = args.quick
    shapes = parse_list(args.shapes, parse_shape, "nm", "shapes") if args.shapes else (QUICK_SHAPES if quick else SHAPES)
    ms = parse_list(args.m, int, "nm", "m") if args.m else (QUICK_MS if quick else MS)
    patterns = parse_list(args.patterns, _pattern, "nm", "patterns") if args.patterns else PATTERNS
    dtypes = _dtypes(args)
    for n, m in patterns:
        try:
            sparseops.nm.check_pattern(n, m)
        except ValueError as e:
            raise SystemExit(f"sparseops.bench nm: --patterns: {e}")
    for o, k in shapes:
        bad = [f"{n}:{m}" for n, m in patterns if k % m]
        if bad:
            raise SystemExit(f"sparseops.bench nm: in_features {k} is not a multiple of m for {', '.join(bad)}")
    if any(M < 1 for M in ms) or any(o < 1 or k < 1 for o, k in shapes):
        raise SystemExit("sparseops.bench nm: --m and --shapes must be positive")
    if args.isa:
        if args.device == "cuda":
            raise SystemExit("sparseops.bench nm: --isa selects a CPU variant; it means nothing with --device cuda")
        if args.isa not in sparseops.cpu_isas():
            raise SystemExit(f"sparseops.bench nm: --isa {args.isa}: this CPU runs {', '.join(sparseops.cpu_isas())}")
    return {"shapes": shapes, "ms": ms, "patterns": patterns, "dtypes": dtypes}


def run(args, h: Harness) -> list[dict]:
    import sparseops

    plan = check_args(args)
    shapes, ms, patterns, dtypes = plan["shapes"], plan["ms"], plan["patterns"], plan["dtypes"]
    if args.repeats:
        h.fixed_repeats(args.repeats)
    isa_ctx = (lambda: sparseops.use_isa(args.isa)) if args.isa else contextlib.nullcontext

    op = torch.ops.sparseops.nm_linear
    prog = h.progress(len(dtypes) * len(shapes) * len(ms) * (len(patterns) + 1))
    rows: list[dict] = []
    gen = torch.Generator().manual_seed(0)
    for dname in dtypes:
        dt = DTYPES[dname]
        es = torch.empty((), dtype=dt).element_size()
        for O, K in shapes:
            w = torch.randn(O, K, generator=gen).to(dt).to(h.device)
            kd = h.copies(w.numel() * es)
            dense_ws = [w] + [w.clone() for _ in range(kd - 1)]
            xs = {M: torch.randn(M, K, generator=gen).to(dt).to(h.device) for M in ms}
            dense_t = {}
            for n, m in patterns:
                values, mask = nm_weight(w, n, m)
                sbytes = values.numel() * es + mask.numel()
                ks = h.copies(sbytes)
                # Every copy where sparseops.nm.compress puts a weight (huge pages, see sparseops._memory).
                sparse_ws = [(_placed(values), _placed(mask)) for _ in range(ks)]
                for M in ms:
                    x = xs[M]
                    io = (M * K + M * O) * es
                    if M not in dense_t:
                        prog.step(f"dense {dname} {O}x{K} M={M}")
                        it = itertools.cycle(dense_ws)
                        dense_t[M] = h.time(lambda: F.linear(x, next(it)))
                    prog.step(f"nm {n}:{m} {dname} {O}x{K} M={M}")
                    with isa_ctx():
                        isa = "cuda" if h.cuda else sparseops.cpu_isa()
                        err = None
                        if M == ms[0]:  # one correctness check per weight, so the table never shows a wrong op
                            err = _check(op(x, values, mask, n, m, K, None), x, values, mask, n, m, K, dt)
                            tol = 1e-4 if dname == "fp32" else 2e-2
                            if not err <= tol:
                                raise SystemExit(f"sparseops.bench nm: nm_linear {n}:{m} {dname} {O}x{K} M={M} "
                                                 f"differs from the float64 reference: rel. error {err:.3g}")
                        it = itertools.cycle(sparse_ws)
                        st = h.time(lambda: op(x, *next(it), n, m, K, None))
                        path = op_path()
                    dt_ = dense_t[M]
                    flops = 2.0 * M * O * K  # dense-equivalent
                    sr = h.rates(st.median_s, sbytes + io, flops)
                    dr = h.rates(dt_.median_s, O * K * es + io, flops)
                    row = {
                        "pattern": f"{n}:{m}", "dtype": dname, "shape": f"{O}x{K}", "out": O, "in": K, "M": M,
                        "isa": isa, "path": path,
                        "sparse_ms": st.median_ms, "sparse_min_ms": st.min_ms, "sparse_reps": st.reps,
                        "dense_ms": dt_.median_ms, "dense_min_ms": dt_.min_ms, "dense_reps": dt_.reps,
                        "speedup": dt_.median_s / st.median_s,
                        "sparse_gbs": sr["gbs"], "dense_gbs": dr["gbs"], "gflops": sr["gflops"],
                        "dense_gflops": dr["gflops"],
                        "sparse_bytes": sbytes + io, "dense_bytes": O * K * es + io, "flops": flops,
                        "sparse_copies": ks, "dense_copies": kd, "max_rel_err": err,
                    }
                    tgt = target(row)
                    row["target"] = tgt
                    row["target_met"] = None if tgt is None else row["speedup"] >= tgt
                    row["verdict"] = "" if tgt is None else f">={tgt:g}x {'ok' if row['target_met'] else 'MISS'}"
                    rows.append(row)
                del sparse_ws, values, mask
            del dense_ws, w
    prog.done()
    return rows


# (rate, fraction, roofline): the harness fills the fractions once the roofline is final.
FRACTIONS = [("sparse_gbs", "sparse_bw_pct", "bw"), ("dense_gbs", "dense_bw_pct", "bw"),
             ("gflops", "peak_pct", "peak"), ("dense_gflops", "dense_peak_pct", "peak")]

COLUMNS = [
    Column("pattern", "pattern"), Column("dtype", "dtype"), Column("shape", "shape"), Column("M", "M", "d"),
    Column("sparse_ms", "sparse ms", ".3f"), Column("sparse_min_ms", "min", ".3f"),
    Column("dense_ms", "dense ms", ".3f"), Column("dense_min_ms", "min", ".3f"),
    Column("speedup", "speed-up", ".2f"),
    Column("sparse_gbs", "sp GB/s", ".1f"), Column("sparse_bw_pct", "%bw", ".0f"),
    Column("dense_gbs", "dn GB/s", ".1f"), Column("gflops", "GFLOP/s", ".1f"), Column("peak_pct", "%peak", ".0f"),
    Column("isa", "isa"), Column("path", "path"), Column("verdict", "target"),
]


def summary(rows: list[dict]) -> str:
    tgt = [r for r in rows if r["target"] is not None]
    met = sum(bool(r["target_met"]) for r in tgt)
    m1 = [r for r in rows if r["M"] == 1 and r["sparse_bw_pct"] is not None]
    bw_ok = sum(r["sparse_bw_pct"] >= BW_TARGET_PCT for r in m1)
    lines = [f"# speed-up targets met: {met}/{len(tgt)}"]
    if m1:
        lines.append(f"# M=1 rows at >= {BW_TARGET_PCT:.0f}% of measured read bandwidth (compressed bytes): "
                     f"{bw_ok}/{len(m1)}")
    lines.append("# speed-up = dense median / sparse median; GB/s = (weight bytes + x + y) / median; "
                 "GFLOP/s = dense-equivalent 2*M*out*in / median")
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> str | None:
    return plot_speedup(rows, path, panel=("dtype", "shape"), series=("pattern",), x="M",
                        title="sparseops nm_linear speed-up vs dense F.linear (same dtype, same run)")
