"""Fake (meta) kernels of the CSR ops for torch.compile / export, repeating the shape/dtype checks of
csrc/ops/csr.cpp, and csr_linear's autograd formula (gradients for x and bias; the weight is frozen)."""
from __future__ import annotations

import torch

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _check_weight(row_ptr, cols, values, K):
    torch._check(row_ptr.dim() == 1 and row_ptr.dtype == torch.int64,
                 lambda: f"sparseops.csr: row_ptr must be a 1-D int64 tensor, got {row_ptr.dtype} "
                         f"{tuple(row_ptr.shape)}")
    torch._check(cols.dim() == 1 and cols.dtype in (torch.int16, torch.int32),
                 lambda: f"sparseops.csr: cols must be 1-D int16 or int32, got {cols.dtype} {tuple(cols.shape)}")
    torch._check(values.dim() == 1 and values.shape[0] == cols.shape[0],
                 lambda: f"sparseops.csr: values has shape {tuple(values.shape)} but cols has {cols.shape[0]} "
                         f"entries")
    torch._check(values.dtype in _DTYPES, lambda: f"sparseops.csr: values dtype {values.dtype} is not supported")
    torch._check(K >= 0, lambda: f"sparseops.csr: in_features must be >= 0, got {K}")


@torch.library.register_fake("sparseops::csr_linear")
def _csr_linear_fake(x, row_ptr, cols, values, in_features, bias=None):
    _check_weight(row_ptr, cols, values, in_features)
    torch._check(x.dim() >= 1 and x.shape[-1] == in_features,
                 lambda: f"sparseops.csr.linear: x has shape {tuple(x.shape)} but the weight has "
                         f"in_features={in_features}")
    torch._check(x.dtype == values.dtype,
                 lambda: f"sparseops.csr.linear: x is {x.dtype} but the weight is {values.dtype} (cast one of them)")
    O = row_ptr.shape[0] - 1
    if bias is not None:
        torch._check(bias.dim() == 1 and bias.shape[0] == O,
                     lambda: f"sparseops.csr.linear: bias has shape {tuple(bias.shape)}, expected [{O}]")
        torch._check(bias.dtype == x.dtype, lambda: f"sparseops.csr.linear: bias is {bias.dtype}, expected {x.dtype}")
    return x.new_empty((*x.shape[:-1], O))


@torch.library.register_fake("sparseops::csr_spmm")
def _csr_spmm_fake(crow_indices, col_indices, values, ncols, b):
    torch._check(values.shape[0] == col_indices.shape[0],
                 lambda: f"sparseops.csr.spmm: values has {values.shape[0]} entries but col_indices has "
                         f"{col_indices.shape[0]} (nnz mismatch)")
    torch._check(b.dim() == 2 and b.shape[0] == ncols,
                 lambda: f"sparseops.csr.spmm: b has shape {tuple(b.shape)} but a has {ncols} columns")
    torch._check(b.dtype == values.dtype, lambda: f"sparseops.csr.spmm: b is {b.dtype} but a is {values.dtype}")
    return b.new_empty((crow_indices.shape[0] - 1, b.shape[1]))


@torch.library.register_fake("sparseops::csr_validate")
def _csr_validate_fake(row_ptr, cols, values, in_features):
    _check_weight(row_ptr, cols, values, in_features)
    return None


def _setup(ctx, inputs, output):
    x, row_ptr, cols, values, in_features, bias = inputs
    ctx.save_for_backward(row_ptr, cols, values)
    ctx.K = in_features
    ctx.has_bias = bias is not None


def _backward(ctx, grad):
    from .csr import CSRWeight

    row_ptr, cols, values = ctx.saved_tensors
    grad_x = grad_bias = None
    if ctx.needs_input_grad[0]:
        w = CSRWeight(row_ptr, cols, values, (row_ptr.numel() - 1, ctx.K), _trusted=True)
        grad_x = grad @ w.to_dense()
    if ctx.has_bias and ctx.needs_input_grad[5]:
        grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0)
    return grad_x, None, None, None, None, grad_bias


torch.library.register_autograd("sparseops::csr_linear", _backward, setup_context=_setup)
