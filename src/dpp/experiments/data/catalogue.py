"""What dpp knows about each dataset: names, shapes, normalization, file names, sources.

Nothing here touches the disk.

Example::

    >>> canonical_name("FMNIST")
    'fashion-mnist'
    >>> dataset_info("cifar100").num_classes
    100
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "DATASETS",
    "DOWNLOADABLE",
    "SYSTEM_DIRS",
    "DataFile",
    "DatasetInfo",
    "canonical_name",
    "dataset_info",
]

#: Canonical dataset names accepted by :func:`~dpp.experiments.data.load_dataset`.
DATASETS: tuple[str, ...] = ("mnist", "fashion-mnist", "cifar10", "cifar100", "digits")

#: Datasets that :func:`~dpp.experiments.data.download` can fetch (digits ships with
#: scikit-learn).
DOWNLOADABLE: tuple[str, ...] = ("mnist", "fashion-mnist", "cifar10", "cifar100")

_ALIASES = {
    "mnist": "mnist",
    "fashion-mnist": "fashion-mnist",
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar10": "cifar10",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
    "cifar100": "cifar100",
    "cifar-100": "cifar100",
    "cifar_100": "cifar100",
    "digits": "digits",
}

#: System-wide directories per dataset (searched last, and only without an explicit
#: ``data_dir``).
SYSTEM_DIRS: dict[str, list[Path]] = {
    "fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")],
}

# Normalization constants: per-channel mean and standard deviation of the *training*
# images after scaling pixels to [0, 1] (std over all pixels of the training set, not the
# average of per-image stds).
#   MNIST          0.1307 / 0.3081 (the usual constants)
#   Fashion-MNIST  0.2860 / 0.3530 (computed on the 60k training images)
#   CIFAR-10       (0.4914, 0.4822, 0.4465) / (0.2470, 0.2435, 0.2616)
#   CIFAR-100      (0.5071, 0.4865, 0.4409) / (0.2673, 0.2564, 0.2762)
#   digits         0.3054 / 0.3759 (pixels 0..16 divided by 16; computed on our train split)
STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "digits": ((0.3054,), (0.3759,)),
}
NUM_CLASSES = {"mnist": 10, "fashion-mnist": 10, "cifar10": 10, "cifar100": 100, "digits": 10}
INPUT_SHAPES: dict[str, tuple[int, int, int]] = {
    "mnist": (1, 28, 28),
    "fashion-mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
    "cifar100": (3, 32, 32),
    "digits": (1, 8, 8),
}

#: The four IDX files of MNIST and Fashion-MNIST (raw or ``.gz``).
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class CifarLayout:
    """Where a CIFAR archive keeps its python batches."""

    folder: str  # the sub-folder of the archive
    train: tuple[str, ...]
    test: tuple[str, ...]
    label_key: str

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train, *self.test)


CIFAR_LAYOUT = {
    "cifar10": CifarLayout(
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "labels",
    ),
    "cifar100": CifarLayout("cifar-100-python", ("train",), ("test",), "fine_labels"),
}

# Published sources and MD5 checksums (the same ones torchvision uses).
_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
#: name -> [(url, md5), ...]
RESOURCES: dict[str, list[tuple[str, str]]] = {
    "mnist": [
        (_MNIST_URL + "train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        (_MNIST_URL + "train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
        (_MNIST_URL + "t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
        (_MNIST_URL + "t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
    ],
    "fashion-mnist": [
        (_FASHION_URL + "train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        (_FASHION_URL + "train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
        (_FASHION_URL + "t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
        (_FASHION_URL + "t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
    ],
    "cifar10": [
        (
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            "c58f30108f718f92721af3b95e74349a",
        )
    ],
    "cifar100": [
        (
            "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
            "eb9058c3a382ffc7106e4002c42a8d85",
        )
    ],
}


def canonical_name(name: str) -> str:
    """Return the canonical dataset name for ``name`` (case-insensitive, aliases allowed).

    Args:
        name: e.g. ``"MNIST"``, ``"fashion_mnist"``, ``"fmnist"``, ``"cifar-10"``.

    Returns:
        One of :data:`DATASETS`.

    Raises:
        ValueError: unknown name; the message lists the valid names.
    """
    key = str(name).strip().lower()
    if key not in _ALIASES:
        aliases = ", ".join(sorted(k for k in _ALIASES if k not in DATASETS))
        raise ValueError(
            f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)} (aliases: {aliases})"
        )
    return _ALIASES[key]


@dataclass(frozen=True)
class DataFile:
    """One file a dataset was read from: its path, SHA-256 and size in bytes."""

    path: str
    sha256: str
    size: int

    def to_dict(self) -> dict[str, str | int]:
        return {"path": self.path, "sha256": self.sha256, "bytes": self.size}


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset.

    Attributes:
        name: canonical dataset name.
        num_classes: number of classes.
        input_shape: ``(C, H, W)`` of one image.
        mean: per-channel mean used for normalization (pixels scaled to ``[0, 1]``).
        std: per-channel standard deviation used for normalization.
        source: directory the files were read from (``None`` for digits or when the
            info was obtained without loading, see :func:`dataset_info`).
        files: every file read, with its SHA-256 (empty when nothing was loaded).
    """

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: Path | None = None
    files: tuple[DataFile, ...] = field(default=(), compare=False)


def dataset_info(name: str) -> DatasetInfo:
    """Return :class:`DatasetInfo` for ``name`` without touching the disk."""
    name = canonical_name(name)
    mean, std = STATS[name]
    return DatasetInfo(name, NUM_CLASSES[name], INPUT_SHAPES[name], mean, std)
