"""One-shot N:M baselines on a decoder (magnitude, Wanda, SparseGPT): a thin use of
:func:`dpp.oneshot`.

Every ``nn.Linear`` inside the decoder layers is pruned (the usual protocol: embeddings and
head dense). Wanda and SparseGPT are calibrated sequentially over the decoder blocks, each
block on the outputs of the already pruned blocks before it (``dpp.oneshot``'s default).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

import dpp
from dpp.oneshot import ONESHOT_METHODS

__all__ = ["ONESHOT_METHODS", "block_linears", "oneshot_masks"]


def block_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """``{name: layer}`` of every ``nn.Linear`` inside the decoder layers, in forward order."""
    layers = {n: m for n, m in model.named_modules() if ".layers." in f".{n}" and n}
    return {n: m for n, m in layers.items() if isinstance(m, nn.Linear)}


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
        update: SparseGPT's OBS weight update (ignored by the other methods, which leave
            the weights alone).
    """
    result = dpp.oneshot(
        model,
        method,
        k=k,
        block_size=m,
        calibration_data=None if method == "magnitude" else list(calibration),
        update_weights=update and method == "sparsegpt",
        include=list(block_linears(model)),
    )
    return result.masks
