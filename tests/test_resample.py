"""Tests of held masks: DPPConfig.resample_every (a draw held for M pruner steps)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dpp


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 12), nn.ReLU(), nn.Linear(12, 4))


def _train_masks(every: int, steps: int, **prune_kwargs) -> tuple[list[torch.Tensor], nn.Module]:
    model = _model()
    pruner = dpp.prune(model, resample_every=every, **prune_kwargs)
    opt = torch.optim.Adam(pruner.param_groups(lr=1e-2, logit_lr=0.1))
    masks = []
    for _ in range(steps):
        masks.append(model[0].dpp_group_mask().detach().clone())
        loss = model(torch.randn(8, 24)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        pruner.step()
    return masks, model


@pytest.mark.parametrize(
    "kwargs", [{"density": 0.25}, {"granularity": "block", "block_size": 4, "k": 2}]
)
def test_mask_held_for_m_steps_then_redrawn(kwargs):
    """With resample_every=3 the mask is the same within steps 0-2, 3-5, ... and changes across."""
    masks, _ = _train_masks(3, 9, **kwargs)
    for start in (0, 3, 6):
        for i in (1, 2):
            assert torch.equal(masks[start + i], masks[start])
    assert not torch.equal(masks[0], masks[3]) or not torch.equal(masks[3], masks[6])


def test_default_draws_every_forward_call():
    """resample_every=1 (the default): two forward calls in one step draw different masks."""
    model = _model()
    dpp.prune(model, granularity="block", block_size=4, k=2)
    assert dpp.DPPConfig().resample_every == 1
    a, b = model[0].dpp_group_mask(), model[0].dpp_group_mask()
    assert not torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs", [{"density": 0.25}, {"granularity": "block", "block_size": 4, "k": 2}]
)
def test_held_gradient_is_relaxation_of_held_draw_at_current_logits(kwargs):
    """On a held step the logits' gradient is the relaxation's gradient of the held noise and
    kept set (in the drawn order), evaluated at the current logits."""
    model = _model()
    pruner = dpp.prune(model, resample_every=4, **kwargs)
    source = model[0].dpp
    source.sample(model[0].weight)  # the draw of step 0
    _, _, noise, held = source._held
    with torch.no_grad():
        source.logits.add_(0.3 * torch.randn_like(source.logits))  # an optimizer step
    pruner.step()  # step 1: same draw
    upstream = torch.randn_like(source.logits)
    (source.sample(model[0].weight) * upstream).sum().backward()
    z = (source.logits.detach() + pruner.noise_scale * noise).requires_grad_()
    # Literal reference: k successive softmaxes of z / tau, draw i taking held[:, i].
    s = z / pruner.temperature
    taken = torch.zeros_like(z, dtype=torch.bool)
    soft = torch.zeros_like(z)
    for i in range(held.shape[-1]):
        soft = soft + torch.softmax(s.masked_fill(taken, float("-inf")), dim=-1)
        taken = taken.scatter(-1, held[:, i : i + 1], True)
    (soft * upstream).sum().backward()
    torch.testing.assert_close(source.logits.grad, z.grad, rtol=1e-5, atol=1e-6)


def test_new_k_redraws():
    """A change of k (sparsity ramp) ends the held draw at once: the mask has the new k."""
    model = _model()
    ramp = {"kind": "linear", "start": 0.0, "end": 1.0, "steps": 4}
    pruner = dpp.prune(model, density=0.25, resample_every=100, sparsity_ramp=ramp)
    first = model[0].dpp_group_mask()
    pruner.step(2)
    second = model[0].dpp_group_mask()
    assert first.sum(-1)[0] > second.sum(-1)[0] == model[0].dpp.k


def test_mask_metrics_of_held_draw_count_exactly_k():
    """Held masks are exact k-hot masks (values 0 or 1, k per group)."""
    masks, model = _train_masks(5, 7, density=0.25)
    k = model[0].dpp.k
    for m in masks:
        assert bool(((m == 0) | (m == 1)).all()) and bool((m.sum(-1) == k).all())


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "3"])
def test_bad_resample_every_is_rejected(bad):
    """resample_every must be an int >= 1; anything else names the key and the fix."""
    with pytest.raises(ValueError, match="resample_every must be an int >= 1"):
        dpp.DPPConfig(density=0.5, resample_every=bad)


def test_resample_every_serialises():
    """resample_every survives to_dict / from_dict, and an old dict without it gets 1."""
    cfg = dpp.DPPConfig(density=0.5, resample_every=8)
    assert dpp.DPPConfig.from_dict(cfg.to_dict()).resample_every == 8
    old = cfg.to_dict()
    del old["resample_every"]
    assert dpp.DPPConfig.from_dict(old).resample_every == 1
