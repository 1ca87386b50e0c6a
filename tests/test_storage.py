"""Tests of dpp.storage: bits as dense fp32, CSR and the packed k-of-n layout (method.md s.7).

Every expected number is computed by hand in the test, from the layout rules:
packed group = k * wpc * b values + min(k * ceil(log2 n), n) index bits;
CSR = nnz * b values + nnz * 32 column indices + (rows + 1) * 32 row pointers;
scales, biases and other parameters fp32.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dpp
from dpp.storage import FormatBits, StorageReport, storage_report


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one thread is faster, and far faster on a shared, loaded CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reports(model: nn.Module, **options) -> list[StorageReport]:
    """The report of the live model, of the live pruner and, after finalize, of the pruner and
    of its finalized_layers with the model: all must agree."""
    pruner = dpp.prune(model, **options)
    out = [storage_report(model), storage_report(pruner)]
    model.eval()
    records = pruner.finalize()
    out += [storage_report(pruner), storage_report(records, model=model)]
    return out


def one_layer(layer: nn.Module, **options) -> list:
    return [r["0"] for r in reports(nn.Sequential(layer), **options)]


# ---------------------------------------------------------------- hand-computed layers
def test_weight_level_linear_hand_computed():
    """Linear(8, 4), k=2 of n=8 per row, 4-bit channel scales: every component by hand."""
    for layer in one_layer(nn.Linear(8, 4), k=2, weight_bits=4):
        assert layer.kind == "pruned" and layer.value_bits == 4
        assert (layer.weights, layer.kept_weights) == (32, 8)
        # dense: (4*8 weights + 4 biases) * 32
        assert layer.dense_fp32 == FormatBits(values=32 * 32, bias=4 * 32)
        assert layer.dense_fp32.total == 32 * (32 + 4) == 1152
        # packed: 4 groups; values 4*2*4 = 32; indices 4*2*3 = 24 (ceil(log2 8) = 3),
        # which beats the bitmap: per group 2*4 + 2*3 = 14 < 2*4 + 8 = 16
        assert layer.index_format == "indices"
        assert layer.packed == FormatBits(values=32, indices=24, scales=4 * 32, bias=4 * 32)
        assert layer.packed.total == 32 + 24 + 128 + 128 == 312
        # CSR: nnz = 8: values 8*4, column indices 8*32, row pointers (4+1)*32
        assert layer.csr == FormatBits(
            values=8 * 4, indices=8 * 32, row_pointers=5 * 32, scales=128, bias=128
        )
        assert layer.csr.total == 32 + 256 + 160 + 128 + 128 == 704
        assert layer.compression_ratio == pytest.approx(1152 / 312)


def test_block_level_linear_hand_computed_uses_the_bitmap():
    """Linear(16, 4), 4 of every 8 inputs (block), 8 bits: the 8-bit bitmap beats 4 indices."""
    for layer in one_layer(nn.Linear(16, 4), granularity="block", block_size=8, k=4, weight_bits=8):
        # 4*16/8 = 8 groups of n = 8; indices 4*3 = 12 bits > bitmap 8 bits
        assert layer.layout.num_groups == 8 and layer.index_format == "bitmap"
        assert layer.packed == FormatBits(values=8 * 4 * 8, indices=8 * 8, scales=128, bias=128)
        assert layer.packed.total == 256 + 64 + 128 + 128 == 576
        assert layer.dense_fp32.total == 32 * (64 + 4) == 2176
        # CSR: nnz = 32: 32*8 + 32*32 + 5*32 + 128 + 128
        assert layer.csr.total == 256 + 1024 + 160 + 128 + 128 == 1696


def test_filter_level_conv_hand_computed():
    """Conv2d(3, 8, 3), 2 of 8 feature maps, 4 bits: 27 values per index; kept maps' scales/bias."""
    for layer in one_layer(nn.Conv2d(3, 8, 3), granularity="filter", k=2, weight_bits=4):
        assert layer.layout.weights_per_candidate == 27 and layer.kept_weights == 54
        # one group: values 2 maps * 27 weights * 4 bits; indices min(2*3, 8) = 6;
        # only the 2 kept maps keep a scale and a bias (the others are exactly zero)
        assert layer.packed == FormatBits(values=216, indices=6, scales=2 * 32, bias=2 * 32)
        assert layer.packed.total == 350
        assert layer.dense_fp32.total == 32 * (8 * 27 + 8) == 7168
        # CSR over [8, 27]: nnz 54: 54*4 + 54*32 + 9*32 + 64 + 64
        assert layer.csr.total == 216 + 1728 + 288 + 64 + 64 == 2360


def test_kernel_level_binary_conv_hand_computed():
    """Conv2d(4, 2, 3) no bias, 1 of 4 kernels, binary, tensor scale: 1 bit per kept sign."""
    conv = nn.Conv2d(4, 2, 3, bias=False)
    for layer in one_layer(
        conv, granularity="kernel", k=1, weight_bits="binary", quant_scale="tensor"
    ):
        assert layer.weight_bits == "binary" and layer.value_bits == 1
        # 2 groups: values 2*1*9*1 = 18; indices 2 * min(1*2, 4) = 4; one fp32 scale; no bias
        assert layer.packed == FormatBits(values=18, indices=4, scales=32)
        assert layer.dense_fp32.total == 32 * 72 == 2304
        # CSR: nnz 18: 18*1 + 18*32 + 3*32 + 32
        assert layer.csr.total == 18 + 576 + 96 + 32 == 722


def test_float_pruned_layer_stores_32_bit_values_and_no_scales():
    """Pruning without quantization: values at 32 bits, no scales."""
    for layer in one_layer(nn.Linear(8, 4), k=2):
        assert layer.packed == FormatBits(values=4 * 2 * 32, indices=24, bias=128)
        assert layer.csr == FormatBits(values=8 * 32, indices=8 * 32, row_pointers=160, bias=128)


# ---------------------------------------------------------------- whole models
class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 4)
        self.bn = nn.BatchNorm1d(4)
        self.fc2 = nn.Linear(4, 4)
        self.fc3 = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.relu(self.fc2(self.bn(self.fc1(x)))))


NET_OPTIONS = {
    "k": 2,
    "weight_bits": 4,
    "activation_bits": 8,
    "exclude": ["fc2"],
    "overrides": {"fc3": {"weight_bits": 8, "prune": False}},
}


def test_model_totals_hand_computed():
    """Pruned + BatchNorm + untouched + quantize-only layers: each row and the totals by hand."""
    for report in reports(Net(), **NET_OPTIONS):
        assert [layer.name for layer in report.layers] == ["fc1", "bn", "fc2", "fc3"]
        assert [layer.kind for layer in report.layers] == ["pruned", "other", "dense", "quantized"]
        fc1, bn, fc2, fc3 = report.layers
        # fc1: the Linear(8, 4) example plus one fp32 activation scale
        assert (fc1.dense_fp32.total, fc1.csr.total, fc1.packed.total) == (1152, 736, 344)
        # bn: weight, bias, running mean, running var (4 each) at fp32; not num_batches_tracked
        assert bn.dense_fp32 == bn.csr == bn.packed == FormatBits(other=16 * 32)
        # fc2 (excluded): 32 * (16 + 4) in every layout
        assert fc2.dense_fp32.total == fc2.csr.total == fc2.packed.total == 640
        # fc3 (quantize only, 8 bits): 8 values * 8 bits, 2 channel scales + 1 activation
        # scale, 2 biases; stored densely (no index) in both sparse layouts
        assert fc3.index_format == "dense" and fc3.csr == fc3.packed
        assert fc3.packed == FormatBits(values=64, scales=3 * 32, bias=64)
        assert fc3.dense_fp32.total == 32 * (8 + 2)
        assert report.dense_fp32_bits == 1152 + 512 + 640 + 320
        assert report.csr_bits == 736 + 512 + 640 + 224
        assert report.packed_bits == 344 + 512 + 640 + 224
        assert report.compression_ratio == pytest.approx(2624 / 1720)
        assert report.csr_compression_ratio == pytest.approx(2624 / 2112)


def test_buffers_can_be_left_out():
    """include_buffers=False drops the BatchNorm running stats (8 * 32 bits) and nothing else."""
    model = Net()
    pruner = dpp.prune(model, **NET_OPTIONS)
    with_buffers = storage_report(pruner)
    without = storage_report(pruner, include_buffers=False)
    assert without["bn"].packed == FormatBits(other=8 * 32)
    assert with_buffers.packed_bits - without.packed_bits == 8 * 32
    assert not without.buffers_counted


def test_dense_fp32_is_the_original_model_and_logits_are_not_counted():
    """Dense fp32 of a pruned model = 32 * (parameters + float buffers) of the original model."""
    model = Net()
    original = sum(p.numel() for p in model.parameters())
    original += sum(b.numel() for b in model.buffers() if b.is_floating_point())
    plain = storage_report(model)
    assert plain.dense_fp32_bits == plain.packed_bits == plain.csr_bits == 32 * original
    dpp.prune(model, density=0.5)
    assert storage_report(model).dense_fp32_bits == 32 * original


def test_kept_weights_match_the_finalized_masks():
    """Kept weights are the finalized masks' kept positions; packed and CSR values = kept * b."""
    model = nn.Sequential(nn.Conv2d(4, 6, 3), nn.Flatten(), nn.Linear(6 * 4 * 4, 10))
    pruner = dpp.prune(
        model,
        granularity="kernel",
        density=0.5,
        weight_bits=3,
        overrides={"2": {"granularity": "block", "block_size": 4, "k": 1}},
    )
    model.eval()
    records = pruner.finalize()
    report = storage_report(pruner)
    for name, rec in records.items():
        assert report[name].kept_weights == int(rec.mask.sum())
        assert report[name].packed.values == 3 * int(rec.mask.sum())
        # CSR follows the mask too: a kept weight whose code rounds to 0 is still stored
        assert report[name].csr.values == 3 * int(rec.mask.sum())


def test_shared_layer_is_counted_once():
    """A layer used twice in the model is stored, and counted, once."""
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    for report in reports(model, k=1, weight_bits=4):
        assert [layer.name for layer in report.layers] == ["0"]
        assert report.dense_fp32_bits == 32 * (16 + 4)


def test_to_dict_and_table():
    """to_dict is plain JSON with per-layer and total bits; the table lists layers and totals."""
    report = reports(Net(), **NET_OPTIONS)[0]
    data = json.loads(json.dumps(report.to_dict()))
    assert data["total"]["packed_bits"] == report.packed_bits == 1720
    assert data["layers"][0]["packed"]["total"] == 344
    assert data["layers"][0]["layout"]["k"] == 2 and data["buffers_counted"] is True
    table = report.format_table()
    for name in ("fc1", "bn", "fc2", "fc3", "total", "1.53x", "k-of-n 1,720"):
        assert name in table


# ---------------------------------------------------------------- errors
def test_bad_sources_raise_clear_errors():
    """Wrong source types, a mapping without its model, or a mismatched model raise."""
    with pytest.raises(TypeError, match=r"expects a model, a dpp\.Pruner"):
        storage_report(42)
    model = Net()
    pruner = dpp.prune(model, k=2)
    records = pruner.finalize()
    with pytest.raises(TypeError, match="needs model="):
        storage_report(records)
    with pytest.raises(TypeError, match="model= is only for a mapping"):
        storage_report(pruner, model=model)
    with pytest.raises(ValueError, match="'fc1' is not a module"):
        storage_report(records, model=nn.Sequential(nn.Linear(8, 4)))
    wrong = Net()
    wrong.fc1 = nn.Linear(6, 4)
    with pytest.raises(ValueError, match="right model"):
        storage_report(records, model=wrong)
