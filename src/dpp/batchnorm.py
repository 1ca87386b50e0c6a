"""Filter masks through BatchNorm: a pruned feature map is zero after its BatchNorm too.

A filter-level mask zeroes a convolution's output channel, but a BatchNorm right after it
maps that zero to a constant (its shift), so the channel is not gone: the next layer still
sees it, and removing the channel later changes the outputs. :func:`link_batchnorms` finds,
with one forward pass over example inputs, the BatchNorm that directly consumes each
filter-pruned layer's output, and multiplies that BatchNorm's output by the same channel mask
(the same draw in training mode, the deterministic mask in eval mode). ``finalize()`` then
zeroes the BatchNorm's weight and bias of the pruned channels, so the plain model computes
the same and its pruned channels are exactly zero after normalisation.

Example:
    >>> import torch, dpp
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    >>> with torch.no_grad():
    ...     _ = model[1].bias.fill_(0.5)              # a shift: a zero map would become 0.5
    >>> x = torch.randn(2, 3, 5, 5)
    >>> pruner = dpp.prune(model, granularity="filter", k=2, example_inputs=x)
    >>> pruner.batchnorm_links
    {'0': '1'}
    >>> out = model.eval()(x)
    >>> kept = pruner.masks()["0"].flatten(1).any(1)
    >>> bool((out[:, ~kept] == 0).all()), bool((out[:, kept] != 0).any())
    (True, True)
    >>> records = pruner.finalize()                   # the BatchNorm's bias is zeroed there
    >>> records["0"].batchnorms, model[1].bias[~kept].tolist()
    (('1',), [0.0, 0.0])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .layers import DPPLayer
from .modeltools import as_inputs

__all__ = ["ChannelMaskAfterNorm", "bake_batchnorm_masks", "link_batchnorms", "linked_batchnorms"]


class ChannelMaskAfterNorm:
    """Forward hook of a BatchNorm: multiply its output by a filter layer's channel mask."""

    def __init__(self, layer: DPPLayer) -> None:
        self.layer = layer

    def channel_mask(self) -> Tensor | None:
        return getattr(self.layer, "_dpp_channel_mask", None)

    def __call__(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        mask = self.channel_mask()
        if mask is None:
            return output
        shape = (1, -1) + (1,) * (output.dim() - 2)
        return output * mask.reshape(shape).to(output.dtype)


def link_batchnorms(
    model: nn.Module, layers: dict[str, DPPLayer], example_inputs: Tensor | Sequence[Tensor]
) -> dict[str, str]:
    """Attach each filter-pruned layer's mask to the BatchNorm that consumes its output.

    Args:
        model: the pruned model.
        layers: ``{name: DPP layer}``; only ``filter``-granularity layers are linked.
        example_inputs: a tensor or tuple of tensors the model is called with (one forward
            pass in eval mode, without gradients; BatchNorm statistics are not updated).

    Returns:
        ``{layer name: BatchNorm name}`` of the links made.
    """
    filters = {
        name: layer
        for name, layer in layers.items()
        if layer.dpp_layout is not None and layer.dpp_layout.granularity == "filter"
    }
    if not filters:
        return {}
    produced: dict[int, str] = {}
    consumed: dict[str, int] = {}
    keep_alive: list[Tensor] = []
    handles = []
    for name, layer in filters.items():

        def record_output(m: nn.Module, a: tuple, out: Tensor, name: str = name) -> None:
            produced[id(out)] = name
            keep_alive.append(out)

        handles.append(layer.register_forward_hook(record_output))  # type: ignore[attr-defined]
    norms = {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    }
    for name, norm in norms.items():

        def record_input(m: nn.Module, a: tuple, name: str = name) -> None:
            consumed[name] = id(a[0])
            keep_alive.append(a[0])

        handles.append(norm.register_forward_pre_hook(record_input))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*as_inputs(example_inputs))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    links: dict[str, str] = {}
    for norm_name, tensor_id in consumed.items():
        layer_name = produced.get(tensor_id)
        if layer_name is None:
            continue
        norm = norms[norm_name]
        if not norm.affine or norm.num_features != filters[layer_name].dpp_layout.n:  # type: ignore[union-attr]
            continue  # without an affine weight and bias, finalize() could not bake it in
        norm.register_forward_hook(ChannelMaskAfterNorm(filters[layer_name]))
        links[layer_name] = norm_name
    return links


def linked_batchnorms(model: nn.Module) -> list[tuple[str, nn.Module, ChannelMaskAfterNorm, int]]:
    """Every (name, BatchNorm, its channel-mask hook, the hook's key) in ``model``."""
    out = []
    for name, module in model.named_modules():
        for key, hook in list(module._forward_hooks.items()):
            if isinstance(hook, ChannelMaskAfterNorm):
                out.append((name, module, hook, key))
    return out


@torch.no_grad()
def bake_batchnorm_masks(model: nn.Module) -> list[tuple[str, DPPLayer]]:
    """Zero the weight and bias of every linked BatchNorm's pruned channels (from the filter
    layer's deterministic mask) and remove the hooks; call before the layers are unwrapped.

    Returns:
        ``(BatchNorm name, its filter layer)`` of every BatchNorm baked.
    """
    links = linked_batchnorms(model)
    for _, norm, hook, key in links:
        layer = hook.layer
        assert layer.dpp is not None and layer.dpp_layout is not None
        channels = layer.dpp_layout.bias_mask(layer.dpp.deterministic(layer.weight))
        norm.weight.mul_(channels.to(norm.weight.dtype))
        norm.bias.mul_(channels.to(norm.bias.dtype))
        del norm._forward_hooks[key]
    return [(name, hook.layer) for name, _, hook, _ in links]
