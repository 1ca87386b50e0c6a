"""Mask metrics: inclusion probabilities, confidence and diversity (method.md section 6).

A DPP group with logits ``phi`` (length ``n``) and noise scale ``beta`` keeps ``k``
candidates drawn without replacement from the Plackett-Luce model with weights
``softmax(phi / beta)`` (the Gumbel top-k trick of :func:`dpp.gumbel_topk`). Its
*inclusion probabilities* ``pi`` (``[groups, n]``, rows summing to ``k``) are the
probabilities that each candidate is kept. With ``q = pi / k`` and ``H`` the entropy (nats):

- **confidence** of a group: ``(log n - H(q)) / (log n - log k)``; 1 when the group always
  keeps the same k candidates, 0 when its choice is uniform. A layer's confidence is the
  mean over its groups.
- **diversity** of a layer: ``(H(mean_g q) - log k) / (log n - log k)``; 0 when every group
  keeps the same k candidates, 1 when the groups' choices spread evenly over all n.
- **divergence** of a layer (ours, an extra): ``(H(mean_g q) - mean_g H(q)) / (log n -
  log k)``, the normalised generalised Jensen-Shannon divergence between the groups. It is
  the between-group part of diversity: ``diversity = divergence + (1 - confidence)``, so
  groups that share the same *unconfident* logits have a high diversity (their choices do
  spread over all n) but a divergence of 0.

Conventions: when ``k = n`` confidence is 1 and diversity and divergence are 0. A layer
with a single group (granularity ``"filter"``) has diversity and divergence 0 *by
definition*: there are no other groups to differ from (the formula would give ``1 -
confidence`` there). All values are clamped to ``[0, 1]`` against round-off.

How ``pi`` is obtained (``method="auto"``):

- exact closed forms: ``k = n`` (all ones), ``k = 1`` (``softmax(phi / beta)``),
  ``beta = 0`` (the deterministic top-k, as the sampler does);
- exact enumeration for ``n <= 8`` (:func:`plackett_luce_inclusion`), which covers N:M
  blocks up to ``m = 8``;
- otherwise a Monte Carlo estimate from ``samples`` Gumbel top-k draws made with a local
  ``torch.Generator`` seeded by ``seed``: the global torch RNG is never touched, so calling
  the metrics inside a training loop does not change what the training draws (bit-exact
  resume). Draws are processed in chunks of about 2**21 scores (groups are split too when
  one draw of the layer is larger), so memory stays bounded: a ``512 x 4608`` layer holds
  one ``[1, 455, 4608]`` slice (8 MB) and a few temporaries of that size at a time.

The Monte Carlo estimate is Rao-Blackwellised: each draw adds, for every candidate, the
probability that it is kept *given the other candidates' perturbed scores* (a closed form
once the k-th and (k+1)-th largest scores are known) instead of a 0/1 count. It is unbiased,
stays in ``[0, 1]``, and its variance is at most the counting estimator's
``pi_j (1 - pi_j) / samples``; for uncertain groups it is far smaller, and what remains is
mostly shared by the whole group (the row sum deviates from ``k``), which the metrics remove
by normalising each row (``q = pi / sum(pi)``). On ``100 x 784`` logits with ``k = 78``,
confidence and diversity at ``samples=64`` were within 1e-3 of a 4096-draw reference for
logit scales 0.5 to 20 (about 1e-5 for near-uniform logits, where counting draws would be
biased high by about 0.03 at 64 draws); hence the default of 64.

Cost: ``samples * groups * n`` Gumbel scores, one top-k per group and draw (about 40% of
the time) and a dozen elementwise passes. LeNet-300-100 at ``granularity="weight",
density=0.1`` (784x300 + 300x100 + 100x10, all three Monte Carlo; the first layer holds 88%
of the scores) took 0.38 s at ``samples=64`` and 1.45 s at ``samples=256`` (CPU time,
median of 5 calls, one torch thread, torch 2.13 on the project's 2-core machine while other
jobs kept its load average near 5; wall time 0.4-0.5 s and 1.5-2.0 s; with torch's default
2 threads that oversubscribed machine took 1.7 s and 4.9 s). Time is linear in ``samples``.
A ``512 x 4608`` layer (``k = 461``) took 1.1 s at ``samples=16`` and about 80 MB of extra
peak memory. The exact paths cost a few passes over the logits (enumeration:
``2^n n`` per group, 0.24 s for 29400 groups of n = 8, k = 4). Measured with::

    PYTHONPATH=src python -c "import time, torch, dpp; from dpp.metrics import model_metrics
    torch.set_num_threads(1)
    m = torch.nn.Sequential(torch.nn.Linear(784, 300), torch.nn.ReLU(),
        torch.nn.Linear(300, 100), torch.nn.ReLU(), torch.nn.Linear(100, 10))
    p = dpp.prune(m, granularity='weight', density=0.1); model_metrics(p)
    for s in (64, 256):
        c = time.process_time(); model_metrics(p, samples=s); print(s, time.process_time() - c)"

Example:
    >>> import torch
    >>> from dpp.metrics import layer_metrics
    >>> logits = torch.tensor([[9.0, 9.0, 0.0, 0.0], [0.0, 0.0, 9.0, 9.0]])
    >>> m = layer_metrics(logits, k=2, noise_scale=0.0)  # deterministic top-k
    >>> m["confidence"], m["diversity"], m["estimator"]
    (1.0, 1.0, 'exact')
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor, nn

from .granularity import check_k
from .layers import is_dpp_layer
from .masks import DPPMask, FixedMask, MaskSource
from .pruner import Pruner

__all__ = [
    "divergence",
    "diversity",
    "group_confidence",
    "group_entropy",
    "inclusion_probabilities",
    "layer_metrics",
    "mask_flips",
    "model_metrics",
    "plackett_luce_inclusion",
]

#: ``method="auto"`` enumerates exactly up to this many candidates per group.
EXACT_MAX_N = 8
#: :func:`plackett_luce_inclusion` refuses larger groups (its cost grows as ``2**n * n``).
ENUMERATION_MAX_N = 16
#: Scores held at once (Monte Carlo chunks, enumeration chunks): about 8 MB of float32.
_CHUNK_ELEMENTS = 1 << 21
_METHODS = ("auto", "exact", "monte_carlo")


# ---------------------------------------------------------------------------- validation
def _check_noise_scale(beta: Any) -> float:
    beta = float(beta)
    if not (beta >= 0 and math.isfinite(beta)):
        raise ValueError(f"noise_scale must be finite and >= 0, got {beta}")
    return beta


def _check_samples(samples: Any) -> int:
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive int, got {samples!r}")
    return samples


def _as_groups(t: Tensor, what: str) -> Tensor:
    if t.dim() < 1 or t.numel() == 0:
        raise ValueError(
            f"{what} must have shape [..., n] with n >= 1 and at least one group, "
            f"got {list(t.shape)}"
        )
    return t.reshape(-1, t.shape[-1])


# ---------------------------------------------------------------------------- exact
@functools.lru_cache(maxsize=16)
def _subset_lattice(n: int, k: int) -> tuple[list[tuple[Tensor, Tensor, Tensor]], Tensor]:
    """Transitions between the subsets of ``range(n)`` of sizes ``0..k``.

    Returns ``(levels, bits_k)``: ``levels[m - 1] = (src, j, free)`` for m = 1..k, where
    the subsets of size m are numbered 0.. in increasing bitmask order, subset ``d`` of
    size m is reached from subset ``src[d, t]`` of size m-1 by adding candidate
    ``j[d, t]`` (t = 0..m-1), and ``free[:, s]`` (float64 ``[n, C(n, m-1)]``) marks the
    candidates outside subset s of size m-1. ``bits_k`` is the float64 membership
    ``[C(n, k), n]`` of the size-k subsets.
    """
    masks = torch.arange(1 << n, dtype=torch.int64)
    bits = (masks[:, None] >> torch.arange(n)) & 1
    size = bits.sum(1)
    position = torch.zeros(1 << n, dtype=torch.int64)
    by_size = []
    for m in range(k + 1):
        members = masks[size == m]
        position[members] = torch.arange(members.numel())
        by_size.append(members)
    levels = []
    for m in range(1, k + 1):
        dst = by_size[m]
        j = bits[dst].nonzero()[:, 1].reshape(dst.numel(), m)
        src = position[dst[:, None] ^ (1 << j)]
        free = (1 - bits[by_size[m - 1]]).T.to(torch.float64).contiguous()
        levels.append((src, j, free))
    return levels, bits[by_size[k]].to(torch.float64)


def _lattice_on(n: int, k: int, device: torch.device) -> tuple[list, Tensor]:
    levels, bits_k = _subset_lattice(n, k)
    return [tuple(t.to(device) for t in level) for level in levels], bits_k.to(device)


def _subset_dp_linear(w: Tensor, k: int) -> Tensor:
    """The subset programme in linear space; ``w`` ``[G, n]`` float64 with row maximum 1."""
    levels, bits_k = _lattice_on(w.shape[-1], k, w.device)
    p = torch.ones(w.shape[0], 1, dtype=torch.float64, device=w.device)
    for src, j, free in levels:
        rest = w @ free  # weight left after each subset of the previous size
        # Subsets holding a zero weight have probability 0 (and maybe rest 0): they add 0.
        r = torch.where(rest > 0, p / rest, torch.zeros_like(p))
        p = (r[:, src] * w[:, j]).sum(-1)
    return p @ bits_k


def _subset_dp_log(log_w: Tensor, k: int) -> Tensor:
    """The subset programme in log space, for weights spanning more than float64's range."""
    levels, bits_k = _lattice_on(log_w.shape[-1], k, log_w.device)
    log_p = torch.zeros(log_w.shape[0], 1, dtype=torch.float64, device=log_w.device)
    for src, j, free in levels:
        taken = (free == 0).T[None]  # [1, subsets, n]
        log_rest = torch.logsumexp(log_w[:, None, :].masked_fill(taken, float("-inf")), -1)
        terms = log_p[:, src] + log_w[:, j] - log_rest[:, src]
        # Unreachable subsets (probability 0) may give -inf - -inf = nan: they add 0.
        terms = terms.nan_to_num(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
        log_p = torch.logsumexp(terms, -1)
    return log_p.exp() @ bits_k


#: Below this log-weight (relative to a group's largest) the linear programme could lose a
#: candidate that one of the k draws needs: such groups go to the log-space programme.
_LINEAR_LOG_RANGE = -600.0


def _exact_inclusion_log(log_w: Tensor, k: int) -> Tensor:
    """Exact inclusion probabilities ``[G, n]`` (float64) from log-weights ``[G, n]``.

    Dynamic programme over subsets: ``P(A)``, the probability that the first ``|A|``
    draws are the set ``A`` in any order, obeys
    ``P(A) = sum_{j in A} P(A - j) * w_j / W(not in A - j)``; then
    ``pi_j = sum_{|A| = k, j in A} P(A)``. This sums the probabilities of all ordered
    k-prefixes, grouped by their set, in ``O(2^n n)`` per group. Weights are taken relative
    to each group's largest; a group whose k-th largest is below ``e^-600`` of it (large
    logits over a small noise scale) is computed in log space, so nothing underflows.
    Elsewhere weights below ``e^-745`` become 0, which changes a probability by < 1e-60.
    """
    n = log_w.shape[-1]
    log_w = log_w.to(torch.float64)
    log_w = log_w - log_w.amax(-1, keepdim=True)
    linear = log_w.topk(k, dim=-1).values[:, -1] > _LINEAR_LOG_RANGE
    out = torch.empty_like(log_w)
    widest = max(src.numel() + free.numel() for src, _, free in _subset_lattice(n, k)[0])
    step = max(1, _CHUNK_ELEMENTS // widest)
    for rows, fn in ((linear, None), (~linear, _subset_dp_log)):
        idx = rows.nonzero().squeeze(-1)
        for chunk in idx.split(step):
            lw = log_w[chunk]
            out[chunk] = _subset_dp_linear(lw.exp(), k) if fn is None else fn(lw, k)
    return out


@torch.no_grad()
def plackett_luce_inclusion(weights: Tensor, k: int) -> Tensor:
    """Exact inclusion probabilities of k draws without replacement from Plackett-Luce.

    Draw ``i`` picks candidate ``j`` among those not drawn yet with probability
    ``w_j / sum(remaining w)``. Summed over all ordered k-prefixes (as a dynamic programme
    over subsets, ``O(2^n n)`` time per group, in log space).

    Args:
        weights: ``[..., n]`` non-negative weights (need not be normalised), with at least
            ``k`` positive entries per row; ``n <= 16``.
        k: draws per row, ``1 <= k <= n``.

    Returns:
        ``[..., n]`` probabilities that each candidate is among the k drawn; rows sum to
        ``k``. Same dtype as ``weights`` (float64 for integer weights).

    Example:
        >>> import torch
        >>> from dpp.metrics import plackett_luce_inclusion
        >>> plackett_luce_inclusion(torch.tensor([0.5, 0.25, 0.25]), k=2)
        tensor([0.8333, 0.5833, 0.5833])
    """
    w = _as_groups(weights, "weights")
    n = w.shape[-1]
    k = check_k(k, n)
    if n > ENUMERATION_MAX_N:
        raise ValueError(
            f"exact enumeration costs 2**n * n per group; n = {n} exceeds {ENUMERATION_MAX_N}. "
            "Use inclusion_probabilities(..., method='monte_carlo') instead"
        )
    w = w.to(torch.float64)
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError("weights must be finite and non-negative")
    positive = (w > 0).sum(-1)
    if bool((positive < k).any()):
        raise ValueError(f"every row needs at least k = {k} positive weights")
    out_dtype = weights.dtype if weights.is_floating_point() else torch.float64
    return _exact_inclusion_log(w.log(), k).to(out_dtype).reshape(weights.shape)


# ---------------------------------------------------------------------------- Monte Carlo
def _monte_carlo_block(s_phi: Tensor, k: int, samples: int, generator: torch.Generator) -> Tensor:
    """Sum over ``samples`` draws of the conditional inclusion probabilities, ``[G, n]``."""
    g, n = s_phi.shape
    acc = torch.zeros(g, n, dtype=torch.float64, device=s_phi.device)
    # s_(k) and s_(k+1) are found among the k + 1 largest or the n - k + 1 smallest.
    from_below = k > n - k
    per_chunk = max(1, min(samples, _CHUNK_ELEMENTS // (g * n)))
    buf = torch.empty(per_chunk, g, n, dtype=s_phi.dtype, device=s_phi.device)
    done = 0
    while done < samples:
        s = buf[: min(per_chunk, samples - done)]
        # Gumbel(0, 1) = -log(-log U), as dpp.sampling.gumbel_noise draws it (U = 0 gives a
        # score of -inf, which is harmless: only the k-th and (k+1)-th largest are used).
        s.uniform_(0.0, 1.0, generator=generator).log_().neg_().log_()
        s = torch.sub(s_phi, s, out=s)
        if from_below:
            ends = s.topk(n - k + 1, dim=-1, largest=False, sorted=False).values
            ends = ends.topk(2, dim=-1, largest=True, sorted=True).values
            kth, after = ends[..., :1], ends[..., 1:]
        else:
            ends = s.topk(k + 1, dim=-1, sorted=False).values
            ends = ends.topk(2, dim=-1, largest=False, sorted=True).values
            after, kth = ends[..., :1], ends[..., 1:]
        # The k-th largest of the *other* candidates: s_(k+1) for the top k, else s_(k).
        t = torch.where(s >= kth, after, kth)
        # P(Gumbel > t - s_phi) = 1 - exp(-exp(s_phi - t)) = -expm1(-exp(s_phi - t)).
        t = torch.sub(s_phi, t, out=t).exp_().neg_().expm1_()
        acc -= t.sum(0, dtype=torch.float64)
        done += s.shape[0]
    return acc


def _monte_carlo_inclusion(
    logits: Tensor, k: int, beta: float, samples: int, generator: torch.Generator
) -> Tensor:
    """Rao-Blackwellised Monte Carlo estimate ``[G, n]`` (float64) of the inclusion probabilities.

    Each draw perturbs ``s = logits / beta + Gumbel`` (``1 <= k < n``, ``beta > 0``). Rather
    than counting whether candidate j made the top k, it adds the probability that j makes
    it *given the other candidates' scores*: j is kept iff ``s_j`` beats the k-th largest of
    the others, ``t_j``, which is ``s_(k+1)`` when j is in the top k and ``s_(k)`` otherwise,
    so the term is ``P(Gumbel > t_j - logits_j / beta) = 1 - exp(-exp(logits_j / beta - t_j))``.
    Its mean is exactly ``pi_j``, its value lies in ``[0, 1]`` and its variance is at most
    that of counting, ``pi_j (1 - pi_j) / samples`` (far smaller for uncertain groups).
    Rows sum to ``k`` up to that sampling error.
    """
    n = logits.shape[-1]
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    s_phi = logits.to(dtype) / beta
    rows = max(1, _CHUNK_ELEMENTS // n)
    out = torch.empty(s_phi.shape, dtype=torch.float64, device=s_phi.device)
    for start in range(0, s_phi.shape[0], rows):
        block = s_phi[start : start + rows]
        out[start : start + rows] = _monte_carlo_block(block, k, samples, generator)
    return out.div_(samples)


# ---------------------------------------------------------------------------- sources
def _resolve(
    source: Any, k: int | None, noise_scale: float | None
) -> tuple[str, Tensor, int, float | None]:
    """``(kind, tensor, k, beta)``: kind ``"logits"`` (tensor = logits) or ``"fixed"`` (mask)."""
    if isinstance(source, Tensor):
        if k is None:
            raise ValueError("k is required when the metrics are given a logits tensor")
        logits = _as_groups(source.detach(), "logits")
        if not logits.is_floating_point():
            logits = logits.to(torch.float32)
        beta = 1.0 if noise_scale is None else noise_scale
        return "logits", logits, check_k(k, logits.shape[-1]), _check_noise_scale(beta)
    if isinstance(source, nn.Module) and is_dpp_layer(source):
        mask_source = source.dpp
        if mask_source is None:
            raise ValueError("this DPP layer is not pruned (quantize-only): it has no mask")
    else:
        mask_source = source
    if not isinstance(mask_source, MaskSource):
        raise TypeError(
            "expected a logits tensor, a DPP layer or a DPPMask/FixedMask, "
            f"got {type(source).__name__}"
        )
    if k is not None and k != mask_source.k:
        raise ValueError(f"k={k} disagrees with the layer's own k={mask_source.k}")
    if isinstance(mask_source, DPPMask):
        beta = mask_source.noise_scale if noise_scale is None else noise_scale
        return "logits", mask_source.logits.detach(), mask_source.k, _check_noise_scale(beta)
    if isinstance(mask_source, FixedMask):
        return "fixed", mask_source.mask.detach(), mask_source.k, None
    raise TypeError(
        f"metrics support DPPMask and FixedMask sources, not {type(mask_source).__name__}"
    )


def _inclusion(
    source: Any,
    k: int | None,
    noise_scale: float | None,
    samples: int,
    seed: int,
    method: str,
) -> tuple[Tensor, str, dict[str, Any]]:
    """``(pi, estimator, info)`` with info holding k, noise scale, samples and the logits."""
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    samples = _check_samples(samples)
    kind, t, k, beta = _resolve(source, k, noise_scale)
    n = t.shape[-1]
    info: dict[str, Any] = {"k": k, "noise_scale": beta, "samples": 0, "logits": None}
    if kind == "fixed":
        return (t != 0).to(torch.float32), "fixed", info
    info["logits"] = t
    out_dtype = t.dtype if t.is_floating_point() else torch.float32
    if k == n:
        pi = torch.ones_like(t, dtype=out_dtype)
    elif beta == 0:
        idx = t.topk(k, dim=-1).indices
        pi = torch.zeros_like(t, dtype=out_dtype).scatter_(-1, idx, 1.0)
    elif method != "monte_carlo" and k == 1:
        pi = torch.softmax(t.to(torch.float64) / beta, dim=-1)
    elif method != "monte_carlo" and n <= (EXACT_MAX_N if method == "auto" else ENUMERATION_MAX_N):
        pi = _exact_inclusion_log(torch.log_softmax(t.to(torch.float64) / beta, -1), k)
    elif method == "exact":
        raise ValueError(
            f"no exact method for k={k} of n={n} with noise_scale {beta} (enumeration is "
            f"limited to n <= {ENUMERATION_MAX_N}); use method='auto' or 'monte_carlo'"
        )
    else:
        generator = torch.Generator(device=t.device)
        generator.manual_seed(int(seed))
        pi = _monte_carlo_inclusion(t, k, beta, samples, generator)
        info["samples"] = samples
        return pi.to(out_dtype), "monte_carlo", info
    return pi.to(out_dtype), "exact", info


@torch.no_grad()
def inclusion_probabilities(
    source: Tensor | nn.Module,
    k: int | None = None,
    *,
    noise_scale: float | None = None,
    samples: int = 64,
    seed: int = 0,
    method: str = "auto",
) -> Tensor:
    """Probability that each candidate is kept by one training-mode draw of the mask.

    Args:
        source: a DPP layer (its ``dpp`` a :class:`~dpp.DPPMask` or :class:`~dpp.FixedMask`),
            such a mask source itself, or a logits tensor ``[groups, n]`` (``[..., n]`` is
            flattened to groups).
        k: candidates kept per group; required for a tensor, checked against a layer's.
        noise_scale: ``beta`` of the sampler; default: the layer's current
            ``dpp.noise_scale`` (1.0 for a tensor). 0 gives the deterministic top-k.
        samples: Monte Carlo draws when no exact method applies.
        seed: seed of the local generator of the Monte Carlo draws (global RNG untouched).
        method: ``"auto"`` (exact closed forms, enumeration for ``n <= 8``, else Monte
            Carlo), ``"exact"`` (closed forms or enumeration up to ``n = 16``, else
            ``ValueError``) or ``"monte_carlo"`` (always sample).

    Returns:
        ``[groups, n]`` tensor (the logits' floating dtype, float32 for a fixed mask) with
        values in ``[0, 1]`` and rows summing to ``k`` (exactly, or up to the sampling error
        for Monte Carlo); for a FixedMask, the mask itself.

    Example:
        >>> import torch
        >>> from dpp.metrics import inclusion_probabilities
        >>> pi = inclusion_probabilities(torch.zeros(2, 4), k=3)
        >>> pi
        tensor([[0.7500, 0.7500, 0.7500, 0.7500],
                [0.7500, 0.7500, 0.7500, 0.7500]])
    """
    return _inclusion(source, k, noise_scale, samples, seed, method)[0]


# ---------------------------------------------------------------------------- measures
def _clamp01(x: float) -> float:
    return min(1.0, max(0.0, x))


def _measures(pi: Tensor, k: int) -> tuple[Tensor, float, float]:
    """``(confidence per group [G] float64, diversity, divergence)`` of ``pi`` ``[G, n]``.

    ``q`` is each row divided by its sum: ``pi / k`` for exact ``pi``; for a Monte Carlo
    estimate this also removes the part of the error shared by the whole group.
    """
    p = _as_groups(pi, "pi")
    g, n = p.shape
    k = check_k(k, n)
    if k == n:
        return torch.ones(g, dtype=torch.float64, device=p.device), 0.0, 0.0
    q = p.to(torch.float64, copy=True).clamp_(min=0)
    q /= q.sum(-1, keepdim=True).clamp_(min=torch.finfo(torch.float64).tiny)
    span = math.log(n) - math.log(k)
    h = torch.special.entr(q).sum(-1)
    conf = ((math.log(n) - h) / span).clamp_(0.0, 1.0)
    if g == 1:
        return conf, 0.0, 0.0
    h_mix = float(torch.special.entr(q.mean(0)).sum())
    return conf, _clamp01((h_mix - math.log(k)) / span), _clamp01((h_mix - float(h.mean())) / span)


@torch.no_grad()
def group_entropy(logits: Tensor) -> Tensor:
    """Entropy (nats) of ``softmax(logits)`` per group, as in :meth:`dpp.Pruner.entropy`.

    Args:
        logits: ``[groups, n]`` (or ``[..., n]``).

    Returns:
        ``[groups]`` float64 tensor with values in ``[0, log n]``.

    Example:
        >>> import torch
        >>> from dpp.metrics import group_entropy
        >>> ent = group_entropy(torch.tensor([[0.0, 0.0, 0.0, 0.0], [50.0, 0.0, 0.0, 0.0]]))
        >>> [round(h, 4) for h in ent.tolist()]  # log 4, then (almost) 0
        [1.3863, 0.0]
    """
    log_p = torch.log_softmax(_as_groups(logits.detach(), "logits").to(torch.float64), -1)
    return -(log_p.exp().mul_(log_p)).sum(-1)


@torch.no_grad()
def group_confidence(pi: Tensor, k: int) -> Tensor:
    """Confidence per group: ``(log n - H(pi / k)) / (log n - log k)``, clamped to ``[0, 1]``.

    Args:
        pi: ``[groups, n]`` inclusion probabilities (rows sum to ``k``).
        k: candidates kept per group.

    Returns:
        ``[groups]`` float64 tensor; all ones when ``k = n``.

    Example:
        >>> import torch
        >>> from dpp.metrics import group_confidence
        >>> group_confidence(torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]]), 2)
        tensor([1., 0.], dtype=torch.float64)
    """
    return _measures(pi, k)[0]


@torch.no_grad()
def diversity(pi: Tensor, k: int) -> float:
    """Diversity of a layer: ``(H(mean_g pi_g / k) - log k) / (log n - log k)`` in ``[0, 1]``.

    0 when every group keeps the same k candidates, 1 when the groups' choices spread
    evenly over all n. 0 by definition when ``k = n`` or there is a single group.

    Args:
        pi: ``[groups, n]`` inclusion probabilities.
        k: candidates kept per group.

    Example:
        >>> import torch
        >>> from dpp.metrics import diversity
        >>> round(diversity(torch.eye(3), k=1), 6)  # three groups, three different picks
        1.0
    """
    return _measures(pi, k)[1]


@torch.no_grad()
def divergence(pi: Tensor, k: int) -> float:
    """Between-group part of diversity: ``(H(mean_g q_g) - mean_g H(q_g)) / (log n - log k)``.

    The normalised generalised Jensen-Shannon divergence of the groups' ``q = pi / k``:
    0 when all groups have the same ``q`` (confident or not), 1 when they are confident
    and spread evenly over all n. ``diversity = divergence + 1 - confidence`` (before
    clamping). 0 when ``k = n`` or there is a single group.

    Args:
        pi, k: as in :func:`diversity`.

    Example:
        >>> import torch
        >>> from dpp.metrics import divergence
        >>> divergence(torch.full((3, 4), 0.5), 2)
        0.0
    """
    return _measures(pi, k)[2]


# ---------------------------------------------------------------------------- summaries
@torch.no_grad()
def layer_metrics(
    source: Tensor | nn.Module,
    k: int | None = None,
    *,
    per_group: bool = False,
    noise_scale: float | None = None,
    samples: int = 64,
    seed: int = 0,
    method: str = "auto",
) -> dict[str, Any]:
    """Confidence, diversity and entropy of one layer's mask, as plain JSON-able data.

    Args:
        source: a DPP layer, its :class:`~dpp.DPPMask`/:class:`~dpp.FixedMask`, or logits
            ``[groups, n]``.
        k, noise_scale, samples, seed, method: as in :func:`inclusion_probabilities`.
        per_group: also return the per-group lists ``group_confidence`` and
            ``group_entropy`` (``groups`` floats each).

    Returns:
        A dict with ``confidence`` (mean over groups), ``diversity``, ``divergence``,
        ``entropy`` (mean per-group entropy of ``softmax(logits)`` in nats, ``None`` for a
        fixed mask), ``groups``, ``n``, ``k``, ``noise_scale`` (``None`` for a fixed mask),
        ``estimator`` (``"exact"``, ``"monte_carlo"`` or ``"fixed"``) and ``samples``
        (0 unless Monte Carlo).

    Example:
        >>> import torch
        >>> from dpp.metrics import layer_metrics
        >>> m = layer_metrics(torch.zeros(3, 6), k=2)
        >>> round(m["confidence"], 6), m["diversity"], m["estimator"]
        (0.0, 1.0, 'exact')
    """
    pi, estimator, info = _inclusion(source, k, noise_scale, samples, seed, method)
    k = info["k"]
    conf, div, divg = _measures(pi, k)
    logits = info["logits"]
    ent = None if logits is None else group_entropy(logits)
    out: dict[str, Any] = {
        "confidence": float(conf.mean()),
        "diversity": div,
        "divergence": divg,
        "entropy": None if ent is None else float(ent.mean()),
        "groups": int(pi.shape[0]),
        "n": int(pi.shape[1]),
        "k": int(k),
        "noise_scale": info["noise_scale"],
        "estimator": estimator,
        "samples": int(info["samples"]),
    }
    if per_group:
        out["group_confidence"] = conf.tolist()
        out["group_entropy"] = None if ent is None else ent.tolist()
    return out


def _metric_layers(target: Any) -> dict[str, nn.Module]:
    """The layers with a DPPMask or FixedMask of a Pruner or a model, by name."""
    if isinstance(target, Pruner):
        items = list(target.layers.items())
    elif isinstance(target, nn.Module):
        seen: set[int] = set()
        items = []
        for name, module in target.named_modules():
            if is_dpp_layer(module) and id(module) not in seen:
                seen.add(id(module))
                items.append((name, module))
    else:
        raise TypeError(f"expected a dpp.Pruner or a torch.nn.Module, got {type(target).__name__}")
    return {
        name: layer
        for name, layer in items
        if isinstance(getattr(layer, "dpp", None), (DPPMask, FixedMask))
    }


@torch.no_grad()
def model_metrics(
    target: Any,
    *,
    noise_scale: float | None = None,
    samples: int = 64,
    seed: int = 0,
    method: str = "auto",
    per_group: bool = False,
) -> dict[str, Any]:
    """:func:`layer_metrics` of every masked layer of a pruner or model, plus model totals.

    Layers whose mask is a :class:`~dpp.DPPMask` or :class:`~dpp.FixedMask` are measured
    (a fixed mask has confidence 1); quantize-only layers and other mask sources are left
    out. Every layer uses the same ``seed``, so an entry equals ``layer_metrics`` of that
    layer with the same arguments.

    Model-level aggregation:

    - ``confidence``: mean over *all groups* of all layers (layer confidence weighted by
      its number of groups);
    - ``diversity`` and ``divergence``: unweighted mean over the layers that have more than
      one group (single-group layers, i.e. ``"filter"`` granularity, have no between-group
      spread; they would only add zeros); ``None`` if there is no such layer;
    - ``entropy``: group-weighted mean of the per-group entropy over learned layers
      (``None`` if none);
    - ``groups`` and ``layers``: the counts that went in.

    Args:
        target: a :class:`~dpp.Pruner` (its layers, by its names) or any ``nn.Module``
            (its DPP layers, by ``named_modules`` names).
        noise_scale: override every layer's noise scale (default: each layer's current
            ``dpp.noise_scale``, i.e. the sampler as training uses it; pass 1.0 to measure
            the logits' own Plackett-Luce distribution regardless of the schedule).
        samples, seed, method, per_group: as in :func:`layer_metrics`.

    Returns:
        ``{"layers": {name: layer_metrics dict}, "model": {...}}`` of plain Python values;
        the model's confidence, diversity, divergence and entropy are ``None`` when there
        is no masked layer.

    Example:
        >>> import json, torch, dpp
        >>> from dpp.metrics import model_metrics
        >>> model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(),
        ...                             torch.nn.Linear(8, 4))
        >>> pruner = dpp.prune(model, granularity="weight", density=0.25)
        >>> out = model_metrics(pruner, samples=16)
        >>> sorted(out["layers"]), 0.0 <= out["model"]["confidence"] <= 1.0
        (['0', '2'], True)
        >>> _ = json.dumps(out)
    """
    layers = {
        name: layer_metrics(
            layer,
            noise_scale=noise_scale,
            samples=samples,
            seed=seed,
            method=method,
            per_group=per_group,
        )
        for name, layer in _metric_layers(target).items()
    }
    rows = list(layers.values())
    groups = sum(r["groups"] for r in rows)
    spread = [r for r in rows if r["groups"] > 1]
    learned = [r for r in rows if r["entropy"] is not None]
    learned_groups = sum(r["groups"] for r in learned)
    model = {
        "confidence": sum(r["confidence"] * r["groups"] for r in rows) / groups if rows else None,
        "diversity": sum(r["diversity"] for r in spread) / len(spread) if spread else None,
        "divergence": sum(r["divergence"] for r in spread) / len(spread) if spread else None,
        "entropy": sum(r["entropy"] * r["groups"] for r in learned) / learned_groups
        if learned
        else None,
        "groups": groups,
        "layers": len(rows),
    }
    return {"layers": layers, "model": model}


def mask_flips(before: dict[str, Tensor], after: dict[str, Tensor]) -> dict[str, Any]:
    """Fraction of kept entries that changed between two checks of the deterministic masks.

    With exactly k kept per group, an entry that leaves the kept set is replaced by one that
    joins it, so this is also the fraction of newly kept entries. 0 when the masks have
    settled; it shows how long the learned masks keep moving.

    Args:
        before: ``{layer: bool mask}`` from an earlier :meth:`dpp.Pruner.masks` call.
        after: ``{layer: bool mask}`` now (the same layers and shapes).

    Returns:
        ``{"layers": {name: fraction}, "total": fraction over every kept entry}``.

    Example:
        >>> import torch
        >>> a = {"fc": torch.tensor([[True, True, False, False]])}
        >>> b = {"fc": torch.tensor([[True, False, True, False]])}
        >>> mask_flips(a, b)
        {'layers': {'fc': 0.5}, 'total': 0.5}
    """
    if set(before) != set(after):
        raise ValueError(
            f"mask_flips needs the same layers in both checks; only in one of them: "
            f"{sorted(set(before) ^ set(after))}"
        )
    layers: dict[str, float] = {}
    changed = kept = 0
    for name, old in before.items():
        new = after[name]
        if old.shape != new.shape:
            raise ValueError(
                f"mask_flips: layer {name!r} changed shape ({list(old.shape)} -> {list(new.shape)})"
            )
        n_kept = int(old.sum())
        n_changed = int((old & ~new).sum())
        layers[name] = n_changed / n_kept if n_kept else 0.0
        changed += n_changed
        kept += n_kept
    return {"layers": layers, "total": changed / kept if kept else 0.0}
