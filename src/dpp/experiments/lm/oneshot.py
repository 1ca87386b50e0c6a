"""One-shot N:M baselines on a decoder: magnitude, Wanda and SparseGPT.

Every ``nn.Linear`` inside ``model.model.layers`` is pruned (the usual protocol: embeddings
and head dense). Magnitude and Wanda score every layer from the dense model (Wanda's inputs
from one calibration pass). SparseGPT works layer by layer in forward order, each layer's
Hessian taken from inputs that already pass through the pruned (and updated) layers before
it, as in the paper; ``update=False`` keeps the weights and returns its mask only (the prior
MaskLLM starts from).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from dpp.priors import calibrate, sparsegpt_prune, wanda_scores

__all__ = ["ONESHOT_METHODS", "block_linears", "nm_topk", "oneshot_masks"]

ONESHOT_METHODS = ("magnitude", "wanda", "sparsegpt")


def block_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """``{name: layer}`` of every ``nn.Linear`` inside the decoder layers, in forward order."""
    layers = {n: m for n, m in model.named_modules() if ".layers." in f".{n}" and n}
    return {n: m for n, m in layers.items() if isinstance(m, nn.Linear)}


def nm_topk(scores: Tensor, k: int, m: int) -> Tensor:
    """Bool mask ``[out, in]``: the ``k`` largest scores of every ``m`` consecutive inputs."""
    out, n_in = scores.shape
    groups = scores.reshape(out, n_in // m, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, groups.topk(k, dim=-1).indices, True)
    return keep.reshape(out, n_in)


def oneshot_masks(
    model: nn.Module,
    method: str,
    *,
    k: int,
    m: int,
    calibration: Sequence[Tensor] = (),
    update: bool = True,
) -> dict[str, Tensor]:
    """One-shot k:m masks of every decoder Linear (bool, weight-shaped).

    Args:
        model: the dense model; with ``method="sparsegpt"`` and ``update=True`` its weights
            are updated in place (pruned weights zero, the rest corrected), otherwise it is
            not changed.
        method: ``"magnitude"``, ``"wanda"`` or ``"sparsegpt"``.
        k: weights kept of every ``m`` consecutive inputs.
        m: block size.
        calibration: ``[batch, seq]`` token tensors (Wanda and SparseGPT).
        update: SparseGPT's OBS weight update (ignored by the other methods).
    """
    layers = block_linears(model)
    if method == "magnitude":
        return {n: nm_topk(layer.weight.detach().abs(), k, m) for n, layer in layers.items()}
    if method not in ONESHOT_METHODS:
        raise ValueError(f"unknown one-shot method {method!r}; valid: {ONESHOT_METHODS}")
    if not calibration:
        raise ValueError(f"one-shot {method} needs calibration batches")
    if method == "wanda":
        stats = calibrate(model, layers, calibration)
        return {
            n: nm_topk(wanda_scores(layer.weight, stats[n].sq_norm), k, m)
            for n, layer in layers.items()
        }
    masks = {}
    for name, layer in layers.items():  # forward order: later inputs see earlier updates
        stats = calibrate(model, {name: layer}, calibration, hessian=[name])
        mask, new_w = sparsegpt_prune(layer.weight.detach(), stats[name].hessian, k=k, block_size=m)
        if update:
            with torch.no_grad():
                layer.weight.copy_(new_w)
        masks[name] = mask
    return masks
