"""Tests of dpp.sampling: the Gumbel top-k sampler and the closed-form relaxation."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import dpp
from dpp.sampling import _GumbelTopK, _GumbelTopKSmall, gumbel_noise, relaxed_topk_reference

DRAWS = 200_000
LOGITS = torch.tensor([1.2, 0.3, -0.4, 0.8, -1.5], dtype=torch.float64)


def plackett_luce_inclusion(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Exact P(j among the first k draws without replacement), weights softmax(logits)."""
    w = torch.softmax(logits.double(), -1).tolist()
    n = len(w)
    incl = [0.0] * n
    for order in itertools.permutations(range(n), k):
        p, left = 1.0, 1.0
        for j in order:
            p *= w[j] / left
            left -= w[j]
        for j in order:
            incl[j] += p
    return torch.tensor(incl, dtype=torch.float64)


def inclusion_frequencies(logits: torch.Tensor, k: int, noise_scale: float, seed: int):
    gen = torch.Generator().manual_seed(seed)
    draws = dpp.gumbel_topk(logits.expand(DRAWS, -1), k, noise_scale=noise_scale, generator=gen)
    return draws.mean(0)


def tolerance(p: torch.Tensor, draws: int = DRAWS) -> torch.Tensor:
    """Six standard errors of a frequency over ``draws`` Bernoulli trials (false alarm < 1e-8)."""
    return 6 * torch.sqrt(p * (1 - p) / draws) + 1e-12


# ----------------------------------------------------------------- gumbel_topk distribution
@pytest.mark.parametrize("n", [4, 5])
def test_inclusion_matches_plackett_luce(n):
    """gumbel_topk keeps candidate j with the exact Plackett-Luce inclusion probability."""
    logits = LOGITS[:n]
    exact = plackett_luce_inclusion(logits, 2)
    freq = inclusion_frequencies(logits, 2, 1.0, seed=1)
    assert torch.all((freq - exact).abs() <= tolerance(exact)), (freq, exact)
    # The test has power: the naive guess k * softmax(logits) is far outside the tolerance.
    naive = 2 * torch.softmax(logits, -1)
    assert torch.any((naive - exact).abs() > 3 * tolerance(exact))


@pytest.mark.parametrize("noise_scale", [0.5, 2.0])
def test_noise_scale_samples_tempered_softmax(noise_scale):
    """With noise_scale beta the inclusion probabilities are those of softmax(logits / beta)."""
    exact = plackett_luce_inclusion(LOGITS / noise_scale, 2)
    freq = inclusion_frequencies(LOGITS, 2, noise_scale, seed=2)
    assert torch.all((freq - exact).abs() <= tolerance(exact)), (freq, exact)
    untempered = plackett_luce_inclusion(LOGITS, 2)
    assert torch.any((untempered - exact).abs() > 3 * tolerance(exact))


def test_noise_scale_zero_is_deterministic_topk():
    """noise_scale=0 returns the k-hot top-k of the logits, whatever the generator."""
    logits = torch.randn(50, 12)
    expected = torch.zeros_like(logits).scatter(-1, logits.topk(4, -1).indices, 1.0)
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        out = dpp.gumbel_topk(logits, 4, noise_scale=0.0, generator=gen)
        assert torch.equal(out, expected)


def test_generator_makes_draws_reproducible():
    """The same generator seed gives the same mask; other seeds differ; the global RNG is unused."""
    logits = torch.randn(200, 10)
    state = torch.get_rng_state()
    a = dpp.gumbel_topk(logits, 3, generator=torch.Generator().manual_seed(7))
    b = dpp.gumbel_topk(logits, 3, generator=torch.Generator().manual_seed(7))
    c = dpp.gumbel_topk(logits, 3, generator=torch.Generator().manual_seed(8))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_global_rng_draws_differ():
    """Without a generator, two calls draw different masks (fresh noise every call)."""
    logits = torch.zeros(100, 10)
    assert not torch.equal(dpp.gumbel_topk(logits, 3), dpp.gumbel_topk(logits, 3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("tau", [1e-3, 0.5, 5.0])
def test_hard_values_are_exactly_zero_or_one(dtype, tau):
    """hard=True values are exactly 0 or 1 (even with a graph attached), k ones per row."""
    logits = (torch.randn(64, 17) * 3).to(dtype).requires_grad_()
    mask = dpp.gumbel_topk(logits, 5, tau=tau)
    assert mask.dtype == dtype and mask.shape == logits.shape
    assert bool(((mask == 0) | (mask == 1)).all())
    assert torch.equal(mask.sum(-1), torch.full((64,), 5.0, dtype=dtype))
    # Pruned entries annihilate anything, kept ones pass it through unchanged.
    x = torch.randn(64, 17).to(dtype)
    assert torch.equal((mask * x)[mask == 1], x[mask == 1])
    assert bool(((mask * x)[mask == 0] == 0).all())


def test_leading_dims_draw_independent_rows():
    """Logits [..., n] draw one k-hot mask per row, independently across leading dims."""
    logits = torch.zeros(3, 4, 6, 8)
    mask = dpp.gumbel_topk(logits, 2)
    assert mask.shape == logits.shape
    assert torch.equal(mask.sum(-1), torch.full((3, 4, 6), 2.0))
    rows = mask.reshape(-1, 8)
    assert len({tuple(r.tolist()) for r in rows}) > 1


@pytest.mark.parametrize("noise_scale", [1.0, 0.3])
def test_hard_mask_is_topk_of_perturbed_scores(noise_scale):
    """hard=True keeps the top-k of logits + noise_scale * Gumbel noise from the same generator."""
    logits = torch.randn(30, 9, dtype=torch.float64)
    mask = dpp.gumbel_topk(
        logits, 3, noise_scale=noise_scale, generator=torch.Generator().manual_seed(3)
    )
    g = gumbel_noise(logits.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    z = logits + noise_scale * g
    expected = torch.zeros_like(z).scatter(-1, z.topk(3, -1).indices, 1.0)
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("tau", [0.2, 1.0, 3.0])
def test_soft_output_is_relaxation_of_same_scores(tau):
    """hard=False returns relaxed_topk of the same perturbed scores (same generator seed)."""
    logits = torch.randn(20, 11, dtype=torch.float64)
    soft = dpp.gumbel_topk(
        logits, 4, tau=tau, noise_scale=0.7, hard=False, generator=torch.Generator().manual_seed(5)
    )
    g = gumbel_noise(logits.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    expected = dpp.relaxed_topk(logits + 0.7 * g, 4, tau=tau)
    torch.testing.assert_close(soft, expected, rtol=1e-12, atol=1e-12)
    assert not bool(((soft == 0) | (soft == 1)).all())


@pytest.mark.parametrize("k", [1, 3, 11])
def test_hard_gradient_is_relaxation_gradient(k):
    """The gradient of gumbel_topk(hard=True) is that of relaxed_topk on the same scores."""
    base = torch.randn(6, 11, dtype=torch.float64)
    upstream = torch.randn(6, 11, dtype=torch.float64)
    logits = base.clone().requires_grad_()
    hard = dpp.gumbel_topk(logits, k, tau=0.7, generator=torch.Generator().manual_seed(9))
    (hard * upstream).sum().backward()
    ref = base.clone().requires_grad_()
    g = gumbel_noise(base.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    (dpp.relaxed_topk(ref + g, k, tau=0.7) * upstream).sum().backward()
    torch.testing.assert_close(logits.grad, ref.grad, rtol=1e-10, atol=1e-12)
    if k < 11:
        assert logits.grad.abs().sum() > 0


def test_gumbel_noise_moments():
    """gumbel_noise is standard Gumbel: mean Euler's gamma, variance pi^2/6, always finite."""
    g = gumbel_noise((1_000_000,), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert bool(g.isfinite().all())
    # Standard errors: sqrt(1.645/1e6) = 1.3e-3 (mean), about 3.5e-3 (variance).
    assert abs(g.mean().item() - 0.5772156649) < 8e-3
    assert abs(g.var().item() - math.pi**2 / 6) < 2.1e-2


# ----------------------------------------------------------------- relaxed_topk closed form
def _value_and_grad(fn, scores, k, tau, upstream):
    x = scores.clone().requires_grad_()
    out = fn(x, k, tau)
    (out * upstream).sum().backward()
    return out.detach(), x.grad


@given(
    n=st.integers(1, 100),
    k_frac=st.floats(0.0, 1.0),
    tau=st.floats(0.1, 5.0),
    scale=st.sampled_from([0.1, 1.0, 10.0]),
    rows=st.integers(1, 3),
    seed=st.integers(0, 2**31 - 1),
)
def test_closed_form_matches_literal_loop(n, k_frac, tau, scale, rows, seed):
    """relaxed_topk equals the literal loop of k softmaxes in float64, values and gradients."""
    k = min(n, 1 + int(k_frac * n))
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(rows, n, dtype=torch.float64, generator=gen) * scale
    upstream = torch.randn(rows, n, dtype=torch.float64, generator=gen)
    v, g = _value_and_grad(dpp.relaxed_topk, scores, k, tau, upstream)
    v_ref, g_ref = _value_and_grad(relaxed_topk_reference, scores, k, tau, upstream)
    torch.testing.assert_close(v, v_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g, g_ref, rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("n,k", [(5, 2), (8, 1), (7, 7)])
def test_matches_loop_with_all_k_including_n(n, k):
    """Every k from 1 to n (k = n included) matches the loop, on a [2, 3, n] input at tau 0.1."""
    scores = torch.randn(2, 3, n, dtype=torch.float64)
    upstream = torch.randn(2, 3, n, dtype=torch.float64)
    for kk in range(1, n + 1):
        v, g = _value_and_grad(dpp.relaxed_topk, scores, kk, 0.1, upstream)
        v_ref, g_ref = _value_and_grad(relaxed_topk_reference, scores, kk, 0.1, upstream)
        torch.testing.assert_close(v, v_ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(g, g_ref, rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("n,k,tau", [(6, 1, 1.0), (6, 3, 0.5), (6, 6, 2.0), (9, 4, 0.1)])
def test_gradcheck(n, k, tau):
    """The hand-written backward of relaxed_topk passes torch.autograd.gradcheck."""
    scores = torch.randn(2, n, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: dpp.relaxed_topk(s, k, tau), (scores,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tau", [1e-3, 0.1, 1.0, 10.0])
def test_rows_sum_to_k(dtype, tau):
    """Every row of relaxed_topk sums to k and its values lie in [0, k]."""
    scores = torch.randn(4, 5, 40, dtype=dtype) * 2
    for k in (1, 7, 40):
        soft = dpp.relaxed_topk(scores, k, tau)
        assert soft.dtype == dtype
        # float32 at tau=1e-3: |s| ~ 1e3, so exp(s + log C) carries ~1e-4 relative round-off.
        rtol = 1e-12 if dtype == torch.float64 else 1e-4
        torch.testing.assert_close(
            soft.sum(-1), torch.full((4, 5), float(k), dtype=dtype), rtol=rtol, atol=0
        )
        assert bool((soft >= 0).all()) and bool((soft <= k + 1e-5).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_at_small_tau_and_large_scores(dtype):
    """At tau=1e-3 and scores of magnitude 1e4, values and gradients are finite; value ~ k-hot."""
    scores = (torch.randn(8, 50) * 1e4).to(dtype).requires_grad_()
    soft = dpp.relaxed_topk(scores, 10, tau=1e-3)
    (soft * torch.randn(8, 50, dtype=dtype)).sum().backward()
    assert bool(soft.isfinite().all()) and bool(scores.grad.isfinite().all())
    hard = torch.zeros_like(soft).scatter(-1, scores.detach().topk(10, -1).indices, 1.0)
    torch.testing.assert_close(soft.detach(), hard, rtol=0, atol=1e-4)
    logits = (torch.randn(8, 50) * 1e4).to(dtype).requires_grad_()
    mask = dpp.gumbel_topk(logits, 10, tau=1e-3)
    (mask * torch.randn(8, 50, dtype=dtype)).sum().backward()
    assert bool(logits.grad.isfinite().all())


def test_deterministic():
    """The same input gives bit-identical values and gradients."""
    scores = torch.randn(5, 30)
    upstream = torch.randn(5, 30)
    v1, g1 = _value_and_grad(dpp.relaxed_topk, scores, 6, 0.3, upstream)
    v2, g2 = _value_and_grad(dpp.relaxed_topk, scores, 6, 0.3, upstream)
    assert torch.equal(v1, v2) and torch.equal(g1, g2)


def test_no_noise_added():
    """relaxed_topk treats its scores as already perturbed: the global RNG is not consumed."""
    state = torch.get_rng_state()
    dpp.relaxed_topk(torch.randn(3, 8), 2)
    state_after_randn = torch.get_rng_state()
    torch.set_rng_state(state)
    torch.randn(3, 8)
    assert torch.equal(torch.get_rng_state(), state_after_randn)


# ----------------------------------------------------------------- argument errors
@pytest.mark.parametrize("fn", [dpp.gumbel_topk, dpp.relaxed_topk])
def test_k_out_of_range(fn):
    """k outside 1..n raises ValueError stating the valid range."""
    x = torch.randn(2, 6)
    for k in (0, -1, 7):
        with pytest.raises(ValueError, match=r"1 <= k <= n = 6"):
            fn(x, k)


@pytest.mark.parametrize("fn", [dpp.gumbel_topk, dpp.relaxed_topk])
def test_k_not_int(fn):
    """A non-int k (float or bool) raises TypeError."""
    for k in (2.0, True):
        with pytest.raises(TypeError, match="k must be an int"):
            fn(torch.randn(2, 6), k)


@pytest.mark.parametrize("fn", [dpp.gumbel_topk, dpp.relaxed_topk])
def test_tau_not_positive(fn):
    """tau <= 0 raises ValueError saying it must be > 0."""
    for tau in (0.0, -1.0):
        with pytest.raises(ValueError, match="tau must be > 0"):
            fn(torch.randn(2, 6), 2, tau=tau)


def test_negative_noise_scale():
    """noise_scale < 0 raises ValueError saying it must be >= 0."""
    with pytest.raises(ValueError, match="noise_scale must be >= 0"):
        dpp.gumbel_topk(torch.randn(2, 6), 2, noise_scale=-0.1)


# ----------------------------------------------------------------- small groups (n <= 16)
def _paths_value_and_grad(scores, k, tau, upstream, hard):
    """Value and gradient of the small-group and the vectorised Function on the same scores."""
    out = []
    for fn in (_GumbelTopKSmall, _GumbelTopK):
        x = scores.clone().requires_grad_()
        y = fn.apply(x, None, 0.0, k, tau, hard, None)
        (y * upstream).sum().backward()
        out.append((y.detach(), x.grad))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [2, 3, 4, 8, 16])
def test_small_path_matches_vectorised_and_loop(dtype, n):
    """The small-group path equals the vectorised path and the literal loop, every k."""
    gen = torch.Generator().manual_seed(n)
    scores = (torch.randn(64, n, generator=gen, dtype=torch.float64) * 2).to(dtype)
    upstream = torch.randn(64, n, generator=gen, dtype=torch.float64).to(dtype)
    # float32: round-off relative to the largest entry (gradients scale with 1 / tau).
    eps = 1e-12 if dtype == torch.float64 else 2e-6
    for k in range(1, n + 1):
        for tau in (0.1, 1.0, 3.0):
            (v_s, g_s), (v_v, g_v) = _paths_value_and_grad(scores, k, tau, upstream, False)
            v_r, g_r = _value_and_grad(
                relaxed_topk_reference, scores.double(), k, tau, upstream.double()
            )
            for a, b, ref in ((v_s, v_v, v_r), (g_s, g_v, g_r)):
                tol = {"rtol": 0, "atol": eps * float(1 + ref.abs().max())}
                torch.testing.assert_close(a, b, **tol)
                torch.testing.assert_close(a.double(), ref, **tol)


@pytest.mark.parametrize("n,k", [(4, 2), (4, 1), (8, 3), (16, 8), (20, 5)])
def test_ties_rank_by_index_in_both_paths(n, k):
    """With tied scores both paths rank ties by index, as the loop does; values and gradients.

    The vectorised path leaves the choice among candidates tied *at* the k-th score to
    ``torch.topk``; rows where such a tie straddles the boundary are compared for the small
    path only."""
    gen = torch.Generator().manual_seed(7)
    scores = torch.randint(0, 3, (200, n), generator=gen).double()
    upstream = torch.randn(200, n, generator=gen, dtype=torch.float64)
    ordered = scores.sort(-1, descending=True).values
    assert bool((ordered[:, : k + 1].diff(dim=-1) == 0).any())  # ties in the top k + 1
    (v_s, g_s), (v_v, g_v) = _paths_value_and_grad(scores, k, 0.5, upstream, False)
    v_r, g_r = _value_and_grad(relaxed_topk_reference, scores, k, 0.5, upstream)
    torch.testing.assert_close(v_s, v_r, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_s, g_r, rtol=1e-8, atol=1e-11)
    clear = ordered[:, k - 1] != ordered[:, k] if k < n else torch.ones(200, dtype=torch.bool)
    assert int(clear.sum()) > 20
    torch.testing.assert_close(v_v[clear], v_r[clear], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_v[clear], g_r[clear], rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("n,k", [(4, 2), (16, 5)])
def test_small_path_hard_mask_keeps_lowest_index_among_ties(n, k):
    """The small path's k-hot mask is the top k, ties at the boundary going to the lower index."""
    scores = torch.randint(0, 3, (300, n), generator=torch.Generator().manual_seed(2)).float()
    mask = _GumbelTopKSmall.apply(scores, None, 0.0, k, 1.0, True, None)
    first = scores.sort(dim=-1, descending=True, stable=True).indices[..., :k]
    assert torch.equal(mask, torch.zeros_like(scores).scatter(-1, first, 1.0))
    vec = _GumbelTopK.apply(scores, None, 0.0, k, 1.0, True, None)  # a valid top-k set too
    assert torch.equal(vec.sum(-1), torch.full((300,), float(k)))
    kth = scores.sort(dim=-1, descending=True).values[..., k - 1 : k]
    assert bool(((vec == 1) <= (scores >= kth)).all())


@pytest.mark.parametrize("n,k", [(4, 2), (16, 8), (16, 16), (40, 16)])
def test_stable_at_extreme_spreads(n, k):
    """Spreads of 1e7 (in units of tau), every top-k gap huge: finite, equal to the loop."""
    gen = torch.Generator().manual_seed(n)
    # Top scores far apart (gaps >> 40) and a moderate bulk: both frames are exercised.
    scores = torch.randn(16, n, generator=gen, dtype=torch.float64) * 1e4
    upstream = torch.randn(16, n, generator=gen, dtype=torch.float64)
    for tau in (1e-3, 1.0):
        v, g = _value_and_grad(dpp.relaxed_topk, scores, k, tau, upstream)
        v_r, g_r = _value_and_grad(relaxed_topk_reference, scores, k, tau, upstream)
        assert bool(v.isfinite().all()) and bool(g.isfinite().all())
        torch.testing.assert_close(v, v_r, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(g, g_r, rtol=1e-7, atol=1e-10)


def test_beyond_the_spread_cap_stays_finite_and_sums_to_k():
    """More than 15 top-k gaps wider than 40 (the documented cap): finite, rows sum to k."""
    scores = (torch.arange(40, dtype=torch.float64) * 100.0).expand(3, -1).requires_grad_()
    soft = dpp.relaxed_topk(scores, 30, tau=1.0)
    (soft * torch.randn(3, 40, dtype=torch.float64)).sum().backward()
    assert bool(soft.isfinite().all()) and bool(scores.grad.isfinite().all())
    torch.testing.assert_close(soft.sum(-1), torch.full((3,), 30.0, dtype=torch.float64))


def test_float32_small_path_at_extreme_spread():
    """float32 2:4 groups at tau 1e-3 and scores 1e3 (no float64 anywhere): finite, ~k-hot."""
    scores = (torch.randn(1000, 4) * 1e3).requires_grad_()
    soft = dpp.relaxed_topk(scores, 2, tau=1e-3)
    (soft * torch.randn(1000, 4)).sum().backward()
    assert bool(soft.isfinite().all()) and bool(scores.grad.isfinite().all())
    hard = torch.zeros_like(soft).scatter(-1, scores.detach().topk(2, -1).indices, 1.0)
    torch.testing.assert_close(soft.detach(), hard, rtol=0, atol=1e-4)


@pytest.mark.parametrize("n,k", [(20, 2), (6, 3)])
def test_inclusion_matches_plackett_luce_both_paths(n, k):
    """The vectorised path (n > 16) and the small path sample the exact PL inclusion too."""
    logits = torch.linspace(-1.5, 1.2, n, dtype=torch.float64)
    exact = plackett_luce_inclusion(logits, k)
    freq = inclusion_frequencies(logits, k, 1.0, seed=4)
    assert torch.all((freq - exact).abs() <= tolerance(exact)), (freq, exact)
