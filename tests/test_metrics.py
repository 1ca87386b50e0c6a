"""Tests for dpp.metrics: inclusion probabilities, confidence, diversity, model summaries."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dpp
from dpp import metrics as M
from dpp.metrics import (
    divergence,
    diversity,
    group_confidence,
    group_entropy,
    inclusion_probabilities,
    layer_metrics,
    model_metrics,
    plackett_luce_inclusion,
)


def brute_force_inclusion(weights: list[float], k: int) -> list[float]:
    """Plackett-Luce inclusion by summing every ordered k-prefix (pure Python, float64)."""
    n = len(weights)
    pi = [0.0] * n
    for prefix in itertools.permutations(range(n), k):
        p, left = 1.0, sum(weights)
        for j in prefix:
            p *= weights[j] / left
            left -= weights[j]
        for j in prefix:
            pi[j] += p
    return pi


def confident_logits(picks: list[list[int]], n: int, margin: float = 50.0) -> torch.Tensor:
    """Logits ``[groups, n]``: ``margin`` on each group's picks, 0 elsewhere."""
    logits = torch.zeros(len(picks), n)
    for g, cols in enumerate(picks):
        logits[g, cols] = margin
    return logits


# ---------------------------------------------------------------------------- exact


def test_enumeration_matches_brute_force_prefixes():
    """plackett_luce_inclusion equals the sum over all ordered k-prefixes, rows sum to k."""
    gen = torch.Generator().manual_seed(3)
    for n in range(1, 8):
        for k in range(1, n + 1):
            w = torch.rand(2, n, generator=gen, dtype=torch.float64) + 0.05
            pi = plackett_luce_inclusion(w, k)
            expected = torch.tensor(
                [brute_force_inclusion(row.tolist(), k) for row in w], dtype=torch.float64
            )
            torch.testing.assert_close(pi, expected, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(pi.sum(-1), torch.full((2,), float(k), dtype=torch.float64))


def test_enumeration_handles_zero_and_underflowing_weights():
    """Zero weights are never drawn unless forced; tiny log-weights stay finite and exact."""
    pi = plackett_luce_inclusion(torch.tensor([1.0, 0.0, 1.0, 1.0]), 3)
    torch.testing.assert_close(pi, torch.tensor([1.0, 0.0, 1.0, 1.0]))
    # Logits 0, -10, -20, -30 at noise scale 0.01: weights underflow float64 (e^-3000).
    phi = torch.tensor([[0.0, -10.0, -20.0, -30.0]])
    pi = inclusion_probabilities(phi, 2, noise_scale=0.01)
    assert torch.isfinite(pi).all()
    torch.testing.assert_close(pi, torch.tensor([[1.0, 1.0, 0.0, 0.0]]))


def test_log_space_programme_matches_brute_force(monkeypatch):
    """The log-space subset programme (used for huge logit ranges) is exact too."""
    monkeypatch.setattr(M, "_LINEAR_LOG_RANGE", 1.0)  # every group goes to log space
    w = torch.rand(3, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64) + 0.01
    for k in (1, 2, 4, 6):
        expected = torch.tensor(
            [brute_force_inclusion(row.tolist(), k) for row in w], dtype=torch.float64
        )
        torch.testing.assert_close(plackett_luce_inclusion(w, k), expected)


def test_enumeration_argument_checks():
    """Bad k, negative weights, too few positive weights and large n raise ValueError."""
    with pytest.raises(ValueError):
        plackett_luce_inclusion(torch.ones(4), 5)
    with pytest.raises(ValueError):
        plackett_luce_inclusion(torch.tensor([1.0, -1.0, 1.0]), 1)
    with pytest.raises(ValueError):
        plackett_luce_inclusion(torch.tensor([1.0, 0.0, 0.0]), 2)
    with pytest.raises(ValueError):
        plackett_luce_inclusion(torch.ones(M.ENUMERATION_MAX_N + 1), 2)
    with pytest.raises(TypeError):
        plackett_luce_inclusion(torch.ones(4), 2.0)  # type: ignore[arg-type]


def test_k_equals_n_edge_case():
    """k = n: every candidate kept with probability 1, confidence 1, diversity 0."""
    logits = torch.randn(3, 10)
    pi = inclusion_probabilities(logits, 10)
    assert torch.equal(pi, torch.ones(3, 10))
    m = layer_metrics(logits, 10)
    assert (m["confidence"], m["diversity"], m["divergence"]) == (1.0, 0.0, 0.0)
    assert m["estimator"] == "exact"


def test_k_one_is_exactly_softmax():
    """k = 1: inclusion is softmax(logits / beta), exactly (auto) and by enumeration."""
    logits = torch.randn(5, 30)
    for beta in (0.3, 1.0, 2.5):
        pi = inclusion_probabilities(logits, 1, noise_scale=beta)
        torch.testing.assert_close(pi, torch.softmax(logits / beta, -1))
    small = torch.randn(4, 6, dtype=torch.float64)
    torch.testing.assert_close(
        plackett_luce_inclusion(torch.softmax(small, -1), 1), torch.softmax(small, -1)
    )


def test_zero_noise_is_deterministic_top_k():
    """noise_scale = 0 gives the deterministic top-k mask and confidence 1."""
    logits = torch.randn(4, 40)
    pi = inclusion_probabilities(logits, 7, noise_scale=0.0)
    assert torch.equal(pi, dpp.masks.topk_mask(logits, 7))
    assert layer_metrics(logits, 7, noise_scale=0.0)["confidence"] == 1.0


# ---------------------------------------------------------------------------- Monte Carlo


@pytest.mark.parametrize(("n", "k", "beta"), [(6, 2, 1.0), (7, 5, 0.5), (8, 3, 2.0), (8, 1, 1.0)])
def test_monte_carlo_matches_exact_enumeration(n, k, beta):
    """Monte Carlo inclusion is within 5 sigma (sigma = sqrt(pi(1-pi)/S)) of the exact one.

    The estimator is Rao-Blackwellised, so its variance is at most the counting
    estimator's pi(1-pi)/S; 5 sigma over ~30 entries fails with probability ~1e-5 per seed
    (and the seed is fixed). 1e-4 absorbs float32 round-off.
    """
    samples = 4096
    logits = torch.randn(4, n, generator=torch.Generator().manual_seed(n * 10 + k)) * 2
    exact = inclusion_probabilities(logits, k, noise_scale=beta, method="exact").double()
    mc = inclusion_probabilities(
        logits, k, noise_scale=beta, method="monte_carlo", samples=samples, seed=1
    ).double()
    sigma = (exact * (1 - exact) / samples).sqrt()
    assert ((mc - exact).abs() <= 5 * sigma + 1e-4).all()
    assert ((mc >= 0) & (mc <= 1)).all()
    assert torch.allclose(mc.sum(-1), torch.full((4,), float(k), dtype=torch.float64), atol=0.05)


def test_monte_carlo_chunking_splits_draws_and_groups(monkeypatch):
    """Tiny chunks (one draw, two groups at a time) still give the exact k = 1 answer."""
    monkeypatch.setattr(M, "_CHUNK_ELEMENTS", 40)  # n = 20: 2 groups of 1 draw per chunk
    logits = torch.randn(5, 20, generator=torch.Generator().manual_seed(0))
    samples = 512
    mc = inclusion_probabilities(logits, 1, method="monte_carlo", samples=samples).double()
    exact = torch.softmax(logits.double(), -1)
    assert ((mc - exact).abs() <= 5 * (exact * (1 - exact) / samples).sqrt() + 1e-4).all()


def test_seeded_monte_carlo_is_reproducible_and_leaves_global_rng_alone():
    """Same seed, same estimate; other seed, other estimate; the global RNG is untouched."""
    logits = torch.randn(6, 50)
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    a = inclusion_probabilities(logits, 10, samples=32, seed=7)
    b = inclusion_probabilities(logits, 10, samples=32, seed=7)
    c = inclusion_probabilities(logits, 10, samples=32, seed=8)
    layer_metrics(logits, 10, samples=32)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    after = torch.rand(3)
    torch.manual_seed(1234)
    assert torch.equal(after, torch.rand(3))


# ---------------------------------------------------------------------------- measures


def test_confidence_is_one_for_huge_margin():
    """Logits with a huge margin on k candidates give confidence 1 (exact and Monte Carlo)."""
    mc = layer_metrics(confident_logits([[0, 3, 5], [1, 2, 9], [4, 7, 8]], n=12), 3)
    assert mc["estimator"] == "monte_carlo"
    assert mc["confidence"] > 0.999
    exact = layer_metrics(confident_logits([[0, 3], [1, 2]], n=6), 2)
    assert exact["estimator"] == "exact"
    assert exact["confidence"] == pytest.approx(1.0, abs=1e-9)


def test_confidence_is_zero_for_equal_logits():
    """Equal logits (uniform choice) give confidence 0 (about 0 by Monte Carlo)."""
    assert layer_metrics(torch.zeros(4, 6), 2)["confidence"] == pytest.approx(0.0, abs=1e-9)
    mc = layer_metrics(torch.zeros(4, 50), 10)
    assert mc["estimator"] == "monte_carlo"
    assert mc["confidence"] < 1e-3
    assert group_confidence(torch.full((2, 4), 0.5), 2).tolist() == [0.0, 0.0]


def test_diversity_is_zero_when_groups_share_confident_logits():
    """Groups that confidently keep the same k candidates have diversity 0 and divergence 0."""
    m = layer_metrics(confident_logits([[1, 4, 6]] * 5, n=12), 3)
    assert m["diversity"] < 1e-3
    assert m["divergence"] < 1e-3


def test_diversity_near_one_for_disjoint_picks_spread_over_all_n():
    """n = 12, k = 3: four groups confidently picking different triples give diversity ~1."""
    picks = [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    m = layer_metrics(confident_logits(picks, n=12), 3)
    assert m["diversity"] > 0.999
    assert m["divergence"] > 0.999
    assert m["confidence"] > 0.999


def test_divergence_ignores_shared_uncertainty():
    """Identical uncertain groups: divergence 0, diversity = 1 - confidence (method.md formula)."""
    logits = torch.randn(1, 7).expand(5, 7)
    m = layer_metrics(logits, 3)
    assert m["divergence"] == pytest.approx(0.0, abs=1e-9)
    assert m["diversity"] == pytest.approx(1.0 - m["confidence"], abs=1e-9)


def test_single_group_has_zero_diversity_by_definition():
    """A one-group layer (filter granularity) has diversity and divergence 0 by convention."""
    m = layer_metrics(torch.randn(1, 16), 4)
    assert (m["diversity"], m["divergence"]) == (0.0, 0.0)
    assert 0.0 <= m["confidence"] <= 1.0


def test_group_entropy_matches_pruner_entropy():
    """group_entropy is the per-group entropy of softmax(logits) in nats, as Pruner.entropy."""
    logits = torch.randn(3, 9)
    ent = group_entropy(logits)
    assert ent.shape == (3,)
    expected = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
    torch.testing.assert_close(ent, expected.double())
    assert group_entropy(torch.zeros(2, 8)).tolist() == pytest.approx([math.log(8)] * 2)


@settings(max_examples=60, deadline=None)
@given(
    groups=st.integers(1, 5),
    n=st.integers(1, 14),
    k_frac=st.floats(0.0, 1.0),
    scale=st.sampled_from([0.0, 0.1, 1.0, 5.0, 100.0]),
    beta=st.sampled_from([0.0, 0.05, 1.0, 3.0]),
    seed=st.integers(0, 2**16),
)
def test_metrics_stay_in_unit_interval(groups, n, k_frac, scale, beta, seed):
    """Inclusion in [0, 1] with rows summing to ~k; confidence, diversity, divergence in [0, 1]."""
    k = max(1, min(n, round(k_frac * n)))
    logits = torch.randn(groups, n, generator=torch.Generator().manual_seed(seed)) * scale
    samples = 16
    pi = inclusion_probabilities(logits, k, noise_scale=beta, samples=samples)
    assert ((pi >= 0) & (pi <= 1)).all()
    # Each entry's std is at most sqrt(pi_j (1 - pi_j) / S), so the row sum's is at most
    # sum_j sqrt(pi_j / S) <= sqrt(n k / S); 5 of those is a loose but honest bound.
    assert ((pi.sum(-1) - k).abs() <= 5 * math.sqrt(n * k / samples) + 1e-4).all()
    m = layer_metrics(logits, k, noise_scale=beta, samples=samples, per_group=True)
    for key in ("confidence", "diversity", "divergence"):
        assert 0.0 <= m[key] <= 1.0
    assert all(0.0 <= c <= 1.0 for c in m["group_confidence"])
    assert 0.0 <= m["entropy"] <= math.log(n) + 1e-9
    if groups > 1 and k < n:
        # diversity = divergence + 1 - confidence, up to the clamping.
        assert m["diversity"] == pytest.approx(
            min(1.0, max(0.0, m["divergence"] + 1.0 - m["confidence"])), abs=1e-6
        )
    assert 0.0 <= diversity(pi, k) <= 1.0 and 0.0 <= divergence(pi, k) <= 1.0


# ---------------------------------------------------------------------------- layers, models


def _pruned_mlp() -> tuple[torch.nn.Module, dpp.Pruner]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(24, 16),
        torch.nn.ReLU(),
        torch.nn.Linear(16, 12),
        torch.nn.ReLU(),
        torch.nn.Linear(12, 8),
        torch.nn.ReLU(),
        torch.nn.Linear(8, 4),
    )
    pruner = dpp.prune(
        model,
        granularity="weight",
        density=0.25,
        overrides={
            "2": {"granularity": "block", "block_size": 4, "k": 2},
            "4": {"granularity": "filter", "density": 0.5},
            "6": {"prune": False, "weight_bits": 8},
        },
    )
    return model, pruner


def test_model_metrics_json_for_every_pruned_layer():
    """model_metrics gives JSON-serialisable data for every pruned layer, aggregated by groups."""
    model, pruner = _pruned_mlp()
    out = model_metrics(pruner, samples=32)
    assert json.loads(json.dumps(out)) == out
    assert sorted(out["layers"]) == ["0", "2", "4"]  # "6" is quantize-only
    assert out["layers"]["2"]["estimator"] == "exact"  # 2:4 blocks are enumerated
    assert out["layers"]["0"]["estimator"] == "monte_carlo"
    assert out["layers"]["4"]["groups"] == 1 and out["layers"]["4"]["diversity"] == 0.0
    for row in out["layers"].values():
        for key in ("confidence", "diversity", "divergence"):
            assert 0.0 <= row[key] <= 1.0
    rows = out["layers"].values()
    groups = sum(r["groups"] for r in rows)
    assert out["model"]["groups"] == groups and out["model"]["layers"] == 3
    assert out["model"]["confidence"] == pytest.approx(
        sum(r["confidence"] * r["groups"] for r in rows) / groups
    )
    multi = [r for r in rows if r["groups"] > 1]
    assert out["model"]["diversity"] == pytest.approx(
        sum(r["diversity"] for r in multi) / len(multi)
    )
    # A model gives the same as its pruner; an entry equals layer_metrics with the same seed.
    assert model_metrics(model, samples=32) == out
    assert layer_metrics(pruner.layers["0"], samples=32) == out["layers"]["0"]


def test_layer_sources_and_noise_scale_from_the_layer():
    """Layer, DPPMask and logits agree; the layer's noise scale is the default; no gradients."""
    _, pruner = _pruned_mlp()
    layer = pruner.layers["0"]
    pi = inclusion_probabilities(layer, samples=16)
    assert pi.shape == (16, 24) and not pi.requires_grad
    assert torch.equal(pi, inclusion_probabilities(layer.dpp, samples=16))
    beta = layer.dpp.noise_scale
    assert beta == dpp.DPPConfig().noise_scale.value(0)
    from_logits = inclusion_probabilities(layer.dpp.logits, 6, noise_scale=beta, samples=16)
    assert torch.equal(pi, from_logits)
    assert not torch.equal(pi, inclusion_probabilities(layer.dpp.logits, 6, samples=16))
    layer.dpp.noise_scale = 0.0
    assert layer_metrics(layer)["confidence"] == 1.0
    assert layer_metrics(layer, noise_scale=1.0)["confidence"] < 1.0
    with pytest.raises(ValueError):
        layer_metrics(layer, k=5)
    with pytest.raises(ValueError):
        layer_metrics(pruner.layers["6"])  # quantize-only
    with pytest.raises(ValueError):
        layer_metrics(torch.zeros(2, 5))  # k missing
    with pytest.raises(ValueError):
        layer_metrics(torch.zeros(2, 20), 3, method="exact")  # n > 16: no exact method
    with pytest.raises(ValueError):
        layer_metrics(torch.zeros(2, 5), 2, method="sampled")


def test_fixed_mask_layer_has_confidence_one():
    """A FixedMask layer is measured from its mask: confidence 1, estimator 'fixed'."""
    model, pruner = _pruned_mlp()
    layer = pruner.layers["0"]
    mask = torch.zeros(16, 24)
    mask[:, :6] = 1.0
    layer.dpp = dpp.FixedMask(layer.dpp_layout, mask)
    m = model_metrics(model, samples=16, per_group=True)["layers"]["0"]
    assert m["estimator"] == "fixed" and m["confidence"] == 1.0
    assert m["diversity"] == pytest.approx(0.0, abs=1e-9)  # every row keeps the same six
    assert m["entropy"] is None and m["group_entropy"] is None
    assert m["group_confidence"] == [1.0] * 16


def test_model_without_masked_layers():
    """A model without masked layers gives no layers and None model values."""
    out = model_metrics(torch.nn.Linear(3, 2))
    assert out["layers"] == {}
    assert out["model"]["confidence"] is None and out["model"]["diversity"] is None
    with pytest.raises(TypeError):
        model_metrics(object())
