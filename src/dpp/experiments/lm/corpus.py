"""Byte-level text corpora that install offline, pinned and digest-checked.

``cpython-stdlib``: the ``*.py`` sources of the running Python's standard library
(``sysconfig.get_paths()["stdlib"]``, ``site-packages`` left out), about 31 MB for CPython
3.11.7. Its version is part of the corpus name, and the prepared bytes are recorded with
their SHA-256, so a run states exactly which text it saw. ``fortunes``: the Debian package
``fortunes`` (``/usr/share/games/fortunes``, English, about 2.5 MB).

Train and validation are split **by file** (a file's relative path hashes into the
validation split with probability 1/20), so no validation text is a near copy of a training
window. Files are concatenated in sorted order, each followed by a NUL byte.

:func:`prepare` writes ``train.bin``, ``val.bin`` and ``manifest.json`` (file list, sizes,
digests) into a directory once; :func:`load` reads them back and checks the digests.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sysconfig
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..checkpoint import atomic_write_bytes
from ..errors import UserError

__all__ = ["CORPORA", "Corpus", "CorpusError", "corpus_files", "load", "prepare", "split_of"]

VAL_EVERY = 20
CORPORA = ("cpython-stdlib", "fortunes")
FORTUNES_DIR = Path("/usr/share/games/fortunes")


class CorpusError(UserError, ValueError):
    """A corpus that cannot be found, or prepared files that fail their checks."""


@dataclass
class Corpus:
    """Prepared bytes of a corpus.

    Attributes:
        name: corpus name with its version (``"cpython-stdlib-3.11.7"``).
        train: ``uint8`` array of the training bytes.
        val: ``uint8`` array of the validation bytes.
        manifest: what was read (files, sizes, SHA-256 of each split).
    """

    name: str
    train: np.ndarray
    val: np.ndarray
    manifest: dict


def split_of(relative_path: str) -> str:
    """``"val"`` for about one file in :data:`VAL_EVERY`, chosen by a hash of its path."""
    digest = hashlib.sha256(relative_path.encode()).digest()
    return "val" if digest[0] % VAL_EVERY == 0 else "train"


def corpus_files(name: str, root: str | os.PathLike | None = None) -> tuple[str, Path, list[Path]]:
    """``(versioned name, root, sorted files)`` of a corpus.

    Args:
        name: ``"cpython-stdlib"`` or ``"fortunes"``.
        root: another directory to read instead of the default one (its files are taken the
            same way; the name then says ``custom``).
    """
    if name == "cpython-stdlib":
        base = Path(root or sysconfig.get_paths()["stdlib"])
        files = sorted(p for p in base.rglob("*.py") if "site-packages" not in p.parts)
        version = platform.python_version() if root is None else "custom"
        versioned = f"cpython-stdlib-{version}"
    elif name == "fortunes":
        base = Path(root or FORTUNES_DIR)
        files = sorted(
            p for p in base.rglob("*") if p.is_file() and not p.suffix and not p.is_symlink()
        )
        versioned = "fortunes" if root is None else "fortunes-custom"
    else:
        raise CorpusError(f"unknown corpus {name!r}; valid: {', '.join(CORPORA)}")
    if not files:
        hint = " (apt-get install fortunes)" if name == "fortunes" else ""
        raise CorpusError(f"corpus {name!r}: no files under {base}{hint}")
    return versioned, base, files


def _sha256(data: bytes | np.ndarray) -> str:
    return hashlib.sha256(bytes(data)).hexdigest()


def build(files: Iterable[Path], base: Path) -> tuple[bytes, bytes, list[dict]]:
    """Concatenate ``files`` into (train bytes, val bytes, per-file records), split by file."""
    parts: dict[str, list[bytes]] = {"train": [], "val": []}
    records = []
    for path in files:
        rel = path.relative_to(base).as_posix()
        data = path.read_bytes()
        split = split_of(rel)
        parts[split].append(data + b"\0")
        records.append({"path": rel, "bytes": len(data), "split": split})
    return b"".join(parts["train"]), b"".join(parts["val"]), records


def prepare(name: str, out_dir: str | os.PathLike, root: str | os.PathLike | None = None) -> Corpus:
    """Prepare a corpus into ``out_dir`` (reused when already there and intact)."""
    out = Path(out_dir)
    if (out / "manifest.json").exists():
        return load(out)
    versioned, base, files = corpus_files(name, root)
    train, val, records = build(files, base)
    if not val or not train:
        raise CorpusError(f"corpus {versioned}: {len(files)} file(s) give an empty split")
    manifest = {
        "name": versioned,
        "root": str(base),
        "files": len(records),
        "file_list_sha256": _sha256(json.dumps(records, sort_keys=True).encode()),
        "train_bytes": len(train),
        "val_bytes": len(val),
        "train_sha256": _sha256(train),
        "val_sha256": _sha256(val),
        "records": records,
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "train.bin", train)
    atomic_write_bytes(out / "val.bin", val)
    atomic_write_bytes(out / "manifest.json", json.dumps(manifest, indent=1).encode())
    return load(out)


def load(directory: str | os.PathLike) -> Corpus:
    """Read a prepared corpus and check both splits against the manifest's digests."""
    d = Path(directory)
    try:
        manifest = json.loads((d / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CorpusError(
            f"{d}/manifest.json: unreadable ({exc}); delete {d} to prepare again"
        ) from exc
    arrays = {}
    for split in ("train", "val"):
        path = d / f"{split}.bin"
        if not path.exists():
            raise CorpusError(f"{path} is missing; delete {d} to prepare the corpus again")
        data = np.fromfile(path, dtype=np.uint8)
        if _sha256(data) != manifest[f"{split}_sha256"]:
            raise CorpusError(
                f"{path} does not match the SHA-256 in {d}/manifest.json: the file is damaged "
                f"or was changed; delete {d} to prepare the corpus again"
            )
        arrays[split] = data
    return Corpus(manifest["name"], arrays["train"], arrays["val"], manifest)
