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

Large groups (:class:`_GumbelTopK`): the forward sorts the top k of ``z`` once (an
unsorted ``topk``, then two sorts of the k winners) and the backward reuses those values and
indices: no second top-k or sort, no recomputation of the noise. Small groups
(:class:`_GumbelTopKSmall`) work on the transposed ``[n, groups]`` layout, where each step is
a contiguous elementwise pass: ranks by pairwise comparisons (no ``topk``, sort or scatter),
then the recursion above. Either is one autograd Function from the logits (and the noise)
to the mask, with no data-dependent Python check (``torch.compile`` traces it in one graph).
Equal scores are ranked by index (the lower first) in both paths and in
:func:`relaxed_topk_reference`; only the choice among candidates tied *at* the k-th score
is left to ``torch.topk`` in the large-group path.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .granularity import check_k

__all__ = [
    "SMALL_GROUP_MAX_N",
    "draw_topk",
    "gumbel_noise",
    "gumbel_topk",
    "gumbel_topk_held",
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
    top: list[Tensor],
    inv_tau: float,
    rest: Tensor,
    g_top: list[Tensor] | None,
    g_rest: Tensor | None,
) -> tuple[list[Tensor], list[Tensor] | None]:
    """Top-k coefficients by an elementwise recursion over the k ranks (small groups).

    ``top`` holds the sorted top-k scores ``z_(1) >= ... >= z_(k)``, one tensor per rank
    (all of one shape, e.g. ``[G]``), ``rest`` the bulk's ``R`` and ``g_top`` / ``g_rest``
    the incoming gradient at the top k and ``sum g u`` outside it. With
    ``a_i = exp(t_{i+1} - t_i) <= 1``, ``X_i = D_i / e^{t_i}`` (in [1, n]) and
    ``Y_m = e^{t_m} C_m`` (in (0, k]): ``X_k = 1 + R``, ``X_i = 1 + a_i X_{i+1}``,
    ``Y_1 = 1 / X_1``, ``Y_m = a_{m-1} Y_{m-1} + 1 / X_m``; likewise ``Ahat_i`` and
    ``B_m = e^{t_m} sum_{i <= m} Ahat_i / D_i``, ``beta_m = B_m / Y_m``.

    Returns (``Y``: the relaxed values of ranks 1..k, the last one also the coefficient of
    every candidate outside the top k; ``beta`` per rank, or ``None`` without ``g_top``).
    """
    k = len(top)
    a = [torch.sub(top[i + 1], top[i]).mul_(inv_tau).exp_() for i in range(k - 1)]
    x: list[Tensor] = [rest] * k
    x[k - 1] = rest + 1.0
    ahat: list[Tensor] = [rest] * k
    if g_top is not None:
        assert g_rest is not None
        ahat[k - 1] = (g_top[k - 1] + g_rest).div_(x[k - 1])
    for i in range(k - 2, -1, -1):
        ax = a[i] * x[i + 1]
        x[i] = ax + 1.0
        if g_top is not None:
            ahat[i] = torch.addcmul(g_top[i], ax, ahat[i + 1]).div_(x[i])
    inv_x = [xi.reciprocal() for xi in x]
    y = [inv_x[0]]
    for m in range(1, k):
        y.append(torch.addcmul(inv_x[m], a[m - 1], y[m - 1]))
    if g_top is None:
        return y, None
    b = [ahat[0] * inv_x[0]]
    for m in range(1, k):
        b.append(torch.addcmul(ahat[m] * inv_x[m], a[m - 1], b[m - 1]))
    return y, [bm.div_(ym) for bm, ym in zip(b, y, strict=True)]


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


def _relaxed_values(z: Tensor, top_z: Tensor, top_idx: Tensor, tau: float) -> Tensor:
    """The relaxed k-hot vector of scores ``z`` with sorted top-k ``(top_z, top_idx)``."""
    inv_tau = 1.0 / tau
    u = _bulk(z, top_z, top_idx, inv_tau)
    rest = u.sum(-1, keepdim=True)
    soft_top, _ = _top_vectorised(top_z, inv_tau, rest, None, None)
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
    soft_top, beta = _top_vectorised(top_z, inv_tau, rest, g_top, g_rest)
    assert beta is not None
    # Outside the top k: soft_j (g_j - beta_k) / tau, with soft_j = u_j Y_k.
    out = torch.addcmul(gu, u, beta[..., -1:], value=-1.0).mul_(soft_top[..., -1:] * inv_tau)
    top_grad = (g_top - beta).mul_(soft_top).mul_(inv_tau)
    return out.scatter_(-1, top_idx, top_grad)


def _sorted_topk(z: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k ``(values, indices)`` of ``z`` by descending value, equal values by index.

    An unsorted ``topk`` and two sorts of ``[..., k]`` (indices, then stably by value):
    cheaper than ``topk(sorted=True)`` on CPU, and ``topk`` does not promise an order among
    ties, which the small-group path and :func:`relaxed_topk_reference` rank by index.
    """
    idx = z.topk(k, dim=-1, sorted=False).indices.sort(dim=-1).values
    top_z, order = z.gather(-1, idx).sort(dim=-1, descending=True, stable=True)
    return top_z, idx.gather(-1, order)


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
            top_z, top_idx = _sorted_topk(z, k)
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


def _pairwise_ranks(zr: Tensor) -> Tensor:
    """Descending rank of every candidate, ``[n, G]`` uint8, from the rows of ``zr``
    ``[n, G]``: candidate i outranks j when ``z_i > z_j``, or ``z_i == z_j`` and ``i < j``."""
    n = zr.shape[0]
    ranks = torch.zeros(zr.shape, dtype=torch.uint8, device=zr.device)
    for j in range(n):
        for i in range(j + 1, n):
            beaten = torch.gt(zr[i], zr[j])
            ranks[j].add_(beaten)
            ranks[i].add_(beaten.logical_not_())
    return ranks


def _ranks_of_held(held: Tensor, n: int) -> Tensor:
    """Ranks ``[n, G]`` uint8 of held indices ``[G, k]`` (ranks 0..k-1; k for the rest)."""
    k = held.shape[-1]
    ranks = torch.full((held.shape[0], n), k, dtype=torch.uint8, device=held.device)
    order = torch.arange(k, dtype=torch.uint8, device=held.device).expand_as(held)
    return ranks.scatter_(-1, held, order).t().contiguous()


def _rank_bits(k: int) -> int:
    """Bits per candidate of a packed rank ``min(rank, k)``: 1, 2 or 4 (k < n <= 16)."""
    return 1 if k <= 1 else 2 if k <= 3 else 4


def _pack_ranks(ranks: Tensor, k: int) -> Tensor:
    """``[n, G]`` uint8 ranks as ``min(rank, k)`` packed ``8 // bits`` to a byte,
    ``[ceil(n * bits / 8), G]`` uint8 (the backward tells only ranks below k apart)."""
    n, groups = ranks.shape
    bits = _rank_bits(k)
    per = 8 // bits
    packed = torch.zeros(((n + per - 1) // per, groups), dtype=torch.uint8, device=ranks.device)
    for j in range(n):
        r = ranks[j].clamp(max=k)
        if j % per:
            r.bitwise_left_shift_(bits * (j % per))
        packed[j // per].bitwise_or_(r)
    return packed


def _unpack_ranks(packed: Tensor, n: int, k: int) -> Tensor:
    """The ``[n, G]`` uint8 ``min(rank, k)`` of :func:`_pack_ranks`."""
    bits = _rank_bits(k)
    per = 8 // bits
    ranks = torch.empty((n, packed.shape[1]), dtype=torch.uint8, device=packed.device)
    for j in range(n):
        torch.bitwise_right_shift(packed[j // per], bits * (j % per), out=ranks[j])
        ranks[j].bitwise_and_((1 << bits) - 1)
    return ranks


def _small_pieces(
    zr: Tensor, ranks: Tensor, k: int, inv_tau: float, gr: Tensor | None, held: bool = False
) -> tuple[Tensor, list[Tensor], list[Tensor], list[Tensor] | None, list[Tensor]]:
    """Row-layout pieces of the relaxation of small groups.

    Args:
        zr: ``[n, G]`` scores; ranks: ``[n, G]`` their ranks; gr: ``[n, G]`` incoming
            gradient, contiguous (or ``None`` for the values only).

    Returns ``u = exp(min(z - z_(k), 0) / tau)`` ``[n, G]`` (1 at the top k), the one-hot
    rows ``E_m`` of ranks ``m < k - 1`` (float ``[n, G]``), ``Y`` and ``beta`` of ranks 1..k
    (``[G]`` each; ``beta`` ``None`` without ``gr``) and the gradient at ranks 1..k-1.
    """
    one_hot = [torch.eq(ranks, m, out=torch.empty_like(zr)) for m in range(k)]
    top = [torch.mul(zr, e).sum(0) for e in one_hot]  # z_(1) >= ... >= z_(k), [G] each
    if held:
        # A held draw need not be the top k of the current scores: 1 at the held k, and
        # exp((z - z_(k)) / tau) (possibly > 1; exponent capped at 80) elsewhere.
        outside = torch.ge(ranks, k, out=torch.empty_like(zr))
        u = torch.sub(zr, top[-1]).mul_(inv_tau).clamp_(max=80.0).exp_()
        u.mul_(outside).sub_(outside).add_(1.0)
    else:
        u = torch.sub(zr, top[-1]).clamp_(max=0.0).mul_(inv_tau).exp_()
    # The top k contribute exactly 1 each to sum(u).
    rest = u.sum(0).sub_(float(k)).clamp_(min=0.0)
    g_top: list[Tensor] = []
    g_rest = None
    if gr is not None:
        g_top = [torch.mul(gr, e).sum(0) for e in one_hot]
        g_rest = torch.mul(gr, u).sum(0)
        for g_m in g_top:
            g_rest.sub_(g_m)
    y, beta = _top_small(top, inv_tau, rest, g_top if gr is not None else None, g_rest)
    return u, one_hot[: k - 1], y, beta, g_top[: k - 1]


def _generator_state(device: torch.device, generator: torch.Generator | None) -> Tensor | None:
    """State of the generator the noise is about to be drawn from (``None``: not replayable)."""
    if generator is not None:
        return generator.get_state()
    if device.type == "cpu":
        return torch.default_generator.get_state()
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.default_generators[index].get_state()
    return None


def _replay_scores(logits: Tensor, state: Tensor, noise_scale: float) -> Tensor:
    """The ``[n, G]`` scores of a draw, from its logits and its generator's saved state:
    the same noise, bit for bit, as :func:`gumbel_noise` drew in the forward pass."""
    n = logits.shape[-1]
    gen = torch.Generator(device=logits.device)
    gen.set_state(state)
    dtype = _compute_dtype(logits.dtype)
    noise = gumbel_noise(logits.shape, device=logits.device, dtype=dtype, generator=gen)
    flat = logits.detach().reshape(-1, n)
    zr = torch.empty((n, flat.shape[0]), dtype=dtype, device=flat.device)
    return torch.add(flat.t(), noise.reshape(-1, n).t(), alpha=noise_scale, out=zr)


class _GumbelTopKSmall(torch.autograd.Function):
    """:class:`_GumbelTopK` for groups of at most ``SMALL_GROUP_MAX_N`` candidates.

    Works on the transposed ``[n, G]`` layout, where every operation is a contiguous
    elementwise pass over the groups: the top k by pairwise comparisons (ranks, ties to the
    lower index), and the relaxation as ``soft_j = u_j Y_k + sum_{m < k} E_mj (Y_m - Y_k)``
    with the recursion of :func:`_top_small`. No top-k, sort, scatter or float64.
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
        replay: Tensor | None = None,
    ) -> Tensor:
        shape = logits.shape
        n = shape[-1]
        flat = logits.reshape(-1, n)
        zr = torch.empty((n, flat.shape[0]), dtype=_compute_dtype(logits.dtype), device=flat.device)
        if noise is not None:
            torch.add(flat.t(), noise.reshape(-1, n).t(), alpha=noise_scale, out=zr)
        else:
            zr.copy_(flat.t())
        ranks = _pairwise_ranks(zr) if held is None else _ranks_of_held(held.reshape(-1, k), n)
        ctx.k, ctx.tau, ctx.shape, ctx.held = k, tau, shape, held is not None
        ctx.replay, ctx.noise_scale = replay, noise_scale
        if replay is not None:
            # The noise is drawn again in backward from the generator's saved state: only
            # the logits (a parameter, no copy) and the packed ranks stay for backward
            # (a quarter of a byte per candidate at 2:4).
            ctx.save_for_backward(logits, _pack_ranks(ranks, k))
        else:
            ctx.save_for_backward(zr, _pack_ranks(ranks, k))
        if hard:
            mask = torch.lt(ranks, k).t()
            return mask.to(logits.dtype, memory_format=torch.contiguous_format).reshape(shape)
        u, one_hot, y, _, _ = _small_pieces(zr, ranks, k, 1.0 / tau, None, held is not None)
        soft = u.mul_(y[-1])
        for m, e in enumerate(one_hot):
            soft.addcmul_(e, y[m] - y[-1])
        return soft.t().to(logits.dtype, memory_format=torch.contiguous_format).reshape(shape)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        saved, packed = ctx.saved_tensors
        k, inv_tau, shape = ctx.k, 1.0 / ctx.tau, ctx.shape
        n = shape[-1]
        ranks = _unpack_ranks(packed, n, k)
        zr = saved if ctx.replay is None else _replay_scores(saved, ctx.replay, ctx.noise_scale)
        gr = grad.reshape(-1, n).t().to(zr.dtype, memory_format=torch.contiguous_format, copy=True)
        u, one_hot, y, beta, g_top = _small_pieces(zr, ranks, k, inv_tau, gr, ctx.held)
        assert beta is not None
        # Rank k and the rest: u_j Y_k (g_j - beta_k) / tau; ranks m < k add E_m K_m, where
        # K_m = (Y_m (g_(m) - beta_m) - Y_k (g_(m) - beta_k)) / tau (u_j = 1 there).
        y_k, beta_k = y[-1], beta[-1]
        out_r = gr.sub_(beta_k).mul_(u).mul_(y_k * inv_tau)
        for m, e in enumerate(one_hot):
            k_m = y[m] * (g_top[m] - beta[m]) - y_k * (g_top[m] - beta_k)
            out_r.addcmul_(e, k_m.mul_(inv_tau))
        out = out_r.t().to(grad.dtype, memory_format=torch.contiguous_format)
        return out.reshape(shape), None, None, None, None, None, None, None


def _apply(
    logits: Tensor,
    noise: Tensor | None,
    noise_scale: float,
    k: int,
    tau: float,
    hard: bool,
    held: Tensor | None,
    replay: Tensor | None = None,
) -> Tensor:
    if logits.shape[-1] <= SMALL_GROUP_MAX_N:
        return _GumbelTopKSmall.apply(logits, noise, noise_scale, k, tau, hard, held, replay)
    return _GumbelTopK.apply(logits, noise, noise_scale, k, tau, hard, held)


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
    return _apply(scores, None, 0.0, k, float(tau), False, None)


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
    keep_scores: bool = False,
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
        keep_scores: keep the perturbed float32 scores for the backward pass (4 bytes per
            candidate) instead of drawing the noise again there from the generator's saved
            state. Only hard draws of groups of at most ``SMALL_GROUP_MAX_N`` candidates
            (N:M blocks) redraw; other draws keep their scores either way. The mask and its
            gradient are the same, bit for bit; keeping is faster where noise is slow to
            draw (CPUs), redrawing saves the memory.

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
    noise = replay = None
    if noise_scale > 0:
        small = logits.shape[-1] <= SMALL_GROUP_MAX_N
        if (
            hard
            and small
            and not keep_scores
            and logits.requires_grad
            and not torch.compiler.is_compiling()
        ):
            # Small groups keep no float32 scores for backward: it draws the noise again.
            replay = _generator_state(logits.device, generator)
        noise = gumbel_noise(
            logits.shape,
            device=logits.device,
            dtype=_compute_dtype(logits.dtype),
            generator=generator,
        )
    return _apply(logits, noise, float(noise_scale), k, float(tau), bool(hard), None, replay)


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
    return _apply(logits, noise, float(noise_scale), k, float(tau), True, held)


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
    # The i-th draw takes the i-th largest score; equal scores by index, as the closed
    # form takes them.
    order = scores.detach().sort(dim=-1, descending=True, stable=True).indices
    taken = torch.zeros_like(scores, dtype=torch.bool)
    soft = torch.zeros_like(scores)
    for i in range(k):
        soft = soft + torch.softmax(s.masked_fill(taken, float("-inf")), dim=-1)
        taken = taken.scatter(-1, order[..., i : i + 1], True)
    return soft
