"""The final masks of a run, read from its checkpoint, as numpy arrays for the figures.

Inclusion probabilities are those of one training-mode draw at the run's final noise scale
(``dpp.metrics.inclusion_probabilities``, Monte Carlo with a fixed seed where no exact form
applies): with a noise scale of 0 they are the deterministic top-k mask itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .runs import ReportRun

__all__ = ["LayerMask", "MaskData", "beta_text", "mask_data"]


@dataclass
class LayerMask:
    """One pruned layer's final mask data, as numpy arrays."""

    name: str
    kind: str  # "linear" or "conv"
    granularity: str
    k: int
    n: int
    groups: int
    weight_shape: tuple[int, ...]
    noise_scale: float | None
    estimator: str
    candidate_prob: Any  # numpy, mask_shape squeezed: [out, in] / [C_out, C_in] / [C_out]
    kept: Any  # numpy bool, shaped like the weight (deterministic mask)


@dataclass
class MaskData:
    layers: list[LayerMask]
    input_shape: tuple[int, ...] | None
    first_layer: str | None  # the model's first Linear/Conv, if it is pruned
    error: str | None = None


def mask_data(run: ReportRun, samples: int, seed: int) -> MaskData:
    """Final inclusion probabilities and deterministic masks of a run (via its checkpoint)."""
    if run.method == "dense":
        return MaskData([], None, None)
    if not (run.path / "checkpoint.pt").is_file():
        return MaskData([], None, None, "no checkpoint.pt (the run was made with checkpoints off)")
    import torch
    from torch import nn

    from dpp.metrics import inclusion_probabilities

    from ..data import dataset_info
    from ..trainer import load_run

    loaded = load_run(run.path, load_data=False)
    pruner = loaded.pruner
    model = loaded.model
    if run.params is None:
        run.params = (
            pruner.parameter_counts()
            if pruner is not None
            else (sum(p.numel() for p in model.parameters()),) * 2
        )
    if pruner is None:
        return MaskData([], None, None)
    try:
        input_shape: tuple[int, ...] | None = tuple(
            dataset_info(loaded.cfg.data.dataset).input_shape
        )
    except ValueError:
        input_shape = None
    first = next(
        (
            name
            for name, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))
        ),
        None,
    )
    layers = []
    with torch.no_grad():
        for name, layer in pruner.layers.items():
            lay = layer.dpp_layout
            source = layer.dpp
            if lay is None or source is None:
                continue
            try:
                pi = inclusion_probabilities(layer, samples=samples, seed=seed)
                estimator = "fixed" if not hasattr(source, "logits") else "computed"
            except (TypeError, ValueError):  # an unsupported mask source: its own mask
                pi = source.deterministic(layer.weight).float()
                estimator = "deterministic"
            beta = getattr(source, "noise_scale", None)
            pi = pi.float()
            is_linear = isinstance(layer, nn.Linear)
            out_ch = lay.weight_shape[0]
            if lay.granularity == "filter":
                prob = pi.reshape(out_ch)
            elif lay.granularity == "kernel":
                prob = pi.reshape(out_ch, lay.weight_shape[1])
            elif is_linear:  # weight or block: one probability per weight
                prob = pi.reshape(out_ch, -1)
            else:  # conv weight or block: mean over the kernel positions -> [C_out, C_in/g]
                prob = pi.reshape(out_ch, lay.weight_shape[1], -1).mean(-1)
            kept = layer.dpp_masks()
            layers.append(
                LayerMask(
                    name=name,
                    kind="linear" if is_linear else "conv",
                    granularity=lay.granularity,
                    k=lay.k,
                    n=lay.n,
                    groups=lay.num_groups,
                    weight_shape=tuple(lay.weight_shape),
                    noise_scale=None if beta is None else float(beta),
                    estimator=estimator,
                    candidate_prob=prob.double().cpu().numpy(),
                    kept=kept.cpu().numpy() if kept is not None else None,
                )
            )
    return MaskData(layers, input_shape, first if first in pruner.layers else None)


def beta_text(layer: LayerMask) -> str:
    if layer.estimator == "fixed":
        return "fixed mask"
    if layer.estimator == "deterministic" or layer.noise_scale is None:
        return "deterministic mask"
    if layer.noise_scale == 0:
        return "noise scale β = 0: the deterministic top-k"
    return f"noise scale β = {layer.noise_scale:.3g}"
