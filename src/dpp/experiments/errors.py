"""The errors of the experiment side that are a user's mistake, not a bug.

The command line prints a :class:`UserError` as one line and exits with code 2; any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "ExportError",
    "ResumeError",
    "RunDirError",
    "UserError",
]


class UserError(Exception):
    """Something the user gave is wrong (a config, a file, a run directory); the message
    names it and says how to fix it."""


class ConfigError(UserError, ValueError):
    """A run configuration is invalid; the message names the key and what is valid."""


class RunDirError(UserError, FileNotFoundError):
    """A run directory or checkpoint path does not exist or holds no checkpoint."""


class CheckpointError(UserError, ValueError):
    """A checkpoint file is damaged, incomplete or not a dpp checkpoint."""


class ExportError(UserError, ValueError):
    """A run cannot be exported in the asked format."""


class ResumeError(UserError, ValueError):
    """A run cannot continue as asked (e.g. with another number of processes)."""
