"""One-shot priors from calibration data: Wanda scores and SparseGPT masks (method.md section 9).

A prior says, per group of a layer's :class:`~dpp.granularity.GroupLayout`, which k
candidates a one-shot method would keep. :func:`dpp.prune` turns it into initial logits
(``logit_init="magnitude" | "wanda" | "sparsegpt" | "sparsegpt-saliency"``), so that the
deterministic mask before training is exactly the prior's choice; the same functions serve
:func:`dpp.oneshot`, the one-shot pruning of a whole model.

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
    "HESSIAN_PRIORS",
    "InputStats",
    "calibrate",
    "graded_scores",
    "prior_scores",
    "sparsegpt_prune",
    "wanda_scores",
    "watch_inputs",
]

#: Priors that need calibration inputs.
CALIBRATED_PRIORS = ("wanda", "sparsegpt", "sparsegpt-saliency")
#: Priors that also need each layer's input Hessian ``X^T X``.
HESSIAN_PRIORS = ("sparsegpt", "sparsegpt-saliency")


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


def feed_batch(model: nn.Module, index: int, batch: Any, **extra: Any) -> Any:
    """Call ``model`` on one calibration batch (a tensor, a tuple of arguments or a dict of
    keyword arguments, plus ``extra`` keyword arguments); a batch the model cannot run on is
    a ``ValueError`` naming its index, its shapes and the model's error."""
    args, kwargs = _as_call(batch)
    try:
        return model(*args, **kwargs, **extra)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        shapes = [tuple(a.shape) for a in args if isinstance(a, Tensor)] or {
            k: tuple(v.shape) for k, v in kwargs.items() if isinstance(v, Tensor)
        }
        raise ValueError(
            f"calibration_data batch {index} (shapes {shapes}) cannot be fed to "
            f"{type(model).__name__}: {exc}. Each item must be what the model is "
            "called with: a tensor, a tuple of arguments or a dict of keyword "
            "arguments."
        ) from exc


def watch_inputs(
    layers: Mapping[str, nn.Module],
    stats: Mapping[str, InputStats],
    *,
    hessian: Iterable[str] = (),
) -> list[torch.utils.hooks.RemovableHandle]:
    """Forward pre-hooks that add every call's inputs of ``layers`` to ``stats`` (in place).

    Each call adds its ``[tokens, in]`` rows (float64) to ``sq_norm``, and to ``hessian``
    (``X^T X``) for the layers named in ``hessian``. Consecutive non-convolution layers
    called on the same input tensor (a block's q/k/v projections) share one computation.
    The caller removes the returned handles.
    """
    need_h = set(hessian)
    # The last input seen by a non-convolution layer: (tensor, version, rows, sq, X^T X).
    last: list[Any] = [None, -1, None, None, None]

    def hook_for(name: str, module: nn.Module):
        shareable = not isinstance(module, nn.modules.conv._ConvNd)

        def hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else next(iter(kwargs.values()))
            if shareable and last[0] is x and last[1] == x._version:
                rows, sq, h = last[2], last[3], last[4]
            else:
                rows = _layer_rows(module, x.detach()).double()
                sq, h = rows.square().sum(0), None
                if shareable:
                    last[:] = [x, x._version, rows, sq, None]
            st = stats[name]
            st.sq_norm = sq if st.sq_norm is None else st.sq_norm + sq
            if name in need_h:
                if h is None:
                    h = rows.T @ rows
                    if shareable and last[0] is x:
                        last[4] = h
                st.hessian = h if st.hessian is None else st.hessian + h
            st.tokens += rows.shape[0]

        return hook

    return [
        module.register_forward_pre_hook(hook_for(name, module), with_kwargs=True)
        for name, module in layers.items()
    ]


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
    stats = {name: InputStats() for name in layers}
    handles = watch_inputs(layers, stats, hessian=hessian)
    was_training = model.training
    model.eval()
    batches = 0
    try:
        with torch.no_grad():
            for i, batch in enumerate(calibration_data):
                feed_batch(model, i, batch)
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
    return_saliency: bool = False,
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
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
        return_saliency: also return the graded saliency.

    Returns:
        ``(mask, new_weight)``: bool ``[out, in]`` with exactly k kept per group, and the
        updated weight (zero where pruned) in ``weight``'s dtype, on ``weight``'s device.
        With ``return_saliency=True`` a third tensor, ``[out, in]`` float64: each weight's
        OBS saliency ``W_ij^2 / [H^-1]_jj`` at the moment its group was decided (the weight
        then already carries the updates of the columns before it). Within an N:M block
        every kept weight has at least the saliency of every pruned one; with
        ``block_size=None`` that holds within each lazy-update block of a row, whose share
        of the row's k is decided there (see :func:`graded_scores` for an order over the
        whole row).
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
    pruned = torch.zeros(out_dim, n_in, dtype=torch.bool, device=w.device)
    saliency = torch.zeros(out_dim, n_in, dtype=torch.float64, device=w.device)
    kept_so_far = torch.zeros(out_dim, dtype=torch.long, device=w.device)
    for c0 in range(0, n_in, column_block):
        c1 = min(c0 + column_block, n_in)
        w1 = w[:, c0:c1].clone()
        u1 = u[c0:c1, c0:c1]
        err = torch.zeros_like(w1)
        d = torch.diagonal(u1)
        if m is None:
            # This block's share of the row's k, by saliency over the block.
            sal = w1.square() / d.square()
            saliency[:, c0:c1] = sal
            quota = _keep_quota(c0, c1 - c0, n_in, k) - kept_so_far
            order = sal.argsort(dim=1, descending=True, stable=True)
            ranks = torch.empty_like(order)
            ranks.scatter_(1, order, torch.arange(c1 - c0, device=w.device).expand_as(order))
            block_pruned = ranks >= quota[:, None]
            pruned[:, c0:c1] = block_pruned
            kept_so_far += (~block_pruned).sum(1)
        for i in range(c1 - c0):
            col = c0 + i
            if m is not None and col % m == 0:
                sal = w1[:, i : i + m].square() / d[i : i + m].square()
                saliency[:, col : col + m] = sal
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
    if return_saliency:
        return ~pruned, w.to(weight.dtype), saliency
    return ~pruned, w.to(weight.dtype)


def graded_scores(saliency: Tensor, keep: Tensor, *, log: bool = True) -> Tensor:
    """``[groups, n]`` graded scores whose top-k in every group is exactly ``keep``.

    SparseGPT decides a row's weights block by block, so a pruned weight of an earlier
    block can have a higher recorded saliency than a kept weight of a later one. Here every
    pruned score is lowered, where needed, to just below the smallest kept score of its
    group, so that kept candidates rank above pruned ones; the grading is otherwise kept.

    Args:
        saliency: ``[groups, n]`` non-negative scores (``W^2 / [H^-1]_jj``, ``|W|``, ...).
        keep: ``[groups, n]`` bool, the candidates kept.
        log: score ``log(saliency)`` (saliencies span orders of magnitude; a zero becomes
            the group's largest value times ``1e-12``) instead of the saliency itself.

    Returns:
        ``[groups, n]`` float32 scores, higher: keep.
    """
    s = saliency.detach().double()
    if log:
        floor = s.amax(-1, keepdim=True).clamp_min(1e-300) * 1e-12
        s = torch.maximum(s, floor).log()
    s = s.float()
    kept_min = s.masked_fill(~keep, float("inf")).amin(-1, keepdim=True)
    ceiling = torch.nextafter(kept_min, torch.full_like(kept_min, -float("inf")))
    return torch.where(keep, s, torch.minimum(s, ceiling))


def prior_scores(
    kind: str,
    name: str,
    module: nn.Module,
    layout: Any,
    stats: InputStats | None = None,
) -> Tensor:
    """``[num_groups, n]`` scores of a one-shot prior for one layer (higher: keep).

    Args:
        kind: ``"magnitude"``, ``"wanda"``, ``"sparsegpt"`` (a 0/1 score: SparseGPT's mask)
            or ``"sparsegpt-saliency"`` (SparseGPT's graded OBS saliency, as
            :func:`graded_scores` of it: ``log(W^2 / [H^-1]_jj)`` at the moment each group
            is decided, lowered where needed so that its top-k is SparseGPT's mask).
        name: the layer's name, for error messages.
        module: the dense layer.
        layout: its :class:`~dpp.granularity.GroupLayout`.
        stats: its calibration statistics (``"wanda"``, ``"sparsegpt"``,
            ``"sparsegpt-saliency"``).
    """
    if kind == "magnitude":
        return layout.candidate_scores(canonical_weight(module))
    if kind not in CALIBRATED_PRIORS:
        raise ValueError(
            f"unknown prior {kind!r}; valid: magnitude, {', '.join(CALIBRATED_PRIORS)}"
        )
    if stats is None or stats.sq_norm is None:
        raise ValueError(f"layer {name!r}: logit_init={kind!r} needs calibration inputs")
    w = _matrix(module).detach()
    if kind == "wanda":
        return layout.candidate_scores(_view_shaped(module, wanda_scores(w, stats.sq_norm)))
    if layout.granularity not in ("weight", "block"):
        raise ValueError(
            f"layer {name!r}: logit_init={kind!r} selects single weights (weight or "
            f"block granularity), not {layout.granularity!r} groups; use 'wanda' or "
            "'magnitude' there, or an override"
        )
    if stats.hessian is None:
        raise ValueError(f"layer {name!r}: logit_init={kind!r} needs the input Hessian")
    block = layout.block_size if layout.granularity == "block" else None
    mask, _, saliency = sparsegpt_prune(
        w, stats.hessian, k=layout.k, block_size=block, return_saliency=True
    )
    shape = (layout.num_groups, layout.n)  # weight/block: the [out, in] order, regrouped
    if kind == "sparsegpt":
        return mask.float().reshape(shape)
    return graded_scores(saliency.reshape(shape), mask.reshape(shape))
