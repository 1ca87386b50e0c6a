"""Gumbel top-k sampling of k-hot masks and its relaxation (method.md sections 2 and 3).

The forward value of :func:`gumbel_topk` is an exact k-hot mask: the top-k of the
perturbed scores ``z = logits + noise_scale * Gumbel(0, 1)``. Its gradient is that of
:func:`relaxed_topk` on the same ``z``: the sum of k successive softmaxes at temperature
``tau``, the i-th one over the candidates that the hard draws 1..i-1 have not taken.

The relaxation is evaluated in closed form. With ``s = z / tau`` and the top k sorted
descending, ``t_1 >= ... >= t_k``, let ``D_i = sum_{rank r >= i} exp(s_(r))`` and
``C_m = sum_{i <= m} 1 / D_i``. The candidate of rank r receives ``exp(s_(r)) C_min(r, k)``:
only ranks 1..k-1 have their own coefficient, every other candidate shares ``C_k``. With
``g`` the incoming gradient, the vector-Jacobian product is

    d soft / d s_l . g = soft_l * (g_l - beta_{min(rank l, k)}),
    beta_m = (sum_{i <= m} Ahat_i / D_i) / C_m,   Ahat_i = (sum_{r >= i} g_(r) e^{s_(r)}) / D_i.

Every quantity lives in a bounded frame, so that no data-dependent branch is needed:

* the bulk (the ``[..., n]`` work) uses ``u_j = exp(s_j - t_k) <= 1`` outside the top k, in
  float32 (float64 for float64 input): ``R = sum u`` and ``sum g u`` are plain sums;
* the top-k part uses the ratios ``a_i = exp(t_{i+1} - t_i) <= 1``. Small groups
  (``n <= 16``: N:M blocks, 2:4 above all) run it as an elementwise recursion over the k
  columns in the bulk's dtype: no float64, no scans, stable at any spread. Larger groups
  run it vectorised over ``[..., k]`` in float64, in the frame ``e^{t_k}``, after
  shortening every gap ``t_i - t_{i+1}`` wider than 40 to 40 (``e^-40`` is below float64
  round-off next to 1, so nothing changes) and capping the shortened spread at 600 (only
  reached when more than 15 of the top-k gaps are each wider than 40, or the top k span
  600 in units of ``tau`` without such gaps; the values then stay finite, but the ranks
  beyond the cap share one weight).

The forward takes one sorted ``topk`` of ``z`` and the backward reuses its values and
indices: no sort, no second top-k, no recomputation of the noise. :class:`_GumbelTopK` is
one autograd Function from the logits (and the noise) to the mask. Ties among equal scores
are ordered as ``torch.topk`` orders them, in the forward, the backward and
:func:`relaxed_topk_reference` alike.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .granularity import check_k

__all__ = [
    "SMALL_GROUP_MAX_N",
    "gumbel_noise",
    "gumbel_topk",
    "relaxed_topk",
    "relaxed_topk_reference",
]

# Groups of at most this many candidates take the elementwise small-group path.
SMALL_GROUP_MAX_N = 16
# Vectorised path: top-k gaps (in units of s = z / tau) wider than this are shortened to
# it; exp(-40) = 4e-18 is below float64 round-off next to 1.
_MAX_GAP = 40.0
# Vectorised path: cap of the shortened spread t_1 - t_k, so that exp() of it, times k and
# times the incoming gradient, stays finite in float64.
_MAX_SPREAD = 600.0


def _check_args(n: int, k: int, tau: float) -> None:
    check_k(k, n)
    if not tau > 0:
        raise ValueError(f"the temperature tau must be > 0, got {tau}")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _bulk(z: Tensor, top_z: Tensor, top_idx: Tensor, inv_tau: float) -> Tensor:
    """``u = exp((z - z_(k)) / tau)`` over all candidates, zero at the top-k positions."""
    u = torch.sub(z, top_z[..., -1:]).mul_(inv_tau).exp_()
    return u.scatter_(-1, top_idx, 0.0)


def _top_small(
    top_z: Tensor, inv_tau: float, rest: Tensor, g_top: Tensor | None, g_rest: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """Top-k coefficients by an elementwise recursion over the k columns (small groups).

    With ``a_i = exp(t_{i+1} - t_i)``, ``X_i = D_i / e^{t_i}`` (in [1, n]) and
    ``Y_m = e^{t_m} C_m`` (in (0, k]): ``X_k = 1 + R``, ``X_i = 1 + a_i X_{i+1}``,
    ``Y_1 = 1 / X_1``, ``Y_m = a_{m-1} Y_{m-1} + 1 / X_m``; likewise ``Ahat_i`` and
    ``B_m = e^{t_m} sum_{i <= m} Ahat_i / D_i``, ``beta_m = B_m / Y_m``.

    Returns (relaxed values of ranks 1..k, ``Y``, ``[..., k]``; ``beta`` ``[..., k]`` or
    ``None`` when no gradient is given).
    """
    k = top_z.shape[-1]
    cols = [top_z[..., i : i + 1] for i in range(k)]
    a = [torch.sub(cols[i + 1], cols[i]).mul_(inv_tau).exp_() for i in range(k - 1)]
    x: list[Tensor] = [rest] * k
    x[k - 1] = rest + 1.0
    ahat: list[Tensor] = [rest] * k
    if g_top is not None:
        assert g_rest is not None
        ahat[k - 1] = (g_top[..., k - 1 :] + g_rest) / x[k - 1]
    for i in range(k - 2, -1, -1):
        ax = a[i] * x[i + 1]
        x[i] = ax + 1.0
        if g_top is not None:
            ahat[i] = torch.addcmul(g_top[..., i : i + 1], ax, ahat[i + 1]) / x[i]
    inv_x = [xi.reciprocal() for xi in x]
    y = [inv_x[0]]
    for m in range(1, k):
        y.append(torch.addcmul(inv_x[m], a[m - 1], y[m - 1]))
    soft_top = torch.cat(y, dim=-1) if k > 1 else y[0]
    if g_top is None:
        return soft_top, None
    b = [ahat[0] * inv_x[0]]
    for m in range(1, k):
        b.append(torch.addcmul(ahat[m] * inv_x[m], a[m - 1], b[m - 1]))
    beta = torch.cat(b, dim=-1) if k > 1 else b[0]
    return soft_top, beta.div_(soft_top)


def _top_vectorised(
    top_z: Tensor, inv_tau: float, rest: Tensor, g_top: Tensor | None, g_rest: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """The same coefficients as :func:`_top_small`, vectorised over ``[..., k]`` in float64.

    Frame ``e^{t_k}``: ``e_i = exp(t_i - t_k)`` (gaps shortened as the module docstring
    says), ``Dt_i = sum_{r >= i} e_r + R``, ``Ct_m = sum_{i <= m} 1 / Dt_i``; the relaxed
    value of rank m is ``e_m Ct_m``.
    """
    t = top_z.double() * inv_tau
    gaps = (t[..., :-1] - t[..., 1:]).clamp_(max=_MAX_GAP)
    spread = gaps.flip(-1).cumsum(-1).flip(-1).clamp_(max=_MAX_SPREAD)
    e = torch.cat([spread, torch.zeros_like(t[..., :1])], dim=-1).exp_()
    inv_d = (e.flip(-1).cumsum(-1).flip(-1) + rest.double()).reciprocal_()
    c = inv_d.cumsum(-1)
    soft_top = e * c
    if g_top is None:
        return soft_top.to(rest.dtype), None
    assert g_rest is not None
    a = (g_top.double() * e).flip(-1).cumsum(-1).flip(-1) + g_rest.double()
    # (a / Dt) / Dt: a / Dt is bounded, Dt^-2 alone could underflow.
    beta = (a * inv_d * inv_d).cumsum(-1) / c
    return soft_top.to(rest.dtype), beta.to(rest.dtype)


def _top_coefficients(
    n: int, top_z: Tensor, inv_tau: float, rest: Tensor, g_top: Tensor | None, g_rest: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    if n <= SMALL_GROUP_MAX_N:
        return _top_small(top_z, inv_tau, rest, g_top, g_rest)
    return _top_vectorised(top_z, inv_tau, rest, g_top, g_rest)


def _relaxed_values(z: Tensor, top_z: Tensor, top_idx: Tensor, tau: float) -> Tensor:
    """The relaxed k-hot vector of scores ``z`` with sorted top-k ``(top_z, top_idx)``."""
    inv_tau = 1.0 / tau
    u = _bulk(z, top_z, top_idx, inv_tau)
    rest = u.sum(-1, keepdim=True)
    soft_top, _ = _top_coefficients(z.shape[-1], top_z, inv_tau, rest, None, None)
    return u.mul_(soft_top[..., -1:]).scatter_(-1, top_idx, soft_top)


def _relaxed_grad(z: Tensor, top_z: Tensor, top_idx: Tensor, tau: float, grad: Tensor) -> Tensor:
    """Vector-Jacobian product of the relaxed k-hot vector with respect to ``z``."""
    inv_tau = 1.0 / tau
    u = _bulk(z, top_z, top_idx, inv_tau)
    g = grad.to(z.dtype)
    gu = g * u
    rest = u.sum(-1, keepdim=True)
    g_rest = gu.sum(-1, keepdim=True)
    g_top = g.gather(-1, top_idx)
    soft_top, beta = _top_coefficients(z.shape[-1], top_z, inv_tau, rest, g_top, g_rest)
    assert beta is not None
    # Outside the top k: soft_j (g_j - beta_k) / tau, with soft_j = u_j Y_k.
    out = torch.addcmul(gu, u, beta[..., -1:], value=-1.0).mul_(soft_top[..., -1:] * inv_tau)
    top_grad = (g_top - beta).mul_(soft_top).mul_(inv_tau)
    return out.scatter_(-1, top_idx, top_grad)


class _GumbelTopK(torch.autograd.Function):
    """Logits (plus ``noise_scale`` times the given noise) to the k-hot mask, in one Function.

    Forward: ``z = logits + noise_scale * noise``, one sorted ``topk`` of ``z`` (or the
    given ``held`` indices: a mask held over several steps), and the k-hot mask
    (``hard=True``) or the relaxation itself. Backward: the gradient of the relaxation of
    ``z``, from the saved ``z`` and the forward's sorted top-k values and indices.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        logits: Tensor,
        noise: Tensor | None,
        noise_scale: float,
        k: int,
        tau: float,
        hard: bool,
        held: Tensor | None,
    ) -> Tensor:
        z = logits.to(_compute_dtype(logits.dtype))
        if noise is not None:
            z = torch.add(z, noise.to(z.dtype), alpha=noise_scale)
        if held is None:
            top_z, top_idx = z.topk(k, dim=-1, sorted=True)
        else:
            top_idx = held
            top_z = z.gather(-1, held)
        ctx.save_for_backward(z, top_z, top_idx)
        ctx.tau = tau
        if hard:
            return torch.zeros_like(logits).scatter_(-1, top_idx, 1.0)
        return _relaxed_values(z, top_z, top_idx, tau).to(logits.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        z, top_z, top_idx = ctx.saved_tensors
        grad_z = _relaxed_grad(z, top_z, top_idx, ctx.tau, grad)
        return grad_z.to(grad.dtype), None, None, None, None, None, None


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
    return _GumbelTopK.apply(scores, None, 0.0, k, float(tau), False, None)


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
    noise = None
    if noise_scale > 0:
        noise = gumbel_noise(
            logits.shape,
            device=logits.device,
            dtype=_compute_dtype(logits.dtype),
            generator=generator,
        )
    return _GumbelTopK.apply(logits, noise, float(noise_scale), k, float(tau), bool(hard), None)


def gumbel_topk_held(
    logits: Tensor,
    noise: Tensor,
    held: Tensor,
    *,
    tau: float = 1.0,
    noise_scale: float = 1.0,
) -> Tensor:
    """A k-hot mask drawn earlier and held: its value, and the relaxed gradient at ``logits``.

    The value is the k-hot mask of the ``held`` indices. The gradient is that of the
    relaxation of ``z = logits + noise_scale * noise`` (the noise of the held draw, the
    current logits) with the held candidates taken in the held order, i.e. the gradient
    :func:`gumbel_topk` gave the draw, evaluated at the logits of this step.

    Args:
        logits: ``[..., n]`` current logits.
        noise: ``[..., n]`` Gumbel noise of the held draw (float32, or float64 logits' dtype).
        held: ``[..., k]`` int64 indices of the held draw, ordered by descending score.
        tau: temperature of the relaxation, ``> 0``.
        noise_scale: multiplier of the noise, ``>= 0``.

    Returns:
        ``[..., n]`` k-hot tensor of ``logits.dtype``.
    """
    _check_args(logits.shape[-1], held.shape[-1], tau)
    if not noise_scale >= 0:
        raise ValueError(f"noise_scale must be >= 0, got {noise_scale}")
    if noise.shape != logits.shape or held.shape[:-1] != logits.shape[:-1]:
        raise ValueError(
            f"held draw does not fit the logits {list(logits.shape)}: noise "
            f"{list(noise.shape)}, indices {list(held.shape)}"
        )
    k = held.shape[-1]
    return _GumbelTopK.apply(logits, noise, float(noise_scale), k, float(tau), True, held)


def draw_topk(
    logits: Tensor, k: int, *, noise_scale: float = 1.0, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """One draw to hold: ``(noise [..., n], indices [..., k])`` of the Gumbel top-k of
    ``logits + noise_scale * noise``, indices ordered by descending score (no gradient)."""
    _check_args(logits.shape[-1], k, 1.0)
    noise = gumbel_noise(
        logits.shape, device=logits.device, dtype=_compute_dtype(logits.dtype), generator=generator
    )
    with torch.no_grad():
        z = torch.add(logits.detach().to(noise.dtype), noise, alpha=float(noise_scale))
        held = z.topk(k, dim=-1, sorted=True).indices
    return noise, held


def relaxed_topk_reference(scores: Tensor, k: int, tau: float = 1.0) -> Tensor:
    """The literal loop of k softmaxes that :func:`relaxed_topk` evaluates in closed form.

    O(k n) time and memory; kept as the reference the closed form is tested against and
    benchmarked with. Same arguments and result as :func:`relaxed_topk`.
    """
    _check_args(scores.shape[-1], k, tau)
    s = scores / tau
    # The i-th draw takes the i-th largest score; equal scores in torch.topk's order, as
    # the closed form takes them.
    order = scores.detach().topk(k, dim=-1, sorted=True).indices
    taken = torch.zeros_like(scores, dtype=torch.bool)
    soft = torch.zeros_like(scores)
    for i in range(k):
        soft = soft + torch.softmax(s.masked_fill(taken, float("-inf")), dim=-1)
        taken = taken.scatter(-1, order[..., i : i + 1], True)
    return soft
