"""One-shot priors from calibration data: Wanda scores and SparseGPT masks (method.md section 9).

A prior says, per group of a layer's :class:`~dpp.granularity.GroupLayout`, which k
candidates a one-shot method would keep. :func:`dpp.prune` turns it into initial logits
(``logit_init="magnitude" | "wanda" | "sparsegpt"``), so that the deterministic mask before
training is exactly the prior's choice; the same functions serve as one-shot baselines.

Every function works on the layer's weight as a ``[out, in]`` matrix: ``nn.Linear`` as it
is, a convolution flattened to ``[C_out, C_in/groups * prod(kernel)]``, and transformers'
``Conv1D`` (stored ``[in, out]``) transposed, as DPP groups it
(:func:`dpp.layers.canonical_weight`). Calibration inputs ``X`` are the layer's inputs in
the dense model, as ``[tokens, in]`` rows (a convolution's input unfolded into patches).

Example:
    >>> import torch
    >>> from dpp.priors import sparsegpt_prune
    >>> w = torch.randn(4, 8, dtype=torch.float64)
    >>> x = torch.randn(64, 8, dtype=torch.float64)
    >>> mask, new_w = sparsegpt_prune(w, x.T @ x, k=2, block_size=4)
    >>> mask.reshape(4, 2, 4).sum(-1).unique().tolist()  # 2 of every 4 inputs kept
    [2]
    >>> bool((new_w[~mask] == 0).all())
    True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import canonical_weight

__all__ = [
    "CALIBRATED_PRIORS",
    "InputStats",
    "calibrate",
    "prior_scores",
    "sparsegpt_prune",
    "wanda_scores",
]

#: Priors that need calibration inputs.
CALIBRATED_PRIORS = ("wanda", "sparsegpt")


def _matrix(module: nn.Module) -> Tensor:
    """The weight as ``[out, in]``: DPP's view of it (:func:`dpp.layers.canonical_weight`,
    a ``Conv1D`` transposed) with a convolution's kernel flattened into its inputs."""
    w = canonical_weight(module)
    return w.reshape(w.shape[0], -1)


def _view_shaped(module: nn.Module, matrix: Tensor) -> Tensor:
    """Inverse of :func:`_matrix`: ``[out, in]`` back to DPP's view of the weight."""
    return matrix.reshape(canonical_weight(module).shape)


def _layer_rows(module: nn.Module, x: Tensor) -> Tensor:
    """The layer input ``x`` as ``[tokens, in]`` rows matching :func:`canonical_weight`."""
    if isinstance(module, nn.modules.conv._ConvNd):
        if not isinstance(module, nn.Conv2d) and not isinstance(module, nn.Conv1d):
            raise ValueError(
                f"calibration priors support Linear, Conv1d and Conv2d layers, not "
                f"{type(module).__name__}; use logit_init='magnitude' for it"
            )
        if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise ValueError(
                f"calibration priors support convolutions with groups=1, zero and numeric "
                f"padding; this {type(module).__name__} has groups={module.groups}, "
                f"padding={module.padding!r}: use logit_init='magnitude' for it"
            )
        if isinstance(module, nn.Conv1d):
            x = x.unsqueeze(-2)
            kernel, dil, pad, stride = (
                (1, *module.kernel_size),
                (1, *module.dilation),
                (0, *module.padding),
                (1, *module.stride),
            )
        else:
            kernel, dil, pad, stride = (
                module.kernel_size,
                module.dilation,
                module.padding,
                module.stride,
            )
        cols = F.unfold(x, kernel, dilation=dil, padding=pad, stride=stride)  # [B, in, L]
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return x.reshape(-1, x.shape[-1])


@dataclass
class InputStats:
    """Statistics of one layer's calibration inputs ``X [tokens, in]``.

    Attributes:
        tokens: rows seen.
        sq_norm: ``[in]`` sum over tokens of ``X_tj^2`` (``||X_:,j||_2^2``), for Wanda.
        hessian: ``[in, in]`` ``X^T X`` (float64), for SparseGPT, or ``None`` when not needed.
    """

    tokens: int = 0
    sq_norm: Tensor | None = None
    hessian: Tensor | None = field(default=None, repr=False)


def _as_call(batch: Any) -> tuple[tuple, dict]:
    if isinstance(batch, Mapping):
        return (), dict(batch)
    if isinstance(batch, (tuple, list)):
        return tuple(batch), {}
    return (batch,), {}


def calibrate(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    calibration_data: Iterable[Any],
    *,
    hessian: Iterable[str] = (),
) -> dict[str, InputStats]:
    """Run ``model`` on the calibration batches and gather each layer's input statistics.

    The model runs in eval mode under ``torch.no_grad()`` (its mode is restored after).

    Args:
        model: the dense model.
        layers: ``{name: module}`` of the layers to watch.
        calibration_data: an iterable of model inputs; each item is a tensor (``model(x)``),
            a tuple (``model(*x)``) or a dict of keyword arguments (``model(**x)``, e.g. a
            tokenizer's output with ``input_ids``).
        hessian: names of the layers that also need ``X^T X``.

    Returns:
        ``{name: InputStats}``.

    Raises:
        ValueError: no calibration batch, a batch the model cannot run on (the message names
            its index and the model's error), or a layer that no batch reached.
    """
    need_h = set(hessian)
    stats = {name: InputStats() for name in layers}

    def hook_for(name: str, module: nn.Module):
        def hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else next(iter(kwargs.values()))
            rows = _layer_rows(module, x.detach()).double()
            st = stats[name]
            sq = rows.square().sum(0)
            st.sq_norm = sq if st.sq_norm is None else st.sq_norm + sq
            if name in need_h:
                h = rows.T @ rows
                st.hessian = h if st.hessian is None else st.hessian + h
            st.tokens += rows.shape[0]

        return hook

    handles = [
        module.register_forward_pre_hook(hook_for(name, module), with_kwargs=True)
        for name, module in layers.items()
    ]
    was_training = model.training
    model.eval()
    batches = 0
    try:
        with torch.no_grad():
            for i, batch in enumerate(calibration_data):
                args, kwargs = _as_call(batch)
                try:
                    model(*args, **kwargs)
                except (RuntimeError, ValueError, TypeError, IndexError) as exc:
                    shapes = [tuple(a.shape) for a in args if isinstance(a, Tensor)] or {
                        k: tuple(v.shape) for k, v in kwargs.items() if isinstance(v, Tensor)
                    }
                    raise ValueError(
                        f"calibration_data batch {i} (shapes {shapes}) cannot be fed to "
                        f"{type(model).__name__}: {exc}. Each item must be what the model is "
                        "called with: a tensor, a tuple of arguments or a dict of keyword "
                        "arguments."
                    ) from exc
                batches += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if batches == 0:
        raise ValueError(
            "calibration_data is empty: logit_init='wanda'/'sparsegpt' needs at least one "
            "batch of model inputs (e.g. a list of input_ids tensors)"
        )
    unseen = [name for name, st in stats.items() if st.tokens == 0]
    if unseen:
        raise ValueError(
            f"no calibration batch reached layer(s) {unseen}: a data-driven prior needs each "
            "pruned layer's inputs. Exclude those layers, or use logit_init='magnitude'."
        )
    return stats


def wanda_scores(weight: Tensor, sq_norm: Tensor) -> Tensor:
    """Wanda's score ``|W_ij| * ||X_:,j||_2``.

    Args:
        weight: ``[out, in]`` (canonical view).
        sq_norm: ``[in]`` ``sum_t X_tj^2``.

    Returns:
        ``[out, in]`` scores (float32).
    """
    return (weight.detach().abs().double() * sq_norm.double().sqrt()).float()


def _keep_quota(done: int, width: int, n: int, k: int) -> int:
    """Candidates of a row kept among columns ``[0, done + width)`` when k of n are kept
    in total, spread evenly: the per-block quota of a k-of-n row."""
    return (k * (done + width)) // n


def sparsegpt_prune(
    weight: Tensor,
    hessian: Tensor,
    *,
    k: int,
    block_size: int | None = None,
    dampening: float = 0.01,
    column_block: int = 128,
) -> tuple[Tensor, Tensor]:
    """SparseGPT's one-shot selection with the OBS weight update, for one layer.

    Columns (inputs) are processed left to right in blocks of ``column_block``; the inverse
    Hessian comes from the upper Cholesky factor of ``(H + lambda I)^-1`` (``lambda`` =
    ``dampening`` times the mean diagonal). Within each group of the mask, the pruned
    candidates are those of least saliency ``W_ij^2 / [H^-1]_jj`` at the moment their group
    is decided; the error of every zeroed weight is spread onto the columns not processed
    yet (lazy batched updates).

    Args:
        weight: ``[out, in]`` weight (canonical view); not modified.
        hessian: ``[in, in]`` ``X^T X`` of the calibration inputs (any positive scale).
        k: weights kept per group.
        block_size: ``m`` for N:M (k of every m consecutive inputs, decided when the block
            starts); ``None`` keeps k of the whole row (``in``), decided block by block with
            an even quota so that every row keeps exactly k.
        dampening: relative dampening ``lambda / mean(diag H)``.
        column_block: width of the lazy-update blocks.

    Returns:
        ``(mask, new_weight)``: bool ``[out, in]`` with exactly k kept per group, and the
        updated weight (zero where pruned) in ``weight``'s dtype.
    """
    out_dim, n_in = weight.shape
    if tuple(hessian.shape) != (n_in, n_in):
        raise ValueError(f"hessian must be [{n_in}, {n_in}] for a weight {list(weight.shape)}")
    m = block_size
    if m is not None and (n_in % m or not 1 <= k <= m):
        raise ValueError(f"N:M needs block_size dividing {n_in} and 1 <= k <= {m}; got {k}:{m}")
    if m is None and not 1 <= k <= n_in:
        raise ValueError(f"k must be in [1, {n_in}], got {k}")
    if m is not None:
        column_block = max(m, column_block // m * m)
    w = weight.detach().double().clone()
    h = hessian.detach().double().clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    damp = dampening * torch.diagonal(h).mean()
    h.diagonal().add_(damp)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    pruned = torch.zeros(out_dim, n_in, dtype=torch.bool)
    kept_so_far = torch.zeros(out_dim, dtype=torch.long)
    for c0 in range(0, n_in, column_block):
        c1 = min(c0 + column_block, n_in)
        w1 = w[:, c0:c1].clone()
        u1 = u[c0:c1, c0:c1]
        err = torch.zeros_like(w1)
        d = torch.diagonal(u1)
        if m is None:
            # This block's share of the row's k, by saliency over the block.
            sal = w1.square() / d.square()
            quota = _keep_quota(c0, c1 - c0, n_in, k) - kept_so_far
            order = sal.argsort(dim=1, descending=True, stable=True)
            ranks = torch.empty_like(order)
            ranks.scatter_(1, order, torch.arange(c1 - c0).expand_as(order))
            block_pruned = ranks >= quota[:, None]
            pruned[:, c0:c1] = block_pruned
            kept_so_far += (~block_pruned).sum(1)
        for i in range(c1 - c0):
            col = c0 + i
            if m is not None and col % m == 0:
                sal = w1[:, i : i + m].square() / d[i : i + m].square()
                drop = sal.topk(m - k, dim=1, largest=False).indices if k < m else None
                if drop is not None:
                    pruned[:, col : col + m].scatter_(1, drop, True)
            q = w1[:, i].masked_fill(pruned[:, col], 0.0)
            e = (w1[:, i] - q) / u1[i, i]
            w1[:, i:] -= e[:, None] * u1[i, i:][None, :]
            w1[:, i] = q
            err[:, i] = e
        w[:, c0:c1] = w1
        w[:, c1:] -= err @ u[c0:c1, c1:]
    w[pruned] = 0.0
    return ~pruned, w.to(weight.dtype)


def prior_scores(
    kind: str,
    name: str,
    module: nn.Module,
    layout: Any,
    stats: InputStats | None = None,
) -> Tensor:
    """``[num_groups, n]`` scores of a one-shot prior for one layer (higher: keep).

    Args:
        kind: ``"magnitude"``, ``"wanda"`` or ``"sparsegpt"`` (a 0/1 score: SparseGPT's mask).
        name: the layer's name, for error messages.
        module: the dense layer.
        layout: its :class:`~dpp.granularity.GroupLayout`.
        stats: its calibration statistics (``"wanda"``, ``"sparsegpt"``).
    """
    if kind == "magnitude":
        return layout.candidate_scores(canonical_weight(module))
    if stats is None or stats.sq_norm is None:
        raise ValueError(f"layer {name!r}: logit_init={kind!r} needs calibration inputs")
    w = _matrix(module).detach()
    if kind == "wanda":
        scores = wanda_scores(w, stats.sq_norm)
    elif kind == "sparsegpt":
        if layout.granularity not in ("weight", "block"):
            raise ValueError(
                f"layer {name!r}: logit_init='sparsegpt' selects single weights (weight or "
                f"block granularity), not {layout.granularity!r} groups; use 'wanda' or "
                "'magnitude' there, or an override"
            )
        if stats.hessian is None:
            raise ValueError(f"layer {name!r}: logit_init='sparsegpt' needs the input Hessian")
        block = layout.block_size if layout.granularity == "block" else None
        mask, _ = sparsegpt_prune(w, stats.hessian, k=layout.k, block_size=block)
        scores = mask.float()
    else:
        raise ValueError(f"unknown prior {kind!r}; valid: magnitude, wanda, sparsegpt")
    return layout.candidate_scores(_view_shaped(module, scores))
