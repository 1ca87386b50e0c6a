"""torch.compile of a pruned model's training step: no graph break inside dpp."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dpp

torch_dynamo = pytest.importorskip("torch._dynamo")

GRANULARITIES = {
    "weight": {"density": 0.25},
    "block": {"granularity": "block", "block_size": 4, "k": 2},
}


def _pruned(kind: str) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))
    dpp.prune(model, **GRANULARITIES[kind])
    return model.train()


@pytest.mark.parametrize("kind", list(GRANULARITIES))
def test_training_forward_has_no_graph_break(kind):
    """dynamo traces a training forward (sampler forward and its backward) in one graph."""
    model = _pruned(kind)
    torch_dynamo.reset()
    try:
        explained = torch_dynamo.explain(lambda x: model(x).square().mean())(torch.randn(16, 32))
    finally:
        torch_dynamo.reset()
    assert explained.graph_break_count == 0, [str(b.reason) for b in explained.break_reasons]
    assert explained.graph_count == 1


@pytest.mark.parametrize("kind", list(GRANULARITIES))
def test_compiled_step_matches_eager(kind):
    """A fullgraph-compiled training forward + backward (dynamo + AOTAutograd, eager kernels:
    fast to compile, same RNG) gives eager's loss and gradients."""
    model = _pruned(kind)
    x = torch.randn(16, 32)

    def loss_fn(inp: torch.Tensor) -> torch.Tensor:
        return model(inp).square().mean()

    def run(fn) -> tuple[torch.Tensor, list[torch.Tensor]]:
        torch.manual_seed(5)
        model.zero_grad()
        loss = fn(x)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    eager_loss, eager_grads = run(loss_fn)
    torch_dynamo.reset()
    try:
        compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
        compiled_loss, compiled_grads = run(compiled)
    finally:
        torch_dynamo.reset()
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-6)
    for g_c, g_e in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(g_c, g_e, rtol=1e-4, atol=1e-5)
