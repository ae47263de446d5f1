"""Build facts, ISA selection and its errors (SPARSEOPS_ISA and set_isa)."""
import json
import os
import subprocess
import sys

import pytest
import torch

import sparseops


def run_py(code, **env):
    e = dict(os.environ)
    e.pop("SPARSEOPS_ISA", None)
    e.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=120)


def test_info_fields():
    info = sparseops.info()
    for key in ("version", "torch", "cpu_isa", "cpu_isas", "cuda", "cuda_archs"):
        assert key in info
    assert info["version"] == sparseops.__version__
    assert info["torch"] == torch.__version__
    assert info["cpu_isa"] in info["cpu_isas"]
    assert info["cpu_isas"][0] == "scalar"
    assert isinstance(info["cuda"], bool)


def test_info_cli():
    r = subprocess.run([sys.executable, "-m", "sparseops", "info"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["cpu_isa"] in sparseops.cpu_isas()


def test_ops_registered():
    for name in ("nm_linear", "nm_validate", "nm_decompress"):
        assert hasattr(torch.ops.sparseops, name)


@pytest.mark.parametrize("isa", sparseops.cpu_isas())
def test_env_forces_isa(isa):
    r = run_py("import sparseops; print(sparseops.cpu_isa())", SPARSEOPS_ISA=isa)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == isa


def test_env_unknown_isa_is_a_clear_error():
    code = "import sparseops, torch\ntry:\n    sparseops.cpu_isa()\nexcept RuntimeError as e:\n    print('ERR', e)"
    r = run_py(code, SPARSEOPS_ISA="avx9000")
    assert r.returncode == 0, r.stderr
    assert "ERR" in r.stdout and "SPARSEOPS_ISA='avx9000'" in r.stdout and "scalar" in r.stdout


def test_env_unknown_isa_fails_ops_clearly():
    code = (
        "import sparseops, torch\n"
        "v = torch.randn(2, 2); m = torch.tensor([[5], [5]], dtype=torch.uint8)\n"
        "try:\n    torch.ops.sparseops.nm_linear(torch.randn(1, 4), v, m, 2, 4, 4, None)\n"
        "except RuntimeError as e:\n    print('ERR', str(e).splitlines()[0])"
    )
    r = run_py(code, SPARSEOPS_ISA="avx9000")
    assert r.returncode == 0, r.stderr
    assert "ERR" in r.stdout and "avx9000" in r.stdout


def test_env_isa_missing_on_cpu():
    missing = [i for i in sparseops._runtime.ISAS if i not in sparseops.cpu_isas()]
    if not missing:
        pytest.skip("this CPU supports every ISA variant")
    code = "import sparseops\ntry:\n    sparseops.cpu_isa()\nexcept RuntimeError as e:\n    print('ERR', e)"
    r = run_py(code, SPARSEOPS_ISA=missing[0])
    assert "ERR" in r.stdout and "does not support" in r.stdout


def test_set_isa_and_restore():
    before = sparseops.cpu_isa()
    with sparseops.use_isa("scalar"):
        assert sparseops.cpu_isa() == "scalar"
    assert sparseops.cpu_isa() == before
    with pytest.raises(ValueError, match="unknown ISA"):
        sparseops.set_isa("sse9")
    missing = [i for i in sparseops._runtime.ISAS if i not in sparseops.cpu_isas()]
    if missing:
        with pytest.raises(RuntimeError, match="does not support"):
            sparseops.set_isa(missing[0])
    assert sparseops.cpu_isa() == before


def test_threads_follow_torch():
    r = run_py("import torch, sparseops; torch.set_num_threads(1); print(sparseops.info()['threads'])")
    assert r.stdout.strip() == "1"
