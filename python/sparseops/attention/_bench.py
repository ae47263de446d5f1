"""Rough timings of block-sparse attention vs torch SDPA (B=1, H=8, D=128, 128x128 blocks, all threads):
dense, causal dense, and a random ~10% block mask (diagonal kept).
Run: python -m sparseops.attention._bench [L]"""
from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F

import sparseops
from sparseops.attention import BlockMask, block_sparse_attention


def _best(f, iters=3):
    f()
    best = float("inf")
    for _ in range(iters):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best


def main(L: int = 4096, H: int = 8, D: int = 128, bs: int = 128) -> None:
    n = L // bs
    g = torch.Generator().manual_seed(1)
    sparse = BlockMask.from_dense((torch.rand(1, H, n, n, generator=g) < 0.09) | torch.eye(n, dtype=torch.bool), bs)
    dense = BlockMask.from_dense(torch.ones(1, 1, n, n, dtype=torch.bool), bs)
    print(f"L={L} H={H} D={D} threads={torch.get_num_threads()} isa={sparseops.cpu_isa()} "
          f"sparse block density={1 - sparse.sparsity():.3f}")
    for dt in (torch.float32, torch.bfloat16):
        q, k, v = (torch.randn(1, H, L, D, generator=g).to(dt) for _ in range(3))
        ts = _best(lambda: F.scaled_dot_product_attention(q, k, v))
        tsc = _best(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
        td = _best(lambda: block_sparse_attention(q, k, v, dense))
        tdc = _best(lambda: block_sparse_attention(q, k, v, dense, is_causal=True))
        tsp = _best(lambda: block_sparse_attention(q, k, v, sparse))
        print(f"{str(dt)[6:]:9s} dense: sdpa {ts * 1e3:6.0f} ms ours {td * 1e3:6.0f} ms ({ts / td:.2f}x) | "
              f"causal: sdpa {tsc * 1e3:6.0f} ours {tdc * 1e3:6.0f} ({tsc / tdc:.2f}x) | "
              f"sparse: {tsp * 1e3:5.0f} ms ({ts / tsp:.1f}x vs sdpa dense)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 4096)
