"""Shared settings and spec-level helpers of the core tests.

The helpers restate method.md section 1 (how a weight is cut into groups) independently of
``dpp.granularity``, so the tests check the core against the method, not against itself.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import settings
from torch import Tensor, nn

settings.register_profile("dpp", max_examples=50, deadline=None)
settings.load_profile("dpp")

# The tests use small tensors: one thread is faster, and steady on a shared, busy machine.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_torch():
    """Every test starts from the same global RNG state."""
    torch.manual_seed(0)


def make_nonzero_(model: nn.Module) -> nn.Module:
    """Give every Linear/Conv weight and bias a magnitude >= 0.1: kept weights are never 0."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
                for p in (module.weight, module.bias):
                    if p is not None:
                        p.copy_(torch.where(p >= 0, 1.0, -1.0) * (p.abs() + 0.1))
    return model


def candidates_kept(w: Tensor, granularity: str, block_size: int | None = None) -> Tensor:
    """Bool ``[groups, n]``: which candidates of each group have a nonzero weight."""
    nz = w.detach() != 0
    out = w.shape[0]
    if granularity == "weight":
        return nz.reshape(out, -1)
    if granularity == "block":
        assert block_size is not None
        return nz.reshape(-1, block_size)
    if granularity == "kernel":
        return nz.reshape(out, w.shape[1], -1).any(-1)
    if granularity == "filter":
        return nz.reshape(out, -1).any(-1).reshape(1, out)
    raise AssertionError(granularity)


def candidates_all_or_nothing(w: Tensor, granularity: str) -> bool:
    """A kernel (or filter) candidate is either entirely kept or entirely zero."""
    nz = w.detach() != 0
    if granularity == "kernel":
        cand = nz.reshape(w.shape[0], w.shape[1], -1)
    elif granularity == "filter":
        cand = nz.reshape(w.shape[0], -1)
    else:
        return True
    return bool((cand.all(-1) == cand.any(-1)).all())


def expand_group_mask(mask: Tensor, granularity: str, weight_shape: tuple[int, ...]) -> Tensor:
    """``[groups, n]`` mask -> a tensor that broadcasts onto the weight (method.md s.1)."""
    rest = (1,) * (len(weight_shape) - 2)
    if granularity in ("weight", "block"):
        return mask.reshape(weight_shape)
    if granularity == "kernel":
        return mask.reshape(weight_shape[0], weight_shape[1], *rest)
    return mask.reshape(weight_shape[0], *((1,) * (len(weight_shape) - 1)))


def topk_hot(scores: Tensor, k: int) -> Tensor:
    """Bool mask of the k largest entries of every row."""
    idx = scores.detach().topk(k, dim=-1).indices
    return torch.zeros_like(scores, dtype=torch.bool).scatter(-1, idx, True)


def dense_forward(layer: nn.Module, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """What the plain layer computes with weight ``w`` and bias ``b``."""
    if isinstance(layer, nn.Linear):
        return F.linear(x, w, b)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[w.dim() - 2]
    return conv(x, w, b, layer.stride, layer.padding, layer.dilation, layer.groups)


def dpp_keys(model: nn.Module) -> set[str]:
    """State-dict keys that belong to DPP rather than to the original layers."""
    return {k for k in model.state_dict() if ".dpp." in k or k.startswith("dpp.")}
