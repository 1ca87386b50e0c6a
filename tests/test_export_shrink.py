"""Tests for dpp.export.shrink: physical removal of filter-pruned channels."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
from torch import nn

import dpp
from dpp.export import shrink

# These tests prune filters without example inputs on purpose: shrink() must handle the
# BatchNorm shift of unlinked masks (dpp.prune warns about it).
pytestmark = pytest.mark.filterwarnings("ignore:filter-level pruning of a model with BatchNorm")


needs_tp = pytest.mark.skipif(
    importlib.util.find_spec("torch_pruning") is None,
    reason="shrink needs Torch-Pruning (pip install torch-pruning)",
)


class Block(nn.Module):
    """conv-BN-ReLU-conv-BN plus the shortcut (identity, or 1x1 conv + BN), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.down is None else self.down(x)))


class TinyResNet(nn.Module):
    """Stem (conv 8 + BN) -> 2 identity blocks (8) -> 1 downsampling block (16) -> pool -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(Block(8, 8), Block(8, 8))
        self.layer2 = Block(8, 16, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Trained-looking BatchNorm statistics and affine parameters (nonzero shifts)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(1 + 0.3 * torch.randn(c, generator=gen))
                m.bias.copy_(0.3 * torch.randn(c, generator=gen))
                m.running_mean.copy_(0.3 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))


def assert_equal_outputs(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert ya.shape == yb.shape
    assert (ya - yb).abs().max() <= 1e-5 * yb.abs().max()


def _producers_dead(pruner, names):
    return [~pruner.layers[n].dpp_masks().reshape(pruner.layers[n].weight.shape[0], -1)[:, 0]
            for n in names]  # fmt: skip


STREAM = ["conv", "layer1.0.conv2", "layer1.1.conv2"]  # producers of the first residual stream


@needs_tp
@pytest.mark.parametrize("random_bn", [False, True])
def test_shrunk_residual_cnn_equals_masked(random_bn):
    """A filter-pruned residual CNN with BN shrinks to fewer parameters with identical outputs."""
    torch.manual_seed(0)
    model = TinyResNet()
    if random_bn:
        randomize_bn(model)
    pruner = dpp.prune(model, granularity="filter", density=0.5, exclude=["fc"])
    model.eval()
    x = torch.randn(2, 3, 12, 12)
    small, report = shrink(pruner, x, report=True)
    pruner.finalize()
    assert_equal_outputs(small, model, x)
    assert report.params_after < report.params_before
    assert report.flops_after < report.flops_before
    assert not any(dpp.is_dpp_layer(m) for m in small.modules())
    # Block-internal channels are not coupled: with fresh BN all pruned ones go.
    if not random_bn:
        assert small.layer1[0].conv1.out_channels == 4
        assert small.layer1[0].conv2.in_channels == 4


@needs_tp
def test_coupled_channels_removed_only_where_dead_in_every_producer():
    """Residual-coupled channels go only if pruned in all producers (intersection of masks)."""
    torch.manual_seed(1)
    model = TinyResNet()
    pruner = dpp.prune(model, granularity="filter", density=0.5, exclude=["fc"])
    model.eval()
    dead = torch.stack(_producers_dead(pruner, STREAM)).all(0)
    small = shrink(pruner, torch.randn(2, 3, 8, 8))
    width = 8 - int(dead.sum())
    assert small.conv.out_channels == width
    assert small.layer1[0].conv2.out_channels == width
    assert small.layer1[1].conv1.in_channels == width
    assert small.layer2.down[0].in_channels == width


@needs_tp
def test_identical_coupled_masks_remove_all_their_channels():
    """When the coupled layers share one mask, every pruned channel of the stream is removed."""
    torch.manual_seed(2)
    model = TinyResNet()
    pruner = dpp.prune(model, granularity="filter", density=0.5, exclude=["fc"])
    with torch.no_grad():
        logits = pruner.layers["conv"].dpp.logits
        for name in STREAM[1:]:
            pruner.layers[name].dpp.logits.copy_(logits)
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    small = shrink(model, x)
    assert small.conv.out_channels == 4
    pruner.finalize()
    assert_equal_outputs(small, model, x)


@needs_tp
def test_bn_shift_into_padded_conv_is_kept_unless_inexact_allowed():
    """A nonzero BN constant into a padded conv is kept (exact) or folded (exact=False)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1)
    )
    pruner = dpp.prune(model, granularity="filter", k=4, exclude=["3"])
    dead = ~model[0].dpp_masks()[:, 0, 0, 0]
    with torch.no_grad():
        model[1].bias.copy_(torch.where(dead, 0.5, 0.0))  # relu(0.5) = 0.5 on every pruned channel
        model[1].bias[dead.nonzero()[0]] = -1.0  # ... but one: relu(-1) = 0, removable
    model.eval()
    x = torch.randn(2, 3, 6, 6)
    small, report = shrink(pruner, x, report=True)
    assert small[0].out_channels == 7  # 4 kept + 3 pruned with a nonzero constant
    assert report.groups[0].kept_dead == 3
    assert "padded" in report.groups[0].reason
    loose, loose_report = shrink(pruner, x, exact=False, report=True)
    assert loose[0].out_channels == 4
    pruner.finalize()
    assert_equal_outputs(small, model, x)
    with torch.no_grad():  # interior outputs (away from the zero padding) are exact
        diff = (loose(x) - model(x))[..., 1:-1, 1:-1].abs().max()
    assert diff <= 1e-5 * model(x).abs().max()
    assert loose_report.max_abs_error > 0


@needs_tp
def test_constant_into_linear_is_folded_exactly():
    """A nonzero constant channel feeding a Linear (after pooling) is folded into its bias."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 3),
    )  # fmt: skip
    randomize_bn(model)
    with torch.no_grad():
        model[1].bias.abs_()  # every pruned channel is a positive constant after the ReLU
    pruner = dpp.prune(model, granularity="filter", k=3, exclude=["5"])
    model.eval()
    x = torch.randn(2, 3, 6, 6)
    small, report = shrink(pruner, x, report=True)
    assert small[0].out_channels == 3 and small[5].in_features == 3
    assert report.groups[0].folded == 5
    pruner.finalize()
    assert_equal_outputs(small, model, x)


@needs_tp
def test_mlp_hidden_units_are_removed():
    """Filter pruning of Linear layers removes hidden units (and the next layer's inputs)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3)
    )
    pruner = dpp.prune(model, granularity="filter", density=0.25, exclude=["4"])
    model.eval()
    x = torch.randn(4, 20)
    small = shrink(pruner, x)
    assert (small[0].out_features, small[2].in_features, small[2].out_features) == (4, 4, 3)
    pruner.finalize()
    assert_equal_outputs(small, model, x)


@needs_tp
def test_output_layer_is_never_shrunk():
    """A filter-pruned last layer keeps its outputs (they are the model's output)."""
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))
    pruner = dpp.prune(model, granularity="filter", density=0.5)
    model.eval()
    x = torch.randn(3, 8)
    small = shrink(pruner, x)
    assert small[2].out_features == 4 and small[0].out_features == 3
    pruner.finalize()
    assert_equal_outputs(small, model, x)


@needs_tp
@pytest.mark.parametrize(("name", "size"), [("resnet20", 16), ("vgg16", 32)])
def test_registry_models_shrink_exactly(name, size):
    """The registry's ResNet-20 and VGG-16 (50% filters, trained-looking BN) shrink exactly."""
    models = pytest.importorskip("dpp.experiments.models")
    torch.manual_seed(0)
    model = models.create_model(name)
    randomize_bn(model)
    pruner = dpp.prune(
        model,
        granularity="filter",
        density=0.5,
        exclude=["fc" if name != "vgg16" else "classifier"],
    )
    model.eval()
    x = torch.randn(2, 3, size, size)
    small, report = shrink(pruner, x, report=True)
    pruner.finalize()
    assert_equal_outputs(small, model, x)
    assert report.removed > 0 and report.params_after < report.params_before


def test_missing_torch_pruning_gives_install_hint(monkeypatch):
    """Without Torch-Pruning, shrink raises ImportError naming pip install dpp[shrink]."""
    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    pruner = dpp.prune(model, granularity="filter", density=0.5)
    with pytest.raises(ImportError, match=r"pip install dpp\[shrink\].*torch-pruning"):
        shrink(pruner, torch.randn(1, 4))


@needs_tp
def test_shrink_needs_masks():
    """A plain model carries no masks: shrink asks for the Pruner."""
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="Pruner"):
        shrink(model, torch.randn(1, 4))


class CatNet(nn.Module):
    """Two filter-pruned branches concatenated into one conv: index maps through torch.cat."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.bna = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(3, 6, 1)
        self.bnb = nn.BatchNorm2d(6)
        self.c = nn.Conv2d(14, 10, 3, padding=1)
        self.fc = nn.Linear(10, 3)

    def forward(self, x):
        y = torch.cat([torch.relu(self.bna(self.a(x))), torch.relu(self.bnb(self.b(x)))], 1)
        return self.fc(torch.relu(self.c(y)).mean((2, 3)))


@needs_tp
@pytest.mark.parametrize("seed", [0, 2])
def test_concatenated_branches_shrink_exactly(seed):
    """Channels of concatenated branches are removed at the right offsets of the consumer."""
    torch.manual_seed(seed)
    model = CatNet()
    randomize_bn(model, seed)
    pruner = dpp.prune(model, granularity="filter", density=0.5, exclude=["fc"])
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    small, report = shrink(pruner, x, report=True)
    assert small.c.in_channels == small.a.out_channels + small.b.out_channels < 14
    assert report.removed > 0
    pruner.finalize()
    assert_equal_outputs(small, model, x)
