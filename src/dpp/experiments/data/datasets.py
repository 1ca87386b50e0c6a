"""In-memory datasets and :func:`load_dataset`, which fills them from the files.

The datasets of the DPP experiments (MNIST, Fashion-MNIST, CIFAR-10/100 and scikit-learn's
8x8 digits) are small enough to decode once into one tensor per split.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .catalogue import (
    CIFAR_LAYOUT,
    IDX_FILES,
    INPUT_SHAPES,
    NUM_CLASSES,
    STATS,
    DatasetInfo,
    canonical_name,
)
from .formats import ReadLog, load_cifar_files, load_digits, load_idx_split
from .locate import find_dataset_dir

__all__ = ["Splits", "TensorDataset", "load_dataset"]


@dataclass
class TensorDataset:
    """An in-memory labelled image dataset.

    Attributes:
        images: float32 tensor ``[N, C, H, W]`` (normalized unless ``normalize=False``
            was asked for, in which case pixel values are in ``[0, 1]``).
        labels: int64 tensor ``[N]`` with class indices in ``[0, num_classes)``.
        name: canonical dataset name, e.g. ``"mnist"``.
        split: ``"train"``, ``"val"`` or ``"test"``.

    Indexing returns ``(image [C, H, W], label [])`` so it also works with
    :class:`torch.utils.data.DataLoader`; prefer
    :class:`~dpp.experiments.data.BatchLoader` for speed.
    """

    images: torch.Tensor
    labels: torch.Tensor
    name: str
    split: str

    def __post_init__(self) -> None:
        if self.images.dim() != 4:
            raise ValueError(f"images must be [N, C, H, W], got shape {tuple(self.images.shape)}")
        if self.labels.dim() != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(
                f"labels must be [N] with N={self.images.shape[0]}, "
                f"got shape {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return (
            f"TensorDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"image_shape={tuple(self.images.shape[1:])})"
        )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]


@dataclass
class Splits:
    """The splits returned by :func:`load_dataset`.

    Attributes:
        train: training split (without the held-out validation images).
        val: the last ``val_size`` training images, or ``None`` when ``val_size == 0``.
        test: the official test split.
        info: :class:`DatasetInfo` of the dataset, with the files read and their digests.
    """

    train: TensorDataset
    val: TensorDataset | None
    test: TensorDataset
    info: DatasetInfo = field(repr=False)


def _to_tensor(
    images: np.ndarray, scale: float, mean: Sequence[float], std: Sequence[float], normalize: bool
) -> torch.Tensor:
    x = torch.from_numpy(images.astype(np.float32))  # always a fresh, writable copy
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if scale != 1.0:
        x.div_(scale)
    if normalize:
        m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        x.sub_(m).div_(s)
    return x


def _read_arrays(
    name: str, data_dir: str | os.PathLike[str] | None, log: ReadLog
) -> tuple[Path | None, float, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(source directory, pixel scale, (train x, train y, test x, test y)) of ``name``."""
    num_classes = NUM_CLASSES[name]
    if name == "digits":
        return None, 1.0, load_digits(log)
    source = find_dataset_dir(name, data_dir)
    if name in CIFAR_LAYOUT:
        lay = CIFAR_LAYOUT[name]
        train = load_cifar_files(source, lay.train, lay.label_key, num_classes, log)
        test = load_cifar_files(source, lay.test, lay.label_key, num_classes, log)
    else:
        f = IDX_FILES
        train = load_idx_split(source, f["train_images"], f["train_labels"], name, num_classes, log)
        test = load_idx_split(source, f["test_images"], f["test_labels"], name, num_classes, log)
    return source, 255.0, (*train, *test)


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    val_size: int = 0,
    normalize: bool = True,
) -> Splits:
    """Load a dataset fully into memory.

    Args:
        name: one of :data:`~dpp.experiments.data.DATASETS` (``"mnist"``,
            ``"fashion-mnist"`` — also ``"fashion_mnist"``/``"fmnist"`` —, ``"cifar10"``,
            ``"cifar100"``, ``"digits"``), case-insensitive.
        data_dir: explicit directory, searched alone (``data_dir/<name>``, then
            ``data_dir``); missing files there are an error, never a fallback to another
            copy. ``None`` searches ``$DPP_DATA``, the user cache and the system
            directories. Ignored for ``"digits"``.
        val_size: hold out the LAST ``val_size`` training images as the validation split
            (the DPP authors held out the last 5,000). ``0`` means no validation split.
        normalize: subtract the dataset mean and divide by its std per channel
            (constants in :class:`DatasetInfo`); otherwise pixels are in ``[0, 1]``.

    Returns:
        :class:`Splits` whose datasets hold float32 images ``[N, C, H, W]`` and int64
        labels ``[N]``. MNIST/Fashion-MNIST: ``C, H, W = 1, 28, 28``; CIFAR: ``3, 32, 32``;
        digits: ``1, 8, 8`` (1,438 train / 359 test, fixed-seed shuffle).
        ``splits.info.files`` lists every file read with its SHA-256.

    Raises:
        ValueError: unknown name, or ``val_size`` not in ``[0, n_train)``.
        DatasetNotFoundError: files not found (the message lists the directories tried,
            the files missing and the fix).
        DatasetFormatError: a file is corrupt or inconsistent (message names the file).

    Example::

        >>> splits = load_dataset("fashion-mnist", val_size=5000)  # doctest: +SKIP
        >>> len(splits.train), len(splits.val), len(splits.test)   # doctest: +SKIP
        (55000, 5000, 10000)
    """
    name = canonical_name(name)
    mean, std = STATS[name]
    log = ReadLog()
    source, scale, (tr_x, tr_y, te_x, te_y) = _read_arrays(name, data_dir, log)
    n_train = len(tr_y)
    if isinstance(val_size, bool):
        raise ValueError(f"val_size must be an int, got {val_size!r}")
    val_size = operator.index(val_size)
    if not 0 <= val_size < n_train:
        raise ValueError(
            f"val_size must be in [0, {n_train}) for {name} ({n_train} training images), "
            f"got {val_size}"
        )
    train_x = _to_tensor(tr_x, scale, mean, std, normalize)
    train_y = torch.from_numpy(np.array(tr_y, dtype=np.int64))
    test_x = _to_tensor(te_x, scale, mean, std, normalize)
    test = TensorDataset(test_x, torch.from_numpy(np.array(te_y, dtype=np.int64)), name, "test")
    val = None
    if val_size:
        cut = n_train - val_size
        val = TensorDataset(train_x[cut:].clone(), train_y[cut:].clone(), name, "val")
        train_x, train_y = train_x[:cut].clone(), train_y[:cut].clone()
    train = TensorDataset(train_x, train_y, name, "train")
    info = DatasetInfo(
        name, NUM_CLASSES[name], INPUT_SHAPES[name], mean, std, source, tuple(log.files)
    )
    return Splits(train, val, test, info)
