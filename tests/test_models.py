"""Tests for dpp.experiments.models: architectures, parameter counts, registry."""

from __future__ import annotations

import fnmatch

import pytest
import torch
from torch import nn

from dpp.experiments.models import (
    MODEL_ALIASES,
    MODELS,
    create_model,
    list_models,
    num_parameters,
)

# --------------------------------------------------------------------------------------
# Parameter counts from the architecture definitions (independent of the implementation).
# --------------------------------------------------------------------------------------


def conv(cin: int, cout: int, k: int, bias: bool) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def bn(c: int) -> int:
    return 2 * c  # weight and bias; running statistics are buffers


def linear(fin: int, fout: int) -> int:
    return fin * fout + fout


VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def vgg16_count(num_classes: int) -> int:
    """13 x (conv3x3 with bias + BN), then Linear(512, num_classes)."""
    total, c = 0, 3
    for v in VGG16_CFG:
        if v != "M":
            total += conv(c, v, 3, True) + bn(v)
            c = v
    return total + linear(512, num_classes)


def resnet_count(blocks: list[int], widths: list[int], num_classes: int) -> int:
    """Stem conv3x3 + BN; per block two conv3x3 + BN, plus a 1x1 conv + BN projection
    (option B) when the shape changes; then Linear(widths[-1], num_classes)."""
    total = conv(3, widths[0], 3, False) + bn(widths[0])
    cin = widths[0]
    for stage, (n, w) in enumerate(zip(blocks, widths, strict=True)):
        for b in range(n):
            stride = 2 if stage > 0 and b == 0 else 1
            total += conv(cin, w, 3, False) + bn(w) + conv(w, w, 3, False) + bn(w)
            if stride != 1 or cin != w:
                total += conv(cin, w, 1, False) + bn(w)
            cin = w
    return total + linear(widths[-1], num_classes)


CIFAR_EXPECTED = {
    "vgg16": lambda k: vgg16_count(k),
    "resnet20": lambda k: resnet_count([3, 3, 3], [16, 32, 64], k),
    "resnet56": lambda k: resnet_count([9, 9, 9], [16, 32, 64], k),
    "resnet18": lambda k: resnet_count([2, 2, 2, 2], [64, 128, 256, 512], k),
}
# Published sizes: VGG-16 (CIFAR) ~14.7M, ResNet-20 ~0.27M, ResNet-56 ~0.85M,
# ResNet-18 (CIFAR stem) ~11.2M.
CIFAR_PUBLISHED = {"vgg16": 14.7e6, "resnet20": 0.27e6, "resnet56": 0.85e6, "resnet18": 11.2e6}


# --------------------------------------------------------------------------------------
# LeNets
# --------------------------------------------------------------------------------------


def test_lenet300_architecture():
    """LeNet-300-100 has 266,610 parameters and maps [B,1,28,28] to [B,10]."""
    model = create_model("lenet300")
    assert num_parameters(model) == 266_610
    assert [(m.in_features, m.out_features) for m in (model.fc1, model.fc2, model.fc3)] == [
        (784, 300),
        (300, 100),
        (100, 10),
    ]
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_lenet5_caffe_architecture():
    """LeNet-5-Caffe has 431,080 parameters, conv 20/50 5x5, fc 800-500-10, one ReLU."""
    model = create_model("lenet5")
    assert num_parameters(model) == 431_080
    assert (model.conv1.out_channels, model.conv2.out_channels) == (20, 50)
    assert model.conv1.kernel_size == model.conv2.kernel_size == (5, 5)
    assert (model.fc1.in_features, model.fc1.out_features) == (800, 500)
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 1
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_lenet300_on_digits():
    """lenet300 adapts its first layer to an 8x8 input (64 features)."""
    model = create_model("lenet-300-100", input_shape=(1, 8, 8))
    assert model.fc1.in_features == 64
    assert num_parameters(model) == linear(64, 300) + linear(300, 100) + linear(100, 10)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_lenet5_other_sizes():
    """lenet5 computes its flatten size from input_shape and rejects too-small inputs."""
    model = create_model("lenet5", num_classes=7, input_shape=(3, 32, 32))
    assert model.fc1.in_features == 50 * 5 * 5
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    with pytest.raises(ValueError, match="16x16"):
        create_model("lenet5", input_shape=(1, 8, 8))


# --------------------------------------------------------------------------------------
# CIFAR models
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CIFAR_EXPECTED))
def test_cifar_model_param_counts(name):
    """CIFAR models have exactly the parameter count of their architecture formula, close
    to the published size, for 10 and 100 classes."""
    for k in (10, 100):
        model = create_model(name, num_classes=k)
        assert num_parameters(model) == CIFAR_EXPECTED[name](k)
    ten = CIFAR_EXPECTED[name](10)
    assert abs(ten - CIFAR_PUBLISHED[name]) / CIFAR_PUBLISHED[name] < 0.02


@pytest.mark.parametrize("name", sorted(CIFAR_EXPECTED))
def test_cifar_model_forward_backward(name):
    """A [2,3,32,32] batch gives [2,num_classes] logits and gradients reach every parameter."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=100)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 100)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_resnet_shortcuts_option_b():
    """Shape-changing ResNet blocks use a 1x1 conv + BN projection; others are identity."""
    model = create_model("resnet20")
    assert model.layer1[0].downsample is None
    proj = model.layer2[0].downsample
    assert isinstance(proj[0], nn.Conv2d) and proj[0].kernel_size == (1, 1)
    assert proj[0].stride == (2, 2) and isinstance(proj[1], nn.BatchNorm2d)
    assert [len(model.layer1), len(model.layer2), len(model.layer3)] == [3, 3, 3]


def test_resnet18_stem_and_stage_names():
    """ResNet-18 uses a 3x3 stride-1 stem, no max-pool, and stages layer1..layer4 that
    glob patterns can select."""
    model = create_model("resnet18")
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    layer4 = fnmatch.filter(names, "layer4.*")
    assert len(layer4) == 5  # 2 blocks x 2 convs + 1 projection
    assert len(fnmatch.filter(names, "layer3.*")) == 5
    assert len(names) == 1 + 4 * 4 + 3


def test_vgg16_layout():
    """VGG-16 has 13 conv3x3 layers each followed by BN, 5 max-pools and one Linear."""
    model = create_model("vgg16")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [v for v in VGG16_CFG if v != "M"]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 13
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 5
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 10)]


def test_in_channels():
    """in_channels changes the first layer's input channels."""
    model = create_model("resnet20", in_channels=1)
    assert model.conv1.in_channels == 1
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


# --------------------------------------------------------------------------------------
# registry and module structure
# --------------------------------------------------------------------------------------


def test_registry_names_and_aliases():
    """list_models gives the registry names; every alias builds the same architecture."""
    assert list_models() == sorted(MODELS)
    assert {"lenet300", "lenet5", "vgg16", "resnet20", "resnet56", "resnet18"} <= set(MODELS)
    for alias in ("lenet-300-100", "lenet-5-caffe", "LeNet-5-Caffe"):
        target = MODEL_ALIASES[alias.lower()]
        assert num_parameters(create_model(alias)) == num_parameters(create_model(target))


def test_unknown_model_lists_names():
    """An unknown model name raises ValueError listing the valid names."""
    with pytest.raises(ValueError) as exc:
        create_model("alexnet")
    for name in list_models():
        assert name in str(exc.value)


@pytest.mark.parametrize("name", ["lenet300", "lenet5", "resnet20"])
def test_parameters_live_in_standard_modules(name):
    """Every parameter belongs to a plain nn.Conv2d, nn.Linear or nn.BatchNorm2d."""
    model = create_model(name)
    owners = {
        f"{mod_name}.{p_name}".lstrip(".")
        for mod_name, mod in model.named_modules()
        if isinstance(mod, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))
        for p_name, _ in mod.named_parameters(recurse=False)
    }
    assert owners == {n for n, _ in model.named_parameters()}


def test_lenet_layer_names():
    """The LeNets expose fc1/fc2/fc3 and conv1/conv2/fc1/fc2 for glob selection."""
    lenet300 = dict(create_model("lenet300").named_modules())
    assert all(isinstance(lenet300[n], nn.Linear) for n in ("fc1", "fc2", "fc3"))
    lenet5 = dict(create_model("lenet5").named_modules())
    assert all(isinstance(lenet5[n], nn.Conv2d) for n in ("conv1", "conv2"))
    assert all(isinstance(lenet5[n], nn.Linear) for n in ("fc1", "fc2"))
