"""sparsify(): swap a model's nn.Linear layers for SparseLinear, in place, one layer at a time."""
from __future__ import annotations

import logging
from typing import Callable, Iterable

import torch
from torch import nn

from .nn import SparseLinear, _make_format, parse_sparsity

__all__ = ["sparsify", "densify", "collect_activation_norms"]

log = logging.getLogger("sparseops")

_HEAD_NAMES = ("lm_head",)


def _tied_to_embedding(model: nn.Module) -> set[int]:
    """ids of Linear weights shared with an embedding (tied LM heads): pruning them would prune the
    embedding too."""
    emb = {id(mod.weight) for mod in model.modules() if isinstance(mod, nn.Embedding)}
    if hasattr(model, "get_output_embeddings"):
        try:
            out = model.get_output_embeddings()
        except Exception:  # some models raise when they have no head
            out = None
        if out is not None and getattr(out, "weight", None) is not None:
            emb.add(id(out.weight))
    return emb


def _default_skip_reason(module: nn.Linear, fqn: str, m: int, tied: set[int]) -> str | None:
    if module.in_features % m:
        return f"in_features={module.in_features} is not a multiple of m={m}"
    if fqn.split(".")[-1] in _HEAD_NAMES:
        return "LM head"
    if id(module.weight) in tied:
        return "weight tied to an embedding"
    return None


def _run_batch(model: nn.Module, batch) -> None:
    if isinstance(batch, dict):
        model(**batch)
    elif isinstance(batch, (tuple, list)):
        model(*batch)
    else:
        model(batch)


@torch.no_grad()
def collect_activation_norms(model: nn.Module, layers: dict[str, nn.Linear], calibration_data: Iterable) -> dict:
    """Per-input-channel L2 norms ||X_j||_2 of each layer's inputs over every token of calibration_data
    (batches: tensors of input ids, tuples of positional args, or dicts of model kwargs)."""
    sums = {name: None for name in layers}

    def hook_for(name):
        def hook(mod, args):
            x = args[0].detach()
            sq = x.reshape(-1, x.shape[-1]).to(torch.float64).pow(2).sum(0)
            sums[name] = sq if sums[name] is None else sums[name] + sq
        return hook

    handles = [mod.register_forward_pre_hook(hook_for(name)) for name, mod in layers.items()]
    try:
        batches = 0
        for batch in calibration_data:
            _run_batch(model, batch)
            batches += 1
    finally:
        for h in handles:
            h.remove()
    if batches == 0:
        raise ValueError("sparseops.sparsify: calibration_data yielded no batches")
    missing = [name for name, s in sums.items() if s is None]
    if missing:
        raise ValueError(f"sparseops.sparsify: the calibration data never reached {len(missing)} layer(s), "
                         f"e.g. {missing[:3]}; pass filter_fn to skip them")
    return {name: s.sqrt().to(torch.float32) for name, s in sums.items()}


def sparsify(model: nn.Module, sparsity="2:4", *, method: str = "magnitude", calibration_data: Iterable | None = None,
             filter_fn: Callable[[nn.Module, str], bool] | None = None) -> nn.Module:
    """Replace the model's nn.Linear layers by SparseLinear in place and return the model.

    filter_fn(module, fqn) -> bool picks the layers; the default takes every Linear except those whose
    in_features is not a multiple of m, the LM head (`lm_head`) and weights tied to an embedding.
    method="wanda" needs calibration_data: the inputs' per-channel L2 norms are collected with forward hooks
    over it first. Leaves `model.sparseops_summary` (swapped / skipped layers, bytes before/after) and logs it.
    """
    spec = parse_sparsity(sparsity)
    fmt = _make_format(spec)
    if method not in ("magnitude", "wanda"):
        raise ValueError(f"sparseops.sparsify: unknown method {method!r} (expected 'magnitude' or 'wanda')")
    if method == "wanda" and calibration_data is None:
        raise ValueError("sparseops.sparsify: method='wanda' needs calibration_data (batches of input ids or "
                         "dicts of model kwargs)")

    tied = _tied_to_embedding(model)
    chosen: dict[str, nn.Linear] = {}
    skipped: dict[str, str] = {}
    for fqn, mod in model.named_modules():
        if type(mod) is not nn.Linear:  # SparseLinear or subclasses with their own forward are left alone
            continue
        reason = _default_skip_reason(mod, fqn, fmt.m, tied)
        if filter_fn is not None:
            if not filter_fn(mod, fqn):
                reason = reason or "filter_fn"
            elif reason is not None and mod.in_features % fmt.m == 0:
                reason = None  # the caller asked for it explicitly
        if reason is None:
            chosen[fqn] = mod
        else:
            skipped[fqn] = reason

    norms = collect_activation_norms(model, chosen, calibration_data) if method == "wanda" else {}

    bytes_before = bytes_after = 0
    swapped = list(chosen)
    for fqn in swapped:
        lin = chosen.pop(fqn)  # hold no reference to the dense layer once it is swapped
        parent_name, _, child = fqn.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        new = SparseLinear.from_dense(lin, sparsity, method=method, activation_norms=norms.pop(fqn, None))
        bytes_before += lin.weight.nbytes
        bytes_after += new.weight_nbytes
        setattr(parent, child, new)
        del lin, new  # the dense weight is freed as soon as nothing else holds it

    summary = {
        "sparsity": repr(fmt),
        "method": method,
        "swapped": swapped,
        "skipped": skipped,
        "bytes_before": bytes_before,
        "bytes_after": bytes_after,
    }
    model.sparseops_summary = summary
    ratio = bytes_after / bytes_before if bytes_before else float("nan")
    log.info("sparseops.sparsify: %s %s: swapped %d Linear layers, skipped %d; weight bytes %d -> %d (%.1f%%)",
             summary["sparsity"], method, len(swapped), len(skipped), bytes_before, bytes_after, 100 * ratio)
    return model


def densify(model: nn.Module) -> nn.Module:
    """The inverse swap: every SparseLinear becomes an nn.Linear holding its decompressed (pruned) weight,
    in place. Useful as a dense reference for a sparsified model, or to fine-tune it."""
    names = [fqn for fqn, mod in model.named_modules() if isinstance(mod, SparseLinear)]
    for fqn in names:
        parent_name, _, child = fqn.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, getattr(parent, child).to_dense())
    return model
