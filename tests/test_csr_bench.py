"""`python -m sparseops.bench csr --quick` end to end: table, JSON rows with both baselines, plot."""
import json
import subprocess
import sys


def test_csr_quick_run(tmp_path):
    js, png = tmp_path / "csr.json", tmp_path / "csr.png"
    cmd = [sys.executable, "-m", "sparseops.bench", "csr", "--quick", "--m", "1,3", "--json", str(js),
           "--plot", str(png), "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "vs t.sparse" in r.stdout and "targets met" in r.stdout
    rows = json.loads(js.read_text())["rows"]
    assert len(rows) == 2 * 2 * 2  # 2 sparsities x 2 M x 2 dtypes, one quick shape
    for row in rows:
        assert row["sparse_ms"] > 0 and row["dense_ms"] > 0 and row["nnz"] > 0
        assert (row["torch_sparse_ms"] is not None) == (row["dtype"] == "fp32")  # MKL CSR is float32-only
    assert all(r["max_rel_err"] is not None for r in rows if r["M"] == 1)


def test_csr_bad_sparsity_fails_before_measuring():
    r = subprocess.run([sys.executable, "-m", "sparseops.bench", "csr", "--quick", "--sparsity", "1.5"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "(0, 1)" in r.stderr
