"""`python -m sparseops.bench SUITE [--device cpu|cuda] [--dtype ...] [--quick] [--json PATH] [--plot PATH]`."""
from __future__ import annotations

import argparse
import importlib
import sys
import time

from . import SUITES


def _load(name: str):
    return importlib.import_module(SUITES[name])


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("common options")
    g.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    g.add_argument("--dtype", default=None, help="comma list of fp32,bf16,fp16 (default: the suite's)")
    g.add_argument("--quick", action="store_true", help="tiny shapes, few repeats: a CI check in under a minute")
    g.add_argument("--json", metavar="PATH", help="write machine facts and every row as JSON")
    g.add_argument("--plot", metavar="PATH", help="write a PNG of the speed-ups (needs matplotlib)")
    g.add_argument("--threads", type=int, default=None, help="torch.set_num_threads before measuring")
    g.add_argument("--llc-mib", type=float, default=None,
                   help="last-level cache size used to size rotated buffer sets (default: from sysfs)")
    g.add_argument("--no-progress", action="store_true", help="no [i/n] counter on stderr")

    p = argparse.ArgumentParser(prog="python -m sparseops.bench",
                                description="sparseops benchmarks; each row shows the baseline measured in the "
                                            "same run and the fraction of the machine's measured roofline.")
    sub = p.add_subparsers(dest="suite", metavar="SUITE", title="suites")
    for name in SUITES:
        mod = _load(name)
        sp = sub.add_parser(name, parents=[common], help=mod.DESCRIPTION, description=mod.DESCRIPTION)
        mod.add_arguments(sp)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    if first is not None and first not in SUITES:
        print(f"sparseops.bench: unknown suite {first!r}; known suites: {', '.join(SUITES)}", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.suite is None:
        parser.print_help()
        print(f"\nsparseops.bench: name a suite: {', '.join(SUITES)}", file=sys.stderr)
        return 2

    import torch

    from .harness import Harness, format_table, run_payload, write_json

    if args.threads:
        torch.set_num_threads(args.threads)
    mod = _load(args.suite)
    if hasattr(mod, "check_args"):  # bad options fail now, not after the machine has been measured
        mod.check_args(args)
    h = Harness(args.device, quick=args.quick, llc_mib=args.llc_mib, progress=not args.no_progress)
    t0 = time.perf_counter()
    machine = h.measure_machine(mod.machine_dtypes(args) if hasattr(mod, "machine_dtypes") else ("fp32", "bf16"))
    rows = mod.run(args, h)
    machine = h.remeasure()
    h.fill_fractions(rows, getattr(mod, "FRACTIONS", ()))
    peaks = ", ".join(f"{k} {v:.0f}" for k, v in machine["peak_gflops"].items())
    print(f"# {machine['cpu_model']}, {machine['cores']} cores, {machine['torch_threads']} torch threads, "
          f"LLC {machine['llc_bytes'] >> 20} MiB; read {machine['read_bw_gbs']:.1f} GB/s "
          f"(before {machine['read_bw_gbs_start']:.1f}, after {machine['read_bw_gbs_end']:.1f}); "
          f"peak GFLOP/s: {peaks} (best of before/after)")
    print(format_table(rows, mod.COLUMNS))
    if hasattr(mod, "summary"):
        s = mod.summary(rows)
        if s:
            print(s)
    if args.quick:
        print("# --quick: tiny shapes that stay in cache; this checks the harness, not the kernels' speed")
    print(f"# {len(rows)} rows in {time.perf_counter() - t0:.1f} s")
    if args.json:
        write_json(args.json, run_payload(args.suite, argv, vars(args), machine, rows))
        print(f"# wrote {args.json}")
    if args.plot:
        msg = mod.plot(rows, args.plot) if hasattr(mod, "plot") else "--plot: this suite has no plot"
        if msg:
            print(msg, file=sys.stderr)
        else:
            print(f"# wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
