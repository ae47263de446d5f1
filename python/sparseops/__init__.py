"""sparseops: fast kernels for sparse models in PyTorch.

Importing this package loads the native library, which registers every op under
``torch.ops.sparseops``.
"""
from ._runtime import cpu_isa, cpu_isas, info, last_path, set_isa, use_isa  # noqa: F401

__version__ = "0.1.0"

from . import _meta  # noqa: E402,F401  (fake kernels and autograd for torch.ops.sparseops)
from . import csr, nm, nn  # noqa: E402,F401
from .nn import SparseLinear  # noqa: E402,F401
from .sparsify import densify, sparsify  # noqa: E402,F401  (sparseops.sparsify is the function)
from . import checkpoint  # noqa: E402,F401  (safetensors is imported only when used)
from .checkpoint import load, load_compressed_tensors, save  # noqa: E402,F401
from . import kv  # noqa: E402,F401
from . import attention  # noqa: E402,F401
