"""Downloads from the published sources, verified against their MD5, with ``pooch``.

``pooch`` writes each file to a temporary name in the target directory, checks its hash,
and only then moves it into place, so an interrupted or corrupt download never leaves a
file that looks complete. CIFAR archives are unpacked by a ``pooch.Untar`` that refuses
links, devices and paths that leave the target directory.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import Any

import pooch

from .catalogue import CIFAR_LAYOUT, RESOURCES, canonical_name
from .errors import ChecksumError, DatasetError, DatasetFormatError
from .locate import check_dir, default_download_root

__all__ = ["download", "file_md5", "verify_checksum"]


def file_md5(path: str | os.PathLike[str]) -> str:
    """Hex MD5 digest of a file."""
    return pooch.file_hash(str(path), alg="md5")


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


class _SafeUntar(pooch.Untar):
    """``pooch.Untar`` that refuses members that are not plain files or directories, or
    whose path leaves the extraction directory (``pooch`` only filters on Python 3.12+)."""

    def _extract_file(self, fname: str, extract_dir: str) -> None:
        root = Path(extract_dir).resolve()
        with tarfile.open(fname, "r:*") as tar:
            for m in tar.getmembers():
                target = (root / m.name).resolve()
                if not (m.isfile() or m.isdir()) or not target.is_relative_to(root):
                    raise DatasetFormatError(
                        f"{fname}: refusing to extract unsafe member {m.name!r}"
                    )
            kwargs: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(root, **kwargs)


def _downloader(progress: bool, timeout: float) -> Any:
    """The ``pooch`` downloader for the published (HTTP/HTTPS) sources."""
    return pooch.HTTPDownloader(
        progressbar=progress, timeout=timeout, headers={"User-Agent": "dpp-data/0.1"}
    )


def _fetch(
    url: str, md5: str, target: Path, *, progress: bool, timeout: float, processor: Any = None
) -> Path:
    """Download ``url`` into ``target`` (kept if its MD5 already matches) and verify it."""
    dest = target / url.rsplit("/", 1)[1]
    try:
        pooch.retrieve(
            url,
            known_hash=f"md5:{md5}",
            fname=dest.name,
            path=target,
            processor=processor,
            downloader=_downloader(progress, timeout),
            progressbar=progress,
        )
    except ValueError as e:
        if "hash" not in str(e):
            raise
        raise ChecksumError(
            f"checksum mismatch for {url} (expected md5 {md5}): {e} The download was deleted; "
            "try again"
        ) from None
    except OSError as e:  # requests' errors are OSErrors
        raise DatasetError(
            f"failed to download {url}: {e}. Check your network/proxy, or download it "
            f"manually and put it at {dest}"
        ) from e
    dest.chmod(0o644)  # pooch's temporary files are 0600; a data directory may be shared
    return dest


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
    with the right checksum are not downloaded again; a mismatch deletes the download and
    raises :class:`ChecksumError` naming the URL and both checksums.

    Args:
        name: one of :data:`~dpp.experiments.data.DOWNLOADABLE` (aliases allowed).
        root: parent directory; default ``$DPP_DATA`` or the user cache, which
            :func:`~dpp.experiments.data.load_dataset` searches. Pass the same directory as
            ``data_dir`` to train from it.
        progress: show a progress bar.
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
    if name not in RESOURCES:
        raise ValueError(
            f"{name!r} cannot be downloaded: it ships with scikit-learn (pip install scikit-learn)"
        )
    target = (Path(root).expanduser() if root is not None else default_download_root()) / name
    target.mkdir(parents=True, exist_ok=True)
    cifar = name in CIFAR_LAYOUT
    if cifar and check_dir(name, target)[0] is not None:
        return target
    for url, md5 in RESOURCES[name]:
        untar = _SafeUntar(extract_dir=str(target)) if cifar else None
        dest = _fetch(url, md5, target, progress=progress, timeout=timeout, processor=untar)
        if cifar and not keep_archive:
            dest.unlink()
    return target
