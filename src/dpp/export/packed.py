"""The packed k-of-n file format: a safetensors file holding only the kept weights and their
indices, and everything else needed to restore the whole model.

Layout of a file (format version 1)
-----------------------------------
For every pruned layer ``L`` (its weight cut into ``G`` groups of ``n`` candidates, ``k`` kept,
each candidate standing for ``wpc`` weights, see :class:`~dpp.GroupLayout`):

=======================  ==================================  ======================================
tensor                   shape                               content
=======================  ==================================  ======================================
``L.weight.indices``     ``[G, k]``                          kept candidates of each group, sorted
                                                             ascending; ``uint8`` if ``n <= 256``,
                                                             ``int16`` if ``n <= 32768``, else
                                                             ``int32``
``L.weight.values``      ``[G, k]`` (weight, block) or       the kept weights (float, the model's
                         ``[G, k, wpc]`` (kernel, filter)    dtype); absent when quantized
``L.weight.codes``       like ``values``                     ``int8`` codes when quantized
``L.weight.scale``       ``[C_out, 1, ...]`` / ``[1, ...]``  float scales: weight = scale * codes
``L.input.scale``        ``[]``                              fixed 8-bit input scale (if any)
=======================  ==================================  ======================================

A layer quantized but not pruned stores ``L.weight.codes`` shaped like its weight and
``L.weight.scale``. Every other entry of the plain model's state dict (biases, unpruned
layers, BatchNorm parameters and buffers, ...) is stored densely under its own key, so the
whole model restores. The safetensors header metadata holds ``format = "dpp-packed"``,
``format_version`` and ``dpp``: a JSON object with, per layer, the module type, granularity,
``n``, ``k``, block size, number of groups, weight shape, dtype, bits, scale mode and index
dtype, and ``digests``: the SHA-256 of every tensor's bytes, checked by :func:`read_packed`
(a file without them, written before they were added, is read with a warning).

A Hugging Face ``Conv1D`` (weight ``[in, out]``) is stored like a Linear layer: its layout,
``weight_shape`` and tensors are those of the transposed ``[out, in]`` weight.

Quantized codes are stored one per ``int8`` byte (not bit-packed): the file of a 4-bit model is
therefore larger than its theoretical size, which :class:`PackedInfo` reports side by side.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..bake import bake
from ..granularity import GroupLayout
from ..layers import (
    FinalizedLayer,
    InputQuantHook,
    canonical_weight,
    is_dpp_layer,
    is_hf_conv1d,
)
from ..modeltools import module_aliases
from ..pruner import Pruner
from ..quantization import QuantSpec
from ..storage import storage_report

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "PackedFileError",
    "PackedInfo",
    "PackedLayer",
    "PackedModel",
    "index_dtype",
    "load_packed",
    "read_packed",
    "save_packed",
]

FORMAT_NAME = "dpp-packed"
FORMAT_VERSION = 1

_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}
_INDEX_DTYPES = {"uint8": torch.uint8, "int16": torch.int16, "int32": torch.int32}


class PackedFileError(ValueError):
    """A packed file is unreadable, corrupt, or does not match the model it is loaded into."""


def index_dtype(n: int) -> torch.dtype:
    """The narrowest integer dtype safetensors stores that holds every index ``0 .. n-1``.

    ``uint8`` for ``n <= 256``, ``int16`` for ``n <= 32768``, else ``int32``.
    """
    if n <= 256:
        return torch.uint8
    if n <= 2**15:
        return torch.int16
    return torch.int32


def _key(name: str, suffix: str) -> str:
    return f"{name}.{suffix}" if name else suffix


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass
class PackedLayer:
    """One layer of a packed file (or of a pruned model, before writing).

    Attributes:
        name: the module's name in ``model.named_modules()``.
        module_type: ``"Linear"`` or ``"Conv1d/2d/3d"``.
        layout: the group layout, or ``None`` for a layer quantized but not pruned.
        quant: the quantization spec, or ``None`` for float weights.
        weight_shape: shape of the dense weight.
        dtype: dtype of the dense weight.
        indices: ``[G, k]`` kept candidates per group, sorted (``None`` when not pruned).
        values: float ``[G, k]`` or ``[G, k, wpc]`` kept weights (``None`` when quantized).
        codes: ``int8`` codes like ``values`` (or like the weight when not pruned).
        scale: quantization scales, broadcastable onto the weight.
        activation_scale: fixed input scale (0-d) when the input is fake-quantized.
    """

    name: str
    module_type: str
    layout: GroupLayout | None
    quant: QuantSpec | None
    weight_shape: tuple[int, ...]
    dtype: torch.dtype
    indices: Tensor | None = None
    values: Tensor | None = None
    codes: Tensor | None = None
    scale: Tensor | None = None
    activation_scale: Tensor | None = None

    @property
    def stores_weight(self) -> bool:
        """Whether the file stores this weight packed (pruned) or as codes (quantized); a layer
        with only its input quantized keeps its weight among the dense tensors."""
        return self.layout is not None or self.quant is not None

    @property
    def kept_values(self) -> Tensor | None:
        """The kept weights as floats (``scale * codes`` when quantized), like ``values``."""
        if self.layout is None:
            return None
        if self.quant is None:
            return self.values
        return self.dense_weight().reshape(self._group_view()).gather(1, self._gather_index())

    def _group_view(self) -> tuple[int, int, int]:
        lay = self.layout
        assert lay is not None
        return (lay.num_groups, lay.n, lay.weights_per_candidate)

    def _gather_index(self) -> Tensor:
        lay = self.layout
        assert lay is not None and self.indices is not None
        idx = self.indices.long().reshape(lay.num_groups, lay.k, 1)
        return idx.expand(lay.num_groups, lay.k, lay.weights_per_candidate)

    def _scatter(self, kept: Tensor, dtype: torch.dtype) -> Tensor:
        g, n, wpc = self._group_view()
        full = torch.zeros(g, n, wpc, dtype=dtype, device=kept.device)
        full.scatter_(1, self._gather_index().to(kept.device), kept.reshape(g, -1, wpc).to(dtype))
        return full.reshape(self.weight_shape)

    def mask(self) -> Tensor | None:
        """Bool mask shaped like the weight (``None`` when not pruned)."""
        if self.layout is None:
            return None
        g, _, wpc = self._group_view()
        ones = torch.ones(g, self.layout.k, wpc, dtype=torch.bool)
        return self._scatter(ones, torch.bool)

    def dense_weight(self) -> Tensor:
        """The finalized dense weight: zeros where pruned, ``scale * codes`` if quantized."""
        if self.quant is not None:
            assert self.codes is not None and self.scale is not None
            codes = self.codes if self.layout is None else self._scatter(self.codes, torch.int8)
            return self.scale * codes.to(self.scale.dtype)
        assert self.values is not None
        return self._scatter(self.values, self.dtype)

    def meta(self) -> dict[str, Any]:
        lay = self.layout
        return {
            "module": self.module_type,
            "weight_shape": list(self.weight_shape),
            "dtype": _dtype_name(self.dtype),
            "granularity": None if lay is None else lay.granularity,
            "num_groups": None if lay is None else lay.num_groups,
            "n": None if lay is None else lay.n,
            "k": None if lay is None else lay.k,
            "block_size": None if lay is None else lay.block_size,
            "weights_per_candidate": None if lay is None else lay.weights_per_candidate,
            "bits": 32 if self.quant is None else self.quant.bits,
            "scale_mode": None if self.quant is None else self.quant.scale,
            "index_dtype": None if self.indices is None else _dtype_name(self.indices.dtype),
            "activation_scale": self.activation_scale is not None,
        }


def _group_indices(name: str, layout: GroupLayout, mask: Tensor) -> Tensor:
    """``[G, k]`` sorted kept candidates of a bool mask shaped like the weight."""
    g, n, wpc = layout.num_groups, layout.n, layout.weights_per_candidate
    cand = mask.reshape(g, n, wpc)
    gm = cand[..., 0]
    if wpc > 1 and not bool((cand == gm.unsqueeze(-1)).all()):
        raise ValueError(
            f"layer {name!r}: its {layout.granularity} mask keeps part of a candidate; "
            "every candidate must be kept or pruned whole"
        )
    counts = gm.sum(-1)
    if not bool((counts == layout.k).all()):
        raise ValueError(
            f"layer {name!r}: the mask keeps between {int(counts.min())} and "
            f"{int(counts.max())} of n={n} per group, not exactly k={layout.k}"
        )
    order = torch.argsort((~gm).to(torch.uint8), dim=1, stable=True)[:, : layout.k]
    return order.to(index_dtype(n)).contiguous()


def packed_layer(name: str, rec: FinalizedLayer, module: nn.Module) -> PackedLayer:
    """The :class:`PackedLayer` of a baked layer: its record and its plain ``module``."""
    weight = canonical_weight(module).detach()
    layer = PackedLayer(
        name=name,
        module_type=rec.module_type,
        layout=rec.layout,
        quant=rec.quant,
        weight_shape=tuple(weight.shape),
        dtype=weight.dtype,
        activation_scale=rec.activation_scale,
    )
    lay = rec.layout
    if lay is not None:
        assert rec.mask is not None
        layer.indices = _group_indices(name, lay, rec.mask.cpu())
        gather = layer._gather_index()
        squeeze = lay.granularity in ("weight", "block")

        def kept(t: Tensor) -> Tensor:
            v = t.detach().cpu().reshape(layer._group_view()).gather(1, gather)
            return (v.squeeze(-1) if squeeze else v).contiguous()

        if rec.quant is None:
            layer.values = kept(weight)
        else:
            assert rec.codes is not None
            layer.codes = kept(rec.codes)
    elif rec.quant is not None:
        assert rec.codes is not None
        layer.codes = rec.codes.detach().cpu().contiguous()
    if rec.quant is not None:
        assert rec.scale is not None
        layer.scale = rec.scale.detach().cpu().contiguous()
    return layer


# ---------------------------------------------------------------------------- size report
@dataclass
class PackedInfo:
    """What :func:`save_packed` wrote, next to the theoretical size.

    Attributes:
        path: the file written.
        file_bytes: its size on disk.
        theoretical_bits: the packed k-of-n layout of ``dpp.storage.storage_report``
            (``k`` values of ``b`` bits and ``k * ceil(log2 n)``-bit indices or an ``n``-bit
            bitmap per group, fp32 for the rest).
        dense_fp32_bits: the same model with every parameter and buffer as fp32.
        accounting: where the theoretical size comes from (``"dpp.storage"``).
        layers: ``{name: file bytes of the layer's weight tensors}``.
    """

    path: Path
    file_bytes: int
    theoretical_bits: int
    dense_fp32_bits: int
    accounting: str
    layers: dict[str, int] = field(default_factory=dict)

    @property
    def theoretical_bytes(self) -> float:
        return self.theoretical_bits / 8

    def __str__(self) -> str:
        dense = self.dense_fp32_bits / 8
        return (
            f"{self.path}: {self.file_bytes:,} bytes on disk; theoretical "
            f"{self.theoretical_bytes:,.0f} bytes ({self.accounting}); dense fp32 "
            f"{dense:,.0f} bytes ({dense / max(self.file_bytes, 1):.2f}x the file)"
        )


def tensor_digest(t: Tensor) -> str:
    """``"sha256:<hex>"`` of a tensor's bytes (contiguous, on CPU)."""
    data = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------- save
def save_packed(model_or_pruner: nn.Module | Pruner, path: str | os.PathLike) -> PackedInfo:
    """Write a pruned model as a packed k-of-n safetensors file.

    Args:
        model_or_pruner: a model holding DPP layers (its deterministic masks are used, weights
            quantized with :func:`dpp.quantization.quantize_weight` as ``finalize()`` would),
            or a :class:`~dpp.Pruner` before or after :meth:`~dpp.Pruner.finalize` (after it,
            the masks and codes of ``pruner.finalized_layers`` are used: zeros are never taken
            for pruned weights). The model is not modified.
        path: the file to write (conventionally ``*.safetensors``).

    Returns:
        :class:`PackedInfo`: file size next to the theoretical and dense fp32 sizes.

    Example:
        >>> import tempfile, torch, dpp
        >>> from dpp.export import save_packed, load_packed
        >>> model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(),
        ...                             torch.nn.Linear(32, 10))
        >>> pruner = dpp.prune(model, density=0.25)
        >>> _ = model.eval(); _ = pruner.finalize()
        >>> path = tempfile.mkdtemp() + "/model.safetensors"
        >>> info = save_packed(pruner, path)
        >>> fresh = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(),
        ...                             torch.nn.Linear(32, 10))
        >>> x = torch.randn(3, 64)
        >>> torch.equal(load_packed(path, fresh)(x), model(x))
        True
    """
    from safetensors.torch import save_file

    path = Path(path)
    baked = bake(model_or_pruner, what="save_packed", copy=False)
    model = baked.model
    layers = {
        name: packed_layer(name, rec, baked.module(name)) for name, rec in baked.layers.items()
    }
    aliases = module_aliases(model)

    # Dense entries: the plain model's state dict without the packed weights.
    skip: set[str] = set()
    for name, layer in layers.items():
        if layer.stores_weight:
            skip.update(_key(alias, "weight") for alias in aliases[id(baked.module(name))])
    dense = {
        key: value.detach().cpu().contiguous().clone()
        for key, value in model.state_dict().items()
        if key not in skip
    }

    tensors: dict[str, Tensor] = {}
    for name, layer in layers.items():
        for suffix, t in (
            ("weight.indices", layer.indices),
            ("weight.values", layer.values),
            ("weight.codes", layer.codes),
            ("weight.scale", layer.scale),
            ("input.scale", layer.activation_scale),
        ):
            if t is not None:
                key = _key(name, suffix)
                if key in dense:
                    raise ValueError(
                        f"save_packed: the state-dict key {key!r} clashes with the format"
                    )
                tensors[key] = t.detach().cpu().contiguous().clone()
    tensors.update(dense)
    digests = {key: tensor_digest(t) for key, t in sorted(tensors.items())}
    meta = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "dpp": json.dumps(
            {
                "format_version": FORMAT_VERSION,
                "torch_version": torch.__version__.split("+")[0],
                "layers": {name: layer.meta() for name, layer in layers.items()},
                "dense": sorted(dense),
                "digests": digests,
            }
        ),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)  # atomic: a killed write never leaves a partial file at path
    finally:
        tmp.unlink(missing_ok=True)
    report = storage_report(baked)
    per_layer = {
        name: sum(
            t.numel() * t.element_size()
            for t in (layer.indices, layer.values, layer.codes, layer.scale)
            if t is not None
        )
        for name, layer in layers.items()
    }
    return PackedInfo(
        path,
        path.stat().st_size,
        report.packed_bits,
        report.dense_fp32_bits,
        "dpp.storage",
        per_layer,
    )


# ---------------------------------------------------------------------------- read
@dataclass
class PackedModel:
    """The content of a packed file: its layers and dense tensors (see :func:`read_packed`)."""

    path: Path
    layers: dict[str, PackedLayer]
    dense: dict[str, Tensor]
    metadata: dict[str, Any]


def _err(path: Path, msg: str, fix: str) -> PackedFileError:
    return PackedFileError(f"{path}: {msg}. {fix}")


_REEXPORT = "Re-export the model with dpp.export.save_packed(pruner, path)."


def read_packed(path: str | os.PathLike) -> PackedModel:
    """Read and validate a packed file without a model.

    Checks the format name and version, every layer's metadata, tensor shapes and dtypes, that
    indices lie in ``[0, n)`` and that no group repeats an index.

    Raises:
        FileNotFoundError: no such file.
        PackedFileError: unreadable (e.g. truncated), not a dpp packed file, another format
            version, or inconsistent content; the message names the file, the layer and a fix.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such packed file")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types
        raise _err(
            path,
            f"cannot be read as a safetensors file ({type(exc).__name__}: {exc}); it is "
            "truncated or corrupt",
            _REEXPORT,
        ) from exc
    if header.get("format") != FORMAT_NAME or "dpp" not in header:
        raise _err(
            path,
            "is a safetensors file but not a dpp packed file (no 'dpp-packed' header metadata)",
            "Load plain state dicts with safetensors.torch.load_file; " + _REEXPORT,
        )
    version = header.get("format_version")
    if version != str(FORMAT_VERSION):
        raise _err(
            path,
            f"has packed format version {version}, this dpp reads version {FORMAT_VERSION}",
            "Load it with the dpp version that wrote it, or re-export the model with this one.",
        )
    try:
        meta = json.loads(header["dpp"])
        layer_meta: dict[str, dict] = meta["layers"]
        dense_keys: list[str] = meta["dense"]
    except (ValueError, KeyError, TypeError) as exc:
        raise _err(path, f"has unreadable dpp metadata ({exc})", _REEXPORT) from exc
    _verify_digests(path, meta.get("digests"), tensors)

    layers: dict[str, PackedLayer] = {}
    for name, lm in layer_meta.items():
        layers[name] = _read_layer(path, name, lm, tensors)
    dense: dict[str, Tensor] = {}
    for key in dense_keys:
        if key not in tensors:
            raise _err(path, f"lacks the dense tensor {key!r} listed in its metadata", _REEXPORT)
        dense[key] = tensors[key]
    return PackedModel(path, layers, dense, meta)


_DAMAGED = (
    "The file is damaged (a bad disk, an interrupted copy) or was edited; restore it from a "
    "copy or re-export the model with dpp.export.save_packed(pruner, path)."
)


def _verify_digests(path: Path, digests: Any, tensors: dict[str, Tensor]) -> None:
    """Every tensor is there and matches the SHA-256 recorded when the file was written."""
    if digests is None:
        warnings.warn(
            f"{path}: written without tensor digests (by an older dpp), so its content cannot be "
            "verified; re-export it with dpp.export.save_packed to add them",
            stacklevel=3,
        )
        return
    if not isinstance(digests, dict):
        raise _err(path, "has unreadable digests in its dpp metadata", _DAMAGED)
    missing = sorted(set(digests) - set(tensors))
    if missing:
        raise _err(path, f"lacks the tensor(s) {missing[:8]} that it was written with", _DAMAGED)
    extra = sorted(set(tensors) - set(digests))
    if extra:
        raise _err(path, f"holds tensor(s) {extra[:8]} that it was not written with", _DAMAGED)
    for key, expected in digests.items():
        if tensor_digest(tensors[key]) != expected:
            raise _err(
                path,
                f"the tensor {key!r} does not match the SHA-256 digest recorded when the file was "
                "written (its bytes changed, e.g. a flipped bit)",
                _DAMAGED,
            )


def _read_layer(path: Path, name: str, lm: dict, tensors: dict[str, Tensor]) -> PackedLayer:
    where = f"layer {name!r}"

    def get(suffix: str, required: bool) -> Tensor | None:
        key = _key(name, suffix)
        if key not in tensors:
            if required:
                raise _err(path, f"{where}: the tensor {key!r} is missing", _REEXPORT)
            return None
        return tensors[key]

    try:
        shape = tuple(int(s) for s in lm["weight_shape"])
        dtype = _DTYPES[lm["dtype"]]
        bits = lm["bits"]
        quant = None if bits == 32 else QuantSpec(bits, lm["scale_mode"])
        layout = None
        if lm["granularity"] is not None:
            layout = GroupLayout.for_weight(
                shape,
                lm["granularity"],
                k=int(lm["k"]),
                block_size=lm["block_size"],
                is_conv=len(shape) > 2,
                name=name,
            )
            if layout.n != lm["n"] or layout.num_groups != lm["num_groups"]:
                raise ValueError(
                    f"n={lm['n']}, groups={lm['num_groups']} do not match the weight shape"
                )
    except (KeyError, TypeError, ValueError) as exc:
        raise _err(path, f"{where}: invalid metadata ({exc})", _REEXPORT) from exc

    layer = PackedLayer(name, lm["module"], layout, quant, shape, dtype)
    layer.activation_scale = get("input.scale", bool(lm.get("activation_scale")))
    if quant is not None:
        layer.scale = get("weight.scale", True)
        assert layer.scale is not None
        if layer.scale.dim() != len(shape) or layer.scale.shape[0] not in (1, shape[0]):
            raise _err(
                path,
                f"{where}: weight.scale has shape {list(layer.scale.shape)}, which does not "
                f"broadcast per channel onto the weight {list(shape)}",
                _REEXPORT,
            )
    if layout is None:
        if quant is None:
            return layer  # only the input is quantized: the weight is a dense tensor
        layer.codes = get("weight.codes", True)
        _check_tensor(path, where, "weight.codes", layer.codes, shape, torch.int8)
        return layer

    g, k, n, wpc = layout.num_groups, layout.k, layout.n, layout.weights_per_candidate
    vshape = (g, k) if layout.granularity in ("weight", "block") else (g, k, wpc)
    idx = get("weight.indices", True)
    assert idx is not None
    _check_tensor(path, where, "weight.indices", idx, (g, k), index_dtype(n))
    wide = idx.long()
    bad = (wide < 0) | (wide >= n)
    if bool(bad.any()):
        grp = int(bad.any(-1).nonzero()[0])
        raise _err(
            path,
            f"{where}: group {grp} has indices {wide[grp].tolist()[:16]} outside [0, n={n})",
            "The file is corrupt. " + _REEXPORT,
        )
    if k > 1:
        srt = wide.sort(-1).values
        dup = (srt[:, 1:] == srt[:, :-1]).any(-1)
        if bool(dup.any()):
            grp = int(dup.nonzero()[0])
            raise _err(
                path,
                f"{where}: group {grp} repeats an index ({srt[grp].tolist()[:16]}); every group "
                f"must keep k={k} distinct candidates",
                "The file is corrupt. " + _REEXPORT,
            )
    layer.indices = idx
    if quant is None:
        layer.values = get("weight.values", True)
        _check_tensor(path, where, "weight.values", layer.values, vshape, dtype)
    else:
        layer.codes = get("weight.codes", True)
        _check_tensor(path, where, "weight.codes", layer.codes, vshape, torch.int8)
    return layer


def _check_tensor(
    path: Path, where: str, what: str, t: Tensor | None, shape: tuple, dtype: torch.dtype
) -> None:
    assert t is not None
    if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
        raise _err(
            path,
            f"{where}: {what} is {_dtype_name(t.dtype)} {list(t.shape)}, expected "
            f"{_dtype_name(dtype)} {list(shape)} from the layer's metadata",
            "The file is corrupt or was edited. " + _REEXPORT,
        )


# ---------------------------------------------------------------------------- load
def _attach_input_quant(module: nn.Module, scale: Tensor) -> None:
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, InputQuantHook):
            hook.scale = scale.detach().clone()
            return
    module.register_forward_pre_hook(InputQuantHook(scale))


def load_packed(path: str | os.PathLike, model: nn.Module, *, strict: bool = True) -> nn.Module:
    """Restore a packed file into a model of the original dense architecture.

    Args:
        path: a file written by :func:`save_packed`.
        model: the plain architecture (``nn.Linear``/``nn.ConvNd`` layers, no DPP layers), e.g.
            a freshly built instance of the model that was pruned. Filled in place.
        strict: every state-dict entry of ``model`` must be in the file and vice versa.

    Returns:
        ``model``, computing exactly what the finalized model computed (pruned weights zero,
        quantized weights ``scale * codes``, inputs of activation-quantized layers
        fake-quantized by a forward pre-hook).

    Raises:
        PackedFileError: corrupt file, or a mismatch with ``model`` (missing layer, shape,
            module type); the message names the file, the layer and the fix.
    """
    path = Path(path)
    packed = read_packed(path)
    if any(is_dpp_layer(m) for m in model.modules()):
        raise _err(
            path,
            f"cannot be loaded into a {type(model).__name__} holding DPP layers",
            "Load it into the plain architecture (a fresh model before dpp.prune), or call "
            "pruner.finalize() first.",
        )
    aliases = module_aliases(model)
    state: dict[str, Tensor] = dict(packed.dense)
    for name, layer in packed.layers.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise _err(
                path,
                f"layer {name!r} of the file is not a module of the {type(model).__name__}",
                "Load the file into the same architecture it was saved from.",
            ) from None
        if type(module).__name__ != layer.module_type:
            raise _err(
                path,
                f"layer {name!r} is a {layer.module_type} in the file but a "
                f"{type(module).__name__} in the model",
                "Load the file into the same architecture it was saved from.",
            )
        shape = tuple(canonical_weight(module).shape)
        if shape != layer.weight_shape:
            raise _err(
                path,
                f"layer {name!r}: the file's weight shape {list(layer.weight_shape)} does not "
                f"match the model's {list(shape)}",
                "Build the model with the same sizes (classes, channels, input shape) as the "
                "pruned one.",
            )
        if not layer.stores_weight:
            continue
        weight = layer.dense_weight().to(module.weight.dtype)
        if is_hf_conv1d(type(module)):  # stored [out, in], held [in, out]
            weight = weight.t()
        for alias in aliases.get(id(module), [name]):
            state[_key(alias, "weight")] = weight
    expected = set(model.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"the model's {missing[:8]} are not in the file")
        if unexpected:
            parts.append(f"the file's {unexpected[:8]} are not in the model")
        raise _err(
            path,
            "does not match the model: " + "; ".join(parts),
            "Load the file into the same architecture it was saved from (or pass strict=False).",
        )
    own = model.state_dict()
    for key in expected & set(state):
        if tuple(own[key].shape) != tuple(state[key].shape):
            raise _err(
                path,
                f"the tensor {key!r} is {list(state[key].shape)} in the file but "
                f"{list(own[key].shape)} in the model",
                "Build the model with the same sizes as the pruned one.",
            )
    model.load_state_dict(state, strict=strict)
    for name, layer in packed.layers.items():
        if layer.activation_scale is not None:
            _attach_input_quant(model.get_submodule(name), layer.activation_scale)
    return model
