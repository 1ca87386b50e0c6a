"""Masked drop-in replacements of ``nn.Linear`` and ``nn.Conv1d/2d/3d``.

:func:`wrap` turns a plain layer into its masked twin *in place of the same parameters*:
``weight`` and ``bias`` stay the same ``nn.Parameter`` objects under the same state-dict
keys, hooks and attributes are kept, and DPP adds only its own entries (``dpp.logits`` for a
learned mask, ``dpp.mask`` for a fixed one, ``dpp_act.running_max`` for activation
quantization). :func:`unwrap` bakes the deterministic mask (and quantization) into the
weights and gives back the plain layer class.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .granularity import GroupLayout
from .masks import MaskSource
from .quantization import ActivationQuantizer, QuantSpec, fake_quantize, quantize_weight

__all__ = [
    "PRUNABLE_TYPES",
    "DPPConv1d",
    "DPPConv2d",
    "DPPConv3d",
    "DPPLayer",
    "DPPLinear",
    "is_dpp_layer",
    "unwrap",
    "wrap",
]

_DPP_ATTRS = ("dpp_layout", "dpp_quant", "_dpp_dense_cls", "dpp", "dpp_act", "_dpp_channel_mask")
_DPP_MODULES = ("dpp", "dpp_act")


class DPPLayer:
    """Mixin of the masked layers: the effective weight is ``quant(W * mask)``.

    Attributes:
        dpp: the :class:`~dpp.masks.MaskSource` (``None`` for a quantize-only layer).
        dpp_layout: the :class:`~dpp.granularity.GroupLayout` (``None`` when not pruned).
        dpp_quant: the :class:`~dpp.quantization.QuantSpec` (``None`` for float weights).
        dpp_act: an :class:`~dpp.quantization.ActivationQuantizer` for the input, or ``None``.
    """

    weight: nn.Parameter
    bias: nn.Parameter | None
    dpp: MaskSource | None
    dpp_act: ActivationQuantizer | None
    dpp_layout: GroupLayout | None
    dpp_quant: QuantSpec | None
    _dpp_dense_cls: type

    def dpp_group_mask(self) -> Tensor | None:
        """The ``[num_groups, n]`` mask of this forward call (sampled in training mode)."""
        if self.dpp is None:
            return None
        return self.dpp(self.weight)

    def dpp_weight_bias(self, group_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Effective ``(weight, bias)``: masked, then fake-quantized.

        Args:
            group_mask: ``[num_groups, n]`` mask to apply; by default the mask of this call.
        """
        w, b = self.weight, self.bias
        if group_mask is None:
            group_mask = self.dpp_group_mask()
        kept = None
        if group_mask is not None:
            assert self.dpp_layout is not None
            kept = self.dpp_layout.expand(group_mask).to(w.dtype)
            assert self.dpp is not None
            w = self.dpp.masked_weight(w, kept)
            if self.dpp_layout.prunes_bias:
                channels = self.dpp_layout.bias_mask(group_mask)
                # Read by a BatchNorm linked to this layer (dpp.batchnorm), same forward call.
                self._dpp_channel_mask = channels
                if b is not None:
                    b = b * channels.to(b.dtype)
        if self.dpp_quant is not None:
            w = fake_quantize(w, self.dpp_quant, kept)
        return w, b

    def dpp_masks(self) -> Tensor | None:
        """Deterministic mask shaped like the weight (bool), or ``None`` if not pruned."""
        if self.dpp is None:
            return None
        assert self.dpp_layout is not None
        with torch.no_grad():
            group_mask = self.dpp.deterministic(self.weight)
            return self.dpp_layout.expand(group_mask).expand(self.weight.shape) != 0

    def _dpp_input(self, x: Tensor) -> Tensor:
        return x if self.dpp_act is None else self.dpp_act(x)

    def _dpp_repr(self) -> str:
        parts = []
        if self.dpp_layout is not None:
            lay = self.dpp_layout
            parts.append(f"dpp={lay.granularity} k={lay.k}/{lay.n}")
            if lay.block_size:
                parts[-1] += f" block={lay.block_size}"
        if self.dpp_quant is not None:
            parts.append(f"bits={self.dpp_quant.bits}")
        return ", ".join(parts)


class DPPLinear(DPPLayer, nn.Linear):
    """``nn.Linear`` whose weight is masked k-of-n (and optionally quantized)."""

    def forward(self, input: Tensor) -> Tensor:
        w, b = self.dpp_weight_bias()
        return F.linear(self._dpp_input(input), w, b)

    def extra_repr(self) -> str:
        return f"{nn.Linear.extra_repr(self)}, {self._dpp_repr()}"


class _DPPConvMixin(DPPLayer):
    def forward(self, input: Tensor) -> Tensor:
        w, b = self.dpp_weight_bias()
        return self._conv_forward(self._dpp_input(input), w, b)  # type: ignore[attr-defined]

    def extra_repr(self) -> str:
        return f"{nn.modules.conv._ConvNd.extra_repr(self)}, {self._dpp_repr()}"  # type: ignore[arg-type]


class DPPConv1d(_DPPConvMixin, nn.Conv1d):
    """``nn.Conv1d`` whose weight is masked k-of-n (and optionally quantized)."""


class DPPConv2d(_DPPConvMixin, nn.Conv2d):
    """``nn.Conv2d`` whose weight is masked k-of-n (and optionally quantized)."""


class DPPConv3d(_DPPConvMixin, nn.Conv3d):
    """``nn.Conv3d`` whose weight is masked k-of-n (and optionally quantized)."""


_MASKED_CLASS: dict[type, type] = {
    nn.Linear: DPPLinear,
    nn.Conv1d: DPPConv1d,
    nn.Conv2d: DPPConv2d,
    nn.Conv3d: DPPConv3d,
}
PRUNABLE_TYPES: tuple[type, ...] = tuple(_MASKED_CLASS)


def is_dpp_layer(module: nn.Module) -> bool:
    return isinstance(module, DPPLayer)


def _copy_module_state(src: nn.Module, cls: type, drop: tuple[str, ...] = ()) -> Any:
    """A new instance of ``cls`` sharing ``src``'s parameters, buffers, children and hooks."""
    new = cls.__new__(cls)
    state = {
        key: (value.copy() if isinstance(value, (dict, set)) else value)
        for key, value in src.__dict__.items()
        if key not in drop
    }
    new.__dict__.update(state)
    for name in _DPP_MODULES:
        new._modules.pop(name, None)
    return new


def wrap(
    module: nn.Module,
    *,
    layout: GroupLayout | None,
    source: MaskSource | None,
    quant: QuantSpec | None = None,
    activation_bits: int | None = None,
) -> DPPLayer:
    """The masked twin of a plain ``nn.Linear``/``nn.ConvNd``, sharing its parameters."""
    base = type(module)
    if base not in _MASKED_CLASS:
        raise TypeError(
            f"cannot mask a {base.__name__}; supported: "
            f"{', '.join(t.__name__ for t in PRUNABLE_TYPES)}"
        )
    new = _copy_module_state(module, _MASKED_CLASS[base])
    new.dpp_layout = layout
    new.dpp_quant = quant
    new._dpp_dense_cls = base
    new.dpp = source
    if source is not None:
        source.to(module.weight.device)
        source.train(module.training)
    new.dpp_act = None
    if activation_bits is not None:
        new.dpp_act = ActivationQuantizer(activation_bits).to(module.weight.device)
        new.dpp_act.train(module.training)
    return new


class _InputQuantHook:
    """Forward pre-hook of a finalized layer: fixed 8-bit fake quantization of its input."""

    def __init__(self, quantizer: ActivationQuantizer) -> None:
        self.quantizer = quantizer.eval()

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (self.quantizer(args[0]), *args[1:])


def unwrap(layer: DPPLayer) -> tuple[nn.Module, dict[str, Tensor | None]]:
    """Bake the deterministic mask and quantization into the weights; give back the plain layer.

    The returned layer is of the original class, holds the same ``nn.Parameter`` objects
    (their values replaced in place) and computes exactly what ``layer`` computes in eval mode.

    Returns:
        ``(plain_layer, record)`` with ``record`` holding ``mask`` (bool, weight shape, or
        ``None``), ``codes`` (int8) and ``scale`` (or ``None`` when not quantized).
    """
    assert isinstance(layer, nn.Module)
    record: dict[str, Tensor | None] = {"mask": None, "codes": None, "scale": None}
    with torch.no_grad():
        group_mask = None if layer.dpp is None else layer.dpp.deterministic(layer.weight)
        w, b = layer.dpp_weight_bias(group_mask)
        if group_mask is not None:
            assert layer.dpp_layout is not None
            record["mask"] = layer.dpp_layout.expand(group_mask).expand(w.shape) != 0
        if layer.dpp_quant is not None:
            masked = layer.weight if record["mask"] is None else layer.weight * record["mask"]
            codes, scale = quantize_weight(masked, layer.dpp_quant, record["mask"])
            record["codes"], record["scale"] = codes, scale
            w = scale * codes.to(scale.dtype)
        layer.weight.copy_(w)
        if b is not None and layer.bias is not None:
            layer.bias.copy_(b)
    plain = _copy_module_state(layer, layer._dpp_dense_cls, drop=_DPP_ATTRS)
    if layer.dpp_act is not None:
        record["activation_scale"] = layer.dpp_act.scale().detach().clone()
        plain.register_forward_pre_hook(_InputQuantHook(layer.dpp_act))
    return plain, record
