"""Python-side registrations for torch.ops.sparseops: fake (meta) kernels so torch.compile / export can trace
the ops without running them, and the autograd formula of nm_linear (gradients for x and bias; the
compressed weight is frozen). The fake kernels repeat the shape/dtype checks of csrc/ops/nm.cpp, so a
traced graph fails early with the same kind of message."""
from __future__ import annotations

import torch

_SUPPORTED_M = (2, 4, 8, 16)
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _check_weight(values, mask, n, m, K):
    torch._check(m in _SUPPORTED_M and 1 <= n < m,
                 lambda: f"sparseops.nm: unsupported pattern {n}:{m} (need m in {{2, 4, 8, 16}} and 1 <= n < m)")
    torch._check(K > 0 and K % m == 0, lambda: f"sparseops.nm: in_features={K} is not a positive multiple of m={m}")
    torch._check(values.dim() == 2, lambda: f"sparseops.nm: values must be 2-D, got shape {tuple(values.shape)}")
    torch._check(values.shape[1] == K // m * n,
                 lambda: f"sparseops.nm: values has shape {tuple(values.shape)} but {n}:{m} with in_features={K} "
                         f"needs [out_features, {K // m * n}]")
    torch._check(mask.dtype == torch.uint8, lambda: f"sparseops.nm: mask must be uint8, got {mask.dtype}")
    torch._check(mask.dim() == 2 and mask.shape[0] == values.shape[0] and mask.shape[1] == (K + 7) // 8,
                 lambda: f"sparseops.nm: mask has shape {tuple(mask.shape)}, expected "
                         f"[{values.shape[0]}, {(K + 7) // 8}] for in_features={K}")
    torch._check(mask.device == values.device,
                 lambda: f"sparseops.nm: values on {values.device} but mask on {mask.device}")
    torch._check(values.dtype in _DTYPES, lambda: f"sparseops.nm: values dtype {values.dtype} is not supported")


@torch.library.register_fake("sparseops::nm_linear")
def _nm_linear_fake(x, values, mask, n, m, in_features, bias=None):
    _check_weight(values, mask, n, m, in_features)
    torch._check(x.dim() >= 1 and x.shape[-1] == in_features,
                 lambda: f"sparseops.nm_linear: x has shape {tuple(x.shape)} but the weight has "
                         f"in_features={in_features}")
    torch._check(x.dtype == values.dtype,
                 lambda: f"sparseops.nm_linear: x is {x.dtype} but the weight is {values.dtype} (cast one of them)")
    torch._check(x.device == values.device,
                 lambda: f"sparseops.nm_linear: x on {x.device} but the weight on {values.device}")
    O = values.shape[0]
    if bias is not None:
        torch._check(bias.dim() == 1 and bias.shape[0] == O,
                     lambda: f"sparseops.nm_linear: bias has shape {tuple(bias.shape)}, expected [{O}]")
        torch._check(bias.dtype == x.dtype and bias.device == x.device,
                     lambda: f"sparseops.nm_linear: bias is {bias.dtype} on {bias.device}, "
                             f"expected {x.dtype} on {x.device}")
    return x.new_empty((*x.shape[:-1], O))


@torch.library.register_fake("sparseops::nm_decompress")
def _nm_decompress_fake(values, mask, n, m, in_features):
    _check_weight(values, mask, n, m, in_features)
    return values.new_empty((values.shape[0], in_features))


@torch.library.register_fake("sparseops::nm_validate")
def _nm_validate_fake(values, mask, n, m, in_features):
    _check_weight(values, mask, n, m, in_features)
    return None


def _nm_linear_setup(ctx, inputs, output):
    x, values, mask, n, m, in_features, bias = inputs
    ctx.save_for_backward(values, mask)
    ctx.nm = (n, m, in_features)
    ctx.has_bias = bias is not None


def _nm_linear_backward(ctx, grad):
    values, mask = ctx.saved_tensors
    n, m, K = ctx.nm
    grad_x = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_x = grad @ torch.ops.sparseops.nm_decompress(values, mask, n, m, K)
    if ctx.has_bias and ctx.needs_input_grad[6]:
        grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0)
    return grad_x, None, None, None, None, None, grad_bias


torch.library.register_autograd("sparseops::nm_linear", _nm_linear_backward, setup_context=_nm_linear_setup)
