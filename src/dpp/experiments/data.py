"""In-memory datasets, a fast batch iterator, CIFAR augmentation and checksummed downloads.

Everything here works on plain tensors held in memory: the datasets used by the DPP
experiments (MNIST, Fashion-MNIST, CIFAR-10/100 and sklearn's 8x8 digits) are small
enough that decoding them once and slicing batches out of one big tensor is far faster
than :class:`torch.utils.data.DataLoader` with per-sample collation, especially on a
machine with few CPU cores.

Quick start::

    >>> from dpp.experiments.data import load_dataset, BatchLoader
    >>> splits = load_dataset("digits", val_size=200)          # doctest: +SKIP
    >>> splits.train.images.shape, splits.info.num_classes     # doctest: +SKIP
    (torch.Size([1238, 1, 8, 8]), 10)
    >>> loader = BatchLoader(splits.train, 128, shuffle=True, seed=0)  # doctest: +SKIP
    >>> for epoch in range(2):                                 # doctest: +SKIP
    ...     loader.set_epoch(epoch)
    ...     for images, labels in loader:
    ...         pass

Where the files are looked for (first match wins; see :func:`candidate_dirs`):

1. the explicit ``data_dir`` argument (``data_dir/<name>``, then ``data_dir`` itself);
2. ``$DPP_DATA/<name>``, then ``$DPP_DATA``;
3. the user cache: ``$XDG_CACHE_HOME/dpp/<name>`` or ``~/.cache/dpp/<name>``;
4. for Fashion-MNIST only, ``/usr/share/datasets/fashion-mnist`` (Debian package
   ``dataset-fashion-mnist``).

:func:`download` writes to ``<root>/<name>`` where ``root`` defaults to ``$DPP_DATA`` or
the user cache directory, so downloaded data is found without further configuration.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import operator
import os
import pickle
import shutil
import struct
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "DATASETS",
    "DOWNLOADABLE",
    "SYSTEM_DIRS",
    "BatchLoader",
    "ChecksumError",
    "DatasetError",
    "DatasetFormatError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "RandomCropFlip",
    "Splits",
    "TensorDataset",
    "cache_dir",
    "candidate_dirs",
    "canonical_name",
    "dataset_info",
    "default_augmentation",
    "default_download_root",
    "download",
    "file_md5",
    "find_dataset_dir",
    "list_datasets",
    "load_dataset",
    "random_crop_flip",
    "read_idx",
    "verify_checksum",
]

# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


class DatasetError(Exception):
    """Base class of every dataset error raised by this module."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The dataset files were not found in any of the directories searched."""


class DatasetFormatError(DatasetError, ValueError):
    """A dataset file exists but is corrupt, truncated or inconsistent."""


class ChecksumError(DatasetError, ValueError):
    """A file's checksum does not match the published one."""


# --------------------------------------------------------------------------------------
# Dataset catalogue
# --------------------------------------------------------------------------------------

#: Canonical dataset names accepted by :func:`load_dataset`.
DATASETS: tuple[str, ...] = ("mnist", "fashion-mnist", "cifar10", "cifar100", "digits")

#: Datasets that :func:`download` can fetch (digits ships with scikit-learn).
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

#: System-wide fallback directories per dataset (searched last).
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
_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "digits": ((0.3054,), (0.3759,)),
}
_NUM_CLASSES = {"mnist": 10, "fashion-mnist": 10, "cifar10": 10, "cifar100": 100, "digits": 10}
_INPUT_SHAPES = {
    "mnist": (1, 28, 28),
    "fashion-mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
    "cifar100": (3, 32, 32),
    "digits": (1, 8, 8),
}

_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_CIFAR_LAYOUT = {
    # name: (sub-folder in the archive, train files, test files, label key)
    "cifar10": (
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "labels",
    ),
    "cifar100": ("cifar-100-python", ("train",), ("test",), "fine_labels"),
}

# Published sources and MD5 checksums (the same ones torchvision uses).
_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_RESOURCES: dict[str, list[tuple[str, str]]] = {
    # name: [(url, md5), ...]
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

    Example::

        >>> canonical_name("FMNIST")
        'fashion-mnist'
    """
    key = str(name).strip().lower()
    if key not in _ALIASES:
        aliases = ", ".join(sorted(k for k in _ALIASES if k not in DATASETS))
        raise ValueError(
            f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)} (aliases: {aliases})"
        )
    return _ALIASES[key]


# --------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------


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
    :class:`torch.utils.data.DataLoader`; prefer :class:`BatchLoader` for speed.
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
    """

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: Path | None = None


@dataclass
class Splits:
    """The splits returned by :func:`load_dataset`.

    Attributes:
        train: training split (without the held-out validation images).
        val: the last ``val_size`` training images, or ``None`` when ``val_size == 0``.
        test: the official test split.
        info: :class:`DatasetInfo` of the dataset.
    """

    train: TensorDataset
    val: TensorDataset | None
    test: TensorDataset
    info: DatasetInfo = field(repr=False)


def dataset_info(name: str) -> DatasetInfo:
    """Return :class:`DatasetInfo` for ``name`` without touching the disk.

    Example::

        >>> dataset_info("cifar100").num_classes
        100
    """
    name = canonical_name(name)
    mean, std = _STATS[name]
    return DatasetInfo(name, _NUM_CLASSES[name], _INPUT_SHAPES[name], mean, std)


# --------------------------------------------------------------------------------------
# Directory lookup
# --------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """The user cache directory: ``$XDG_CACHE_HOME/dpp`` or ``~/.cache/dpp``."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "dpp"


def default_download_root() -> Path:
    """Where :func:`download` writes by default: ``$DPP_DATA`` if set, else :func:`cache_dir`."""
    env = os.environ.get("DPP_DATA")
    return Path(env).expanduser() if env else cache_dir()


def candidate_dirs(name: str, data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Directories searched for dataset ``name``, in order.

    Args:
        name: dataset name (aliases allowed).
        data_dir: explicit directory; both ``data_dir/<name>`` and ``data_dir`` are tried.

    Returns:
        ``[data_dir/<name>, data_dir, $DPP_DATA/<name>, $DPP_DATA, <cache>/<name>,
        *system dirs]`` with unset entries omitted and duplicates removed.
    """
    name = canonical_name(name)
    dirs: list[Path] = []
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        dirs += [root / name, root]
    env = os.environ.get("DPP_DATA")
    if env:
        root = Path(env).expanduser()
        dirs += [root / name, root]
    dirs.append(cache_dir() / name)
    dirs += SYSTEM_DIRS.get(name, [])
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def _idx_file(directory: Path, stem: str) -> Path | None:
    """Find ``stem`` (raw or ``.gz``; also the ``train-images.idx3-ubyte`` spelling)."""
    dotted = stem.replace("-idx", ".idx")
    for candidate in (stem, stem + ".gz", dotted, dotted + ".gz"):
        path = directory / candidate
        if path.is_file():
            return path
    return None


def _cifar_root(name: str, directory: Path) -> tuple[Path | None, list[str]]:
    """Return (directory holding the batch files, missing entries)."""
    sub, train, test, _ = _CIFAR_LAYOUT[name]
    files = (*train, *test)
    for root in (directory / sub, directory):
        if all((root / f).is_file() for f in files):
            return root, []
    if (directory / sub).is_dir():
        return None, [f"{sub}/{f}" for f in files if not (directory / sub / f).is_file()]
    return None, [f"{sub}/"]


def _check_dir(name: str, directory: Path) -> tuple[Path | None, str]:
    """Return (resolved data dir or None, reason it did not match)."""
    if not directory.is_dir():
        return None, "does not exist"
    if name in _CIFAR_LAYOUT:
        root, missing = _cifar_root(name, directory)
        return (root, "") if root else (None, "missing " + ", ".join(missing))
    missing = [s for s in _IDX_FILES.values() if _idx_file(directory, s) is None]
    if missing:
        return None, "missing " + ", ".join(m + "[.gz]" for m in missing)
    return directory, ""


def find_dataset_dir(name: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the first directory of :func:`candidate_dirs` that holds all files of ``name``.

    For CIFAR the returned directory is the one holding the batch files (e.g.
    ``.../cifar-10-batches-py``).

    Raises:
        DatasetNotFoundError: no directory matched; the message lists every directory
            tried (and why it did not match) and how to get the data.
        ValueError: unknown name, or ``"digits"`` (which ships with scikit-learn).
    """
    name = canonical_name(name)
    if name == "digits":
        raise ValueError("'digits' ships with scikit-learn and has no data directory")
    tried = []
    for directory in candidate_dirs(name, data_dir):
        found, reason = _check_dir(name, directory)
        if found is not None:
            return found
        tried.append(f"  - {directory} ({reason})")
    if name in _CIFAR_LAYOUT:
        sub, train, test, _ = _CIFAR_LAYOUT[name]
        wanted = f"{sub}/{{{','.join((*train, *test))}}}"
    else:
        wanted = ", ".join(s + "[.gz]" for s in _IDX_FILES.values())
    fixes = [
        f"run `dpp data download {name}` (writes to {default_download_root() / name})",
        "pass --data-dir DIR (data_dir=DIR in Python) pointing at a directory with these files",
        "set the DPP_DATA environment variable to such a directory",
    ]
    if name == "fashion-mnist":
        fixes.append("on Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist")
    raise DatasetNotFoundError(
        f"dataset {name!r} not found. Looked for {wanted} in:\n"
        + "\n".join(tried)
        + "\nTo fix, do one of:\n"
        + "\n".join(f"  * {f}" for f in fixes)
    )


# --------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)
# --------------------------------------------------------------------------------------

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_IMAGES_MAGIC = 0x00000803  # uint8, 3 dims
_IDX_LABELS_MAGIC = 0x00000801  # uint8, 1 dim


def _read_bytes(path: Path) -> bytes:
    """Read a file, transparently decompressing gzip; corrupt gzip -> DatasetFormatError."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DatasetFormatError(
                f"{path}: corrupt gzip file ({e}); delete it and download it again"
            ) from e
    if path.suffix == ".gz":
        raise DatasetFormatError(
            f"{path}: expected a gzip file (starting with bytes 1f 8b), "
            f"found bytes {data[:2].hex(' ') or '<empty file>'}"
        )
    return data


def read_idx(path: str | os.PathLike[str], expected_magic: int | None = None) -> np.ndarray:
    """Parse an IDX file (raw or gzipped) into a numpy array.

    The IDX header is ``0x00 0x00 <dtype code> <ndim>`` followed by ``ndim`` big-endian
    uint32 dimensions, then the payload in C order.

    Args:
        path: the file.
        expected_magic: if given, the 32-bit magic number the file must have
            (``0x803`` for uint8 images ``[N, H, W]``, ``0x801`` for uint8 labels ``[N]``).

    Returns:
        Array (possibly read-only) with the file's dtype in native byte order and shape
        ``dims``.

    Raises:
        DatasetFormatError: bad or unexpected magic number, truncated header or
            payload, trailing bytes, or corrupt gzip; the message names the file.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DatasetFormatError(
            f"{path}: too short for an IDX header: expected at least 4 bytes, found {len(data)}"
        )
    (magic,) = struct.unpack(">I", data[:4])
    code, ndim = data[2], data[3]
    if data[0] != 0 or data[1] != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise DatasetFormatError(
            f"{path}: not an IDX file: bad magic number 0x{magic:08x} "
            f"(expected 0x0000TTNN with a known type code TT, e.g. 0x{_IDX_IMAGES_MAGIC:08x})"
        )
    if expected_magic is not None and magic != expected_magic:
        raise DatasetFormatError(
            f"{path}: wrong IDX magic number: expected 0x{expected_magic:08x}, found 0x{magic:08x}"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetFormatError(
            f"{path}: truncated IDX header: expected {header} bytes, found {len(data)}"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _IDX_DTYPES[code]
    count = math.prod(dims)
    expected = count * dtype.itemsize
    found = len(data) - header
    if found < expected:
        raise DatasetFormatError(
            f"{path}: truncated IDX data: header says shape {dims} ({expected} bytes), "
            f"found only {found} bytes"
        )
    if found > expected:
        raise DatasetFormatError(
            f"{path}: IDX data too long: header says shape {dims} ({expected} bytes), "
            f"found {found} bytes"
        )
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def _load_idx_split(
    directory: Path, images_stem: str, labels_stem: str, name: str, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    img_path = _idx_file(directory, images_stem)
    lbl_path = _idx_file(directory, labels_stem)
    if img_path is None or lbl_path is None:
        stem = images_stem if img_path is None else labels_stem
        raise DatasetNotFoundError(f"{directory / stem}[.gz]: file not found")
    images = read_idx(img_path, _IDX_IMAGES_MAGIC)
    labels = read_idx(lbl_path, _IDX_LABELS_MAGIC)
    _, h, w = _INPUT_SHAPES[name]
    if images.shape[1:] != (h, w):
        raise DatasetFormatError(
            f"{img_path}: expected {h}x{w} images, found {images.shape[1]}x{images.shape[2]}"
        )
    if images.shape[0] != labels.shape[0]:
        raise DatasetFormatError(
            f"image/label count mismatch: {img_path} has {images.shape[0]} images but "
            f"{lbl_path} has {labels.shape[0]} labels"
        )
    _check_labels(labels, num_classes, lbl_path)
    return images, labels


def _check_labels(labels: np.ndarray, num_classes: int, path: Path) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetFormatError(
            f"{path}: labels out of range: expected values in [0, {num_classes - 1}], "
            f"found min {labels.min()} and max {labels.max()}"
        )


# --------------------------------------------------------------------------------------
# CIFAR (python pickle batches)
# --------------------------------------------------------------------------------------


def _numpy_globals() -> dict[tuple[str, str], Any]:
    reconstruct = np.zeros(1).__reduce__()[0]  # numpy(._)core.multiarray._reconstruct
    scalar = np.float64(0).__reduce__()[0]  # numpy(._)core.multiarray.scalar
    import _codecs

    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _codecs.encode,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
        allowed[(module, "scalar")] = scalar
    return allowed


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that only resolves the globals needed for dicts of numpy arrays.

    Unpickling can execute arbitrary code, so pickle files must come from a trusted source
    (the official CIFAR archives, whose checksums :func:`download` verifies). Restricting
    the resolvable globals to numpy's array reconstruction is defence in depth.
    """

    _allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name} (only numpy arrays are allowed)"
            ) from None


def _load_pickle(path: Path) -> Any:
    # Same as pickle.load(f, encoding="bytes") but with the restricted unpickler above.
    # NOTE: only load pickle files from a trusted source.
    try:
        with open(path, "rb") as f:
            return _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise DatasetFormatError(
            f"{path}: corrupt or unsupported CIFAR pickle ({type(e).__name__}: {e})"
        ) from e


def _get(batch: dict[Any, Any], key: str) -> Any:
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise KeyError(key)


def _load_cifar_files(
    directory: Path, files: Sequence[str], label_key: str, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for fname in files:
        path = directory / fname
        if not path.is_file():
            raise DatasetNotFoundError(f"{path}: file not found")
        batch = _load_pickle(path)
        if not isinstance(batch, dict):
            raise DatasetFormatError(
                f"{path}: expected a dict with keys data and {label_key}, "
                f"found {type(batch).__name__}"
            )
        try:
            data, lbl = _get(batch, "data"), _get(batch, label_key)
        except KeyError as e:
            keys = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in batch)
            raise DatasetFormatError(
                f"{path}: missing key {e.args[0]!r}; expected data and {label_key}, found {keys}"
            ) from None
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
            found = (
                f"{data.dtype} array of shape {data.shape}"
                if isinstance(data, np.ndarray)
                else type(data).__name__
            )
            raise DatasetFormatError(f"{path}: expected data as uint8 [N, 3072], found {found}")
        if data.shape[1] != 3072:
            raise DatasetFormatError(
                f"{path}: expected data of shape [N, 3072] (3x32x32), found {list(data.shape)}"
            )
        try:
            lbl_arr = np.asarray(lbl, dtype=np.int64)
        except (TypeError, ValueError) as e:
            raise DatasetFormatError(f"{path}: {label_key} are not integers ({e})") from e
        if lbl_arr.ndim != 1 or lbl_arr.shape[0] != data.shape[0]:
            raise DatasetFormatError(
                f"{path}: image/label count mismatch: {data.shape[0]} images but "
                f"{lbl_arr.size} labels"
            )
        _check_labels(lbl_arr, num_classes, path)
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(lbl_arr)
    return np.concatenate(images), np.concatenate(labels)


# --------------------------------------------------------------------------------------
# digits (scikit-learn)
# --------------------------------------------------------------------------------------

_DIGITS_SEED = 0


def _load_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (train images, train labels, test images, test labels), pixels in [0, 1]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError(
            "the 'digits' dataset needs scikit-learn: pip install scikit-learn "
            "(or pip install 'dpp[digits]')"
        ) from e
    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / 16.0  # [1797, 8, 8], 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    # Legacy RandomState streams are frozen by NumPy's compatibility policy, so this
    # split is identical across NumPy versions: last 20% of the shuffled order is test.
    perm = np.random.RandomState(_DIGITS_SEED).permutation(len(labels))
    n_test = len(labels) // 5
    train, test = perm[:-n_test], perm[-n_test:]
    return images[train], labels[train], images[test], labels[test]


# --------------------------------------------------------------------------------------
# load_dataset
# --------------------------------------------------------------------------------------


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


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    val_size: int = 0,
    normalize: bool = True,
) -> Splits:
    """Load a dataset fully into memory.

    Args:
        name: one of :data:`DATASETS` (``"mnist"``, ``"fashion-mnist"`` — also
            ``"fashion_mnist"``/``"fmnist"`` —, ``"cifar10"``, ``"cifar100"``,
            ``"digits"``), case-insensitive.
        data_dir: explicit directory to search first (see :func:`candidate_dirs`).
            Ignored for ``"digits"``.
        val_size: hold out the LAST ``val_size`` training images as the validation split
            (the DPP authors held out the last 5,000). ``0`` means no validation split.
        normalize: subtract the dataset mean and divide by its std per channel
            (constants in :class:`DatasetInfo`); otherwise pixels are in ``[0, 1]``.

    Returns:
        :class:`Splits` whose datasets hold float32 images ``[N, C, H, W]`` and int64
        labels ``[N]``. MNIST/Fashion-MNIST: ``C, H, W = 1, 28, 28``; CIFAR: ``3, 32, 32``;
        digits: ``1, 8, 8`` (1,438 train / 359 test, fixed-seed shuffle).

    Raises:
        ValueError: unknown name, or ``val_size`` not in ``[0, n_train)``.
        DatasetNotFoundError: files not found (message lists the directories tried).
        DatasetFormatError: a file is corrupt or inconsistent (message names the file).

    Example::

        >>> splits = load_dataset("fashion-mnist", val_size=5000)  # doctest: +SKIP
        >>> len(splits.train), len(splits.val), len(splits.test)   # doctest: +SKIP
        (55000, 5000, 10000)
    """
    name = canonical_name(name)
    mean, std = _STATS[name]
    num_classes = _NUM_CLASSES[name]
    source: Path | None = None
    if name == "digits":
        tr_x, tr_y, te_x, te_y = _load_digits()
        scale = 1.0
    elif name in _CIFAR_LAYOUT:
        source = find_dataset_dir(name, data_dir)
        _, train_files, test_files, key = _CIFAR_LAYOUT[name]
        tr_x, tr_y = _load_cifar_files(source, train_files, key, num_classes)
        te_x, te_y = _load_cifar_files(source, test_files, key, num_classes)
        scale = 255.0
    else:
        source = find_dataset_dir(name, data_dir)
        f = _IDX_FILES
        tr_x, tr_y = _load_idx_split(source, f["train_images"], f["train_labels"], name, 10)
        te_x, te_y = _load_idx_split(source, f["test_images"], f["test_labels"], name, 10)
        scale = 255.0

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
    test = TensorDataset(
        _to_tensor(te_x, scale, mean, std, normalize),
        torch.from_numpy(np.array(te_y, dtype=np.int64)),
        name,
        "test",
    )
    val = None
    if val_size:
        cut = n_train - val_size
        val = TensorDataset(train_x[cut:].clone(), train_y[cut:].clone(), name, "val")
        train_x, train_y = train_x[:cut].clone(), train_y[:cut].clone()
    train = TensorDataset(train_x, train_y, name, "train")
    info = DatasetInfo(name, num_classes, _INPUT_SHAPES[name], mean, std, source)
    return Splits(train, val, test, info)


# --------------------------------------------------------------------------------------
# Batch iteration
# --------------------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1


def _mix(*values: int) -> int:
    """Deterministically hash integers into a 63-bit seed (SplitMix64 finalizer)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        h = (h ^ (h >> 27)) * 0x94D049BB133111EB & _MASK64
        h ^= h >> 31
    return h >> 1


AugmentFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class BatchLoader:
    """Fast, deterministic, shardable batch iterator over an in-memory :class:`TensorDataset`.

    One pass (``for images, labels in loader``) is one epoch. The order of epoch ``e`` is
    ``torch.randperm(N, generator=torch.Generator().manual_seed(seed + e))`` — the same
    scheme as :class:`torch.utils.data.DistributedSampler` — so resuming needs no state:
    call :meth:`set_epoch` with the epoch to resume (and ``start_batch`` to resume
    mid-epoch). Every rank draws the same permutation and takes every
    ``world_size``-th index starting at ``rank``; without ``drop_last`` the permutation is
    padded by wrapping around so all ranks get the same number of batches (a few samples
    then appear twice per epoch), with ``drop_last`` it is truncated instead and
    incomplete batches are dropped.

    Augmentation, if given, is called as ``augment(images, generator)`` on each batch with
    a fresh generator seeded from ``(seed, epoch, rank, batch index)``, so it is
    reproducible and independent of where iteration was resumed.

    Args:
        dataset: the data; ``images [N, C, H, W]`` and ``labels [N]``.
        batch_size: samples per batch (per rank).
        shuffle: draw a new permutation each epoch; otherwise use ``0..N-1``.
        seed: base seed for the permutation and the augmentation.
        generator: optional stateful alternative to ``seed``: when given, each epoch's
            permutation and augmentation seed are drawn from it (``seed`` and the epoch
            are then ignored; save/restore its state for exact resume).
        drop_last: truncate the index list to a multiple of ``world_size`` and drop the
            last incomplete batch.
        rank: this process's rank in ``[0, world_size)``.
        world_size: number of processes sharing the epoch.
        augment: optional ``(images [B,C,H,W], generator) -> images`` transform, e.g.
            :class:`RandomCropFlip`.
        device: if given, the dataset is moved there once (fast for small datasets on GPU).

    Yields:
        ``(images [B, C, H, W] float32, labels [B] int64)`` with ``B <= batch_size``;
        batches are fresh tensors (not views of the dataset).

    Example::

        >>> ds = TensorDataset(torch.zeros(10, 1, 2, 2), torch.arange(10), "toy", "train")
        >>> loader = BatchLoader(ds, 4, shuffle=True, seed=0)
        >>> loader.set_epoch(3)
        >>> [len(y) for _, y in loader]
        [4, 4, 2]
    """

    def __init__(
        self,
        dataset: TensorDataset,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        augment: AugmentFn | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got {rank=}, {world_size=}")
        if len(dataset) == 0:
            raise ValueError("dataset is empty")
        self.dataset = dataset
        self.images = dataset.images if device is None else dataset.images.to(device)
        self.labels = dataset.labels if device is None else dataset.labels.to(device)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.generator = generator
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.augment = augment
        self.epoch = 0
        self.start_batch = 0

    @property
    def num_samples(self) -> int:
        """Samples per rank per epoch (including wrap-around padding)."""
        n = len(self.dataset)
        if self.drop_last:
            return n // self.world_size
        return math.ceil(n / self.world_size)

    def __len__(self) -> int:
        """Batches per epoch (per rank)."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch the next iteration yields, optionally skipping its first batches.

        Args:
            epoch: epoch number (sets the permutation, as in ``DistributedSampler``).
            start_batch: index of the first batch to yield (for mid-epoch resume). It only
                applies to the next iteration.
        """
        if start_batch < 0:
            raise ValueError(f"start_batch must be >= 0, got {start_batch}")
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    def _epoch_plan(self, epoch: int) -> tuple[torch.Tensor, int]:
        """Return (this rank's sample indices for ``epoch``, augmentation base seed)."""
        n = len(self.dataset)
        if self.generator is not None:
            g = self.generator
            order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
            aug_seed = int(torch.randint(0, 2**62, (1,), generator=g)) if self.augment else 0
        else:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed + epoch)
                order = torch.randperm(n, generator=g)
            else:
                order = torch.arange(n)
            aug_seed = _mix(self.seed, epoch)
        total = self.num_samples * self.world_size
        if total > n:  # pad by wrapping around (possibly several times for tiny datasets)
            order = order.repeat(math.ceil(total / n))
        order = order[:total]
        return order[self.rank : total : self.world_size], aug_seed

    def indices(self, epoch: int | None = None) -> torch.Tensor:
        """This rank's sample indices for ``epoch`` (default: the current one), in order.

        With a ``generator`` this consumes randomness from it.
        """
        return self._epoch_plan(self.epoch if epoch is None else epoch)[0]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, start = self.epoch, self.start_batch
        self.start_batch = 0
        order, aug_seed = self._epoch_plan(epoch)
        order = order.to(self.images.device)
        bs = self.batch_size
        for b in range(start, len(self)):
            idx = order[b * bs : (b + 1) * bs]
            images = self.images.index_select(0, idx)
            labels = self.labels.index_select(0, idx)
            if self.augment is not None:
                g = torch.Generator().manual_seed(_mix(aug_seed, self.rank, b))
                images = self.augment(images, g)
            yield images, labels


# --------------------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------------------


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
        fill: padding value, scalar or per channel. Images from :func:`load_dataset` are
            already normalized, so ``0.0`` pads with the mean colour; pass
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
    return RandomCropFlip(padding=4) if canonical_name(name) in _CIFAR_LAYOUT else None


# --------------------------------------------------------------------------------------
# Checksums and downloads
# --------------------------------------------------------------------------------------


def _md5() -> Any:
    try:
        return hashlib.md5(usedforsecurity=False)
    except TypeError:  # pragma: no cover - very old OpenSSL builds
        return hashlib.md5()


def file_md5(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex MD5 digest of a file, read in chunks."""
    h = _md5()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def verify_checksum(
    path: str | os.PathLike[str], expected_md5: str, *, url: str | None = None
) -> None:
    """Raise :class:`ChecksumError` unless the MD5 of ``path`` equals ``expected_md5``.

    The message names the file (and ``url`` when given) and both checksums.
    """
    actual = file_md5(path)
    if actual != expected_md5.lower():
        origin = f" downloaded from {url}" if url else ""
        raise ChecksumError(
            f"checksum mismatch for {path}{origin}: expected md5 {expected_md5}, got {actual}"
        )


def _fetch(url: str, dest: Path, md5: str, *, progress: bool, timeout: float) -> None:
    """Download ``url`` to ``dest`` atomically (temp file in the same dir, verify, replace)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        h = _md5()
        request = urllib.request.Request(url, headers={"User-Agent": "dpp-data/0.1"})
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(request, timeout=timeout)
            except (urllib.error.URLError, OSError) as e:
                raise DatasetError(
                    f"failed to download {url}: {e}. Check your network/proxy, or download "
                    f"it manually and put it at {dest}"
                ) from e
            with response:
                total = int(response.headers.get("Content-Length") or 0) or None
                bar = None
                if progress:
                    try:
                        from tqdm import tqdm

                        bar = tqdm(total=total, unit="B", unit_scale=True, desc=dest.name)
                    except ImportError:  # pragma: no cover
                        bar = None
                try:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        h.update(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
                finally:
                    if bar is not None:
                        bar.close()
            out.flush()
            os.fsync(out.fileno())
        actual = h.hexdigest()
        if actual != md5:
            raise ChecksumError(
                f"checksum mismatch for {url}: expected md5 {md5}, got {actual}; "
                "the download was deleted, try again"
            )
        os.chmod(tmp, 0o644)  # mkstemp creates 0600 files; datasets may be shared
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tar archive into ``dest``, refusing links, devices and escaping paths.

    Extraction happens in a temporary directory inside ``dest``; each top-level entry is
    then moved into place with ``os.replace`` (replacing a previous partial extraction).
    """
    dest = dest.resolve()
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                parts = Path(m.name).parts
                target = (staging / m.name).resolve()
                if (
                    not (m.isfile() or m.isdir())
                    or m.name.startswith(("/", "\\"))
                    or ".." in parts
                    or not target.is_relative_to(staging.resolve())
                ):
                    raise DatasetFormatError(
                        f"{archive}: refusing to extract unsafe member {m.name!r}"
                    )
            kwargs: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(staging, members=members, **kwargs)
        for entry in staging.iterdir():
            target = dest / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def download(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    progress: bool = True,
    timeout: float = 60.0,
    keep_archive: bool = False,
) -> Path:
    """Download a dataset from its public source into ``<root>/<name>`` and verify it.

    MNIST and Fashion-MNIST are stored as the four ``*.gz`` IDX files; CIFAR archives are
    extracted (``cifar-10-batches-py/`` / ``cifar-100-python/``). Files already present
    with the right checksum are not downloaded again. Every file is written to a temporary
    file in the target directory, its MD5 is checked against the published value, then it
    is moved into place with ``os.replace``; a mismatch deletes the temporary file and
    raises :class:`ChecksumError` naming the URL and both checksums.

    Args:
        name: one of :data:`DOWNLOADABLE` (aliases allowed).
        root: parent directory; default :func:`default_download_root` (``$DPP_DATA`` or
            the user cache), which :func:`load_dataset` searches.
        progress: show a tqdm progress bar.
        timeout: socket timeout in seconds.
        keep_archive: keep the CIFAR ``.tar.gz`` after extraction.

    Returns:
        The dataset directory ``<root>/<name>``.

    Raises:
        ValueError: unknown dataset or ``"digits"`` (it ships with scikit-learn).
        DatasetError: network failure; ChecksumError: corrupt download.

    Example::

        >>> download("mnist")  # doctest: +SKIP
        PosixPath('/home/me/.cache/dpp/mnist')
    """
    name = canonical_name(name)
    if name not in _RESOURCES:
        raise ValueError(
            f"{name!r} cannot be downloaded: it ships with scikit-learn (pip install scikit-learn)"
        )
    target = Path(root).expanduser() if root is not None else default_download_root()
    target = target / name
    target.mkdir(parents=True, exist_ok=True)
    for url, md5 in _RESOURCES[name]:
        dest = target / url.rsplit("/", 1)[1]
        if name in _CIFAR_LAYOUT:
            if _check_dir(name, target)[0] is not None:
                continue
            if not (dest.is_file() and file_md5(dest) == md5):
                _fetch(url, dest, md5, progress=progress, timeout=timeout)
            _safe_extract(dest, target)
            if not keep_archive:
                dest.unlink()
        elif not (dest.is_file() and file_md5(dest) == md5):
            _fetch(url, dest, md5, progress=progress, timeout=timeout)
    return target


def list_datasets(data_dir: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Report, for every known dataset, whether and where it is available.

    Args:
        data_dir: explicit directory to search first, as in :func:`load_dataset`.

    Returns:
        One dict per name in :data:`DATASETS` with keys ``name``, ``found`` (bool),
        ``path`` (str or None), ``num_classes``, ``input_shape``, ``downloadable`` and
        ``searched`` (directories tried, in order; empty for digits).

    Example::

        >>> [d["name"] for d in list_datasets()]  # doctest: +SKIP
        ['mnist', 'fashion-mnist', 'cifar10', 'cifar100', 'digits']
    """
    rows = []
    for name in DATASETS:
        row: dict[str, Any] = {
            "name": name,
            "found": False,
            "path": None,
            "num_classes": _NUM_CLASSES[name],
            "input_shape": _INPUT_SHAPES[name],
            "downloadable": name in DOWNLOADABLE,
            "searched": [],
        }
        if name == "digits":
            try:
                import sklearn.datasets as skd

                row["found"] = True
                row["path"] = str(Path(skd.__file__).parent / "data")
            except ImportError:
                pass
        else:
            dirs = candidate_dirs(name, data_dir)
            row["searched"] = [str(d) for d in dirs]
            for d in dirs:
                found, _ = _check_dir(name, d)
                if found is not None:
                    row["found"], row["path"] = True, str(found)
                    break
        rows.append(row)
    return rows
