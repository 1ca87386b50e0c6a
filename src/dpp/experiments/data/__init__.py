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

The package, one concept per module:

================  ==========================================================================
module            holds
================  ==========================================================================
``catalogue``     names, aliases, shapes, normalization constants, file names, sources
``locate``        where files are looked for (:func:`candidate_dirs`), the not-found error
``formats``       IDX, CIFAR pickles (numpy-only unpickler), digits; the :class:`ReadLog`
``datasets``      :class:`TensorDataset`, :class:`Splits`, :func:`load_dataset`
``loader``        :class:`BatchLoader`
``augmentation``  :func:`random_crop_flip`, :class:`RandomCropFlip`
``download``      :func:`download` (``pooch``), checksums
``errors``        :class:`DatasetError` and its kinds (not found, bad format, checksum)
================  ==========================================================================

An explicit ``data_dir`` is searched alone and fails clearly when it lacks files; without
one, ``$DPP_DATA``, the user cache and the system directories are searched (see
:mod:`dpp.experiments.data.locate`).
"""

from __future__ import annotations

from .augmentation import RandomCropFlip, default_augmentation, random_crop_flip
from .catalogue import (
    DATASETS,
    DOWNLOADABLE,
    SYSTEM_DIRS,
    DataFile,
    DatasetInfo,
    canonical_name,
    dataset_info,
)
from .datasets import Splits, TensorDataset, load_dataset
from .download import download, file_md5, verify_checksum
from .errors import ChecksumError, DatasetError, DatasetFormatError, DatasetNotFoundError
from .formats import read_idx
from .loader import BatchLoader
from .locate import (
    cache_dir,
    candidate_dirs,
    default_download_root,
    find_dataset_dir,
    list_datasets,
)

__all__ = [
    "DATASETS",
    "DOWNLOADABLE",
    "SYSTEM_DIRS",
    "BatchLoader",
    "ChecksumError",
    "DataFile",
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
