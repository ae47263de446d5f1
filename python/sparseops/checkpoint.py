"""Save and load sparsified models as safetensors; load compressed-tensors "sparse-24-bitmask" checkpoints.

    sparseops.save(model, "m.safetensors")                    # state_dict + header metadata
    model = sparseops.load(build_dense_model(), "m.safetensors")
    model = sparseops.checkpoint.load_compressed_tensors(build_dense_model(), "path/to/hf_dir")

Loading takes a dense model of the same architecture (random weights, or on the meta device): every layer the
file stores sparse replaces its nn.Linear by a SparseLinear built from the stored tensors (no pruning, no
densifying), one layer at a time, read lazily with safetensors.safe_open, so memory stays near the model's own.
Tensors are validated (SparseLinear's loader) before any kernel can read them; a bad file is a ValueError.
"""
from __future__ import annotations

import contextlib
import glob
import json
import logging
import os

import torch
from torch import nn

from .nn import _FORMATS, CSRFormat, NMFormat, SparseLinear

__all__ = ["save", "load", "load_compressed_tensors"]

log = logging.getLogger("sparseops")

_META = "sparse_meta"
_META_LEN = 6  # [format id, version, p0, p1, out_features, in_features]
_CT_FORMAT = "sparse-24-bitmask"
_CT_KEYS = ("compressed", "bitmask", "shape")


def save(model: nn.Module, path, *, metadata: dict | None = None) -> None:
    """Write model.state_dict() to a .safetensors file. Shared tensors (an LM head tied to the embedding) are
    stored once (safetensors.torch.save_model); the header metadata records the sparseops version and the
    sparsify summary's sparsity and method, plus any `metadata` given (strings)."""
    from safetensors.torch import save_model

    from . import __version__
    md = {"format": "pt", "sparseops.version": __version__}
    summary = getattr(model, "sparseops_summary", None)
    if isinstance(summary, dict):
        md.update({f"sparseops.{k}": str(summary[k]) for k in ("sparsity", "method") if k in summary})
    md.update({str(k): str(v) for k, v in (metadata or {}).items()})
    save_model(model, os.fspath(path), metadata=md, force_contiguous=True)


def load(model: nn.Module, path, *, strict: bool = True) -> nn.Module:
    """Load a file written by save() into `model` (in place; returned). For every `<prefix>.sparse_meta` in
    the file, the nn.Linear at `<prefix>` becomes a SparseLinear of the stored format (a SparseLinear there is
    replaced the same way, so an already sparsified model loads too); the other tensors load as
    load_state_dict would. A model on the meta device
    takes the file's tensors as they are (its non-persistent buffers, such as rotary tables, are its own
    business); otherwise tensors are copied into the model's device and floating dtype.
    strict: every model tensor must be in the file and every file tensor used. Raises ValueError."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"sparseops.load: no such file {path!r}")
    with _Reader([path]) as f:
        layers = {}
        for key in f.keys():
            if key == _META or key.endswith("." + _META):
                prefix = key[:-len(_META)].rstrip(".")
                names = f.children(prefix)
                layers[prefix] = ({n: _key(prefix, n) for n in names}, None)
        _load(model, f, layers, strict, "sparseops.load")
    return model


def load_compressed_tensors(model: nn.Module, path, *, strict: bool = True) -> nn.Module:
    """Load a compressed-tensors checkpoint whose sparse weights are "sparse-24-bitmask" (`<layer>.compressed`
    values [out, in/2], `<layer>.bitmask` uint8 [out, ceil(in/8)] packed little-endian along rows,
    `<layer>.shape` int64 [2, 1]) into a dense `model`: each such layer becomes a 2:4 SparseLinear built from
    those tensors, one at a time; the rest loads as dense tensors. `path`: a .safetensors file, or a
    directory (an HF model directory: its *.safetensors shards, and config.json's
    quantization_config.sparsity_config is checked: format, sparsity_structure "2:4", no quantization).
    Which layers are sparse is read from the file's keys (the config's targets/ignore only chose them)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        files = _shards(path)
        config = _read_json(os.path.join(path, "config.json"))
    elif os.path.isfile(path):
        files, config = [path], None
    else:
        raise ValueError(f"sparseops.load_compressed_tensors: no such file or directory {path!r}")
    _check_ct_config(config, path)
    with _Reader(files) as f:
        layers = {}
        for key in f.keys():
            if not key.endswith(".compressed"):
                continue
            prefix = key[:-len(".compressed")]
            missing = [k for k in _CT_KEYS if _key(prefix, k) not in f]
            if missing:
                raise ValueError(f"sparseops.load_compressed_tensors: layer {prefix!r} has '{key}' but no "
                                 f"{', '.join(repr(_key(prefix, k)) for k in missing)}")
            names = {k: _key(prefix, k) for k in _CT_KEYS}
            if _key(prefix, "bias") in f:
                names["bias"] = _key(prefix, "bias")
            layers[prefix] = (names, _from_ct)
        _load(model, f, layers, strict, "sparseops.load_compressed_tensors")
    return model


# ---- file access ----

def _key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class _Reader:
    """One or more safetensors files opened with safe_open: tensors are read one at a time, on demand."""

    def __init__(self, paths):
        self.paths = list(paths)

    def __enter__(self):
        from safetensors import safe_open
        self._stack = contextlib.ExitStack()
        self.where, self.metadata = {}, {}
        try:
            for p in self.paths:
                try:
                    h = self._stack.enter_context(safe_open(p, framework="pt", device="cpu"))
                except Exception as e:  # safetensors' own error type for a corrupt header
                    raise ValueError(f"sparseops: {p!r} is not a readable safetensors file: {e}") from None
                self.metadata.update(h.metadata() or {})
                for k in h.keys():
                    self.where[k] = h
            self.by_prefix = {}
            for k in self.where:
                parent, _, name = k.rpartition(".")
                self.by_prefix.setdefault(parent, []).append(name)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc):
        self._stack.close()

    def keys(self):
        return self.where.keys()

    def __contains__(self, key) -> bool:
        return key in self.where

    def children(self, prefix: str) -> list:
        """Tensor names directly under a module prefix."""
        return self.by_prefix.get(prefix, [])

    def get(self, key: str) -> torch.Tensor:
        return self.where[key].get_tensor(key)


def _shards(directory: str) -> list:
    index = _read_json(os.path.join(directory, "model.safetensors.index.json"))
    if index is not None:
        files = sorted(set(index.get("weight_map", {}).values()))
        files = [os.path.join(directory, f) for f in files]
    else:
        files = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
    if not files:
        raise ValueError(f"sparseops.load_compressed_tensors: no .safetensors files in {directory!r}")
    return files


def _read_json(path: str):
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError) as e:
        raise ValueError(f"sparseops: cannot read {path!r}: {e}") from None


def _check_ct_config(config, path: str) -> None:
    if not isinstance(config, dict):
        return
    qc = config.get("quantization_config") or config.get("compression_config") or {}
    sc = qc.get("sparsity_config") or config.get("sparsity_config") or {}
    where = f"sparseops.load_compressed_tensors: {path!r}"
    if qc.get("config_groups"):
        raise ValueError(f"{where}: quantized compressed-tensors checkpoints (quantization_config.config_groups) "
                         f"are not supported; only {_CT_FORMAT} with unquantized values")
    fmt = sc.get("format")
    if fmt not in (None, "dense", _CT_FORMAT):
        raise ValueError(f"{where}: sparsity format {fmt!r} is not supported (only {_CT_FORMAT!r})")
    structure = sc.get("sparsity_structure")
    if fmt == _CT_FORMAT and structure is not None and str(structure).lower() != "2:4":
        raise ValueError(f"{where}: {_CT_FORMAT} with sparsity_structure {structure!r} (expected '2:4')")


# ---- loading ----

def _from_ct(prefix: str, t: dict, where: str) -> dict:
    """compressed-tensors tensors of one layer -> SparseLinear state (values, mask, sparse_meta, bias)."""
    from .nm import NMWeight
    try:
        w = NMWeight.from_compressed_tensors(t["compressed"], t["bitmask"], t["shape"], n=2, m=4)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}: layer {prefix!r}: malformed {_CT_FORMAT} tensors: {e}") from None
    out = {"values": w.values, "mask": w.mask, _META: NMFormat(2, 4).meta(*w.shape)}
    if "bias" in t:
        out["bias"] = t["bias"]
    return out


def _parse_meta(meta, prefix: str, where: str):
    """sparse_meta -> (format object, out_features, in_features), or a ValueError naming the problem."""
    if not isinstance(meta, torch.Tensor) or meta.dtype != torch.int64 or meta.dim() != 1 or \
            meta.numel() != _META_LEN:
        desc = f"{meta.dtype} {tuple(meta.shape)}" if isinstance(meta, torch.Tensor) else type(meta).__name__
        raise ValueError(f"{where}: layer {prefix!r}: sparse_meta must be int64 [{_META_LEN}], got {desc}")
    fid, version, p0, p1, out_f, in_f = meta.tolist()
    cls = _FORMATS.get(fid)
    if cls is None:
        known = {k: v.name for k, v in _FORMATS.items()}
        raise ValueError(f"{where}: layer {prefix!r}: unknown sparse format id {fid} (this sparseops knows {known})")
    if version != cls.version:
        raise ValueError(f"{where}: layer {prefix!r}: {cls.name} format version {version}, but this sparseops "
                         f"reads version {cls.version}")
    if out_f <= 0 or in_f <= 0:
        raise ValueError(f"{where}: layer {prefix!r}: sparse_meta has shape [{out_f}, {in_f}]")
    if cls is NMFormat:
        try:
            fmt = NMFormat(p0, p1)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{where}: layer {prefix!r}: {e}") from None
    else:
        fmt = CSRFormat(0.0)  # the real sparsity is set from the stored entries
    return fmt, out_f, in_f


def _load(model: nn.Module, f: _Reader, layers: dict, strict: bool, where: str) -> None:
    """layers: {prefix: ({name: file key}, convert or None)} for the layers stored sparse."""
    modules = dict(model.named_modules())
    meta_model = any(t.is_meta for t in (*model.parameters(), *model.buffers()))

    # 1. Check every sparse layer against the model before changing anything (metas are tiny to read).
    plan = []
    for prefix, (names, convert) in sorted(layers.items()):
        mod = modules.get(prefix)
        if mod is None:
            raise ValueError(f"{where}: the file stores sparse layer {prefix!r} but the model has no module "
                             f"{prefix!r} (a different architecture?)")
        if not isinstance(mod, (nn.Linear, SparseLinear)):
            raise ValueError(f"{where}: the file stores {prefix!r} as a sparse Linear but the model's module is "
                             f"{type(mod).__name__}, not an nn.Linear")
        if convert is None:
            fmt, out_f, in_f = _parse_meta(f.get(names[_META]), prefix, where)
            # other names under the prefix stay unused: strict reports them
            names = {n: k for n, k in names.items() if n in (*fmt.buffers, _META, "bias")}
        else:
            shape = f.get(names["shape"]).flatten().tolist()
            if len(shape) != 2:
                raise ValueError(f"{where}: layer {prefix!r}: shape {shape} is not [rows, cols]")
            fmt, (out_f, in_f) = NMFormat(2, 4), shape
        if (out_f, in_f) != (mod.out_features, mod.in_features):
            raise ValueError(f"{where}: layer {prefix!r} is [{out_f}, {in_f}] (out, in) in the file but "
                             f"[{mod.out_features}, {mod.in_features}] in the model")
        if prefix == "" and not isinstance(mod, SparseLinear):
            raise ValueError(f"{where}: the model itself is an nn.Linear, which cannot be swapped in place; "
                             f"load into a SparseLinear or a module holding the Linear")
        plan.append((prefix, names, convert, fmt, mod))

    # 2. Swap and fill the sparse layers, one at a time.
    used, filled = set(), set()  # file keys read, model keys loaded
    for prefix, names, convert, fmt, mod in plan:
        t = {n: f.get(k) for n, k in names.items()}
        used.update(names.values())
        if convert is not None:
            t = convert(prefix, t, where)
        ref = mod.weight if isinstance(mod, nn.Linear) else mod.values
        if ref.is_meta:  # take the file's tensors as they are
            device, dtype = torch.device("cpu"), None
        else:  # the model's device and floating dtype, as load_state_dict copies
            device, dtype = ref.device, ref.dtype
        t = {n: v.to(device=device, dtype=dtype if dtype is not None and v.is_floating_point() else v.dtype)
             for n, v in t.items()}
        sd = {_key(prefix, n): v for n, v in t.items()}
        filled.update(sd)
        if prefix == "":  # the model is this SparseLinear: its own loader checks the format
            _load_module(mod, sd, "", meta_model, strict, where, require_all=True)
            continue
        if isinstance(fmt, CSRFormat) and "values" in t:  # the stored sparsity, for repr
            fmt = CSRFormat(1.0 - t["values"].numel() / (mod.out_features * mod.in_features))
        vals = t.get("values")
        new = SparseLinear._uninitialized(fmt, mod.in_features, mod.out_features, "bias" in t,
                                          dtype=vals.dtype if vals is not None else torch.float32)
        _load_module(new, sd, prefix, True, strict, where, require_all=True)
        parent, _, child = prefix.rpartition(".")
        setattr(modules[parent], child, new)
        del t, sd, new  # one layer's tensors at a time

    # 3. Everything else, module by module; tied tensors are loaded once and stay tied.
    swapped = {p for p, *_ in plan}
    state = model.state_dict(keep_vars=True)
    ties = {}
    for k, v in state.items():
        ties.setdefault(id(v), []).append(k)
    for name, mod in model.named_modules():
        if name in swapped:
            continue
        own = {k for k, v in (*mod._parameters.items(), *mod._buffers.items())
               if v is not None and k not in mod._non_persistent_buffers_set}
        keys = [_key(name, k) for k in f.children(name) if k in own]
        if keys:
            _load_module(mod, {k: f.get(k) for k in keys}, name, meta_model, strict, where)
            used.update(keys)
            filled.update(keys)

    # 4. Missing keys: a tied twin was loaded (re-tied here if assign replaced the tensor), or the file
    # records the key as an alias (save_model's metadata "dropped name": "kept name").
    missing = []
    for k, v in state.items():
        if k in filled:
            continue
        twin = next((o for o in ties[id(v)] if o in filled), None)
        if twin is not None:
            if meta_model:
                _set(model, k, _get(model, twin))
        elif f.metadata.get(k) in f:
            _load_module(_owner(model, k), {k: f.get(f.metadata[k])}, k.rpartition(".")[0], meta_model, False,
                         where)
            used.add(f.metadata[k])
        else:
            missing.append(k)
    unexpected = sorted(k for k in f.keys() if k not in used)
    if (missing or unexpected) and strict:
        raise ValueError(f"{where}: the file does not match the model: missing {_few(missing)}, unexpected "
                         f"{_few(unexpected)} (strict=False loads what matches)")
    if missing or unexpected:
        log.warning("%s: missing %s, unexpected %s", where, _few(missing), _few(unexpected))


def _load_module(mod: nn.Module, sd: dict, name: str, assign: bool, strict: bool, where: str,
                 require_all: bool = False) -> None:
    """Load one module's own tensors (keys carry its prefix) with its _load_from_state_dict, which for a
    SparseLinear validates the format; errors become one ValueError."""
    prefix = name + "." if name else ""
    missing, unexpected, errors = [], [], []
    mod._load_from_state_dict(sd, prefix, {"assign_to_params_buffers": assign}, strict, missing, unexpected,
                              errors)
    if require_all and missing:  # a sparse layer's tensors come as a set
        errors.append(f"the file has no {_few(missing)}")
    if errors:
        raise ValueError(f"{where}: module {name or '(root)'!r}: " + "; ".join(errors))


def _owner(model: nn.Module, key: str) -> nn.Module:
    parent = key.rpartition(".")[0]
    return model.get_submodule(parent) if parent else model


def _get(model: nn.Module, key: str):
    return getattr(_owner(model, key), key.rpartition(".")[2])


def _set(model: nn.Module, key: str, value) -> None:
    setattr(_owner(model, key), key.rpartition(".")[2], value)


def _few(keys: list, n: int = 5) -> str:
    if not keys:
        return "none"
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(repr(k) for k in keys[:n]) + more
