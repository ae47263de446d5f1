"""sparseops: fast kernels for sparse models in PyTorch.

Importing this package loads the native library, which registers every op under
``torch.ops.sparseops``.
"""
from ._runtime import cpu_isa, cpu_isas, info, set_isa, use_isa  # noqa: F401

__version__ = "0.1.0"
