"""File formats: IDX (MNIST, Fashion-MNIST), CIFAR python pickles, scikit-learn's digits.

Every reader takes an optional :class:`ReadLog`, which records each file read with its
SHA-256 (hashed from the bytes already read, no second pass), so a run can say which files
it trained on.

Example::

    >>> import struct, tempfile, numpy as np
    >>> path = Path(tempfile.mkdtemp()) / "x-idx1-ubyte"
    >>> _ = path.write_bytes(struct.pack(">II", 0x0801, 3) + bytes([1, 2, 3]))
    >>> read_idx(path).tolist()
    [1, 2, 3]
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import pickle
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .catalogue import INPUT_SHAPES, DataFile
from .errors import DatasetFormatError, DatasetNotFoundError
from .locate import idx_file

__all__ = ["IDX_IMAGES_MAGIC", "IDX_LABELS_MAGIC", "ReadLog", "read_idx"]

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
IDX_IMAGES_MAGIC = 0x00000803  # uint8, 3 dims
IDX_LABELS_MAGIC = 0x00000801  # uint8, 1 dim


class ReadLog:
    """The files read so far, in order, each with its SHA-256 and size."""

    def __init__(self) -> None:
        self.files: list[DataFile] = []

    def read(self, path: Path) -> bytes:
        """The bytes of ``path``, recorded."""
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        self.files.append(DataFile(str(path.absolute()), digest, len(data)))
        return data


def _read_bytes(path: Path, log: ReadLog | None) -> bytes:
    """Read a file, transparently decompressing gzip; corrupt gzip -> DatasetFormatError."""
    data = (log or ReadLog()).read(path)
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


def read_idx(
    path: str | os.PathLike[str],
    expected_magic: int | None = None,
    *,
    log: ReadLog | None = None,
) -> np.ndarray:
    """Parse an IDX file (raw or gzipped) into a numpy array.

    The IDX header is ``0x00 0x00 <dtype code> <ndim>`` followed by ``ndim`` big-endian
    uint32 dimensions, then the payload in C order.

    Args:
        path: the file.
        expected_magic: if given, the 32-bit magic number the file must have
            (``0x803`` for uint8 images ``[N, H, W]``, ``0x801`` for uint8 labels ``[N]``).
        log: records the file and its SHA-256.

    Returns:
        Array (possibly read-only) with the file's dtype in native byte order and shape
        ``dims``.

    Raises:
        DatasetFormatError: bad or unexpected magic number, truncated header or
            payload, trailing bytes, or corrupt gzip; the message names the file.
    """
    path = Path(path)
    data = _read_bytes(path, log)
    if len(data) < 4:
        raise DatasetFormatError(
            f"{path}: too short for an IDX header: expected at least 4 bytes, found {len(data)}"
        )
    (magic,) = struct.unpack(">I", data[:4])
    code, ndim = data[2], data[3]
    if data[0] != 0 or data[1] != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise DatasetFormatError(
            f"{path}: not an IDX file: bad magic number 0x{magic:08x} "
            f"(expected 0x0000TTNN with a known type code TT, e.g. 0x{IDX_IMAGES_MAGIC:08x})"
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
    if found != expected:
        what = "truncated IDX data" if found < expected else "IDX data too long"
        only = "only " if found < expected else ""
        raise DatasetFormatError(
            f"{path}: {what}: header says shape {dims} ({expected} bytes), "
            f"found {only}{found} bytes; delete the file and download it again"
        )
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def check_labels(labels: np.ndarray, num_classes: int, path: Path) -> None:
    """Raise :class:`DatasetFormatError` unless every label is in ``[0, num_classes)``."""
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetFormatError(
            f"{path}: labels out of range: expected values in [0, {num_classes - 1}], "
            f"found min {labels.min()} and max {labels.max()}"
        )


def load_idx_split(
    directory: Path,
    images_stem: str,
    labels_stem: str,
    name: str,
    num_classes: int,
    log: ReadLog | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One split's images ``[N, H, W]`` uint8 and labels ``[N]`` from its two IDX files."""
    img_path = idx_file(directory, images_stem)
    lbl_path = idx_file(directory, labels_stem)
    if img_path is None or lbl_path is None:
        stem = images_stem if img_path is None else labels_stem
        raise DatasetNotFoundError(f"{directory / stem}[.gz]: file not found")
    images = read_idx(img_path, IDX_IMAGES_MAGIC, log=log)
    labels = read_idx(lbl_path, IDX_LABELS_MAGIC, log=log)
    _, h, w = INPUT_SHAPES[name]
    if images.shape[1:] != (h, w):
        raise DatasetFormatError(
            f"{img_path}: expected {h}x{w} images, found {images.shape[1]}x{images.shape[2]}"
        )
    if images.shape[0] != labels.shape[0]:
        raise DatasetFormatError(
            f"image/label count mismatch: {img_path} has {images.shape[0]} images but "
            f"{lbl_path} has {labels.shape[0]} labels"
        )
    check_labels(labels, num_classes, lbl_path)
    return images, labels


# ----------------------------------------------------------------------------- CIFAR
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
    (the official CIFAR archives, whose checksums the download verifies). Restricting
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


def _load_pickle(path: Path, log: ReadLog | None) -> Any:
    # Same as pickle.load(f, encoding="bytes") but with the restricted unpickler above.
    # NOTE: only load pickle files from a trusted source.
    data = (log or ReadLog()).read(path)
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise DatasetFormatError(
            f"{path}: corrupt or unsupported CIFAR pickle ({type(e).__name__}: {e}); "
            "delete it and download the dataset again"
        ) from e


def _get(batch: dict[Any, Any], key: str) -> Any:
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise KeyError(key)


def _cifar_batch(path: Path, label_key: str, num_classes: int, log: ReadLog | None) -> Any:
    """One CIFAR batch file as (images ``[N, 3, 32, 32]`` uint8, labels ``[N]`` int64)."""
    batch = _load_pickle(path, log)
    if not isinstance(batch, dict):
        raise DatasetFormatError(
            f"{path}: expected a dict with keys data and {label_key}, found {type(batch).__name__}"
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
            f"{path}: image/label count mismatch: {data.shape[0]} images but {lbl_arr.size} labels"
        )
    check_labels(lbl_arr, num_classes, path)
    return data.reshape(-1, 3, 32, 32), lbl_arr


def load_cifar_files(
    directory: Path,
    files: Sequence[str],
    label_key: str,
    num_classes: int,
    log: ReadLog | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated images ``[N, 3, 32, 32]`` uint8 and labels ``[N]`` of CIFAR batch files."""
    images, labels = [], []
    for fname in files:
        path = directory / fname
        if not path.is_file():
            raise DatasetNotFoundError(f"{path}: file not found")
        x, y = _cifar_batch(path, label_key, num_classes, log)
        images.append(x)
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)


# ----------------------------------------------------------------------------- digits
_DIGITS_SEED = 0


def load_digits(
    log: ReadLog | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (train images, train labels, test images, test labels), pixels in [0, 1].

    Images are ``[N, 8, 8]`` float32; 1,438 train / 359 test from a fixed-seed shuffle.
    """
    try:
        import sklearn.datasets as skd
    except ImportError as e:
        raise ImportError(
            "the 'digits' dataset needs scikit-learn: pip install scikit-learn "
            "(or pip install 'dpp[digits]')"
        ) from e
    source = Path(skd.__file__).parent / "data" / "digits.csv.gz"
    if log is not None and source.is_file():
        log.read(source)  # what scikit-learn reads, recorded with its digest
    bunch = skd.load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / 16.0  # [1797, 8, 8], 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    # Legacy RandomState streams are frozen by NumPy's compatibility policy, so this
    # split is identical across NumPy versions: last 20% of the shuffled order is test.
    perm = np.random.RandomState(_DIGITS_SEED).permutation(len(labels))
    n_test = len(labels) // 5
    train, test = perm[:-n_test], perm[-n_test:]
    return images[train], labels[train], images[test], labels[test]
