"""Loads the native library and exposes its non-tensor entry points (ISA selection, build facts)."""
from __future__ import annotations

import contextlib
import ctypes
import os

import torch

from . import _C  # noqa: F401  (importing runs the TORCH_LIBRARY registrations)

_lib = ctypes.CDLL(_C.__file__)
_lib.sparseops_active_isa.argtypes = [ctypes.c_char_p, ctypes.c_int]
_lib.sparseops_available_isas.argtypes = [ctypes.c_char_p, ctypes.c_int]
_lib.sparseops_cpu_features.argtypes = [ctypes.c_char_p, ctypes.c_int]
_lib.sparseops_set_isa.argtypes = [ctypes.c_char_p]
_lib.sparseops_last_error.restype = ctypes.c_char_p
_lib.sparseops_version.restype = ctypes.c_char_p
_lib.sparseops_cuda_archs.restype = ctypes.c_char_p
_lib.sparseops_nm_last_path.restype = ctypes.c_char_p

ISAS = ("scalar", "avx2", "avx512", "neon")


def _text(fn) -> str:
    buf = ctypes.create_string_buffer(256)
    fn(buf, len(buf))
    return buf.value.decode()


def cpu_isa() -> str:
    """The CPU ISA variant kernels use now (SPARSEOPS_ISA, set_isa(), or the best available)."""
    buf = ctypes.create_string_buffer(64)
    if _lib.sparseops_active_isa(buf, len(buf)) != 0:
        raise RuntimeError(_lib.sparseops_last_error().decode())
    return buf.value.decode()


def cpu_isas() -> list[str]:
    """ISA variants this CPU can run, best last."""
    return _text(_lib.sparseops_available_isas).split(",")


def cpu_features() -> list[str]:
    return [f for f in _text(_lib.sparseops_cpu_features).split(",") if f]


def set_isa(name: str | None) -> None:
    """Force a CPU ISA variant for this process (None: back to SPARSEOPS_ISA or the best)."""
    if name is not None and name not in ISAS:
        raise ValueError(f"unknown ISA {name!r}; expected one of {', '.join(ISAS)}")
    if _lib.sparseops_set_isa(name.encode() if name else None) != 0:
        raise RuntimeError(_lib.sparseops_last_error().decode())


@contextlib.contextmanager
def use_isa(name: str):
    """Context manager: run the enclosed calls with one ISA variant, then restore the previous one."""
    previous = cpu_isa()
    set_isa(name)
    try:
        yield
    finally:
        set_isa(previous)


def last_path() -> str:
    """Which path the last CPU nm_linear call took: "sparse-kernel", or "dense-gemm-tiles" where a dense
    GEMM on decoded weight tiles is faster (large M at density above 1/4)."""
    return _lib.sparseops_nm_last_path().decode()


def version() -> str:
    return _lib.sparseops_version().decode()


def cuda_built() -> bool:
    return bool(_lib.sparseops_built_with_cuda())


def cuda_archs() -> list[str]:
    return [a for a in _lib.sparseops_cuda_archs().decode().split() if a]


def info() -> dict:
    """What this build of sparseops has and uses."""
    try:
        isa = cpu_isa()
    except RuntimeError as e:  # a bad SPARSEOPS_ISA: report it rather than fail to print
        isa = f"error: {e}"
    return {
        "version": version(),
        "torch": torch.__version__,
        "cpu_isa": isa,
        "cpu_isas": cpu_isas(),
        "cpu_features": cpu_features(),
        "threads": torch.get_num_threads(),
        "cuda": cuda_built() and torch.cuda.is_available(),
        "cuda_built": cuda_built(),
        "cuda_archs": cuda_archs(),
        "cuda_device": torch.cuda.get_device_name() if cuda_built() and torch.cuda.is_available() else None,
        "SPARSEOPS_ISA": os.environ.get("SPARSEOPS_ISA"),
    }
