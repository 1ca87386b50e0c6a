"""Tests of dpp.Schedule and of how Pruner.step() drives the layers' temperature and noise."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import dpp
from dpp import Schedule

KINDS = ["linear", "exponential", "cosine"]


@pytest.mark.parametrize("kind", ["constant", *KINDS])
def test_start_and_end_values(kind):
    """Every schedule starts at start, reaches end after `steps` steps and then holds it."""
    s = Schedule(kind, start=4.0, end=0.25, steps=10) if kind != "constant" else Schedule(kind, 4.0)
    end = 4.0 if kind == "constant" else 0.25
    assert s.value(0) == 4.0
    assert s.value(10) == pytest.approx(end)
    assert s.value(11) == pytest.approx(end) and s.value(10_000) == pytest.approx(end)


def test_middle_values():
    """Midway: linear and cosine give the mean of start and end, exponential the geometric mean."""
    assert Schedule("linear", start=4.0, end=1.0, steps=10).value(5) == pytest.approx(2.5)
    assert Schedule("cosine", start=4.0, end=1.0, steps=10).value(5) == pytest.approx(2.5)
    assert Schedule("exponential", start=4.0, end=1.0, steps=10).value(5) == pytest.approx(2.0)
    assert Schedule("constant", start=3.0).value(5) == 3.0


def test_linear_is_linear():
    """Linear schedules move by equal increments."""
    s = Schedule("linear", start=5.0, end=0.5, steps=9)
    diffs = [s.value(i + 1) - s.value(i) for i in range(9)]
    assert all(d == pytest.approx(-0.5) for d in diffs)


def test_exponential_is_geometric():
    """Exponential schedules move by a constant ratio."""
    s = Schedule("exponential", start=8.0, end=0.125, steps=6)
    ratios = [s.value(i + 1) / s.value(i) for i in range(6)]
    assert all(r == pytest.approx(0.5) for r in ratios)


def test_cosine_shape():
    """Cosine moves slowly at both ends, fast in the middle, symmetric about the midpoint."""
    s = Schedule("cosine", start=1.0, end=0.0, steps=100)
    assert s.value(1) > Schedule("linear", start=1.0, end=0.0, steps=100).value(1)
    for t in range(101):
        assert s.value(t) + s.value(100 - t) == pytest.approx(1.0)
        assert s.value(t) == pytest.approx(0.5 * (1 + math.cos(math.pi * t / 100)))


@given(
    kind=st.sampled_from(KINDS),
    start=st.floats(0.01, 10.0),
    end=st.floats(0.01, 10.0),
    steps=st.integers(1, 50),
    delay=st.integers(0, 20),
)
def test_monotone_between_start_and_end(kind, start, end, steps, delay):
    """Values stay between start and end and move monotonically from one to the other."""
    s = Schedule(kind, start=start, end=end, steps=steps, delay=delay)
    values = [s.value(t) for t in range(delay + steps + 3)]
    lo, hi = min(start, end), max(start, end)
    assert all(lo - 1e-9 <= v <= hi + 1e-9 for v in values)
    sign = 1 if end >= start else -1
    assert all(sign * (b - a) >= -1e-9 for a, b in itertools.pairwise(values))


@pytest.mark.parametrize("kind", KINDS)
def test_delay_holds_start(kind):
    """With a delay the value holds start for `delay` steps, then takes `steps` to reach end."""
    s = Schedule(kind, start=2.0, end=0.5, steps=4, delay=3)
    assert [s.value(t) for t in range(4)] == [2.0] * 4
    assert s.value(4) < 2.0
    assert s.value(7) == pytest.approx(0.5)
    assert s.value(6) > 0.5 + 1e-9
    undelayed = Schedule(kind, start=2.0, end=0.5, steps=4)
    assert all(s.value(t + 3) == pytest.approx(undelayed.value(t)) for t in range(6))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"kind": "step"}, r"unknown schedule kind 'step'; valid kinds: constant, linear"),
        ({"kind": "linear", "end": 1.0}, r"'linear' schedule needs both 'end' and 'steps'"),
        ({"kind": "cosine", "steps": 3}, r"'cosine' schedule needs both 'end' and 'steps'"),
        ({"kind": "linear", "end": 1.0, "steps": 0}, r"steps must be >= 1"),
        ({"kind": "exponential", "end": 0.0, "steps": 5}, r"start > 0 and end > 0.*'linear'"),
        ({"kind": "constant", "delay": -1}, r"delay must be >= 0"),
    ],
)
def test_invalid_schedules(kwargs, match):
    """Invalid schedules raise ValueError saying what is valid."""
    with pytest.raises(ValueError, match=match):
        Schedule(**kwargs)


def test_coerce():
    """A number gives a constant schedule, a dict builds one, a Schedule passes; others raise."""
    s = Schedule("linear", start=1.0, end=0.0, steps=3)
    assert Schedule.coerce(s, "tau") is s
    assert Schedule.coerce(2, "tau") == Schedule("constant", 2.0)
    assert Schedule.coerce(s.to_dict(), "tau") == s
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['stop'\] in tau; valid keys"):
        Schedule.coerce({"kind": "linear", "stop": 1}, "tau")
    with pytest.raises(TypeError, match=r"tau must be a number, a dict or a dpp\.Schedule"):
        Schedule.coerce("fast", "tau")
    with pytest.raises(TypeError, match="got a bool"):
        Schedule.coerce(True, "tau")


# ------------------------------------------------------------------ driven by the pruner
def _model():
    return nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 4))


def test_step_updates_layers_tau_and_noise_scale():
    """pruner.step() moves every layer's tau and noise scale along the configured schedules."""
    tau = Schedule("linear", start=5.0, end=0.5, steps=10)
    beta = Schedule("exponential", start=1.0, end=0.01, steps=10, delay=2)
    pruner = dpp.prune(_model(), density=0.5, temperature=tau, noise_scale=beta)
    for step in range(13):
        assert pruner.current_step == step
        assert pruner.temperature == pytest.approx(tau.value(step))
        assert pruner.noise_scale == pytest.approx(beta.value(step))
        for layer in pruner.layers.values():
            assert layer.dpp.tau == pytest.approx(tau.value(step))
            assert layer.dpp.noise_scale == pytest.approx(beta.value(step))
        pruner.step()
    pruner.step(5)
    assert pruner.current_step == 18


def test_dict_schedules_in_prune():
    """prune() accepts schedules as dicts and numbers."""
    pruner = dpp.prune(
        _model(),
        density=0.5,
        temperature={"kind": "cosine", "start": 2.0, "end": 0.1, "steps": 4},
        noise_scale=0.3,
    )
    pruner.step(4)
    assert pruner.temperature == pytest.approx(0.1)
    assert all(layer.dpp.noise_scale == 0.3 for layer in pruner.layers.values())


def test_noise_annealed_to_zero_freezes_training_masks():
    """Once the noise scale reaches 0, training-mode masks are the deterministic eval masks."""
    model = _model()
    pruner = dpp.prune(model, density=0.5, noise_scale=Schedule("linear", 1.0, 0.0, steps=3))
    layer = model[0]
    eval_mask = layer.dpp.deterministic(layer.weight)
    draws = [layer.dpp_group_mask() for _ in range(5)]
    assert any(not torch.equal(d, eval_mask) for d in draws)
    pruner.step(3)
    assert all(torch.equal(layer.dpp_group_mask(), eval_mask) for _ in range(5))


def test_temperature_changes_the_gradient():
    """A lower temperature gives a different logit gradient for the same draw."""
    model = _model()
    pruner = dpp.prune(model, density=0.5, temperature=Schedule("linear", 2.0, 0.2, steps=1))
    x = torch.randn(4, 10)
    grads = []
    for _ in range(2):
        torch.manual_seed(7)
        model.zero_grad()
        model(x).square().sum().backward()
        grads.append(model[0].dpp.logits.grad.clone())
        pruner.step()
    assert not torch.allclose(grads[0], grads[1])


def test_schedule_reaching_invalid_temperature():
    """A temperature schedule that reaches 0 is refused when the config is built."""
    with pytest.raises(ValueError, match=r"temperature must stay > 0; the schedule reaches 0.0"):
        dpp.prune(_model(), density=0.5, temperature=Schedule("linear", 1.0, 0.0, steps=2))
