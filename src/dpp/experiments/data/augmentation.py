"""Batch augmentation: random crop after padding and horizontal flip, vectorized."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .catalogue import CIFAR_LAYOUT, canonical_name

__all__ = ["RandomCropFlip", "default_augmentation", "random_crop_flip"]


def random_crop_flip(
    images: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    padding: int = 4,
    flip: bool = True,
    fill: float | Sequence[float] = 0.0,
) -> torch.Tensor:
    """Random crop after constant padding, then random horizontal flip, for a whole batch.

    Equivalent to torchvision's ``RandomCrop(H, padding)`` + ``RandomHorizontalFlip()``
    applied per image, but vectorized (one gather for the whole batch).

    Args:
        images: ``[B, C, H, W]`` tensor (any device).
        generator: CPU generator driving the random draws (deterministic output).
        padding: pixels of padding on each side; crop offsets are uniform in
            ``[0, 2 * padding]``.
        flip: flip each image horizontally with probability 1/2.
        fill: padding value, scalar or per channel. Images from
            :func:`~dpp.experiments.data.load_dataset` are already normalized, so ``0.0``
            pads with the mean colour; pass
            ``[-m / s for m, s in zip(info.mean, info.std)]`` to pad with black as the
            torchvision pipeline (pad before normalization) does.

    Returns:
        A new ``[B, C, H, W]`` tensor.

    Example::

        >>> x = torch.randn(8, 3, 32, 32)
        >>> random_crop_flip(x, torch.Generator().manual_seed(0)).shape
        torch.Size([8, 3, 32, 32])
    """
    if images.dim() != 4:
        raise ValueError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    b, c, h, w = images.shape
    dev = images.device
    p = padding
    if p:
        padded = images.new_empty(b, c, h + 2 * p, w + 2 * p)
        fill_t = torch.as_tensor(fill, dtype=images.dtype, device=dev).reshape(-1)
        if fill_t.numel() not in (1, c):
            raise ValueError(f"fill must be a scalar or have {c} values, got {fill_t.numel()}")
        padded.copy_(fill_t.view(1, -1, 1, 1).expand_as(padded))
        padded[:, :, p : p + h, p : p + w] = images
        dy = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(dev)
        dx = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(dev)
    else:
        padded = images
        dy = dx = torch.zeros(b, dtype=torch.long, device=dev)
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    rows = dy[:, None] + ar_h  # [B, H]
    cols = dx[:, None] + ar_w  # [B, W]
    if flip:
        flipped = (torch.rand(b, generator=generator) < 0.5).to(dev)
        cols = torch.where(flipped[:, None], dx[:, None] + (w - 1 - ar_w), cols)
    batch = torch.arange(b, device=dev)[:, None, None]
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


class RandomCropFlip:
    """Callable form of :func:`random_crop_flip` for :class:`BatchLoader` ``augment=``.

    Example::

        >>> aug = RandomCropFlip(padding=4)
        >>> aug(torch.zeros(2, 3, 32, 32), torch.Generator().manual_seed(0)).shape
        torch.Size([2, 3, 32, 32])
    """

    def __init__(
        self, padding: int = 4, flip: bool = True, fill: float | Sequence[float] = 0.0
    ) -> None:
        self.padding = padding
        self.flip = flip
        self.fill = fill

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return random_crop_flip(
            images, generator, padding=self.padding, flip=self.flip, fill=self.fill
        )

    def __repr__(self) -> str:
        return f"RandomCropFlip(padding={self.padding}, flip={self.flip}, fill={self.fill!r})"


def default_augmentation(name: str) -> RandomCropFlip | None:
    """The standard training augmentation for a dataset: 4-pixel crop + flip for CIFAR,
    none for the others (MNIST-like data is trained without augmentation)."""
    return RandomCropFlip(padding=4) if canonical_name(name) in CIFAR_LAYOUT else None
