"""The errors the data package raises: not found, corrupt, or a checksum mismatch."""

from __future__ import annotations

__all__ = ["ChecksumError", "DatasetError", "DatasetFormatError", "DatasetNotFoundError"]


class DatasetError(Exception):
    """Base class of every dataset error raised by :mod:`dpp.experiments.data`."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The dataset files were not found in the directories searched."""


class DatasetFormatError(DatasetError, ValueError):
    """A dataset file exists but is corrupt, truncated or inconsistent."""


class ChecksumError(DatasetError, ValueError):
    """A file's checksum does not match the published one."""
