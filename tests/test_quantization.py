"""Tests of joint weight and activation quantization (method.md s.5) through dpp.prune/finalize."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dpp
from conftest import make_nonzero_
from dpp.quantization import ActivationQuantizer, QuantSpec, fake_quantize

BITS = [8, 4, 3, 2]


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one thread is faster, and far faster on a shared, loaded CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4))


class Net(nn.Module):
    """fc1 -> fc2 -> fc3, named like the overrides in the docs."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 12)
        self.fc2 = nn.Linear(12, 8)
        self.fc3 = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def finalize_one(layer: nn.Module, **options) -> dpp.FinalizedLayer:
    """Prune and quantize a one-layer model, finalize it, return the layer's record."""
    model = nn.Sequential(make_nonzero_(layer))
    pruner = dpp.prune(model, **options)
    model.eval()
    return pruner.finalize()["0"]


def kept_per_channel(weight: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    return [
        w[m]
        for w, m in zip(weight.reshape(len(weight), -1), mask.reshape(len(mask), -1), strict=True)
    ]


# ---------------------------------------------------------------- finalized values
@pytest.mark.parametrize("bits", BITS)
def test_kept_weights_take_few_values_per_channel(bits):
    """After finalize each output channel's kept weights take at most 2^b - 1 distinct values."""
    layer = nn.Linear(1024, 4)  # 512 kept per channel: more than the 255 levels of 8 bits
    rec = finalize_one(layer, density=0.5, weight_bits=bits)
    for kept in kept_per_channel(layer.weight, rec.mask):
        assert kept.numel() == 512
        assert kept.unique().numel() <= 2**bits - 1


def test_binary_weights_are_ternary_with_one_magnitude_per_channel():
    """Binary: every channel's kept weights share one magnitude; the weight is {-s, 0, +s}."""
    layer = nn.Conv2d(4, 6, 3)
    rec = finalize_one(layer, granularity="kernel", k=2, weight_bits="binary")
    assert set(rec.codes.unique().tolist()) == {-1, 0, 1}
    for c, kept in enumerate(kept_per_channel(layer.weight, rec.mask)):
        assert kept.abs().unique().tolist() == [rec.scale[c].item()]
        assert (kept != 0).all()
    assert (layer.weight[~rec.mask] == 0).all()


@pytest.mark.parametrize("bits", [*BITS, "binary"])
@pytest.mark.parametrize("scale", ["channel", "tensor"])
def test_codes_fit_and_weight_is_scale_times_codes(bits, scale):
    """Codes are int8 within +-(2^(b-1)-1), the weight is exactly scale*codes, pruned are 0."""
    layer = nn.Conv2d(3, 8, 3)
    rec = finalize_one(layer, density=0.3, weight_bits=bits, quant_scale=scale)
    levels = 1 if bits == "binary" else 2 ** (bits - 1) - 1
    assert rec.codes.dtype == torch.int8
    assert rec.codes.abs().max().item() == levels  # the largest kept weight sets the scale
    assert torch.equal(layer.weight, rec.scale * rec.codes.to(rec.scale.dtype))
    assert (layer.weight[~rec.mask] == 0).all() and (rec.codes[~rec.mask] == 0).all()
    expected_scales = 8 if scale == "channel" else 1
    assert rec.scale.numel() == expected_scales and rec.scale.dim() == layer.weight.dim()


def test_filter_level_keeps_scale_times_codes_and_zero_units():
    """Filter-level pruning with 4 bits: pruned feature maps and their biases are exactly zero."""
    layer = nn.Conv2d(3, 8, 3)
    rec = finalize_one(layer, granularity="filter", k=3, weight_bits=4)
    kept_units = rec.mask.reshape(8, -1).all(1)
    assert kept_units.sum() == 3
    assert (layer.weight[~kept_units] == 0).all() and (layer.bias[~kept_units] == 0).all()
    assert torch.equal(layer.weight, rec.scale * rec.codes.float())


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("bits", [4, "binary"])
@pytest.mark.parametrize("make", [lambda: nn.Linear(10, 6), lambda: nn.Conv2d(3, 4, 3)])
def test_gradients_reach_weights_and_logits(bits, make):
    """Through the quantizer, a training-mode loss gives nonzero weight and logit gradients."""
    layer = make()
    model = nn.Sequential(layer)
    dpp.prune(model, density=0.5, weight_bits=bits)
    x = torch.randn(5, 10) if isinstance(layer, nn.Linear) else torch.randn(2, 3, 6, 6)
    (model(x) ** 2).sum().backward()
    wrapped = model[0]
    assert wrapped.weight.grad is not None and wrapped.weight.grad.abs().sum() > 0
    assert wrapped.dpp.logits.grad is not None and wrapped.dpp.logits.grad.abs().sum() > 0


@pytest.mark.parametrize("bits", BITS)
def test_uniform_ste_passes_every_weight_within_the_scale(bits):
    """With s = max|w|/L no weight is clipped: the STE gradient is 1 everywhere, channel max too."""
    w = torch.randn(500, 32, requires_grad=True)  # rounding puts w/s at L + 1 ulp in ~10% of rows
    fake_quantize(w, QuantSpec(bits)).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_uniform_ste_is_zero_outside_the_clip_range():
    """Values beyond the fixed range (eval activation quantizer, max 1) get zero gradient."""
    quant = ActivationQuantizer(8).eval()
    quant.running_max.fill_(1.0)
    x = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.3, 1.0, 1.5], requires_grad=True)
    y = quant(x)
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    assert y[0].item() == -1.0 and y[-1].item() == 1.0  # clipped to the range


def test_uniform_ste_zero_for_batch_values_beyond_the_running_range():
    """In training the range is an average: a batch outlier beyond it is clipped, no gradient."""
    quant = ActivationQuantizer(8, momentum=0.1).train()
    quant(torch.tensor([1.0, -1.0]))  # running max 1
    x = torch.tensor([5.0, 0.5], requires_grad=True)
    quant(x).sum().backward()  # running max 1 + 0.1 * (5 - 1) = 1.4 < 5
    assert quant.running_max.item() == pytest.approx(1.4)
    assert x.grad.tolist() == [0.0, 1.0]


def test_binary_ste_is_zero_outside_the_hard_tanh_window():
    """Binary: gradient 1 where |w| <= 1, 0 where |w| > 1 (hard-tanh straight-through)."""
    w = torch.tensor([[-2.0, -1.0, -0.3, 0.4, 1.0, 1.2]], requires_grad=True)
    out = fake_quantize(w, QuantSpec("binary"))
    out.sum().backward()
    assert w.grad.tolist() == [[0.0, 1.0, 1.0, 1.0, 1.0, 0.0]]
    s = w.detach().abs().mean()
    assert torch.equal(out.detach(), s * torch.sign(w.detach()))


def test_binary_scale_is_the_mean_of_kept_magnitudes():
    """Only kept weights set (and count towards) the binary scale."""
    w = torch.tensor([[0.0, 2.0, 0.0, -4.0]])
    kept = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    out = fake_quantize(w, QuantSpec("binary"), kept)
    assert out.tolist() == [[0.0, 3.0, 0.0, -3.0]]


# ---------------------------------------------------------------- quantize-only layers
def test_quantize_only_layer_has_no_logits_or_mask():
    """An override {weight_bits: 8, prune: False} quantizes fc3 without logits or mask."""
    model = make_nonzero_(Net())
    pruner = dpp.prune(
        model, density=0.25, weight_bits=4, overrides={"fc3": {"weight_bits": 8, "prune": False}}
    )
    assert model.fc3.dpp is None and model.fc3.dpp_layout is None
    assert model.fc3.dpp_quant == QuantSpec(8)
    assert "fc3.dpp.logits" not in model.state_dict()
    x = torch.randn(6, 16)
    model(x).sum().backward()
    assert model.fc3.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        before = model(x)
    rec = pruner.finalize()["fc3"]
    assert rec.mask is None and rec.layout is None
    assert (model.fc3.weight != 0).all()
    assert torch.equal(model.fc3.weight, rec.scale * rec.codes.float())
    for kept in model.fc3.weight:
        assert kept.unique().numel() <= 255
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_quantize_only_model_without_density():
    """weight_bits alone (no density or k) quantizes every layer and prunes none."""
    model = mlp()
    pruner = dpp.prune(model, weight_bits=3)
    records = pruner.finalize()
    assert all(r.mask is None and r.codes is not None for r in records.values())
    assert all(r.codes.abs().max() <= 3 for r in records.values())


# ---------------------------------------------------------------- activations
def test_activation_quantization_outputs_lie_on_the_8bit_grid():
    """The quantized input is scale * integer with |integer| <= 127."""
    quant = ActivationQuantizer(8).train()
    x = torch.randn(64, 10) * 3
    y = quant(x)
    s = quant.scale()
    codes = (y / s).round()
    assert torch.equal(y, s * codes)
    assert codes.abs().max() <= 127
    assert y.unique().numel() <= 255


def test_activation_running_max_updates_in_training_only():
    """The range follows the batches in training mode and is frozen in eval mode."""
    model = mlp()
    dpp.prune(model, density=0.5, activation_bits=8)
    act = model[0].dpp_act
    assert act.running_max.item() == 0.0
    model(torch.randn(8, 16))
    first = act.running_max.item()
    assert first > 0
    model(torch.randn(8, 16) * 10)
    second = act.running_max.item()
    assert second > first
    model.eval()
    model(torch.randn(8, 16) * 100)
    assert act.running_max.item() == second


def test_finalize_keeps_eval_outputs_with_activation_quantization():
    """Finalize (baked mask, codes, fixed input quantizer) leaves eval outputs bit-identical."""
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 10))
    pruner = dpp.prune(
        model, density=0.3, weight_bits=4, activation_bits=8, overrides={"3": {"weight_bits": 8}}
    )
    for _ in range(3):
        model(torch.randn(4, 3, 6, 6))
    model.eval()
    x = torch.randn(5, 3, 6, 6)
    with torch.no_grad():
        before = model(x)
    records = pruner.finalize()
    assert all(r.activation_scale is not None for r in records.values())
    with torch.no_grad():
        assert torch.equal(model(x), before)


# ---------------------------------------------------------------- learning
def test_pruned_4bit_mlp_learns_digits():
    """An MLP at 10% density per neuron with 4-bit weights learns sklearn digits (> 0.7)."""
    datasets = pytest.importorskip("sklearn.datasets")
    x, y = datasets.load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) / 16
    y = torch.tensor(y)
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=gen)
    train, test = perm[:1400], perm[1400:]
    model = nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
    )
    pruner = dpp.prune(
        model, density=0.1, weight_bits=4, noise_scale=0.1, overrides={"4": {"density": 0.5}}
    )
    assert [r.k for r in pruner.rows()] == [6, 13, 32]
    opt = torch.optim.Adam(pruner.param_groups(lr=1e-2, logit_lr=5e-2))
    for _ in range(6):
        order = train[torch.randperm(len(train), generator=gen)]
        for i in range(0, len(order), 64):
            batch = order[i : i + 64]
            loss = F.cross_entropy(model(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            pruner.step()
    model.eval()
    records = pruner.finalize()
    with torch.no_grad():
        accuracy = (model(x[test]).argmax(1) == y[test]).float().mean().item()
    assert accuracy > 0.7
    assert records["0"].mask.sum(1).eq(6).all() and records["0"].codes.abs().max() <= 7


# ---------------------------------------------------------------- bad settings
@pytest.mark.parametrize("bits", [1, 9, 0, "int4", 4.0, True])
def test_bad_weight_bits_are_rejected(bits):
    """weight_bits other than 2..8 or 'binary' raises a ValueError naming the valid values."""
    with pytest.raises(ValueError, match="2 to 8 or 'binary'"):
        dpp.DPPConfig(density=0.1, weight_bits=bits)
    with pytest.raises(ValueError, match="2 to 8 or 'binary'"):
        dpp.prune(mlp(), density=0.1, weight_bits=bits)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"weight_bits": 1}, "2 to 8 or 'binary'"),
        ({"activation_bits": 4}, "activation_bits must be None or 8"),
    ],
)
def test_bad_override_raises(override, message):
    """A bad weight_bits or activation_bits in an override raises a ValueError."""
    with pytest.raises(ValueError, match=message):
        dpp.prune(Net(), density=0.1, overrides={"fc3": override})


@pytest.mark.parametrize("override", [{"weight_bits": 1}, {"activation_bits": 4}])
def test_bad_override_leaves_the_model_untouched(override):
    """A bad override on the last layer raises before any layer of the model is replaced."""
    model = Net()
    with pytest.raises(ValueError):
        dpp.prune(model, density=0.1, overrides={"fc3": override})
    assert not any(dpp.is_dpp_layer(m) for m in model.modules())


def test_bad_quant_scale_is_rejected():
    """quant_scale other than 'channel'/'tensor' raises, globally or in an override."""
    with pytest.raises(ValueError, match="'channel', 'tensor'"):
        dpp.prune(mlp(), density=0.1, weight_bits=4, quant_scale="row")
    with pytest.raises(ValueError, match="'channel', 'tensor'"):
        dpp.prune(Net(), density=0.1, overrides={"fc2": {"weight_bits": 4, "quant_scale": "row"}})
    with pytest.raises(ValueError, match="'channel', 'tensor'"):
        QuantSpec(4, "row")


@pytest.mark.parametrize("bits", [4, 16, "8"])
def test_bad_activation_bits_are_rejected(bits):
    """activation_bits other than 8 raises, globally or in an override."""
    with pytest.raises(ValueError, match="activation_bits must be None or 8"):
        dpp.prune(mlp(), density=0.1, activation_bits=bits)
    with pytest.raises(ValueError, match="activation_bits must be None or 8"):
        dpp.prune(Net(), density=0.1, overrides={"fc1": {"activation_bits": bits}})


def test_override_on_an_excluded_layer_names_the_pattern():
    """Setting weight_bits on an excluded layer raises an error naming the override pattern."""
    with pytest.raises(ValueError, match="override 'fc3' matches only excluded layers"):
        dpp.prune(Net(), density=0.1, exclude=["fc3"], overrides={"fc3": {"weight_bits": "binary"}})
