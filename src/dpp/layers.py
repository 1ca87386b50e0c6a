"""Masked drop-in replacements of ``nn.Linear``, ``nn.Conv1d/2d/3d`` and their subclasses.

:func:`wrap` turns a plain layer into its masked twin *in place of the same parameters*:
``weight`` and ``bias`` stay the same ``nn.Parameter`` objects under the same state-dict
keys, hooks and attributes are kept, and DPP adds only its own entries (``dpp.logits`` for a
learned mask, ``dpp.mask`` for a fixed one, ``dpp_act.running_max`` for activation
quantization). :func:`unwrap` bakes the deterministic mask (and quantization) into the
weights and gives back the plain layer class, with a :class:`FinalizedLayer` record.

Which classes are prunable (:func:`masked_class`):

* ``nn.Linear``, ``nn.Conv1d/2d/3d``: :class:`DPPLinear`, :class:`DPPConv1d`, ...;
* a subclass of one of them whose ``forward`` is the parent's (e.g. a layer that only adds
  attributes): a twin class made once per subclass, so ``isinstance(m, UserClass)`` holds
  while pruned, and the module is again a ``UserClass`` after finalize;
* Hugging Face's ``transformers.pytorch_utils.Conv1D`` (GPT-2), whose weight is stored
  ``[in, out]``: DPP sees it as a Linear ``[out, in]`` (:func:`canonical_weight`), so its
  groups run over its inputs. ``transformers`` is never imported here.

Example:
    >>> import torch
    >>> from dpp.layers import masked_class
    >>> class Tagged(torch.nn.Linear):  # same forward as nn.Linear
    ...     tag = "mine"
    >>> class Own(torch.nn.Linear):
    ...     def forward(self, x):
    ...         return super().forward(x) * 2
    >>> masked_class(torch.nn.Linear).__name__, masked_class(Tagged).__name__, masked_class(Own)
    ('DPPLinear', 'DPPTagged', None)
    >>> issubclass(masked_class(Tagged), Tagged)
    True
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .granularity import GroupLayout
from .masks import DPPMask, FixedMask, MaskSource
from .quantization import (
    ActivationQuantizer,
    QuantSpec,
    fake_quantize,
    fake_quantize_input,
    quantize_weight,
)

__all__ = [
    "PRUNABLE_TYPES",
    "DPPConv1d",
    "DPPConv2d",
    "DPPConv3d",
    "DPPLayer",
    "DPPLinear",
    "FinalizedLayer",
    "InputQuantHook",
    "canonical_weight",
    "is_dpp_layer",
    "is_hf_conv1d",
    "masked_class",
    "unwrap",
    "wrap",
]

_DPP_ATTRS = ("dpp_layout", "dpp_quant", "_dpp_dense_cls", "dpp", "dpp_act", "_dpp_channel_mask")
_DPP_MODULES = ("dpp", "dpp_act")


@dataclass
class FinalizedLayer:
    """What baking put into one layer: the one record of a baked layer.

    :meth:`dpp.Pruner.finalize`, :func:`dpp.bake.bake` and every exporter read it. Tensors are
    oriented like ``layout.weight_shape`` (the weight's own shape, except for a Hugging Face
    ``Conv1D``, whose ``[in, out]`` weight DPP sees transposed as ``[out, in]``).

    Attributes:
        layout: the group layout, or ``None`` for a quantize-only layer.
        quant: the quantization spec, or ``None`` for float weights.
        mask: bool tensor shaped like the weight (``None`` when not pruned).
        codes: int8 codes shaped like the weight (``None`` when not quantized);
            the finalized weight is exactly ``scale * codes``.
        scale: float scales, ``[C_out, 1, ...]`` or ``[1, 1, ...]``.
        activation_scale: the input's fixed 8-bit scale (0-d) when activations were quantized.
        dense_cls: the plain class the layer is again (``nn.Linear``, the user's subclass, ...).
        channel_mask: bool ``[C_out]`` of the kept output units (filter granularity only).
        batchnorms: names of the BatchNorms linked to this layer's channel mask (their weight
            and bias are zero on the pruned channels).
    """

    layout: GroupLayout | None
    quant: QuantSpec | None
    mask: Tensor | None
    codes: Tensor | None
    scale: Tensor | None
    activation_scale: Tensor | None = None
    dense_cls: type | None = None
    channel_mask: Tensor | None = None
    batchnorms: tuple[str, ...] = ()

    @property
    def module_type(self) -> str:
        """Class name of the plain layer (``"Linear"``, ``"Conv2d"``, ``"Conv1D"``, ...)."""
        return "?" if self.dense_cls is None else self.dense_cls.__name__

    @property
    def transposed(self) -> bool:
        """Whether the module stores its weight transposed (``Conv1D``: ``[in, out]``)."""
        return self.dense_cls is not None and is_hf_conv1d(self.dense_cls)


def is_hf_conv1d(cls: type) -> bool:
    """Whether ``cls`` is (a subclass of) ``transformers.pytorch_utils.Conv1D``."""
    return any(
        c.__name__ == "Conv1D" and c.__module__ == "transformers.pytorch_utils"
        for c in getattr(cls, "__mro__", ())
    )


def canonical_weight(module: nn.Module) -> Tensor:
    """The weight as DPP groups it: ``[out, in, ...]`` (a ``Conv1D``'s ``[in, out]`` transposed)."""
    weight: Tensor = module.weight  # type: ignore[assignment]
    return weight.t() if is_hf_conv1d(type(module)) else weight


def _pack_mask(mask: Tensor) -> Tensor:
    """A 0/1 ``[groups, n]`` mask as bits: ``[groups]`` uint8 for ``n <= 8``, else bool."""
    n = mask.shape[-1]
    bits = mask.ne(0)
    if n > 8:
        return bits
    bits = bits.to(torch.uint8)
    packed = bits[..., 0].clone()
    for j in range(1, n):  # scalar shifts only: works on DTensors (FSDP2) as well
        packed.bitwise_or_(bits[..., j].bitwise_left_shift(j))
    return packed


def _unpack_mask(packed: Tensor, n: int) -> Tensor:
    """The ``[groups, n]`` 0/1 uint8 (or bool) mask of :func:`_pack_mask`."""
    if packed.dtype == torch.bool:
        return packed
    return torch.stack([packed.bitwise_right_shift(j).bitwise_and_(1) for j in range(n)], -1)


class _MaskedWeight(torch.autograd.Function):
    """``weight * expand(mask)``, made directly in ``dtype``, saving only a bool mask.

    The product with a 0/1 mask is exact in any dtype, so making it in the autocast dtype
    (bfloat16) equals casting the float32 product: no float32 copy of the weight is made,
    and for the backward the mask is kept as bits, one byte per group of ``n <= 8``
    (bool otherwise), not the float32 expanded mask that ``weight * kept`` saves.
    Gradients: ``grad * kept`` for the weight (in the weight's dtype), and
    ``sum(grad * weight)`` over each mask entry's weights for the mask (in the mask's
    dtype), as the plain product gives.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, weight: Tensor, group_mask: Tensor, mask_shape: tuple[int, ...], dtype: torch.dtype
    ) -> Tensor:
        kept = group_mask.detach().reshape(mask_shape)
        out = weight.detach().to(dtype, copy=True).mul_(kept)
        ctx.mask_shape, ctx.group_shape = mask_shape, group_mask.shape
        ctx.mask_dtype, ctx.weight_dtype = group_mask.dtype, weight.dtype
        need_w, need_m = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        ctx.save_for_backward(
            _pack_mask(group_mask.detach()) if need_w else None, weight if need_m else None
        )
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        kept, weight = ctx.saved_tensors
        grad_w = grad_m = None
        if kept is not None:
            kept = _unpack_mask(kept, ctx.group_shape[-1]).reshape(ctx.mask_shape)
            grad_w = grad.to(ctx.weight_dtype, copy=True).mul_(kept)
        if weight is not None:
            prod = torch.mul(grad, weight)
            if prod.shape != torch.Size(ctx.mask_shape):
                prod = prod.sum_to_size(ctx.mask_shape)
            grad_m = prod.reshape(ctx.group_shape).to(ctx.mask_dtype)
        return grad_w, grad_m, None, None


_CAST = threading.local()


def _cast_input(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x.to(dtype)``, the same tensor for the same unchanged ``x`` as the call before.

    Layers that read one input (q/k/v projections, gate and up) then save one copy of it
    for backward instead of one each (autocast casts, and saves, it once per layer).
    """
    if x.dtype == dtype:
        return x
    if torch.compiler.is_compiling():
        return x.to(dtype)
    last = getattr(_CAST, "last", None)
    if last is not None and last[0]() is x and last[1] == x._version and last[2] == dtype:
        cast = last[3]()
        if cast is not None:
            return cast
    cast = x.to(dtype)
    _CAST.last = (weakref.ref(x), x._version, dtype, weakref.ref(cast))
    return cast


class _MaskedLinear(torch.autograd.Function):
    """``linear(x, weight * expand(mask), bias)`` in ``dtype``, saving the input, the bits
    of the mask and no weight copy.

    The forward computes what autocast computes for ``F.linear(x, weight * kept, bias)``
    (the product with a 0/1 mask is exact in any dtype). For backward it keeps ``x`` in
    ``dtype`` (shared by the layers that read the same input), the weight parameter itself
    and the mask as bits; the masked weight in ``dtype`` is made again in backward, one
    layer at a time, where autograd would keep one per layer from forward to backward.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        group_mask: Tensor,
        mask_shape: tuple[int, ...],
        dtype: torch.dtype,
    ) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            kept = group_mask.detach().reshape(mask_shape)
            w = weight.detach().to(dtype, copy=True).mul_(kept)
            xc = _cast_input(x, dtype)
            b = None if bias is None else bias.detach().to(dtype)
            y = F.linear(xc, w, b)
        need_x, need_w, _, need_m = ctx.needs_input_grad[:4]
        ctx.mask_shape, ctx.group_shape = mask_shape, group_mask.shape
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.mask_dtype = group_mask.dtype
        ctx.save_for_backward(
            xc if (need_w or need_m) else None,
            weight if (need_x or need_m) else None,
            _pack_mask(group_mask.detach()) if (need_x or need_w) else None,
        )
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        xc, weight, packed = ctx.saved_tensors
        need_x, need_w, need_b, need_m = ctx.needs_input_grad[:4]
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        out_features = grad.shape[-1]
        g2 = grad.reshape(-1, out_features)
        kept = None
        if packed is not None:
            kept = _unpack_mask(packed, ctx.group_shape[-1]).reshape(ctx.mask_shape)
        grad_x = grad_w = grad_b = grad_m = None
        with torch.autocast(grad.device.type, enabled=False):
            if need_x:
                w = weight.detach().to(grad.dtype, copy=True).mul_(kept)
                grad_x = g2.mm(w).reshape(*grad.shape[:-1], w.shape[-1]).to(x_dtype)
            if need_w or need_m:
                x2 = xc.reshape(-1, xc.shape[-1])
                grad_eff = g2.t().mm(x2.to(g2.dtype))
                if need_m:
                    # grad_eff cast to the weight's dtype times the weight, in one pass.
                    prod = torch.empty_like(weight)
                    torch.mul(grad_eff, weight, out=prod)
                    if prod.shape != torch.Size(ctx.mask_shape):
                        prod = prod.sum_to_size(ctx.mask_shape)
                    grad_m = prod.reshape(ctx.group_shape).to(ctx.mask_dtype)
                if need_w:
                    grad_w = torch.empty(grad_eff.shape, dtype=w_dtype, device=grad.device)
                    torch.mul(grad_eff, kept, out=grad_w)
            if need_b:
                grad_b = g2.sum(0).to(b_dtype)
        return grad_x, grad_w, grad_b, grad_m, None, None


def _binary_mask_source(source: MaskSource) -> bool:
    """Whether ``source``'s masks are exactly 0/1 and applied as the plain product."""
    return (
        isinstance(source, (DPPMask, FixedMask))
        and type(source).masked_weight is MaskSource.masked_weight
    )


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
        return self.dpp(canonical_weight(self))  # type: ignore[arg-type]

    def dpp_weight_bias(self, group_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Effective ``(weight, bias)``, masked then fake-quantized; the weight ``[out, in, ...]``.

        Args:
            group_mask: ``[num_groups, n]`` mask to apply; by default the mask of this call.
        """
        w, b = canonical_weight(self), self.bias  # type: ignore[arg-type]
        if group_mask is None:
            group_mask = self.dpp_group_mask()
        kept = None
        if group_mask is not None:
            assert self.dpp_layout is not None and self.dpp is not None
            if self.dpp_quant is None and torch.is_grad_enabled() and _binary_mask_source(self.dpp):
                dtype = w.dtype
                if w.dtype == torch.float32 and torch.is_autocast_enabled(w.device.type):
                    dtype = torch.get_autocast_dtype(w.device.type)
                w = _MaskedWeight.apply(w, group_mask, self.dpp_layout.mask_shape, dtype)
            else:
                kept = self.dpp_layout.expand(group_mask).to(w.dtype)
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

    def _dpp_linear(self, input: Tensor) -> Tensor:
        """``F.linear`` of the input with the effective weight and bias (Linear, Conv1D)."""
        x = self._dpp_input(input)
        w = canonical_weight(self)  # type: ignore[arg-type]
        source, lay = self.dpp, self.dpp_layout
        dtype = None
        if torch.is_autocast_enabled(x.device.type) and w.dtype == torch.float32:
            dtype = torch.get_autocast_dtype(x.device.type)
        elif x.dtype == w.dtype:
            dtype = w.dtype
        if (
            source is None
            or lay is None
            or self.dpp_quant is not None
            or dtype is None
            or not torch.is_grad_enabled()
            or not x.is_floating_point()
            or not _binary_mask_source(source)
        ):
            w, b = self.dpp_weight_bias()
            return F.linear(x, w, b)
        group_mask = source(w)
        b = self.bias
        if lay.prunes_bias:
            channels = lay.bias_mask(group_mask)
            self._dpp_channel_mask = channels
            if b is not None:
                b = b * channels.to(b.dtype)
        return _MaskedLinear.apply(x, w, b, group_mask, lay.mask_shape, dtype)

    def dpp_masks(self) -> Tensor | None:
        """Deterministic mask shaped like the weight (bool), or ``None`` if not pruned."""
        if self.dpp is None:
            return None
        assert self.dpp_layout is not None
        with torch.no_grad():
            weight = canonical_weight(self)  # type: ignore[arg-type]
            mask = self.dpp_layout.expand(self.dpp.deterministic(weight)).expand(weight.shape)
            mask = mask != 0
            return mask.t() if is_hf_conv1d(type(self)) else mask

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
        return self._dpp_linear(input)

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


class _DPPConv1DMixin(DPPLayer):
    """Hugging Face ``Conv1D`` (``y = x @ W + b``, ``W [in, out]``) computed as a Linear."""

    def forward(self, input: Tensor) -> Tensor:
        return self._dpp_linear(input)  # the weight seen as [out, in]

    def __repr__(self) -> str:
        nf, nx = self.nf, self.nx  # type: ignore[attr-defined]
        return f"{type(self).__name__}(nf={nf}, nx={nx}, {self._dpp_repr()})"


_MASKED_CLASS: dict[type, type] = {
    nn.Linear: DPPLinear,
    nn.Conv1d: DPPConv1d,
    nn.Conv2d: DPPConv2d,
    nn.Conv3d: DPPConv3d,
}
PRUNABLE_TYPES: tuple[type, ...] = tuple(_MASKED_CLASS)
"""The base classes DPP prunes (their subclasses too, see :func:`masked_class`)."""

_TWINS: dict[type, type] = {}


def _prunable_base(cls: type) -> type | None:
    """The nearest class of ``cls``'s MRO that DPP knows how to mask."""
    for c in cls.__mro__:
        if c in _MASKED_CLASS or (c.__name__ == "Conv1D" and is_hf_conv1d(c)):
            return c
    return None


def masked_class(cls: type) -> type | None:
    """The masked twin class of ``cls``, or ``None`` when DPP cannot prune it.

    A subclass of a prunable class is prunable when its ``forward`` is the parent's (a
    subclass with its own forward may use the weight in a way a mask would not see). Twin
    classes are made once per class and cached.
    """
    if issubclass(cls, DPPLayer):
        return None
    if cls in _MASKED_CLASS:
        return _MASKED_CLASS[cls]
    if cls in _TWINS:
        return _TWINS[cls]
    base = _prunable_base(cls)
    if base is None or cls.forward is not base.forward:  # type: ignore[attr-defined]
        return None
    if base is cls:  # transformers' Conv1D itself
        parent: type = _DPPConv1DMixin
    else:
        parent = masked_class(base)  # type: ignore[assignment]
    twin = type(
        f"DPP{cls.__name__}",
        (parent, cls),
        {
            "__doc__": f"``{cls.__qualname__}`` whose weight is masked k-of-n by DPP.",
            "__module__": __name__,
        },
    )
    _TWINS[cls] = twin
    return twin


def is_dpp_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a masked twin (a live DPP layer)."""
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
    """The masked twin of a plain prunable layer (see :func:`masked_class`), sharing its
    parameters."""
    base = type(module)
    twin = masked_class(base)
    if twin is None:
        raise TypeError(
            f"cannot mask a {base.__name__}; supported: "
            f"{', '.join(t.__name__ for t in PRUNABLE_TYPES)}, transformers' Conv1D, and "
            "their subclasses that keep the parent's forward"
        )
    new = _copy_module_state(module, twin)
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


class InputQuantHook:
    """Forward pre-hook of a baked layer: fixed 8-bit fake quantization of its input.

    Args:
        scale: the fixed 0-d scale (``ActivationQuantizer.scale()`` when baked).
    """

    def __init__(self, scale: Tensor) -> None:
        self.scale = scale.detach().clone()

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (fake_quantize_input(args[0], self.scale), *args[1:])


def unwrap(layer: DPPLayer) -> tuple[nn.Module, FinalizedLayer]:
    """Bake the deterministic mask and quantization into the weights; give back the plain layer.

    The returned layer is of the original class, holds the same ``nn.Parameter`` objects
    (their values replaced in place) and computes exactly what ``layer`` computes in eval mode.
    Linked BatchNorms are baked by :func:`dpp.batchnorm.bake_batchnorm_masks`, before this.

    Returns:
        ``(plain_layer, record)``.
    """
    assert isinstance(layer, nn.Module)
    record = FinalizedLayer(
        layout=layer.dpp_layout,
        quant=layer.dpp_quant,
        mask=None,
        codes=None,
        scale=None,
        dense_cls=layer._dpp_dense_cls,
    )
    with torch.no_grad():
        weight = canonical_weight(layer)
        group_mask = None if layer.dpp is None else layer.dpp.deterministic(weight)
        w, b = layer.dpp_weight_bias(group_mask)
        if group_mask is not None:
            assert layer.dpp_layout is not None
            record.mask = (layer.dpp_layout.expand(group_mask).expand(w.shape) != 0).clone()
            if layer.dpp_layout.prunes_bias:
                record.channel_mask = layer.dpp_layout.bias_mask(group_mask).clone() != 0
        if layer.dpp_quant is not None:
            masked = weight if record.mask is None else weight * record.mask
            codes, scale = quantize_weight(masked, layer.dpp_quant, record.mask)
            record.codes, record.scale = codes, scale
            w = scale * codes.to(scale.dtype)
        weight.copy_(w)
        if b is not None and layer.bias is not None:
            layer.bias.copy_(b)
    plain = _copy_module_state(layer, layer._dpp_dense_cls, drop=_DPP_ATTRS)
    if layer.dpp_act is not None:
        record.activation_scale = layer.dpp_act.scale().detach().clone()
        plain.register_forward_pre_hook(InputQuantHook(record.activation_scale))
    return plain, record
