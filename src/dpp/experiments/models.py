"""Reference models used in the DPP experiments, selectable by name.

All models are built from plain ``nn.Conv2d`` / ``nn.Linear`` / ``nn.BatchNorm2d``
attributes with stable, readable names (``fc1``, ``conv1``, ``layer3.1.conv2`` ...), so
pruning can select layers with glob patterns on ``model.named_modules()`` names.

=================  =========================================  ==============
name (aliases)     architecture                               parameters
=================  =========================================  ==============
``lenet300``       LeNet-300-100 (MLP)                        266,610 (28x28)
``lenet5``         LeNet-5, Caffe variant                     431,080 (28x28)
``vgg16``          VGG-16 with batch norm, CIFAR variant      14,728,266
``resnet20``       ResNet-20 for CIFAR (option-B shortcuts)   272,474
``resnet56``       ResNet-56 for CIFAR (option-B shortcuts)   855,770
``resnet18``       ResNet-18 with the CIFAR stem              11,173,962
=================  =========================================  ==============

(CIFAR counts are for 10 classes.)

Example::

    >>> import torch
    >>> from dpp.experiments.models import create_model
    >>> model = create_model("lenet300")
    >>> model(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from .registry import Registry

__all__ = [
    "MODELS",
    "MODEL_ALIASES",
    "REGISTRY",
    "VGG",
    "BasicBlock",
    "CifarResNet",
    "LeNet5",
    "LeNet300",
    "create_model",
    "list_models",
    "num_parameters",
    "register_model",
    "resnet18",
    "resnet20",
    "resnet56",
    "vgg16",
]

Shape = tuple[int, int, int]


def _check_shape(input_shape: Sequence[int]) -> Shape:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) with positive sizes, got {input_shape}")
    return shape  # type: ignore[return-value]


def num_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (optionally only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# --------------------------------------------------------------------------------------
# LeNets
# --------------------------------------------------------------------------------------


class LeNet300(nn.Module):
    """LeNet-300-100: a 3-layer MLP (LeCun et al. 1998; Han et al. 2015).

    ``Flatten -> fc1 Linear(D, 300) -> ReLU -> fc2 Linear(300, 100) -> ReLU ->
    fc3 Linear(100, num_classes)`` with ``D = C*H*W``; 266,610 parameters for 28x28x1.

    Args:
        num_classes: output size.
        input_shape: ``(C, H, W)`` of the input, e.g. ``(1, 8, 8)`` for sklearn digits.

    Shapes:
        input ``[B, C, H, W]`` (or already flat ``[B, C*H*W]``) -> logits ``[B, num_classes]``.
    """

    def __init__(self, num_classes: int = 10, input_shape: Sequence[int] = (1, 28, 28)) -> None:
        super().__init__()
        self.input_shape = _check_shape(input_shape)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(math.prod(self.input_shape), 300)
        self.relu1 = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(300, 100)
        self.relu2 = nn.ReLU(inplace=True)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)
        x = self.relu1(self.fc1(x))
        x = self.relu2(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """LeNet-5 as in Caffe's ``examples/mnist/lenet_train_test.prototxt``.

    ``conv1 Conv2d(C, 20, 5) -> pool1 MaxPool2d(2) -> conv2 Conv2d(20, 50, 5) ->
    pool2 MaxPool2d(2) -> Flatten -> fc1 Linear(800, 500) -> ReLU ->
    fc2 Linear(500, num_classes)``.

    As in Caffe there is no non-linearity after the convolutions: the only ReLU follows
    ``fc1``. (Activations have no parameters, so the count — 431,080 on 28x28x1 — is the
    same either way.) The flatten size ``50 * h * w`` is computed from ``input_shape``
    (``h = ((H - 4) // 2 - 4) // 2``, 4x4 for 28x28).

    Args:
        num_classes: output size.
        input_shape: ``(C, H, W)``; ``H`` and ``W`` must be at least 16.

    Shapes:
        input ``[B, C, H, W]`` -> logits ``[B, num_classes]``.
    """

    def __init__(self, num_classes: int = 10, input_shape: Sequence[int] = (1, 28, 28)) -> None:
        super().__init__()
        c, h, w = self.input_shape = _check_shape(input_shape)
        fh, fw = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
        if fh < 1 or fw < 1:
            raise ValueError(f"LeNet5 needs inputs of at least 16x16, got {h}x{w}")
        self.conv1 = nn.Conv2d(c, 20, kernel_size=5)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(50 * fh * fw, 500)
        self.relu1 = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(x))
        x = self.relu1(self.fc1(self.flatten(x)))
        return self.fc2(x)


# --------------------------------------------------------------------------------------
# VGG-16 (CIFAR)
# --------------------------------------------------------------------------------------

_VGG16_CFG: list[int | str] = [
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
]  # fmt: skip


class VGG(nn.Module):
    """VGG with batch norm, CIFAR variant (as in e.g. kuangliu/pytorch-cifar).

    Each number in ``cfg`` is a ``conv3x3(pad 1, with bias) -> BatchNorm2d -> ReLU``
    block, each ``"M"`` a ``MaxPool2d(2)``. Layers live in ``features`` with names
    ``conv{stage}_{i}``, ``bn{stage}_{i}``, ``relu{stage}_{i}``, ``pool{stage}``
    (e.g. ``features.conv5_3``). The classifier is a single ``Linear(512, num_classes)``
    named ``classifier`` (the standard CIFAR choice, instead of ImageNet's 3 FC layers),
    preceded by an ``AdaptiveAvgPool2d(1)`` that is the identity for 32x32 inputs (the
    feature map is already 1x1) and lets the model run on larger inputs.

    Args:
        cfg: layer configuration.
        num_classes: output size.
        in_channels: input channels.

    Shapes:
        input ``[B, C, H, W]`` (H, W >= 32 for the 5 poolings) -> logits ``[B, num_classes]``.
    """

    def __init__(
        self, cfg: Sequence[int | str] = _VGG16_CFG, num_classes: int = 10, in_channels: int = 3
    ) -> None:
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        stage, i, c = 1, 1, in_channels
        for v in cfg:
            if v == "M":
                layers[f"pool{stage}"] = nn.MaxPool2d(2)
                stage, i = stage + 1, 1
            else:
                assert isinstance(v, int)
                layers[f"conv{stage}_{i}"] = nn.Conv2d(c, v, kernel_size=3, padding=1)
                layers[f"bn{stage}_{i}"] = nn.BatchNorm2d(v)
                layers[f"relu{stage}_{i}"] = nn.ReLU(inplace=True)
                c, i = v, i + 1
        self.features = nn.Sequential(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(c, num_classes)
        _init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.avgpool(self.features(x))))


# --------------------------------------------------------------------------------------
# ResNets (CIFAR)
# --------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """ResNet basic block: ``conv3x3 -> BN -> ReLU -> conv3x3 -> BN``, plus the shortcut,
    then ReLU.

    The shortcut is the identity (``downsample is None``) when the shape is unchanged,
    otherwise "option B" of He et al. (2016): ``downsample = Sequential(conv1x1(stride),
    BatchNorm2d)`` — a plain ``nn.Conv2d`` that pruning tools handle, unlike the original
    option A (strided subsampling plus zero channel padding, parameter-free). This adds
    2,752 parameters to ResNet-20/56. Submodules: ``conv1, bn1, relu1, conv2, bn2,
    downsample, relu2`` (names as in torchvision).

    Shapes:
        ``[B, in_planes, H, W] -> [B, planes, H / stride, W / stride]``.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        out = out + identity  # out-of-place add
        return self.relu2(out)


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs: a 3x3 stride-1 stem (no max-pool), stages of
    :class:`BasicBlock`, global average pooling and ``fc``.

    Stages are named ``layer1 .. layerN`` (so ``"layer3.*"`` selects the third stage);
    the first block of every stage but the first uses stride 2.

    Args:
        num_blocks: blocks per stage, e.g. ``(3, 3, 3)`` for ResNet-20.
        widths: channels per stage, e.g. ``(16, 32, 64)``; the stem outputs ``widths[0]``.
        num_classes: output size.
        in_channels: input channels.

    Shapes:
        input ``[B, C, H, W]`` -> logits ``[B, num_classes]``.
    """

    def __init__(
        self,
        num_blocks: Sequence[int],
        widths: Sequence[int],
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if len(num_blocks) != len(widths):
            raise ValueError("num_blocks and widths must have the same length")
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        in_planes = widths[0]
        for s, (n, planes) in enumerate(zip(num_blocks, widths, strict=True), start=1):
            blocks = []
            for b in range(n):
                stride = 2 if (s > 1 and b == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            self.add_module(f"layer{s}", nn.Sequential(*blocks))
        self.num_stages = len(widths)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_planes, num_classes)
        _init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for s in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{s}")(x)
        return self.fc(self.flatten(self.avgpool(x)))


def _init_conv_bn(model: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) convolutions, zero biases, BN weight 1 / bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------
# Factories and registry
# --------------------------------------------------------------------------------------


#: Every model, registered where its factory is defined: ``(num_classes, input_shape) ->
#: nn.Module``, with its aliases and the default ``input_shape`` (``meta["input_shape"]``).
REGISTRY: Registry[Callable[..., nn.Module]] = Registry("model")
register_model = REGISTRY.register

_MNIST: Shape = (1, 28, 28)
_CIFAR: Shape = (3, 32, 32)


@register_model(
    "lenet300", aliases=("lenet-300-100", "lenet300-100", "lenet-300"), input_shape=_MNIST
)
def lenet300(num_classes: int = 10, input_shape: Sequence[int] = _MNIST) -> LeNet300:
    """LeNet-300-100 (see :class:`LeNet300`)."""
    return LeNet300(num_classes, input_shape)


@register_model("lenet5", aliases=("lenet-5", "lenet-5-caffe", "lenet5-caffe"), input_shape=_MNIST)
def lenet5(num_classes: int = 10, input_shape: Sequence[int] = _MNIST) -> LeNet5:
    """LeNet-5-Caffe (see :class:`LeNet5`)."""
    return LeNet5(num_classes, input_shape)


@register_model("vgg16", aliases=("vgg-16", "vgg16-bn", "vgg16_bn"), input_shape=_CIFAR)
def vgg16(num_classes: int = 10, input_shape: Sequence[int] = _CIFAR) -> VGG:
    """VGG-16 with batch norm for CIFAR (see :class:`VGG`)."""
    return VGG(_VGG16_CFG, num_classes, _check_shape(input_shape)[0])


@register_model("resnet20", aliases=("resnet-20",), input_shape=_CIFAR)
def resnet20(num_classes: int = 10, input_shape: Sequence[int] = _CIFAR) -> CifarResNet:
    """ResNet-20 for CIFAR: 3 stages x 3 blocks, 16/32/64 channels (He et al. 2016)."""
    return CifarResNet((3, 3, 3), (16, 32, 64), num_classes, _check_shape(input_shape)[0])


@register_model("resnet56", aliases=("resnet-56",), input_shape=_CIFAR)
def resnet56(num_classes: int = 10, input_shape: Sequence[int] = _CIFAR) -> CifarResNet:
    """ResNet-56 for CIFAR: 3 stages x 9 blocks, 16/32/64 channels (He et al. 2016)."""
    return CifarResNet((9, 9, 9), (16, 32, 64), num_classes, _check_shape(input_shape)[0])


@register_model("resnet18", aliases=("resnet-18",), input_shape=_CIFAR)
def resnet18(num_classes: int = 10, input_shape: Sequence[int] = _CIFAR) -> CifarResNet:
    """ResNet-18 with the CIFAR stem: 4 stages x 2 blocks, 64/128/256/512 channels."""
    return CifarResNet((2, 2, 2, 2), (64, 128, 256, 512), num_classes, _check_shape(input_shape)[0])


#: Canonical model name -> factory (a live, read-only view of :data:`REGISTRY`).
MODELS: Mapping[str, Callable[..., nn.Module]] = REGISTRY.objects()

#: Alternative spellings accepted by :func:`create_model` (a live view of :data:`REGISTRY`).
MODEL_ALIASES: Mapping[str, str] = REGISTRY.aliases()


def list_models() -> list[str]:
    """Canonical model names, sorted.

    Example::

        >>> "resnet20" in list_models()
        True
    """
    return sorted(MODELS)


def create_model(
    name: str,
    num_classes: int = 10,
    in_channels: int | None = None,
    *,
    input_shape: Sequence[int] | None = None,
    **kwargs: object,
) -> nn.Module:
    """Build a model by name.

    Args:
        name: a name from :func:`list_models` or an alias from :data:`MODEL_ALIASES`
            (case-insensitive, ``_`` and ``-`` interchangeable where listed).
        num_classes: output size.
        in_channels: input channels; replaces the channel count of the model's default
            input shape (``(1, 28, 28)`` for the LeNets, ``(3, 32, 32)`` otherwise).
        input_shape: full ``(C, H, W)`` input shape; takes precedence over
            ``in_channels``. Needed to run the LeNets on other image sizes (e.g.
            ``(1, 8, 8)`` for sklearn digits with ``lenet300``).
        **kwargs: passed to the factory.

    Returns:
        The model (freshly initialized, in training mode).

    Raises:
        ValueError: unknown name (the message lists valid names) or invalid shape.

    Example::

        >>> model = create_model("lenet-300-100", input_shape=(1, 8, 8))
        >>> model(torch.zeros(4, 1, 8, 8)).shape
        torch.Size([4, 10])
    """
    if name not in REGISTRY:
        raise ValueError(
            f"unknown model {name!r}; valid names: {', '.join(list_models())} "
            f"(aliases: {', '.join(sorted(MODEL_ALIASES))})"
        )
    entry = REGISTRY.get(name)
    if input_shape is None:
        shape = entry.meta["input_shape"]
        if in_channels is not None:
            shape = (int(in_channels), shape[1], shape[2])
    else:
        shape = _check_shape(input_shape)
        if in_channels is not None and in_channels != shape[0]:
            raise ValueError(f"in_channels={in_channels} contradicts input_shape={shape}")
    return entry.obj(num_classes=num_classes, input_shape=shape, **kwargs)
