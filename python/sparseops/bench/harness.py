"""Shared benchmark machinery: timing, the machine's roofline, progress, table, JSON and plot.

A suite calls `h.time(fn)` for every measurement, `h.copies(nbytes)` to size rotated buffer sets, and
`h.roofline(...)` to turn bytes/FLOP and a time into rates and fractions of what the machine can do.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ---- option parsing shared by the suites ----

def parse_list(text: str, conv, suite: str, what: str) -> list:
    """Comma list of --what converted by conv; a bad entry exits naming the suite and option."""
    try:
        return [conv(t.strip()) for t in text.split(",") if t.strip()]
    except ValueError:
        raise SystemExit(f"sparseops.bench {suite}: cannot parse --{what} {text!r}")


def parse_shape(t: str) -> tuple[int, int]:
    """'OUTxIN' -> (out, in)."""
    o, k = t.lower().split("x")
    return int(o), int(k)


def dtype_names(args, default: list[str], suite: str) -> list[str]:
    """--dtype as a list of DTYPES keys (default when not given); an unknown name exits."""
    names = parse_list(args.dtype, str, suite, "dtype") if args.dtype else default
    bad = [d for d in names if d not in DTYPES]
    if bad:
        raise SystemExit(f"sparseops.bench {suite}: unknown dtype {bad[0]!r}; expected {', '.join(DTYPES)}")
    return names


# ---- timing ----

@dataclass
class Timing:
    median_s: float
    min_s: float
    reps: int

    @property
    def median_ms(self) -> float:
        return self.median_s * 1e3

    @property
    def min_ms(self) -> float:
        return self.min_s * 1e3


def time_fn(fn: Callable[[], object], *, min_time: float = 0.3, min_reps: int = 5, max_time: float = 1.5,
            max_reps: int = 10_000, warmup_time: float = 0.05, cuda: bool = False) -> Timing:
    """Median and min of repeated calls. Warm-up first (at least one call, up to ~warmup_time); then repeat
    until we have min_reps calls and min_time seconds, or, for slow calls, max_time seconds and 3 calls."""
    if cuda:
        start_ev, end_ev = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def once() -> float:
            start_ev.record()
            fn()
            end_ev.record()
            end_ev.synchronize()
            return start_ev.elapsed_time(end_ev) * 1e-3
    else:
        def once() -> float:
            t = time.perf_counter()
            fn()
            return time.perf_counter() - t

    if cuda:
        torch.cuda.synchronize()
    spent, n = 0.0, 0
    while n == 0 or (spent < warmup_time and n < 10):
        spent += once()
        n += 1
    times: list[float] = []
    total = 0.0
    while True:
        t = once()
        times.append(t)
        total += t
        k = len(times)
        if k >= max_reps or (k >= min_reps and total >= min_time) or (k >= 3 and total >= max_time):
            break
    return Timing(statistics.median(times), min(times), len(times))


# ---- machine facts ----

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def physical_cores() -> int:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo; os.cpu_count() if that fails."""
    try:
        cores, phys = set(), "0"
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    phys = val.strip()
                elif key == "core id":
                    cores.add((phys, val.strip()))
        if cores:
            return len(cores)
    except OSError:
        pass
    return os.cpu_count() or 1


def llc_bytes() -> int:
    """Size of the largest cache level sysfs reports for cpu0 (32 MiB if unknown)."""
    best = 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for d in os.listdir(base):
            try:
                with open(os.path.join(base, d, "size")) as f:
                    s = f.read().strip()
            except OSError:
                continue
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1:].upper(), 1)
            num = s[:-1] if mult != 1 else s
            if num.isdigit():
                best = max(best, int(num) * mult)
    except OSError:
        pass
    return best or 32 << 20


def git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        r = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return r.stdout.strip() or None if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


# ---- progress ----

class Progress:
    """A one-line `[i/n] label` counter on stderr (rewritten in place on a terminal, one line per step if not)."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.i, self.enabled = total, 0, enabled
        self.tty = sys.stderr.isatty()

    def step(self, label: str) -> None:
        self.i += 1
        if not self.enabled:
            return
        msg = f"[{self.i}/{self.total}] {label}"
        if self.tty:
            sys.stderr.write("\r\x1b[K" + msg)
        else:
            sys.stderr.write(msg + "\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


# ---- the harness object a suite receives ----

class Harness:
    def __init__(self, device: str = "cpu", quick: bool = False, llc_mib: float | None = None,
                 progress: bool = True):
        if device == "cuda" and not torch.cuda.is_available():
            raise SystemExit("sparseops.bench: --device cuda, but torch.cuda.is_available() is False "
                             "(this torch has no CUDA or no GPU is visible)")
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.quick = quick
        self.progress_enabled = progress
        self.llc = int(llc_mib * (1 << 20)) if llc_mib else llc_bytes()
        self.machine: dict = {}
        # Quick runs only check that everything works: a fraction of the usual time per measurement.
        self.min_time, self.max_time = (0.02, 0.1) if quick else (0.3, 1.5)
        self.min_reps = 3 if quick else 5
        self.max_reps = 10_000

    def fixed_repeats(self, n: int) -> None:
        """Exactly n timed calls per measurement (after warm-up), whatever they cost."""
        self.min_reps = self.max_reps = max(1, n)
        self.min_time, self.max_time = 0.0, float("inf")

    def time(self, fn: Callable[[], object]) -> Timing:
        return time_fn(fn, min_time=self.min_time, min_reps=self.min_reps, max_time=self.max_time,
                       max_reps=self.max_reps, warmup_time=0.01 if self.quick else 0.05, cuda=self.cuda)

    def copies(self, nbytes: int, factor: float = 3.0, cap_bytes: int = 1 << 30, cap: int = 64) -> int:
        """How many distinct copies of an nbytes buffer make a set over factor x the last-level cache, so that
        cycling through them measures memory, not cache (bounded by cap_bytes in all and cap copies)."""
        if self.cuda:  # GPU L2 is tens of MiB: the same rule with its size would do; 50 MiB covers H100
            target = factor * (50 << 20)
        else:
            target = factor * self.llc
        k = max(1, math.ceil(target / max(1, nbytes)))
        k = min(k, cap, max(1, cap_bytes // max(1, nbytes)))
        return k

    def progress(self, total: int) -> Progress:
        return Progress(total, self.progress_enabled)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    # -- roofline --

    def _probe(self, dtypes: Sequence[str]) -> tuple[float, dict, int]:
        """Read bandwidth (GB/s, sum over a 256 MiB fp32 tensor) and matmul GFLOP/s per dtype, best of a few."""
        dev = self.device
        nbytes = 256 << 20
        a = torch.empty(nbytes // 4, dtype=torch.float32, device=dev).fill_(1.0)
        best = time_fn(lambda: a.sum(), min_time=0.05 if self.quick else 0.2, min_reps=5, max_time=1.0,
                       cuda=self.cuda).min_s  # best of the repeats
        del a
        peaks = {}
        n = 8192 if self.cuda else (1024 if self.quick else 2048)
        for name in dtypes:
            dt = DTYPES[name]
            # A CPU without bf16/fp16 units can take a minute per 2048^3 product: size the probe from one
            # small product so that a product takes at most ~0.3 s.
            size = n
            if not self.cuda:
                x = torch.randn(256, 256).to(dt)
                torch.mm(x, x)
                t0 = time.perf_counter()
                torch.mm(x, x)
                per = max(time.perf_counter() - t0, 1e-7) / 256 ** 3
                while size > 256 and per * size ** 3 > 0.3:
                    size //= 2
            x = torch.randn(size, size, device=dev).to(dt)
            y = torch.randn(size, size, device=dev).to(dt)
            t = time_fn(lambda: torch.mm(x, y), min_time=0.05 if self.quick else 0.3, min_reps=3, max_time=1.5,
                        cuda=self.cuda)
            del x, y
            peaks[name] = 2 * size ** 3 / t.min_s / 1e9
        if not self.cuda:
            # Without native 16-bit units a CPU does 16-bit math in its fp32 units (so do our kernels): the
            # fp32 peak is then the ceiling to measure 16-bit rows against.
            for name in dtypes:
                if name != "fp32" and "fp32" in peaks:
                    peaks[name] = max(peaks[name], peaks["fp32"])
        return nbytes / best / 1e9, peaks, n

    def measure_machine(self, dtypes: Sequence[str] = ("fp32", "bf16")) -> dict:
        """Machine facts and the roofline (read bandwidth, peak matmul throughput per dtype), measured once
        before the suite; remeasure() repeats the probes after it and keeps the best of both."""
        self._dtypes = list(dict.fromkeys(("fp32", "bf16", *dtypes)))
        bw, peaks, n = self._probe(self._dtypes)
        self.machine = {
            "cpu_model": cpu_model(),
            "cores": physical_cores(),
            "logical_cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "llc_bytes": self.llc,
            "device": str(self.device) if not self.cuda else torch.cuda.get_device_name(),
            "read_bw_gbs": bw,
            "peak_gflops": dict(peaks),
            "read_bw_gbs_start": bw,
            "peak_gflops_start": peaks,
            "bw_method": "best time of torch.sum over a 256 MiB float32 tensor, before and after the suite",
            "peak_method": f"best time of torch.mm {n}x{n}x{n} per dtype (smaller where one product would take over "
                           "0.3 s), before and after the suite; on CPUs 16-bit peaks are at least the fp32 peak",
        }
        return self.machine

    def remeasure(self) -> dict:
        """Probe again after the suite and keep the best: on a shared machine one probe can land in a busy
        moment and make every row look faster than the machine allows."""
        bw, peaks, _ = self._probe(self._dtypes)
        m = self.machine
        m["read_bw_gbs_end"], m["peak_gflops_end"] = bw, peaks
        m["read_bw_gbs"] = max(m["read_bw_gbs"], bw)
        m["peak_gflops"] = {k: max(v, peaks.get(k, 0.0)) for k, v in m["peak_gflops"].items()}
        return m

    def fill_fractions(self, rows: Sequence[dict], fields: Sequence[tuple[str, str, str]]) -> None:
        """For each (rate key, fraction key, "bw"|"peak"): row[fraction] = 100 * row[rate] / the machine's
        bandwidth or the peak of row["dtype"]."""
        bw = self.machine.get("read_bw_gbs")
        for r in rows:
            for rate, frac, kind in fields:
                ref = bw if kind == "bw" else self.machine.get("peak_gflops", {}).get(r.get("dtype"))
                r[frac] = 100.0 * r[rate] / ref if ref and r.get(rate) is not None else None

    @staticmethod
    def rates(seconds: float, nbytes: float, flops: float) -> dict:
        """GB/s and GFLOP/s of one measurement."""
        return {"gbs": nbytes / seconds / 1e9, "gflops": flops / seconds / 1e9}


# ---- output ----

@dataclass
class Column:
    key: str
    header: str
    fmt: str = ""  # format spec for numbers, e.g. ".3f"; strings print as they are

    def cell(self, row: dict) -> str:
        v = row.get(self.key)
        if v is None:
            return "-"
        if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
            return str(v)
        if self.fmt and isinstance(v, (int, float)) and not isinstance(v, bool):
            return format(v, self.fmt)
        return str(v)


def format_table(rows: Sequence[dict], columns: Sequence[Column]) -> str:
    """Plain-text table: text columns left-aligned, numeric columns right-aligned."""
    cells = [[c.cell(r) for c in columns] for r in rows]
    widths = [max([len(c.header)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    numeric = [bool(c.fmt) for c in columns]

    def line(vals):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(vals, widths, numeric)).rstrip()

    out = [line([c.header for c in columns]), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)


def write_json(path: str, payload: dict) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=1, default=str)
        f.write("\n")


def run_payload(suite: str, argv: Sequence[str], args: dict, machine: dict, rows: list[dict]) -> dict:
    import sparseops

    return {
        "suite": suite,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m sparseops.bench", *argv]),
        "args": args,
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "sparseops": sparseops.info(),
        "machine": machine,
        "rows": rows,
    }


def plot_speedup(rows: Sequence[dict], path: str, *, panel: Sequence[str], series: Sequence[str], x: str,
                 y: str = "speedup", title: str = "") -> str | None:
    """Grouped bars of rows[y] (speed-up vs the baseline): one panel per distinct `panel` key tuple, groups
    along `x`, one bar per `series`. Returns None on success, else a message saying why nothing was written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib import ticker
    except ImportError:
        return "--plot: matplotlib is not installed (pip install matplotlib); no plot written"
    try:
        rows = [r for r in rows if r.get(y) is not None]
        if not rows:
            return "--plot: no rows with a speed-up to plot"
        panels = list(dict.fromkeys(tuple(r[k] for k in panel) for r in rows))
        cols = min(4, len(panels))
        nrows = math.ceil(len(panels) / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(max(7.0, 4.2 * cols), 3.2 * nrows + 0.4), squeeze=False)
        for ax, pk in zip(axes.flat, panels):
            sub = [r for r in rows if tuple(r[k] for k in panel) == pk]
            xs = list(dict.fromkeys(r[x] for r in sub))
            ss = list(dict.fromkeys(tuple(r[k] for k in series) for r in sub))
            width = 0.8 / max(1, len(ss))
            for j, s in enumerate(ss):
                vals = {r[x]: r[y] for r in sub if tuple(r[k] for k in series) == s}
                pos = [i + (j - (len(ss) - 1) / 2) * width for i in range(len(xs))]
                ax.bar(pos, [vals.get(v, 0.0) for v in xs], width, label=" ".join(map(str, s)))
            ax.axhline(1.0, color="black", linewidth=0.8)
            got = [r[y] for r in sub if r[y] > 0]
            if got and max(got) / min(got) > 20:  # an outlier (a noisy baseline) would flatten the rest
                ax.set_yscale("log")
                ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
                ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
                ax.yaxis.set_minor_formatter(ticker.NullFormatter())
            ax.set_xticks(range(len(xs)))
            ax.set_xticklabels([f"{x}={v}" for v in xs], fontsize=7)
            ax.set_title(" ".join(map(str, pk)), fontsize=9)
            ax.set_ylabel(f"{y} (x)", fontsize=8)
            ax.legend(fontsize=7)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        if title:
            fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return None
    except Exception as e:  # a broken plot must never cost the measurements
        return f"--plot: could not draw the plot ({type(e).__name__}: {e}); no plot written"


__all__ = ["DTYPES", "Timing", "time_fn", "Harness", "Progress", "Column", "format_table", "write_json",
           "run_payload", "plot_speedup", "cpu_model", "physical_cores", "llc_bytes", "git_commit", "asdict"]
