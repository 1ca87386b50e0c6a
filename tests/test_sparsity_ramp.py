"""The sparsity ramp: DPP masks that start dense and reach the target k on a schedule."""

from __future__ import annotations

import math

import pytest
import torch

import dpp
from dpp import Schedule


def _mlp() -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Linear(40, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))


def test_cubic_schedule_follows_zhu_gupta():
    """A cubic schedule is end + (start - end)(1 - t)^3: start at 0, end from `steps` on."""
    s = Schedule("cubic", 0.0, 1.0, steps=10, delay=5)
    assert s.value(0) == 0.0 and s.value(5) == 0.0
    assert s.value(10) == pytest.approx(1 - 0.5**3)
    assert s.value(15) == 1.0 and s.value(100) == 1.0


def test_ramp_grows_sparsity_from_dense_to_k():
    """During the ramp every group keeps ceil(n - r (n - k)) candidates, in training and eval;
    from its end on, exactly k."""
    model = _mlp()
    ramp = Schedule("cubic", 0.0, 1.0, steps=8)
    pruner = dpp.prune(model, density=0.1, overrides={"2": {"k": 2}}, sparsity_ramp=ramp)
    for step in range(10):
        r = ramp.value(step)
        for name, n, k in (("0", 40, 4), ("2", 6, 2)):
            expected = k if r >= 1 else math.ceil(n - r * (n - k))
            model.train()
            layer = model.get_submodule(name)
            assert layer.dpp_group_mask().sum(-1).unique().tolist() == [expected]
            model.eval()
            assert pruner.masks()[name].sum(1).unique().tolist() == [expected]
        pruner.step()


def test_finalize_uses_the_target_k_even_mid_ramp():
    """finalize() in the middle of a ramp bakes the target k, not the ramp's current k."""
    model = _mlp()
    pruner = dpp.prune(model, density=0.1, sparsity_ramp=Schedule("linear", 0.0, 1.0, steps=100))
    pruner.step(10)
    records = pruner.finalize()
    assert records["0"].mask.sum(1).unique().tolist() == [4]
    assert (model[0].weight != 0).sum(1).max() <= 4


def test_ramp_position_is_restored_with_the_pruner_state():
    """Pruner.load_state_dict restores the ramp position (hence the current k)."""
    ramp = {"kind": "linear", "start": 0.0, "end": 1.0, "steps": 10}
    first = dpp.prune(_mlp(), density=0.1, sparsity_ramp=ramp)
    first.step(5)
    second = dpp.prune(_mlp(), density=0.1, sparsity_ramp=ramp)
    second.load_state_dict(first.state_dict())
    assert second.ramp == first.ramp == 0.5
    assert second.model[0].dpp.k == first.model[0].dpp.k == math.ceil(40 - 0.5 * 36)


@pytest.mark.parametrize("value", [-0.5, 1.5])
def test_ramp_outside_unit_interval_is_rejected(value):
    """A ramp schedule reaching a value outside [0, 1] is a ValueError naming the value."""
    with pytest.raises(ValueError, match="sparsity_ramp values are fractions"):
        dpp.DPPConfig(density=0.1, sparsity_ramp=Schedule("linear", 0.0, value, steps=3))


def test_ramp_serialises_with_the_config():
    """A config with a ramp survives the dict/JSON round trip."""
    cfg = dpp.DPPConfig(density=0.1, sparsity_ramp=Schedule("cubic", 0.0, 1.0, steps=7))
    assert dpp.DPPConfig.from_json(cfg.to_json()) == cfg
