"""Tests for dpp.export.semi_structured: the CPU-side checks of 2:4 conversion."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dpp
from dpp.export import SemiStructuredError, to_semi_structured
from dpp.export.semi_structured import semi_structured_layers

needs_no_gpu = pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the message given without a CUDA GPU"
)


def _model_2of4():
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    pruner = dpp.prune(
        model, granularity="block", block_size=4, k=2, overrides={"2": {"prune": False}}
    )
    return model, pruner


def test_2of4_layers_are_found_and_validated():
    """Linear layers pruned block 2 of 4 are the ones converted; others stay dense."""
    _, pruner = _model_2of4()
    assert semi_structured_layers(pruner) == ["0"]
    pruner.finalize()
    assert semi_structured_layers(pruner) == ["0"]


@needs_no_gpu
def test_cpu_gives_a_clear_message():
    """Without a CUDA GPU of capability >= 8.0, conversion says so and points to convert_kofn."""
    model, pruner = _model_2of4()
    with pytest.raises(SemiStructuredError, match=r"compute capability >= 8\.0.*convert_kofn"):
        to_semi_structured(pruner)
    with pytest.raises(SemiStructuredError, match="no CUDA device"):
        to_semi_structured(model, device="cpu")


@pytest.mark.parametrize(
    "options",
    [
        {"granularity": "weight", "density": 0.5},
        {"granularity": "block", "block_size": 4, "k": 1},
        {"granularity": "block", "block_size": 8, "k": 4},
    ],
)
def test_non_2of4_masks_are_refused(options):
    """Masks other than 2 of every 4 are refused before any device check, naming the layout."""
    model = nn.Sequential(nn.Linear(64, 32))
    pruner = dpp.prune(model, **options)
    with pytest.raises(SemiStructuredError, match=r"no Linear layer is pruned 2:4.*'0': "):
        to_semi_structured(pruner)


def test_broken_pattern_is_refused():
    """A finalized weight with more than 2 nonzeros in a block of 4 is refused."""
    model, pruner = _model_2of4()
    pruner.finalize()
    with torch.no_grad():
        model[0].weight.fill_(1.0)  # tampered with after finalize
    with pytest.raises(SemiStructuredError, match="2 of every 4"):
        semi_structured_layers(pruner)


def test_dtype_must_be_half():
    """Only float16 and bfloat16 are supported by the sparse kernels."""
    _, pruner = _model_2of4()
    with pytest.raises(ValueError, match="float16 and bfloat16"):
        to_semi_structured(pruner, dtype=torch.float32)
