"""Masks as files: dpp.save_masks / dpp.load_masks."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from torch import nn

import dpp
from dpp.maskfile import MaskFileError


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 16))


def _cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Conv2d(16, 4, 3))


def _payload_bytes(path) -> int:
    with safe_open(str(path), framework="pt") as f:
        return sum(f.get_tensor(key).numel() for key in f.keys())  # noqa: SIM118


@pytest.mark.parametrize(
    ("factory", "options"),
    [
        (_mlp, {"granularity": "block", "block_size": 4, "k": 2}),
        (_mlp, {"granularity": "weight", "density": 0.05}),
        (_cnn, {"granularity": "kernel", "density": 0.25}),
        (_cnn, {"granularity": "filter", "density": 0.5}),
    ],
)
def test_saved_masks_load_onto_a_dense_model_unchanged(tmp_path, factory, options):
    """load_masks on a fresh dense model reproduces every deterministic mask exactly."""
    model = factory()
    pruner = dpp.prune(model, **options)
    for p in pruner.logits():
        torch.nn.init.normal_(p)
    model.eval()
    want = pruner.masks()
    path = tmp_path / "masks.safetensors"
    dpp.save_masks(pruner, path)
    fixed = dpp.load_masks(factory(seed=1), path)
    got = fixed.masks()
    assert set(got) == set(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_masks_are_bit_packed(tmp_path):
    """2:4 takes at most 1 bit per weight; 5% per neuron takes the index code, below 1 bit."""
    for options, bound in (
        ({"granularity": "block", "block_size": 4, "k": 2}, 1.0),
        ({"granularity": "weight", "density": 0.05}, 0.6),
    ):
        model = _mlp()
        dpp.prune(model, **options)
        path = tmp_path / "m.safetensors"
        dpp.save_masks(model, path)
        weights = sum(m.weight.numel() for m in model.modules() if dpp.is_dpp_layer(m))
        assert _payload_bytes(path) * 8 <= bound * weights + 16


def test_finalized_and_live_sources_save_the_same_masks(tmp_path):
    """A finalized pruner writes the same masks as the live one did."""
    model = _mlp()
    pruner = dpp.prune(model, granularity="block", block_size=4, k=2)
    model.eval()
    dpp.save_masks(pruner, tmp_path / "live.safetensors")
    pruner.finalize()
    dpp.save_masks(pruner, tmp_path / "final.safetensors")
    a = dpp.load_masks(_mlp(), tmp_path / "live.safetensors").masks()
    b = dpp.load_masks(_mlp(), tmp_path / "final.safetensors").masks()
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_a_flipped_byte_is_caught(tmp_path):
    """A mask file with one payload byte changed fails its digest check, naming the file."""
    model = _mlp()
    dpp.prune(model, granularity="block", block_size=4, k=2)
    path = tmp_path / "m.safetensors"
    dpp.save_masks(model, path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(MaskFileError, match="digest"):
        dpp.load_masks(_mlp(), path)


def test_a_truncated_file_is_caught(tmp_path):
    """A truncated mask file gets a MaskFileError that names it, not a raw library error."""
    model = _mlp()
    dpp.prune(model, granularity="block", block_size=4, k=2)
    path = tmp_path / "m.safetensors"
    dpp.save_masks(model, path)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(MaskFileError, match=r"m\.safetensors"):
        dpp.load_masks(_mlp(), path)


def test_another_architecture_is_refused(tmp_path):
    """Loading onto a model that lacks a layer, or whose layer has another shape, names it."""
    model = _mlp()
    dpp.prune(model, granularity="block", block_size=4, k=2)
    path = tmp_path / "m.safetensors"
    dpp.save_masks(model, path)
    with pytest.raises(MaskFileError, match=r"'2'.*another architecture"):
        dpp.load_masks(nn.Sequential(nn.Linear(784, 64)), path)
    with pytest.raises(MaskFileError, match="weight shape"):
        dpp.load_masks(nn.Sequential(nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 16)), path)


def test_a_model_without_pruned_layers_cannot_be_saved(tmp_path):
    """save_masks of a plain model says there is nothing to save."""
    with pytest.raises(ValueError, match="no pruned layer"):
        dpp.save_masks(_mlp(), tmp_path / "m.safetensors")
