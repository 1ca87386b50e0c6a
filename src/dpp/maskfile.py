"""Masks as files: save the learned k-of-n masks on their own, put them back on a dense model.

:func:`save_masks` writes the deterministic masks of a pruned model (or of a
:class:`~dpp.Pruner`, live or finalized) to one safetensors file, bit-packed: per group
either a bitmap of its ``n`` candidates or its ``k`` kept indices at ``ceil(log2 n)`` bits
each, whichever is smaller (2:4 takes 1 bit per weight either way; 5% of 784 inputs takes
0.5 bit). The header records every layer's layout and a SHA-256 digest of the payload.
:func:`load_masks` checks the file and the model's architecture and puts the masks on a
dense model as fixed masks, returning a :class:`~dpp.Pruner` (finalize it, export it, or
fine-tune the weights under the masks).

Example:
    >>> import tempfile, torch, dpp
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 4))
    >>> pruner = dpp.prune(model, granularity="block", block_size=4, k=2)
    >>> path = tempfile.mkdtemp() + "/masks.safetensors"
    >>> dpp.save_masks(pruner, path)
    >>> dense = torch.nn.Sequential(torch.nn.Linear(8, 4))
    >>> fixed = dpp.load_masks(dense, path)
    >>> _ = model.eval(); bool((fixed.masks()["0"] == pruner.masks()["0"]).all())
    True
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .config import DPPConfig
from .granularity import GroupLayout
from .layers import canonical_weight, is_dpp_layer
from .masks import FixedMask
from .pruner import Pruner, prune

__all__ = ["MaskFileError", "load_masks", "save_masks"]

_FORMAT = "dpp-masks"
_VERSION = "1"


class MaskFileError(ValueError):
    """A mask file is damaged, of another format, or does not fit the model."""


def _index_bits(n: int) -> int:
    return max(1, math.ceil(math.log2(n)))


def _encoding(layout: GroupLayout) -> str:
    return "indices" if layout.k * _index_bits(layout.n) < layout.n else "bitmap"


def _pack(group_mask: Tensor, layout: GroupLayout) -> tuple[Tensor, str]:
    """``[num_groups, n]`` k-hot mask -> (uint8 bit-packed payload, encoding)."""
    kept = group_mask.detach().cpu() != 0
    encoding = _encoding(layout)
    if encoding == "bitmap":
        bits = kept.numpy().reshape(-1)
    else:
        idx = kept.nonzero()[:, 1].reshape(layout.num_groups, layout.k).numpy()  # sorted
        b = _index_bits(layout.n)
        shifts = np.arange(b - 1, -1, -1, dtype=np.int64)
        bits = ((idx[..., None].astype(np.int64) >> shifts) & 1).reshape(-1).astype(bool)
    return torch.from_numpy(np.packbits(bits)), encoding


def _unpack(payload: Tensor, layout: GroupLayout, encoding: str, where: str) -> Tensor:
    """Inverse of :func:`_pack`, validated: exactly k distinct candidates per group."""
    g, n, k = layout.num_groups, layout.n, layout.k
    width = g * n if encoding == "bitmap" else g * k * _index_bits(n)
    raw = payload.numpy()
    if raw.size != (width + 7) // 8:
        raise MaskFileError(f"{where}: payload of {raw.size} bytes, expected {(width + 7) // 8}")
    bits = np.unpackbits(raw)[:width]
    if encoding == "bitmap":
        mask = torch.from_numpy(bits.reshape(g, n).astype(np.float32))
    else:
        b = _index_bits(n)
        weights = 1 << np.arange(b - 1, -1, -1, dtype=np.int64)
        idx = (bits.reshape(g, k, b).astype(np.int64) * weights).sum(-1)
        if (idx >= n).any() or (np.diff(idx, axis=1) <= 0).any():
            raise MaskFileError(f"{where}: indices out of range or repeated")
        mask = torch.zeros(g, n).scatter_(1, torch.from_numpy(idx), 1.0)
    if not bool((mask.sum(1) == k).all()):
        raise MaskFileError(f"{where}: a group does not keep exactly k={k} of n={n}")
    return mask


def _group_masks(source: nn.Module | Pruner) -> dict[str, tuple[GroupLayout, Tensor]]:
    """``{layer: (layout, [num_groups, n] deterministic mask)}`` of every pruned layer."""
    if isinstance(source, Pruner) and source.finalized_layers:
        out = {}
        for name, rec in source.finalized_layers.items():
            if rec.layout is not None and rec.mask is not None:
                weight_mask = rec.mask.float()
                out[name] = (rec.layout, (rec.layout.candidate_scores(weight_mask) > 0).float())
        return out
    model = source.model if isinstance(source, Pruner) else source
    if not isinstance(model, nn.Module):
        raise TypeError(f"save_masks expects a dpp.Pruner or a pruned model, got {type(model)}")
    out = {}
    seen: set[int] = set()
    for name, module in model.named_modules():
        if is_dpp_layer(module) and id(module) not in seen and module.dpp is not None:
            seen.add(id(module))
            with torch.no_grad():
                out[name] = (module.dpp_layout, module.dpp.deterministic(module.weight))
    return out


def _digest(tensors: dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        h.update(key.encode())
        h.update(tensors[key].numpy().tobytes())
    return h.hexdigest()


def save_masks(source: nn.Module | Pruner, path: str | os.PathLike) -> None:
    """Write the deterministic masks of every pruned layer to a safetensors file, atomically.

    Args:
        source: a :class:`~dpp.Pruner` (live or finalized) or a model holding DPP layers.
        path: the file to write (conventionally ``*.safetensors``).

    Raises:
        ValueError: the source holds no pruned layer.
    """
    masks = _group_masks(source)
    if not masks:
        raise ValueError(
            "save_masks: the source holds no pruned layer; pass the Pruner, or the model "
            "before pruner.finalize()"
        )
    tensors: dict[str, Tensor] = {}
    layers: list[dict[str, Any]] = []
    for name, (layout, group_mask) in masks.items():
        payload, encoding = _pack(group_mask, layout)
        tensors[f"mask.{name}"] = payload
        layers.append({"name": name, "encoding": encoding, **layout.to_dict()})
    metadata = {
        "format": _FORMAT,
        "version": _VERSION,
        "layers": json.dumps(layers),
        "sha256": _digest(tensors),
    }
    if isinstance(source, Pruner):
        metadata["config"] = source.config.to_json()
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise MaskFileError(
            f"{path}: not a readable safetensors mask file ({exc}); save it again with "
            "dpp.save_masks"
        ) from exc
    if metadata.get("format") != _FORMAT:
        raise MaskFileError(f"{path}: not a dpp mask file (format {metadata.get('format')!r})")
    if metadata.get("version") != _VERSION:
        raise MaskFileError(
            f"{path}: mask file version {metadata.get('version')!r}; this dpp reads {_VERSION}"
        )
    if metadata.get("sha256") != _digest(tensors):
        raise MaskFileError(
            f"{path}: the payload does not match its recorded SHA-256 digest: the file is "
            "damaged; save the masks again from the pruner or restore a good copy"
        )
    return tensors, metadata


def load_masks(model: nn.Module, path: str | os.PathLike) -> Pruner:
    """Put the masks of a :func:`save_masks` file onto a dense model, as fixed masks.

    Args:
        model: a model of the same architecture as the one the masks were saved from, with
            plain (not pruned) layers; modified in place like :func:`dpp.prune`.
        path: the mask file.

    Returns:
        A :class:`~dpp.Pruner` whose layers hold :class:`~dpp.FixedMask` sources: its
        ``masks()`` equal the saved ones; ``finalize()`` bakes them into the weights.

    Raises:
        MaskFileError: the file is damaged or not a mask file, or a layer is missing from
            the model or has another weight shape (another architecture).
    """
    path = Path(path)
    tensors, metadata = _read(path)
    layers = json.loads(metadata["layers"])
    modules = dict(model.named_modules())
    decoded: dict[str, Tensor] = {}
    overrides: dict[str, dict[str, Any]] = {}
    for entry in layers:
        name = entry["name"]
        module = modules.get(name)
        if module is None or not isinstance(getattr(module, "weight", None), Tensor):
            raise MaskFileError(
                f"{path}: layer {name!r} is not in this {type(model).__name__}: the masks were "
                "saved from another architecture"
            )
        shape = list(canonical_weight(module).shape)
        if shape != entry["weight_shape"]:
            raise MaskFileError(
                f"{path}: layer {name!r} has weight shape {shape} here, {entry['weight_shape']} "
                "in the file: the masks were saved from another architecture"
            )
        layout = GroupLayout(
            entry["granularity"],
            tuple(entry["weight_shape"]),
            entry["num_groups"],
            entry["n"],
            entry["k"],
            entry["block_size"],
        )
        key = f"mask.{name}"
        if key not in tensors:
            raise MaskFileError(f"{path}: no payload for layer {name!r}; the file is damaged")
        decoded[name] = _unpack(tensors[key], layout, entry["encoding"], f"{path}: {name!r}")
        override: dict[str, Any] = {"granularity": layout.granularity, "k": layout.k}
        if layout.block_size:
            override["block_size"] = layout.block_size
        overrides[name] = override
    config = DPPConfig(include=list(overrides), overrides=overrides)

    def fixed(name: str, module: nn.Module, layout: GroupLayout) -> FixedMask:
        return FixedMask(layout, decoded[name])

    return prune(model, config, mask_source=fixed)
