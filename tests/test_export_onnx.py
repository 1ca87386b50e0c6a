"""Tests for dpp.export.onnx: ONNX export checked against onnxruntime."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from torch import nn

import dpp

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from dpp.export import shrink, to_onnx
from dpp.export.onnx import onnx_outputs

# These tests prune filters without example inputs on purpose: shrink() must handle the
# BatchNorm shift of unlinked masks (dpp.prune warns about it).
pytestmark = pytest.mark.filterwarnings("ignore:filter-level pruning of a model with BatchNorm")


HAS_ONNXSCRIPT = importlib.util.find_spec("onnxscript") is not None


def cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )  # fmt: skip


def _check(model: nn.Module, path, x: torch.Tensor) -> None:
    """onnxruntime on another batch size equals PyTorch (the batch axis is dynamic)."""
    with torch.no_grad():
        expected = model(x).numpy()
    (got,) = onnx_outputs(path, x)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_finalized_mlp_onnx_equals_torch(tmp_path):
    """A finalized, 4-bit, weight-pruned MLP exports; onnxruntime matches PyTorch."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    pruner = dpp.prune(model, density=0.25, weight_bits=4)
    model.eval()
    pruner.finalize()
    path = to_onnx(model, torch.randn(2, 32), tmp_path / "mlp.onnx", dynamo=False)
    _check(model, path, torch.randn(5, 32))


def test_finalized_cnn_onnx_equals_torch(tmp_path):
    """A finalized kernel-pruned CNN with BN and 8-bit inputs exports; onnxruntime matches."""
    torch.manual_seed(0)
    model = cnn()
    pruner = dpp.prune(
        model, granularity="kernel", density=0.5, activation_bits=8,
        overrides={"7": {"granularity": "weight"}},
    )  # fmt: skip
    model(torch.randn(8, 3, 8, 8))  # calibrate activation ranges
    model.eval()
    pruner.finalize()
    path = to_onnx(pruner, torch.randn(2, 3, 8, 8), tmp_path / "cnn.onnx", dynamo=False)
    _check(model, path, torch.randn(3, 3, 8, 8))


def test_shrunk_cnn_onnx_equals_torch(tmp_path):
    """A shrunk filter-pruned CNN exports; onnxruntime matches PyTorch."""
    torch.manual_seed(0)
    model = cnn()
    pruner = dpp.prune(model, granularity="filter", density=0.5, exclude=["7"])
    model.eval()
    small = shrink(pruner, torch.randn(2, 3, 8, 8))
    assert small[0].out_channels == 4
    path = to_onnx(small, torch.randn(2, 3, 8, 8), tmp_path / "small.onnx", dynamo=False)
    _check(small, path, torch.randn(3, 3, 8, 8))


def test_live_model_exports_as_finalized(tmp_path):
    """A model still holding DPP layers exports its finalized copy and stays unchanged."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))
    dpp.prune(model, density=0.5)
    model.eval()
    path = to_onnx(model, torch.randn(2, 16), tmp_path / "live.onnx", dynamo=False)
    assert dpp.is_dpp_layer(model[0])
    _check(model, path, torch.randn(4, 16))


@pytest.mark.skipif(not HAS_ONNXSCRIPT, reason="the torch.export-based exporter needs onnxscript")
def test_dynamo_exporter_shrunk_cnn(tmp_path):
    """The torch.export-based exporter gives the same results for a shrunk CNN."""
    torch.manual_seed(0)
    model = cnn()
    pruner = dpp.prune(model, granularity="filter", density=0.5, exclude=["7"])
    model.eval()
    small = shrink(pruner, torch.randn(2, 3, 8, 8))
    path = to_onnx(small, torch.randn(2, 3, 8, 8), tmp_path / "dyn.onnx", dynamo=True)
    _check(small, path, torch.randn(3, 3, 8, 8))
