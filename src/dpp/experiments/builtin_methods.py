"""Registers every built-in training method: importing this module imports each module
that defines one (``@register_method``), so :data:`dpp.experiments.registry.METHODS` holds
dense, DPP and the baselines.

``import dpp.experiments`` imports it, so every entry point (the CLI, the trainer, a run
config built in Python) sees the whole registry. It sits where nothing imports back: the
run config looks names up in the registry alone, and the method modules import the run
config for annotations only, so no module meets itself following imports.

Example:
    >>> from dpp.experiments.registry import METHODS
    >>> {"dense", "dpp", "srste"} <= set(METHODS.names())
    True
"""

from __future__ import annotations

from . import baselines, methods

__all__ = ["MODULES"]

#: The modules whose import registers the built-in methods.
MODULES = (methods, baselines)
