"""How a weight tensor is cut into groups of n candidates, k of which are kept (method.md s.1).

=============  ===============================================  ==========  =====================
granularity    one group is                                     n           mask broadcast onto W
=============  ===============================================  ==========  =====================
``weight``     one output unit (Linear row, one conv filter)    fan-in      ``W.shape``
``block``      m consecutive weights of one output unit (N:M)   m           ``W.shape``
``kernel``     one output feature map over its input channels   C_in/groups ``[C_out, C_in/g, 1..]``
``filter``     the whole layer over its output channels         C_out       ``[C_out, 1, ...]``
=============  ===============================================  ==========  =====================

The fan-in order is the weight's own logical order: ``C_in/groups, *kernel`` flattened.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["GRANULARITIES", "GroupLayout", "check_k", "resolve_k"]

GRANULARITIES = ("weight", "block", "kernel", "filter")


def check_k(k: object, n: int | None = None, *, where: str = "", name: str = "k") -> int:
    """The one check of a ``k`` (or another count, ``name``): an int in ``[1, n]``.

    Args:
        k: the value to check.
        n: the candidates per group, or ``None`` when not known yet (then only ``k >= 1``).
        where: prefix of the error message (the layer or config entry).
        name: what the value is called in the message.

    Raises:
        TypeError: not an int (``bool`` included).
        ValueError: out of range.

    Example:
        >>> check_k(2, 4)
        2
        >>> check_k(5, 4, where="layer 'fc'")
        Traceback (most recent call last):
        ...
        ValueError: layer 'fc': k must satisfy 1 <= k <= n = 4, got k = 5
    """
    prefix = f"{where}: " if where else ""
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"{prefix}{name} must be an int, got {type(k).__name__} {k!r}")
    if n is None and k < 1:
        raise ValueError(f"{prefix}{name} must be >= 1, got {k}")
    if n is not None and not 1 <= k <= n:
        raise ValueError(f"{prefix}{name} must satisfy 1 <= {name} <= n = {n}, got {name} = {k}")
    return k


def resolve_k(n: int, *, k: int | None, density: float | None, where: str) -> int:
    """``k`` itself, or ``max(1, round(density * n))``; validated against ``n``."""
    if (k is None) == (density is None):
        raise ValueError(
            f"{where}: give exactly one of k or density (got k={k}, density={density})"
        )
    if density is not None:
        if isinstance(density, bool) or not 0 < float(density) <= 1:
            raise ValueError(f"{where}: density must be in (0, 1], got {density}")
        return max(1, round(float(density) * n))
    return check_k(k, n, where=where)


@dataclass(frozen=True)
class GroupLayout:
    """The grouping of one weight tensor: ``num_groups`` groups of ``n`` candidates, keep ``k``.

    Build it with :meth:`for_weight`. A mask of shape ``[num_groups, n]`` maps onto the
    weight with :meth:`expand`.
    """

    granularity: str
    weight_shape: tuple[int, ...]
    num_groups: int
    n: int
    k: int
    block_size: int | None = None

    @classmethod
    def for_weight(
        cls,
        weight_shape: tuple[int, ...] | torch.Size,
        granularity: str,
        *,
        k: int | None = None,
        density: float | None = None,
        block_size: int | None = None,
        is_conv: bool,
        name: str = "layer",
    ) -> GroupLayout:
        """Group a Linear ``[out, in]`` or ConvNd ``[C_out, C_in/groups, *kernel]`` weight.

        Args:
            weight_shape: shape of the weight tensor.
            granularity: one of ``"weight"``, ``"block"``, ``"kernel"``, ``"filter"``.
            k: candidates kept per group (or give ``density``).
            density: fraction kept per group, ``k = max(1, round(density * n))``.
            block_size: ``m`` for ``"block"``; must divide the fan-in.
            is_conv: whether the weight belongs to a convolution.
            name: layer name used in error messages.
        """
        shape = tuple(int(s) for s in weight_shape)
        where = f"layer {name!r}"
        if granularity not in GRANULARITIES:
            raise ValueError(
                f"{where}: unknown granularity {granularity!r}; "
                f"valid: {', '.join(repr(g) for g in GRANULARITIES)}"
            )
        if block_size is not None and granularity != "block":
            raise ValueError(
                f"{where}: block_size={block_size} is only used with granularity 'block' "
                f"(got {granularity!r}); remove it or set granularity='block'"
            )
        out = shape[0]
        fan_in = math.prod(shape[1:])
        if granularity == "weight":
            groups, n = out, fan_in
        elif granularity == "block":
            if block_size is None:
                raise ValueError(
                    f"{where}: granularity 'block' needs block_size (the m of k:m, e.g. 4 for 2:4)"
                )
            if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
                raise ValueError(f"{where}: block_size must be a positive int, got {block_size}")
            if fan_in % block_size:
                divisors = [d for d in range(2, min(fan_in, 64) + 1) if fan_in % d == 0]
                raise ValueError(
                    f"{where}: block_size {block_size} does not divide the fan-in {fan_in} "
                    f"(weight shape {list(shape)}); block sizes that divide it include {divisors}"
                )
            groups, n = out * fan_in // block_size, block_size
        elif granularity == "kernel":
            if not is_conv:
                raise ValueError(
                    f"{where}: granularity 'kernel' applies to convolutions only, and this is a "
                    "Linear layer; use 'weight', 'block' or 'filter' for it "
                    "(an override or exclude)"
                )
            groups, n = out, shape[1]
            if n == 1:
                raise ValueError(
                    f"{where}: granularity 'kernel' has nothing to choose in a depthwise "
                    "convolution (one input channel per filter); use 'weight' or 'filter' for it"
                )
        else:
            groups, n = 1, out
        k = resolve_k(n, k=k, density=density, where=f"{where} ({granularity}, n={n})")
        return cls(granularity, shape, groups, n, k, block_size)

    @property
    def mask_shape(self) -> tuple[int, ...]:
        """Shape of the mask broadcast onto the weight."""
        shape = self.weight_shape
        if self.granularity in ("weight", "block"):
            return shape
        if self.granularity == "kernel":
            return (shape[0], shape[1]) + (1,) * (len(shape) - 2)
        return (shape[0],) + (1,) * (len(shape) - 1)

    @property
    def density(self) -> float:
        return self.k / self.n

    @property
    def prunes_bias(self) -> bool:
        """Only filter-level pruning removes whole output units, and their bias with them."""
        return self.granularity == "filter"

    @property
    def weights_per_candidate(self) -> int:
        """How many weights one candidate stands for (1 for weight/block, kernel size, ...)."""
        return math.prod(self.weight_shape) // (self.num_groups * self.n)

    def expand(self, mask: Tensor) -> Tensor:
        """``[num_groups, n]`` mask -> ``mask_shape``, broadcastable onto the weight."""
        return mask.reshape(self.mask_shape)

    def bias_mask(self, mask: Tensor) -> Tensor:
        """``[C_out]`` mask of the bias (filter level only)."""
        return mask.reshape(-1)

    def candidate_scores(self, weight: Tensor) -> Tensor:
        """``[num_groups, n]`` magnitude of every candidate (L2 norm over its weights)."""
        if self.granularity in ("weight", "block"):
            return weight.detach().reshape(self.num_groups, self.n).abs()
        w = weight.detach()
        if self.granularity == "kernel":
            return w.reshape(self.num_groups, self.n, -1).norm(dim=-1)
        return w.reshape(1, self.n, -1).norm(dim=-1)

    def to_dict(self) -> dict:
        return {
            "granularity": self.granularity,
            "weight_shape": list(self.weight_shape),
            "num_groups": self.num_groups,
            "n": self.n,
            "k": self.k,
            "block_size": self.block_size,
        }
