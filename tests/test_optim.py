"""Tests of dpp.optim: the compact logit optimizer and stochastic rounding."""

from __future__ import annotations

import io

import pytest
import torch

import dpp
from dpp.optim import DPPAdam, stochastic_round


def _model_and_pruner(logit_dtype: str, freeze: bool = False):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    pruner = dpp.prune(model, granularity="block", block_size=4, k=2, logit_dtype=logit_dtype)
    if freeze:
        pruner.freeze_weights()
    return model, pruner


def _train(model, pruner, opt, steps: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 16, generator=gen)
        opt.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        opt.step()
        pruner.step()


@pytest.mark.parametrize("value", [1.0 + 2**-10, -3.14159, 1e-3, 123.456])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_stochastic_rounding_is_unbiased(value, dtype):
    """The mean of many stochastic roundings of x equals x (within 6 standard errors), and
    every result is one of x's two neighbours in the target dtype."""
    n = 400_000
    x = torch.full((n,), value, dtype=torch.float32)
    out = stochastic_round(x, dtype, torch.Generator().manual_seed(0)).float()
    lo = x.to(dtype).float()[0]
    values = set(out.unique().tolist())
    assert len(values) <= 2 and lo.item() in values | {lo.item()}
    spread = (out.max() - out.min()).item()
    se = spread / 2 / n**0.5 if spread else 0.0
    assert abs(out.double().mean().item() - value) <= 6 * se + 1e-12
    # Round to nearest would be biased: the test has power whenever x is not representable.
    nearest = x.to(dtype).float().double().mean().item()
    if spread:
        assert abs(nearest - value) > 6 * se


def test_stochastic_rounding_keeps_representable_values():
    """Values exactly representable in the target dtype (and infinities) are left unchanged."""
    x = torch.tensor([0.0, 1.0, -2.5, 0.15625, float("inf"), -float("inf")])
    for dtype in (torch.bfloat16, torch.float16):
        out = stochastic_round(x, dtype, torch.Generator().manual_seed(1))
        assert torch.equal(out.float(), x)


@pytest.mark.parametrize("logit_dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("freeze", [False, True])
def test_state_dict_round_trip_continues_bit_identically(logit_dtype, freeze):
    """Saving model, pruner and DPPAdam state mid-run and loading them into fresh objects
    continues training bit-identically (moments, step counts and rounding stream included)."""
    model, pruner = _model_and_pruner(logit_dtype, freeze)
    opt = pruner.optimizer(lr=1e-2, logit_lr=5e-2, seed=3)
    _train(model, pruner, opt, 3, seed=0)
    buf = io.BytesIO()
    torch.save(
        {"model": model.state_dict(), "opt": opt.state_dict(), "pruner": pruner.state_dict()}, buf
    )
    torch.manual_seed(123)  # the sampler's noise comes from the global RNG: same for both
    rng = torch.get_rng_state()
    _train(model, pruner, opt, 4, seed=1)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    model2, pruner2 = _model_and_pruner(logit_dtype, freeze)
    model2.load_state_dict(saved["model"])
    pruner2.load_state_dict(saved["pruner"])
    opt2 = pruner2.optimizer(lr=1e-2, logit_lr=5e-2, seed=99)  # seed overwritten by the state
    opt2.load_state_dict(saved["opt"])
    torch.set_rng_state(rng)
    _train(model2, pruner2, opt2, 4, seed=1)
    for key, value in model2.state_dict().items():
        assert value.dtype == expected[key].dtype
        assert torch.equal(value, expected[key]), key


def test_compact_state_sizes():
    """A compact group keeps a bfloat16 first moment and one float32 second moment per row."""
    model, pruner = _model_and_pruner("bfloat16")
    opt = pruner.optimizer(lr=1e-2, logit_lr=5e-2)
    _train(model, pruner, opt, 1, seed=0)
    logits = pruner.logits()[0]
    state = opt.state[logits]
    assert state["exp_avg"].dtype == torch.bfloat16 and state["exp_avg"].shape == logits.shape
    assert state["exp_avg_sq"].dtype == torch.float32
    assert state["exp_avg_sq"].shape == (logits.shape[0], 1)
    assert logits.dtype == torch.bfloat16 and logits.grad.dtype == torch.bfloat16


def test_weight_groups_are_adamw():
    """The non-compact groups of DPPAdam update exactly as torch.optim.AdamW does."""
    torch.manual_seed(0)
    a = torch.nn.Linear(8, 4)
    b = torch.nn.Linear(8, 4)
    b.load_state_dict(a.state_dict())
    opt_a = DPPAdam(a.parameters(), lr=1e-2, weight_decay=0.1)
    opt_b = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        x = torch.randn(5, 8)
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


def test_compact_group_moves_towards_adam():
    """With gradients of equal size across a row, the compact update equals Adam's up to
    the bfloat16 rounding of the first moment (the shared second moment is each one's own)."""
    p = torch.nn.Parameter(torch.zeros(1, 4))
    q = torch.nn.Parameter(torch.zeros(1, 4))
    opt_p = DPPAdam([{"params": [p], "compact": True}], lr=0.1)
    opt_q = torch.optim.Adam([q], lr=0.1)
    grad = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    for _ in range(5):
        p.grad, q.grad = grad.clone(), grad.clone()
        opt_p.step()
        opt_q.step()
    assert torch.allclose(p, q, rtol=2e-3, atol=0)


def test_pruner_optimizer_groups():
    """Pruner.optimizer: weights then logits (compact); logits alone after freeze_weights."""
    _, pruner = _model_and_pruner("float32")
    opt = pruner.optimizer(lr=1e-3, logit_lr=1e-2, weight_decay=0.1)
    assert [g["compact"] for g in opt.param_groups] == [False, True]
    assert opt.param_groups[1]["lr"] == 1e-2 and opt.param_groups[1]["weight_decay"] == 0.0
    assert opt.param_groups[0]["weight_decay"] == 0.1
    _, pruner = _model_and_pruner("float32", freeze=True)
    opt = pruner.optimizer(lr=1e-3, logit_lr=1e-2)
    assert [g["compact"] for g in opt.param_groups] == [True]
    assert isinstance(opt, torch.optim.Optimizer)
