"""dpp: Dynamic Probabilistic Pruning for PyTorch.

Learned, hardware-constrained sparsity: exactly k of every n weights per group (per output
unit, per block of n inputs (N:M), per feature map or per layer), sampled with Gumbel
top-k and trained through a relaxation of k successive softmaxes.

Example:
    >>> import torch, dpp
    >>> model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(),
    ...                             torch.nn.Linear(32, 10))
    >>> pruner = dpp.prune(model, granularity="weight", density=0.25)
    >>> loss = model(torch.randn(4, 64)).sum() + pruner.entropy_loss()
    >>> loss.backward(); pruner.step()
"""

from .config import DPPConfig, LayerSettings
from .granularity import GRANULARITIES, GroupLayout
from .layers import DPPConv1d, DPPConv2d, DPPConv3d, DPPLayer, DPPLinear, is_dpp_layer
from .maskfile import MaskFileError, load_masks, save_masks
from .masks import DPPMask, FixedMask, MaskSource
from .oneshot import OneShotResult, oneshot
from .pruner import FinalizedError, FinalizedLayer, Pruner, prune
from .quantization import QuantSpec
from .sampling import gumbel_topk, relaxed_topk
from .schedules import Schedule

__version__ = "0.1.0"

__all__ = [
    "GRANULARITIES",
    "DPPConfig",
    "DPPConv1d",
    "DPPConv2d",
    "DPPConv3d",
    "DPPLayer",
    "DPPLinear",
    "DPPMask",
    "FinalizedError",
    "FinalizedLayer",
    "FixedMask",
    "GroupLayout",
    "LayerSettings",
    "MaskFileError",
    "MaskSource",
    "OneShotResult",
    "Pruner",
    "QuantSpec",
    "Schedule",
    "__version__",
    "gumbel_topk",
    "is_dpp_layer",
    "load_masks",
    "oneshot",
    "prune",
    "relaxed_topk",
    "save_masks",
]
