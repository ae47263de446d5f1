"""The benchmark harness: a --quick nm run end to end (JSON + PNG), the timing helper and the table."""
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from sparseops.bench import harness
from sparseops.bench.harness import Column, format_table, time_fn


def test_nm_quick_run_writes_json_and_plot(tmp_path):
    js, png = tmp_path / "nm.json", tmp_path / "nm.png"
    cmd = [sys.executable, "-m", "sparseops.bench", "nm", "--quick", "--patterns", "2:4,1:4",
           "--json", str(js), "--plot", str(png), "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "speed-up" in r.stdout and "2:4" in r.stdout
    d = json.loads(js.read_text())
    assert d["suite"] == "nm" and "--quick" in d["command"]
    m = d["machine"]
    assert m["read_bw_gbs"] > 0 and m["peak_gflops"]["fp32"] > 0 and m["peak_gflops"]["bf16"] > 0
    assert m["cores"] >= 1 and m["cpu_model"]
    assert d["sparseops"]["cpu_isa"] and d["torch"]
    assert "git_commit" in d and "timestamp" in d
    rows = d["rows"]
    # 2 quick shapes x 2 M x 2 patterns x 2 dtypes
    assert len(rows) == 16
    assert {r["pattern"] for r in rows} == {"2:4", "1:4"} and {r["dtype"] for r in rows} == {"fp32", "bf16"}
    for row in rows:
        assert row["sparse_ms"] > 0 and row["dense_ms"] > 0
        assert 0 < row["sparse_min_ms"] <= row["sparse_ms"] and 0 < row["dense_min_ms"] <= row["dense_ms"]
        assert row["speedup"] == pytest.approx(row["dense_ms"] / row["sparse_ms"])
        assert row["sparse_gbs"] > 0 and row["sparse_bw_pct"] > 0 and row["gflops"] > 0
        assert row["path"] == "-" or row["path"]
    assert all(r["max_rel_err"] is not None for r in rows if r["M"] == 1)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pytest.skip("matplotlib is not installed: --plot only prints a message")
    assert png.exists() and png.stat().st_size > 1000


def test_kv_quick_run_writes_json(tmp_path):
    js = tmp_path / "kv.json"
    cmd = [sys.executable, "-m", "sparseops.bench", "kv", "--quick", "--json", str(js), "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "x sdpa" in r.stdout and "targets met" in r.stdout
    d = json.loads(js.read_text())
    assert d["suite"] == "kv" and d["machine"]["read_bw_gbs"] > 0
    rows = d["rows"]
    # 2 quick (B, T) cases x sparsity {0, 0.7} x 2 dtypes
    assert len(rows) == 8 and {r["sparsity"] for r in rows} == {0.0, 0.7}
    for row in rows:
        assert row["kv_ms"] > 0 and row["sdpa_ms"] > 0 and row["own_dense_ms"] > 0
        assert row["vs_sdpa"] == pytest.approx(row["sdpa_ms"] / row["kv_ms"])
        assert row["max_rel_err"] is not None and row["kv_bw_pct"] > 0
        if row["sparsity"] == 0.7:
            assert row["mem_ratio"] < 0.40 and row["mem_target_met"] and "own" in row["verdict"]
        else:
            assert row["vs_own_dense"] == 1.0


def test_kv_bad_options_fail_before_measuring():
    r = subprocess.run([sys.executable, "-m", "sparseops.bench", "kv", "--quick", "--sparsity", "1.5"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--sparsity" in r.stderr and "rows in" not in r.stdout


def test_unknown_suite_lists_known_ones():
    r = subprocess.run([sys.executable, "-m", "sparseops.bench", "nosuch"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0 and "nosuch" in r.stderr and "nm" in r.stderr


def test_time_fn_on_a_known_sleep():
    calls = []

    def f():
        calls.append(1)
        time.sleep(0.01)

    t = time_fn(f, min_time=0.05, min_reps=5, max_time=1.0, warmup_time=0.0)
    assert t.reps >= 5 and len(calls) == t.reps + 1  # one warm-up call
    assert 0.0095 <= t.min_s <= t.median_s
    assert t.median_s < 0.05  # sleep overshoots a little, not by 5x even on a busy machine
    assert t.median_ms == pytest.approx(t.median_s * 1e3)


def test_time_fn_stops_slow_calls_at_max_time():
    t = time_fn(lambda: time.sleep(0.05), min_time=10.0, min_reps=50, max_time=0.12, warmup_time=0.0)
    assert t.reps == 3  # 3 reps pass max_time: stop there rather than take 50


def test_time_fn_fixed_repeats():
    h = harness.Harness("cpu", quick=True, progress=False)
    h.fixed_repeats(4)
    assert h.time(lambda: None).reps == 4


def test_copies_exceed_the_cache():
    h = harness.Harness("cpu", llc_mib=32, progress=False)
    k = h.copies(10 << 20)
    assert k * (10 << 20) >= 3 * (32 << 20) and (k - 1) * (10 << 20) < 3 * (32 << 20)
    assert h.copies(1 << 30) == 1
    assert h.copies(16, cap=64) == 64


def test_format_table():
    rows = [{"name": "a", "ms": 1.23456, "x": 2}, {"name": "longer", "ms": 10.0, "x": None}]
    out = format_table(rows, [Column("name", "name"), Column("ms", "ms", ".2f"), Column("x", "x", "d")])
    lines = out.splitlines()
    assert lines[0].split() == ["name", "ms", "x"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split() == ["a", "1.23", "2"] and lines[3].split() == ["longer", "10.00", "-"]
    # numbers right-aligned: decimal points line up
    assert lines[2].index(".") == lines[3].index(".")


def test_plot_without_rows_says_why(tmp_path):
    msg = harness.plot_speedup([], str(tmp_path / "p.png"), panel=("a",), series=("b",), x="c")
    assert msg and "--plot" in msg and not os.path.exists(tmp_path / "p.png")


def test_plot_without_matplotlib_is_a_message(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    rows = [{"a": "p", "b": "s", "c": 1, "speedup": 1.5}]
    msg = harness.plot_speedup(rows, str(tmp_path / "p.png"), panel=("a",), series=("b",), x="c")
    assert msg and "matplotlib is not installed" in msg and not os.path.exists(tmp_path / "p.png")


def test_bad_isa_fails_before_measuring():
    r = subprocess.run([sys.executable, "-m", "sparseops.bench", "nm", "--quick", "--isa", "nosuch"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--isa nosuch" in r.stderr and "rows in" not in r.stdout


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (2, 8), (4, 8)])
def test_bench_weights_match_prune_and_compress(n, m, dtype):
    """The suite's plain-torch weight builder gives what sparseops.nm.compress(prune(w)) gives, ties included,
    so either can build the benchmark's weights."""
    import sparseops
    from sparseops.bench.nm import nm_weight

    g = torch.Generator().manual_seed(n * 10 + m)
    w = torch.randn(37, 8 * 17, generator=g).to(dtype)
    w[0, :m] = 1.0  # a group of ties
    values, mask = nm_weight(w, n, m)
    ref = sparseops.nm.compress(sparseops.nm.prune(w, n, m), n, m)
    assert torch.equal(values, ref.values) and torch.equal(mask, ref.mask)
    x = torch.randn(3, w.shape[1], generator=g).to(dtype)
    y = torch.ops.sparseops.nm_linear(x, values, mask, n, m, w.shape[1], None)
    exp = torch.nn.functional.linear(x.double(), sparseops.nm.prune(w, n, m).double())
    assert torch.allclose(y.double(), exp, rtol=2e-2, atol=2e-2 * exp.abs().max().item())


def test_attn_quick_run_writes_json(tmp_path):
    js = tmp_path / "attn.json"
    cmd = [sys.executable, "-m", "sparseops.bench", "attn", "--quick", "--json", str(js), "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "vs sdpa" in r.stdout and "rows meeting every target" in r.stdout
    d = json.loads(js.read_text())
    assert d["suite"] == "attn" and d["machine"]["peak_gflops"]["fp32"] > 0
    rows = d["rows"]
    assert [(r["density"], r["dtype"], r["L"], r["heads"]) for r in rows] == [(1.0, "fp32", 512, "4/2"),
                                                                             (0.25, "fp32", 512, "4/2")]
    for row in rows:
        assert row["sparse_ms"] > 0 and row["sdpa_ms"] > 0 and row["mask_ms"] >= 0
        assert row["speedup"] == pytest.approx(row["sdpa_ms"] / row["sparse_ms"])
        assert row["pct_inv_density"] == pytest.approx(100 * row["speedup"] * row["real_density"])
        assert row["gflops"] > 0 and row["peak_pct"] > 0 and row["verdict"]
        # FlexAttention either ran (same answer as ours) or says why not
        if row["flex_ms"] is not None:
            assert row["vs_flex"] == pytest.approx(row["flex_ms"] / row["sparse_ms"])
            assert row["max_err"] < 2e-4
        else:
            assert row["flex_note"]
    assert rows[0]["real_density"] == 1.0 and rows[0]["max_err"] < 2e-4  # dense mask == SDPA
    # the dense row's SDPA comes from rounds interleaved with its sparse calls, one call each per round
    assert rows[0]["sparse_reps"] == rows[0]["sdpa_reps"] >= 1
    assert rows[0]["flex_compile_s"] is not None or rows[0]["flex_note"]


@pytest.mark.parametrize("L,block,density,expect", [
    (2048, 64, 0.1, 53 / 528),      # round(0.1 * 528) = 53 blocks, 32 of them diagonal
    (2048, 64, 0.05, 32 / 528),     # the 32 diagonal blocks alone exceed 26: the floor
    (2048, 128, 0.1, 16 / 136),     # likewise 16 diagonal blocks > 14
    (8192, 64, 0.25, 0.25),
    (1000, 64, 0.5, None),          # a partial last block
])
def test_attn_bench_masks_hold_the_requested_density(L, block, density, expect):
    """The bench's topk masks keep the requested fraction of the causal blocks (not per-row ceilings)."""
    from sparseops.attention import topk_blocks
    from sparseops.attention.module import mask_density
    from sparseops.bench.attn import _row_keep
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 2, L, 16, generator=g)
    k = torch.randn(1, 2, L, 16, generator=g)
    bm = topk_blocks(q, k, keep=_row_keep(L, block, density), block_size=block, is_causal=True)
    real = mask_density(bm, True)
    nb = -(-L // block)
    if expect is None:
        assert abs(real - density) <= 1.0 / (nb * (nb + 1) / 2) + 1e-9
    else:
        assert real == pytest.approx(expect, abs=1e-9)
    # Per-row ceilings, the bench's old masks, were denser than asked at short lengths.
    if (L, block, density) == (2048, 64, 0.1):
        assert mask_density(topk_blocks(q, k, keep=0.1, block_size=64, is_causal=True), True) > 0.12


def test_attn_bench_flops_count_causal_pairs():
    from sparseops.attention import BlockMask, causal_block_mask
    from sparseops.bench.attn import _flops_visited
    for L, bs in ((512, 64), (1000, 128)):
        assert _flops_visited(causal_block_mask(L, L, bs), 4, L, 32) == 4.0 * 32 * 4 * L * (L + 1) / 2
    # Only the diagonal blocks of a 4-block causal layout: each holds bs * (bs + 1) / 2 causal pairs.
    diag = torch.eye(4, dtype=torch.bool)[None, None]
    bm = BlockMask.from_dense(diag, 64)
    assert _flops_visited(bm, 2, 256, 8) == 4.0 * 8 * 2 * 4 * 64 * 65 / 2


def test_attn_bad_options_fail_before_measuring():
    for opt, msg in ((["--density", "1.5"], "--density values must be in (0, 1]"),
                     (["--block", "24"], "--block values must be multiples of 16"),
                     (["--heads", "6/4"], "--heads: each entry must be HQ or HQ/HKV")):
        r = subprocess.run([sys.executable, "-m", "sparseops.bench", "attn", "--quick", *opt],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and msg in r.stderr and "rows in" not in r.stdout


def test_model_quick_run_writes_json(tmp_path):
    js = tmp_path / "model.json"
    cmd = [sys.executable, "-m", "sparseops.bench", "model", "--quick", "--dtype", "fp32", "--weights", "2:4,0.7",
           "--json", str(js), "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "x best dense" in r.stdout and "sparsify peak memory" in r.stdout
    d = json.loads(js.read_text())
    rows = d["rows"]
    # dense (always run) + 2:4 + 0.7 weights x static, dynamic, bitmap 0.7 caches
    assert len(rows) == 9 and {r["weights"] for r in rows} == {"dense", "2:4", "0.7"}
    assert {r["kv"] for r in rows} == {"static", "dynamic", "0.7"}
    by = {(r["weights"], r["kv"]): r for r in rows}
    for row in rows:
        assert row["decode_tok_s"] > 0 and row["prefill_ms"] > 0 and row["decode_steps"] == 4
        dense = by[("dense", row["kv"])]
        assert row["speedup"] == pytest.approx(row["decode_tok_s"] / dense["decode_tok_s"])
        assert row["weight_mib"] > 0 and row["kv_mib"] > 0
    for kv in ("static", "dynamic", "0.7"):
        assert by[("2:4", kv)]["weight_mib"] < by[("dense", kv)]["weight_mib"]
    assert by[("dense", "0.7")]["kv_mib"] < 0.6 * by[("dense", "static")]["kv_mib"]
    assert by[("dense", "static")]["kv_mib"] == pytest.approx(by[("dense", "dynamic")]["kv_mib"])


def test_model_bad_options_fail_before_measuring():
    for opt in (["--weights", "3:3"], ["--kv", "full"], ["--context", "0"], ["--device", "cuda"]):
        r = subprocess.run([sys.executable, "-m", "sparseops.bench", "model", "--quick", *opt],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and "sparseops.bench" in r.stderr, (opt, r.stderr[-500:])
