"""What a pruned model stores per layer, read from a live model, a Pruner or a finalized Pruner.

Internal helper shared by the exporters. It never infers a mask from zero weights: a kept
weight may be exactly 0 (especially once quantized), so masks always come from the DPP layers
(live) or from ``pruner.finalized_layers`` (after :meth:`dpp.Pruner.finalize`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..granularity import GroupLayout
from ..layers import is_dpp_layer
from ..pruner import Pruner
from ..quantization import QuantSpec, quantize_weight

__all__ = ["LayerRecord", "collect", "dpp_state_keys", "module_aliases"]


@dataclass
class LayerRecord:
    """One DPP-touched layer as the finalized model holds it.

    Attributes:
        module_type: ``"Linear"``, ``"Conv1d"``, ``"Conv2d"`` or ``"Conv3d"``.
        layout: the group layout (``None`` when the layer is quantized but not pruned).
        quant: the quantization spec (``None`` for float weights).
        mask: bool, shaped like the weight (``None`` when not pruned).
        weight: the finalized weight (masked; exactly ``scale * codes`` when quantized).
        bias: the finalized bias (filter level: zero where pruned) or ``None``.
        codes: int8 codes shaped like the weight, when quantized.
        scale: float scales ``[C_out, 1, ...]`` or ``[1, 1, ...]``, when quantized.
        activation_scale: fixed 8-bit input scale (0-d) when the input is fake-quantized.
    """

    module_type: str
    layout: GroupLayout | None
    quant: QuantSpec | None
    mask: Tensor | None
    weight: Tensor
    bias: Tensor | None
    codes: Tensor | None
    scale: Tensor | None
    activation_scale: Tensor | None


def module_aliases(model: nn.Module) -> dict[int, list[str]]:
    """Every name under which each module object appears (shared modules have several)."""
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), []).append(name)
    return names


def _dense_type(module: nn.Module) -> str:
    cls = getattr(module, "_dpp_dense_cls", type(module))
    return cls.__name__


def _from_live(layer: nn.Module) -> LayerRecord:
    """The finalized content of a live DPP layer, computed as :func:`dpp.layers.unwrap` does,
    without touching the layer."""
    layout = layer.dpp_layout
    quant = layer.dpp_quant
    with torch.no_grad():
        group_mask = None if layer.dpp is None else layer.dpp.deterministic(layer.weight)
        w, b = layer.dpp_weight_bias(group_mask)
        mask = None
        if group_mask is not None:
            mask = layout.expand(group_mask).expand(layer.weight.shape) != 0
        codes = scale = None
        if quant is not None:
            masked = layer.weight if mask is None else layer.weight * mask
            codes, scale = quantize_weight(masked, quant, mask)
            w = scale * codes.to(scale.dtype)
        act = None
        if layer.dpp_act is not None:
            act = layer.dpp_act.scale().detach().clone()
        return LayerRecord(
            module_type=_dense_type(layer),
            layout=layout,
            quant=quant,
            mask=mask,
            weight=w.detach().to(layer.weight.dtype).clone(),
            bias=None if b is None else b.detach().clone(),
            codes=codes,
            scale=None if scale is None else scale.detach().clone(),
            activation_scale=act,
        )


def dpp_state_keys(model: nn.Module) -> set[str]:
    """State-dict keys that exist only because of DPP (logits, fixed masks, activation ranges)."""
    aliases = module_aliases(model)
    keys: set[str] = set()
    for module in model.modules():
        if not is_dpp_layer(module):
            continue
        for alias in aliases.get(id(module), []):
            for sub in ("dpp", "dpp_act"):
                child = getattr(module, sub, None)
                if child is None:
                    continue
                prefix = f"{alias}.{sub}" if alias else sub
                keys.update(f"{prefix}.{k}" for k in child.state_dict())
    return keys


def collect(source: nn.Module | Pruner, *, what: str) -> tuple[nn.Module, dict[str, LayerRecord]]:
    """``(model, {layer name: LayerRecord})`` of a live pruned model or a Pruner.

    Args:
        source: a model holding DPP layers, or a :class:`~dpp.Pruner` (live or finalized).
        what: the caller's name, used in error messages.
    """
    if isinstance(source, Pruner):
        finalized = source.finalized_layers
        model = source.model
        if finalized:
            records = {}
            for name, rec in finalized.items():
                module = model.get_submodule(name)
                records[name] = LayerRecord(
                    module_type=type(module).__name__,
                    layout=rec.layout,
                    quant=rec.quant,
                    mask=rec.mask,
                    weight=module.weight.detach(),
                    bias=None if module.bias is None else module.bias.detach(),
                    codes=rec.codes,
                    scale=rec.scale,
                    activation_scale=rec.activation_scale,
                )
            return model, records
        source = model
    if not isinstance(source, nn.Module):
        raise TypeError(
            f"{what} expects a pruned torch.nn.Module or a dpp.Pruner, got {type(source).__name__}"
        )
    records = {}
    seen: set[int] = set()
    for name, module in source.named_modules():
        if is_dpp_layer(module) and id(module) not in seen:
            seen.add(id(module))
            records[name] = _from_live(module)
    if not records:
        raise ValueError(
            f"{what}: {type(source).__name__} holds no DPP layer, so nothing says what was "
            "pruned (masks are never inferred from zero weights: a kept weight may be 0). Pass "
            "the model before pruner.finalize(), or the Pruner itself (after finalize() its "
            "masks live in pruner.finalized_layers)."
        )
    return source, records
