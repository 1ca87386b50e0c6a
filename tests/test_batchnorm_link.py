"""Filter masks through BatchNorm: pruned feature maps are zero after their BatchNorm."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import dpp
from dpp.batchnorm import linked_batchnorms


class ConvBN(nn.Module):
    def __init__(self, affine: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8, affine=affine)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6, affine=affine)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.bn1(self.conv1(x)))
        b = torch.relu(self.bn2(self.conv2(a)))
        return self.fc(b.mean((2, 3)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn1(self.conv1(x))


def _pruned(**kw) -> tuple[ConvBN, dpp.Pruner]:
    torch.manual_seed(0)
    model = ConvBN()
    with torch.no_grad():  # a BatchNorm shift that would show if the mask stopped at the conv
        for bn in (model.bn1, model.bn2):
            bn.bias.uniform_(0.5, 1.0)
    pruner = dpp.prune(
        model,
        granularity="filter",
        density=0.5,
        exclude=["fc"],
        example_inputs=torch.randn(2, 3, 8, 8),
        **kw,
    )
    return model, pruner


def test_links_every_conv_to_the_batchnorm_after_it():
    """One forward pass links conv1 -> bn1 and conv2 -> bn2 (and nothing else)."""
    _, pruner = _pruned()
    assert pruner.batchnorm_links == {"conv1": "bn1", "conv2": "bn2"}


@pytest.mark.parametrize("training", [True, False])
def test_pruned_feature_maps_are_zero_after_the_batchnorm(training):
    """In training (sampled masks) and eval mode, the pruned channels of bn1's output are 0
    and the kept ones are not."""
    model, _ = _pruned()
    model.train(training)
    x = torch.randn(4, 3, 8, 8)
    out = model.features(x)
    channels = model.conv1._dpp_channel_mask.bool()
    assert int(channels.sum()) == 4
    assert torch.equal(out[:, ~channels], torch.zeros_like(out[:, ~channels]))
    assert (out[:, channels].abs().sum((0, 2, 3)) > 0).all()


def test_finalize_zeroes_batchnorm_affine_and_keeps_outputs():
    """finalize() zeroes the BatchNorm weight and bias of pruned channels and removes the
    hooks; the plain model computes what the pruned model computed in eval mode."""
    model, pruner = _pruned()
    model.train()
    for _ in range(3):  # move the running statistics
        model(torch.randn(8, 3, 8, 8))
    model.eval()
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        before = model(x)
    records = pruner.finalize()
    assert not linked_batchnorms(model)
    pruned = ~records["conv1"].mask[:, 0, 0, 0]
    assert torch.equal(model.bn1.weight[pruned], torch.zeros(4))
    assert torch.equal(model.bn1.bias[pruned], torch.zeros(4))
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=1e-6)
        assert torch.equal(model.features(x)[:, pruned], torch.zeros(5, 4, 8, 8))
    dense = ConvBN()
    dense.load_state_dict(model.state_dict(), strict=True)


def test_without_example_inputs_a_warning_says_how_to_link():
    """Filter pruning of a model with BatchNorm and no example inputs warns and links nothing."""
    with pytest.warns(UserWarning, match="pass example_inputs"):
        pruner = dpp.prune(ConvBN(), granularity="filter", density=0.5, exclude=["fc"])
    assert pruner.batchnorm_links == {}


def test_no_warning_without_filter_granularity():
    """Weight-level pruning of the same model does not warn."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dpp.prune(ConvBN(), granularity="weight", density=0.5)


def test_non_affine_batchnorm_is_not_linked():
    """A BatchNorm without weight and bias cannot hold the mask after finalize: not linked."""
    pruner = dpp.prune(
        ConvBN(affine=False),
        granularity="filter",
        density=0.5,
        exclude=["fc"],
        example_inputs=torch.randn(1, 3, 8, 8),
    )
    assert pruner.batchnorm_links == {}


def test_copy_keeps_the_links():
    """Pruner.copy() keeps working links on the copied model."""
    _, pruner = _pruned()
    twin = pruner.copy()
    assert len(linked_batchnorms(twin.model)) == 2
    twin.model.eval()
    out = twin.model.features(torch.randn(2, 3, 8, 8))
    channels = twin.model.conv1._dpp_channel_mask.bool()
    assert torch.equal(out[:, ~channels], torch.zeros_like(out[:, ~channels]))


def test_shrink_removes_every_pruned_channel_when_linked():
    """With the masks linked through BatchNorm (a nonzero shift included), shrink() removes
    every pruned channel and keeps the outputs."""
    from dpp import export

    model, pruner = _pruned()
    model.eval()
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
    small = export.shrink(pruner, x)
    assert small.conv1.out_channels == 4 and small.bn1.num_features == 4
    assert small.conv2.in_channels == 4 and small.conv2.out_channels == 3
    with torch.no_grad():
        assert torch.allclose(small(x), expected, atol=1e-5)
