"""2:4 semi-structured sparsity on NVIDIA GPUs for Linear layers pruned 2 of every 4.

A DPP ``block`` layout with ``block_size=4`` and ``k=2`` is exactly the 2:4 pattern of NVIDIA's
sparse tensor cores (compute capability 8.0 and newer: A100, H100, RTX 30xx/40xx). Such
layers are converted with ``torch.sparse.to_sparse_semi_structured`` (fp16 or bf16).
"""

from __future__ import annotations

import torch
from torch import nn

from ..bake import Baked, bake
from ..layers import canonical_weight, is_hf_conv1d
from ..modeltools import replace_module
from ..pruner import Pruner

__all__ = ["SemiStructuredError", "semi_structured_layers", "to_semi_structured"]

_DTYPES = (torch.float16, torch.bfloat16)


class SemiStructuredError(RuntimeError):
    """2:4 conversion is impossible here (no suitable GPU) or for this model (no 2:4 layer)."""


def _linear_like(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_hf_conv1d(type(module))


def _2of4_names(baked: Baked) -> list[str]:
    return [
        name
        for name, rec in baked.layers.items()
        if _linear_like(baked.module(name))
        and rec.layout is not None
        and rec.layout.granularity == "block"
        and (rec.layout.n, rec.layout.k) == (4, 2)
    ]


def semi_structured_layers(model_or_pruner: nn.Module | Pruner | Baked) -> list[str]:
    """Names of the Linear layers (transformers' Conv1D included) pruned 2:4, after checking
    their masks (works on CPU).

    Raises:
        SemiStructuredError: no layer is pruned 2:4 (the message lists what the pruned
            Linear layers use instead), or a mask/weight breaks the 2-of-4 pattern.
    """
    baked = bake(model_or_pruner, what="to_semi_structured", copy=False)
    names = _2of4_names(baked)
    if not names:
        found = ", ".join(
            f"{n!r}: {r.layout.granularity} k={r.layout.k} of n={r.layout.n}"
            for n, r in baked.layers.items()
            if r.layout is not None and _linear_like(baked.module(n))
        )
        raise SemiStructuredError(
            "no Linear layer is pruned 2:4; prune with granularity='block', block_size=4, "
            f"k=2 (found: {found or 'no pruned Linear layer'})"
        )
    for name in names:
        rec = baked.layers[name]
        assert rec.mask is not None
        blocks = rec.mask.reshape(-1, 4).sum(-1)
        nonzero = (canonical_weight(baked.module(name)).detach() != 0).reshape(-1, 4).sum(-1)
        if not bool((blocks == 2).all()) or bool((nonzero > 2).any()):
            raise SemiStructuredError(
                f"layer {name!r}: its mask does not keep exactly 2 of every 4 consecutive "
                "weights; re-finalize the model"
            )
    return names


def _check_device(device: torch.device) -> None:
    if device.type != "cuda" or not torch.cuda.is_available():
        raise SemiStructuredError(
            "2:4 semi-structured sparsity runs on NVIDIA GPUs with compute capability >= 8.0 "
            f"(Ampere or newer), and no CUDA device is available here (device {device}, "
            f"torch.cuda.is_available() = {torch.cuda.is_available()}). On CPU, use "
            "dpp.export.convert_kofn (k-of-n kernels) or the finalized dense model."
        )
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        raise SemiStructuredError(
            f"2:4 semi-structured sparsity needs compute capability >= 8.0; "
            f"{torch.cuda.get_device_name(device)} has {major}.{minor}. Use the finalized "
            "dense model on this GPU."
        )


def to_semi_structured(
    model_or_pruner: nn.Module | Pruner,
    *,
    dtype: torch.dtype = torch.float16,
    device: str | torch.device = "cuda",
) -> nn.Module:
    """A copy of the model for GPU inference with its 2:4 Linear layers as sparse tensors.

    Every ``nn.Linear`` pruned with ``granularity="block", block_size=4, k=2`` gets a weight
    ``torch.sparse.to_sparse_semi_structured(W)``; everything else stays dense. The whole
    model is moved to ``device`` and cast to ``dtype``.

    Args:
        model_or_pruner: a model holding DPP layers, or its :class:`~dpp.Pruner` (live or
            finalized). Not modified.
        dtype: ``torch.float16`` or ``torch.bfloat16``.
        device: a CUDA device of compute capability >= 8.0.

    Returns:
        The converted copy, in eval mode (inference only).

    Raises:
        SemiStructuredError: no layer is pruned 2:4, a mask is not 2-of-4, or no suitable
            GPU is present (checked in that order, so the masks are validated on CPU too).
        ValueError: ``dtype`` is not fp16/bf16.

    Example:
        >>> import torch, dpp
        >>> from dpp.export import to_semi_structured
        >>> model = torch.nn.Sequential(torch.nn.Linear(128, 64))
        >>> pruner = dpp.prune(model, granularity="block", block_size=4, k=2)
        >>> if torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0):
        ...     model = to_semi_structured(pruner)
    """
    if dtype not in _DTYPES:
        raise ValueError(f"2:4 sparsity supports float16 and bfloat16, got {dtype}")
    baked = bake(model_or_pruner, what="to_semi_structured")
    names = semi_structured_layers(baked)
    device = torch.device(device)
    _check_device(device)
    from torch.sparse import to_sparse_semi_structured

    model = baked.model.to(device=device, dtype=dtype).eval()
    for name in names:
        layer = model.get_submodule(name)
        # [out, in] as the sparse kernels want it (a Conv1D holds [in, out]: computed as y = x W)
        sparse = to_sparse_semi_structured(canonical_weight(layer).detach().contiguous())
        if is_hf_conv1d(type(layer)):
            linear = nn.Linear(layer.nx, layer.nf, device=device, dtype=dtype)
            linear.bias = layer.bias
            layer = linear
            replace_module(model, model.get_submodule(name), linear)
        layer.weight = nn.Parameter(sparse, requires_grad=False)
    return model
