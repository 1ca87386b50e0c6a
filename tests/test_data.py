"""Tests for dpp.experiments.data: loaders, lookup, splits, batching, augmentation."""

from __future__ import annotations

import gzip
import hashlib
import importlib
import io
import pickle
import re
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from dpp.experiments import data as D
from dpp.experiments.data import (
    BatchLoader,
    ChecksumError,
    DatasetFormatError,
    DatasetNotFoundError,
    RandomCropFlip,
    TensorDataset,
    load_dataset,
    random_crop_flip,
)
from dpp.experiments.data.catalogue import RESOURCES

DL = importlib.import_module("dpp.experiments.data.download")

IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """Point HOME / XDG_CACHE_HOME at empty temp dirs and unset DPP_DATA."""
    monkeypatch.delenv("DPP_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    """Serialize a uint8 array as IDX (optionally overriding the magic number)."""
    if magic is None:
        magic = 0x0800 | arr.ndim
    header = struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_file(path: Path, payload: bytes, gz: bool) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path


def make_idx_dataset(directory: Path, n_train=12, n_test=6, gz=True, seed=0, hw=28):
    """Write a tiny MNIST-format dataset; return the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, hw, hw), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, hw, hw), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for key, arr in arrays.items():
        write_file(directory / IDX_NAMES[key], idx_bytes(arr), gz)
    return arrays


def write_pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def make_cifar10(directory: Path, per_batch=3, seed=0):
    """Write CIFAR-10 python batches into directory/cifar-10-batches-py."""
    rng = np.random.default_rng(seed)
    root = directory / "cifar-10-batches-py"
    batches = {}
    for fname in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, per_batch)],
            b"batch_label": b"generated",
        }
        write_pickle(root / fname, batch)
        batches[fname] = batch
    return root, batches


def toy_dataset(n=10, c=1, h=2, w=2) -> TensorDataset:
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, c, h, w).clone()
    return TensorDataset(images, torch.arange(n), "toy", "train")


def epoch_labels(loader: BatchLoader) -> list[list[int]]:
    return [y.tolist() for _, y in loader]


# --------------------------------------------------------------------------------------
# IDX loaders
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip(tmp_path, gz):
    """Generated IDX files (gzipped or raw) load back to the same pixels and labels."""
    arrays = make_idx_dataset(tmp_path, gz=gz)
    splits = load_dataset("mnist", data_dir=tmp_path, normalize=False)
    assert splits.train.images.shape == (12, 1, 28, 28)
    assert splits.test.images.shape == (6, 1, 28, 28)
    assert splits.train.images.dtype == torch.float32
    assert splits.train.labels.dtype == torch.int64
    restored = (splits.train.images[:, 0] * 255).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(restored, arrays["train_images"])
    np.testing.assert_array_equal(splits.test.labels.numpy(), arrays["test_labels"])
    assert splits.val is None
    assert splits.info.source == tmp_path
    assert splits.info.num_classes == 10


def test_normalization_uses_info_constants(tmp_path):
    """Normalized images equal (raw - mean) / std with the constants reported in info."""
    make_idx_dataset(tmp_path)
    raw = load_dataset("mnist", data_dir=tmp_path, normalize=False)
    norm = load_dataset("mnist", data_dir=tmp_path)
    (mean,), (std,) = norm.info.mean, norm.info.std
    torch.testing.assert_close(norm.train.images, (raw.train.images - mean) / std)


def test_read_idx_bad_magic(tmp_path):
    """An IDX file with a wrong magic number is rejected with its name in the message."""
    make_idx_dataset(tmp_path, gz=False)
    bad = tmp_path / IDX_NAMES["train_images"]
    bad.write_bytes(b"\x12\x34" + bad.read_bytes()[2:])
    with pytest.raises(DatasetFormatError, match="magic") as exc:
        load_dataset("mnist", data_dir=tmp_path)
    assert str(bad) in str(exc.value)


def test_read_idx_swapped_magic(tmp_path):
    """A labels file where images are expected reports expected vs found magic numbers."""
    make_idx_dataset(tmp_path, gz=False)
    labels = (tmp_path / IDX_NAMES["train_labels"]).read_bytes()
    (tmp_path / IDX_NAMES["train_images"]).write_bytes(labels)
    with pytest.raises(DatasetFormatError) as exc:
        load_dataset("mnist", data_dir=tmp_path)
    msg = str(exc.value)
    assert IDX_NAMES["train_images"] in msg and "00000803" in msg and "00000801" in msg


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_truncated(tmp_path, gz):
    """A truncated payload is reported with the file name and the expected shape."""
    arr = np.zeros((5, 28, 28), dtype=np.uint8)
    path = write_file(tmp_path / "x-idx3-ubyte", idx_bytes(arr)[:-10], gz)
    with pytest.raises(DatasetFormatError, match="truncated") as exc:
        D.read_idx(path)
    assert path.name in str(exc.value)


def test_read_idx_trailing_bytes(tmp_path):
    """Extra bytes after the payload are reported as an error, not silently ignored."""
    path = tmp_path / "x-idx1-ubyte"
    path.write_bytes(idx_bytes(np.arange(4, dtype=np.uint8)) + b"\x00")
    with pytest.raises(DatasetFormatError, match=path.name):
        D.read_idx(path)


def test_read_idx_shapes_and_dtypes(tmp_path):
    """read_idx honours the dims and big-endian dtype codes of the header."""
    values = np.arange(6, dtype=">i4").reshape(2, 3)
    path = tmp_path / "ints.idx"
    path.write_bytes(struct.pack(">I", 0x0C02) + struct.pack(">2I", 2, 3) + values.tobytes())
    out = D.read_idx(path)
    assert out.shape == (2, 3)
    np.testing.assert_array_equal(out, values.astype(np.int32))


def test_count_mismatch(tmp_path):
    """Image and label files with different counts name both files."""
    make_idx_dataset(tmp_path, gz=False)
    write_file(tmp_path / IDX_NAMES["train_labels"], idx_bytes(np.zeros(11, dtype=np.uint8)), False)
    with pytest.raises(DatasetFormatError, match="mismatch") as exc:
        load_dataset("mnist", data_dir=tmp_path)
    assert IDX_NAMES["train_images"] in str(exc.value)
    assert IDX_NAMES["train_labels"] in str(exc.value)


def test_labels_out_of_range(tmp_path):
    """Labels >= num_classes are rejected naming the file and the valid range."""
    make_idx_dataset(tmp_path, gz=False)
    labels = np.full(12, 10, dtype=np.uint8)
    write_file(tmp_path / IDX_NAMES["train_labels"], idx_bytes(labels), False)
    with pytest.raises(DatasetFormatError, match="out of range") as exc:
        load_dataset("mnist", data_dir=tmp_path)
    assert IDX_NAMES["train_labels"] in str(exc.value)


def test_wrong_image_size(tmp_path):
    """MNIST images that are not 28x28 are rejected with expected vs found sizes."""
    make_idx_dataset(tmp_path, hw=20)
    with pytest.raises(DatasetFormatError, match="28x28"):
        load_dataset("mnist", data_dir=tmp_path)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "not-gzip"])
def test_corrupt_gzip(tmp_path, damage):
    """A corrupt .gz file raises DatasetFormatError naming the file."""
    make_idx_dataset(tmp_path, gz=True)
    path = tmp_path / (IDX_NAMES["test_images"] + ".gz")
    good = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(good[:10] + b"\xff" * 200 + good[210:])
    elif damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    else:
        path.write_bytes(b"plain text, not gzip")
    with pytest.raises(DatasetFormatError) as exc:
        load_dataset("mnist", data_dir=tmp_path)
    assert path.name in str(exc.value)


def test_missing_file(tmp_path):
    """A directory missing one file names that file, every directory tried and the fixes."""
    make_idx_dataset(tmp_path, gz=True)
    (tmp_path / (IDX_NAMES["test_labels"] + ".gz")).unlink()
    with pytest.raises(DatasetNotFoundError) as exc:
        load_dataset("mnist", data_dir=tmp_path)
    assert isinstance(exc.value, FileNotFoundError)
    msg = str(exc.value)
    assert IDX_NAMES["test_labels"] in msg
    for d in D.candidate_dirs("mnist", tmp_path):
        assert str(d) in msg
    assert "dpp data download mnist" in msg and "--data-dir" in msg


def test_fashion_not_found_mentions_apt(tmp_path, monkeypatch):
    """The Fashion-MNIST not-found error lists the Debian directory and the apt package."""
    system = tmp_path / "usr-share-fashion"
    monkeypatch.setitem(D.SYSTEM_DIRS, "fashion-mnist", [system])
    with pytest.raises(DatasetNotFoundError) as exc:
        load_dataset("fashion-mnist")
    assert str(system) in str(exc.value)
    assert "apt-get install dataset-fashion-mnist" in str(exc.value)


# --------------------------------------------------------------------------------------
# lookup order
# --------------------------------------------------------------------------------------


def test_lookup_order(tmp_path, monkeypatch):
    """An explicit data_dir beats $DPP_DATA, which beats the user cache."""
    explicit, env, xdg = tmp_path / "explicit", tmp_path / "env", tmp_path / "xdg-cache"
    make_idx_dataset(explicit / "mnist", n_train=11)
    make_idx_dataset(env / "mnist", n_train=12)
    make_idx_dataset(xdg / "dpp" / "mnist", n_train=13)
    monkeypatch.setenv("DPP_DATA", str(env))
    assert len(load_dataset("mnist", data_dir=explicit).train) == 11
    assert len(load_dataset("mnist").train) == 12
    monkeypatch.delenv("DPP_DATA")
    assert len(load_dataset("mnist").train) == 13
    assert load_dataset("mnist").info.source == xdg / "dpp" / "mnist"


def test_lookup_home_cache_and_flat_dirs(tmp_path, monkeypatch):
    """The cache defaults to ~/.cache/dpp/<name>; $DPP_DATA itself is searched too."""
    monkeypatch.delenv("XDG_CACHE_HOME")
    home = tmp_path / "home"
    make_idx_dataset(home / ".cache" / "dpp" / "mnist", n_train=7)
    assert len(load_dataset("mnist").train) == 7
    flat = tmp_path / "flat"
    make_idx_dataset(flat, n_train=8)
    monkeypatch.setenv("DPP_DATA", str(flat))
    assert len(load_dataset("mnist").train) == 8


def test_explicit_dir_is_used_alone(tmp_path, monkeypatch):
    """An explicit dir lacking files fails naming it, though $DPP_DATA and the cache have them."""
    make_idx_dataset(tmp_path / "env" / "mnist", n_train=9)
    make_idx_dataset(tmp_path / "xdg-cache" / "dpp" / "mnist", n_train=9)
    monkeypatch.setenv("DPP_DATA", str(tmp_path / "env"))
    empty = tmp_path / "empty"
    with pytest.raises(DatasetNotFoundError) as exc:
        load_dataset("mnist", data_dir=empty)
    msg = str(exc.value)
    assert str(empty) in msg and f"dpp data download mnist --data-dir {empty}" in msg
    assert str(tmp_path / "env" / "mnist") not in msg.split("To fix")[0]


@pytest.mark.parametrize(
    "remove",
    [
        ("test_images", "test_labels"),  # no test files
        ("train_labels",),  # no labels
        ("test_labels",),
    ],
    ids=["no-test-files", "no-train-labels", "no-test-labels"],
)
def test_incomplete_explicit_dir_names_missing_files(tmp_path, monkeypatch, remove):
    """An incomplete explicit dir's error names it, exactly its missing files and the fix."""
    make_idx_dataset(tmp_path / "xdg-cache" / "dpp" / "mnist")
    explicit = tmp_path / "explicit"
    make_idx_dataset(explicit)
    for key in remove:
        (explicit / (IDX_NAMES[key] + ".gz")).unlink()
    with pytest.raises(DatasetNotFoundError) as exc:
        load_dataset("mnist", data_dir=explicit)
    msg = str(exc.value)
    line = next(ln for ln in msg.splitlines() if ln.strip().startswith(f"- {explicit} ("))
    for key, stem in IDX_NAMES.items():
        assert (stem in line) == (key in remove)
    assert f"dpp data download mnist --data-dir {explicit}" in msg
    assert str(tmp_path / "xdg-cache") not in msg


@pytest.mark.parametrize("damage", ["truncate", "flip-header"])
def test_damaged_file_in_explicit_dir_is_an_error(tmp_path, monkeypatch, damage):
    """A damaged file in an explicit dir is an error naming it, not a fallback to $DPP_DATA."""
    make_idx_dataset(tmp_path / "env" / "mnist", gz=False)
    monkeypatch.setenv("DPP_DATA", str(tmp_path / "env"))
    explicit = tmp_path / "explicit"
    make_idx_dataset(explicit, gz=False)
    path = explicit / IDX_NAMES["test_images"]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\xff" + data[1:])
    with pytest.raises(DatasetFormatError) as exc:
        load_dataset("mnist", data_dir=explicit)
    assert str(path) in str(exc.value)


def test_implicit_search_skips_incomplete_dirs(tmp_path, monkeypatch):
    """Without an explicit dir, an incomplete $DPP_DATA copy is passed over for the cache."""
    make_idx_dataset(tmp_path / "env" / "mnist", n_train=5)
    (tmp_path / "env" / "mnist" / (IDX_NAMES["test_labels"] + ".gz")).unlink()
    make_idx_dataset(tmp_path / "xdg-cache" / "dpp" / "mnist", n_train=7)
    monkeypatch.setenv("DPP_DATA", str(tmp_path / "env"))
    assert len(load_dataset("mnist").train) == 7


def test_load_records_files_and_digests(tmp_path):
    """info.files lists every file read, once, with its absolute path, SHA-256 and size."""
    make_idx_dataset(tmp_path)
    info = load_dataset("mnist", data_dir=tmp_path).info
    paths = sorted(Path(f.path) for f in info.files)
    assert paths == sorted(tmp_path / (stem + ".gz") for stem in IDX_NAMES.values())
    for f in info.files:
        payload = Path(f.path).read_bytes()
        assert f.sha256 == hashlib.sha256(payload).hexdigest() and f.size == len(payload)
    assert set(info.files[0].to_dict()) == {"path", "sha256", "bytes"}


def test_cifar_load_records_every_batch(tmp_path):
    """CIFAR provenance lists the five train batches and the test batch."""
    make_cifar10(tmp_path)
    files = load_dataset("cifar10", data_dir=tmp_path).info.files
    assert sorted(Path(f.path).name for f in files) == sorted(
        [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    )


def test_candidate_dirs_order(tmp_path, monkeypatch):
    """An explicit dir is searched alone; else $DPP_DATA, the cache, then the system dir."""
    monkeypatch.setenv("DPP_DATA", str(tmp_path / "env"))
    assert D.candidate_dirs("fmnist", tmp_path / "x") == [
        tmp_path / "x" / "fashion-mnist",
        tmp_path / "x",
    ]
    dirs = D.candidate_dirs("fmnist")
    assert dirs[:3] == [
        tmp_path / "env" / "fashion-mnist",
        tmp_path / "env",
        tmp_path / "xdg-cache" / "dpp" / "fashion-mnist",
    ]
    assert dirs[3:] == D.SYSTEM_DIRS["fashion-mnist"]


def test_list_datasets(tmp_path):
    """list_datasets reports found datasets with their directory and missing ones as absent."""
    make_idx_dataset(tmp_path / "mnist")
    rows = {r["name"]: r for r in D.list_datasets(tmp_path)}
    assert set(rows) == set(D.DATASETS)
    assert rows["mnist"]["found"] and rows["mnist"]["path"] == str(tmp_path / "mnist")
    assert not rows["cifar10"]["found"] and rows["cifar10"]["path"] is None
    assert str(tmp_path / "cifar10") in rows["cifar10"]["searched"]


# --------------------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["parent", "named", "batches-dir"])
def test_cifar10_roundtrip(tmp_path, layout):
    """CIFAR-10 batches load as [N,3,32,32] in file order, from any supported layout."""
    target = {"parent": tmp_path, "named": tmp_path / "cifar10", "batches-dir": tmp_path}
    root, batches = make_cifar10(target[layout])
    data_dir = root if layout == "batches-dir" else tmp_path
    splits = load_dataset("cifar10", data_dir=data_dir, normalize=False)
    assert splits.train.images.shape == (15, 3, 32, 32)
    assert splits.test.images.shape == (3, 3, 32, 32)
    train_rows = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    restored = (splits.train.images * 255).round().to(torch.uint8).reshape(15, 3072).numpy()
    np.testing.assert_array_equal(restored, train_rows)
    labels = [v for i in range(1, 6) for v in batches[f"data_batch_{i}"][b"labels"]]
    assert splits.train.labels.tolist() == labels
    assert splits.info.source == root
    assert splits.info.input_shape == (3, 32, 32)


def test_cifar100_fine_labels(tmp_path):
    """CIFAR-100 uses fine_labels (100 classes) from the train/test files."""
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar-100-python"
    for fname, n in (("train", 6), ("test", 4)):
        write_pickle(
            root / fname,
            {
                b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                b"fine_labels": [99, *range(n - 1)],
                b"coarse_labels": [0] * n,
            },
        )
    splits = load_dataset("cifar100", data_dir=tmp_path, val_size=2)
    assert splits.info.num_classes == 100
    assert len(splits.train) == 4 and len(splits.val) == 2 and len(splits.test) == 4
    assert splits.test.labels.tolist() == [99, 0, 1, 2]


@pytest.mark.parametrize(
    "batch, match",
    [
        ({b"data": np.zeros((3, 100), np.uint8), b"labels": [0, 0, 0]}, "3072"),
        ({b"data": np.zeros((3, 3072), np.float32), b"labels": [0, 0, 0]}, "uint8"),
        ({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 0]}, "mismatch"),
        ({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 0, 10]}, "out of range"),
        ({b"data": np.zeros((3, 3072), np.uint8)}, "labels"),
        ([1, 2, 3], "dict"),
    ],
)
def test_cifar_invalid_batch(tmp_path, batch, match):
    """Malformed CIFAR batches raise DatasetFormatError naming the file and the problem."""
    root, _ = make_cifar10(tmp_path)
    write_pickle(root / "data_batch_3", batch)
    with pytest.raises(DatasetFormatError, match=match) as exc:
        load_dataset("cifar10", data_dir=tmp_path)
    assert "data_batch_3" in str(exc.value)


def test_cifar_corrupt_pickle(tmp_path):
    """A truncated pickle raises DatasetFormatError naming the file."""
    root, _ = make_cifar10(tmp_path)
    path = root / "test_batch"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(DatasetFormatError, match="test_batch"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_cifar_pickle_refuses_arbitrary_globals(tmp_path):
    """Pickles referencing non-numpy globals are refused, not executed."""
    root, _ = make_cifar10(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    write_pickle(root / "data_batch_1", {b"data": Evil(), b"labels": []})
    with pytest.raises(DatasetFormatError, match="data_batch_1"):
        load_dataset("cifar10", data_dir=tmp_path)
    assert not marker.exists()


def test_cifar_missing_file(tmp_path):
    """A missing CIFAR batch file makes the dataset not found, naming what is missing."""
    root, _ = make_cifar10(tmp_path)
    (root / "data_batch_5").unlink()
    with pytest.raises(DatasetNotFoundError, match="data_batch_5"):
        load_dataset("cifar10", data_dir=tmp_path)


# --------------------------------------------------------------------------------------
# names, splits, digits, real data
# --------------------------------------------------------------------------------------


def test_unknown_name_lists_valid_names():
    """An unknown dataset name raises ValueError listing the valid names."""
    with pytest.raises(ValueError) as exc:
        load_dataset("imagenet")
    for name in D.DATASETS:
        assert name in str(exc.value)


@pytest.mark.parametrize("alias", ["fashion-mnist", "fashion_mnist", "fmnist", "Fashion-MNIST"])
def test_fashion_aliases(alias):
    """All Fashion-MNIST spellings resolve to the canonical name."""
    assert D.canonical_name(alias) == "fashion-mnist"


def test_val_split_is_last_images(tmp_path):
    """val_size holds out the LAST training images; train keeps the rest in order."""
    make_idx_dataset(tmp_path, n_train=12)
    full = load_dataset("mnist", data_dir=tmp_path)
    split = load_dataset("mnist", data_dir=tmp_path, val_size=5)
    torch.testing.assert_close(split.val.images, full.train.images[-5:])
    torch.testing.assert_close(split.train.images, full.train.images[:-5])
    assert split.val.labels.tolist() == full.train.labels[-5:].tolist()
    assert split.val.split == "val" and len(split.test) == len(full.test)


@pytest.mark.parametrize("val_size", [12, 13, -1])
def test_val_size_out_of_range(tmp_path, val_size):
    """val_size must be in [0, n_train)."""
    make_idx_dataset(tmp_path, n_train=12)
    with pytest.raises(ValueError, match="val_size"):
        load_dataset("mnist", data_dir=tmp_path, val_size=val_size)


def test_digits():
    """digits loads as [N,1,8,8] floats with a reproducible 80/20 split and sane constants."""
    pytest.importorskip("sklearn")
    a = load_dataset("digits")
    b = load_dataset("digits")
    assert a.train.images.shape[1:] == (1, 8, 8) and a.info.input_shape == (1, 8, 8)
    assert len(a.train) + len(a.test) == 1797
    assert len(a.test) == 1797 // 5
    torch.testing.assert_close(a.test.images, b.test.images)
    assert torch.equal(a.train.labels, b.train.labels)
    assert set(a.test.labels.tolist()) == set(range(10))
    # the normalization constants are the statistics of the train split
    assert abs(a.train.images.mean().item()) < 0.01
    assert abs(a.train.images.std().item() - 1) < 0.01


_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(
    not (_FASHION / "train-images-idx3-ubyte.gz").exists(), reason="dataset-fashion-mnist absent"
)
def test_real_fashion_mnist():
    """The Debian Fashion-MNIST loads: 60000/10000 images of 1x28x28, 10 balanced classes."""
    splits = load_dataset("fashion-mnist", val_size=5000)
    assert splits.info.source == _FASHION
    assert len(splits.train) + len(splits.val) == 60000 and len(splits.val) == 5000
    assert splits.test.images.shape == (10000, 1, 28, 28)
    assert splits.test.labels.bincount().tolist() == [1000] * 10
    imgs = torch.cat([splits.train.images, splits.val.images])
    assert abs(imgs.mean().item()) < 0.01 and abs(imgs.std().item() - 1) < 0.01


# --------------------------------------------------------------------------------------
# BatchLoader
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shuffle", [True, False])
def test_loader_covers_each_sample_once(shuffle):
    """One epoch visits every sample exactly once, images matching their labels."""
    ds = toy_dataset(23)
    loader = BatchLoader(ds, 5, shuffle=shuffle, seed=1)
    seen = []
    for x, y in loader:
        assert torch.equal(x[:, 0, 0, 0], y.float())
        seen += y.tolist()
    assert sorted(seen) == list(range(23))
    assert len(loader) == 5
    if not shuffle:
        assert seen == list(range(23))


def test_loader_deterministic_per_epoch():
    """The order depends only on (seed, epoch): reproducible, and different across epochs."""
    ds = toy_dataset(50)
    a = BatchLoader(ds, 8, shuffle=True, seed=3)
    b = BatchLoader(ds, 8, shuffle=True, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert epoch_labels(a) == epoch_labels(b)
    assert epoch_labels(a) == epoch_labels(a)  # re-iterating repeats the epoch
    b.set_epoch(3)
    assert epoch_labels(a) != epoch_labels(b)
    c = BatchLoader(ds, 8, shuffle=True, seed=4)
    c.set_epoch(2)
    assert epoch_labels(a) != epoch_labels(c)


def test_loader_resume_mid_epoch():
    """set_epoch(e, start_batch=k) yields exactly the tail of epoch e, augmentation included."""
    ds = toy_dataset(30, c=3, h=6, w=6)
    aug = RandomCropFlip(padding=2)
    full = BatchLoader(ds, 4, shuffle=True, seed=5, augment=aug)
    full.set_epoch(7)
    batches = list(full)
    resumed = BatchLoader(ds, 4, shuffle=True, seed=5, augment=aug)
    resumed.set_epoch(7, start_batch=3)
    tail = list(resumed)
    assert len(tail) == len(batches) - 3
    for (x1, y1), (x2, y2) in zip(batches[3:], tail, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert len(list(resumed)) == len(batches)  # start_batch applies to one iteration only


def test_loader_generator_state_resume():
    """With a torch.Generator, restoring its state reproduces the epoch exactly."""
    ds = toy_dataset(20)
    g = torch.Generator().manual_seed(0)
    loader = BatchLoader(ds, 6, shuffle=True, generator=g)
    state = g.get_state()
    first = epoch_labels(loader)
    second = epoch_labels(loader)
    g.set_state(state)
    assert epoch_labels(loader) == first
    assert first != second


@pytest.mark.parametrize("n, world_size, batch_size", [(10, 3, 2), (7, 4, 3), (2, 3, 1)])
def test_loader_distributed_shards(n, world_size, batch_size):
    """Ranks get equal batch counts and cover every sample; only wrap-around padding repeats."""
    ds = toy_dataset(n)
    per_rank = []
    for rank in range(world_size):
        loader = BatchLoader(ds, batch_size, shuffle=True, seed=2, rank=rank, world_size=world_size)
        batches = epoch_labels(loader)
        assert len(batches) == len(loader)
        per_rank.append([i for b in batches for i in b])
    assert len({len(r) for r in per_rank}) == 1
    flat = [i for r in per_rank for i in r]
    assert set(flat) == set(range(n))
    padded = -(-n // world_size) * world_size
    assert len(flat) == padded


def test_loader_distributed_drop_last():
    """With drop_last, shards are disjoint, equal-sized, and every batch is full."""
    ds = toy_dataset(11)
    shards = []
    for rank in range(3):
        loader = BatchLoader(ds, 2, shuffle=True, seed=0, rank=rank, world_size=3, drop_last=True)
        batches = epoch_labels(loader)
        assert len(batches) == len(loader) == 1
        assert all(len(b) == 2 for b in batches)
        shards.append(set(loader.indices().tolist()))
    assert all(len(s) == 3 for s in shards)
    assert not (shards[0] & shards[1] or shards[0] & shards[2] or shards[1] & shards[2])


@pytest.mark.parametrize("n, bs", [(10, 3), (9, 3), (2, 5)])
def test_loader_drop_last(n, bs):
    """drop_last drops only the final incomplete batch; len() matches the batches yielded."""
    loader = BatchLoader(toy_dataset(n), bs, shuffle=True, drop_last=True)
    sizes = [len(y) for _, y in loader]
    assert sizes == [bs] * (n // bs) and len(loader) == n // bs
    keep = BatchLoader(toy_dataset(n), bs, shuffle=True)
    assert sum(len(y) for _, y in keep) == n and len(keep) == -(-n // bs)


def test_loader_rejects_bad_args():
    """Invalid batch size, rank or world size raise ValueError."""
    ds = toy_dataset(4)
    with pytest.raises(ValueError):
        BatchLoader(ds, 0)
    with pytest.raises(ValueError):
        BatchLoader(ds, 2, rank=2, world_size=2)


def test_loader_applies_augment():
    """The augment callable is applied to each batch with a per-batch generator."""
    calls = []

    def aug(x, g):
        assert isinstance(g, torch.Generator)
        calls.append(len(x))
        return -x

    ds = toy_dataset(7)
    out = [x for x, _ in BatchLoader(ds, 3, augment=aug, device="cpu")]
    assert calls == [3, 3, 1]
    assert torch.equal(torch.cat(out), -ds.images)


# --------------------------------------------------------------------------------------
# augmentation
# --------------------------------------------------------------------------------------


def test_augment_shape_and_determinism():
    """Crop+flip keeps shape and dtype, is reproducible per seed and varies across seeds."""
    x = torch.randn(16, 3, 32, 32)
    a = random_crop_flip(x, torch.Generator().manual_seed(0))
    b = random_crop_flip(x, torch.Generator().manual_seed(0))
    c = random_crop_flip(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_flip_really_flips():
    """Without padding each output is the image or its mirror, and both occur."""
    x = torch.randn(32, 2, 5, 7)
    out = random_crop_flip(x, torch.Generator().manual_seed(0), padding=0)
    same = [torch.equal(o, i) for o, i in zip(out, x, strict=True)]
    mirrored = [torch.equal(o, i.flip(-1)) for o, i in zip(out, x, strict=True)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True))
    assert any(same) and any(mirrored)


def test_crop_is_a_shifted_window_of_the_padded_image():
    """Without flip each output is some window of the zero-padded image; shifts vary."""
    x = torch.randn(12, 3, 6, 6)
    p = 2
    out = random_crop_flip(x, torch.Generator().manual_seed(0), padding=p, flip=False)
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    offsets = set()
    for k in range(len(x)):
        matches = [
            (dy, dx)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            if torch.equal(out[k], padded[k, :, dy : dy + 6, dx : dx + 6])
        ]
        assert matches
        offsets.add(matches[0])
    assert len(offsets) > 1


def test_crop_fill_per_channel():
    """Padding uses the per-channel fill value; other pixels come from the image."""
    x = torch.full((8, 3, 4, 4), 5.0)
    fill = (-1.0, -2.0, -3.0)
    out = RandomCropFlip(padding=2, fill=fill)(x, torch.Generator().manual_seed(0))
    for c in range(3):
        vals = set(out[:, c].unique().tolist())
        assert vals <= {5.0, fill[c]}
    assert (out < 0).any()


def test_default_augmentation():
    """CIFAR gets 4-pixel crop+flip by default; MNIST-like datasets get none."""
    assert isinstance(D.default_augmentation("cifar10"), RandomCropFlip)
    assert D.default_augmentation("cifar10").padding == 4
    assert D.default_augmentation("mnist") is None


# --------------------------------------------------------------------------------------
# checksums and archive extraction (no network)
# --------------------------------------------------------------------------------------


def test_verify_checksum(tmp_path):
    """verify_checksum accepts the right MD5 and reports both checksums on a mismatch."""
    path = tmp_path / "blob.bin"
    path.write_bytes(b"dpp" * 1000)
    good = hashlib.md5(path.read_bytes()).hexdigest()
    assert D.file_md5(path) == good
    D.verify_checksum(path, good)
    with pytest.raises(ChecksumError) as exc:
        D.verify_checksum(path, "0" * 32, url="https://example.invalid/blob.bin")
    msg = str(exc.value)
    assert good in msg and "0" * 32 in msg and "https://example.invalid/blob.bin" in msg


class LocalSource:
    """A stand-in for the network: serves files by URL and counts the fetches."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.fetched: list[str] = []

    def add(self, url: str, payload: bytes) -> tuple[str, str]:
        self.files[url] = payload
        return url, hashlib.md5(payload).hexdigest()

    def downloader(self, progress: bool, timeout: float):
        def fetch(url: str, output_file: str, pooch_obj) -> None:
            self.fetched.append(url)
            Path(output_file).write_bytes(self.files[url])

        return fetch


@pytest.fixture
def offline(monkeypatch) -> LocalSource:
    """Replace the HTTP downloader and the published sources by local bytes."""
    source = LocalSource()
    monkeypatch.setattr(DL, "_downloader", source.downloader)
    monkeypatch.setattr(DL, "RESOURCES", {})
    return source


def _mnist_resources(source: LocalSource, tmp_path: Path) -> list[tuple[str, str]]:
    make_idx_dataset(tmp_path / "published", gz=True)
    return [
        source.add(f"https://example.invalid/{p.name}", p.read_bytes())
        for p in sorted((tmp_path / "published").iterdir())
    ]


def test_download_verifies_writes_and_is_found(tmp_path, offline, monkeypatch):
    """download() writes ROOT/<name>, load_dataset(data_dir=ROOT) reads it, no refetch."""
    monkeypatch.setitem(DL.RESOURCES, "mnist", _mnist_resources(offline, tmp_path))
    root = tmp_path / "root"
    assert D.download("mnist", root, progress=False) == root / "mnist"
    assert len(offline.fetched) == 4
    assert {p.stat().st_mode & 0o777 for p in (root / "mnist").iterdir()} == {0o644}
    assert len(load_dataset("mnist", data_dir=root).train) == 12
    D.download("mnist", root, progress=False)
    assert len(offline.fetched) == 4


def test_download_checksum_mismatch_leaves_nothing(tmp_path, offline, monkeypatch):
    """An MD5 mismatch names the URL and both checksums and leaves no file behind."""
    url, md5 = offline.add("https://example.invalid/a.gz", b"payload" * 100)
    monkeypatch.setitem(DL.RESOURCES, "mnist", [(url, "f" * 32)])
    root = tmp_path / "root"
    with pytest.raises(ChecksumError) as exc:
        D.download("mnist", root, progress=False)
    msg = str(exc.value)
    assert url in msg and md5 in msg and "f" * 32 in msg
    assert list((root / "mnist").iterdir()) == []


def test_download_network_error_names_url_and_destination(tmp_path, monkeypatch):
    """A failing connection raises DatasetError naming the URL and where to put the file."""

    def refuse(url, output_file, pooch_obj):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(DL, "_downloader", lambda progress, timeout: refuse)
    monkeypatch.setitem(DL.RESOURCES, "mnist", [("https://example.invalid/a.gz", "0" * 32)])
    with pytest.raises(D.DatasetError) as exc:
        D.download("mnist", tmp_path, progress=False)
    assert "https://example.invalid/a.gz" in str(exc.value)
    assert str(tmp_path / "mnist" / "a.gz") in str(exc.value)


def _tar_bytes(members: dict[str, bytes], symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        if symlink:
            info = tarfile.TarInfo("link")
            info.type = tarfile.SYMTYPE
            info.linkname = symlink
            tar.addfile(info)
    return buf.getvalue()


def test_download_extracts_cifar_archive(tmp_path, offline, monkeypatch):
    """A CIFAR archive is downloaded, extracted and deleted; the batches then load."""
    make_cifar10(tmp_path / "published")
    folder = tmp_path / "published" / "cifar-10-batches-py"
    members = {f"cifar-10-batches-py/{p.name}": p.read_bytes() for p in folder.iterdir()}
    url = "https://example.invalid/cifar-10-python.tar.gz"
    monkeypatch.setitem(DL.RESOURCES, "cifar10", [offline.add(url, _tar_bytes(members))])
    target = D.download("cifar10", tmp_path / "root", progress=False)
    assert sorted(p.name for p in target.iterdir()) == ["cifar-10-batches-py"]
    assert len(load_dataset("cifar10", data_dir=tmp_path / "root").train) == 15
    D.download("cifar10", tmp_path / "root", progress=False)
    assert offline.fetched == [url]


@pytest.mark.parametrize(
    "members, symlink",
    [({"../evil": b"x"}, None), ({}, "/etc/passwd")],
    ids=["path-traversal", "symlink"],
)
def test_download_refuses_unsafe_archive(tmp_path, offline, monkeypatch, members, symlink):
    """An archive with a member leaving the target or a link is refused, nothing extracted."""
    url = "https://example.invalid/cifar-10-python.tar.gz"
    monkeypatch.setitem(DL.RESOURCES, "cifar10", [offline.add(url, _tar_bytes(members, symlink))])
    with pytest.raises(DatasetFormatError, match="unsafe"):
        D.download("cifar10", tmp_path / "root", progress=False)
    assert not (tmp_path / "root" / "evil").exists() and not (tmp_path / "evil").exists()
    assert not (tmp_path / "root" / "cifar10" / "link").exists()


def test_download_rejects_digits():
    """digits cannot be downloaded: the error says it ships with scikit-learn."""
    with pytest.raises(ValueError, match="scikit-learn"):
        D.download("digits")


def test_resources_table_is_complete():
    """Every downloadable dataset has URLs with 32-hex-digit MD5s."""
    assert set(RESOURCES) == set(D.DOWNLOADABLE)
    for entries in RESOURCES.values():
        for url, md5 in entries:
            assert url.startswith(("http://", "https://"))
            assert len(md5) == 32 and int(md5, 16) >= 0


def test_cache_dir_comes_from_platformdirs(tmp_path):
    """The user cache is platformdirs' cache directory for dpp (XDG_CACHE_HOME honoured)."""
    assert D.cache_dir() == tmp_path / "xdg-cache" / "dpp"


@pytest.mark.parametrize("module", ["catalogue", "formats", "augmentation", "loader"])
def test_docstring_examples(module):
    """The examples in the data package's docstrings run and print what they show."""
    import doctest

    mod = importlib.import_module(f"dpp.experiments.data.{module}")
    result = doctest.testmod(mod, verbose=False)
    assert result.failed == 0 and result.attempted > 0


@pytest.mark.slow
def test_run_records_the_data_files_it_read(tmp_path):
    """summary.json and the final record list the data files read with their SHA-256."""
    pytest.importorskip("sklearn")
    import json

    from dpp.experiments.runconfig import RunConfig
    from dpp.experiments.trainer import train

    cfg = RunConfig.from_dict(
        {
            "name": "provenance",
            "method": "dense",
            "output_dir": str(tmp_path),
            "data": {"dataset": "digits", "batch_size": 256},
            "model": {"name": "lenet300"},
            "train": {"epochs": 1, "device": "cpu"},
            "log": {"progress": "off"},
        }
    )
    result = train(cfg, run_dir=tmp_path / "run", quiet=True)
    expected = [f.to_dict() for f in load_dataset("digits").info.files]
    assert (
        expected
        and json.loads((result.run_dir / "summary.json").read_text())["data_files"] == expected
    )
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["data_files"] == expected


def test_the_suggested_download_command_fixes_the_error(tmp_path, offline, monkeypatch, capsys):
    """The download command the not-found error suggests makes the data load."""
    from dpp.experiments.cli import main

    monkeypatch.setitem(DL.RESOURCES, "mnist", _mnist_resources(offline, tmp_path))
    target = tmp_path / "mine"
    with pytest.raises(DatasetNotFoundError) as exc:
        load_dataset("mnist", data_dir=target)
    command = re.search(r"`dpp (data download [^`]+)`", str(exc.value)).group(1)
    assert main(command.split()) == 0
    assert str(target / "mnist") in capsys.readouterr().out
    assert len(load_dataset("mnist", data_dir=target).train) == 12


def test_train_with_an_incomplete_data_dir_fails_before_writing(tmp_path, capsys):
    """dpp train with an incomplete data dir exits 2 naming it, writing no run dir."""
    from dpp.experiments.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    config = Path(__file__).resolve().parent.parent / "configs" / "lenet300_fmnist_w95.toml"
    args = ["train", "--config", str(config), "-q"]
    args += ["--set", f"data.data_dir={empty}", "--set", f"output_dir={tmp_path / 'runs'}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(empty) in err and "t10k-labels-idx1-ubyte" in err
    assert "dpp data download fashion-mnist --data-dir" in err
    assert not (tmp_path / "runs").exists()


def test_demo_with_an_explicit_data_dir_does_not_fall_back_to_digits(tmp_path):
    """dpp demo --data-dir DIR without the data fails naming DIR, no digits fallback."""
    from dpp.experiments.demo import demo_config

    with pytest.raises(DatasetNotFoundError, match=re.escape(str(tmp_path))):
        demo_config(data_dir=str(tmp_path))
