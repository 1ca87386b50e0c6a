"""Where dataset files are looked for, and the error that says where they were not found.

With an explicit ``data_dir`` only ``data_dir/<name>`` and ``data_dir`` itself are searched:
a directory that lacks files fails with an error naming it, the missing files and the fix,
and never falls back to another copy. Without one, the first match of this order wins:

1. ``$DPP_DATA/<name>``, then ``$DPP_DATA``;
2. the user cache (:func:`cache_dir`): ``$XDG_CACHE_HOME/dpp/<name>`` or
   ``~/.cache/dpp/<name>`` on Linux (from ``platformdirs``);
3. for Fashion-MNIST only, ``/usr/share/datasets/fashion-mnist`` (Debian package
   ``dataset-fashion-mnist``).

:func:`~dpp.experiments.data.download` writes to ``<root>/<name>`` where ``root`` defaults to
``$DPP_DATA`` or the user cache, so downloaded data is found without further configuration.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import platformdirs

from .catalogue import (
    CIFAR_LAYOUT,
    DATASETS,
    DOWNLOADABLE,
    IDX_FILES,
    INPUT_SHAPES,
    NUM_CLASSES,
    SYSTEM_DIRS,
    canonical_name,
)
from .errors import DatasetNotFoundError

__all__ = [
    "cache_dir",
    "candidate_dirs",
    "check_dir",
    "default_download_root",
    "find_dataset_dir",
    "idx_file",
    "list_datasets",
]


def cache_dir() -> Path:
    """The user cache directory of dpp (``platformdirs.user_cache_dir("dpp")``)."""
    return Path(platformdirs.user_cache_dir("dpp", appauthor=False))


def default_download_root() -> Path:
    """Where downloads go by default: ``$DPP_DATA`` if set, else :func:`cache_dir`."""
    env = os.environ.get("DPP_DATA")
    return Path(env).expanduser() if env else cache_dir()


def candidate_dirs(name: str, data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Directories searched for dataset ``name``, in order.

    Args:
        name: dataset name (aliases allowed).
        data_dir: explicit directory; when given, ``[data_dir/<name>, data_dir]`` are the
            only directories searched.

    Returns:
        ``[data_dir/<name>, data_dir]`` with an explicit directory, otherwise
        ``[$DPP_DATA/<name>, $DPP_DATA, <cache>/<name>, *system dirs]`` (unset entries
        omitted, duplicates removed).
    """
    name = canonical_name(name)
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        return [root / name, root]
    dirs: list[Path] = []
    env = os.environ.get("DPP_DATA")
    if env:
        root = Path(env).expanduser()
        dirs += [root / name, root]
    dirs.append(cache_dir() / name)
    dirs += SYSTEM_DIRS.get(name, [])
    return list(dict.fromkeys(dirs))


def idx_file(directory: Path, stem: str) -> Path | None:
    """Find ``stem`` (raw or ``.gz``; also the ``train-images.idx3-ubyte`` spelling)."""
    dotted = stem.replace("-idx", ".idx")
    for candidate in (stem, stem + ".gz", dotted, dotted + ".gz"):
        path = directory / candidate
        if path.is_file():
            return path
    return None


def _missing(name: str, directory: Path) -> tuple[Path | None, list[str]]:
    """(the directory holding every file of ``name``, or None; the files it lacks)."""
    if name in CIFAR_LAYOUT:
        lay = CIFAR_LAYOUT[name]
        for root in (directory / lay.folder, directory):
            if all((root / f).is_file() for f in lay.files):
                return root, []
        if (directory / lay.folder).is_dir():
            return None, [
                f"{lay.folder}/{f}" for f in lay.files if not (directory / lay.folder / f).is_file()
            ]
        return None, [f"{lay.folder}/"]
    missing = [s + "[.gz]" for s in IDX_FILES.values() if idx_file(directory, s) is None]
    return (None if missing else directory), missing


def check_dir(name: str, directory: Path) -> tuple[Path | None, str]:
    """(the directory holding every file of ``name`` — ``directory`` or, for CIFAR, its
    batch folder — or ``None``; the reason it does not match, e.g. the files missing)."""
    if not directory.is_dir():
        return None, "does not exist"
    found, missing = _missing(name, directory)
    return (found, "") if found is not None else (None, "missing " + ", ".join(missing))


def _wanted(name: str) -> str:
    if name in CIFAR_LAYOUT:
        lay = CIFAR_LAYOUT[name]
        return f"{lay.folder}/{{{','.join(lay.files)}}}"
    return ", ".join(s + "[.gz]" for s in IDX_FILES.values())


def find_dataset_dir(name: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the first directory of :func:`candidate_dirs` that holds all files of ``name``.

    For CIFAR the returned directory is the one holding the batch files (e.g.
    ``.../cifar-10-batches-py``).

    Raises:
        DatasetNotFoundError: no directory matched; the message lists every directory
            tried, the files each lacks, and how to get the data.
        ValueError: unknown name, or ``"digits"`` (which ships with scikit-learn).
    """
    name = canonical_name(name)
    if name == "digits":
        raise ValueError("'digits' ships with scikit-learn and has no data directory")
    tried = []
    for directory in candidate_dirs(name, data_dir):
        found, reason = check_dir(name, directory)
        if found is not None:
            return found
        tried.append(f"  - {directory} ({reason})")
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        head = f"dataset {name!r} not found in the data directory {root} given explicitly"
        fixes = [
            f"run `dpp data download {name} --data-dir {root}` (writes to {root / name})",
            f"or copy the files into {root / name}",
            "or drop --data-dir (data.data_dir) to search $DPP_DATA, the user cache"
            + (" and the system directories" if SYSTEM_DIRS.get(name) else ""),
        ]
    else:
        head = f"dataset {name!r} not found"
        fixes = [
            f"run `dpp data download {name}` (writes to {default_download_root() / name})",
            "pass --data-dir DIR (data_dir=DIR in Python) pointing at a directory with these "
            "files, e.g. one written by `dpp data download "
            f"{name} --data-dir DIR`",
            "set the DPP_DATA environment variable to such a directory",
        ]
    if name == "fashion-mnist" and data_dir is None:
        fixes.append("on Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist")
    raise DatasetNotFoundError(
        f"{head}. Looked for {_wanted(name)} in:\n"
        + "\n".join(tried)
        + "\nTo fix:\n"
        + "\n".join(f"  * {f}" for f in fixes)
    )


def _digits_dir() -> str | None:
    try:
        import sklearn.datasets as skd
    except ImportError:
        return None
    return str(Path(skd.__file__).parent / "data")


def list_datasets(data_dir: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Report, for every known dataset, whether and where it is available.

    Args:
        data_dir: explicit directory, searched alone as in
            :func:`~dpp.experiments.data.load_dataset`.

    Returns:
        One dict per name in :data:`DATASETS` with keys ``name``, ``found`` (bool),
        ``path`` (str or None), ``num_classes``, ``input_shape``, ``downloadable`` and
        ``searched`` (directories tried, in order; empty for digits).
    """
    rows = []
    for name in DATASETS:
        row: dict[str, Any] = {
            "name": name,
            "found": False,
            "path": None,
            "num_classes": NUM_CLASSES[name],
            "input_shape": INPUT_SHAPES[name],
            "downloadable": name in DOWNLOADABLE,
            "searched": [],
        }
        if name == "digits":
            row["path"] = _digits_dir()
            row["found"] = row["path"] is not None
        else:
            dirs = candidate_dirs(name, data_dir)
            row["searched"] = [str(d) for d in dirs]
            for d in dirs:
                found, _ = check_dir(name, d)
                if found is not None:
                    row["found"], row["path"] = True, str(found)
                    break
        rows.append(row)
    return rows
