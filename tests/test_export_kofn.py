"""Tests for dpp.export.kofn: k-of-n Linear inference."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dpp
from dpp.export import KOfNLinear, convert_kofn, save_packed
from dpp.export.kofn import METHODS, kofn_columns

FORMULATIONS = [m for m in METHODS if m != "auto"]


def _masked_linear(granularity: str, in_f: int = 64, out_f: int = 24, bits=None, seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(in_f, out_f))
    options = {"block_size": 8} if granularity == "block" else {}
    pruner = dpp.prune(model, granularity=granularity, density=0.25, weight_bits=bits, **options)
    model.eval()
    return model, pruner


@pytest.mark.parametrize("method", [*FORMULATIONS, "auto"])
@pytest.mark.parametrize("granularity", ["weight", "block"])
@pytest.mark.parametrize("shape", [(1, 64), (8, 64), (64,), (2, 3, 64)])
def test_kofn_linear_equals_masked_dense(granularity, method, shape):
    """KOfNLinear computes the masked dense layer (batch 1, 8, 1-D and 3-D inputs)."""
    model, pruner = _masked_linear(granularity)
    x = torch.randn(*shape)
    with torch.no_grad():
        expected = model(x)
    fast = convert_kofn(pruner, method=method)
    assert isinstance(fast[0], KOfNLinear)
    out = fast(x)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_block_indices_become_absolute_columns():
    """Block b's local index j becomes column b * m + j; the weight layout is reproduced."""
    model, _pruner = _masked_linear("block")
    layout = model[0].dpp_layout
    mask = model[0].dpp_masks()
    group = mask.reshape(layout.num_groups, layout.n)
    local = torch.argsort((~group).to(torch.uint8), dim=1, stable=True)[:, : layout.k]
    cols = kofn_columns(layout, local)
    assert cols.shape == (24, 64 // 8 * 2)
    rebuilt = torch.zeros(24, 64, dtype=torch.bool).scatter_(1, cols, True)
    assert torch.equal(rebuilt, mask)


def test_quantized_layers_convert_exactly():
    """A 4-bit pruned Linear converts with values scale * code: same outputs as finalized."""
    model, pruner = _masked_linear("weight", bits=4)
    fast = convert_kofn(pruner)
    pruner.finalize()
    x = torch.randn(5, 64)
    torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast[0].dense_weight(), model[0].weight.detach())


def test_convert_from_packed_file(tmp_path):
    """convert_kofn(path, plain_model) loads the file and converts the pruned Linear layers."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    fresh = copy.deepcopy(model)
    pruner = dpp.prune(model, density=0.1, overrides={"2": {"prune": False}})
    model.eval()
    pruner.finalize()
    save_packed(pruner, tmp_path / "m.safetensors")
    fast = convert_kofn(tmp_path / "m.safetensors", fresh)
    assert isinstance(fast[0], KOfNLinear) and isinstance(fast[2], nn.Linear)
    x = torch.randn(7, 64)
    torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-6)


def test_convert_leaves_source_untouched_and_conv_layers_dense():
    """Converting a live model returns a copy; convs and filter-pruned Linears stay plain."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 5)
    )
    pruner = dpp.prune(model, density=0.5, overrides={"4": {"granularity": "filter"}})
    model.eval()
    fast = convert_kofn(model)
    assert dpp.is_dpp_layer(model[2])  # source unchanged
    assert type(fast[0]) is nn.Conv2d and type(fast[4]) is nn.Linear
    assert isinstance(fast[2], KOfNLinear)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-6)
    assert pruner.masks()  # the pruner still works on the source


def test_from_dense_uses_the_mask_not_zeros():
    """from_dense keeps masked-in zero weights: the mask decides what is stored."""
    w = torch.zeros(3, 6)
    mask = torch.zeros(3, 6, dtype=torch.bool)
    mask[:, :2] = True
    layer = KOfNLinear.from_dense(w, mask)
    assert layer.kept_per_row == 2
    x = torch.randn(4, 6)
    torch.testing.assert_close(layer(x), F.linear(x, w))


def test_invalid_construction_is_refused():
    """Out-of-range indices, shape mismatches and unknown methods raise ValueError."""
    values = torch.randn(2, 3)
    with pytest.raises(ValueError, match="indices must lie"):
        KOfNLinear(4, 2, values, torch.tensor([[0, 1, 4], [0, 1, 2]]))
    with pytest.raises(ValueError, match="values and indices"):
        KOfNLinear(4, 2, values, torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="method"):
        KOfNLinear(4, 2, values, torch.zeros(2, 3, dtype=torch.long), method="fast")
    layer = KOfNLinear(4, 2, values, torch.tensor([[0, 1, 2], [1, 2, 3]]))
    with pytest.raises(ValueError, match=r"inputs \[..., 4\]"):
        layer(torch.randn(2, 5))


def test_state_dict_round_trip():
    """Loading a state dict (values, indices, bias) updates every formulation's result."""
    _model, pruner = _masked_linear("weight")
    fast = convert_kofn(pruner)[0]
    clone = KOfNLinear(64, 24, torch.zeros_like(fast.values), torch.zeros_like(fast.indices),
                       torch.zeros(24))  # fmt: skip
    x = torch.randn(3, 64)
    for method in FORMULATIONS:  # build the cached helpers before loading
        clone.method = method
        clone(x)
    clone.load_state_dict(fast.state_dict())
    for method in FORMULATIONS:
        clone.method = fast.method = method
        torch.testing.assert_close(clone(x), fast(x))


def test_dense_layers_above_max_density_stay_plain():
    """Layers keeping more than max_density of their weights stay plain nn.Linear."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    dpp.prune(model, density=0.1, overrides={"2": {"density": 0.5}})
    model.eval()
    fast = convert_kofn(model, max_density=0.3)
    assert isinstance(fast[0], KOfNLinear) and type(fast[2]) is nn.Linear
    x = torch.randn(3, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-6)
    assert isinstance(convert_kofn(model)[2], KOfNLinear)


def test_auto_picks_csr_for_small_batches_and_embedding_bag_for_large():
    """method="auto" dispatches on the batch size as measured in benchmarks/bench_kofn.py."""
    layer = KOfNLinear.from_dense(torch.randn(4, 8), torch.ones(4, 8, dtype=torch.bool))
    assert layer._choose(1) == "csr" and layer._choose(8) == "csr"
    assert layer._choose(64) == "embedding_bag"
