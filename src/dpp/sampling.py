"""Gumbel top-k sampling of k-hot masks and its relaxation (method.md sections 2 and 3).

The forward value of :func:`gumbel_topk` is an exact k-hot mask: the top-k of the
perturbed scores ``z = logits + noise_scale * Gumbel(0, 1)``. Its gradient is that of
:func:`relaxed_topk` on the same ``z``: the sum of k successive softmaxes at temperature
``tau``, the i-th one over the candidates that the hard draws 1..i-1 have not taken.

The relaxation is evaluated in closed form. Sort ``s = z / tau`` descending,
``s_(1) >= s_(2) >= ...``; let ``D_i = sum_{r >= i} exp(s_(r))`` and
``C_m = sum_{i <= m} 1 / D_i``. Then the candidate of rank r receives
``exp(s_(r)) * C_min(r, k)``. Only the top k need their own ``D_i``; every other
candidate shares ``C_k``. Everything is computed in log space, so it stays finite for
small temperatures and large scores. The backward pass is written by hand: with ``g``
the incoming gradient and ``soft`` the relaxed mask,

    d soft / d s_l . g = soft_l * (g_l - beta_{min(rank l, k)}),
    beta_m = (sum_{i <= m} Ahat_i / D_i) / C_m,
    Ahat_i = (sum_{r >= i} g_(r) exp(s_(r))) / D_i,

a handful of prefix and suffix sums over the k top candidates plus two passes over n.
It costs one ``topk`` and a few elementwise passes, and saves only ``z`` and the top-k
indices for the backward pass.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["gumbel_noise", "gumbel_topk", "relaxed_topk", "relaxed_topk_reference"]


def _check_args(n: int, k: int, tau: float) -> None:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if not 1 <= k <= n:
        raise ValueError(f"k must satisfy 1 <= k <= n = {n} (the last dimension), got k={k}")
    if not tau > 0:
        raise ValueError(f"the temperature tau must be > 0, got {tau}")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _log_split(x: Tensor) -> tuple[Tensor, Tensor]:
    """log(max(x, 0)) and log(max(-x, 0)), -inf where the part is zero."""
    return torch.clamp(x, min=0).log(), torch.clamp(-x, min=0).log()


def _exp_diff(log_pos: Tensor, log_neg: Tensor, shift: Tensor) -> Tensor:
    """exp(log_pos - shift) - exp(log_neg - shift), with -inf - -inf read as 0."""
    return torch.exp(log_pos - shift).nan_to_num(0.0) - torch.exp(log_neg - shift).nan_to_num(0.0)


class _Relaxation:
    """Closed-form pieces of the relaxation for scores ``z`` and their top-k indices."""

    def __init__(self, z: Tensor, top_idx: Tensor, tau: float) -> None:
        zc = z.to(_compute_dtype(z.dtype))
        # Shift by the row maximum before dividing: the result is shift-invariant, and
        # z / tau alone would lose digits at small tau.
        self.s = (zc - zc.amax(-1, keepdim=True)) / tau
        self.top_idx = top_idx
        k, n = top_idx.shape[-1], z.shape[-1]
        # Scores of the top k, descending (topk returns them sorted).
        self.top_s = self.s.gather(-1, top_idx)
        # Scores with the top k removed; their mass is R.
        self.rest_s = self.s.scatter(-1, top_idx, float("-inf"))
        if k < n:
            log_r = torch.logsumexp(self.rest_s, dim=-1, keepdim=True)
        else:
            log_r = torch.full_like(self.top_s[..., :1], float("-inf"))
        # log D_i, i = 1..k: log(sum of the top scores from rank i on + R).
        tail = torch.logcumsumexp(self.top_s.flip(-1), dim=-1).flip(-1)
        self.log_d = torch.logaddexp(tail, log_r)
        # log C_m = log(sum_{i<=m} 1 / D_i).
        self.log_c = torch.logcumsumexp(-self.log_d, dim=-1)

    def soft_parts(self) -> tuple[Tensor, Tensor]:
        """(relaxed value of every non-top candidate, zero at the top; relaxed top values)."""
        soft_rest = torch.exp(self.rest_s + self.log_c[..., -1:])
        soft_top = torch.exp(self.top_s + self.log_c)
        return soft_rest, soft_top

    def soft(self) -> Tensor:
        soft_rest, soft_top = self.soft_parts()
        return soft_rest.scatter(-1, self.top_idx, soft_top)

    def grad_scores(self, grad: Tensor, tau: float) -> Tensor:
        """Vector-Jacobian product of the relaxed mask with respect to ``z``."""
        soft_rest, soft_top = self.soft_parts()
        g = grad.to(self.s.dtype)
        g_top = g.gather(-1, self.top_idx)
        log_c_k = self.log_c[..., -1:]
        # Contribution of the non-top candidates to A_i / D_i: they all sit in every tail.
        # sum_rest g_j exp(s_j) / D_i = (sum_rest g_j soft_j) * exp(-log C_k - log D_i).
        g_rest = (g * soft_rest).sum(-1, keepdim=True)
        a_hat = g_rest * torch.exp(-log_c_k - self.log_d)
        # Contribution of the top candidates of rank >= i: signed suffix log-sums.
        lp, ln = _log_split(g_top)
        suffix_pos = torch.logcumsumexp((self.top_s + lp).flip(-1), dim=-1).flip(-1)
        suffix_neg = torch.logcumsumexp((self.top_s + ln).flip(-1), dim=-1).flip(-1)
        a_hat = a_hat + _exp_diff(suffix_pos, suffix_neg, self.log_d)
        # beta_m = sum_{i<=m} a_hat_i / D_i / C_m, again as signed prefix log-sums.
        ap, an = _log_split(a_hat)
        prefix_pos = torch.logcumsumexp(ap - self.log_d, dim=-1)
        prefix_neg = torch.logcumsumexp(an - self.log_d, dim=-1)
        beta = _exp_diff(prefix_pos, prefix_neg, self.log_c)
        grad_s = soft_rest * (g - beta[..., -1:])
        grad_top = soft_top * (g_top - beta)
        grad_s = grad_s.scatter(-1, self.top_idx, grad_top)
        return grad_s / tau


# Largest spread s_(1) - s_(k) the fast path takes: beyond it exp() of the top scores
# would underflow in float32, and the log-space path above is used instead.
_FAST_MAX_SPREAD = 60.0


def _grad_scores_fast(z: Tensor, top_idx: Tensor, tau: float, grad: Tensor) -> Tensor | None:
    """The same vector-Jacobian product with plain sums, for the usual moderate scores.

    Works with ``w = exp((z - max z) / tau)`` in float32 over all n candidates (three
    passes) and float64 over the top k; returns ``None`` when the scores are too spread
    for that to be accurate.
    """
    if z.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return None
    inv_tau = 1.0 / tau
    zf = z.float()
    top_z = zf.gather(-1, top_idx)
    z_max = top_z[..., :1]
    if bool(((z_max - top_z[..., -1:]) * inv_tau > _FAST_MAX_SPREAD).any()):
        return None
    w = torch.sub(zf, z_max).mul_(inv_tau).exp_()  # [.., n], in (0, 1]
    g = grad.float()
    gw = g * w
    top_w = w.gather(-1, top_idx).double()  # [.., k], descending
    g_top = g.gather(-1, top_idx).double()
    gw_top = g_top * top_w
    # Sums over the non-top candidates, exact: zero the top positions first (they are
    # overwritten below anyway) instead of subtracting two nearly equal totals.
    w.scatter_(-1, top_idx, 0.0)
    gw.scatter_(-1, top_idx, 0.0)
    rest = w.sum(-1, keepdim=True).double()
    gw_rest = gw.sum(-1, keepdim=True).double()
    # D_i = sum_{r >= i} w_(r): suffix sums of the top k plus the rest.
    d = top_w.flip(-1).cumsum(-1).flip(-1) + rest
    inv_d = d.reciprocal()
    c = inv_d.cumsum(-1)  # C_m
    a = gw_top.flip(-1).cumsum(-1).flip(-1) + gw_rest  # A_i = sum_{r >= i} g_(r) w_(r)
    beta = (a * inv_d * inv_d).cumsum(-1) / c  # beta_m
    # Non-top candidates: soft_j = w_j C_k, gradient soft_j (g_j - beta_k) / tau.
    c_k, beta_k = c[..., -1:], beta[..., -1:]
    out = torch.addcmul(gw, w, (-beta_k).float()).mul_((c_k * inv_tau).float())
    top_grad = (top_w * c * (g_top - beta) * inv_tau).float()
    return out.scatter_(-1, top_idx, top_grad)


def _sort_by_score(z: Tensor, idx: Tensor) -> Tensor:
    """``idx`` ordered by descending ``z`` (ties by position, as ``topk`` would)."""
    order = z.gather(-1, idx).argsort(dim=-1, descending=True, stable=True)
    return idx.gather(-1, order)


class _TopKStraightThrough(torch.autograd.Function):
    """Forward: k-hot top-k of ``z`` (``hard=True``) or the relaxation itself.
    Backward: the gradient of the relaxation, recomputed from ``z`` and the top-k indices."""

    @staticmethod
    def forward(ctx, z: Tensor, k: int, tau: float, hard: bool) -> Tensor:  # type: ignore[override]
        # Unsorted: the forward needs the set only; the backward sorts the k winners.
        top_idx = z.topk(k, dim=-1, sorted=False).indices
        ctx.save_for_backward(z, top_idx)
        ctx.tau = tau
        if hard:
            return torch.zeros_like(z).scatter_(-1, top_idx, 1.0)
        return _Relaxation(z, _sort_by_score(z, top_idx), tau).soft().to(z.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        z, top_idx = ctx.saved_tensors
        top_idx = _sort_by_score(z, top_idx)
        grad_z = _grad_scores_fast(z, top_idx, ctx.tau, grad)
        if grad_z is None:
            grad_z = _Relaxation(z, top_idx, ctx.tau).grad_scores(grad, ctx.tau)
        return grad_z.to(z.dtype), None, None, None


def relaxed_topk(scores: Tensor, k: int, tau: float = 1.0) -> Tensor:
    """Relaxed k-hot vector: the sum of k successive softmaxes without replacement.

    Draw i (i = 1..k) is a softmax at temperature ``tau`` over the candidates that the
    hard draws 1..i-1 (the i-1 largest scores) have not taken. ``scores`` are taken as
    already perturbed; no noise is added here.

    Args:
        scores: ``[..., n]`` real scores (for DPP, logits plus Gumbel noise).
        k: how many candidates are kept per row, ``1 <= k <= n``.
        tau: temperature, ``> 0``. Small values approach the hard k-hot vector.

    Returns:
        ``[..., n]`` tensor with values in ``[0, k]`` whose rows sum to ``k``;
        differentiable with respect to ``scores``. Closed form, O(n log k).

    Example:
        >>> import torch, dpp
        >>> soft = dpp.relaxed_topk(torch.tensor([[3.0, 1.0, 0.0, -2.0]]), k=2, tau=0.5)
        >>> round(float(soft.sum()), 4)
        2.0
    """
    _check_args(scores.shape[-1], k, tau)
    return _TopKStraightThrough.apply(scores, k, float(tau), False)


def gumbel_noise(
    shape: torch.Size | tuple[int, ...],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Standard Gumbel(0, 1) noise as ``-log(-log(U))``, ``U ~ Uniform(0, 1)``."""
    u = torch.rand(shape, device=device, dtype=dtype, generator=generator)
    return u.clamp_(min=torch.finfo(dtype).tiny).log_().neg_().log_().neg_()


def gumbel_topk(
    logits: Tensor,
    k: int,
    *,
    tau: float = 1.0,
    noise_scale: float = 1.0,
    hard: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw a k-hot mask per row with the Gumbel top-k trick, straight-through.

    With ``noise_scale = 1`` the kept set is an exact sample of k candidates without
    replacement from the Plackett-Luce model with weights ``softmax(logits)``; with
    another ``noise_scale`` it samples from ``softmax(logits / noise_scale)``, and with
    ``noise_scale = 0`` it is the deterministic top-k of ``logits``.

    Args:
        logits: ``[..., n]`` logits; one independent draw per row.
        k: candidates kept per row, ``1 <= k <= n``.
        tau: temperature of the relaxation that supplies the gradient, ``> 0``.
        noise_scale: multiplier of the Gumbel noise, ``>= 0``.
        hard: ``True`` returns the exact k-hot mask (values 0 and 1) with the gradient of
            :func:`relaxed_topk` on the same perturbed scores; ``False`` returns the
            relaxed mask itself.
        generator: optional ``torch.Generator`` for the noise (default: torch's global RNG).

    Returns:
        ``[..., n]`` tensor of ``logits.dtype``; each row holds exactly ``k`` ones when
        ``hard`` is set.

    Example:
        >>> import torch, dpp
        >>> logits = torch.zeros(3, 8, requires_grad=True)
        >>> mask = dpp.gumbel_topk(logits, k=2, tau=0.5)
        >>> mask.sum(-1).tolist()
        [2.0, 2.0, 2.0]
        >>> (mask * torch.randn(3, 8)).sum().backward()  # gradient reaches the logits
    """
    _check_args(logits.shape[-1], k, tau)
    if not noise_scale >= 0:
        raise ValueError(f"noise_scale must be >= 0, got {noise_scale}")
    z = logits
    if noise_scale > 0:
        noise = gumbel_noise(
            logits.shape,
            device=logits.device,
            dtype=_compute_dtype(logits.dtype),
            generator=generator,
        )
        z = torch.add(logits, noise.to(logits.dtype), alpha=noise_scale)
    return _TopKStraightThrough.apply(z, k, float(tau), bool(hard))


def relaxed_topk_reference(scores: Tensor, k: int, tau: float = 1.0) -> Tensor:
    """The literal loop of k softmaxes that :func:`relaxed_topk` evaluates in closed form.

    O(k n) time and memory; kept as the reference the closed form is tested against and
    benchmarked with. Same arguments and result as :func:`relaxed_topk`.
    """
    _check_args(scores.shape[-1], k, tau)
    s = scores / tau
    order = scores.detach().argsort(dim=-1, descending=True)
    taken = torch.zeros_like(scores, dtype=torch.bool)
    soft = torch.zeros_like(scores)
    for i in range(k):
        soft = soft + torch.softmax(s.masked_fill(taken, float("-inf")), dim=-1)
        taken = taken.scatter(-1, order[..., i : i + 1], True)
    return soft
