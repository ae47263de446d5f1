"""Host memory for long-lived compressed weights: transparent huge pages where Linux offers them.

The N:M kept-only GEMM visits every row of a weight once per block of columns, so each visit lands on
another 4 KiB page (a 4096-wide fp32 2:4 row of values is 8 KiB) and the walk pays TLB misses; see the README's
N:M section for what 2 MiB pages gained. torch's own switch for huge pages (THP_MEM_ALLOC_ENABLE) is process-wide
and read once at start-up, so the weights get their own mapping here.
"""
from __future__ import annotations

import ctypes
import mmap
import sys

import torch

_HUGE = 2 << 20
MIN_BYTES = 2 << 20  # below one whole huge page there is nothing to advise


def empty(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """torch.empty(shape, dtype, device); a CPU tensor of at least MIN_BYTES on Linux gets its own mapping,
    starting on a 2 MiB boundary, whose whole 2 MiB pages are advised for huge pages. The tail past the last
    whole huge page stays on 4 KiB pages, so no memory is spent on rounding. The tensor owns the mapping."""
    device = torch.device(device)
    numel = 1
    for s in shape:
        numel *= int(s)
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    if device.type != "cpu" or nbytes < MIN_BYTES or not sys.platform.startswith("linux") \
            or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.empty(shape, dtype=dtype, device=device)
    # Private and anonymous (a plain mmap.mmap(-1, n) is shared memory, which anonymous THP does not cover);
    # the extra 2 MiB of address space lets the tensor start on a boundary and is never touched.
    mm = mmap.mmap(-1, nbytes + _HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    base = ctypes.addressof(ctypes.c_char.from_buffer(mm))
    off = -base % _HUGE
    try:
        mm.madvise(mmap.MADV_HUGEPAGE, off, nbytes // _HUGE * _HUGE)
    except OSError:
        pass  # advice only (e.g. THP disabled): the memory works the same on 4 KiB pages
    flat = torch.frombuffer(mm, dtype=torch.uint8, count=nbytes, offset=off)  # keeps mm alive
    return flat.view(dtype).view(*shape)
