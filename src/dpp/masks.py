"""Mask sources: what decides which k of every n candidates a masked layer keeps.

A masked layer (:mod:`dpp.layers`) owns the mechanics (group layout, applying the mask,
quantization, finalizing); a :class:`MaskSource` only decides the ``[num_groups, n]``
k-hot mask. :class:`DPPMask` is Dynamic Probabilistic Pruning: trainable logits, one
Gumbel top-k draw per forward call in training mode, the deterministic top-k in eval
mode. :class:`FixedMask` holds a mask that does not change (a frozen DPP mask, a random
or a magnitude mask). Other scoring rules subclass :class:`MaskSource`.

Example:
    >>> import torch
    >>> from dpp.granularity import GroupLayout
    >>> from dpp.masks import DPPMask, FixedMask, topk_mask
    >>> layout = GroupLayout.for_weight((2, 4), "weight", k=2, is_conv=False)
    >>> topk_mask(torch.tensor([[0.1, 0.9, 0.5, 0.2], [3.0, 1.0, 2.0, 0.0]]), 2).tolist()
    [[0.0, 1.0, 1.0, 0.0], [1.0, 0.0, 1.0, 0.0]]
    >>> learned = DPPMask(layout)
    >>> learned.sample(torch.zeros(2, 4)).sum(-1).tolist()  # one k-hot draw per group
    [2.0, 2.0]
    >>> fixed = FixedMask(layout, torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]]))
    >>> fixed.deterministic(torch.zeros(2, 4)).tolist()
    [[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .granularity import GroupLayout
from .sampling import draw_topk, gumbel_topk, gumbel_topk_held

__all__ = ["DPPMask", "FixedMask", "MaskSource", "topk_mask"]


def topk_mask(scores: Tensor, k: int) -> Tensor:
    """k-hot float mask of the k largest ``scores`` along the last dimension."""
    idx = scores.topk(k, dim=-1).indices
    return torch.zeros_like(scores, dtype=torch.float32).scatter_(-1, idx, 1.0)


class MaskSource(nn.Module):
    """Decides a layer's k-hot mask. Subclasses implement :meth:`sample` and :meth:`deterministic`.

    Args:
        layout: the layer's group layout (``num_groups``, ``n``, ``k``).
    """

    def __init__(self, layout: GroupLayout) -> None:
        super().__init__()
        self.layout = layout

    @property
    def k(self) -> int:
        return self.layout.k

    def sample(self, weight: Tensor) -> Tensor:
        """Training-mode mask ``[num_groups, n]`` for this forward call (may carry gradients)."""
        raise NotImplementedError

    def deterministic(self, weight: Tensor) -> Tensor:
        """Evaluation mask ``[num_groups, n]``, a float 0/1 tensor without gradient."""
        raise NotImplementedError

    def forward(self, weight: Tensor) -> Tensor:
        return self.sample(weight) if self.training else self.deterministic(weight)

    def masked_weight(self, weight: Tensor, kept: Tensor) -> Tensor:
        """How the mask (expanded onto the weight) is applied: ``weight * kept``.

        Scoring rules with their own gradient through the product (e.g. a dense
        straight-through estimator) override this.
        """
        return weight * kept

    def extra_repr(self) -> str:
        lay = self.layout
        return f"{lay.granularity}, groups={lay.num_groups}, k={lay.k}/{lay.n}"


class DPPMask(MaskSource):
    """Learned k-of-n mask: logits ``[num_groups, n]``, Gumbel top-k with a relaxed gradient.

    ``tau``, ``noise_scale`` and ``current_k`` (the target ``layout.k``, or more while a
    sparsity ramp is under way) are set by the :class:`~dpp.Pruner` at every ``step()``,
    and so are ``resample_every``, ``draw_index`` (``step // resample_every``) and
    ``keep_scores`` (:class:`~dpp.DPPConfig`). With
    ``resample_every = 1`` every training forward call draws a fresh mask; with ``M > 1``
    one draw (its noise and its kept indices) is held while ``draw_index`` and ``k`` stay
    the same, and the logits get the relaxed gradient of the held draw at their current
    values (:func:`~dpp.sampling.gumbel_topk_held`). The held draw is not saved in the
    state dict: a restored model draws afresh. A ``frozen`` mask
    (:meth:`~dpp.Pruner.freeze_masks`) is its deterministic top-k in training too.

    Args:
        layout: the layer's group layout.
        init_std: standard deviation of the normal initialisation of the logits.
        init_logits: optional initial logits ``[num_groups, n]`` (e.g. from weight magnitudes).
        dtype: storage dtype of the logits (float32 default; bfloat16 / float16 halve them).
    """

    def __init__(
        self,
        layout: GroupLayout,
        init_std: float = 0.5,
        init_logits: Tensor | None = None,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(layout)
        shape = (layout.num_groups, layout.n)
        if init_logits is not None:
            if tuple(init_logits.shape) != shape:
                raise ValueError(
                    f"init_logits must have shape {list(shape)}, got {list(init_logits.shape)}"
                )
            logits = init_logits.detach().to(device=device, dtype=torch.float32).clone()
        else:
            logits = torch.randn(shape, device=device) * init_std
        self.logits = nn.Parameter(logits.to(dtype))
        self.tau = 1.0
        self.noise_scale = 1.0
        self.generator: torch.Generator | None = None
        # The k of this step: layout.k, or more while a sparsity ramp is under way.
        self.current_k = layout.k
        self.resample_every = 1
        # Keep each draw's scores for backward instead of redrawing its noise there.
        self.keep_scores = False
        self.draw_index = 0
        # (draw_index, k, noise [num_groups, n], indices [num_groups, k]) of the held draw.
        self._held: tuple[int, int, Tensor, Tensor] | None = None
        self._eval_cache: tuple[Tensor, int, Tensor] | None = None
        # Fine-tuning under the learned mask: no draws, the deterministic top-k throughout.
        self.frozen = False

    @property
    def k(self) -> int:
        return self.current_k

    def forward(self, weight: Tensor) -> Tensor:
        if getattr(self, "frozen", False):  # a module pickled before the flag existed
            return self.deterministic(weight)
        return super().forward(weight)

    def sample(self, weight: Tensor) -> Tensor:
        if self.resample_every == 1:
            self._held = None
            return gumbel_topk(
                self.logits,
                self.k,
                tau=self.tau,
                noise_scale=self.noise_scale,
                generator=self.generator,
                keep_scores=getattr(self, "keep_scores", False),  # pickled before the flag
            )
        held = self._held
        if (
            held is None
            or held[0] != self.draw_index
            or held[1] != self.k
            or held[2].shape != self.logits.shape
            or held[2].device != self.logits.device
        ):
            noise, idx = draw_topk(
                self.logits, self.k, noise_scale=self.noise_scale, generator=self.generator
            )
            held = self._held = (self.draw_index, self.k, noise, idx)
        return gumbel_topk_held(
            self.logits, held[2], held[3], tau=self.tau, noise_scale=self.noise_scale
        )

    def deterministic(self, weight: Tensor) -> Tensor:
        # Keyed on the logits' values: writes through ``.data`` bump no version counter.
        logits = self.logits.detach()
        cache = self._eval_cache
        if (
            cache is None
            or cache[0].device != logits.device
            or cache[0].dtype != logits.dtype
            or cache[1] != self.k
            or not torch.equal(cache[0], logits)
        ):
            self._eval_cache = (logits.clone(), self.k, topk_mask(logits, self.k))
        return self._eval_cache[2]

    def __getstate__(self):
        state = super().__getstate__()
        state = dict(state)
        state["_eval_cache"] = None
        state["_held"] = None
        return state

    def extra_repr(self) -> str:
        text = f"{super().extra_repr()}, tau={self.tau:.4g}, noise_scale={self.noise_scale:.4g}"
        return text + (", frozen" if getattr(self, "frozen", False) else "")


class FixedMask(MaskSource):
    """A mask that does not change; stored as a buffer ``mask`` ``[num_groups, n]``.

    Args:
        layout: the layer's group layout.
        mask: k-hot tensor ``[num_groups, n]`` (exactly ``layout.k`` ones per row).
    """

    def __init__(self, layout: GroupLayout, mask: Tensor) -> None:
        super().__init__(layout)
        shape = (layout.num_groups, layout.n)
        if tuple(mask.shape) != shape:
            raise ValueError(f"mask must have shape {list(shape)}, got {list(mask.shape)}")
        counts = (mask != 0).sum(-1)
        if not bool((counts == layout.k).all()):
            raise ValueError(
                f"mask must keep exactly k={layout.k} of n={layout.n} per group; "
                f"found between {int(counts.min())} and {int(counts.max())}"
            )
        self.register_buffer("mask", (mask != 0).to(torch.float32))

    def sample(self, weight: Tensor) -> Tensor:
        return self.mask

    def deterministic(self, weight: Tensor) -> Tensor:
        return self.mask
